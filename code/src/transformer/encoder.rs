//! 1.6 编码器层（Pre-LN 与 Post-LN）与完整的编码器。
//!
//! 参数（进检查点、由优化器更新）放在 [`EncoderParams`] 里；超参数（层归一化的位置、激活函数、
//! dropout 概率、ε、最大长度）放在 [`EncoderConfig`] 里；两者加上预先算好的位置编码，
//! 组成 [`TransformerEncoder`]。

use std::fmt;

use crate::kernels::Kernels;
use dfdx::nn::modules::{Embedding, Module, ModuleVisitor, Repeated, TensorCollection};
use dfdx::prelude::*;

use crate::basics::tensors::Real;

use super::attention::PaddingMask;
use super::feed_forward::{Activation, FeedForward};
use super::hooks::{AttentionHooks, FfnHooks, NoHooks};
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
    /// 注意力权重上的 dropout 概率（BERT 的 `attention_probs_dropout_prob`），默认 0：第 1 部分的参考实现只在子层输出上做 dropout。
    pub attention_dropout: f64,
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
            attention_dropout: 0.0,
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

impl<const M: usize, const H: usize, const F: usize, E: Dtype, D: Kernels<E>>
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
        self.forward_with(x, mask, cfg, mode, &NoHooks)
    }

    /// 同 [`forward`](Self::forward)，六个线性层之后经过钩子 `hooks`。
    pub fn forward_with<T, Hk>(
        &self,
        x: Tensor<(usize, usize, Const<M>), E, D, T>,
        mask: Option<&PaddingMask<E, D>>,
        cfg: &EncoderConfig,
        mode: Mode,
        hooks: &Hk,
    ) -> (
        Tensor<(usize, usize, Const<M>), E, D, T>,
        Tensor<(usize, usize, usize, usize), E, D>,
    )
    where
        T: Tape<E, D> + Merge<T> + Merge<NoneTape>,
        Hk: AttentionHooks<M, E, D> + FfnHooks<M, F, E, D>,
    {
        let eps = cfg.layer_norm_eps;
        let drop = |t: Tensor<(usize, usize, Const<M>), E, D, T>| match mode {
            Mode::Train if cfg.dropout > 0.0 => D::dropout(t, cfg.dropout),
            _ => t,
        };
        let attention_dropout = match mode {
            Mode::Train => cfg.attention_dropout,
            Mode::Eval => 0.0,
        };
        match cfg.norm_position {
            NormPosition::Pre => {
                // x = x + Dropout(MHA(LN₁(x)))；x = x + Dropout(FFN(LN₂(x)))
                let normed = self.norm1.forward(x.retaped::<T>(), eps);
                let (attn, weights) =
                    self.attention
                        .forward_dropout(normed, mask, hooks, attention_dropout);
                let x = D::add(x, drop(attn));
                let normed = self.norm2.forward(x.retaped::<T>(), eps);
                let ffn = self
                    .feed_forward
                    .forward_with(normed, cfg.activation, hooks);
                (D::add(x, drop(ffn)), weights)
            }
            NormPosition::Post => {
                // x = LN₁(x + Dropout(MHA(x)))；x = LN₂(x + Dropout(FFN(x)))
                let (attn, weights) = self.attention.forward_dropout(
                    x.retaped::<T>(),
                    mask,
                    hooks,
                    attention_dropout,
                );
                let x = self.norm1.forward(D::add(x, drop(attn)), eps);
                let ffn = self
                    .feed_forward
                    .forward_with(x.retaped::<T>(), cfg.activation, hooks);
                (self.norm2.forward(D::add(x, drop(ffn)), eps), weights)
            }
        }
    }
}
// ANCHOR_END: layer

// ANCHOR: params
/// 编码器的输出。
pub struct EncoderOutput<const M: usize, E: Dtype, D: Device<E>, T> {
    /// 最后的隐藏状态 `(batch, seq, Const<M>)`。
    pub hidden: Tensor<(usize, usize, Const<M>), E, D, T>,
    /// 每层的注意力权重 `(batch, H, seq, seq)`，不带 tape。
    pub attention: Vec<Tensor<(usize, usize, usize, usize), E, D>>,
}

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

impl<
        const V: usize,
        const M: usize,
        const H: usize,
        const F: usize,
        const L: usize,
        E: Real,
        D: Kernels<E>,
    > EncoderParams<V, M, H, F, L, E, D>
{
    /// 编码器的前向（参数在 `self`，位置编码与超参数由调用者提供；分类模型等在此之上加任务头）。
    pub fn forward<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        positional: &PositionalEncoding<M, E, D>,
        config: &EncoderConfig,
        tokens: Tensor<(usize, usize), usize, D, T>,
        mask: Option<&PaddingMask<E, D>>,
        mode: Mode,
    ) -> Result<EncoderOutput<M, E, D, T>, InputError> {
        self.forward_with(positional, config, tokens, mask, mode, |_| NoHooks)
    }

    /// 同 [`forward`](Self::forward)，第 i 层使用钩子 `hooks(i)`（第 2 部分的 LoRA 由此接入每一层）。
    pub fn forward_with<T, Hk>(
        &self,
        positional: &PositionalEncoding<M, E, D>,
        config: &EncoderConfig,
        tokens: Tensor<(usize, usize), usize, D, T>,
        mask: Option<&PaddingMask<E, D>>,
        mode: Mode,
        hooks: impl Fn(usize) -> Hk,
    ) -> Result<EncoderOutput<M, E, D, T>, InputError>
    where
        T: Tape<E, D> + Merge<T> + Merge<NoneTape>,
        Hk: AttentionHooks<M, E, D> + FfnHooks<M, F, E, D>,
    {
        let (batch, seq) = *tokens.shape();
        if seq > positional.max_len() {
            return Err(InputError::TooLong {
                seq,
                max_len: positional.max_len(),
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
        let mut x = positional.forward(self.embedding.forward(tokens));
        let mut attention = Vec::with_capacity(L);
        for (i, layer) in self.layers.modules.iter().enumerate() {
            let (y, weights) = layer.forward_with(x, mask, config, mode, &hooks(i));
            x = y;
            attention.push(weights);
        }
        let hidden = self.norm.forward(x, config.layer_norm_eps);
        Ok(EncoderOutput { hidden, attention })
    }
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

impl<const V: usize, const M: usize, const H: usize, const F: usize, const L: usize, E, D>
    TransformerEncoder<V, M, H, F, L, E, D>
where
    E: Real,
    D: Kernels<E>,
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
        self.params
            .forward(&self.positional, &self.config, tokens, mask, mode)
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
    /// id 超出了嵌入表（如词 id ≥ vocab_size：分词器与 `config.json` 不配套）。
    IdOutOfRange {
        /// 哪种 id（`input_ids`、`token_type_ids`）。
        field: &'static str,
        /// 越界的 id。
        id: usize,
        /// 表的行数。
        rows: usize,
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
            InputError::IdOutOfRange { field, id, rows } => {
                write!(
                    f,
                    "{field} 里有 id {id}，超出了嵌入表的 {rows} 行（分词器与模型的 config.json 不配套？）"
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
    E: Real,
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
    E: Real,
    D: Kernels<E>,
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

/// 测试用的小编码器：词表 50、隐藏维度 16、4 个头、前馈 32、2 层。
pub type TinyEncoder<E, D> = TransformerEncoder<50, 16, 4, 32, 2, E, D>;

/// 参考实现的默认配置：词表 10000、d_model 512、8 个头、前馈 2048、6 层。
pub type SeedEncoder<E, D> = TransformerEncoder<10000, 512, 8, 2048, 6, E, D>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::basics::autodiff::{check_gradient, ScalarFn};
    use dfdx::nn::{BuildModule, ZeroGrads};

    type X = (usize, usize, Const<8>);
    type Layer = EncoderLayer<8, 2, 16, f64, Cpu>;

    struct LayerLoss {
        layer: Layer,
        mask: PaddingMask<f64, Cpu>,
        cfg: EncoderConfig,
        w: Tensor<X, f64, Cpu>,
    }

    impl LayerLoss {
        fn new(norm_position: NormPosition, activation: Activation) -> Self {
            let dev = Cpu::seed_from_u64(3);
            let mut layer = Layer::build(&dev);
            // 层归一化的参数也随机化，才能测出它们的梯度
            layer.norm1.weight = dev.sample_normal::<Rank1<8>>() * 0.5 + 1.0;
            layer.norm2.bias = dev.sample_normal::<Rank1<8>>() * 0.5;
            let cfg = EncoderConfig {
                norm_position,
                activation,
                ..Default::default()
            };
            let mask = PaddingMask::from_lengths(&dev, &[4, 2], 4).unwrap();
            Self {
                layer,
                mask,
                cfg,
                w: dev.sample_normal_like(&(2, 4, Const)),
            }
        }
        fn loss<T: Tape<f64, Cpu> + Merge<T> + Merge<NoneTape>>(
            &self,
            layer: &Layer,
            x: Tensor<X, f64, Cpu, T>,
        ) -> Tensor<(), f64, Cpu, T> {
            let (y, _) = layer.forward(x, Some(&self.mask), &self.cfg, Mode::Eval);
            (y * self.w.clone()).sum()
        }
    }

    impl ScalarFn<X, Cpu> for LayerLoss {
        fn eval<T: Tape<f64, Cpu> + Merge<T> + Merge<NoneTape>>(
            &self,
            x: Tensor<X, f64, Cpu, T>,
        ) -> Tensor<(), f64, Cpu, T> {
            self.loss(&self.layer, x)
        }
    }

    /// 对参数 `get(layer)` 的每个元素做中心差分，返回与反向传播梯度的最大绝对误差。
    fn param_error<S: Shape>(
        f: &LayerLoss,
        x: &Tensor<X, f64, Cpu>,
        get: impl Fn(&mut Layer) -> &mut Tensor<S, f64, Cpu>,
    ) -> f64 {
        let grads = f.layer.alloc_grads();
        let loss = f.loss(&f.layer, x.clone().traced(grads));
        let mut layer = f.layer.clone();
        let analytic = loss.backward().get(get(&mut layer)).as_vec();
        let base = get(&mut layer).as_vec();
        let h = 1e-6;
        let mut worst: f64 = 0.0;
        for i in 0..base.len() {
            let at = |delta: f64| {
                let mut l = f.layer.clone();
                let mut v = base.clone();
                v[i] += delta;
                get(&mut l).copy_from(&v);
                f.loss(&l, x.clone()).as_vec()[0]
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            worst = worst.max((numeric - analytic[i]).abs());
        }
        worst
    }

    #[test]
    fn encoder_layer_gradients_match_finite_differences() {
        for norm_position in [NormPosition::Pre, NormPosition::Post] {
            for activation in [Activation::Relu, Activation::Gelu] {
                let f = LayerLoss::new(norm_position, activation);
                let x = Cpu::seed_from_u64(9).sample_normal_like(&(2, 4, Const::<8>));
                let case = format!("{norm_position:?}/{activation:?}");
                let check = check_gradient(&x, 1e-6, &f);
                assert!(check.max_abs_error < 1e-6, "{case} 输入梯度：{check:?}");
                let errors = [
                    (
                        "attention.w_q.weight",
                        param_error(&f, &x, |l| &mut l.attention.w_q.weight),
                    ),
                    (
                        "attention.w_v.bias",
                        param_error(&f, &x, |l| &mut l.attention.w_v.bias),
                    ),
                    (
                        "attention.w_o.weight",
                        param_error(&f, &x, |l| &mut l.attention.w_o.weight),
                    ),
                    (
                        "feed_forward.linear1.bias",
                        param_error(&f, &x, |l| &mut l.feed_forward.linear1.bias),
                    ),
                    (
                        "feed_forward.linear2.weight",
                        param_error(&f, &x, |l| &mut l.feed_forward.linear2.weight),
                    ),
                    ("norm1.weight", param_error(&f, &x, |l| &mut l.norm1.weight)),
                    ("norm2.bias", param_error(&f, &x, |l| &mut l.norm2.bias)),
                ];
                for (name, err) in errors {
                    assert!(err < 1e-6, "{case} 参数 {name} 的梯度误差 {err}");
                }
            }
        }
    }

    #[test]
    fn padding_does_not_change_real_positions() {
        let dev = Cpu::seed_from_u64(5);
        let encoder = TinyEncoder::<f32, Cpu>::new(&dev, EncoderConfig::default());
        let a = [3usize, 14, 15];
        let b = [9usize, 26, 5, 35, 8];
        let alone = dev.tensor_from_vec(a.to_vec(), (1, 3));
        let alone = encoder
            .forward(alone, None, Mode::Eval)
            .unwrap()
            .hidden
            .as_vec();
        // a 填充到长度 5（填充 id 取 0，它的值不应有任何影响）
        let padded = dev.tensor_from_vec(
            [a[0], a[1], a[2], 0, 0, b[0], b[1], b[2], b[3], b[4]].to_vec(),
            (2, 5),
        );
        let mask = PaddingMask::from_lengths(&dev, &[3, 5], 5).unwrap();
        let out = encoder.forward(padded, Some(&mask), Mode::Eval).unwrap();
        let batched = out.hidden.as_vec();
        for (i, (p, q)) in alone.iter().zip(&batched[..3 * 16]).enumerate() {
            assert!(
                (p - q).abs() < 1e-5,
                "位置 {} 维 {}：{p} vs {q}",
                i / 16,
                i % 16
            );
        }
        // 每一层、每个头、每个查询位置，对填充键的权重都恰好为 0
        for weights in &out.attention {
            let w = weights.as_vec(); // (2, 4, 5, 5)
            for row in w[..4 * 5 * 5].chunks(5) {
                assert_eq!(&row[3..], &[0.0, 0.0]);
            }
        }
    }

    #[test]
    fn dropout_acts_only_in_training() {
        let dev = Cpu::seed_from_u64(11);
        let cfg = EncoderConfig {
            dropout: 0.5,
            ..Default::default()
        };
        let encoder = TinyEncoder::<f32, Cpu>::new(&dev, cfg);
        let run = |encoder: &TinyEncoder<f32, Cpu>, mode| {
            let tokens = dev.tensor_from_vec(vec![1usize, 2, 3, 4], (1, 4));
            encoder.forward(tokens, None, mode).unwrap().hidden.as_vec()
        };
        let (eval1, eval2) = (run(&encoder, Mode::Eval), run(&encoder, Mode::Eval));
        let (train1, train2) = (run(&encoder, Mode::Train), run(&encoder, Mode::Train));
        assert_eq!(eval1, eval2, "推理模式必须确定");
        assert_ne!(train1, train2, "训练模式下两次 dropout 的掩码应不同");
        assert_ne!(train1, eval1);
        // dropout = 0 时训练与推理相同
        let no_drop = TransformerEncoder {
            config: EncoderConfig {
                dropout: 0.0,
                ..cfg
            },
            ..encoder.clone()
        };
        assert_eq!(run(&no_drop, Mode::Train), eval1);
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let dev = Cpu::seed_from_u64(0);
        let encoder = TinyEncoder::<f32, Cpu>::new(
            &dev,
            EncoderConfig {
                max_len: 4,
                ..Default::default()
            },
        );
        let long = dev.tensor_from_vec(vec![1usize; 5], (1, 5));
        let err = encoder.forward(long, None, Mode::Eval).err().unwrap();
        assert_eq!(
            err.to_string(),
            "序列长度 5 超过了编码器的最大长度 max_len = 4"
        );
        let mask = PaddingMask::from_lengths(&dev, &[2, 3], 3).unwrap();
        let tokens = dev.tensor_from_vec(vec![1usize; 3], (1, 3));
        let err = encoder
            .forward(tokens, Some(&mask), Mode::Eval)
            .err()
            .unwrap();
        assert_eq!(
            err,
            InputError::MaskShape {
                tokens: (1, 3),
                mask: (2, 3)
            }
        );
    }
}
