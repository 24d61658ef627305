//! 1.2 多头注意力：独立的 W_q、W_k、W_v、W_o，头的拆分与合并。

use crate::kernels::Kernels;
use dfdx::nn::modules::{Linear, ModuleVisitor, TensorCollection};
use dfdx::prelude::*;

use crate::basics::tensors::Real;

use super::attention::PaddingMask;
use super::hooks::{AttentionHooks, NoHooks, Proj};
use crate::basics::shapes::HeadSplit;

// ANCHOR: mha_struct
/// 多头注意力的参数：四个 `M × M` 的线性层（含偏置）。
///
/// 字段名与检查点中的键一致：`w_q.weight`、`w_q.bias`……（权重布局与 PyTorch 的
/// `nn.Linear.weight` 相同，为 `(out, in)`）。
#[derive(Clone, Debug)]
pub struct MultiHeadAttention<const M: usize, const H: usize, E: Dtype, D: Device<E>> {
    /// 查询投影。
    pub w_q: Linear<M, M, E, D>,
    /// 键投影。
    pub w_k: Linear<M, M, E, D>,
    /// 值投影。
    pub w_v: Linear<M, M, E, D>,
    /// 输出投影：合并各头之后。
    pub w_o: Linear<M, M, E, D>,
}
// ANCHOR_END: mha_struct

// ANCHOR: mha_forward
impl<const M: usize, const H: usize, E: Dtype, D: Kernels<E>> MultiHeadAttention<M, H, E, D> {
    /// 每个头的维度；`M % H != 0` 时是编译错误（见 0.3 节的 `HeadSplit`）。
    pub const D_HEAD: usize = HeadSplit::<M, H>::D_HEAD;

    /// 自注意力：Q、K、V 都由同一个输入 `x` 投影得到。
    ///
    /// # 形状
    /// - `x`: `(batch, seq, Const<M>)`
    /// - 返回：输出 `(batch, seq, Const<M>)`，注意力权重 `(batch, H, seq, seq)`
    pub fn forward<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        x: Tensor<(usize, usize, Const<M>), E, D, T>,
        mask: Option<&PaddingMask<E, D>>,
    ) -> (
        Tensor<(usize, usize, Const<M>), E, D, T>,
        Tensor<(usize, usize, usize, usize), E, D>,
    ) {
        self.forward_with(x, mask, &NoHooks)
    }

    /// 同 [`forward`](Self::forward)，每个投影之后经过钩子 `hooks`（第 2 部分的 LoRA 在这里加上低秩更新）。
    pub fn forward_with<T: Tape<E, D> + Merge<T> + Merge<NoneTape>, Hk: AttentionHooks<M, E, D>>(
        &self,
        x: Tensor<(usize, usize, Const<M>), E, D, T>,
        mask: Option<&PaddingMask<E, D>>,
        hooks: &Hk,
    ) -> (
        Tensor<(usize, usize, Const<M>), E, D, T>,
        Tensor<(usize, usize, usize, usize), E, D>,
    ) {
        self.forward_dropout(x, mask, hooks, 0.0)
    }

    /// 同 [`forward_with`](Self::forward_with)，训练时对注意力权重做概率为 `dropout` 的 dropout（BERT 的
    /// `attention_probs_dropout_prob`；推理时给 0）。
    pub fn forward_dropout<T, Hk>(
        &self,
        x: Tensor<(usize, usize, Const<M>), E, D, T>,
        mask: Option<&PaddingMask<E, D>>,
        hooks: &Hk,
        dropout: f64,
    ) -> (
        Tensor<(usize, usize, Const<M>), E, D, T>,
        Tensor<(usize, usize, usize, usize), E, D>,
    )
    where
        T: Tape<E, D> + Merge<T> + Merge<NoneTape>,
        Hk: AttentionHooks<M, E, D>,
    {
        // x 要用多次：tape 跟着 q 走，其余用 retaped 复制出带空 tape 的副本，之后各路的 tape 在注意力里合并
        let (x, tape) = x.split_tape();
        // 投影由设备的 Kernels::linear 计算：原投影冻结时（LoRA），CPU 上不算 W、b 的梯度
        let train = !hooks.base_frozen();
        // ANCHOR: lazy_proj
        // 量化存放的基座（4.5 节）由钩子给出按需还原的权重
        // 权重冻结、输入也不要梯度时（LoRA 的第 0 层），Q、K、V 三个投影在反向里什么也不用算
        let no_input_grad = !train && !hooks.input_needs_grad();
        let proj = |p: Proj, l: &Linear<M, M, E, D>, t| match hooks.attention_weight(p) {
            Some(w) => D::linear_lazy(t, w, &l.bias),
            None if no_input_grad && p != Proj::Output => D::linear_no_grad(t, &l.weight, &l.bias),
            None => D::linear(t, &l.weight, &l.bias, train),
        };
        // ANCHOR_END: lazy_proj
        let q = hooks.query(
            x.retaped::<T>(),
            proj(Proj::Query, &self.w_q, x.clone().put_tape(tape)),
        );
        let k = hooks.key(
            x.retaped::<T>(),
            proj(Proj::Key, &self.w_k, x.retaped::<T>()),
        );
        let v = hooks.value(
            x.retaped::<T>(),
            proj(Proj::Value, &self.w_v, x.retaped::<T>()),
        );
        // 拆成 H 个头、各自做缩放点积注意力、再拼回：设备的 Kernels::attention，
        // 默认是组合写法 attention_heads_composite（CPU 上是附录 B 的融合算子，结果相同）；掩码只交出加性的偏置
        let _ = Self::D_HEAD; // H 不整除 M 时编译不过（0.3 节）
        let (out, weights) = D::attention(q, k, v, H, mask.map(|m| &m.bias), dropout);
        (
            hooks.output(out.retaped::<T>(), proj(Proj::Output, &self.w_o, out)),
            weights,
        )
    }
}
// ANCHOR_END: mha_forward

/// 多头注意力的组合写法（拆头 → 缩放点积注意力 → 拼回）。代码在 `kernels/composite.rs`：它是 `Kernels::attention`
/// 的默认实现，也是附录 B 的融合注意力的对照。
pub use crate::kernels::composite::attention_heads_composite;

impl<const M: usize, const H: usize, E, D> TensorCollection<E, D> for MultiHeadAttention<M, H, E, D>
where
    E: Real,
    D: Device<E>,
{
    type To<E2: Dtype, D2: Device<E2>> = MultiHeadAttention<M, H, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::module("w_q", |s| &s.w_q, |s| &mut s.w_q),
                Self::module("w_k", |s| &s.w_k, |s| &mut s.w_k),
                Self::module("w_v", |s| &s.w_v, |s| &mut s.w_v),
                Self::module("w_o", |s| &s.w_o, |s| &mut s.w_o),
            ),
            |(w_q, w_k, w_v, w_o)| MultiHeadAttention { w_q, w_k, w_v, w_o },
        )
    }
}
