//! 2.5 节：参数效率分析。
//!
//! 一个 d_out × d_in 的矩阵有 d_in·d_out 个参数；秩 r 的 LoRA 有 r·(d_in + d_out) 个。
//! LoRA 在参数上划算当且仅当 r·(d_in + d_out) < d_in·d_out，即 r < d_in·d_out / (d_in + d_out)。

use crate::transformer::cost::{param_count, ModelDims};

// ANCHOR: efficiency
/// 单个矩阵上的比较。
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Efficiency {
    /// 原矩阵的参数 d_in·d_out。
    pub original: usize,
    /// LoRA 的参数 r·(d_in + d_out)。
    pub lora: usize,
    /// 节省的比例 1 − lora/original（为负表示 LoRA 反而更多）。
    pub saved: f64,
}

/// 秩 r 的 LoRA 适配 d_out × d_in 矩阵时的参数量。
pub fn efficiency(d_in: usize, d_out: usize, r: usize) -> Efficiency {
    let (original, lora) = (d_in * d_out, r * (d_in + d_out));
    Efficiency {
        original,
        lora,
        saved: 1.0 - lora as f64 / original as f64,
    }
}

/// 满足 r·(d_in + d_out) < d_in·d_out 的最大秩（严格小于，所以整除时要减一）。
pub fn max_efficient_rank(d_in: usize, d_out: usize) -> usize {
    (d_in * d_out).div_ceil(d_in + d_out) - 1
}
// ANCHOR_END: efficiency

// ANCHOR: targets
/// 在编码器的哪些线性层上加 LoRA。
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetSet {
    /// W_q、W_v（参考实现与 PEFT 的默认）。
    QueryValue,
    /// 注意力的四个投影。
    Attention,
    /// 注意力的四个投影与前馈网络的两层。
    AllLinear,
}

impl TargetSet {
    /// 每层被适配的矩阵 (d_in, d_out)。
    pub fn matrices(self, dims: &ModelDims) -> Vec<(usize, usize)> {
        let (d, f) = (dims.d_model, dims.d_ff);
        match self {
            TargetSet::QueryValue => vec![(d, d); 2],
            TargetSet::Attention => vec![(d, d); 4],
            TargetSet::AllLinear => vec![(d, d), (d, d), (d, d), (d, d), (d, f), (f, d)],
        }
    }
}

/// 整个编码器加上 LoRA 后：可训练参数（只有 A、B）与总参数（原参数 + A、B）。
pub fn encoder_trainable(dims: &ModelDims, targets: TargetSet, r: usize) -> (usize, usize) {
    let per_layer: usize = targets
        .matrices(dims)
        .iter()
        .map(|&(i, o)| r * (i + o))
        .sum();
    let trainable = dims.layers * per_layer;
    (trainable, param_count(dims) + trainable)
}

/// Adam 训练时，梯度与两个矩占用的字节数（f32）：每个可训练参数 12 字节。
pub fn optimizer_bytes(trainable: usize) -> usize {
    12 * trainable
}
// ANCHOR_END: targets

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transformer::encoder::SeedEncoder;
    use dfdx::tensor::Cpu;

    #[test]
    fn seed_scenarios() {
        // 4×3、r = 2：LoRA 有 14 个参数，比原矩阵的 12 个还多
        assert_eq!(
            efficiency(4, 3, 2),
            Efficiency {
                original: 12,
                lora: 14,
                saved: 1.0 - 14.0 / 12.0
            }
        );
        assert_eq!(efficiency(4, 3, 1).lora, 7);
        assert_eq!(max_efficient_rank(4, 3), 1);
        assert_eq!(efficiency(4096, 4096, 256).lora, 2_097_152);
    }

    #[test]
    fn max_rank_is_strict_when_the_bound_is_an_integer() {
        // 768×768：d·k/(d+k) = 384 整除；r = 384 时 r(d+k) = d·k，不划算
        assert_eq!(max_efficient_rank(768, 768), 383);
        assert_eq!(efficiency(768, 768, 384).lora, 768 * 768);
        for (i, o) in [
            (4, 3),
            (64, 32),
            (768, 768),
            (4096, 4096),
            (2, 2),
            (100, 50),
        ] {
            let r = max_efficient_rank(i, o);
            assert!(
                efficiency(i, o, r).lora < i * o && efficiency(i, o, r + 1).lora >= i * o,
                "{i}×{o}"
            );
        }
    }

    #[test]
    fn seed_encoder_with_query_value_rank_8() {
        let dims = SeedEncoder::<f32, Cpu>::DIMS;
        let (trainable, total) = encoder_trainable(&dims, TargetSet::QueryValue, 8);
        assert_eq!(trainable, 6 * 2 * 8 * 1024);
        assert_eq!(total, 24_035_328 + 98_304);
        assert_eq!(optimizer_bytes(trainable), 1_179_648);
    }
}
