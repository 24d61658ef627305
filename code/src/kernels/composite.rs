//! 附录 B：组合写法——每个融合算子的参考实现。
//!
//! 这里的函数只用 dfdx 的公开算子拼成，对任何 `D: Device<E>` 都能用，彼此之间也只调用组合写法、
//! 从不调用 [`Kernels`](super::Kernels) 的算子。它们有三个用处：
//!
//! - [`Kernels`](super::Kernels) 的默认实现（CUDA 等其他设备）就是它们；
//! - CPU 的融合内核遇到不连续的输入（广播、转置后的视图）时退回到它们；
//! - 测试拿它们逐元素对照融合内核的前向与梯度：对照的是两种完整的写法，而不是半融合的一种。
//!
//! 它们也就是各章讲的写法，章节模块原样导出（`transformer::gelu::gelu` 就是这里的 [`gelu`]）：
//!
//! | 函数 | 章节 |
//! | --- | --- |
//! | [`masked_softmax_composite`]、[`scaled_dot_product_attention`] | 1.1 缩放点积注意力 |
//! | [`attention_heads_composite`] | 1.2 多头注意力 |
//! | [`layer_norm_composite`] | 1.4 层归一化 |
//! | [`gelu`] | 1.5 精确 GELU |
//! | [`low_rank`] | 2.2 LoRA 线性层 |
//! | [`linear_composite`] | 附录 B |
//!
//! 模块只依赖 dfdx，不认识任何模型类型：掩码是加性的偏置张量 `(batch, seq_k)`，不是 1.1 节填充掩码的结构体。

use dfdx::prelude::*;

use super::Shape4;

// ANCHOR: masked_softmax_composite
/// 组合算子写的 softmax(x + 掩码)：掩码必须在 softmax **之前**加（之后再置零，每行的和就不再是 1）。
pub fn masked_softmax_composite<E: Dtype, D: Device<E>, T: Tape<E, D>>(
    x: Tensor<Shape4, E, D, T>,
    mask: Option<&Tensor<(usize, usize), E, D>>,
) -> Tensor<Shape4, E, D, T> {
    let x = match mask {
        Some(m) => {
            let shape = *x.shape();
            x + m.clone().broadcast_like::<_, Axes2<1, 2>>(&shape)
        }
        None => x,
    };
    x.softmax::<Axis<3>>()
}
// ANCHOR_END: masked_softmax_composite

/// 注意力权重上的 dropout。通常给一个概率 `p`：训练时是 dfdx 的 dropout，推理时给 0（什么也不做）。
/// 也可以给任意一个作用在权重上的函数：CPU 的融合注意力退回组合写法时用它的 dropout，测试里按固定的掩码丢弃。
pub trait WeightDropout<E: Dtype, D: Device<E>, T: Tape<E, D>> {
    /// 对权重 `(batch, heads, seq_q, seq_k)` 做 dropout。
    fn apply(self, weights: Tensor<Shape4, E, D, T>) -> Tensor<Shape4, E, D, T>;
}

impl<E: Dtype, D: Device<E>, T: Tape<E, D>> WeightDropout<E, D, T> for f64 {
    fn apply(self, weights: Tensor<Shape4, E, D, T>) -> Tensor<Shape4, E, D, T> {
        if self > 0.0 {
            weights.dropout(self)
        } else {
            weights
        }
    }
}

impl<E, D, T, F> WeightDropout<E, D, T> for F
where
    E: Dtype,
    D: Device<E>,
    T: Tape<E, D>,
    F: FnOnce(Tensor<Shape4, E, D, T>) -> Tensor<Shape4, E, D, T>,
{
    fn apply(self, weights: Tensor<Shape4, E, D, T>) -> Tensor<Shape4, E, D, T> {
        self(weights)
    }
}

// ANCHOR: scaled_dot_product_attention
/// 缩放点积注意力，返回输出和注意力权重。训练时对权重做 dropout 再乘 V（`dropout` 是概率 p，
/// BERT 的 `attention_probs_dropout_prob`，PyTorch 的 `nn.MultiheadAttention(dropout=…)`）；推理时给 0。
///
/// # 形状
/// - `q`: `(batch, heads, seq_q, d_k)`；`k`: `(batch, heads, seq_k, d_k)`；`v`: `(batch, heads, seq_k, d_v)`
/// - `mask`: 可选的加性偏置 `(batch, seq_k)`（填充掩码的 `bias`），对每个头、每个查询位置相同
/// - 返回：输出 `(batch, heads, seq_q, d_v)`，权重 `(batch, heads, seq_q, seq_k)`（dropout 之前、不带 tape 的副本，供画图）
pub fn scaled_dot_product_attention<E, D, T>(
    q: Tensor<(usize, usize, usize, usize), E, D, T>,
    k: Tensor<(usize, usize, usize, usize), E, D, T>,
    v: Tensor<(usize, usize, usize, usize), E, D, T>,
    mask: Option<&Tensor<(usize, usize), E, D>>,
    dropout: impl WeightDropout<E, D, T>,
) -> (
    Tensor<(usize, usize, usize, usize), E, D, T>,
    Tensor<(usize, usize, usize, usize), E, D>,
)
where
    E: Dtype,
    D: Device<E>,
    T: Tape<E, D>,
{
    let d_k = q.shape().3;
    let scale = E::from_f64(1.0 / (d_k as f64).sqrt()).unwrap();
    // (b, h, s_q, d_k) × (b, h, d_k, s_k) -> (b, h, s_q, s_k)
    let scores = q.matmul(k.permute::<_, Axes4<0, 1, 3, 2>>()) * scale;
    // 掩码在 softmax 之前加到分数上（沿头与查询两维广播）：见 masked_softmax_composite
    let weights = masked_softmax_composite(scores, mask);
    let weights_copy = weights.retaped::<NoneTape>();
    (dropout.apply(weights).matmul(v), weights_copy)
}
// ANCHOR_END: scaled_dot_product_attention

// ANCHOR: attention_heads
/// 多头注意力的组合写法：把投影后的 `q`、`k`、`v` 拆成 `heads` 个头，各自做缩放点积注意力（训练时对权重做 `dropout`），再拼回。
///
/// # 形状
/// - `q`: `(batch, seq_q, Const<M>)`；`k`、`v`: `(batch, seq_k, Const<M>)`
/// - `mask`: 可选的加性偏置 `(batch, seq_k)`
/// - 返回：输出 `(batch, seq_q, Const<M>)`，注意力权重 `(batch, heads, seq_q, seq_k)`
pub fn attention_heads_composite<const M: usize, E, D, T>(
    q: Tensor<(usize, usize, Const<M>), E, D, T>,
    k: Tensor<(usize, usize, Const<M>), E, D, T>,
    v: Tensor<(usize, usize, Const<M>), E, D, T>,
    heads: usize,
    mask: Option<&Tensor<(usize, usize), E, D>>,
    dropout: impl WeightDropout<E, D, T>,
) -> (
    Tensor<(usize, usize, Const<M>), E, D, T>,
    Tensor<(usize, usize, usize, usize), E, D>,
)
where
    E: Dtype,
    D: Device<E>,
    T: Tape<E, D>,
{
    let (batch, seq_q, _) = *q.shape();
    let split = |t: Tensor<(usize, usize, Const<M>), E, D, T>| {
        let (batch, seq, _) = *t.shape();
        // (batch, seq, M) -> (batch, seq, heads, d_head) -> (batch, heads, seq, d_head)
        t.reshape_like(&(batch, seq, heads, M / heads))
            .permute::<_, Axes4<0, 2, 1, 3>>()
    };
    let (out, weights) = scaled_dot_product_attention(split(q), split(k), split(v), mask, dropout);
    // (batch, heads, seq_q, d_head) -> (batch, seq_q, heads, d_head) -> (batch, seq_q, M)
    let out = out
        .permute::<_, Axes4<0, 2, 1, 3>>()
        .reshape_like(&(batch, seq_q, Const::<M>));
    (out, weights)
}
// ANCHOR_END: attention_heads

// ANCHOR: layer_norm_composite
/// 用 dfdx 的基本算子组合出的 LayerNorm：(x − μ) / √(σ² + ε) ⊙ γ + β，μ、σ² 取最后一维上的均值与有偏方差。
///
/// # 形状
/// - `x`: `(batch, seq, Const<M>)`，`weight`（γ）、`bias`（β）: `(Const<M>,)`
/// - 返回：与 `x` 相同
pub fn layer_norm_composite<const M: usize, E: Dtype, D: Device<E>, T: Tape<E, D>>(
    x: Tensor<(usize, usize, Const<M>), E, D, T>,
    weight: &Tensor<Rank1<M>, E, D>,
    bias: &Tensor<Rank1<M>, E, D>,
    eps: f64,
) -> Tensor<(usize, usize, Const<M>), E, D, T> {
    let shape = *x.shape();
    // μ：(batch, seq)
    let mean = x.retaped::<T>().mean::<(usize, usize), Axis<2>>();
    let centered = x - mean.broadcast_like(&shape);
    // σ²：有偏方差（除以 M，与 PyTorch 相同）
    let var = centered
        .retaped::<T>()
        .square()
        .mean::<(usize, usize), Axis<2>>();
    let normed = centered
        / (var + E::from_f64(eps).unwrap())
            .sqrt()
            .broadcast_like(&shape);
    normed * weight.retaped::<T>().broadcast_like(&shape)
        + bias.retaped::<T>().broadcast_like(&shape)
}
// ANCHOR_END: layer_norm_composite

// ANCHOR: gelu
/// 精确 GELU，梯度正确。
///
/// dfdx 0.13 的 `accurate_gelu` 前向正确、反向多乘了 √2 倍的密度项（见 0.4 节）。前向仍用它，梯度用一个
/// “线性化”的构造改正：out = x·d + (y − x·d)，y = GELU(x)、d = GELU′(x)，d 与 (y − x·d) 都不带 tape。
/// 数值上 out = y；对 x 求导只剩第一项，恰好是 d。
///
/// # 形状
/// 任意形状 `S`，输出与输入相同。
pub fn gelu<S: Shape, E: Dtype, D: Device<E>, T: Tape<E, D> + Merge<NoneTape>>(
    x: Tensor<S, E, D, T>,
) -> Tensor<S, E, D, T> {
    let (x, tape) = x.split_tape();
    let y = x.clone().accurate_gelu(); // 前向：dfdx 的前向是对的
    let d = gelu_derivative(&x, &y);
    let offset = y - x.clone() * d.clone();
    x.put_tape(tape) * d + offset
}

/// GELU′(x) = Φ(x) + x·φ(x)，不带 tape。
///
/// dfdx 没有 erf 算子，但已经算好的 y = x·Φ(x) 给出 Φ(x) = y / x（x = 0 处取极限 ½）。
fn gelu_derivative<S: Shape, E: Dtype, D: Device<E>>(
    x: &Tensor<S, E, D>,
    y: &Tensor<S, E, D>,
) -> Tensor<S, E, D> {
    let half = x.device().ones_like(x) * E::from_f64(0.5).unwrap();
    let cdf = x.eq(E::default()).choose(half, y.clone() / x.clone());
    let inv_sqrt_2pi = E::from_f64(1.0 / (2.0 * std::f64::consts::PI).sqrt()).unwrap();
    let pdf = (x.clone().square() * E::from_f64(-0.5).unwrap()).exp() * inv_sqrt_2pi;
    cdf + x.clone() * pdf
}
// ANCHOR_END: gelu

// ANCHOR: low_rank
/// 低秩更新 s·B(A·x)（不含 dropout）：先降到 r 维，再升回 OUT 维，不构造 OUT×IN 的 BA。
///
/// 秩 R 是一个维度类型：2.2 节的 `LoraLinear` 用 `Const<R>`（编译期的秩，写错了编译不过），
/// 3.4 节的 PEFT 适配器用 `usize`（秩在 `adapter_config.json` 里，读到文件才知道）。同一份代码。
///
/// # 形状
/// - `x`: `(batch, seq, Const<IN>)`，`a`: `(R, IN)`，`b`: `(OUT, R)`
/// - 返回：`(batch, seq, Const<OUT>)`
pub fn low_rank<const IN: usize, const OUT: usize, R: Dim, E, D, T>(
    x: Tensor<(usize, usize, Const<IN>), E, D, T>,
    a: &Tensor<(R, Const<IN>), E, D>,
    b: &Tensor<(Const<OUT>, R), E, D>,
    scaling: f64,
) -> Tensor<(usize, usize, Const<OUT>), E, D, T>
where
    E: Dtype,
    D: Device<E>,
    T: Tape<E, D> + Merge<T>,
{
    // (batch, seq, IN) → (batch, seq, r) → (batch, seq, OUT)
    let down = x.matmul(a.retaped::<T>().permute::<(Const<IN>, R), _>());
    let up = down.matmul(b.retaped::<T>().permute::<(R, Const<OUT>), _>());
    up * E::from_f64(scaling).unwrap()
}
// ANCHOR_END: low_rank

/// 组合算子写的线性层 x·Wᵀ + b：与 dfdx 的 `Linear::forward` 相同，W 与 b 的梯度总会算出来。
///
/// # 形状
/// - `x`: `(batch, seq, Const<I>)`，`w`: `(O, I)`，`b`: `(O,)`
/// - 返回：`(batch, seq, Const<O>)`
pub fn linear_composite<const I: usize, const O: usize, E: Dtype, D: Device<E>, T: Tape<E, D>>(
    x: Tensor<(usize, usize, Const<I>), E, D, T>,
    w: &Tensor<Rank2<O, I>, E, D>,
    b: &Tensor<Rank1<O>, E, D>,
) -> Tensor<(usize, usize, Const<O>), E, D, T> {
    let shape = (x.shape().0, x.shape().1, Const::<O>);
    x.matmul(w.retaped::<T>().permute::<_, Axes2<1, 0>>()) + b.retaped::<T>().broadcast_like(&shape)
}
