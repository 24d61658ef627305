//! 2.6 节：LoRA 分支的计算顺序 B(Ax) 与 (BA)x，以及合并后的推理耗时。
//!
//! 耗时由 criterion 基准 `benches/lora_order.rs` 测得（每次前向 32 个词）；这里读取结果并与 FLOP 公式对照。

use std::path::Path;

use serde::{Deserialize, Serialize};

/// 每次前向的词数。
pub const TOKENS: usize = 32;
/// 测量的 (d, r)：方阵 d×d，秩 r。
pub const CASES: [(usize, usize); 4] = [(256, 4), (256, 16), (1024, 4), (1024, 16)];

// ANCHOR: flops
/// B(Ax) 的浮点运算数：先 (T, d)·(d, r)，再 (T, r)·(r, k)，共 2·T·r·(d + k)。
pub fn b_ax_flops(tokens: usize, d_in: usize, d_out: usize, r: usize) -> usize {
    2 * tokens * r * (d_in + d_out)
}

/// (BA)x 的浮点运算数：先构造 k×d 的 BA（2·k·r·d），再乘 x（2·T·d·k）。
pub fn ba_x_flops(tokens: usize, d_in: usize, d_out: usize, r: usize) -> usize {
    2 * d_out * r * d_in + 2 * tokens * d_in * d_out
}
// ANCHOR_END: flops

/// 一个 (d, r) 的测量。
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OrderPoint {
    /// 方阵的边长 d。
    pub d: usize,
    /// 秩 r。
    pub r: usize,
    /// B(Ax) 的毫秒数。
    pub b_ax_ms: f64,
    /// (BA)x 的毫秒数。
    pub ba_x_ms: f64,
    /// 两者 FLOP 之比 (BA)x / B(Ax)。
    pub flop_ratio: f64,
}

/// 结果（存为 `code/results/part2-lora-order.json`）。
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LoraOrderResult {
    /// 机器。
    pub machine: String,
    /// 计算顺序的测量。
    pub order: Vec<OrderPoint>,
    /// 推理（1024×1024，秩 16，32 个词）：原层、合并后、未合并的毫秒数。
    pub inference_ms: (f64, f64, f64),
}

/// 读取全部测量。
pub fn collect(dir: &Path, machine: String) -> anyhow::Result<LoraOrderResult> {
    let read = |parts: &[&str]| super::criterion_mean_ms(dir, parts, "lora_order");
    let mut order = Vec::new();
    for (d, r) in CASES {
        let id = format!("{d}x{r}");
        order.push(OrderPoint {
            d,
            r,
            b_ax_ms: read(&["lora_order", "b_ax", &id])?,
            ba_x_ms: read(&["lora_order", "ba_x", &id])?,
            flop_ratio: ba_x_flops(TOKENS, d, d, r) as f64 / b_ax_flops(TOKENS, d, d, r) as f64,
        });
    }
    let inference_ms = (
        read(&["lora_inference", "base"])?,
        read(&["lora_inference", "merged"])?,
        read(&["lora_inference", "unmerged"])?,
    );
    Ok(LoraOrderResult {
        machine,
        order,
        inference_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flop_formulas() {
        // d = k = 1024，r = 8，32 个词：B(Ax) 约 1.0M 次，(BA)x 约 84M 次
        assert_eq!(b_ax_flops(32, 1024, 1024, 8), 1_048_576);
        assert_eq!(ba_x_flops(32, 1024, 1024, 8), 16_777_216 + 67_108_864);
    }
}

/// `lora-order` 的参数。
#[derive(clap::Args, Debug)]
pub struct LoraOrderArgs {
    #[command(flatten)]
    pub criterion: super::args::CriterionDir,
}

/// `cargo run --release -- lora-order`：读 `cargo bench --bench lora_order` 的结果，打印并写 `part2-lora-order.json`。
pub fn run(a: LoraOrderArgs) -> anyhow::Result<()> {
    let result = collect(&a.criterion.path(), super::machine_description())?;
    println!("LoRA 分支的计算顺序（{TOKENS} 个词，d×d 方阵）：");
    for p in &result.order {
        println!(
            "  d = {:>4}，r = {:>2}：B(Ax) {:>8.4} 毫秒，(BA)x {:>8.4} 毫秒，耗时之比 {:>6.1}，FLOP 之比 {:>6.1}",
            p.d,
            p.r,
            p.b_ax_ms,
            p.ba_x_ms,
            p.ba_x_ms / p.b_ax_ms,
            p.flop_ratio
        );
    }
    let (base, merged, unmerged) = result.inference_ms;
    println!("推理（1024×1024，秩 16）：原层 {base:.4} 毫秒，合并后 {merged:.4} 毫秒，未合并 {unmerged:.4} 毫秒");
    super::args::DryRun::default().save("part2-lora-order", &result)
}
