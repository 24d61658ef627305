//! 2.7 节：低秩恢复实验。
//!
//! 构造一个已知秩 k = 4、奇异值为 (8, 4, 2, 1) 的目标更新 ΔW（64×64），在冻结的 W₀ 上训练秩 r 的 LoRA，
//! 让 (W₀ + (α/r)BA)x 逼近 (W₀ + ΔW)x。比较学到的 (α/r)BA 与 ΔW 的相对误差，以及 Eckart–Young 定理给出的
//! 最优秩 r 近似的误差；再看学到的矩阵的奇异值谱。奇异值分解用 nalgebra。

use dfdx::nn::modules::Linear;
use dfdx::nn::ZeroGrads;
use dfdx::optim::{Adam, AdamConfig, Optimizer};
use dfdx::prelude::*;
use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

use super::layer::{delta_weight, LoraLinear, LoraOptions};
use crate::transformer::encoder::Mode;

/// 矩阵的边长。
pub const DIM: usize = 64;
/// 目标 ΔW 的奇异值（秩为 4）。
pub const TARGET_SINGULAR_VALUES: [f64; 4] = [8.0, 4.0, 2.0, 1.0];
/// 实验的秩。
pub const RANKS: [usize; 5] = [1, 2, 4, 8, 16];

/// 训练设置。
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct RecoveryConfig {
    /// 训练步数。
    pub steps: usize,
    /// 每步的样本数。
    pub batch: usize,
    /// Adam 的学习率。
    pub lr: f64,
    /// 种子。
    pub seed: u64,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            steps: 3000,
            batch: 64,
            lr: 1e-2,
            seed: 0,
        }
    }
}

/// 一个秩的结果。
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RecoveryRun {
    /// 秩 r。
    pub r: usize,
    /// ‖(α/r)BA − ΔW‖_F / ‖ΔW‖_F。
    pub relative_error: f64,
    /// 最优秩 r 近似的相对误差（Eckart–Young）：√(Σ_{i>r} σᵢ²) / ‖ΔW‖_F。
    pub optimal_error: f64,
    /// 学到的 (α/r)BA 的前 8 个奇异值。
    pub singular_values: Vec<f64>,
    /// 最后一步的均方误差。
    pub final_loss: f64,
}

/// 全部结果（存为 `code/results/part2-recovery.json`）。
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RecoveryResult {
    /// 机器。
    pub machine: String,
    /// 设置。
    pub config: Option<RecoveryConfig>,
    /// 各个秩。
    pub runs: Vec<RecoveryRun>,
}

// ANCHOR: target
/// 目标 ΔW = Σᵢ σᵢ uᵢ vᵢᵀ：uᵢ、vᵢ 取随机矩阵 QR 分解得到的正交列，奇异值恰为 [`TARGET_SINGULAR_VALUES`]。
pub fn target_delta(seed: u64) -> DMatrix<f64> {
    let dev = Cpu::seed_from_u64(seed);
    let k = TARGET_SINGULAR_VALUES.len();
    let random = |rows: usize, cols: usize| -> DMatrix<f64> {
        let values: Tensor<(usize,), f64, Cpu> = dev.sample_normal_like(&(rows * cols,));
        DMatrix::from_vec(rows, cols, values.as_vec())
    };
    let u = random(DIM, k).qr().q();
    let v = random(DIM, k).qr().q();
    let sigma = DMatrix::from_diagonal(&nalgebra::DVector::from_row_slice(&TARGET_SINGULAR_VALUES));
    u * sigma * v.transpose()
}

/// 最优秩 r 近似的相对误差。
pub fn optimal_error(r: usize) -> f64 {
    eckart_young_error(&TARGET_SINGULAR_VALUES, r)
}

/// 奇异值从大到小为 `singular_values` 的矩阵，最优秩 r 近似的相对误差：√(Σ_{i>r} σᵢ²) / √(Σ σᵢ²)。
pub fn eckart_young_error(singular_values: &[f64], r: usize) -> f64 {
    // 用 fold 从 +0.0 开始累加：空的 `sum()` 在新版 Rust 中得到 −0.0
    let total = singular_values.iter().fold(0.0, |acc, s| acc + s * s);
    let dropped = singular_values
        .iter()
        .skip(r)
        .fold(0.0, |acc, s| acc + s * s);
    (dropped / total).sqrt()
}
// ANCHOR_END: target

/// 训练一个秩为 R 的 LoRA 去逼近 ΔW。
pub fn train_rank<const R: usize>(delta: &DMatrix<f64>, cfg: &RecoveryConfig) -> RecoveryRun {
    // α = r：缩放系数为 1
    let fit = fit_low_rank::<R>(delta, cfg, 1.0, cfg.steps);
    let mut singular_values: Vec<f64> = fit.learned.singular_values().iter().copied().collect();
    singular_values.sort_by(|a, b| b.total_cmp(a));
    singular_values.truncate(8);
    RecoveryRun {
        r: R,
        relative_error: (&fit.learned - delta).norm() / delta.norm(),
        optimal_error: optimal_error(R),
        singular_values,
        final_loss: fit.final_loss,
    }
}

/// [`fit_low_rank`] 的结果。
pub struct LowRankFit {
    /// 学到的 ΔŴ = s·BA（s 是缩放系数）。
    pub learned: DMatrix<f64>,
    /// 最后一步的均方误差。
    pub final_loss: f64,
    /// 每 `every` 步记一次的 ‖s·BA‖_F（第 0 项是训练前，为 0）。
    pub norms: Vec<f64>,
}

/// 在冻结的随机 W₀ 上训练秩为 R、缩放系数为 `scaling` 的 LoRA，让 (W₀ + s·BA)x 逼近 (W₀ + ΔW)x（Adam，每步新抽一批 x）。
/// 2.7 节的低秩恢复与 4.1 节的 rsLoRA 都用它。
pub fn fit_low_rank<const R: usize>(
    delta: &DMatrix<f64>,
    cfg: &RecoveryConfig,
    scaling: f64,
    every: usize,
) -> LowRankFit {
    let dev = Cpu::seed_from_u64(cfg.seed + R as u64);
    // 冻结的 W₀：随机，偏置为 0
    let base = Linear::<DIM, DIM, f64, Cpu> {
        weight: dev.sample_normal() * 0.1,
        bias: dev.zeros(),
    };
    let mut lora = LoraLinear::<DIM, DIM, R, f64, Cpu>::from_base(&base);
    // LoraLinear 的缩放系数是 α/r：要得到 s，取 α = s·r
    let opts = LoraOptions {
        alpha: scaling * R as f64,
        dropout: 0.0,
    };
    // 目标层 W₀ + ΔW（nalgebra 按列存储，转置后按行展开）
    let target_w: Vec<f64> = delta
        .transpose()
        .as_slice()
        .iter()
        .zip(base.weight.as_vec())
        .map(|(d, w)| d + w)
        .collect();
    let target_w: Tensor<Rank2<DIM, DIM>, f64, Cpu> =
        dev.tensor_from_vec(target_w, Rank2::<DIM, DIM>::default());
    let mut opt = Adam::new(
        &lora,
        AdamConfig {
            lr: cfg.lr,
            ..Default::default()
        },
    );
    let learned = |lora: &LoraLinear<DIM, DIM, R, f64, Cpu>| {
        let m = delta_weight(&lora.lora_a, &lora.lora_b, scaling);
        DMatrix::from_row_slice(DIM, DIM, &m.as_vec())
    };
    let mut grads = lora.alloc_grads();
    let mut final_loss = f64::NAN;
    let mut norms = vec![0.0];
    for step in 1..=cfg.steps {
        let x: Tensor<(usize, usize, Const<DIM>), f64, Cpu> =
            dev.sample_normal_like(&(1, cfg.batch, Const));
        let y = x
            .clone()
            .matmul(target_w.clone().permute::<Rank2<DIM, DIM>, _>());
        let loss = (lora.forward(x.traced(grads), &opts, Mode::Train) - y)
            .square()
            .mean();
        final_loss = loss.array();
        grads = loss.backward();
        opt.update(&mut lora, &grads).expect("A、B 都有梯度");
        lora.zero_grads(&mut grads);
        if step % every.max(1) == 0 {
            norms.push(learned(&lora).norm());
        }
    }
    LowRankFit {
        learned: learned(&lora),
        final_loss,
        norms,
    }
}

/// 对 [`RANKS`] 中的每个秩训练一次。
pub fn run_all(cfg: &RecoveryConfig, on_rank: &mut dyn FnMut(usize)) -> Vec<RecoveryRun> {
    let delta = target_delta(cfg.seed);
    let mut runs = Vec::new();
    for &r in &RANKS {
        on_rank(r);
        // 秩是类型参数：对每个秩实例化一次
        runs.push(match r {
            1 => train_rank::<1>(&delta, cfg),
            2 => train_rank::<2>(&delta, cfg),
            4 => train_rank::<4>(&delta, cfg),
            8 => train_rank::<8>(&delta, cfg),
            16 => train_rank::<16>(&delta, cfg),
            _ => unreachable!("RANKS 只含 1、2、4、8、16"),
        });
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_has_exactly_the_chosen_spectrum() {
        let delta = target_delta(0);
        let mut s: Vec<f64> = delta.singular_values().iter().copied().collect();
        s.sort_by(|a, b| b.total_cmp(a));
        for (got, want) in s.iter().zip(TARGET_SINGULAR_VALUES) {
            assert!((got - want).abs() < 1e-10, "{got} vs {want}");
        }
        assert!(s[4] < 1e-10, "秩应为 4：第 5 个奇异值 {}", s[4]);
    }

    #[test]
    fn eckart_young_errors() {
        assert!((optimal_error(1) - (21.0f64 / 85.0).sqrt()).abs() < 1e-12);
        assert_eq!(optimal_error(4), 0.0);
        assert_eq!(optimal_error(16), 0.0);
    }

    #[test]
    fn a_short_run_with_enough_rank_recovers_most_of_the_update() {
        let cfg = RecoveryConfig {
            steps: 400,
            batch: 32,
            lr: 2e-2,
            seed: 1,
        };
        let run = train_rank::<4>(&target_delta(cfg.seed), &cfg);
        assert!(run.relative_error < 0.2, "{run:?}");
    }
}
