//! 4.1 节：rsLoRA——秩变大时，缩放系数该怎样变。
//!
//! LoRA 的更新是 s·BA。原始的 LoRA 取 s = α/r，rsLoRA（Kalajdzievski, 2023；PEFT 的 `use_rslora`）取 s = α/√r。
//! 这里在 2.7 节的低秩恢复任务上比较两者：固定 α，秩从 1 到 64，目标是一个满秩的随机 ΔW，
//! 记录训练中 ‖s·BA‖_F 的增长与最后的相对误差。

use crate::lora::recovery::{eckart_young_error, fit_low_rank, RecoveryConfig, DIM};
use nalgebra::DMatrix;

/// 缩放系数的两种取法：与 PEFT 风格的配置（`LoraConfig::scaling_for`）用的是同一个。
pub use crate::peft::config::Scaling;

/// 实验的秩。
pub const RANKS: [usize; 4] = [1, 4, 16, 64];

/// 一次运行的结果。
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingRun {
    /// 秩。
    pub r: usize,
    /// 缩放的取法。
    pub scaling: Scaling,
    /// 缩放系数 s。
    pub factor: f64,
    /// 每 `every` 步的 ‖s·BA‖_F（第 0 项是训练前）。
    pub norms: Vec<f64>,
    /// 最后的 ‖s·BA − ΔW‖_F / ‖ΔW‖_F。
    pub relative_error: f64,
    /// 秩 r 能做到的最小相对误差（Eckart–Young：丢掉的奇异值）。
    pub optimal_error: f64,
}

/// 满秩的目标：64×64 的高斯矩阵，元素的标准差 1/8（奇异值大致铺满 0–2）。
pub fn full_rank_target(seed: u64) -> DMatrix<f64> {
    use rand::{rngs::StdRng, SeedableRng};
    use rand_distr::{Distribution, Normal};
    let mut rng = StdRng::seed_from_u64(seed ^ 0x0051_0A1E);
    let normal = Normal::new(0.0, 1.0 / (DIM as f64).sqrt()).expect("标准差为正");
    DMatrix::from_fn(DIM, DIM, |_, _| normal.sample(&mut rng))
}

/// 秩 r 的最优近似的相对误差（Eckart–Young）：√(Σ_{i>r} σᵢ²) / ‖ΔW‖_F。
pub fn optimal_error(delta: &DMatrix<f64>, r: usize) -> f64 {
    let mut s: Vec<f64> = delta.singular_values().iter().copied().collect();
    s.sort_by(|a, b| b.total_cmp(a));
    eckart_young_error(&s, r)
}

/// 对一个秩、一种缩放训练一次。
pub fn run(
    delta: &DMatrix<f64>,
    r: usize,
    scaling: Scaling,
    alpha: f64,
    cfg: &RecoveryConfig,
    every: usize,
) -> ScalingRun {
    let factor = scaling.factor(alpha, r);
    // 秩是类型参数：对每个秩实例化一次
    let fit = match r {
        1 => fit_low_rank::<1>(delta, cfg, factor, every),
        4 => fit_low_rank::<4>(delta, cfg, factor, every),
        16 => fit_low_rank::<16>(delta, cfg, factor, every),
        64 => fit_low_rank::<64>(delta, cfg, factor, every),
        _ => panic!("这个实验只编译了秩 {RANKS:?}"),
    };
    ScalingRun {
        r,
        scaling,
        factor,
        norms: fit.norms,
        relative_error: (&fit.learned - delta).norm() / delta.norm(),
        optimal_error: optimal_error(delta, r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_scalings_agree_at_rank_one_and_part_as_the_rank_grows() {
        for alpha in [1.0, 8.0, 16.0] {
            assert_eq!(Scaling::Standard.factor(alpha, 1), alpha);
            assert_eq!(Scaling::RankStabilized.factor(alpha, 1), alpha);
            assert_eq!(Scaling::RankStabilized.factor(alpha, 64), alpha / 8.0);
            assert_eq!(Scaling::Standard.factor(alpha, 64), alpha / 64.0);
        }
    }

    #[test]
    fn a_full_rank_target_needs_the_full_rank() {
        let delta = full_rank_target(0);
        assert!(optimal_error(&delta, 64) < 1e-12);
        let e: Vec<f64> = RANKS.iter().map(|&r| optimal_error(&delta, r)).collect();
        assert!(e.windows(2).all(|w| w[0] > w[1]), "{e:?}");
        assert!(e[2] > 0.5, "秩 16 丢掉的部分仍然很大：{e:?}");
    }
}
