//! 0.2 设备：同一份模型代码在 `Cpu` 与 `Cuda` 上编译和运行。
//!
//! dfdx 的张量和算子对设备 `D` 泛型；本书所有模型都写成 `fn f<D: Kernels<E>>(..)`（`Kernels` 是 dfdx 的 `Device` 加上附录 B 的融合算子），
//! 设备只在程序入口处选一次（命令行参数 `--device cpu|cuda`）。这里是与算子无关的部分：命令行上的设备名
//! [`DeviceKind`]、选设备时的错误 [`DeviceError`]、先问驱动再建 `Cuda` 设备的 `new_cuda`（启用 `cuda` 特性时）；
//! 分派对设备泛型的任务的 `DeviceTask` 与 `run_on` 要求 `Kernels`，在 `kernels::device`（依赖只朝一个方向：
//! 第 0 部分不依赖附录 B）。

use std::fmt;
use std::str::FromStr;

#[cfg(feature = "cuda")]
use dfdx::prelude::*;

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

// ANCHOR: new_cuda
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
// ANCHOR_END: new_cuda

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

    #[test]
    fn parses_device_names_and_rejects_unknown() {
        assert_eq!("CPU".parse::<DeviceKind>().unwrap(), DeviceKind::Cpu);
        assert_eq!("cuda".parse::<DeviceKind>().unwrap(), DeviceKind::Cuda);
        let err = "tpu".parse::<DeviceKind>().unwrap_err();
        assert_eq!(err.to_string(), "未知设备 `tpu`：可选 `cpu` 或 `cuda`");
    }
}
