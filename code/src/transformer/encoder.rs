//! 1.6 编码器层（Pre-LN 与 Post-LN）与完整的编码器。
//!
//! 参数（进检查点、由优化器更新）放在 [`EncoderParams`] 里；超参数（层归一化的位置、激活函数、
//! dropout 概率、ε、最大长度）放在 [`EncoderConfig`] 里；两者加上预先算好的位置编码，
//! 组成 [`TransformerEncoder`]。

use std::fmt;

use dfdx::nn::modules::{Embedding, Module, ModuleVisitor, Repeated, TensorCollection};
use dfdx::prelude::*;

use super::attention::PaddingMask;
use super::feed_forward::{Activation, FeedForward};
use super::multi_head::MultiHeadAttention;
use super::norm::LayerNorm;
use super::positional::PositionalEncoding;

/// 层归一化放在子层之前（Pre-LN）还是残差相加之后（Post-LN）。
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormPosition {
    /// x + Sublayer(LN(x))：参考实现的默认，也是 GPT-2 之后的主流。
    Pre,
    /// LN(x + Sublayer(x))：原始 Transformer 与 BERT。
    Post,
}

/// 训练还是推理：只影响 dropout。
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// dropout 生效（随机置零并放大 1/(1−p)）。
    Train,
    /// dropout 不生效，输出确定。
    Eval,
}

// ANCHOR: config
/// 编码器的超参数（模型宽度是类型参数，不在这里）。
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EncoderConfig {
    /// 层归一化的位置，默认 Pre-LN。
    pub norm_position: NormPosition,
    /// 前馈网络的激活函数，默认 ReLU。
    pub activation: Activation,
    /// 子层输出上的 dropout 概率，默认 0.1。
    pub dropout: f64,
    /// 层归一化的 ε，默认 1e-5（PyTorch 的默认值）。
    pub layer_norm_eps: f64,
    /// 位置编码的最大长度，默认 512。
    pub max_len: usize,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            norm_position: NormPosition::Pre,
            activation: Activation::Relu,
            dropout: 0.1,
            layer_norm_eps: 1e-5,
            max_len: 512,
        }
    }
}
// ANCHOR_END: config

// ANCHOR: layer
/// 一个编码器层的参数：自注意力子层与前馈子层，各配一个层归一化。
#[derive(Clone, Debug)]
pub struct EncoderLayer<const M: usize, const H: usize, const F: usize, E: Dtype, D: Device<E>> {
    /// 多头自注意力。
    pub attention: MultiHeadAttention<M, H, E, D>,
    /// 前馈网络。
    pub feed_forward: FeedForward<M, F, E, D>,
    /// 注意力子层的层归一化。
    pub norm1: LayerNorm<M, E, D>,
    /// 前馈子层的层归一化。
    pub norm2: LayerNorm<M, E, D>,
}

impl<const M: usize, const H: usize, const F: usize, E: Dtype, D: Device<E>>
    EncoderLayer<M, H, F, E, D>
{
    /// # 形状
    /// - `x`: `(batch, seq, Const<M>)`
    /// - 返回：与 `x` 相同，以及本层的注意力权重 `(batch, H, seq, seq)`
    pub fn forward<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        x: Tensor<(usize, usize, Const<M>), E, D, T>,
        mask: Option<&PaddingMask<E, D>>,
        cfg: &EncoderConfig,
        mode: Mode,
    ) -> (
        Tensor<(usize, usize, Const<M>), E, D, T>,
        Tensor<(usize, usize, usize, usize), E, D>,
    ) {
        let eps = cfg.layer_norm_eps;
        let drop = |t: Tensor<(usize, usize, Const<M>), E, D, T>| match mode {
            Mode::Train if cfg.dropout > 0.0 => t.dropout(cfg.dropout),
            _ => t,
        };
        match cfg.norm_position {
            NormPosition::Pre => {
                // x = x + Dropout(MHA(LN₁(x)))；x = x + Dropout(FFN(LN₂(x)))
                let (attn, weights) = self
                    .attention
                    .forward(self.norm1.forward(x.retaped::<T>(), eps), mask);
                let x = x + drop(attn);
                let ffn = self
                    .feed_forward
                    .forward(self.norm2.forward(x.retaped::<T>(), eps), cfg.activation);
                (x + drop(ffn), weights)
            }
            NormPosition::Post => {
                // x = LN₁(x + Dropout(MHA(x)))；x = LN₂(x + Dropout(FFN(x)))
                let (attn, weights) = self.attention.forward(x.retaped::<T>(), mask);
                let x = self.norm1.forward(x + drop(attn), eps);
                let ffn = self.feed_forward.forward(x.retaped::<T>(), cfg.activation);
                (self.norm2.forward(x + drop(ffn), eps), weights)
            }
        }
    }
}
// ANCHOR_END: layer

// ANCHOR: params
/// 编码器的全部参数。字段名即检查点中的键：`embedding.weight`、`layers.0.attention.w_q.weight`、`norm.bias`……
#[derive(Clone, Debug)]
pub struct EncoderParams<
    const V: usize,
    const M: usize,
    const H: usize,
    const F: usize,
    const L: usize,
    E: Dtype,
    D: Device<E>,
> {
    /// 词嵌入 `(V, M)`。
    pub embedding: Embedding<V, M, E, D>,
    /// `L` 个编码器层。
    pub layers: Repeated<EncoderLayer<M, H, F, E, D>, L>,
    /// 最后的层归一化。
    pub norm: LayerNorm<M, E, D>,
}
// ANCHOR_END: params

// ANCHOR: encoder
/// 完整的编码器：参数 + 超参数 + 位置编码。
///
/// 类型参数是模型宽度：词表 `V`、隐藏维度 `M`、头数 `H`、前馈宽度 `F`、层数 `L`。
#[derive(Clone, Debug)]
pub struct TransformerEncoder<
    const V: usize,
    const M: usize,
    const H: usize,
    const F: usize,
    const L: usize,
    E: Dtype,
    D: Device<E>,
> {
    /// 可训练的参数。
    pub params: EncoderParams<V, M, H, F, L, E, D>,
    /// 超参数。
    pub config: EncoderConfig,
    /// 预先算好的位置编码。
    pub positional: PositionalEncoding<M, E, D>,
}

/// 编码器的输出。
pub struct EncoderOutput<const M: usize, E: Dtype, D: Device<E>, T> {
    /// 最后的隐藏状态 `(batch, seq, Const<M>)`。
    pub hidden: Tensor<(usize, usize, Const<M>), E, D, T>,
    /// 每层的注意力权重 `(batch, H, seq, seq)`，不带 tape。
    pub attention: Vec<Tensor<(usize, usize, usize, usize), E, D>>,
}

impl<const V: usize, const M: usize, const H: usize, const F: usize, const L: usize, E, D>
    TransformerEncoder<V, M, H, F, L, E, D>
where
    E: Dtype + num_traits::Float + rand_distr::uniform::SampleUniform,
    D: Device<E>,
{
    /// 随机初始化参数（线性层与 PyTorch 的 `nn.Linear` 同分布），算好位置编码。
    pub fn new(dev: &D, config: EncoderConfig) -> Self {
        Self {
            params: EncoderParams::build(dev),
            positional: PositionalEncoding::new(dev, config.max_len),
            config,
        }
    }

    /// 词嵌入 → 加位置编码 → `L` 个编码器层 → 层归一化。
    ///
    /// # 形状
    /// - `tokens`: `(batch, seq)` 的词 id；`mask` 的形状须与之相同
    /// - 返回：隐藏状态 `(batch, seq, Const<M>)` 与每层的注意力权重
    pub fn forward<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        tokens: Tensor<(usize, usize), usize, D, T>,
        mask: Option<&PaddingMask<E, D>>,
        mode: Mode,
    ) -> Result<EncoderOutput<M, E, D, T>, InputError> {
        let (batch, seq) = *tokens.shape();
        if seq > self.positional.max_len() {
            return Err(InputError::TooLong {
                seq,
                max_len: self.positional.max_len(),
            });
        }
        if let Some(m) = mask {
            if m.bias.shape() != &(batch, seq) {
                return Err(InputError::MaskShape {
                    tokens: (batch, seq),
                    mask: *m.bias.shape(),
                });
            }
        }
        // 约定：不乘 √M（与参考实现和 PyTorch 的 N(0,1) 嵌入初始化一致，见 1.6 节）
        let mut x = self
            .positional
            .forward(self.params.embedding.forward(tokens));
        let mut attention = Vec::with_capacity(L);
        for layer in &self.params.layers.modules {
            let (y, weights) = layer.forward(x, mask, &self.config, mode);
            x = y;
            attention.push(weights);
        }
        let hidden = self.params.norm.forward(x, self.config.layer_norm_eps);
        Ok(EncoderOutput { hidden, attention })
    }
}
// ANCHOR_END: encoder

/// 输入与模型不符。
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputError {
    /// 序列比位置编码的最大长度还长。
    TooLong {
        /// 输入的序列长度。
        seq: usize,
        /// 最大长度。
        max_len: usize,
    },
    /// 填充掩码与词 id 的形状不同。
    MaskShape {
        /// 词 id 的 (batch, seq)。
        tokens: (usize, usize),
        /// 掩码的 (batch, seq)。
        mask: (usize, usize),
    },
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputError::TooLong { seq, max_len } => {
                write!(
                    f,
                    "序列长度 {seq} 超过了编码器的最大长度 max_len = {max_len}"
                )
            }
            InputError::MaskShape { tokens, mask } => {
                write!(
                    f,
                    "填充掩码的形状 {mask:?} 与词 id 的形状 {tokens:?} 不一致"
                )
            }
        }
    }
}

impl std::error::Error for InputError {}

impl<const M: usize, const H: usize, const F: usize, E, D> TensorCollection<E, D>
    for EncoderLayer<M, H, F, E, D>
where
    E: Dtype + num_traits::Float + rand_distr::uniform::SampleUniform,
    D: Device<E>,
{
    type To<E2: Dtype, D2: Device<E2>> = EncoderLayer<M, H, F, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::module("attention", |s| &s.attention, |s| &mut s.attention),
                Self::module("feed_forward", |s| &s.feed_forward, |s| &mut s.feed_forward),
                Self::module("norm1", |s| &s.norm1, |s| &mut s.norm1),
                Self::module("norm2", |s| &s.norm2, |s| &mut s.norm2),
            ),
            |(attention, feed_forward, norm1, norm2)| EncoderLayer {
                attention,
                feed_forward,
                norm1,
                norm2,
            },
        )
    }
}

impl<const V: usize, const M: usize, const H: usize, const F: usize, const L: usize, E, D>
    TensorCollection<E, D> for EncoderParams<V, M, H, F, L, E, D>
where
    E: Dtype + num_traits::Float + rand_distr::uniform::SampleUniform,
    D: Device<E>,
{
    type To<E2: Dtype, D2: Device<E2>> = EncoderParams<V, M, H, F, L, E2, D2>;

    fn iter_tensors<Vis: ModuleVisitor<Self, E, D>>(
        visitor: &mut Vis,
    ) -> Result<Option<Self::To<Vis::E2, Vis::D2>>, Vis::Err> {
        visitor.visit_fields(
            (
                Self::module("embedding", |s| &s.embedding, |s| &mut s.embedding),
                Self::module("layers", |s| &s.layers, |s| &mut s.layers),
                Self::module("norm", |s| &s.norm, |s| &mut s.norm),
            ),
            |(embedding, layers, norm)| EncoderParams {
                embedding,
                layers,
                norm,
            },
        )
    }
}
