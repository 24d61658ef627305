//! 编码器里线性层的“钩子”：每个线性层算完之后，可以在输出上再加一项。
//!
//! 第 1 部分的模型不用钩子（[`NoHooks`]，什么也不加）；第 2 部分的 LoRA 在这里加上 (α/r)·B(Ax)，
//! 于是注意力、前馈网络、编码器层的前向只写一遍，LoRA 模型与原模型共用。

use std::sync::Arc;

use dfdx::prelude::*;

use crate::kernels::LazyWeight;

// ANCHOR: hooks
/// 注意力里四个投影的钩子：`x` 是投影的输入，`out` 是原投影的输出，返回最终输出（默认原样返回 `out`）。
pub trait AttentionHooks<const M: usize, E: Dtype, D: Device<E>> {
    /// 四个投影本身（W₀、b₀）是否冻结：冻结时不必算它们的梯度（附录 B）。默认不冻结。
    fn base_frozen(&self) -> bool {
        false
    }
    /// 这一层的输入是否需要梯度。基座冻结、且这一层下面没有任何可训练的东西时（LoRA 的第 0 层：嵌入层冻结）返回 false，
    /// W_q、W_k、W_v 的反向就不算 ∂x（附录 B）。默认 true。
    fn input_needs_grad(&self) -> bool {
        true
    }
    /// 投影 `proj`（`Query`…`Output`）的权重若量化存放（4.5 节），给出按需还原它的对象，前向就不用层里存的 W。
    /// 默认 `None`：用层里的 W。
    fn attention_weight(&self, _proj: Proj) -> Option<&Arc<dyn LazyWeight<E>>> {
        None
    }
    /// W_q 之后。
    fn query<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        _x: Hidden<M, E, D, T>,
        out: Hidden<M, E, D, T>,
    ) -> Hidden<M, E, D, T> {
        out
    }
    /// W_k 之后。
    fn key<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        _x: Hidden<M, E, D, T>,
        out: Hidden<M, E, D, T>,
    ) -> Hidden<M, E, D, T> {
        out
    }
    /// W_v 之后。
    fn value<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        _x: Hidden<M, E, D, T>,
        out: Hidden<M, E, D, T>,
    ) -> Hidden<M, E, D, T> {
        out
    }
    /// W_o 之后。
    fn output<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        _x: Hidden<M, E, D, T>,
        out: Hidden<M, E, D, T>,
    ) -> Hidden<M, E, D, T> {
        out
    }
}

/// 前馈网络两个线性层的钩子。
pub trait FfnHooks<const M: usize, const F: usize, E: Dtype, D: Device<E>> {
    /// 两个线性层本身是否冻结（见 [`AttentionHooks::base_frozen`]）。
    fn base_frozen(&self) -> bool {
        false
    }
    /// 投影 `proj`（`Up`、`Down`）按需还原的权重（见 [`AttentionHooks::attention_weight`]）。
    fn ffn_weight(&self, _proj: Proj) -> Option<&Arc<dyn LazyWeight<E>>> {
        None
    }
    /// 升维层 `M → F` 之后。
    fn up<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        _x: Hidden<M, E, D, T>,
        out: Hidden<F, E, D, T>,
    ) -> Hidden<F, E, D, T> {
        out
    }
    /// 降维层 `F → M` 之后。
    fn down<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        _x: Hidden<F, E, D, T>,
        out: Hidden<M, E, D, T>,
    ) -> Hidden<M, E, D, T> {
        out
    }
}

/// 编码器层里的六个投影（钩子按它找量化存放的权重）。
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proj {
    /// W_q。
    Query,
    /// W_k。
    Key,
    /// W_v。
    Value,
    /// W_o。
    Output,
    /// 前馈的升维层。
    Up,
    /// 前馈的降维层。
    Down,
}

impl Proj {
    /// 六个投影，按层里的存放次序。
    pub const ALL: [Proj; 6] = [
        Proj::Query,
        Proj::Key,
        Proj::Value,
        Proj::Output,
        Proj::Up,
        Proj::Down,
    ];
}

/// 不加任何东西的钩子：第 1 部分的模型。
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHooks;

impl<const M: usize, E: Dtype, D: Device<E>> AttentionHooks<M, E, D> for NoHooks {}
impl<const M: usize, const F: usize, E: Dtype, D: Device<E>> FfnHooks<M, F, E, D> for NoHooks {}
// ANCHOR_END: hooks

/// `(batch, seq, Const<N>)` 的隐藏状态（钩子的签名里用它缩短类型；定义在 0.3 节，附录 B 的算子也用它）。
pub use crate::basics::shapes::Hidden;
