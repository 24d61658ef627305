//! 附录 B：本书的实现与 PyTorch 在同一台机器上的耗时之比。
//!
//! 本书一侧由 criterion 测（`cargo bench --bench kernels --bench train_step`），PyTorch 一侧由
//! `code/scripts/bench_torch.py` 测（同样的算子、形状与线程数），`bash code/scripts/bench.sh` 依次运行两者，
//! 再由 `cargo run --release -- perf` 读两边的结果，算出比值、对照目标，写进 `code/results/appendix-b-perf.json`。

use std::path::Path;

use anyhow::Context;

use super::median;
use serde::{Deserialize, Serialize};

use dfdx::losses::cross_entropy_with_logits_loss;
use dfdx::nn::ZeroGrads;
use dfdx::prelude::*;

use crate::train::SequenceClassifier;
use crate::transformer::attention::PaddingMask;
use crate::transformer::encoder::Mode;

/// 分类模型训练一步（criterion 的 `train_step_bert_base`、GPU 上的 `cuda_step` 与 `examples/step_timing.rs` 测的就是它）：
/// 前向到 logits、交叉熵、反向。梯度缓冲区第一次分配、之后每步清零后复用（与 3.6 节的训练循环相同）。
/// GPU 上它只是把内核排进队列，计时前要由调用者同步设备。
pub fn classifier_step<E, D, Mo>(
    model: &Mo,
    grads: &mut Option<Gradients<E, D>>,
    tokens: &Tensor<(usize, usize), usize, D>,
    mask: &PaddingMask<E, D>,
    labels: &Tensor<(usize, usize), E, D>,
) where
    E: Dtype,
    D: Device<E>,
    Mo: SequenceClassifier<E, D>,
{
    let mut g = grads.take().unwrap_or_else(|| model.params().alloc_grads());
    model.params().zero_grads(&mut g);
    let logits = model
        .logits(tokens.clone().traced(g), None, mask, Mode::Train)
        .expect("基准的输入形状是固定的、合法的");
    *grads = Some(cross_entropy_with_logits_loss(logits, labels.clone()).backward());
}

/// 基准与内存测量共用的一批输入：`b` 条序列、每条 `s` 个词 id（`(i·7919 + 13) mod vocab`，确定的伪随机）、全长的填充掩码，
/// 以及两类交替的 one-hot 标签 `(b, 2)`。criterion 的 `train_step`、`cuda_step` 与例子 `step_timing`、`qlora_memory`、`train_memory`
/// 都用它，测的是同一批数据。
pub fn bench_batch<E: Dtype, D: Device<E>>(
    dev: &D,
    b: usize,
    s: usize,
    vocab: usize,
) -> (
    Tensor<(usize, usize), usize, D>,
    PaddingMask<E, D>,
    Tensor<(usize, usize), E, D>,
) {
    let ids: Vec<usize> = (0..b * s).map(|i| (i * 7919 + 13) % vocab).collect();
    let mask = PaddingMask::from_lengths(dev, &vec![s; b], s).expect("全长的掩码");
    let labels = (0..b)
        .flat_map(|i| {
            if i % 2 == 0 {
                [E::ONE, E::default()]
            } else {
                [E::default(), E::ONE]
            }
        })
        .collect();
    (
        dev.tensor_from_vec(ids, (b, s)),
        mask,
        dev.tensor_from_vec(labels, (b, 2)),
    )
}

/// 表中的一行。
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerfRow {
    /// 测的是什么（中文）。
    pub what: String,
    /// PyTorch 的中位数耗时（毫秒）；没有测 PyTorch 时为 `None`。
    pub torch_ms: Option<f64>,
    /// dfdx 原来的写法（组合算子）的中位数耗时（毫秒）；没有对应写法时为 `None`。
    pub dfdx_ms: Option<f64>,
    /// 本书的实现（融合算子）的中位数耗时（毫秒）。
    pub ours_ms: f64,
    /// 目标：本书 / PyTorch 不超过多少。
    pub target: f64,
    /// 测了几轮时，各轮“本书 / PyTorch”的最小与最大值（只有一轮或没有 PyTorch 时为 `None`）。
    pub ratio_range: Option<(f64, f64)>,
}

impl PerfRow {
    /// 本书 / PyTorch（各轮中位数之比）。
    pub fn ratio(&self) -> Option<f64> {
        self.torch_ms.map(|t| self.ours_ms / t)
    }
}

/// 整张表（`code/results/appendix-b-perf.json`）。
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerfTable {
    /// 机器。
    pub machine: String,
    /// 测了几轮（每轮先测本书一侧、再测 PyTorch 一侧）；表中的耗时是各轮的中位数。
    pub rounds: usize,
    /// PyTorch 的版本与线程数（没有测 PyTorch 时为 `None`）。
    pub torch: Option<String>,
    /// 各行。
    pub rows: Vec<PerfRow>,
    /// LoRA 一步 / 全量微调一步（bert-base，本书的实现）。
    pub lora_over_full: f64,
    /// 同一比值在 PyTorch 上。
    pub lora_over_full_torch: Option<f64>,
    /// bert-base 推理：合并后的 LoRA 模型 / 原模型（目标 1 ± 0.03）。
    pub merged_over_base: f64,
    /// bert-base 推理：未合并的 LoRA 模型（多一条 B(Ax) 分支）/ 原模型。
    pub unmerged_over_base: f64,
}

/// 一项测量：criterion 的组与函数名（本书的实现、dfdx 的写法）、PyTorch 结果里的键、目标。
struct Item {
    what: &'static str,
    group: &'static str,
    ours: &'static str,
    dfdx: Option<&'static str>,
    torch: &'static str,
    target: f64,
}

const ITEMS: &[Item] = &[
    Item {
        what: "softmax [8,12,128,128] 前向",
        group: "kernels_softmax",
        ours: "fused_fwd",
        dfdx: Some("dfdx_fwd"),
        torch: "softmax/fwd",
        target: 1.5,
    },
    Item {
        what: "softmax 前向 + 反向",
        group: "kernels_softmax",
        ours: "fused_fwd_bwd",
        dfdx: Some("dfdx_fwd_bwd"),
        torch: "softmax/fwd_bwd",
        target: 1.5,
    },
    Item {
        what: "带掩码的 softmax 前向",
        group: "kernels_masked_softmax",
        ours: "fused_fwd",
        dfdx: Some("dfdx_fwd"),
        torch: "masked_softmax/fwd",
        target: 1.5,
    },
    Item {
        what: "带掩码的 softmax 前向 + 反向",
        group: "kernels_masked_softmax",
        ours: "fused_fwd_bwd",
        dfdx: Some("dfdx_fwd_bwd"),
        torch: "masked_softmax/fwd_bwd",
        target: 1.5,
    },
    Item {
        what: "GELU [8,128,3072] 前向",
        group: "kernels_gelu",
        ours: "fused_fwd",
        dfdx: Some("dfdx_fwd"),
        torch: "gelu/fwd",
        target: 1.5,
    },
    Item {
        what: "GELU 前向 + 反向",
        group: "kernels_gelu",
        ours: "fused_fwd_bwd",
        dfdx: Some("dfdx_fwd_bwd"),
        torch: "gelu/fwd_bwd",
        target: 1.5,
    },
    Item {
        what: "LayerNorm [8,128,768] 前向",
        group: "kernels_layer_norm",
        ours: "fused_fwd",
        dfdx: Some("dfdx_fwd"),
        torch: "layer_norm/fwd",
        target: 1.5,
    },
    Item {
        what: "LayerNorm 前向 + 反向",
        group: "kernels_layer_norm",
        ours: "fused_fwd_bwd",
        dfdx: Some("dfdx_fwd_bwd"),
        torch: "layer_norm/fwd_bwd",
        target: 1.5,
    },
    Item {
        what: "dropout [8,128,768] 前向（p = 0.1）",
        group: "kernels_dropout",
        ours: "fused_fwd",
        dfdx: Some("dfdx_fwd"),
        torch: "dropout/fwd",
        target: 1.5,
    },
    Item {
        what: "dropout 前向 + 反向",
        group: "kernels_dropout",
        ours: "fused_fwd_bwd",
        dfdx: Some("dfdx_fwd_bwd"),
        torch: "dropout/fwd_bwd",
        target: 1.5,
    },
    Item {
        what: "线性层 [1024,768]×[768,3072] 前向",
        group: "kernels_gemm",
        ours: "fused_fwd",
        dfdx: Some("dfdx_fwd"),
        torch: "gemm/fwd",
        target: 1.0 / 0.9,
    },
    Item {
        what: "编码器 d512 训练一步 [8,128]",
        group: "train_step_encoder_d512",
        ours: "8x128",
        dfdx: None,
        torch: "train_step_encoder_d512/8x128",
        target: 1.0,
    },
    Item {
        what: "编码器 d512 训练一步 [2,50]",
        group: "train_step_encoder_d512",
        ours: "2x50",
        dfdx: None,
        torch: "train_step_encoder_d512/2x50",
        target: 1.0,
    },
    Item {
        what: "bert-base 全量微调一步 [8,128]",
        group: "train_step_bert_base",
        ours: "full_8x128",
        dfdx: None,
        torch: "train_step_bert_base/full_8x128",
        target: 1.0,
    },
    Item {
        what: "bert-base LoRA 一步 [8,128]",
        group: "train_step_bert_base",
        ours: "lora_8x128",
        dfdx: None,
        torch: "train_step_bert_base/lora_8x128",
        target: 1.0,
    },
    Item {
        what: "AdamW 一步（bert-base 全量，含梯度裁剪）",
        group: "optimizer_bert_base",
        ours: "adamw_full",
        dfdx: None,
        torch: "optimizer_bert_base/adamw_full",
        target: 1.0,
    },
    Item {
        what: "AdamW 一步（bert-base LoRA，含梯度裁剪）",
        group: "optimizer_bert_base",
        ours: "adamw_lora",
        dfdx: None,
        torch: "optimizer_bert_base/adamw_lora",
        target: 1.0,
    },
];

/// criterion 记下的中位数（毫秒）。
fn criterion_median_ms(dir: &Path, group: &str, function: &str) -> anyhow::Result<f64> {
    super::criterion_estimate_ms(
        dir,
        &[group, function],
        "median",
        "bash code/scripts/bench.sh",
    )
}

/// 一轮测量：criterion 的结果目录与 `bench_torch.py` 写的 JSON（没有测 PyTorch 时为 `None`）。
#[derive(Clone, Debug)]
pub struct Round {
    /// criterion 的结果目录（`target/criterion` 或它的一份复制）。
    pub criterion_dir: std::path::PathBuf,
    /// PyTorch 一侧的结果。
    pub torch: Option<std::path::PathBuf>,
}

impl Round {
    /// `bench.sh` 存下的各轮：`dir/round-1`、`dir/round-2`……，每轮里有 `criterion/` 与（测了 PyTorch 时）`torch.json`。
    pub fn list(dir: &Path) -> anyhow::Result<Vec<Round>> {
        let mut rounds = Vec::new();
        for n in 1.. {
            let d = dir.join(format!("round-{n}"));
            if !d.is_dir() {
                break;
            }
            let torch = d.join("torch.json");
            rounds.push(Round {
                criterion_dir: d.join("criterion"),
                torch: torch.is_file().then_some(torch),
            });
        }
        anyhow::ensure!(
            !rounds.is_empty(),
            "{} 里没有 round-1 目录：先运行 `bash code/scripts/bench.sh`",
            dir.display()
        );
        Ok(rounds)
    }
}

/// 读 PyTorch 一侧的一轮结果。
fn read_torch(p: &Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("读不到 PyTorch 的结果 {}", p.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} 不是 bench_torch.py 写的 JSON", p.display()))
}

/// 读各轮两边的结果，组成表：每一格取各轮的中位数。各轮要么都测了 PyTorch，要么都没有。
pub fn collect(rounds: &[Round], machine: String) -> anyhow::Result<PerfTable> {
    anyhow::ensure!(!rounds.is_empty(), "至少要有一轮测量");
    let with_torch = rounds.iter().filter(|r| r.torch.is_some()).count();
    anyhow::ensure!(
        with_torch == 0 || with_torch == rounds.len(),
        "有的轮次测了 PyTorch、有的没有（{with_torch}/{} 轮有 torch.json）：比值要在同样的轮次上算",
        rounds.len()
    );
    let torch: Vec<serde_json::Value> = rounds
        .iter()
        .filter_map(|r| r.torch.as_deref())
        .map(read_torch)
        .collect::<anyhow::Result<_>>()?;
    // 一项在各轮的测量（毫秒）
    let ours_each = |group: &str, function: &str| -> anyhow::Result<Vec<f64>> {
        rounds
            .iter()
            .map(|r| criterion_median_ms(&r.criterion_dir, group, function))
            .collect()
    };
    let mut rows = Vec::new();
    for item in ITEMS {
        let torch_each: Vec<f64> = torch
            .iter()
            .map(|t| {
                t["ms"][item.torch].as_f64().with_context(|| {
                    format!(
                        "PyTorch 的结果里没有 ms.\"{}\"（bench_torch.py 的版本不对？）",
                        item.torch
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let ours = ours_each(item.group, item.ours)?;
        let ratio_range = (torch_each.len() > 1).then(|| {
            let r: Vec<f64> = ours.iter().zip(&torch_each).map(|(o, t)| o / t).collect();
            let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (lo, hi)
        });
        rows.push(PerfRow {
            what: item.what.to_string(),
            torch_ms: (!torch_each.is_empty()).then(|| median(torch_each)),
            dfdx_ms: item
                .dfdx
                .map(|f| ours_each(item.group, f).map(median))
                .transpose()?,
            ours_ms: median(ours),
            target: item.target,
            ratio_range,
        });
    }
    let find = |what: &str| {
        rows.iter()
            .find(|r| r.what.starts_with(what))
            .expect("表中有这一行")
    };
    let (full, lora) = (find("bert-base 全量"), find("bert-base LoRA"));
    let inference = |f| ours_each("inference_bert_base", f).map(median);
    let base = inference("base_8x128")?;
    Ok(PerfTable {
        merged_over_base: inference("merged_8x128")? / base,
        unmerged_over_base: inference("lora_8x128")? / base,
        lora_over_full: lora.ours_ms / full.ours_ms,
        lora_over_full_torch: lora.torch_ms.zip(full.torch_ms).map(|(l, f)| l / f),
        torch: torch.first().map(|t| {
            format!(
                "PyTorch {}，{} 个线程",
                t["torch"].as_str().unwrap_or("?"),
                t["threads"]
            )
        }),
        machine,
        rounds: rounds.len(),
        rows,
    })
}

impl PerfTable {
    /// 书中的 Markdown 表。
    pub fn markdown(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.3}"));
        let several = self.rounds > 1;
        let mut out = String::from(
            "| 测量 | PyTorch（毫秒） | dfdx 组合算子（毫秒） | 本书（毫秒） | 本书 / PyTorch |",
        );
        out.push_str(if several {
            " 各轮的比值 | 目标 |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        } else {
            " 目标 |\n| --- | ---: | ---: | ---: | ---: | ---: |\n"
        });
        for r in &self.rows {
            // 按表中显示的两位小数与目标比较
            let ratio = r.ratio().map_or("—".to_string(), |x| {
                let shown = (x * 100.0).round() / 100.0;
                let missed = shown > (r.target * 100.0).round() / 100.0;
                format!("{x:.2}{}", if missed { "（未达到）" } else { "" })
            });
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |",
                r.what,
                ms(r.torch_ms),
                ms(r.dfdx_ms),
                ms(Some(r.ours_ms)),
                ratio,
            ));
            if several {
                let range = r
                    .ratio_range
                    .map_or("—".to_string(), |(lo, hi)| format!("{lo:.2}–{hi:.2}"));
                out.push_str(&format!(" {range} |"));
            }
            out.push_str(&format!(" ≤ {:.2} |\n", r.target));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 在 `dir` 下造一轮结果：criterion 里每一项都是 `ours` 毫秒（dfdx 的写法 10 倍），PyTorch 一侧每一项都是 `torch` 毫秒。
    fn fake_round(dir: &Path, ours: f64, torch: Option<f64>) -> Round {
        let crit = dir.join("criterion");
        let write = |group: &str, function: &str, ms: f64| {
            let d = crit.join(group).join(function).join("new");
            std::fs::create_dir_all(&d).unwrap();
            let json = serde_json::json!({ "median": { "point_estimate": ms * 1e6 } });
            std::fs::write(d.join("estimates.json"), json.to_string()).unwrap();
        };
        for item in ITEMS {
            write(item.group, item.ours, ours);
            if let Some(f) = item.dfdx {
                write(item.group, f, 10.0 * ours);
            }
        }
        for f in ["base_8x128", "merged_8x128", "lora_8x128"] {
            write("inference_bert_base", f, ours);
        }
        let torch = torch.map(|t| {
            let ms: serde_json::Map<String, serde_json::Value> = ITEMS
                .iter()
                .map(|i| (i.torch.to_string(), t.into()))
                .collect();
            let p = dir.join("torch.json");
            let json = serde_json::json!({ "torch": "2.15.0", "threads": 2, "ms": ms });
            std::fs::write(&p, json.to_string()).unwrap();
            p
        });
        Round {
            criterion_dir: crit,
            torch,
        }
    }

    #[test]
    fn each_cell_is_the_median_over_rounds_and_the_ratio_range_is_shown() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("median");
        // 三轮：本书 1、2、4 毫秒，PyTorch 3、2、1 毫秒 → 中位数 2 与 2，比值 1.00；各轮比值 1/3、1、4
        for (n, (ours, torch)) in [(1.0, 3.0), (2.0, 2.0), (4.0, 1.0)].into_iter().enumerate() {
            fake_round(&dir.join(format!("round-{}", n + 1)), ours, Some(torch));
        }
        let rounds = Round::list(&dir).unwrap();
        assert_eq!(rounds.len(), 3);
        let t = collect(&rounds, "测试机".into()).unwrap();
        assert_eq!(t.rounds, 3);
        let row = &t.rows[0];
        assert_eq!(
            (row.ours_ms, row.torch_ms, row.dfdx_ms),
            (2.0, Some(2.0), Some(20.0))
        );
        let (lo, hi) = row.ratio_range.unwrap();
        assert!((lo - 1.0 / 3.0).abs() < 1e-12 && (hi - 4.0).abs() < 1e-12);
        let md = t.markdown();
        assert!(
            md.contains("各轮的比值") && md.contains("| 1.00 | 0.33–4.00 |"),
            "{md}"
        );
        assert_eq!(t.torch.as_deref(), Some("PyTorch 2.15.0，2 个线程"));
    }

    #[test]
    fn one_round_has_no_range_column_and_rounds_must_agree_on_torch() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("one");
        let a = fake_round(&dir.join("a"), 3.0, Some(2.0));
        let t = collect(std::slice::from_ref(&a), "测试机".into()).unwrap();
        assert_eq!(t.rows[0].ratio_range, None);
        assert!(!t.markdown().contains("各轮"));
        assert!(t.markdown().contains("| 1.50 | ≤ 1.50 |"));
        // 一轮有 PyTorch、一轮没有：不能混着算
        let b = fake_round(&dir.join("b"), 3.0, None);
        let err = collect(&[a, b], "测试机".into()).unwrap_err().to_string();
        assert!(err.contains("有的轮次测了 PyTorch"), "{err}");
        // 没有 round-1 的目录
        let err = Round::list(&dir).unwrap_err().to_string();
        assert!(err.contains("round-1"), "{err}");
    }
}

/// `perf` 的参数。
#[derive(clap::Args, Debug)]
pub struct PerfArgs {
    /// bench.sh 存下的多轮测量（其中的 round-1、round-2……）；每一格取各轮的中位数
    #[arg(long, value_name = "目录", conflicts_with_all = ["criterion_dir", "torch"])]
    pub rounds: Option<std::path::PathBuf>,
    /// 只有一轮时：criterion 的结果目录（默认 <仓库>/target/criterion）
    #[arg(long, value_name = "目录")]
    pub criterion_dir: Option<std::path::PathBuf>,
    /// 只有一轮时：code/scripts/bench_torch.py 写的 JSON（不给则不算比值）
    #[arg(long, value_name = "文件")]
    pub torch: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub dry_run: super::args::DryRun,
}

/// `cargo run --release -- perf`：读各轮测量，打印本书 / PyTorch 的表，写 `appendix-b-perf.json`。
pub fn run(a: PerfArgs) -> anyhow::Result<()> {
    let rounds = match a.rounds {
        Some(dir) => Round::list(&dir)?,
        None => vec![Round {
            criterion_dir: (a.criterion_dir).unwrap_or_else(super::default_criterion_dir),
            torch: a.torch,
        }],
    };
    let table = collect(&rounds, super::machine_description())?;
    println!(
        "{}；{}；{} 轮，每格取各轮的中位数\n",
        table.machine,
        table.torch.as_deref().unwrap_or("没有 PyTorch 的测量"),
        table.rounds
    );
    print!("{}", table.markdown());
    let torch = (table.lora_over_full_torch).map_or(String::new(), |t| format!("；PyTorch {t:.2}"));
    println!(
        "\nbert-base：LoRA 一步 / 全量微调一步 = {:.2}（目标 ≤ 0.70{torch}）",
        table.lora_over_full
    );
    println!(
        "bert-base 推理 [8,128]：合并后的 LoRA / 原模型 = {:.3}（目标 1 ± 0.03），未合并的 LoRA / 原模型 = {:.3}",
        table.merged_over_base, table.unmerged_over_base
    );
    a.dry_run.save("appendix-b-perf", &table)
}
