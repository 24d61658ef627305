//! 1.1 缩放点积注意力与填充掩码。
//!
//! Attention(Q, K, V) = softmax(QKᵀ/√d_k + M)·V，其中 M 是加性的填充掩码：
//! 真实位置为 0，填充位置为 [`MASK_VALUE`]。

use std::fmt;

use dfdx::prelude::*;

/// 填充位置在 softmax 之前加上的值（与参考实现 `masked_fill(mask == 0, -1e9)` 相同）。
///
/// 用一个有限的大负数而不是 −∞：即使某一行全被遮住也不会出现 NaN；
/// 只要一行里有一个真实位置，exp(−1e9 − max) 在 f32 和 f64 下都恰好是 0。
pub const MASK_VALUE: f64 = -1e9;

// ANCHOR: padding_mask
/// 一批序列的填充掩码：记录每条序列的真实长度，以及加到注意力分数上的偏置。
///
/// # 形状
/// - `bias`: `(batch, seq)`，真实位置为 0，填充位置为 [`MASK_VALUE`]
#[derive(Clone, Debug)]
pub struct PaddingMask<E: Dtype, D: Device<E>> {
    /// 每条序列的真实长度（不含填充）。
    pub lengths: Vec<usize>,
    /// 加性偏置 `(batch, seq)`。
    pub bias: Tensor<(usize, usize), E, D>,
}

impl<E: Dtype, D: Device<E>> PaddingMask<E, D> {
    /// 由每条序列的真实长度构造；`seq_len` 是填充后的长度。
    pub fn from_lengths(dev: &D, lengths: &[usize], seq_len: usize) -> Result<Self, MaskError> {
        if lengths.is_empty() {
            return Err(MaskError::EmptyBatch);
        }
        let mut bias = Vec::with_capacity(lengths.len() * seq_len);
        for (index, &len) in lengths.iter().enumerate() {
            if len == 0 || len > seq_len {
                return Err(MaskError::BadLength {
                    index,
                    length: len,
                    seq_len,
                });
            }
            let masked = E::from_f64(MASK_VALUE).expect("MASK_VALUE 可以表示为 E");
            bias.extend((0..seq_len).map(|j| if j < len { E::default() } else { masked }));
        }
        let bias = dev.tensor_from_vec(bias, (lengths.len(), seq_len));
        Ok(Self {
            lengths: lengths.to_vec(),
            bias,
        })
    }
}
// ANCHOR_END: padding_mask

/// 缩放点积注意力（掩码给 [`PaddingMask::bias`]）。代码在 `kernels/composite.rs`：它也是附录 B 的融合注意力的对照，
/// 而附录 B 的算子不依赖各章的模块。
pub use crate::kernels::composite::scaled_dot_product_attention;

/// 构造填充掩码时的错误。
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskError {
    /// 批为空。
    EmptyBatch,
    /// 第 `index` 条序列的长度不在 1..=seq_len 之内。
    BadLength {
        /// 序列下标。
        index: usize,
        /// 给出的长度。
        length: usize,
        /// 填充后的长度。
        seq_len: usize,
    },
}

impl fmt::Display for MaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaskError::EmptyBatch => write!(f, "填充掩码：批为空"),
            MaskError::BadLength { index, length, seq_len } => write!(
                f,
                "填充掩码：第 {index} 条序列的长度是 {length}，应在 1 到 {seq_len}（填充后的长度）之间"
            ),
        }
    }
}

impl std::error::Error for MaskError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::basics::autodiff::{check_gradient, ScalarFn};

    type Shape4 = (usize, usize, usize, usize);

    /// f(q) = Σ w ⊙ Attention(q, k, v; mask)，k、v、w 固定。
    struct AttentionOfQuery {
        k: Tensor<Shape4, f64, Cpu>,
        v: Tensor<Shape4, f64, Cpu>,
        w: Tensor<Shape4, f64, Cpu>,
        mask: PaddingMask<f64, Cpu>,
    }

    impl ScalarFn<Shape4, Cpu> for AttentionOfQuery {
        fn eval<T: Tape<f64, Cpu> + Merge<T> + Merge<NoneTape>>(
            &self,
            q: Tensor<Shape4, f64, Cpu, T>,
        ) -> Tensor<(), f64, Cpu, T> {
            let (q, tape) = q.split_tape();
            // 只检查对 q 的梯度：k、v 是常量，retaped 给它们挂上同类型的空 tape
            let (out, _) = scaled_dot_product_attention(
                q.put_tape(tape),
                self.k.clone().retaped::<T>(),
                self.v.clone().retaped::<T>(),
                Some(&self.mask.bias),
                0.0,
            );
            (out * self.w.clone()).sum()
        }
    }

    #[test]
    fn masked_attention_gradient_matches_finite_differences() {
        let dev: Cpu = Cpu::seed_from_u64(7);
        let shape = (2, 2, 4, 3);
        let f = AttentionOfQuery {
            k: dev.sample_normal_like(&shape),
            v: dev.sample_normal_like(&shape),
            w: dev.sample_normal_like(&shape),
            mask: PaddingMask::from_lengths(&dev, &[4, 2], 4).unwrap(),
        };
        let q = dev.sample_normal_like(&shape);
        let check = check_gradient(&q, 1e-6, &f);
        assert!(check.max_abs_error < 1e-8, "{check:?}");
    }

    #[test]
    fn padded_keys_get_exactly_zero_weight_and_rows_sum_to_one() {
        let dev: Cpu = Cpu::seed_from_u64(1);
        let shape = (2, 3, 5, 4);
        let (q, k, v) = (
            dev.sample_normal_like(&shape),
            dev.sample_normal_like(&shape),
            dev.sample_normal_like(&shape),
        );
        let mask = PaddingMask::<f32, Cpu>::from_lengths(&dev, &[5, 2], 5).unwrap();
        let (_, w) = scaled_dot_product_attention(q, k, v, Some(&mask.bias), 0.0);
        let w = w.as_vec();
        for (row_index, row) in w.chunks(5).enumerate() {
            let b = row_index / (3 * 5);
            let sum: f32 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-6);
            for (j, &wj) in row.iter().enumerate() {
                if j >= mask.lengths[b] {
                    assert_eq!(wj, 0.0, "第 {b} 条序列的填充键 {j} 得到了权重 {wj}");
                }
            }
        }
    }

    #[test]
    fn bad_lengths_are_rejected_with_the_index() {
        let dev: Cpu = Default::default();
        let err = PaddingMask::<f32, Cpu>::from_lengths(&dev, &[3, 0], 3).unwrap_err();
        assert_eq!(
            err,
            MaskError::BadLength {
                index: 1,
                length: 0,
                seq_len: 3
            }
        );
        assert!(PaddingMask::<f32, Cpu>::from_lengths(&dev, &[4], 3).is_err());
        assert_eq!(
            PaddingMask::<f32, Cpu>::from_lengths(&dev, &[], 3).unwrap_err(),
            MaskError::EmptyBatch
        );
    }
}
