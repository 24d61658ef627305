//! 附录 B：融合算子。
//!
//! Transformer 里最常用的几个逐元素/逐行算子——注意力的（带掩码的）softmax、精确 GELU、LayerNorm、dropout——
//! 在 dfdx 里或者由多个基本算子组合而成（每个基本算子各遍历一次内存、各分配一个中间张量），或者只用一个线程；
//! 线性层的反向则总是算出冻结权重的梯度；多头注意力的拆头、拼回与 LoRA 分支也各是好几个算子。
//! [`Kernels`] 把它们各自变成**一个**算子：
//!
//! - 默认实现就是书中的组合写法（[`composite`]：第 1、2 部分各章讲的那些函数），CUDA 等其他设备用它；
//! - `Cpu` 上换成 [`cpu`]、[`attention`]、[`lora`] 里的融合内核：一次遍历算完前向，用 `Tape::add_backward_op` 登记手写的反向，
//!   按行（或按头）分块交给 rayon 的线程池，块内按 CPU 的指令集向量化，矩阵乘法由 gemm 库单线程地算每一块。
//!
//! 模型代码只写 `D: Kernels<E>` 与 `D::gelu(x)` 这样的调用，不关心设备；程序入口由 [`device::run_on`] 选定设备。
//! 融合内核读写张量缓冲区用到的几个 dfdx 接口原本是 crate 私有的，见 `code/vendor/README.md` 里的补丁。
//!
//! 依赖只有一个方向：`basics`（第 0 部分）← `kernels` ← 各章的模型。本模块只用 dfdx 与 `crate::basics`，
//! 算子的签名里只有 dfdx 的张量（掩码是加性的偏置张量，不是填充掩码的结构体），可以原样搬成一个独立的 crate。

use std::borrow::Cow;
use std::sync::Arc;

use dfdx::prelude::*;

use composite::{
    attention_heads_composite, gelu as gelu_composite, layer_norm_composite, linear_composite,
    low_rank, masked_softmax_composite,
};

pub mod attention;
pub mod composite;
pub mod cpu;
pub mod device;
pub mod lora;
pub mod math;
pub mod step_key;

/// 注意力分数的形状：(batch, heads, seq_q, seq_k)。
pub type Shape4 = (usize, usize, usize, usize);

// ANCHOR: lazy_weight
/// 冻结、按需还原的权重（4.5 节：量化存放的基座）。线性层的前向与反向各调用一次 [`materialize`](Self::materialize)，
/// 得到行优先的 `(O, I)` 全精度权重，用完即丢。
pub trait LazyWeight<E>: Send + Sync + std::fmt::Debug {
    /// `(行数 O, 列数 I)`。
    fn dims(&self) -> (usize, usize);
    /// 还原出的权重，行优先，长 O·I。
    fn materialize(&self) -> Vec<E>;
}
// ANCHOR_END: lazy_weight

// ANCHOR: kernels
/// 有融合算子的设备：dfdx 的 [`Device`] 加上八个 Transformer 常用的算子。
///
/// 默认实现是组合算子（任何设备都能用）；`Cpu` 覆盖为融合内核。两者在测试里逐元素对照，前向与梯度都一致。
pub trait Kernels<E: Dtype>: Device<E> {
    /// 张量在主机内存里的数据（行优先）：CPU 上直接借用底层缓冲区，其他设备复制一份到主机。
    /// 优化器在主机上逐元素处理参数与梯度时用它，省掉整块的复制。
    fn host_data<S: Shape>(t: &Tensor<S, E, Self>) -> Cow<'_, [E]> {
        Cow::Owned(t.as_vec())
    }

    /// 参数 `t` 的梯度在主机内存里的数据（同上）。
    fn host_grad<'a, S: Shape>(
        grads: &'a Gradients<E, Self>,
        t: &Tensor<S, E, Self>,
    ) -> Cow<'a, [E]> {
        Cow::Owned(grads.get(t).as_vec())
    }

    /// 最后一维上的 softmax(x + 掩码)，掩码 `(batch, seq_k)` 沿头与查询两维广播。
    fn masked_softmax<T: Tape<E, Self>>(
        x: Tensor<Shape4, E, Self, T>,
        mask: Option<&Tensor<(usize, usize), E, Self>>,
    ) -> Tensor<Shape4, E, Self, T> {
        masked_softmax_composite(x, mask)
    }

    /// 多头的缩放点积注意力：投影后的 `q` `(batch, seq_q, M)`、`k`、`v` `(batch, seq_k, M)` 拆成 `heads` 个头，
    /// 各自 softmax(QKᵀ/√d_k + 掩码)·V，再拼回 `(batch, seq_q, M)`；另返回注意力权重 `(batch, heads, seq_q, seq_k)`
    /// （dropout 之前的）。掩码是加性的偏置 `(batch, seq_k)`（真实位置 0，填充位置一个大负数），沿头与查询两维广播。
    /// `dropout` > 0 时对注意力权重做 dropout（BERT 的 `attention_probs_dropout_prob`；只在训练时给）。
    #[allow(clippy::type_complexity)]
    fn attention<const M: usize, T: Tape<E, Self> + Merge<T>>(
        q: Tensor<(usize, usize, Const<M>), E, Self, T>,
        k: Tensor<(usize, usize, Const<M>), E, Self, T>,
        v: Tensor<(usize, usize, Const<M>), E, Self, T>,
        heads: usize,
        mask: Option<&Tensor<(usize, usize), E, Self>>,
        dropout: f64,
    ) -> (
        Tensor<(usize, usize, Const<M>), E, Self, T>,
        Tensor<Shape4, E, Self>,
    ) {
        attention_heads_composite(q, k, v, heads, mask, dropout)
    }

    /// 低秩更新加到线性层的输出上：out + s·B(A·dropout(x))，A `(R, I)`、B `(O, R)`（LoRA 的分支；秩 `R` 可以是编译期或运行期的维度）。
    /// `dropout` 是训练时分支输入上的丢弃概率（推理时给 0）：把它交给算子，CPU 上就不必为反向留一份丢弃后的输入（见 `lora.rs`）。
    fn lora_add<const I: usize, const O: usize, R: Dim, T: Tape<E, Self> + Merge<T>>(
        out: Tensor<(usize, usize, Const<O>), E, Self, T>,
        x: Tensor<(usize, usize, Const<I>), E, Self, T>,
        a: &Tensor<(R, Const<I>), E, Self>,
        b: &Tensor<(Const<O>, R), E, Self>,
        scaling: f64,
        dropout: f64,
    ) -> Tensor<(usize, usize, Const<O>), E, Self, T> {
        let x = if dropout > 0.0 {
            <Self as Kernels<E>>::dropout(x, dropout)
        } else {
            x
        };
        out + low_rank(x, a, b, scaling)
    }

    /// 逐元素的 x + y（残差连接；两者形状相同）。
    fn add<S: Shape, T: Tape<E, Self> + Merge<T>>(
        x: Tensor<S, E, Self, T>,
        y: Tensor<S, E, Self, T>,
    ) -> Tensor<S, E, Self, T> {
        x + y
    }

    /// 精确 GELU：x·Φ(x)。
    fn gelu<S: Shape, T: Tape<E, Self>>(x: Tensor<S, E, Self, T>) -> Tensor<S, E, Self, T> {
        gelu_composite(x)
    }

    /// 训练时的 dropout（概率 `p`，保留的元素乘 1/(1 − p)）。
    fn dropout<S: Shape, T: Tape<E, Self>>(
        x: Tensor<S, E, Self, T>,
        p: f64,
    ) -> Tensor<S, E, Self, T> {
        x.dropout(p)
    }

    /// 线性层 x·Wᵀ + b（W 按 `(out, in)` 存放，与 dfdx、PyTorch 相同）。`train_weights` 为 `false` 时
    /// 可以不算 W、b 的梯度（冻结的权重）；默认实现总是算（dfdx 的 matmul 做不到只算一边）。
    fn linear<const I: usize, const O: usize, T: Tape<E, Self>>(
        x: Tensor<(usize, usize, Const<I>), E, Self, T>,
        w: &Tensor<Rank2<O, I>, E, Self>,
        b: &Tensor<Rank1<O>, E, Self>,
        train_weights: bool,
    ) -> Tensor<(usize, usize, Const<O>), E, Self, T> {
        let _ = train_weights;
        linear_composite(x, w, b)
    }

    /// 线性层 x·Wᵀ + b，权重冻结、输入也不需要梯度（LoRA 时第 0 层的 W_q、W_k、W_v：输入来自冻结的嵌入层，它的梯度没有人用）：
    /// 反向里这一层什么也不用算——省掉 ∂x = g·W 这次矩阵乘法（附录 B）。输出仍然带着 tape，之后的运算照常记录。
    fn linear_no_grad<const I: usize, const O: usize, T: Tape<E, Self>>(
        x: Tensor<(usize, usize, Const<I>), E, Self, T>,
        w: &Tensor<Rank2<O, I>, E, Self>,
        b: &Tensor<Rank1<O>, E, Self>,
    ) -> Tensor<(usize, usize, Const<O>), E, Self, T> {
        let (x, tape) = x.split_tape();
        <Self as Kernels<E>>::linear(x, w, b, false).put_tape(tape)
    }

    /// 冻结的线性层 x·Wᵀ + b，W 按需还原（[`LazyWeight`]）。默认实现还原成张量后走组合写法：
    /// 反向要用 W，张量就留在 tape 上直到反向结束——省下的只是两步之间的内存。CPU 的内核在反向里再还原一次，
    /// 训练步里不留全精度的 W。
    fn linear_lazy<const I: usize, const O: usize, T: Tape<E, Self>>(
        x: Tensor<(usize, usize, Const<I>), E, Self, T>,
        w: &Arc<dyn LazyWeight<E>>,
        b: &Tensor<Rank1<O>, E, Self>,
    ) -> Tensor<(usize, usize, Const<O>), E, Self, T> {
        assert_eq!(w.dims(), (O, I), "按需还原的权重形状不对");
        let wt = x
            .device()
            .tensor_from_vec(w.materialize(), (Const::<O>, Const::<I>));
        linear_composite(x, &wt, b)
    }

    /// 最后一维上的 LayerNorm，γ = `w`、β = `b`。
    fn layer_norm<const M: usize, T: Tape<E, Self>>(
        x: Tensor<(usize, usize, Const<M>), E, Self, T>,
        w: &Tensor<Rank1<M>, E, Self>,
        b: &Tensor<Rank1<M>, E, Self>,
        eps: f64,
    ) -> Tensor<(usize, usize, Const<M>), E, Self, T> {
        layer_norm_composite(x, w, b, eps)
    }
}
// ANCHOR_END: kernels

macro_rules! cpu_kernels {
    ($($e:ty),*) => {$(
        impl Kernels<$e> for Cpu {
            fn host_data<S: Shape>(t: &Tensor<S, $e, Self>) -> Cow<'_, [$e]> {
                cpu::host_data(t)
            }

            fn host_grad<'a, S: Shape>(grads: &'a Gradients<$e, Self>, t: &Tensor<S, $e, Self>) -> Cow<'a, [$e]> {
                cpu::host_grad(grads, t)
            }

            fn masked_softmax<T: Tape<$e, Self>>(
                x: Tensor<Shape4, $e, Self, T>,
                mask: Option<&Tensor<(usize, usize), $e, Self>>,
            ) -> Tensor<Shape4, $e, Self, T> {
                cpu::masked_softmax(x, mask)
            }

            fn attention<const M: usize, T: Tape<$e, Self> + Merge<T>>(
                q: Tensor<(usize, usize, Const<M>), $e, Self, T>,
                k: Tensor<(usize, usize, Const<M>), $e, Self, T>,
                v: Tensor<(usize, usize, Const<M>), $e, Self, T>,
                heads: usize,
                mask: Option<&Tensor<(usize, usize), $e, Self>>,
                dropout: f64,
            ) -> (Tensor<(usize, usize, Const<M>), $e, Self, T>, Tensor<Shape4, $e, Self>) {
                attention::attention(q, k, v, heads, mask, dropout)
            }

            fn lora_add<const I: usize, const O: usize, R: Dim, T: Tape<$e, Self> + Merge<T>>(
                out: Tensor<(usize, usize, Const<O>), $e, Self, T>,
                x: Tensor<(usize, usize, Const<I>), $e, Self, T>,
                a: &Tensor<(R, Const<I>), $e, Self>,
                b: &Tensor<(Const<O>, R), $e, Self>,
                scaling: f64,
                dropout: f64,
            ) -> Tensor<(usize, usize, Const<O>), $e, Self, T> {
                lora::lora_add(out, x, a, b, scaling, dropout)
            }

            fn add<S: Shape, T: Tape<$e, Self> + Merge<T>>(
                x: Tensor<S, $e, Self, T>,
                y: Tensor<S, $e, Self, T>,
            ) -> Tensor<S, $e, Self, T> {
                cpu::add(x, y)
            }

            fn gelu<S: Shape, T: Tape<$e, Self>>(x: Tensor<S, $e, Self, T>) -> Tensor<S, $e, Self, T> {
                cpu::gelu(x)
            }

            fn dropout<S: Shape, T: Tape<$e, Self>>(x: Tensor<S, $e, Self, T>, p: f64) -> Tensor<S, $e, Self, T> {
                cpu::dropout(x, p)
            }

            fn linear<const I: usize, const O: usize, T: Tape<$e, Self>>(
                x: Tensor<(usize, usize, Const<I>), $e, Self, T>,
                w: &Tensor<Rank2<O, I>, $e, Self>,
                b: &Tensor<Rank1<O>, $e, Self>,
                train_weights: bool,
            ) -> Tensor<(usize, usize, Const<O>), $e, Self, T> {
                cpu::linear(x, w, b, train_weights)
            }

            fn linear_lazy<const I: usize, const O: usize, T: Tape<$e, Self>>(
                x: Tensor<(usize, usize, Const<I>), $e, Self, T>,
                w: &Arc<dyn LazyWeight<$e>>,
                b: &Tensor<Rank1<O>, $e, Self>,
            ) -> Tensor<(usize, usize, Const<O>), $e, Self, T> {
                cpu::linear_lazy(x, w, b)
            }

            fn layer_norm<const M: usize, T: Tape<$e, Self>>(
                x: Tensor<(usize, usize, Const<M>), $e, Self, T>,
                w: &Tensor<Rank1<M>, $e, Self>,
                b: &Tensor<Rank1<M>, $e, Self>,
                eps: f64,
            ) -> Tensor<(usize, usize, Const<M>), $e, Self, T> {
                cpu::layer_norm(x, w, b, eps)
            }
        }
    )*};
}
cpu_kernels!(f32, f64);

// CUDA：用默认的组合算子（dfdx 的 CUDA 内核本来就在 GPU 上并行）。
#[cfg(feature = "cuda")]
impl Kernels<f32> for Cuda {}
#[cfg(feature = "cuda")]
impl Kernels<f64> for Cuda {}

#[cfg(test)]
mod tests {
    use super::*;

    /// 填充掩码的加性偏置 `(batch, seq)`：第 b 行前 `lengths[b]` 个位置为 0，其余为 −1e9（与 1.1 节的 `PaddingMask::bias` 相同）。
    fn padding_bias<E: Dtype>(
        dev: &Cpu,
        lengths: &[usize],
        seq: usize,
    ) -> Tensor<(usize, usize), E, Cpu> {
        let masked = E::from_f64(-1e9).unwrap();
        let bias = lengths
            .iter()
            .flat_map(|&len| (0..seq).map(move |j| if j < len { E::default() } else { masked }))
            .collect();
        dev.tensor_from_vec(bias, (lengths.len(), seq))
    }

    /// 两组数的最大绝对误差。
    fn max_diff<E: Into<f64> + Copy>(a: &[E], b: &[E]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(&x, &y)| (x.into() - y.into()).abs())
            .fold(0.0, f64::max)
    }

    /// 融合与组合两种写法：前向的输出、对输入（与参数）的梯度。损失取 Σ out ⊙ w（w 随机），每个元素的梯度都不同。
    fn softmax_case<E: Dtype + Into<f64>>(dev: &Cpu, lengths: &[usize]) -> (f64, f64)
    where
        Cpu: Kernels<E>,
        rand_distr::StandardNormal: rand_distr::Distribution<E>,
    {
        let shape = (lengths.len(), 3, 5, 7);
        let x: Tensor<Shape4, E, Cpu> = dev.sample_normal_like(&shape);
        let w: Tensor<Shape4, E, Cpu> = dev.sample_normal_like(&shape);
        let mask = padding_bias::<E>(dev, lengths, 7);
        let run = |fused: bool| {
            let xt = x.leaky_trace();
            let y = if fused {
                Cpu::masked_softmax(xt, Some(&mask))
            } else {
                masked_softmax_composite(xt, Some(&mask))
            };
            let out = y.retaped::<NoneTape>().as_vec();
            let g = (y * w.clone()).sum().backward();
            (out, g.get(&x).as_vec())
        };
        let (y1, g1) = run(true);
        let (y2, g2) = run(false);
        (max_diff(&y1, &y2), max_diff(&g1, &g2))
    }

    #[test]
    fn fused_softmax_matches_composite() {
        let dev = Cpu::seed_from_u64(0);
        let (y, g) = softmax_case::<f64>(&dev, &[7, 3]);
        assert!(y < 1e-14 && g < 1e-14, "f64：前向 {y:e}，梯度 {g:e}");
        let (y, g) = softmax_case::<f32>(&dev, &[7, 3]);
        assert!(y < 2e-7 && g < 5e-7, "f32：前向 {y:e}，梯度 {g:e}");
        // 填充位置的权重恰好为 0（与组合写法相同）
        let x: Tensor<Shape4, f32, Cpu> = dev.sample_normal_like(&(1, 1, 2, 4));
        let mask = padding_bias::<f32>(&dev, &[2], 4);
        let y = Cpu::masked_softmax(x, Some(&mask)).as_vec();
        assert_eq!(&y[2..4], &[0.0, 0.0]);
        assert!((y[0] + y[1] - 1.0).abs() < 1e-6);
    }

    /// `backward_from(y, g)` 与 `(y ⊙ g).sum().backward()` 给出同样的梯度。
    #[test]
    fn backward_from_seeds_the_given_upstream_gradient() {
        let dev = Cpu::seed_from_u64(5);
        let x: Tensor<Shape4, f64, Cpu> = dev.sample_normal_like(&(2, 2, 3, 4));
        let g: Tensor<Shape4, f64, Cpu> = dev.sample_normal_like(&(2, 2, 3, 4));
        let a = cpu::backward_from(Cpu::masked_softmax(x.leaky_trace(), None), &g);
        let b = (Cpu::masked_softmax(x.leaky_trace(), None) * g.clone())
            .sum()
            .backward();
        assert!(max_diff(&a.get(&x).as_vec(), &b.get(&x).as_vec()) < 1e-15);
        assert!(a.get(&x).as_vec().iter().any(|&v| v != 0.0));
    }

    #[test]
    fn fused_softmax_falls_back_on_a_permuted_view() {
        let dev = Cpu::seed_from_u64(1);
        let x: Tensor<Shape4, f64, Cpu> = dev.sample_normal_like(&(2, 3, 4, 5));
        let view = x.clone().permute::<_, Axes4<0, 1, 3, 2>>();
        assert!(!cpu::is_contiguous(&view));
        let fused = Cpu::masked_softmax(view.clone(), None).as_vec();
        let composite = masked_softmax_composite(view, None).as_vec();
        assert!(max_diff(&fused, &composite) < 1e-15);
    }

    fn gelu_case<E: Dtype + Into<f64>>(dev: &Cpu) -> (f64, f64)
    where
        Cpu: Kernels<E>,
        rand_distr::StandardNormal: rand_distr::Distribution<E>,
    {
        let shape = (2, 3, 1000);
        // 放大到 ±12 附近，覆盖 erf 饱和的区间
        let x: Tensor<(usize, usize, usize), E, Cpu> =
            dev.sample_normal_like(&shape) * E::from_f64(4.0).unwrap();
        let w: Tensor<(usize, usize, usize), E, Cpu> = dev.sample_normal_like(&shape);
        let run = |fused: bool| {
            let xt = x.leaky_trace();
            let y = if fused {
                Cpu::gelu(xt)
            } else {
                gelu_composite(xt)
            };
            let out = y.retaped::<NoneTape>().as_vec();
            let g = (y * w.clone()).sum().backward();
            (out, g.get(&x).as_vec())
        };
        let (y1, g1) = run(true);
        let (y2, g2) = run(false);
        (max_diff(&y1, &y2), max_diff(&g1, &g2))
    }

    #[test]
    fn fused_gelu_matches_composite() {
        let dev = Cpu::seed_from_u64(2);
        let (y, g) = gelu_case::<f64>(&dev);
        assert!(y < 1e-13 && g < 1e-13, "f64：前向 {y:e}，梯度 {g:e}");
        // f32：erf 的近似误差 1.5e-7，乘上 |x|（可达十几）
        let (y, g) = gelu_case::<f32>(&dev);
        assert!(y < 2e-6 && g < 2e-6, "f32：前向 {y:e}，梯度 {g:e}");
    }

    fn layer_norm_case<E: Dtype + Into<f64>>(dev: &Cpu) -> [f64; 4]
    where
        Cpu: Kernels<E>,
        rand_distr::StandardNormal: rand_distr::Distribution<E>,
    {
        const M: usize = 48;
        let shape = (3, 5, Const::<M>);
        let x: Tensor<(usize, usize, Const<M>), E, Cpu> =
            dev.sample_normal_like(&shape) * E::from_f64(3.0).unwrap() + E::from_f64(1.5).unwrap();
        let w: Tensor<(usize, usize, Const<M>), E, Cpu> = dev.sample_normal_like(&shape);
        let gamma: Tensor<Rank1<M>, E, Cpu> = dev.sample_normal();
        let beta: Tensor<Rank1<M>, E, Cpu> = dev.sample_normal();
        let run = |fused: bool| {
            let xt = x.leaky_trace();
            let y = if fused {
                Cpu::layer_norm(xt, &gamma, &beta, 1e-5)
            } else {
                layer_norm_composite(xt, &gamma, &beta, 1e-5)
            };
            let out = y.retaped::<NoneTape>().as_vec();
            let g = (y * w.clone()).sum().backward();
            (
                out,
                g.get(&x).as_vec(),
                g.get(&gamma).as_vec(),
                g.get(&beta).as_vec(),
            )
        };
        let a = run(true);
        let b = run(false);
        [
            max_diff(&a.0, &b.0),
            max_diff(&a.1, &b.1),
            max_diff(&a.2, &b.2),
            max_diff(&a.3, &b.3),
        ]
    }

    #[test]
    fn fused_layer_norm_matches_composite_with_parameter_gradients() {
        let dev = Cpu::seed_from_u64(3);
        let d = layer_norm_case::<f64>(&dev);
        assert!(
            d.iter().all(|&e| e < 1e-12),
            "f64：输出、dx、dγ、dβ 的最大误差 {d:?}"
        );
        let d = layer_norm_case::<f32>(&dev);
        assert!(
            d.iter().all(|&e| e < 1e-5),
            "f32：输出、dx、dγ、dβ 的最大误差 {d:?}"
        );
    }

    fn linear_case<E: Dtype + Into<f64>>(dev: &Cpu, train: bool, rows: (usize, usize)) -> [f64; 4]
    where
        Cpu: Kernels<E>,
        rand_distr::StandardNormal: rand_distr::Distribution<E>,
    {
        let x: Tensor<(usize, usize, Const<12>), E, Cpu> =
            dev.sample_normal_like(&(rows.0, rows.1, Const));
        let g: Tensor<(usize, usize, Const<7>), E, Cpu> =
            dev.sample_normal_like(&(rows.0, rows.1, Const));
        let w: Tensor<Rank2<7, 12>, E, Cpu> = dev.sample_normal();
        let b: Tensor<Rank1<7>, E, Cpu> = dev.sample_normal();
        let fused = cpu::backward_from(Cpu::linear(x.leaky_trace(), &w, &b, train), &g);
        let composite = cpu::backward_from(linear_composite(x.leaky_trace(), &w, &b), &g);
        let y1 = Cpu::linear(x.clone(), &w, &b, train).as_vec();
        let y2 = linear_composite(x.clone(), &w, &b).as_vec();
        let dw = |gr: &Gradients<E, Cpu>| gr.get(&w).as_vec();
        let db = |gr: &Gradients<E, Cpu>| gr.get(&b).as_vec();
        if !train {
            // 冻结的权重：根本不分配梯度
            assert!(fused.get_ref_checked(&w).is_none() && fused.get_ref_checked(&b).is_none());
            return [
                max_diff(&y1, &y2),
                max_diff(&fused.get(&x).as_vec(), &composite.get(&x).as_vec()),
                0.0,
                0.0,
            ];
        }
        [
            max_diff(&y1, &y2),
            max_diff(&fused.get(&x).as_vec(), &composite.get(&x).as_vec()),
            max_diff(&dw(&fused), &dw(&composite)),
            max_diff(&db(&fused), &db(&composite)),
        ]
    }

    #[test]
    fn fused_linear_matches_composite_and_skips_frozen_weights() {
        let dev = Cpu::seed_from_u64(6);
        // 15 行与 160 行（par_gemm 在较大的矩阵上才切块、分给多个线程）
        for rows in [(3, 5), (4, 40)] {
            for train in [true, false] {
                let d = linear_case::<f64>(&dev, train, rows);
                assert!(
                    d.iter().all(|&e| e < 1e-12),
                    "f64，{rows:?}，train={train}：{d:?}"
                );
                let d = linear_case::<f32>(&dev, train, rows);
                assert!(
                    d.iter().all(|&e| e < 1e-4),
                    "f32，{rows:?}，train={train}：{d:?}"
                );
            }
        }
    }

    /// dropout：保留的比例、保留元素的放大、反向用同一个掩码、同一设备种子可重现。
    #[test]
    fn fused_dropout_statistics_and_gradient() {
        let p = 0.1;
        let n = 200_000;
        let dev = Cpu::seed_from_u64(7);
        let x: Tensor<(usize,), f32, Cpu> = dev.ones_like(&(n,));
        let g: Tensor<(usize,), f32, Cpu> = dev.sample_normal_like(&(n,));
        let y = Cpu::dropout(x.leaky_trace(), p);
        let out = y.retaped::<NoneTape>().as_vec();
        let grads = cpu::backward_from(y, &g);
        let kept = out.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
        // 保留比例 0.9，标准差 √(0.9·0.1/n) ≈ 6.7e-4：允许 5 个标准差
        assert!(
            (kept - 0.9).abs() < 5.0 * (0.09 / n as f64).sqrt(),
            "保留了 {kept}"
        );
        let scale = 1.0 / 0.9f32;
        assert!(out.iter().all(|&v| v == 0.0 || (v - scale).abs() < 1e-6));
        for ((&o, &dx), &gv) in out.iter().zip(&grads.get(&x).as_vec()).zip(&g.as_vec()) {
            let want = if o == 0.0 { 0.0 } else { gv * scale };
            assert!((dx - want).abs() < 1e-6);
        }
        // 同一个设备种子，同样的掩码；p = 0 原样返回
        let dev2 = Cpu::seed_from_u64(7);
        let x2: Tensor<(usize,), f32, Cpu> = dev2.ones_like(&(n,));
        let _g2: Tensor<(usize,), f32, Cpu> = dev2.sample_normal_like(&(n,)); // 与上面同样地消耗设备的随机数
        let again = Cpu::dropout(x2, p).as_vec();
        assert_eq!(again, out);
        assert_eq!(Cpu::dropout(x.clone(), 0.0).as_vec(), x.as_vec());
    }

    /// x 在算子之后还被用到（像残差连接）：反向时 x 已经有了梯度，融合算子要**累加**进去而不是新建或覆盖。
    /// 损失取 Σ op(x) ⊙ w + Σ x ⊙ v：后一项的反向先运行，先给 x 分配梯度。
    #[test]
    fn fused_backward_accumulates_into_an_existing_gradient() {
        fn grad_of<S: Shape>(
            x: &Tensor<S, f64, Cpu>,
            v: &Tensor<S, f64, Cpu>,
            loss: impl Fn(
                Tensor<S, f64, Cpu, OwnedTape<f64, Cpu>>,
            ) -> Tensor<(), f64, Cpu, OwnedTape<f64, Cpu>>,
        ) -> Vec<f64> {
            let xt = x.leaky_trace();
            let first = loss(xt.with_empty_tape());
            let g = (first + (xt * v.clone()).sum()).backward();
            g.get(x).as_vec()
        }
        let dev = Cpu::seed_from_u64(8);
        let s4 = (2, 3, 4, 5);
        let x4: Tensor<Shape4, f64, Cpu> = dev.sample_normal_like(&s4);
        let (v4, w4): (Tensor<Shape4, f64, Cpu>, Tensor<Shape4, f64, Cpu>) =
            (dev.sample_normal_like(&s4), dev.sample_normal_like(&s4));
        let s3 = (2, 3, Const::<8>);
        let x3: Tensor<(usize, usize, Const<8>), f64, Cpu> = dev.sample_normal_like(&s3);
        let (v3, w3): (
            Tensor<(usize, usize, Const<8>), f64, Cpu>,
            Tensor<(usize, usize, Const<8>), f64, Cpu>,
        ) = (dev.sample_normal_like(&s3), dev.sample_normal_like(&s3));
        let wl: Tensor<Rank2<8, 8>, f64, Cpu> = dev.sample_normal();
        let (gamma, beta): (Tensor<Rank1<8>, f64, Cpu>, Tensor<Rank1<8>, f64, Cpu>) =
            (dev.sample_normal(), dev.sample_normal());

        let pairs = [
            (
                "softmax",
                grad_of(&x4, &v4, |x| {
                    (Cpu::masked_softmax(x, None) * w4.clone()).sum()
                }),
                grad_of(&x4, &v4, |x| {
                    (masked_softmax_composite(x, None) * w4.clone()).sum()
                }),
            ),
            (
                "gelu",
                grad_of(&x3, &v3, |x| (Cpu::gelu(x) * w3.clone()).sum()),
                grad_of(&x3, &v3, |x| (gelu_composite(x) * w3.clone()).sum()),
            ),
            (
                "layer_norm",
                grad_of(&x3, &v3, |x| {
                    (Cpu::layer_norm(x, &gamma, &beta, 1e-5) * w3.clone()).sum()
                }),
                grad_of(&x3, &v3, |x| {
                    (layer_norm_composite(x, &gamma, &beta, 1e-5) * w3.clone()).sum()
                }),
            ),
            (
                "linear",
                grad_of(&x3, &v3, |x| {
                    (Cpu::linear(x, &wl, &beta, false) * w3.clone()).sum()
                }),
                grad_of(&x3, &v3, |x| {
                    (linear_composite(x, &wl, &beta) * w3.clone()).sum()
                }),
            ),
        ];
        for (name, fused, composite) in pairs {
            let d = max_diff(&fused, &composite);
            assert!(d < 1e-12, "{name}：累加到已有梯度上，最大误差 {d:e}");
        }
    }

    /// 融合 LayerNorm 对输入的梯度与有限差分一致（f64）：不依赖组合写法，独立地检查手写的反向公式。
    #[test]
    fn fused_layer_norm_gradient_matches_finite_differences() {
        use crate::basics::autodiff::{check_gradient, ScalarFn};
        struct Loss {
            w: Tensor<(usize, usize, Const<6>), f64, Cpu>,
            gamma: Tensor<Rank1<6>, f64, Cpu>,
            beta: Tensor<Rank1<6>, f64, Cpu>,
        }
        impl ScalarFn<(usize, usize, Const<6>), Cpu> for Loss {
            fn eval<T: Tape<f64, Cpu> + Merge<T> + Merge<NoneTape>>(
                &self,
                x: Tensor<(usize, usize, Const<6>), f64, Cpu, T>,
            ) -> Tensor<(), f64, Cpu, T> {
                (Cpu::layer_norm(x, &self.gamma, &self.beta, 1e-5) * self.w.clone()).sum()
            }
        }
        let dev = Cpu::seed_from_u64(4);
        let shape = (2, 3, Const::<6>);
        let f = Loss {
            w: dev.sample_normal_like(&shape),
            gamma: dev.sample_normal(),
            beta: dev.sample_normal(),
        };
        let x = dev.sample_normal_like(&shape);
        let check = check_gradient(&x, 1e-6, &f);
        assert!(check.max_abs_error < 1e-8, "{check:?}");
    }

    /// 切块的 gemm 与一次单线程的 gemm 逐位相同（每个元素的累加顺序不变），也与朴素的三重循环一致：
    /// 按行切（m ≥ n）与按列切（m < n）、转置的输入（列步长不为 1）、α ≠ 1、β = 1 的累加、最后一块不满。
    #[test]
    fn par_gemm_equals_one_single_threaded_gemm() {
        use cpu::{par_gemm, Gemm};
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        // 3 个线程：块数与 2 不同，最后一块比别的小
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for (m, k, n) in [(301, 70, 150), (40, 90, 701)] {
            let a: Vec<f64> = (0..m * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
            // B 按 n×k 存放、以转置的步长读：k×n 的矩阵，行步长 1、列步长 k
            let b: Vec<f64> = (0..k * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let c0: Vec<f64> = (0..m * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let run = |par: bool| {
                let mut c = c0.clone();
                let (a, b, cm) = (&a, &b, &mut c);
                pool.install(move || {
                    let args = (
                        (a.as_ptr(), k as isize, 1),
                        (b.as_ptr(), 1, k as isize),
                        (cm.as_mut_ptr(), n as isize, 1),
                    );
                    // SAFETY：三个矩阵都在各自的缓冲区之内，C 不与 A、B 重叠
                    unsafe {
                        if par {
                            par_gemm(m, k, n, 0.5, args.0, args.1, 1.0, args.2)
                        } else {
                            f64::gemm(m, k, n, 0.5, args.0, args.1, 1.0, args.2)
                        }
                    }
                });
                c
            };
            let (par, one) = (run(true), run(false));
            assert_eq!(par, one, "m={m} k={k} n={n}：切块后应与不切块逐位相同");
            let naive: Vec<f64> = (0..m * n)
                .map(|ij| {
                    let (i, j) = (ij / n, ij % n);
                    c0[ij] + 0.5 * (0..k).map(|p| a[i * k + p] * b[j * k + p]).sum::<f64>()
                })
                .collect();
            assert!(max_diff(&par, &naive) < 1e-12, "m={m} k={k} n={n}");
        }
    }

    /// 融合的多头注意力与组合写法（拆头 → 缩放点积注意力 → 拼回）：输出、注意力权重、对 q、k、v 的梯度。
    /// 损失 Σ out ⊙ w + Σ q ⊙ w₂：q 在注意力之后又用了一次，注意力的反向要累加进已有的梯度。
    /// `dropout` > 0 时两边在同一把钥匙下（同样的种子）对注意力权重做 dropout，掩码应当相同。
    fn attention_case(seq_q: usize, seq_k: usize, lengths: &[usize], dropout: f64) -> [f64; 5] {
        type X = Tensor<(usize, usize, Const<12>), f64, Cpu>;
        let dev = Cpu::seed_from_u64(11);
        let b = lengths.len();
        let (q, k, v): (X, X, X) = (
            dev.sample_normal_like(&(b, seq_q, Const)),
            dev.sample_normal_like(&(b, seq_k, Const)),
            dev.sample_normal_like(&(b, seq_k, Const)),
        );
        let (w, w2): (X, X) = (
            dev.sample_normal_like(&(b, seq_q, Const)),
            dev.sample_normal_like(&(b, seq_q, Const)),
        );
        let mask = padding_bias::<f64>(&dev, lengths, seq_k);
        // 组合写法这边的 dropout：按融合算子的规则（这一次的种子、权重里的下标）显式地构造掩码，逐元素相乘
        let keyed_dropout = |p: Tensor<Shape4, f64, Cpu, OwnedTape<f64, Cpu>>| {
            if dropout == 0.0 {
                return p;
            }
            let seed = step_key::next_seed(|| unreachable!("有钥匙时不取设备的随机数"));
            let (threshold, scale) = cpu::dropout_params::<f64>(dropout);
            let shape = *p.shape();
            let keep = (0..shape.num_elements())
                .map(|i| {
                    if cpu::keeps(seed, i, threshold) {
                        scale
                    } else {
                        0.0
                    }
                })
                .collect();
            p * dev.tensor_from_vec(keep, shape)
        };
        let run = |fused: bool| {
            let qt = q.leaky_trace();
            let q_again = qt.retaped::<OwnedTape<f64, Cpu>>();
            let (kt, vt) = (k.leaky_trace(), v.leaky_trace());
            let _key = step_key::StepKey::enter(5, 17);
            let (out, weights) = if fused {
                Cpu::attention(qt, kt, vt, 3, Some(&mask), dropout)
            } else {
                attention_heads_composite(qt, kt, vt, 3, Some(&mask), keyed_dropout)
            };
            let y = out.retaped::<NoneTape>().as_vec();
            let g = ((out * w.clone()).sum() + (q_again * w2.clone()).sum()).backward();
            let grads = [&q, &k, &v].map(|t| g.get(t).as_vec());
            (y, weights.as_vec(), grads)
        };
        let (y1, p1, g1) = run(true);
        let (y2, p2, g2) = run(false);
        assert_eq!(p1.len(), b * 3 * seq_q * seq_k);
        [
            max_diff(&y1, &y2),
            max_diff(&p1, &p2),
            max_diff(&g1[0], &g2[0]),
            max_diff(&g1[1], &g2[1]),
            max_diff(&g1[2], &g2[2]),
        ]
    }

    #[test]
    fn fused_attention_matches_composite() {
        // 自注意力（带填充）与查询、键长度不同的情形
        // 训练时对注意力权重做 dropout：融合算子重新算出的掩码与组合写法的 dropout 相同
        for dropout in [0.0, 0.3] {
            for (sq, sk, lengths) in [(5, 5, &[5, 3][..]), (4, 6, &[6, 2][..])] {
                let errs = attention_case(sq, sk, lengths, dropout);
                assert!(
                    errs.iter().all(|&e| e < 1e-13),
                    "dropout={dropout} seq_q={sq} seq_k={sk}：输出、权重、dq、dk、dv 的误差 {errs:?}"
                );
            }
        }
        // dropout 真的改变了输出（否则上面的比较测不出什么）
        let [changed, ..] = {
            let dev = Cpu::seed_from_u64(1);
            let x: Tensor<(usize, usize, Const<12>), f64, Cpu> =
                dev.sample_normal_like(&(2, 4, Const));
            let _key = step_key::StepKey::enter(0, 0);
            let (a, _) = Cpu::attention(x.clone(), x.clone(), x.clone(), 3, None, 0.0);
            let (b, _) = Cpu::attention(x.clone(), x.clone(), x, 3, None, 0.5);
            [max_diff(&a.as_vec(), &b.as_vec())]
        };
        assert!(changed > 1e-3, "dropout 没有改变输出：{changed}");
    }

    /// 反向用的梯度表。`mark_leafs` 为 `true` 时像 `model.alloc_grads()` 那样只把 `leafs` 标为叶子
    /// （融合算子可以取走中间张量的梯度，见 `cpu::take_grad`），否则像 `leaky_trace` 那样保留全部梯度（只能复制）。
    fn grads_with_leafs(leafs: &[dfdx::tensor::UniqueId], mark_leafs: bool) -> Gradients<f64, Cpu> {
        let mut g = Gradients::leaky();
        if mark_leafs {
            g.retain_leafs(leafs);
        }
        g
    }

    /// 融合的加法与 dfdx 的 x + y：输出与两个梯度。x 之后又用了一次（累加），也测 x + x；
    /// 梯度表标记叶子与不标记两种（上游梯度取走或复制）。
    #[test]
    fn fused_add_matches_composite() {
        type X = Tensor<(usize, usize, Const<5>), f64, Cpu>;
        let dev = Cpu::seed_from_u64(13);
        let (x, y, w, w2): (X, X, X, X) = (
            dev.sample_normal_like(&(2, 3, Const)),
            dev.sample_normal_like(&(2, 3, Const)),
            dev.sample_normal_like(&(2, 3, Const)),
            dev.sample_normal_like(&(2, 3, Const)),
        );
        for mark_leafs in [false, true] {
            let run = |fused: bool, same: bool| {
                let leafs = [x.id(), y.id()];
                let xt = x.clone().traced(grads_with_leafs(&leafs, mark_leafs));
                let yt = if same {
                    xt.retaped::<OwnedTape<f64, Cpu>>()
                } else {
                    y.retaped::<OwnedTape<f64, Cpu>>()
                };
                let x_again = xt.retaped::<OwnedTape<f64, Cpu>>();
                let h = if fused { Cpu::add(xt, yt) } else { xt + yt };
                let out = h.retaped::<NoneTape>().as_vec();
                let g = ((h * w.clone()).sum() + (x_again * w2.clone()).sum()).backward();
                let gy = if same { vec![] } else { g.get(&y).as_vec() };
                (out, g.get(&x).as_vec(), gy)
            };
            let (o1, gx1, gy1) = run(true, false);
            let (o2, gx2, gy2) = run(false, false);
            assert!(max_diff(&o1, &o2) < 1e-15);
            assert!(
                max_diff(&gx1, &gx2) < 1e-14,
                "∂x：{:e}",
                max_diff(&gx1, &gx2)
            );
            assert!(
                max_diff(&gy1, &gy2) < 1e-14,
                "∂y：{:e}",
                max_diff(&gy1, &gy2)
            );
            // x + x：∂x = 2w + w2（dfdx 的加法在两个操作数同一 id 时反向会 panic，只能对照公式）
            let (o, gx, _) = run(true, true);
            let xs = x.as_vec();
            let (ws, w2s) = (w.as_vec(), w2.as_vec());
            for i in 0..xs.len() {
                assert!((o[i] - 2.0 * xs[i]).abs() < 1e-15);
                assert!((gx[i] - (2.0 * ws[i] + w2s[i])).abs() < 1e-14);
            }
        }
    }

    /// 融合的 LoRA 分支与组合写法 out + low_rank(dropout(x))：输出与对 out、x、A、B 的梯度（x 之后又用了一次，要累加）。
    /// 有 dropout 时两边在同一把 [`step_key::StepKey`] 下取种子，掩码相同；融合算子不为反向存丢弃后的输入，反向时重新算出它。
    #[test]
    fn fused_lora_add_matches_composite() {
        type X<const N: usize> = Tensor<(usize, usize, Const<N>), f64, Cpu>;
        let dev = Cpu::seed_from_u64(12);
        let (out, x): (X<5>, X<6>) = (
            dev.sample_normal_like(&(2, 3, Const)),
            dev.sample_normal_like(&(2, 3, Const)),
        );
        let (w, w2): (X<5>, X<6>) = (
            dev.sample_normal_like(&(2, 3, Const)),
            dev.sample_normal_like(&(2, 3, Const)),
        );
        let a: Tensor<Rank2<2, 6>, f64, Cpu> = dev.sample_normal();
        let b: Tensor<Rank2<5, 2>, f64, Cpu> = dev.sample_normal();
        let run = |fused: bool, mark_leafs: bool, p: f64| {
            let _key = step_key::StepKey::enter(7, 3);
            let leafs = [out.id(), x.id(), a.id(), b.id()];
            let ot = out.clone().traced(grads_with_leafs(&leafs, mark_leafs));
            let xt = x.retaped::<OwnedTape<f64, Cpu>>();
            let x_again = xt.retaped::<OwnedTape<f64, Cpu>>();
            let h = if fused {
                Cpu::lora_add(ot, xt, &a, &b, 0.7, p)
            } else {
                ot + low_rank(Cpu::dropout(xt, p), &a, &b, 0.7)
            };
            let y = h.retaped::<NoneTape>().as_vec();
            let g = ((h * w.clone()).sum() + (x_again * w2.clone()).sum()).backward();
            let grads = [
                g.get(&out).as_vec(),
                g.get(&x).as_vec(),
                g.get(&a).as_vec(),
                g.get(&b).as_vec(),
            ];
            (y, grads)
        };
        // 有 dropout 时确实丢掉了一些：输出与不丢弃时不同
        assert!(max_diff(&run(true, false, 0.3).0, &run(true, false, 0.0).0) > 1e-3);
        // 梯度表标记叶子时，融合算子取走 h 的梯度作 ∂out；不标记时复制一份
        for (mark_leafs, p) in [(false, 0.0), (true, 0.0), (false, 0.3), (true, 0.3)] {
            let (y1, g1) = run(true, mark_leafs, p);
            let (y2, g2) = run(false, mark_leafs, p);
            assert!(max_diff(&y1, &y2) < 1e-14, "p = {p}");
            for (i, name) in ["out", "x", "A", "B"].iter().enumerate() {
                assert!(
                    max_diff(&g1[i], &g2[i]) < 1e-13,
                    "p = {p}，∂{name}：{:e}",
                    max_diff(&g1[i], &g2[i])
                );
                assert!(g1[i].iter().any(|&v| v != 0.0), "∂{name} 全为 0");
            }
        }
    }
}
