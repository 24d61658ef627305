//! 0.2 设备：同一份模型代码在 `Cpu` 与 `Cuda` 上编译和运行。
//!
//! dfdx 的张量和算子对设备 `D` 泛型；本书所有模型都写成 `fn f<D: Kernels<E>>(..)`（`Kernels` 是 dfdx 的 `Device` 加上附录 B 的融合算子），
//! 设备只在程序入口处选一次（命令行参数 `--device cpu|cuda`），由 [`run_on`] 分派。

use std::fmt;
use std::str::FromStr;

use dfdx::prelude::*;

use crate::kernels::Kernels;

// ANCHOR: device_kind
/// 命令行上可选的设备。
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// 主机内存与 CPU 算子（默认）。
    Cpu,
    /// NVIDIA GPU，需要以 `--features cuda` 编译。
    Cuda,
}
// ANCHOR_END: device_kind

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

/// 在 GPU 0 上建一个 `Cuda` 设备。
///
/// cudarc 0.9 建设备时对 `cuInit` 与取设备的结果直接 `unwrap`：没有 GPU（或驱动认不出 GPU）时程序会 panic。
/// 所以先自己问驱动：初始化成功、且至少有一块 GPU，才交给 dfdx。
#[cfg(feature = "cuda")]
pub fn new_cuda(seed: u64) -> Result<Cuda, DeviceError> {
    use cudarc::driver::result;
    let err = |what: &str, e: result::DriverError| DeviceError::CudaInit(format!("{what}：{e:?}"));
    result::init().map_err(|e| err("cuInit", e))?;
    let count = result::device::get_count().map_err(|e| err("cuDeviceGetCount", e))?;
    if count == 0 {
        return Err(DeviceError::CudaInit("驱动报告 0 块 GPU".into()));
    }
    Cuda::try_build(0, seed).map_err(|e| DeviceError::CudaInit(format!("{e:?}")))
}

#[cfg(not(feature = "cuda"))]
fn run_on_cuda<T: DeviceTask>(_seed: u64, _task: T) -> Result<T::Output, DeviceError> {
    Err(DeviceError::CudaNotCompiled)
}
// ANCHOR_END: run_on

/// 选择设备时的错误。
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceError {
    /// `--device` 的取值不认识。
    Unknown(String),
    /// 请求了 CUDA，但本程序编译时没有启用 `cuda` 特性。
    CudaNotCompiled,
    /// 启用了 `cuda`，但初始化 GPU 失败（没有 GPU、驱动不匹配等）。
    CudaInit(String),
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceError::Unknown(s) => write!(f, "未知设备 `{s}`：可选 `cpu` 或 `cuda`"),
            DeviceError::CudaNotCompiled => write!(
                f,
                "本程序编译时未启用 CUDA：请用 `cargo run --release --features cuda -- …` 重新编译后再选 `--device cuda`"
            ),
            DeviceError::CudaInit(e) => write!(f, "无法初始化 CUDA 设备 0（是否有可用的 NVIDIA GPU 与驱动？）：{e}"),
        }
    }
}

impl std::error::Error for DeviceError {}

impl FromStr for DeviceKind {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" | "gpu" => Ok(DeviceKind::Cuda),
            _ => Err(DeviceError::Unknown(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        })
    }
}

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

    #[test]
    fn parses_device_names_and_rejects_unknown() {
        assert_eq!("CPU".parse::<DeviceKind>().unwrap(), DeviceKind::Cpu);
        assert_eq!("cuda".parse::<DeviceKind>().unwrap(), DeviceKind::Cuda);
        let err = "tpu".parse::<DeviceKind>().unwrap_err();
        assert_eq!(err.to_string(), "未知设备 `tpu`：可选 `cpu` 或 `cuda`");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_is_a_clear_error() {
        let err = run_on(DeviceKind::Cuda, 0, Triangular(3)).unwrap_err();
        assert_eq!(err, DeviceError::CudaNotCompiled);
        assert!(err.to_string().contains("--features cuda"));
    }
}
