//! 附录 A 的对比表：在中文迷你 BERT 上，从零训练、线性探测、全量微调与各种秩的 LoRA，各跑几个种子，
//! 汇总成均值 ± 标准差。
//!
//! 每一格是一次 `finetune … --record part-a/<方法>-s<种子>`（由 `code/scripts/lora-table.sh` 依次运行），
//! 结果是 [`FinetuneSummary`]；`cargo run --release -- lora-table` 读 `code/results/part-a/` 下的全部结果，
//! 按方法分组、核对预算相同，写出 `code/results/appendix-a-table.json` 并打印书中的 Markdown 表。
//!
//! “每步”一列另有来源：长的运行难免遇上共享机器上别的负载，所以 `lora-table.sh timing` 在空闲的机器上
//! 让各方法轮流训练 40 步、重复几遍（`code/results/part-a-timing/`），表里取中位数；没有这些测量时取各次运行的中位数。

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::classify::{FinetuneSummary, Method};
use super::median;
use crate::peft::config::TargetModules;
use crate::peft::model::thousands;

/// 均值与样本标准差（除以 n − 1；只有一个数时标准差为 0）。
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MeanStd {
    /// 均值。
    pub mean: f64,
    /// 样本标准差。
    pub std: f64,
}

impl MeanStd {
    /// 由一组数计算。
    pub fn of(xs: &[f64]) -> Self {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let std = if xs.len() > 1 {
            (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        Self { mean, std }
    }
}

/// 表中的一行：一种方法的几个种子。
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableRow {
    /// 方法的名字（中文）。
    pub method: String,
    /// 排序用的类别：0 从零训练、1 线性探测、2 LoRA（q/v）、3 LoRA（其他目标）、4 全量微调。
    pub kind: usize,
    /// 跑过的种子。
    pub seeds: Vec<u64>,
    /// 每个种子的测试准确率。
    pub accuracies: Vec<f64>,
    /// 测试准确率。
    pub accuracy: MeanStd,
    /// 测试集 F1（正类）。
    pub f1: MeanStd,
    /// 可训练参数（PEFT 的计法）。
    pub trainable: usize,
    /// 全部参数。
    pub all: usize,
    /// AdamW 状态（m、v）的字节数。
    pub optimizer_bytes: usize,
    /// 进程峰值常驻内存的均值（字节）。
    pub peak_rss_bytes: f64,
    /// 每个训练步的秒数（只算训练，不含评估）：耗时测量（没有时是各次运行）的中位数。
    pub seconds_per_step: f64,
    /// 上一列取了几次测量的中位数。
    pub timing_runs: usize,
}

/// 整张表（存为 `code/results/appendix-a-table.json`）。
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraTable {
    /// 模型目录。
    pub model: String,
    /// 每次运行的步数（共同的预算）。
    pub steps: usize,
    /// 批大小。
    pub batch_size: usize,
    /// 最大长度。
    pub max_len: usize,
    /// 机器。
    pub machine: String,
    /// “每步”一列的来源：`part-a-timing`（专门的耗时测量）或 `part-a`（各次运行）。
    pub step_time_source: String,
    /// 各行，按类别与可训练参数排序。
    pub rows: Vec<TableRow>,
}

/// 方法的中文名与类别。
pub fn method_name(method: &Method) -> (String, usize) {
    match method {
        Method::Scratch => ("从零训练（随机初始化，全部参数）".into(), 0),
        Method::Probe => ("线性探测（冻结编码器）".into(), 1),
        Method::Full => ("全量微调".into(), 4),
        Method::Lora(c) => {
            let (targets, kind) = match &c.target_modules {
                TargetModules::Names(n)
                    if n.len() == 2
                        && n.contains(&"query".to_string())
                        && n.contains(&"value".to_string()) =>
                {
                    ("q、v".to_string(), 2)
                }
                TargetModules::Names(n) if n.len() == 6 => ("全部线性层".to_string(), 3),
                TargetModules::Names(n) => (n.join("、"), 3),
                TargetModules::Regex(r) => (format!("正则 {r}"), 3),
            };
            (format!("LoRA r={}（{targets}）", c.r), kind)
        }
    }
}

/// 按方法分组、核对预算并汇总。
///
/// `timing` 是专门的耗时测量（可以为空）：与 `runs` 的模型、批大小、最大长度必须相同，步数可以少；
/// 每一行的“每步”取同一方法的耗时测量的中位数。`timing` 不为空时，每种方法都必须有耗时测量。
pub fn summarize(
    runs: &[(String, FinetuneSummary)],
    timing: &[(String, FinetuneSummary)],
) -> anyhow::Result<LoraTable> {
    let Some((first_file, first)) = runs.first() else {
        bail!("没有任何结果：先运行 bash code/scripts/lora-table.sh");
    };
    let budget = |s: &FinetuneSummary| {
        (
            s.model.clone(),
            s.report.steps,
            s.config.batch_size,
            s.max_len,
        )
    };
    let shape = |s: &FinetuneSummary| (s.model.clone(), s.config.batch_size, s.max_len);
    let mut timed: BTreeMap<(usize, usize, String), Vec<f64>> = BTreeMap::new();
    for (file, s) in timing {
        if shape(s) != shape(first) {
            bail!(
                "耗时测量 {file} 的（模型、批大小、最大长度）= {:?}，与 {first_file} 的 {:?} 不同",
                shape(s),
                shape(first)
            );
        }
        let (name, kind) = method_name(&s.method);
        timed
            .entry((kind, s.trainable, name))
            .or_default()
            .push(s.report.seconds_per_step);
    }
    let mut groups: BTreeMap<(usize, usize, String), Vec<&FinetuneSummary>> = BTreeMap::new();
    for (file, s) in runs {
        if budget(s) != budget(first) {
            bail!(
                "{file} 的预算（模型、步数、批大小、最大长度）= {:?}，与 {first_file} 的 {:?} 不同：表中的各格必须用同样的预算",
                budget(s),
                budget(first)
            );
        }
        let (name, kind) = method_name(&s.method);
        groups.entry((kind, s.trainable, name)).or_default().push(s);
    }
    let mut rows = Vec::new();
    for (key, g) in groups {
        let times = match timed.get(&key) {
            Some(t) => t.clone(),
            None if timing.is_empty() => g.iter().map(|s| s.report.seconds_per_step).collect(),
            None => bail!("方法“{}”没有耗时测量：重新运行 lora-table.sh timing", key.2),
        };
        let (kind, trainable, method) = key;
        let mut seeds: Vec<u64> = g.iter().map(|s| s.config.seed).collect();
        seeds.sort_unstable();
        if seeds.windows(2).any(|w| w[0] == w[1]) {
            bail!("方法“{method}”有重复的种子：{seeds:?}");
        }
        let mut g = g;
        g.sort_by_key(|s| s.config.seed);
        let col =
            |f: &dyn Fn(&FinetuneSummary) -> f64| g.iter().map(|s| f(s)).collect::<Vec<f64>>();
        let accuracies = col(&|s| s.report.test.accuracy);
        let rss = col(&|s| s.peak_rss_bytes.unwrap_or(0) as f64);
        rows.push(TableRow {
            method,
            kind,
            seeds,
            accuracy: MeanStd::of(&accuracies),
            accuracies,
            f1: MeanStd::of(&col(&|s| s.report.test.f1)),
            trainable,
            all: g[0].all,
            optimizer_bytes: g[0].report.optimizer_bytes,
            peak_rss_bytes: rss.iter().sum::<f64>() / rss.len() as f64,
            timing_runs: times.len(),
            seconds_per_step: median(times),
        });
    }
    Ok(LoraTable {
        model: first.model.clone(),
        steps: first.report.steps,
        batch_size: first.config.batch_size,
        max_len: first.max_len,
        machine: first.machine.clone(),
        step_time_source: if timing.is_empty() {
            "part-a"
        } else {
            "part-a-timing"
        }
        .into(),
        rows,
    })
}

/// 读一个目录下的全部结果（`*.json`，按文件名排序）。
pub fn read_runs(dir: &Path) -> anyhow::Result<Vec<(String, FinetuneSummary)>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| {
            format!(
                "读不到结果目录 {}：先运行 bash code/scripts/lora-table.sh",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files.iter().map(|p| read_run(p)).collect()
}

/// 读一个结果文件：(文件名, 结果)。
pub fn read_run(p: &Path) -> anyhow::Result<(String, FinetuneSummary)> {
    let name = p
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let text = std::fs::read_to_string(p).with_context(|| format!("读不到 {}", p.display()))?;
    let s: FinetuneSummary = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} 不是 finetune 的结果（summary.json 的格式）",
            p.display()
        )
    })?;
    Ok((name, s))
}

impl LoraTable {
    /// 书中的 Markdown 表（百分数保留两位小数，± 为样本标准差）。
    pub fn markdown(&self) -> String {
        let mib = |b: f64| b / (1024.0 * 1024.0);
        let mut out = String::from(
            "| 方法 | 种子 | 测试准确率（%） | F1 | 可训练参数 | 占比 | 优化器状态 | 峰值内存 | 每步（秒，中位数） |\n\
             | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {:.2} ± {:.2} | {:.3} ± {:.3} | {} | {:.2}% | {:.2} MiB | {:.0} MiB | {:.2} |\n",
                r.method,
                r.seeds.len(),
                100.0 * r.accuracy.mean,
                100.0 * r.accuracy.std,
                r.f1.mean,
                r.f1.std,
                thousands(r.trainable),
                100.0 * r.trainable as f64 / r.all as f64,
                mib(r.optimizer_bytes as f64),
                mib(r.peak_rss_bytes),
                r.seconds_per_step,
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std() {
        let m = MeanStd::of(&[0.7, 0.8, 0.9]);
        assert!((m.mean - 0.8).abs() < 1e-12);
        assert!((m.std - 0.1).abs() < 1e-12);
        assert_eq!(MeanStd::of(&[0.5]).std, 0.0);
        assert_eq!(median(vec![3.0, 1.0, 100.0]), 3.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
    }

    /// 分组与核对：同一方法不同种子合为一行，预算不同、种子重复的结果被拒绝。
    /// 样本是一次真实运行的 summary.json（`tests/fixtures/finetune-summary.json`，LoRA r=8、种子 0）。
    #[test]
    fn groups_seeds_and_rejects_a_different_budget() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/finetune-summary.json");
        let one: FinetuneSummary =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut full = one.clone();
        full.method = Method::Full;
        full.trainable = full.all;
        let runs = vec![
            ("lora-r8-s0.json".to_string(), one),
            ("full-s0.json".to_string(), full),
        ];
        let table = summarize(&runs, &[]).unwrap();
        assert_eq!(table.rows.len(), 2);
        assert_eq!(table.step_time_source, "part-a");
        assert_eq!(table.rows[0].method, "LoRA r=8（q、v）");
        assert_eq!(table.rows[1].method, "全量微调");
        assert!(table
            .markdown()
            .contains("| LoRA r=8（q、v） | 1 | 75.43 ± 0.00 |"));
        // 把一个结果复制一份当作另一个种子：与原来的合为同一行
        let mut more = runs.clone();
        let mut copy = runs[0].1.clone();
        copy.config.seed = 99;
        more.push(("copy.json".into(), copy));
        let t2 = summarize(&more, &[]).unwrap();
        assert_eq!(t2.rows.len(), table.rows.len());
        assert_eq!(t2.rows[0].seeds, vec![0, 99]);
        // 改了批大小：报错并指出文件
        let mut bad = runs[0].1.clone();
        bad.config.batch_size += 1;
        more.push(("bad.json".into(), bad));
        let err = summarize(&more, &[]).unwrap_err().to_string();
        assert!(err.contains("bad.json") && err.contains("预算"), "{err}");
        // 同一方法重复的种子：报错
        let mut dup = runs.clone();
        dup.push(("dup.json".into(), runs[0].1.clone()));
        assert!(summarize(&dup, &[])
            .unwrap_err()
            .to_string()
            .contains("重复的种子"));
    }

    /// 耗时测量：每步取同一方法各次测量的中位数；缺了某种方法的测量、或形状不同，都报错。
    #[test]
    fn step_time_comes_from_the_timing_runs() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/finetune-summary.json");
        let one: FinetuneSummary =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let runs = vec![("lora-r8-s0.json".to_string(), one.clone())];
        let timed = |secs: f64| {
            let mut t = one.clone();
            t.report.steps = 40;
            t.report.seconds_per_step = secs;
            t
        };
        let timing: Vec<_> = [0.30, 9.0, 0.25]
            .iter()
            .enumerate()
            .map(|(i, &s)| (format!("lora-r8-t{i}.json"), timed(s)))
            .collect();
        let table = summarize(&runs, &timing).unwrap();
        assert_eq!(table.rows[0].seconds_per_step, 0.30);
        assert_eq!(table.rows[0].timing_runs, 3);
        assert_eq!(table.step_time_source, "part-a-timing");
        let mut full = one.clone();
        full.method = Method::Full;
        full.trainable = full.all;
        let mut two = runs.clone();
        two.push(("full-s0.json".into(), full));
        let err = summarize(&two, &timing).unwrap_err().to_string();
        assert!(err.contains("全量微调") && err.contains("耗时"), "{err}");
        let mut other = timing.clone();
        other[0].1.max_len += 1;
        let err = summarize(&runs, &other).unwrap_err().to_string();
        assert!(err.contains("lora-r8-t0.json"), "{err}");
    }
}

/// `lora-table` 的参数。
#[derive(clap::Args, Debug)]
pub struct LoraTableArgs {
    /// 各次运行的结果目录（默认 code/results/part-a）
    #[arg(long, value_name = "目录")]
    pub dir: Option<std::path::PathBuf>,
}

/// `cargo run --release -- lora-table`：汇总 `lora-table.sh` 的各次运行，打印并写 `appendix-a-table.json`。
pub fn run(a: LoraTableArgs) -> anyhow::Result<()> {
    let dir = (a.dir).unwrap_or_else(|| super::results_dir().join("part-a"));
    // 耗时测量（lora-table.sh timing）放在旁边的 <目录>-timing；没有时“每步”取各次运行的中位数
    let timing_dir = dir.with_file_name(format!(
        "{}-timing",
        dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    let timing = if timing_dir.is_dir() {
        read_runs(&timing_dir)?
    } else {
        Vec::new()
    };
    let table = summarize(&read_runs(&dir)?, &timing)?;
    println!(
        "{}：每格 {} 步、批大小 {}、最长 {} 个记号；{}\n",
        table.model, table.steps, table.batch_size, table.max_len, table.machine
    );
    print!("{}", table.markdown());
    super::args::DryRun::default().save("appendix-a-table", &table)?;
    println!("图由 `cargo run --release -- figures` 重画");
    Ok(())
}
