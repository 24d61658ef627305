//! 附录 B：本书的实现与 PyTorch 在同一台机器上的耗时之比。
//!
//! 本书一侧由 criterion 测（`cargo bench --bench kernels --bench train_step`），PyTorch 一侧由
//! `code/scripts/bench_torch.py` 测（同样的算子、形状与线程数），`bash code/scripts/bench.sh` 依次运行两者，
//! 再由 `cargo run --release -- perf` 读两边的结果，算出比值、对照目标，写进 `code/results/appendix-b-perf.json`。

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

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
}

impl PerfRow {
    /// 本书 / PyTorch。
    pub fn ratio(&self) -> Option<f64> {
        self.torch_ms.map(|t| self.ours_ms / t)
    }
}

/// 整张表（`code/results/appendix-b-perf.json`）。
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerfTable {
    /// 机器。
    pub machine: String,
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

/// 读两边的结果，组成表。`torch` 是 `bench_torch.py` 写的 JSON（没有则只列本书与 dfdx 的耗时）。
pub fn collect(
    criterion_dir: &Path,
    torch: Option<&Path>,
    machine: String,
) -> anyhow::Result<PerfTable> {
    let torch: Option<serde_json::Value> = match torch {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("读不到 PyTorch 的结果 {}", p.display()))?;
            Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("{} 不是 bench_torch.py 写的 JSON", p.display()))?,
            )
        }
        None => None,
    };
    let mut rows = Vec::new();
    for item in ITEMS {
        let torch_ms = match &torch {
            Some(t) => Some(t["ms"][item.torch].as_f64().with_context(|| {
                format!(
                    "PyTorch 的结果里没有 ms.\"{}\"（bench_torch.py 的版本不对？）",
                    item.torch
                )
            })?),
            None => None,
        };
        rows.push(PerfRow {
            what: item.what.to_string(),
            torch_ms,
            dfdx_ms: item
                .dfdx
                .map(|f| criterion_median_ms(criterion_dir, item.group, f))
                .transpose()?,
            ours_ms: criterion_median_ms(criterion_dir, item.group, item.ours)?,
            target: item.target,
        });
    }
    let find = |what: &str| {
        rows.iter()
            .find(|r| r.what.starts_with(what))
            .expect("表中有这一行")
    };
    let (full, lora) = (find("bert-base 全量"), find("bert-base LoRA"));
    let inference = |f| criterion_median_ms(criterion_dir, "inference_bert_base", f);
    let base = inference("base_8x128")?;
    Ok(PerfTable {
        merged_over_base: inference("merged_8x128")? / base,
        unmerged_over_base: inference("lora_8x128")? / base,
        lora_over_full: lora.ours_ms / full.ours_ms,
        lora_over_full_torch: lora.torch_ms.zip(full.torch_ms).map(|(l, f)| l / f),
        torch: torch.map(|t| {
            format!(
                "PyTorch {}，{} 个线程",
                t["torch"].as_str().unwrap_or("?"),
                t["threads"]
            )
        }),
        machine,
        rows,
    })
}

impl PerfTable {
    /// 书中的 Markdown 表。
    pub fn markdown(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.3}"));
        let mut out = String::from(
            "| 测量 | PyTorch（毫秒） | dfdx 组合算子（毫秒） | 本书（毫秒） | 本书 / PyTorch | 目标 |\n\
             | --- | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for r in &self.rows {
            // 按表中显示的两位小数与目标比较
            let ratio = r.ratio().map_or("—".to_string(), |x| {
                let shown = (x * 100.0).round() / 100.0;
                let missed = shown > (r.target * 100.0).round() / 100.0;
                format!("{x:.2}{}", if missed { "（未达到）" } else { "" })
            });
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | ≤ {:.2} |\n",
                r.what,
                ms(r.torch_ms),
                ms(r.dfdx_ms),
                ms(Some(r.ours_ms)),
                ratio,
                r.target
            ));
        }
        out
    }
}
