//! 1.7 节：注意力与编码器层的耗时随序列长度的变化，与浮点运算数的公式对照。
//!
//! 耗时由 criterion 基准 `benches/seq_cost.rs` 测得；这里读取 criterion 写下的估计值，
//! 按公式算出每个长度的浮点运算数，用最小二乘拟合出一个“有效吞吐量”，把测量与公式放在同一张图上。

use std::path::Path;

use serde::{Deserialize, Serialize};

/// 与基准一致的设置：d_model、前馈宽度、序列长度。
pub const D_MODEL: usize = 512;
/// 前馈宽度。
pub const D_FF: usize = 2048;
/// 序列长度。
pub const SEQ_LENS: [usize; 5] = [32, 64, 128, 256, 512];

// ANCHOR: flops
/// 多头注意力一次前向（批大小 1）的浮点运算数：四个投影 8·S·d²，QKᵀ 与 AV 共 4·S²·d。
pub fn attention_flops(seq: usize, d: usize) -> f64 {
    (8 * seq * d * d + 4 * seq * seq * d) as f64
}

/// 编码器层一次前向的浮点运算数：注意力 + 前馈 4·S·d·d_ff。
pub fn layer_flops(seq: usize, d: usize, d_ff: usize) -> f64 {
    attention_flops(seq, d) + (4 * seq * d * d_ff) as f64
}
// ANCHOR_END: flops

/// 一个模块在各长度上的测量与拟合。
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Curve {
    /// (序列长度, 测得的毫秒数, 公式的浮点运算数)。
    pub points: Vec<(usize, f64, f64)>,
    /// 拟合出的有效吞吐量（GFLOP/s）：毫秒数 ≈ 浮点运算数 / 吞吐量。
    pub gflops: f64,
}

/// 结果（存为 `code/results/part1-seq-cost.json`）。
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SeqCostResult {
    /// 机器。
    pub machine: String,
    /// 多头注意力。
    pub attention: Curve,
    /// 编码器层。
    pub layer: Curve,
}

/// 读 criterion 的平均耗时（毫秒）。
fn read_mean_ms(dir: &Path, function: &str, seq: usize) -> anyhow::Result<f64> {
    super::criterion_mean_ms(dir, &["seq_cost", function, &seq.to_string()], "seq_cost")
}

/// 最小二乘拟合 t = f / g（过原点），返回 g（GFLOP/s）。
fn fit(points: &[(usize, f64, f64)]) -> f64 {
    let (tf, ff) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), &(_, ms, f)| (a + ms * f, b + f * f));
    // ms = c·f，c = Σ ms·f / Σ f²；吞吐量 = f / (ms·1e-3) / 1e9 = 1e-6 / c
    1e-6 / (tf / ff)
}

/// 读取全部测量并拟合。
pub fn collect(criterion_dir: &Path, machine: String) -> anyhow::Result<SeqCostResult> {
    let curve = |function: &str, flops: &dyn Fn(usize) -> f64| -> anyhow::Result<Curve> {
        let points = SEQ_LENS
            .iter()
            .map(|&s| Ok((s, read_mean_ms(criterion_dir, function, s)?, flops(s))))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Curve {
            gflops: fit(&points),
            points,
        })
    };
    Ok(SeqCostResult {
        machine,
        attention: curve("attention", &|s| attention_flops(s, D_MODEL))?,
        layer: curve("layer", &|s| layer_flops(s, D_MODEL, D_FF))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_recovers_a_known_throughput() {
        // 10 GFLOP/s：1e7 次运算用 1 毫秒
        let points = vec![(1, 1.0, 1e7), (2, 2.0, 2e7), (3, 4.0, 4e7)];
        assert!((fit(&points) - 10.0).abs() < 1e-9);
    }

    #[test]
    fn quadratic_term_dominates_attention_beyond_2d() {
        let d = 512;
        // 4S²d > 8Sd² ⇔ S > 2d
        assert!(4 * 1025 * 1025 * d > 8 * 1025 * d * d);
        assert!(4 * 1023 * 1023 * d < 8 * 1023 * d * d);
        assert_eq!(attention_flops(2 * d, d), 2.0 * (8 * 2 * d * d * d) as f64);
    }
}

/// `seq-cost` 的参数。
#[derive(clap::Args, Debug)]
pub struct SeqCostArgs {
    #[command(flatten)]
    pub criterion: super::args::CriterionDir,
}

/// `cargo run --release -- seq-cost`：读 `cargo bench --bench seq_cost` 的结果，打印并写 `part1-seq-cost.json`。
pub fn run(a: SeqCostArgs) -> anyhow::Result<()> {
    let result = collect(&a.criterion.path(), super::machine_description())?;
    for (name, curve) in [
        ("多头注意力", &result.attention),
        ("编码器层", &result.layer),
    ] {
        println!(
            "{name}（d_model 512，批大小 1）：拟合的有效吞吐量 {:.1} GFLOP/s",
            curve.gflops
        );
        for (seq, ms, flops) in &curve.points {
            println!(
                "  S = {seq:>4}：{ms:>9.3} 毫秒，{:>7.3} GFLOP，按公式 {:>9.3} 毫秒",
                flops / 1e9,
                flops / curve.gflops / 1e6
            );
        }
    }
    super::args::DryRun::default().save("part1-seq-cost", &result)
}
