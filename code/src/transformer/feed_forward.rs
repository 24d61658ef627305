//! 1.5 前馈网络：FFN(x) = W₂·act(W₁x + b₁) + b₂，act 为 ReLU（参考实现）或 GELU（BERT）。

use crate::kernels::Kernels;
use dfdx::nn::modules::{Linear, ModuleVisitor, TensorCollection};
use dfdx::prelude::*;

use crate::basics::tensors::Real;

use super::hooks::{FfnHooks, NoHooks, Proj};

/// 前馈网络的激活函数。
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// max(0, x)，原始 Transformer 与本书参考实现使用。
    Relu,
    /// 精确 GELU x·Φ(x)，BERT 使用；反向传播正确（见 [`gelu`]）。
    Gelu,
}

// ANCHOR: feed_forward
/// 前馈网络的参数：`M → F → M` 两个线性层。
#[derive(Clone, Debug)]
pub struct FeedForward<const M: usize, const F: usize, E: Dtype, D: Device<E>> {
    /// 升维 `M → F`。
    pub linear1: Linear<M, F, E, D>,
    /// 降维 `F → M`。
    pub linear2: Linear<F, M, E, D>,
}

impl<const M: usize, const F: usize, E: Dtype, D: Kernels<E>> FeedForward<M, F, E, D> {
    /// # 形状
    /// - `x`: `(batch, seq, Const<M>)`，中间 `(batch, seq, Const<F>)`
    /// - 返回：与 `x` 相同
    pub fn forward<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        x: Tensor<(usize, usize, Const<M>), E, D, T>,
        activation: Activation,
    ) -> Tensor<(usize, usize, Const<M>), E, D, T> {
        self.forward_with(x, activation, &NoHooks)
    }

    /// 同 [`forward`](Self::forward)，两个线性层之后经过钩子。
    pub fn forward_with<T: Tape<E, D> + Merge<T> + Merge<NoneTape>, Hk: FfnHooks<M, F, E, D>>(
        &self,
        x: Tensor<(usize, usize, Const<M>), E, D, T>,
        activation: Activation,
        hooks: &Hk,
    ) -> Tensor<(usize, usize, Const<M>), E, D, T> {
        let train = !hooks.base_frozen();
        let (l1, l2) = (&self.linear1, &self.linear2);
        // 量化存放的基座（4.5 节）由钩子给出按需还原的权重
        // （tape 跟着线性层的输出走，钩子拿不带 tape 记录的副本）
        let x_copy = x.retaped::<T>();
        let up = match hooks.ffn_weight(Proj::Up) {
            Some(w) => D::linear_lazy(x, w, &l1.bias),
            None => D::linear(x, &l1.weight, &l1.bias, train),
        };
        let hidden = hooks.up(x_copy, up);
        let hidden = match activation {
            Activation::Relu => hidden.relu(),
            Activation::Gelu => D::gelu(hidden),
        };
        let hidden_copy = hidden.retaped::<T>();
        let down = match hooks.ffn_weight(Proj::Down) {
            Some(w) => D::linear_lazy(hidden, w, &l2.bias),
            None => D::linear(hidden, &l2.weight, &l2.bias, train),
        };
        hooks.down(hidden_copy, down)
    }
}
// ANCHOR_END: feed_forward

impl<const M: usize, const F: usize, E, D> TensorCollection<E, D> for FeedForward<M, F, E, D>
where
    E: Real,
    D: Device<E>,
{
    type To<E2: Dtype, D2: Device<E2>> = FeedForward<M, F, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::module("linear1", |s| &s.linear1, |s| &mut s.linear1),
                Self::module("linear2", |s| &s.linear2, |s| &mut s.linear2),
            ),
            |(linear1, linear2)| FeedForward { linear1, linear2 },
        )
    }
}
