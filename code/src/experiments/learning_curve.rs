//! 附录 A 的学习曲线：标注数据从 100 条到全部，从零训练、线性探测、LoRA 与全量微调各得多少准确率。
//!
//! 预训练与 LoRA 的用处要在标注数据少时才看得出来，所以横轴是训练样本数。协议（`code/scripts/learning-curve.sh`）：
//! 1. **选学习率**：每种方法在 [`SWEEP_EXAMPLES`] 条训练数据、种子 0 上试几个学习率，取验证集准确率最高的
//!    （`results/learning-curve/sweep/`）；
//! 2. **曲线**：用选出的学习率，每个训练集大小跑 3 个种子（`results/learning-curve/runs/`）；种子同时决定抽到哪些
//!    训练样本（[`TaskData::limit_train`](crate::data::task::TaskData::limit_train)，嵌套的子集）；
//! 3. 每次运行的步数相同（共同的预算），在验证集上选最好的一步，报告它在全部测试集上的准确率。
//!
//! [`summarize`] 核对这些约定（预算相同、学习率是选出的那个、每格种子不重复），再按训练集大小调用附录 A 对比表的
//! [`lora_table::summarize`]，得到每格的均值 ± 标准差、可训练参数、优化器状态、峰值内存与每步耗时。

use std::collections::BTreeMap;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::classify::FinetuneSummary;
use super::lora_table::{self, method_name, TableRow};

/// 选学习率时用的训练集大小。
pub const SWEEP_EXAMPLES: usize = 1000;

/// 一种方法的学习率扫描。
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSweep {
    /// 方法的中文名。
    pub method: String,
    /// 方法的类别（与对比表相同）。
    pub kind: usize,
    /// (学习率, 验证集上最好的准确率)，按学习率排序。
    pub grid: Vec<(f64, f64)>,
    /// 选出的学习率：验证集准确率最高的（一样高时取小的）。
    pub chosen: f64,
}

/// 曲线上的一个横坐标：一个训练集大小上的各方法。
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// 训练样本数。
    pub examples: usize,
    /// 各方法（均值 ± 标准差等），按类别与可训练参数排序。
    pub rows: Vec<TableRow>,
}

/// 整条学习曲线（存为 `code/results/appendix-a-learning-curve.json`）。
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LearningCurve {
    /// 模型目录。
    pub model: String,
    /// 每次运行的步数。
    pub steps: usize,
    /// 批大小。
    pub batch_size: usize,
    /// 最大长度。
    pub max_len: usize,
    /// 验证集的条数（选最好的一步用）。
    pub valid_examples: usize,
    /// 机器。
    pub machine: String,
    /// 每种方法的学习率扫描。
    pub sweeps: Vec<LrSweep>,
    /// 各训练集大小，从小到大。
    pub points: Vec<CurvePoint>,
}

/// 一次运行在验证集上最好的准确率（选出的那一步的）。
fn best_valid_accuracy(s: &FinetuneSummary) -> f64 {
    s.report
        .rows
        .iter()
        .find(|r| r.step == s.report.best_step)
        .map_or(f64::NAN, |r| r.valid.accuracy)
}

/// 训练集的条数；早于这个字段的结果文件是错误。
fn train_examples(file: &str, s: &FinetuneSummary) -> anyhow::Result<usize> {
    match s.examples {
        Some((train, _, _)) => Ok(train),
        None => bail!("{file} 里没有训练集的条数（examples）：用现在的 finetune 重跑"),
    }
}

/// 从 (学习率, 验证集准确率) 里挑：准确率最高的；一样高时取较小的学习率（`grid` 按学习率从小到大）。
fn pick(grid: &[(f64, f64)]) -> f64 {
    // 严格更高才换
    grid.iter()
        .fold(grid[0], |best, &x| if x.1 > best.1 { x } else { best })
        .0
}

/// 一种方法的几次扫描运行里选出的学习率（`learning-curve.sh` 用它决定曲线上的运行用哪个学习率）。
pub fn choose_lr(sweep: &[(String, FinetuneSummary)]) -> anyhow::Result<f64> {
    let Some((first_file, first)) = sweep.first() else {
        bail!("没有学习率扫描的结果");
    };
    let method = method_name(&first.method).0;
    let mut grid = Vec::new();
    for (file, s) in sweep {
        if method_name(&s.method).0 != method {
            bail!("{file} 的方法与 {first_file} 的不同：一次只给一种方法的扫描");
        }
        grid.push((s.config.optim.lr, best_valid_accuracy(s)));
    }
    grid.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(pick(&grid))
}

/// 由学习率扫描与各次运行汇总；`timing` 是专门的耗时测量（可以为空，见 [`lora_table::summarize`]）。
pub fn summarize(
    sweep: &[(String, FinetuneSummary)],
    runs: &[(String, FinetuneSummary)],
    timing: &[(String, FinetuneSummary)],
) -> anyhow::Result<LearningCurve> {
    if sweep.is_empty() || runs.is_empty() {
        bail!("没有学习率扫描或曲线的结果：先运行 bash code/scripts/learning-curve.sh");
    }
    // 0. 评估的时刻也是预算的一部分：验证集挑选的次数要处处相同
    let schedule = |s: &FinetuneSummary| (s.config.eval_every, s.config.eval_each_epoch);
    let want = schedule(&runs[0].1);
    if let Some((file, s)) = sweep.iter().chain(runs).find(|(_, s)| schedule(s) != want) {
        bail!(
            "{file} 的评估时刻（eval_every, eval_each_epoch）= {:?}，与 {} 的 {want:?} 不同",
            schedule(s),
            runs[0].0
        );
    }
    // 1. 每种方法选学习率
    let mut grids: BTreeMap<(usize, String), Vec<(f64, f64)>> = BTreeMap::new();
    for (file, s) in sweep {
        if train_examples(file, s)? != SWEEP_EXAMPLES || s.config.seed != 0 {
            bail!("{file} 不是学习率扫描的运行（应为 {SWEEP_EXAMPLES} 条训练数据、种子 0）");
        }
        let (name, kind) = method_name(&s.method);
        grids
            .entry((kind, name))
            .or_default()
            .push((s.config.optim.lr, best_valid_accuracy(s)));
    }
    let mut sweeps = Vec::new();
    for ((kind, method), mut grid) in grids {
        grid.sort_by(|a, b| a.0.total_cmp(&b.0));
        if grid.windows(2).any(|w| w[0].0 == w[1].0) {
            bail!("方法“{method}”的扫描里有重复的学习率");
        }
        let chosen = pick(&grid);
        sweeps.push(LrSweep {
            method,
            kind,
            grid,
            chosen,
        });
    }
    // 2. 曲线上的运行必须用选出的学习率；按训练集大小分组
    let mut by_size: BTreeMap<usize, Vec<(String, FinetuneSummary)>> = BTreeMap::new();
    for (file, s) in runs {
        let (name, _) = method_name(&s.method);
        let Some(sw) = sweeps.iter().find(|sw| sw.method == name) else {
            bail!("{file} 的方法“{name}”没有学习率扫描");
        };
        if s.config.optim.lr != sw.chosen {
            bail!(
                "{file} 的学习率是 {}，不是扫描为“{name}”选出的 {}：改了扫描之后要重跑曲线",
                s.config.optim.lr,
                sw.chosen
            );
        }
        by_size
            .entry(train_examples(file, s)?)
            .or_default()
            .push((file.clone(), s.clone()));
    }
    // 3. 每个大小是一张对比表（它核对预算相同、种子不重复）；各大小之间也要同一预算
    let first = &runs[0].1;
    let valid_examples = first.examples.map_or(0, |e| e.1);
    let mut points = Vec::new();
    for (examples, group) in by_size {
        let table = lora_table::summarize(&group, timing)?;
        if (
            table.model.as_str(),
            table.steps,
            table.batch_size,
            table.max_len,
        ) != (
            first.model.as_str(),
            first.report.steps,
            first.config.batch_size,
            first.max_len,
        ) {
            bail!("训练集 {examples} 条的运行与 {} 的预算不同", runs[0].0);
        }
        if group
            .iter()
            .any(|(_, s)| s.examples.map(|e| e.1) != Some(valid_examples))
        {
            bail!("训练集 {examples} 条的运行用的验证集大小不同");
        }
        points.push(CurvePoint {
            examples,
            rows: table.rows,
        });
    }
    Ok(LearningCurve {
        model: first.model.clone(),
        steps: first.report.steps,
        batch_size: first.config.batch_size,
        max_len: first.max_len,
        valid_examples,
        machine: first.machine.clone(),
        sweeps,
        points,
    })
}

impl LearningCurve {
    /// 书中的两张 Markdown 表：各大小上的测试准确率（均值 ± 标准差），与每种方法的开销。
    pub fn markdown(&self) -> String {
        let mut methods: Vec<&TableRow> = Vec::new();
        for p in &self.points {
            for r in &p.rows {
                if !methods.iter().any(|m| m.method == r.method) {
                    methods.push(r);
                }
            }
        }
        methods.sort_by_key(|r| (r.kind, r.trainable));
        let mut out = String::from("| 方法 | 学习率 |");
        for p in &self.points {
            out.push_str(&format!(" {} 条 |", p.examples));
        }
        out.push_str("\n| --- | ---: |");
        out.push_str(&" ---: |".repeat(self.points.len()));
        out.push('\n');
        for m in &methods {
            let lr = self
                .sweeps
                .iter()
                .find(|s| s.method == m.method)
                .map_or(f64::NAN, |s| s.chosen);
            out.push_str(&format!("| {} | {lr:.0e} |", m.method));
            for p in &self.points {
                match p.rows.iter().find(|r| r.method == m.method) {
                    Some(r) => out.push_str(&format!(
                        " {:.2} ± {:.2} |",
                        100.0 * r.accuracy.mean,
                        100.0 * r.accuracy.std
                    )),
                    None => out.push_str(" — |"),
                }
            }
            out.push('\n');
        }
        out.push_str(
            "\n| 方法 | 可训练参数 | 占比 | 优化器状态 | 峰值内存（全部数据） | 每步（秒） |\n\
             | --- | ---: | ---: | ---: | ---: | ---: |\n",
        );
        let mib = |b: f64| b / (1024.0 * 1024.0);
        let last = self.points.last();
        for m in &methods {
            let rss = last
                .and_then(|p| p.rows.iter().find(|r| r.method == m.method))
                .map_or(f64::NAN, |r| r.peak_rss_bytes);
            out.push_str(&format!(
                "| {} | {} | {:.2}% | {:.2} MiB | {:.0} MiB | {:.3} |\n",
                m.method,
                crate::peft::model::thousands(m.trainable),
                100.0 * m.trainable as f64 / m.all as f64,
                mib(m.optimizer_bytes as f64),
                mib(rss),
                m.seconds_per_step
            ));
        }
        out
    }
}

impl LearningCurve {
    /// 书中的图：每种方法一条线，横轴是训练样本数（对数坐标），误差棒是 ± 标准差。
    pub fn chart(&self) -> anyhow::Result<String> {
        use crate::plot::{ErrorBarChart, ErrorSeries};
        let mut series: Vec<ErrorSeries> = Vec::new();
        for p in &self.points {
            for r in &p.rows {
                let i = match series.iter().position(|s| s.name == r.method) {
                    Some(i) => i,
                    None => {
                        series.push(ErrorSeries {
                            name: r.method.clone(),
                            points: Vec::new(),
                            color: r.kind,
                        });
                        series.len() - 1
                    }
                };
                series[i].points.push((
                    p.examples as f64,
                    100.0 * r.accuracy.mean,
                    100.0 * r.accuracy.std,
                ));
            }
        }
        series.sort_by_key(|s| s.color);
        ErrorBarChart {
            title: format!(
                "学习曲线：中文迷你 BERT 上的情感分类（每次 {} 步）",
                self.steps
            ),
            x_label: "训练样本数（对数坐标）".into(),
            y_label: "测试准确率（%）".into(),
            series,
            log_x: true,
        }
        .to_svg()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 一次假的运行：方法、训练集大小、种子、学习率、验证与测试准确率。
    fn run(method: &str, n: usize, seed: u64, lr: f64, valid: f64, test: f64) -> FinetuneSummary {
        let mut s: FinetuneSummary =
            serde_json::from_str(include_str!("../../tests/fixtures/finetune-summary.json"))
                .unwrap();
        s.method = match method {
            "full" => super::super::classify::Method::Full,
            "probe" => super::super::classify::Method::Probe,
            _ => super::super::classify::Method::Scratch,
        };
        s.examples = Some((n, 500, 1742));
        s.config.seed = seed;
        s.config.optim.lr = lr;
        s.report.test.accuracy = test;
        let best = s.report.best_step;
        for r in &mut s.report.rows {
            r.valid.accuracy = if r.step == best { valid } else { 0.0 };
        }
        s
    }

    fn named(runs: Vec<FinetuneSummary>) -> Vec<(String, FinetuneSummary)> {
        runs.into_iter()
            .enumerate()
            .map(|(i, s)| (format!("r{i}.json"), s))
            .collect()
    }

    #[test]
    fn picks_the_learning_rate_on_validation_and_groups_by_size() {
        let sweep = named(vec![
            run("full", 1000, 0, 1e-4, 0.80, 0.99),
            run("full", 1000, 0, 3e-5, 0.85, 0.10),
            run("full", 1000, 0, 3e-4, 0.85, 0.10),
            run("probe", 1000, 0, 1e-3, 0.70, 0.10),
        ]);
        let mut runs = Vec::new();
        for (n, acc) in [(100, 0.6), (1000, 0.8)] {
            for seed in 0..3 {
                runs.push(run("full", n, seed, 3e-5, 0.5, acc + 0.01 * seed as f64));
                runs.push(run("probe", n, seed, 1e-3, 0.5, acc - 0.1));
            }
        }
        let curve = summarize(&sweep, &named(runs), &[]).unwrap();
        // 选的是验证集最好的（测试集 0.99 的那个不选）；一样高时取小的学习率
        let full = curve.sweeps.iter().find(|s| s.kind == 4).unwrap();
        assert_eq!(full.chosen, 3e-5);
        assert_eq!(choose_lr(&sweep[..3]).unwrap(), 3e-5);
        assert!(choose_lr(&sweep).is_err(), "混了两种方法");
        assert_eq!(full.grid.len(), 3);
        assert_eq!(
            curve.points.iter().map(|p| p.examples).collect::<Vec<_>>(),
            [100, 1000]
        );
        let row = curve.points[1].rows.iter().find(|r| r.kind == 4).unwrap();
        assert!((row.accuracy.mean - 0.81).abs() < 1e-12);
        assert!((row.accuracy.std - 0.01).abs() < 1e-12);
        assert_eq!(curve.valid_examples, 500);
        let svg = curve.chart().unwrap();
        assert!(svg.contains("学习曲线") && svg.contains("全量微调") && svg.contains("线性探测"));
        let md = curve.markdown();
        assert!(
            md.contains("| 100 条 | 1000 条 |") && md.contains("81.00 ± 1.00"),
            "{md}"
        );
    }

    #[test]
    fn rejects_runs_that_break_the_protocol() {
        let sweep = named(vec![
            run("full", 1000, 0, 3e-5, 0.85, 0.8),
            run("full", 1000, 0, 1e-4, 0.80, 0.8),
        ]);
        let err = |runs: Vec<FinetuneSummary>| {
            summarize(&sweep, &named(runs), &[])
                .unwrap_err()
                .to_string()
        };
        // 不是选出的学习率
        let e = err(vec![run("full", 100, 0, 1e-4, 0.5, 0.6)]);
        assert!(
            e.contains("不是扫描") && e.contains("3e-5") | e.contains("0.00003"),
            "{e}"
        );
        // 没有扫描过的方法
        assert!(err(vec![run("probe", 100, 0, 1e-3, 0.5, 0.6)]).contains("没有学习率扫描"));
        // 同一格的种子重复
        let e = err(vec![
            run("full", 100, 1, 3e-5, 0.5, 0.6),
            run("full", 100, 1, 3e-5, 0.5, 0.6),
        ]);
        assert!(e.contains("重复的种子"), "{e}");
        // 扫描里混进了别的大小
        let bad = named(vec![run("full", 300, 0, 3e-5, 0.85, 0.8)]);
        let e = summarize(&bad, &named(vec![run("full", 100, 0, 3e-5, 0.5, 0.6)]), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("不是学习率扫描的运行"), "{e}");
        // 评估的时刻不同（逐轮评估没关）
        let mut epochly = run("full", 100, 0, 3e-5, 0.5, 0.6);
        epochly.config.eval_each_epoch = !epochly.config.eval_each_epoch;
        let e = err(vec![run("full", 300, 0, 3e-5, 0.5, 0.6), epochly]);
        assert!(e.contains("评估时刻") && e.contains("r1.json"), "{e}");
    }
}

/// `learning-curve` 的参数。
#[derive(clap::Args, Debug)]
pub struct LearningCurveArgs {
    /// 结果目录（默认 code/results/learning-curve，其中的 sweep/、runs/、timing/）
    #[arg(long, value_name = "目录")]
    pub dir: Option<std::path::PathBuf>,
    /// 只打印这几个扫描结果（同一种方法）里选出的学习率（learning-curve.sh 用）
    #[arg(long, value_name = "文件", num_args = 1..)]
    pub choose_lr: Vec<std::path::PathBuf>,
}

/// `cargo run --release -- learning-curve`：汇总学习率扫描与各次运行，打印并写 `appendix-a-learning-curve.json`。
pub fn run(a: LearningCurveArgs) -> anyhow::Result<()> {
    use lora_table::{read_run, read_runs};
    if !a.choose_lr.is_empty() {
        let sweep = (a.choose_lr.iter())
            .map(|p| read_run(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        println!("{}", choose_lr(&sweep)?);
        return Ok(());
    }
    let dir = (a.dir).unwrap_or_else(|| super::results_dir().join("learning-curve"));
    let timing = if dir.join("timing").is_dir() {
        read_runs(&dir.join("timing"))?
    } else {
        Vec::new()
    };
    let curve = summarize(
        &read_runs(&dir.join("sweep"))?,
        &read_runs(&dir.join("runs"))?,
        &timing,
    )?;
    println!(
        "{}：每次 {} 步、批大小 {}、最长 {} 个记号，验证集 {} 条；{}\n",
        curve.model,
        curve.steps,
        curve.batch_size,
        curve.max_len,
        curve.valid_examples,
        curve.machine
    );
    for sw in &curve.sweeps {
        let grid: Vec<String> = (sw.grid.iter())
            .map(|(lr, acc)| format!("{lr:.0e} → {:.2}%", 100.0 * acc))
            .collect();
        println!(
            "学习率扫描 {}：{}；选 {:.0e}",
            sw.method,
            grid.join("，"),
            sw.chosen
        );
    }
    println!();
    print!("{}", curve.markdown());
    super::args::DryRun::default().save("appendix-a-learning-curve", &curve)?;
    println!("图由 `cargo run --release -- figures` 重画");
    Ok(())
}
