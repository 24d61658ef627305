//! 0.2 节：在命令行选定的设备上运行对设备泛型的代码。
//!
//! 本书的模型写成 `fn f<D: Kernels<E>>(..)`，设备只在程序入口处选一次。[`run_on`] 按 [`DeviceKind`]
//! 构造 `Cpu` 或 `Cuda`，交给一个对设备泛型的 [`DeviceTask`]。设备名、错误与建 `Cuda` 设备的细节属于第 0 部分
//! （`basics::device`，不依赖本模块）；这里只有要求 [`Kernels`] 的那一半。

use dfdx::prelude::*;

use super::Kernels;
#[cfg(feature = "cuda")]
use crate::basics::device::new_cuda;
use crate::basics::device::{DeviceError, DeviceKind};

// ANCHOR: device_task
/// 与设备无关的一项工作：`run` 对任意设备类型 `D` 泛型，由 [`run_on`] 选定具体设备后调用。
///
/// Rust 的闭包不能对类型泛型，所以用一个带泛型方法的 trait 表达“对任意设备都能运行的代码”。
pub trait DeviceTask {
    /// 工作的结果。
    type Output;
    /// 在设备 `dev` 上完成这项工作。
    fn run<D: Kernels<f32> + Kernels<f64>>(self, dev: D) -> Self::Output;
}
// ANCHOR_END: device_task

// ANCHOR: run_on
/// 在 `kind` 指定的设备上（随机数种子为 `seed`）运行 `task`。
pub fn run_on<T: DeviceTask>(
    kind: DeviceKind,
    seed: u64,
    task: T,
) -> Result<T::Output, DeviceError> {
    match kind {
        DeviceKind::Cpu => Ok(task.run(Cpu::seed_from_u64(seed))),
        DeviceKind::Cuda => run_on_cuda(seed, task),
    }
}

#[cfg(feature = "cuda")]
fn run_on_cuda<T: DeviceTask>(seed: u64, task: T) -> Result<T::Output, DeviceError> {
    Ok(task.run(new_cuda(seed)?))
}

#[cfg(not(feature = "cuda"))]
fn run_on_cuda<T: DeviceTask>(_seed: u64, _task: T) -> Result<T::Output, DeviceError> {
    Err(DeviceError::CudaNotCompiled)
}
// ANCHOR_END: run_on

#[cfg(test)]
mod tests {
    use super::*;

    /// 一个最小的任务：在给定设备上求 1 + 2 + … + n。
    struct Triangular(usize);
    impl DeviceTask for Triangular {
        type Output = f32;
        fn run<D: Kernels<f32> + Kernels<f64>>(self, dev: D) -> f32 {
            let v: Vec<f32> = (1..=self.0).map(|i| i as f32).collect();
            dev.tensor_from_vec(v, (self.0,)).sum::<(), _>().as_vec()[0]
        }
    }

    #[test]
    fn runs_generic_task_on_cpu() {
        assert_eq!(run_on(DeviceKind::Cpu, 0, Triangular(100)).unwrap(), 5050.0);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_is_a_clear_error() {
        let err = run_on(DeviceKind::Cuda, 0, Triangular(3)).unwrap_err();
        assert_eq!(err, DeviceError::CudaNotCompiled);
        assert!(err.to_string().contains("--features cuda"));
    }
}
