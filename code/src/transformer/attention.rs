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

// ANCHOR: attention
/// 缩放点积注意力，返回输出和注意力权重。
///
/// # 形状
/// - `q`: `(batch, heads, seq_q, d_k)`；`k`: `(batch, heads, seq_k, d_k)`；`v`: `(batch, heads, seq_k, d_v)`
/// - `mask`: 可选，`bias` 为 `(batch, seq_k)`，对每个头、每个查询位置相同
/// - 返回：输出 `(batch, heads, seq_q, d_v)`，权重 `(batch, heads, seq_q, seq_k)`（不带 tape 的副本，供画图）
pub fn scaled_dot_product_attention<E, D, T>(
    q: Tensor<(usize, usize, usize, usize), E, D, T>,
    k: Tensor<(usize, usize, usize, usize), E, D, T>,
    v: Tensor<(usize, usize, usize, usize), E, D, T>,
    mask: Option<&PaddingMask<E, D>>,
) -> (
    Tensor<(usize, usize, usize, usize), E, D, T>,
    Tensor<(usize, usize, usize, usize), E, D>,
)
where
    E: Dtype,
    D: Device<E>,
    T: Tape<E, D> + Merge<T>,
{
    let d_k = q.shape().3;
    let scale = E::from_f64(1.0 / (d_k as f64).sqrt()).unwrap();
    // (b, h, s_q, d_k) × (b, h, d_k, s_k) -> (b, h, s_q, s_k)
    let scores = q.matmul(k.permute::<_, Axes4<0, 1, 3, 2>>()) * scale;
    // 掩码必须在 softmax 之前加：softmax 之后再置零，每行的和就不再是 1
    let scores = match mask {
        Some(m) => {
            let shape = *scores.shape();
            scores + m.bias.clone().broadcast_like::<_, Axes2<1, 2>>(&shape)
        }
        None => scores,
    };
    let weights = scores.softmax::<Axis<3>>();
    let weights_copy = weights.retaped::<NoneTape>();
    (weights.matmul(v), weights_copy)
}
// ANCHOR_END: attention

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
