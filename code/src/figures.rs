//! 书中每一张图的登记表。
//!
//! 每张图是一个 [`Figure`]：文件名加一个渲染函数。`cargo run --release -- figures`
//! 按这张表把所有图写进 `src/figures/`；测试 `tests/figures.rs` 重新渲染并与提交的文件
//! 逐字节比较，代码改了而图没更新就会失败。

use std::path::{Path, PathBuf};

use dfdx::prelude::*;

use crate::basics::autodiff::gelu_gradient_table;
use crate::experiments::ln_stability::LnStabilityResult;
use crate::experiments::load_result;
use crate::experiments::sentiment::SentimentResult;
use crate::experiments::seq_cost::SeqCostResult;
use crate::lora::analysis::{efficiency, encoder_trainable, TargetSet};
use crate::lora::recovery::{RecoveryResult, TARGET_SINGULAR_VALUES};
use crate::plot::{ColorMap, Heatmap, LineChart, Series};
use crate::transformer::encoder::SeedEncoder;
use crate::transformer::pe_numerics::{pe_dot, pe_numerics};
use crate::transformer::positional::{frequencies_exp_log, sinusoidal_table};

/// 一张图。
pub struct Figure {
    /// `src/figures/` 下的文件名。
    pub file: &'static str,
    /// 一句话说明（命令行里显示）。
    pub about: &'static str,
    /// 计算数据并渲染成 SVG。
    pub render: fn() -> anyhow::Result<String>,
}

/// 书中的全部插图。
pub fn all() -> Vec<Figure> {
    vec![
        Figure {
            file: "part0-gelu-grad.svg",
            about: "第 0 部分：GELU 的导数，dfdx accurate_gelu 的反向与精确值",
            render: gelu_grad_figure,
        },
        Figure {
            file: "part1-pe-heatmap.svg",
            about: "1.3 节：位置编码矩阵（64 个位置 × 64 维）",
            render: pe_heatmap_figure,
        },
        Figure {
            file: "part1-pe-similarity.svg",
            about: "1.3 节：位置编码向量的点积随距离的变化",
            render: pe_similarity_figure,
        },
        Figure {
            file: "part1-pe-numerics.svg",
            about: "1.3 节：exp(log) 与 pow 两种写法在 f32 下的误差",
            render: pe_numerics_figure,
        },
        Figure {
            file: "part1-seq-cost.svg",
            about: "1.7 节：耗时随序列长度的变化与公式（读 results/part1-seq-cost.json）",
            render: seq_cost_figure,
        },
        Figure {
            file: "part2-trainable-vs-rank.svg",
            about: "2.5 节：参考配置编码器加 LoRA 后，可训练参数占比随秩的变化",
            render: trainable_vs_rank_figure,
        },
        Figure {
            file: "part2-efficiency.svg",
            about: "2.5 节：LoRA 参数占原矩阵的比例随秩的变化（几种矩阵尺寸）",
            render: efficiency_figure,
        },
        Figure {
            file: "part2-recovery-error.svg",
            about: "2.7 节：LoRA 恢复秩 4 的 ΔW，误差随秩的变化（读 results/part2-recovery.json）",
            render: recovery_error_figure,
        },
        Figure {
            file: "part2-recovery-spectrum.svg",
            about: "2.7 节：学到的 (α/r)BA 的奇异值谱（读 results/part2-recovery.json）",
            render: recovery_spectrum_figure,
        },
        Figure {
            file: "part1-sentiment-loss.svg",
            about: "1.8 节：情感分类的训练损失（读 results/part1-sentiment.json）",
            render: sentiment_loss_figure,
        },
        Figure {
            file: "part1-attention-map.svg",
            about: "1.8 节：训练后的注意力图（读 results/part1-sentiment.json）",
            render: attention_map_figure,
        },
        Figure {
            file: "part1-ln-stability-lr0.001.svg",
            about: "1.8 节：Pre-LN 与 Post-LN，学习率 1e-3（读 results/part1-ln-stability.json）",
            render: || ln_stability_figure(0.001),
        },
        Figure {
            file: "part1-ln-stability-lr0.003.svg",
            about: "1.8 节：Pre-LN 与 Post-LN，学习率 3e-3（读 results/part1-ln-stability.json）",
            render: || ln_stability_figure(0.003),
        },
        Figure {
            file: "part4-adalora-ranks.svg",
            about: "4.4 节：AdaLoRA 训练后各层各模块留下的秩（3 个种子的平均；读 results/part4-adalora/）",
            render: adalora_ranks_figure,
        },
        Figure {
            file: "part3-attention.svg",
            about: "3.6 节：中文迷你 BERT 每层每个头的注意力（读 results/part3-attention.json）",
            render: || {
                load_result::<crate::experiments::attention::AttentionMaps>(
                    "part3-attention",
                    "attention",
                )?
                .figure(&[])
            },
        },
        Figure {
            file: "appendix-a-pretrain.svg",
            about: "附录 A：中文迷你 BERT 预训练时，留出文本上掩码位置的损失与准确率",
            render: pretrain_figure,
        },
        Figure {
            file: "appendix-a-lora-table.svg",
            about: "附录 A：测试准确率与可训练参数（读 results/appendix-a-table.json）",
            render: lora_table_figure,
        },
        Figure {
            file: "appendix-a-learning-curve.svg",
            about: "附录 A：学习曲线，五种方法的测试准确率随训练样本数的变化（读 results/appendix-a-learning-curve.json）",
            render: || {
                load_result::<crate::experiments::learning_curve::LearningCurve>(
                    "appendix-a-learning-curve",
                    "learning-curve",
                )?
                .chart()
            },
        },
        Figure {
            file: "part5-gpt-loss.svg",
            about: "5.2 节：中文字符级 GPT 的训练与验证损失（读 results/part5-gpt.json）",
            render: gpt_loss_figure,
        },
        Figure {
            file: "part5-kv-cache.svg",
            about: "5.4 节：生成 n 个字的耗时，有无 KV cache（读 results/part5-kv-cache.json）",
            render: kv_cache_figure,
        },
    ]
}

/// 手写的概念图（`src/figures/diagram-*.svg`，文件名与用在哪一节）：它们不由代码生成，直接作为 SVG 维护；
/// `tests/figures.rs` 检查每一张都有整幅的白底、带中文字体的字体栈，并且有章节引用它。
pub const DIAGRAMS: [(&str, &str); 6] = [
    (
        "diagram-attention-shapes.svg",
        "1.2 节：多头注意力的数据流与每一步的形状",
    ),
    ("diagram-head-split.svg", "1.2 节：拆头的对与错"),
    ("diagram-pre-post-ln.svg", "1.6 节：Pre-LN 与 Post-LN"),
    (
        "diagram-lora-bypass.svg",
        "2.2 节：LoRA 的旁路与 A、B 的形状",
    ),
    (
        "diagram-peft-wrapping.svg",
        "3.4 节：PEFT 怎样包装模型，参数名怎样变成键",
    ),
    (
        "diagram-mlm-masking.svg",
        "附录 A：掩码语言模型的 15% 与 80/10/10",
    ),
];

/// 提交在书里的插图目录：`<仓库>/src/figures`。
pub fn book_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("src")
        .join("figures")
}

/// GELU 梯度实验的取样点：[-4, 4]，步长 0.05。
pub fn gelu_grad_xs() -> Vec<f64> {
    (-80..=80).map(|i| i as f64 * 0.05).collect()
}

fn gelu_grad_figure() -> anyhow::Result<String> {
    let dev = Cpu::default();
    let table = gelu_gradient_table(&dev, &gelu_grad_xs());
    let series =
        |name: &str, dashed, y: fn(&crate::basics::autodiff::GeluGradPoint) -> f64| Series {
            name: name.into(),
            points: table.iter().map(|p| (p.x, y(p))).collect(),
            dashed,
            color: None,
        };
    LineChart {
        title: "GELU 的导数：dfdx 0.13 accurate_gelu 的反向传播与精确值".into(),
        x_label: "x".into(),
        y_label: "d GELU / dx".into(),
        series: vec![
            series("dfdx accurate_gelu 的反向（tape）", false, |p| {
                p.dfdx_backward
            }),
            series("精确值 Φ(x) + x·φ(x)", false, |p| p.exact),
            series("对前向做中心差分", true, |p| p.numeric),
        ],
    }
    .to_svg()
}

/// 位置编码热力图的尺寸：64 个位置 × 64 维。
pub const PE_HEATMAP: (usize, usize) = (64, 64);

fn pe_heatmap_figure() -> anyhow::Result<String> {
    let (len, d) = PE_HEATMAP;
    let table = sinusoidal_table(len, &frequencies_exp_log(d));
    Heatmap {
        title: "正弦位置编码 PE[pos, j]（蓝 −1，白 0，红 +1）".into(),
        x_label: "维度 j（偶数 sin，奇数 cos）".into(),
        y_label: "位置 pos".into(),
        values: table
            .chunks(d)
            .map(|row| row.iter().map(|&v| v as f64).collect())
            .collect(),
        range: (-1.0, 1.0),
        colormap: ColorMap::Diverging,
        row_labels: vec![],
        col_labels: vec![],
        annotate: None,
    }
    .to_svg()
}

/// 点积图的设置：d_model = 128，参考位置 0、40、80，横轴 0..160。
pub const PE_SIMILARITY: (usize, [usize; 3], usize) = (128, [0, 40, 80], 160);

fn pe_similarity_figure() -> anyhow::Result<String> {
    let (d, refs, len) = PE_SIMILARITY;
    let table = sinusoidal_table(len, &frequencies_exp_log(d));
    let series = refs
        .iter()
        .map(|&p| Series {
            name: format!("PE({p})·PE(pos)"),
            points: (0..len)
                .map(|q| (q as f64, pe_dot(&table, d, p, q) as f64))
                .collect(),
            ..Default::default()
        })
        .collect();
    LineChart {
        title: format!("位置编码的点积只依赖距离（d_model = {d}）"),
        x_label: "位置 pos".into(),
        y_label: "点积".into(),
        series,
    }
    .to_svg()
}

/// 数值实验的设置：d_model = 512，前 8192 个位置，每 128 个位置取一点。
pub const PE_NUMERICS: (usize, usize, usize) = (512, 8192, 128);

fn pe_numerics_figure() -> anyhow::Result<String> {
    let (d, len, stride) = PE_NUMERICS;
    let n = pe_numerics(d, len, stride);
    let curve = |pick: fn(&(usize, f64, f64, f64)) -> f64| {
        n.curve.iter().map(|c| (c.0 as f64, pick(c))).collect()
    };
    LineChart {
        title: format!("位置编码在 f32 下的误差随位置增长（d_model = {d}，与 f64 真值比较）"),
        x_label: "位置 pos".into(),
        y_label: "该行编码的最大绝对误差".into(),
        series: vec![
            Series {
                name: "频率用 exp(log) 算（角度在 f64 下）".into(),
                points: curve(|c| c.1),
                dashed: false,
                color: None,
            },
            Series {
                name: "频率用 pow 算（角度在 f64 下）".into(),
                points: curve(|c| c.2),
                dashed: false,
                color: None,
            },
            Series {
                name: "全程 f32（exp(log)，角度与 sin/cos 也在 f32）".into(),
                points: curve(|c| c.3),
                dashed: false,
                color: None,
            },
        ],
    }
    .to_svg()
}

fn sentiment_loss_figure() -> anyhow::Result<String> {
    let r: SentimentResult = load_result("part1-sentiment", "sentiment")?;
    LineChart {
        title: format!(
            "从零训练情感分类：训练损失（测试集准确率 {:.1}%）",
            r.report.test.accuracy * 100.0
        ),
        x_label: "步数".into(),
        y_label: format!(
            "交叉熵（每 {} 步平均）",
            r.report.loss_curve.first().map_or(0, |p| p.0)
        ),
        series: vec![Series {
            name: "Pre-LN，d_model 128，2 层".into(),
            points: r
                .report
                .loss_curve
                .iter()
                .map(|&(s, l)| (s as f64, l))
                .collect(),
            ..Default::default()
        }],
    }
    .to_svg()
}

fn attention_map_figure() -> anyhow::Result<String> {
    let r: SentimentResult = load_result("part1-sentiment", "sentiment")?;
    let a = &r.attention;
    let max = a.weights.iter().flatten().cloned().fold(0.0, f64::max);
    Heatmap {
        title: format!(
            "最后一层注意力（各头平均；正面概率 {:.2}）",
            a.positive_probability
        ),
        x_label: "键（被看的字）".into(),
        y_label: "查询".into(),
        values: a.weights.clone(),
        range: (0.0, max),
        colormap: ColorMap::Sequential,
        row_labels: a.tokens.clone(),
        col_labels: a.tokens.clone(),
        annotate: None,
    }
    .to_svg()
}

fn ln_stability_figure(lr: f64) -> anyhow::Result<String> {
    let r: LnStabilityResult = load_result("part1-ln-stability", "ln-stability")?;
    let series = r
        .runs
        .iter()
        .filter(|run| (run.lr - lr).abs() < 1e-12)
        .map(|run| Series {
            name: format!(
                "{} 种子 {}",
                if run.pre_ln { "Pre-LN" } else { "Post-LN" },
                run.seed
            ),
            points: run.loss_curve.iter().map(|&(s, l)| (s as f64, l)).collect(),
            dashed: !run.pre_ln,
            color: Some(if run.pre_ln { 0 } else { 1 }),
        })
        .collect();
    LineChart {
        title: format!("6 层编码器，学习率 {lr}，不预热：Pre-LN（实线）与 Post-LN（虚线）"),
        x_label: "步数".into(),
        y_label: "训练损失（每 10 步平均）".into(),
        series,
    }
    .to_svg()
}

fn seq_cost_figure() -> anyhow::Result<String> {
    let r: SeqCostResult = load_result("part1-seq-cost", "seq-cost")?;
    let mut series = Vec::new();
    for (i, (name, curve)) in [("多头注意力", &r.attention), ("编码器层", &r.layer)]
        .into_iter()
        .enumerate()
    {
        series.push(Series {
            name: format!("{name}：实测"),
            points: curve
                .points
                .iter()
                .map(|&(s, ms, _)| (s as f64, ms))
                .collect(),
            color: Some(i),
            ..Default::default()
        });
        series.push(Series {
            name: format!("{name}：公式 ÷ {:.0} GFLOP/s", curve.gflops),
            points: curve
                .points
                .iter()
                .map(|&(s, _, f)| (s as f64, f / curve.gflops / 1e6))
                .collect(),
            dashed: true,
            color: Some(i),
        });
    }
    LineChart {
        title: "前向耗时随序列长度的变化（d_model 512，批大小 1）".into(),
        x_label: "序列长度 S".into(),
        y_label: "毫秒".into(),
        series,
    }
    .to_svg()
}

/// 可训练参数占比图用的秩。
pub const RANKS: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];

fn trainable_vs_rank_figure() -> anyhow::Result<String> {
    let dims = SeedEncoder::<f32, Cpu>::DIMS;
    let series = [
        ("W_q、W_v", TargetSet::QueryValue),
        ("W_q、W_k、W_v、W_o", TargetSet::Attention),
        ("全部线性层（含前馈）", TargetSet::AllLinear),
    ]
    .into_iter()
    .map(|(name, targets)| Series {
        name: name.into(),
        points: RANKS
            .iter()
            .map(|&r| {
                let (trainable, total) = encoder_trainable(&dims, targets, r);
                (r as f64, 100.0 * trainable as f64 / total as f64)
            })
            .collect(),
        ..Default::default()
    })
    .collect();
    LineChart {
        title: "参考配置编码器（24M 参数）加 LoRA：可训练参数占比".into(),
        x_label: "秩 r".into(),
        y_label: "可训练参数 / 总参数（%）".into(),
        series,
    }
    .to_svg()
}

fn recovery_error_figure() -> anyhow::Result<String> {
    let r: RecoveryResult = load_result("part2-recovery", "lora-recovery")?;
    let points = |pick: fn(&crate::lora::recovery::RecoveryRun) -> f64| {
        r.runs.iter().map(|run| (run.r as f64, pick(run))).collect()
    };
    LineChart {
        title: "LoRA 恢复秩为 4 的 ΔW：相对误差 ‖(α/r)BA − ΔW‖ / ‖ΔW‖".into(),
        x_label: "LoRA 的秩 r".into(),
        y_label: "相对误差".into(),
        series: vec![
            Series {
                name: "训练得到".into(),
                points: points(|run| run.relative_error),
                ..Default::default()
            },
            Series {
                name: "最优秩 r 近似（Eckart–Young）".into(),
                points: points(|run| run.optimal_error),
                dashed: true,
                color: None,
            },
        ],
    }
    .to_svg()
}

fn recovery_spectrum_figure() -> anyhow::Result<String> {
    let r: RecoveryResult = load_result("part2-recovery", "lora-recovery")?;
    let mut series = vec![Series {
        name: "目标 ΔW".into(),
        points: (0..8)
            .map(|i| {
                (
                    (i + 1) as f64,
                    TARGET_SINGULAR_VALUES.get(i).copied().unwrap_or(0.0),
                )
            })
            .collect(),
        dashed: true,
        color: Some(0),
    }];
    for (color, run) in r
        .runs
        .iter()
        .filter(|run| run.r == 2 || run.r == 16)
        .enumerate()
    {
        series.push(Series {
            name: format!("学到的 (α/r)BA，r = {}", run.r),
            points: run
                .singular_values
                .iter()
                .enumerate()
                .map(|(i, &s)| ((i + 1) as f64, s))
                .collect(),
            dashed: false,
            color: Some(color + 1),
        });
    }
    LineChart {
        title: "奇异值谱：前 8 个奇异值".into(),
        x_label: "序号 i".into(),
        y_label: "σᵢ".into(),
        series,
    }
    .to_svg()
}

fn efficiency_figure() -> anyhow::Result<String> {
    let mut series: Vec<Series> = [(64, 32), (64, 64), (768, 768), (4096, 4096)]
        .into_iter()
        .map(|(d_in, d_out)| Series {
            name: format!("{d_out} × {d_in}"),
            points: (1..=64)
                .map(|r| {
                    (
                        r as f64,
                        100.0 * efficiency(d_in, d_out, r).lora as f64 / (d_in * d_out) as f64,
                    )
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    series.push(Series {
        name: "100%：LoRA 与原矩阵一样大".into(),
        points: vec![(1.0, 100.0), (64.0, 100.0)],
        dashed: true,
        color: Some(5),
    });
    LineChart {
        title: "LoRA 参数占原矩阵的比例 r(d+k)/(dk)".into(),
        x_label: "秩 r".into(),
        y_label: "LoRA 参数 / 原矩阵参数（%）".into(),
        series,
    }
    .to_svg()
}

fn pretrain_figure() -> anyhow::Result<String> {
    use crate::experiments::pretrain::PretrainSummary;
    let r: PretrainSummary = load_result(
        "appendix-a-pretrain",
        "pretrain --record appendix-a-pretrain",
    )?;
    LineChart {
        title: "中文迷你 BERT 的掩码语言模型预训练（留出的验证集）".into(),
        x_label: "步数".into(),
        y_label: "损失 / 准确率".into(),
        series: vec![
            Series {
                name: "训练损失".into(),
                points: r
                    .rows
                    .iter()
                    .map(|x| (x.step as f64, x.train_loss))
                    .collect(),
                ..Default::default()
            },
            Series {
                name: "验证损失".into(),
                points: r
                    .rows
                    .iter()
                    .map(|x| (x.step as f64, x.valid.loss))
                    .collect(),
                dashed: true,
                ..Default::default()
            },
            Series {
                name: "验证准确率 × 10".into(),
                points: r
                    .rows
                    .iter()
                    .map(|x| (x.step as f64, 10.0 * x.valid.accuracy))
                    .collect(),
                ..Default::default()
            },
            Series {
                name: "准确率 40%（× 10）".into(),
                points: match (r.rows.first(), r.rows.last()) {
                    (Some(a), Some(b)) => vec![(a.step as f64, 4.0), (b.step as f64, 4.0)],
                    _ => Vec::new(),
                },
                dashed: true,
                color: Some(2),
            },
        ],
    }
    .to_svg()
}

fn lora_table_figure() -> anyhow::Result<String> {
    use crate::experiments::lora_table::LoraTable;
    use crate::plot::{Point, ScatterChart};
    let t: LoraTable = load_result("appendix-a-table", "lora-table")?;
    ScatterChart {
        title: format!(
            "中文迷你 BERT 上的情感分类（{} 步，均值 ± 标准差）",
            t.steps
        ),
        x_label: "可训练参数（对数坐标）".into(),
        y_label: "测试准确率（%）".into(),
        points: t
            .rows
            .iter()
            .map(|r| Point {
                label: r.method.split('（').next().unwrap_or(&r.method).to_string()
                    + if r.kind == 3 {
                        "（全部线性层）"
                    } else {
                        ""
                    },
                x: r.trainable as f64,
                y: 100.0 * r.accuracy.mean,
                err: 100.0 * r.accuracy.std,
                color: r.kind,
            })
            .collect(),
        log_x: true,
    }
    .to_svg()
}

/// 4.4 节的实验：AdaLoRA 的三个种子（`code/scripts/part4-adalora.sh`）。
pub const ADALORA_RUNS: [&str; 3] = [
    "part4-adalora/adalora-lr0.005-s0",
    "part4-adalora/adalora-lr0.005-s1",
    "part4-adalora/adalora-lr0.005-s2",
];

fn adalora_ranks_figure() -> anyhow::Result<String> {
    use crate::experiments::classify::{adalora_rank_grid, FinetuneSummary, BERT_LAYER_MODULES};
    let runs = ADALORA_RUNS
        .iter()
        .map(|name| load_result::<FinetuneSummary>(name, "finetune"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let grid = adalora_rank_grid(&runs)?;
    let settings = match &runs[0].method {
        crate::experiments::classify::Method::Lora(lora) => lora.adalora()?,
        _ => None,
    }
    .ok_or_else(|| anyhow::anyhow!("{} 不是 AdaLoRA 的结果", ADALORA_RUNS[0]))?;
    Heatmap {
        title: format!(
            "AdaLoRA 把秩分给了谁（每个模块从 {} 开始，平均剪到 {}；{} 个种子的平均）",
            settings.init_r,
            settings.target_r,
            runs.len()
        ),
        x_label: "模块".into(),
        y_label: "层".into(),
        row_labels: (0..grid.len()).map(|l| format!("第 {l} 层")).collect(),
        col_labels: BERT_LAYER_MODULES
            .iter()
            .map(|(_, s)| s.to_string())
            .collect(),
        values: grid,
        range: (0.0, settings.init_r as f64),
        colormap: ColorMap::Sequential,
        annotate: Some(1),
    }
    .to_svg()
}

fn gpt_loss_figure() -> anyhow::Result<String> {
    use crate::experiments::gpt::GptTrainResult;
    let r: GptTrainResult = load_result("part5-gpt", "gpt train --record part5-gpt")?;
    let curve = &r.report.curve;
    LineChart {
        title: format!(
            "中文字符级 GPT（{:.2} M 参数）：每字的交叉熵",
            r.params as f64 / 1e6
        ),
        x_label: "步数".into(),
        y_label: "交叉熵（nats/字）".into(),
        series: vec![
            Series {
                name: format!("训练（每 {} 步平均）", r.config.eval_every),
                points: curve
                    .iter()
                    .map(|p| (p.step as f64, p.train_loss))
                    .collect(),
                ..Default::default()
            },
            Series {
                name: "验证（留出的评论）".into(),
                points: curve
                    .iter()
                    .map(|p| (p.step as f64, p.valid_loss))
                    .collect(),
                ..Default::default()
            },
            Series {
                name: "训练前：ln 3000".into(),
                points: match (curve.first(), curve.last()) {
                    (Some(_), Some(b)) => vec![
                        (0.0, r.initial_valid_loss),
                        (b.step as f64, r.initial_valid_loss),
                    ],
                    _ => Vec::new(),
                },
                dashed: true,
                color: Some(2),
            },
        ],
    }
    .to_svg()
}

fn kv_cache_figure() -> anyhow::Result<String> {
    use crate::experiments::gpt::SpeedResult;
    use crate::experiments::median;
    let r: SpeedResult = load_result("part5-kv-cache", "gpt speed --record part5-kv-cache")?;
    let line = |name: &str, pick: fn(&crate::experiments::gpt::SpeedRow) -> &Vec<f64>| Series {
        name: name.into(),
        points: r
            .rows
            .iter()
            .map(|row| (row.tokens as f64, 1e3 * median(pick(row).clone())))
            .collect(),
        ..Default::default()
    };
    LineChart {
        title: "生成 n 个字的耗时（贪心，批大小 1，中位数）".into(),
        x_label: "生成的字数 n".into(),
        y_label: "毫秒".into(),
        series: vec![
            line("每步重算整段", |row| &row.no_cache_seconds),
            line("KV cache", |row| &row.cache_seconds),
        ],
    }
    .to_svg()
}

/// `figures` 的参数。
#[derive(clap::Args, Debug)]
pub struct FiguresArgs {
    /// 输出目录（默认为仓库的 src/figures）
    #[arg(long, value_name = "目录")]
    pub out: Option<std::path::PathBuf>,
}

/// `cargo run --release -- figures`：按登记表逐张渲染并原子写入，最后列出每张图与它的说明。
pub fn run(a: FiguresArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let dir = a.out.unwrap_or_else(book_dir);
    let all = all();
    let bar = indicatif::ProgressBar::new(all.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").expect("进度条模板"),
    );
    for fig in &all {
        bar.set_message(fig.file);
        let svg = (fig.render)().with_context(|| format!("渲染 {} 失败", fig.file))?;
        let path = dir.join(fig.file);
        crate::io::write_atomic(&path, svg.as_bytes())
            .with_context(|| format!("写入 {} 失败", path.display()))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    for fig in &all {
        println!("{}  {}", dir.join(fig.file).display(), fig.about);
    }
    Ok(())
}
