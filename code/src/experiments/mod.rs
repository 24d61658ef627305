//! 书中的实验：每个实验训练或测量一次，把结果存成 `code/results/<名字>.json`（提交到仓库），
//! 书中的图由 [`crate::figures`] 从这些结果确定性地画出，书中的数字也来自这些结果。
//!
//! 每个实验模块也拥有自己的命令：参数结构（`#[derive(clap::Args)]`，默认值取自它的配置）、运行函数与打印；
//! `main.rs` 只做分派，几个命令共用的参数（`--device`、`--record`、`--dry-run`……）在 `args.rs`。
//!
//! | 文件 | 章节 |
//! | --- | --- |
//! | `args.rs` | 各命令共用的参数与进度条 |
//! | `checks.rs` | 第 0、1 部分的数值核对：`gelu-grad`、`positional`、`parity` |
//! | `recovery.rs` | 2.7 节：LoRA 恢复一个已知秩的 ΔW |
//! | `adaptation.rs` | 2.7 节：任务迁移——不训练、只训分类头、LoRA 与全量微调 |
//! | `classify.rs` | 3.6 节：任意 BERT 目录上的中文文本分类（全量或 LoRA），`classify`、`embed` 推理 |
//! | `finetune.rs` | 3.6、3.8 节与第 4 部分：`finetune` 命令的参数与输出 |
//! | `attention.rs` | 3.6 节：每层每个头的注意力热力图 |
//! | `gpt.rs` | 第 5 部分：中文字符级 GPT |
//! | `pretrain.rs` | 附录 A：离线预训练中文迷你 BERT，`fill-mask`、`convert` |
//! | `sentiment.rs` | 1.8 节：从零训练中文情感分类、注意力图 |
//! | `ln_stability.rs` | 1.8 节：Pre-LN 与 Post-LN 的训练稳定性 |
//! | `lora_table.rs` | 附录 A：LoRA 与全量微调的对比表（汇总 `results/part-a/` 的各次运行） |
//! | `learning_curve.rs` | 附录 A：学习曲线——训练样本数从 100 到全部（汇总 `results/learning-curve/`） |
//! | `perf.rs` | 附录 B：与 PyTorch 的耗时之比（读 criterion 与 bench_torch.py 的结果） |
//! | `lora_order.rs` | 2.6 节：B(Ax) 与 (BA)x、合并后的推理耗时（读 criterion 的结果） |
//! | `seq_cost.rs` | 1.7 节：耗时随序列长度的变化（读 criterion 的结果） |

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

pub mod adaptation;
pub mod args;
pub mod attention;
pub mod checks;
pub mod classify;
pub mod finetune;
pub mod gpt;
pub mod learning_curve;
pub mod ln_stability;
pub mod lora_order;
pub mod lora_table;
pub mod perf;
pub mod pretrain;
pub mod recovery;
pub mod sentiment;
pub mod seq_cost;

/// 结果目录：`code/results`。
pub fn results_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("results")
}

/// 把结果写成格式化的 JSON（原子写入）。
pub fn save_result<T: Serialize>(name: &str, value: &T) -> anyhow::Result<PathBuf> {
    let path = results_dir().join(format!("{name}.json"));
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    crate::io::write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// 读一个结果；文件不存在时说明用哪个命令生成。
pub fn load_result<T: DeserializeOwned>(name: &str, command: &str) -> anyhow::Result<T> {
    let path = results_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).map_err(|e| {
        anyhow::anyhow!(
            "读不到实验结果 {}（{e}）：先运行 `cargo run --release -- {command}`",
            path.display()
        )
    })?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("实验结果 {} 格式不对：{e}", path.display()))
}

/// criterion 的结果目录（默认 `<仓库>/target/criterion`）。
pub fn default_criterion_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("criterion")
}

/// 读 criterion 记下的平均耗时（毫秒）：`<dir>/<组>/<函数>[/<参数>]/new/estimates.json`。
pub fn criterion_mean_ms(dir: &Path, parts: &[&str], bench: &str) -> anyhow::Result<f64> {
    criterion_estimate_ms(dir, parts, "mean", &format!("cargo bench --bench {bench}"))
}

/// 读 criterion 记下的一个统计量（`mean`、`median` 等，毫秒）；文件不存在时提示运行 `command`。
pub fn criterion_estimate_ms(
    dir: &Path,
    parts: &[&str],
    statistic: &str,
    command: &str,
) -> anyhow::Result<f64> {
    let mut path = dir.to_path_buf();
    path.extend(parts);
    path.push("new");
    path.push("estimates.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("读不到 {}（{e}）：先运行 `{command}`", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let ns = v[statistic]["point_estimate"]
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("{} 中没有 {statistic}.point_estimate", path.display()))?;
    Ok(ns / 1e6)
}

/// 中位数（偶数个时取中间两个的平均）；附录 A 的每步耗时与附录 B 的各轮测量都用它。
pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// 运行实验的机器：CPU 型号与核数（写进结果，书中与数字一起报告）。
pub fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "未知 CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!("{cpu}，{cores} 核")
}

/// 一行 logits 的 softmax（f64，先减去最大值，不会溢出）：命令行打印概率用。
pub fn softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f64> = row.iter().map(|&z| ((z - max) as f64).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}
