//! 5.1 因果掩码：第 i 个位置只能看见第 0..=i 个位置。
//!
//! 与第 1 部分的填充掩码一样，掩码是加在 softmax 之前的偏置：能看见的位置为 0，看不见的为
//! [`MASK_VALUE`]。不同的是它依赖查询的位置（一个 `(seq_q, seq_k)` 的下三角），而不只依赖键。

use dfdx::prelude::*;

use crate::transformer::attention::MASK_VALUE;
use crate::transformer::hooks::Hidden;

// ANCHOR: causal_bias
/// 因果掩码的加性偏置 `(seq_q, seq_k)`。查询比键少时（KV cache：前面的键已经算过），
/// 查询是序列的最后 `seq_q` 个位置：第 i 个查询的绝对位置是 `seq_k − seq_q + i`，能看见第 0..=它 个键。
///
/// # Panics
/// `seq_q > seq_k` 时（查询不可能比能看见的键还多）。
pub fn causal_bias<E: Dtype, D: Device<E>>(
    dev: &D,
    seq_q: usize,
    seq_k: usize,
) -> Tensor<(usize, usize), E, D> {
    assert!(
        seq_q <= seq_k,
        "因果掩码：查询 {seq_q} 个，键只有 {seq_k} 个"
    );
    let offset = seq_k - seq_q;
    let masked = E::from_f64(MASK_VALUE).expect("MASK_VALUE 可以表示为 E");
    let bias = (0..seq_q)
        .flat_map(|i| {
            (0..seq_k).map(move |j| {
                if j <= offset + i {
                    E::default()
                } else {
                    masked
                }
            })
        })
        .collect();
    dev.tensor_from_vec(bias, (seq_q, seq_k))
}
// ANCHOR_END: causal_bias

// ANCHOR: causal_attention
/// 多头的因果注意力：`q` `(batch, seq_q, M)`、`k`、`v` `(batch, seq_k, M)` 拆成 `heads` 个头，
/// 各自 softmax(QKᵀ/√d_k + 因果掩码)·V，再拼回 `(batch, seq_q, M)`；另返回注意力权重 `(batch, heads, seq_q, seq_k)`。
///
/// 只用 dfdx 的基本算子写成（任何设备都能跑）；与第 1 部分的 `attention_heads_composite` 相比，
/// 只多了一步：分数加上沿批与头两维广播的 [`causal_bias`]。
pub fn causal_attention<const M: usize, E, D, T>(
    q: Hidden<M, E, D, T>,
    k: Hidden<M, E, D, T>,
    v: Hidden<M, E, D, T>,
    heads: usize,
) -> (
    Hidden<M, E, D, T>,
    Tensor<(usize, usize, usize, usize), E, D>,
)
where
    E: Dtype,
    D: Device<E>,
    T: Tape<E, D> + Merge<T> + Merge<NoneTape>,
{
    let dev = q.device().clone();
    let (batch, seq_q, _) = *q.shape();
    let seq_k = k.shape().1;
    let d_head = M / heads;
    let split = |t: Hidden<M, E, D, T>, seq: usize| {
        // (batch, seq, M) -> (batch, seq, heads, d_head) -> (batch, heads, seq, d_head)
        t.reshape_like(&(batch, seq, heads, d_head))
            .permute::<_, Axes4<0, 2, 1, 3>>()
    };
    let scale = E::from_f64(1.0 / (d_head as f64).sqrt()).unwrap();
    let scores = split(q, seq_q).matmul(split(k, seq_k).permute::<_, Axes4<0, 1, 3, 2>>()) * scale;
    // (seq_q, seq_k) 的下三角偏置，沿批与头两维广播
    let bias =
        causal_bias::<E, D>(&dev, seq_q, seq_k).broadcast_like::<_, Axes2<0, 1>>(scores.shape());
    let weights = (scores + bias).softmax::<Axis<3>>();
    let weights_copy = weights.retaped::<NoneTape>();
    let out = weights
        .matmul(split(v, seq_k))
        .permute::<_, Axes4<0, 2, 1, 3>>()
        .reshape_like(&(batch, seq_q, Const::<M>));
    (out, weights_copy)
}
// ANCHOR_END: causal_attention

#[cfg(test)]
mod tests {
    use super::*;
    use crate::basics::autodiff::{check_gradient, ScalarFn};

    type H8 = (usize, usize, Const<8>);

    #[test]
    fn future_keys_get_exactly_zero_weight() {
        let dev: Cpu = Cpu::seed_from_u64(3);
        let (q, k, v): (Tensor<H8, f32, Cpu>, _, _) = (
            dev.sample_normal_like(&(2, 5, Const::<8>)),
            dev.sample_normal_like(&(2, 5, Const::<8>)),
            dev.sample_normal_like(&(2, 5, Const::<8>)),
        );
        let (_, w) = causal_attention(q, k, v, 2);
        for (r, row) in w.as_vec().chunks(5).enumerate() {
            let i = r % 5;
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            for (j, &wj) in row.iter().enumerate() {
                if j > i {
                    assert_eq!(wj, 0.0, "查询 {i} 看见了将来的键 {j}");
                } else {
                    assert!(wj > 0.0);
                }
            }
        }
    }

    #[test]
    fn changing_a_later_token_does_not_change_earlier_outputs() {
        let dev: Cpu = Cpu::seed_from_u64(4);
        let x: Tensor<H8, f64, Cpu> = dev.sample_normal_like(&(1, 6, Const::<8>));
        let mut changed = x.as_vec();
        for c in &mut changed[4 * 8..5 * 8] {
            *c += 3.0; // 改第 4 个位置
        }
        let y: Tensor<H8, f64, Cpu> = dev.tensor_from_vec(changed, (1, 6, Const::<8>));
        let (a, _) = causal_attention(x.clone(), x.clone(), x, 4);
        let (b, _) = causal_attention(y.clone(), y.clone(), y, 4);
        let (a, b) = (a.as_vec(), b.as_vec());
        for pos in 0..6 {
            let d = (pos * 8..(pos + 1) * 8)
                .map(|i| (a[i] - b[i]).abs())
                .fold(0.0, f64::max);
            if pos < 4 {
                assert_eq!(d, 0.0, "位置 {pos} 的输出随第 4 个位置变了");
            } else {
                assert!(d > 1e-3, "位置 {pos} 应当看见第 4 个位置");
            }
        }
    }

    #[test]
    fn the_last_queries_of_a_longer_key_sequence_see_the_prefix() {
        // KV cache 的情形：2 个查询、5 个键；等于完整 5×5 注意力的最后两行
        let dev: Cpu = Cpu::seed_from_u64(5);
        let q: Tensor<H8, f64, Cpu> = dev.sample_normal_like(&(1, 5, Const::<8>));
        let k: Tensor<H8, f64, Cpu> = dev.sample_normal_like(&(1, 5, Const::<8>));
        let v: Tensor<H8, f64, Cpu> = dev.sample_normal_like(&(1, 5, Const::<8>));
        let (full, _) = causal_attention(q.clone(), k.clone(), v.clone(), 2);
        let last2: Tensor<H8, f64, Cpu> =
            dev.tensor_from_vec(q.as_vec()[3 * 8..].to_vec(), (1, 2, Const::<8>));
        let (part, _) = causal_attention(last2, k, v, 2);
        let full = full.as_vec();
        let d = part
            .as_vec()
            .iter()
            .zip(&full[3 * 8..])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(d < 1e-12, "{d}");
    }

    /// f(q) = Σ w ⊙ CausalAttention(q, k, v)，k、v、w 固定。
    struct OfQuery {
        k: Tensor<H8, f64, Cpu>,
        v: Tensor<H8, f64, Cpu>,
        w: Tensor<H8, f64, Cpu>,
    }

    impl ScalarFn<H8, Cpu> for OfQuery {
        fn eval<T: Tape<f64, Cpu> + Merge<T> + Merge<NoneTape>>(
            &self,
            q: Tensor<H8, f64, Cpu, T>,
        ) -> Tensor<(), f64, Cpu, T> {
            let (out, _) = causal_attention(
                q,
                self.k.clone().retaped::<T>(),
                self.v.clone().retaped::<T>(),
                2,
            );
            (out * self.w.clone()).sum()
        }
    }

    #[test]
    fn causal_attention_gradient_matches_finite_differences() {
        let dev: Cpu = Cpu::seed_from_u64(6);
        let shape = (2, 4, Const::<8>);
        let f = OfQuery {
            k: dev.sample_normal_like(&shape),
            v: dev.sample_normal_like(&shape),
            w: dev.sample_normal_like(&shape),
        };
        let q = dev.sample_normal_like(&shape);
        let check = check_gradient(&q, 1e-6, &f);
        assert!(check.max_abs_error < 1e-8, "{check:?}");
    }
}
