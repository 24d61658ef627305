//! 3.1 节：BERT 的结构。
//!
//! BERT 的编码器层就是第 1 部分的 Post-LN 编码器层（精确 GELU，ε = 1e-12）：HF 的
//! `attention.self.{query,key,value}`、`attention.output.dense`、`attention.output.LayerNorm`、
//! `intermediate.dense`、`output.dense`、`output.LayerNorm` 依次对应本书的
//! `w_q`、`w_k`、`w_v`、`w_o`、`norm1`、`linear1`、`linear2`、`norm2`。与第 1 部分不同的只有：
//! 学习的位置嵌入与句子类型嵌入（之后接层归一化）、编码器末尾**没有**层归一化、池化层取 `[CLS]` 经 dense + tanh。

use crate::kernels::Kernels;
use dfdx::nn::modules::{Linear, Module, ModuleVisitor, TensorCollection};
use dfdx::prelude::*;

use super::runtime::{Head, LayerStack, SavedLinear, Table};
use crate::basics::tensors::Real;
use crate::transformer::attention::PaddingMask;
use crate::transformer::encoder::{EncoderConfig, EncoderLayer, InputError, Mode, NormPosition};
use crate::transformer::feed_forward::Activation;
use crate::transformer::hooks::{AttentionHooks, FfnHooks, NoHooks};
use crate::transformer::norm::LayerNorm;

// ANCHOR: dims
/// 随检查点与任务而变的大小（运行期的数；宽度 M、H、F 在类型里）。
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BertDims {
    /// 词表大小 `vocab_size`。
    pub vocab_size: usize,
    /// 层数 `num_hidden_layers`。
    pub num_layers: usize,
    /// 位置嵌入的个数 `max_position_embeddings`：最长的输入。
    pub max_positions: usize,
    /// 句子类型的个数 `type_vocab_size`。
    pub type_vocab_size: usize,
    /// 分类头的类别数。
    pub num_labels: usize,
}
// ANCHOR_END: dims

/// BERT 的嵌入层：词、位置、句子类型三种嵌入相加，再做层归一化。三张表的行数都在运行期决定。
#[derive(Clone, Debug)]
pub struct BertEmbeddings<const M: usize, E: Dtype, D: Device<E>> {
    /// 词嵌入 `(vocab_size, M)`。
    pub word_embeddings: Table<M, E, D>,
    /// 学习的位置嵌入 `(max_positions, M)`。
    pub position_embeddings: Table<M, E, D>,
    /// 句子类型嵌入 `(type_vocab_size, M)`。
    pub token_type_embeddings: Table<M, E, D>,
    /// 层归一化（检查点中的名字是 `LayerNorm`）。
    pub layer_norm: LayerNorm<M, E, D>,
}

/// BERT 分类模型的全部参数。字段路径经 [`super::hf`] 映射成 Hugging Face 的键名。
#[derive(Clone, Debug)]
pub struct BertParams<const M: usize, const H: usize, const F: usize, E: Dtype, D: Device<E>> {
    /// 嵌入层。
    pub embeddings: BertEmbeddings<M, E, D>,
    /// Post-LN 编码器层（层数在运行期决定）。
    pub layers: LayerStack<EncoderLayer<M, H, F, E, D>>,
    /// 池化层：`[CLS]` 的隐藏状态经 dense + tanh。
    pub pooler: Linear<M, M, E, D>,
    /// 分类头 `M → num_labels`。
    pub classifier: Head<M, E, D>,
}

/// BERT 的输出。
pub struct BertOutput<const M: usize, E: Dtype, D: Device<E>, T> {
    /// 最后一层的隐藏状态 `(batch, seq, Const<M>)`（不带 tape 的副本）。
    pub last_hidden_state: Tensor<(usize, usize, Const<M>), E, D>,
    /// 池化输出 `(batch, Const<M>)`（不带 tape 的副本）。
    pub pooler_output: Tensor<(usize, Const<M>), E, D>,
    /// 分类 logits `(batch, num_labels)`。
    pub logits: Tensor<(usize, usize), E, D, T>,
}

/// 池化层的钩子：由它把 `[CLS]` 的隐藏状态 `x` 送过池化层的 dense（tanh 之前），默认就是基座的 `dense`。
/// PEFT 由此接入两种改动：`target_modules` 里的 `dense` 也匹配 `bert.pooler.dense`（加 LoRA）；
/// `modules_to_save` 含 `pooler` 时用训练的副本代替基座的 dense。
pub trait PoolerHook<const M: usize, E: Dtype, D: Device<E>> {
    /// 池化层的 dense。
    fn pooler<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        dense: &Linear<M, M, E, D>,
        x: Tensor<(usize, Const<M>), E, D, T>,
    ) -> Tensor<(usize, Const<M>), E, D, T> {
        dense.forward(x)
    }
}

impl<const M: usize, E: Dtype, D: Device<E>> PoolerHook<M, E, D> for NoHooks {}

/// BERT 的超参数（宽度在类型里，最大长度取位置嵌入的个数）。注意力权重上的 dropout 与隐藏层的相同
/// （BERT 的两个概率都是 0.1；`config.json` 里不同时，读配置的 [`super::config::HfBertConfig::check`] 另设）。
pub fn bert_config(layer_norm_eps: f64, dropout: f64, max_position: usize) -> EncoderConfig {
    EncoderConfig {
        norm_position: NormPosition::Post,
        activation: Activation::Gelu,
        dropout,
        attention_dropout: dropout,
        layer_norm_eps,
        max_len: max_position,
    }
}

// ANCHOR: forward
impl<const M: usize, const H: usize, const F: usize, E, D> BertParams<M, H, F, E, D>
where
    E: Real,
    D: Kernels<E>,
{
    /// # 形状
    /// - `tokens`、`token_types`：`(batch, seq)`；`mask` 与之相同
    /// - 返回：最后的隐藏状态 `(batch, seq, M)`、池化输出 `(batch, M)`、logits `(batch, num_labels)`
    pub fn forward<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        cfg: &EncoderConfig,
        tokens: Tensor<(usize, usize), usize, D, T>,
        token_types: Option<Tensor<(usize, usize), usize, D>>,
        mask: &PaddingMask<E, D>,
        mode: Mode,
    ) -> Result<BertOutput<M, E, D, T>, InputError> {
        let hooks = |_: usize| NoHooks;
        self.forward_with_head(
            &self.classifier,
            cfg,
            tokens,
            token_types,
            mask,
            mode,
            hooks,
            &NoHooks,
        )
    }

    /// 同 [`forward`](Self::forward)，但第 i 层使用钩子 `hooks(i)`、池化层使用 `pooler_hook`（LoRA 由此接入），
    /// 分类头由调用者给出（PEFT 的 `modules_to_save`：训练的是分类头的副本，原来的头留在基座里不动）。
    ///
    /// 反向传播的 tape 跟着 logits 走（经 `[CLS]` 回到每一层）；返回的隐藏状态与池化输出是不带 tape 的副本。
    #[allow(clippy::too_many_arguments)]
    pub fn forward_with_head<T, Hk, Ph>(
        &self,
        head: &Head<M, E, D>,
        cfg: &EncoderConfig,
        tokens: Tensor<(usize, usize), usize, D, T>,
        token_types: Option<Tensor<(usize, usize), usize, D>>,
        mask: &PaddingMask<E, D>,
        mode: Mode,
        hooks: impl Fn(usize) -> Hk,
        pooler_hook: &Ph,
    ) -> Result<BertOutput<M, E, D, T>, InputError>
    where
        T: Tape<E, D> + Merge<T> + Merge<NoneTape>,
        Hk: AttentionHooks<M, E, D> + FfnHooks<M, F, E, D>,
        Ph: PoolerHook<M, E, D>,
    {
        let x = self.encode_with(cfg, tokens, token_types, mask, mode, hooks)?;
        let (batch, _, _) = *x.shape();
        let last_hidden_state = x.retaped::<NoneTape>();
        // 池化：取每条序列的第一个位置（[CLS]），(batch, 1, M) -> (batch, M)。tape 留在这条路上
        let cls = x.slice((.., 0..1, ..)).reshape_like(&(batch, Const::<M>));
        let pooled = pooler_hook.pooler(&self.pooler, cls).tanh();
        let pooler_output = pooled.retaped::<NoneTape>();
        let pooled = match mode {
            Mode::Train if cfg.dropout > 0.0 => D::dropout(pooled, cfg.dropout),
            _ => pooled,
        };
        Ok(BertOutput {
            last_hidden_state,
            pooler_output,
            logits: head.forward(pooled),
        })
    }

    /// 嵌入 + 全部编码器层：最后一层的隐藏状态 `(batch, seq, M)`，带着 tape（掩码语言模型等在它之上接输出头）。
    pub fn encode_with<T, Hk>(
        &self,
        cfg: &EncoderConfig,
        tokens: Tensor<(usize, usize), usize, D, T>,
        token_types: Option<Tensor<(usize, usize), usize, D>>,
        mask: &PaddingMask<E, D>,
        mode: Mode,
        hooks: impl Fn(usize) -> Hk,
    ) -> Result<Tensor<(usize, usize, Const<M>), E, D, T>, InputError>
    where
        T: Tape<E, D> + Merge<T> + Merge<NoneTape>,
        Hk: AttentionHooks<M, E, D> + FfnHooks<M, F, E, D>,
    {
        self.encode_layers(cfg, tokens, token_types, mask, mode, hooks, |_| false)
            .map(|(x, _)| x)
    }

    /// 每一层的注意力权重 `(batch, heads, seq, seq)`（推理模式、不带 tape）：第 l 个元素的 `[b, h, i, j]`
    /// 是第 l 层第 h 个头里、第 b 条序列的查询 i 对键 j 的权重，每行之和为 1，填充的键为 0（`attention` 命令画的就是它）。
    pub fn attention_maps(
        &self,
        cfg: &EncoderConfig,
        tokens: Tensor<(usize, usize), usize, D>,
        token_types: Option<Tensor<(usize, usize), usize, D>>,
        mask: &PaddingMask<E, D>,
    ) -> Result<Vec<Tensor<(usize, usize, usize, usize), E, D>>, InputError> {
        let hooks = |_: usize| NoHooks;
        let (_, maps) =
            self.encode_layers(cfg, tokens, token_types, mask, Mode::Eval, hooks, |_| true)?;
        Ok(maps)
    }

    /// [`encode_with`](Self::encode_with) 的实现：`keep(i)` 为真的层，它的注意力权重也一并返回。
    #[allow(clippy::too_many_arguments)]
    fn encode_layers<T, Hk>(
        &self,
        cfg: &EncoderConfig,
        tokens: Tensor<(usize, usize), usize, D, T>,
        token_types: Option<Tensor<(usize, usize), usize, D>>,
        mask: &PaddingMask<E, D>,
        mode: Mode,
        hooks: impl Fn(usize) -> Hk,
        keep: impl Fn(usize) -> bool,
    ) -> Result<
        (
            Tensor<(usize, usize, Const<M>), E, D, T>,
            Vec<Tensor<(usize, usize, usize, usize), E, D>>,
        ),
        InputError,
    >
    where
        T: Tape<E, D> + Merge<T> + Merge<NoneTape>,
        Hk: AttentionHooks<M, E, D> + FfnHooks<M, F, E, D>,
    {
        let (batch, seq) = *tokens.shape();
        let max_len = self.embeddings.position_embeddings.rows();
        if seq > max_len {
            return Err(InputError::TooLong { seq, max_len });
        }
        if mask.bias.shape() != &(batch, seq) {
            return Err(InputError::MaskShape {
                tokens: (batch, seq),
                mask: *mask.bias.shape(),
            });
        }
        // 词 id 与句子类型 id 必须在表内：越界的 id 在 dfdx 的 gather 里会 panic，这里先给出清楚的错误
        check_ids(
            "input_ids",
            &tokens.as_vec(),
            self.embeddings.word_embeddings.rows(),
        )?;
        if let Some(types) = &token_types {
            let rows = self.embeddings.token_type_embeddings.rows();
            check_ids("token_type_ids", &types.as_vec(), rows)?;
        }
        let mut x = if AttentionHooks::base_frozen(&hooks(0)) {
            // 基座冻结（LoRA）时嵌入层里没有要训练的参数：不带 tape 算完再挂上 tape，反向停在第 0 层的输入，
            // 不给 2 万多行的词嵌入表分配、累加梯度（附录 B）
            let (tokens, tape) = tokens.split_tape();
            self.embed(cfg, tokens, token_types, mode).put_tape(tape)
        } else {
            self.embed(cfg, tokens, token_types, mode)
        };
        let mut maps = Vec::new();
        for (i, layer) in self.layers.modules.iter().enumerate() {
            let (out, weights) = layer.forward_with(x, Some(mask), cfg, mode, &hooks(i));
            x = out;
            if keep(i) {
                maps.push(weights);
            }
        }
        Ok((x, maps))
    }

    /// 嵌入层：词、位置、句子类型三种嵌入相加，再做 LayerNorm 与（训练时的）dropout。
    fn embed<T: Tape<E, D> + Merge<T>>(
        &self,
        cfg: &EncoderConfig,
        tokens: Tensor<(usize, usize), usize, D, T>,
        token_types: Option<Tensor<(usize, usize), usize, D>>,
        mode: Mode,
    ) -> Tensor<(usize, usize, Const<M>), E, D, T> {
        let (batch, seq) = *tokens.shape();
        let dev = tokens.device().clone();
        let shape = (batch, seq, Const::<M>);
        // 三种嵌入：位置与句子类型的 id 不带 tape，挂一条新的空 tape，让它们的嵌入也能得到梯度
        // （相加时几条 tape 合并成一条）
        let words: Tensor<(usize, usize, Const<M>), E, D, T> =
            self.embeddings.word_embeddings.forward(tokens);
        let positions: Tensor<(usize,), usize, D> = dev.tensor_from_vec((0..seq).collect(), (seq,));
        let positions: Tensor<(usize, Const<M>), E, D, T> = self
            .embeddings
            .position_embeddings
            .forward(positions.put_tape(T::default()));
        let types =
            token_types.unwrap_or_else(|| dev.tensor_from_vec(vec![0; batch * seq], (batch, seq)));
        let types: Tensor<(usize, usize, Const<M>), E, D, T> = self
            .embeddings
            .token_type_embeddings
            .forward(types.put_tape(T::default()));
        let x = words + positions.broadcast_like::<_, Axis<0>>(&shape) + types;
        let x = self.embeddings.layer_norm.forward(x, cfg.layer_norm_eps);
        if mode == Mode::Train && cfg.dropout > 0.0 {
            return D::dropout(x, cfg.dropout);
        }
        x
    }
}

/// 每个 id 都须小于表的行数。
fn check_ids(field: &'static str, ids: &[usize], rows: usize) -> Result<(), InputError> {
    match ids.iter().find(|&&id| id >= rows) {
        Some(&id) => Err(InputError::IdOutOfRange { field, id, rows }),
        None => Ok(()),
    }
}
// ANCHOR_END: forward

/// 测试用的小 BERT 的宽度：隐藏 32、4 个头、前馈 48（`tests/fixtures/tiny-bert`：词表 64、2 层、24 个位置、3 类）。
pub type TinyBert<E, D> = BertParams<32, 4, 48, E, D>;

/// 测试用的小 BERT（`tests/fixtures/tiny-bert`）的运行期大小。
pub const TINY_DIMS: BertDims = BertDims {
    vocab_size: 64,
    num_layers: 2,
    max_positions: 24,
    type_vocab_size: 2,
    num_labels: 3,
};

/// bert-base 的宽度：隐藏 768、12 个头、前馈 3072（bert-base-chinese、hfl/chinese-roberta-wwm-ext……）。
pub type BertBase<E, D> = BertParams<768, 12, 3072, E, D>;

/// bert-base-chinese 的运行期大小（分类头 2 类）：词表 21128、12 层、512 个位置（基准与参数计数用）。
pub const BERT_BASE_CHINESE_DIMS: BertDims = BertDims {
    vocab_size: 21128,
    num_layers: 12,
    max_positions: 512,
    type_vocab_size: 2,
    num_labels: 2,
};

/// all-MiniLM-L6-v2 的宽度：隐藏 384、12 个头、前馈 1536。
pub type MiniLm<E, D> = BertParams<384, 12, 1536, E, D>;

impl<const M: usize, E: Real, D: Kernels<E>> TensorCollection<E, D> for BertEmbeddings<M, E, D> {
    type To<E2: Dtype, D2: Device<E2>> = BertEmbeddings<M, E2, D2>;
    fn iter_tensors<Vis: ModuleVisitor<Self, E, D>>(
        visitor: &mut Vis,
    ) -> Result<Option<Self::To<Vis::E2, Vis::D2>>, Vis::Err> {
        visitor.visit_fields(
            (
                Self::module(
                    "word_embeddings",
                    |s| &s.word_embeddings,
                    |s| &mut s.word_embeddings,
                ),
                Self::module(
                    "position_embeddings",
                    |s| &s.position_embeddings,
                    |s| &mut s.position_embeddings,
                ),
                Self::module(
                    "token_type_embeddings",
                    |s| &s.token_type_embeddings,
                    |s| &mut s.token_type_embeddings,
                ),
                Self::module("LayerNorm", |s| &s.layer_norm, |s| &mut s.layer_norm),
            ),
            |(word_embeddings, position_embeddings, token_type_embeddings, layer_norm)| {
                BertEmbeddings {
                    word_embeddings,
                    position_embeddings,
                    token_type_embeddings,
                    layer_norm,
                }
            },
        )
    }
}

impl<const M: usize, const H: usize, const F: usize, E, D> TensorCollection<E, D>
    for BertParams<M, H, F, E, D>
where
    E: Real,
    D: Kernels<E>,
{
    type To<E2: Dtype, D2: Device<E2>> = BertParams<M, H, F, E2, D2>;
    fn iter_tensors<Vis: ModuleVisitor<Self, E, D>>(
        visitor: &mut Vis,
    ) -> Result<Option<Self::To<Vis::E2, Vis::D2>>, Vis::Err> {
        visitor.visit_fields(
            (
                Self::module("embeddings", |s| &s.embeddings, |s| &mut s.embeddings),
                Self::module("encoder.layer", |s| &s.layers, |s| &mut s.layers),
                Self::module("pooler.dense", |s| &s.pooler, |s| &mut s.pooler),
                Self::module("classifier", |s| &s.classifier, |s| &mut s.classifier),
            ),
            |(embeddings, layers, pooler, classifier)| BertParams {
                embeddings,
                layers,
                pooler,
                classifier,
            },
        )
    }
}

impl<const M: usize, const H: usize, const F: usize, E, D> BertParams<M, H, F, E, D>
where
    E: Real,
    D: Kernels<E>,
{
    /// 按 `dims` 的大小新建，BERT 的随机初始化（[`bert_init`]：从零预训练、从零训练的起点）。
    pub fn new(dev: &D, dims: &BertDims) -> Self {
        let mut params = Self::to_load(dev, dims);
        bert_init(&mut params);
        params
    }

    /// 按 `dims` 的大小建好、等着从检查点填入（[`super::hf::load_bert`]）：嵌入表全 0，线性层是 dfdx 的默认初始化，
    /// 省掉一遍马上就被覆盖的 BERT 初始化（bert-base 有 1 亿个参数）。
    pub fn to_load(dev: &D, dims: &BertDims) -> Self {
        use dfdx::nn::BuildModule;
        Self {
            embeddings: BertEmbeddings {
                word_embeddings: Table::zeros(dev, dims.vocab_size),
                position_embeddings: Table::zeros(dev, dims.max_positions),
                token_type_embeddings: Table::zeros(dev, dims.type_vocab_size),
                layer_norm: LayerNorm::build(dev),
            },
            layers: LayerStack {
                modules: (0..dims.num_layers)
                    .map(|_| EncoderLayer::build(dev))
                    .collect(),
            },
            pooler: Linear::build(dev),
            classifier: Head::new(dev, dims.num_labels),
        }
    }

    /// 这个模型的运行期大小。
    pub fn dims(&self) -> BertDims {
        BertDims {
            vocab_size: self.embeddings.word_embeddings.rows(),
            num_layers: self.layers.modules.len(),
            max_positions: self.embeddings.position_embeddings.rows(),
            type_vocab_size: self.embeddings.token_type_embeddings.rows(),
            num_labels: self.classifier.outputs(),
        }
    }
}

// ANCHOR: embedding
/// 句向量（sentence-transformers 对 all-MiniLM-L6-v2 的做法）：最后一层隐藏状态在真实位置上取平均，再做 L2 归一化。
///
/// # 形状
/// - `hidden`: `(batch, seq, Const<M>)`
/// - 返回：`(batch, Const<M>)`，每行的长度为 1
pub fn sentence_embedding<const M: usize, E: Real, D: Kernels<E>>(
    hidden: Tensor<(usize, usize, Const<M>), E, D>,
    mask: &PaddingMask<E, D>,
) -> Tensor<(usize, Const<M>), E, D> {
    let mean = crate::transformer::classifier::mean_over_real_positions(hidden, mask);
    let shape = *mean.shape();
    let norm = mean.clone().square().sum::<(usize,), Axis<1>>().sqrt();
    // 与 torch.nn.functional.normalize 相同：长度至少取 1e-12
    let eps = norm.device().ones_like(&norm) * E::from_f64(1e-12).unwrap();
    let norm = norm.maximum(eps);
    mean / norm.broadcast_like::<_, Axis<1>>(&shape)
}
// ANCHOR_END: embedding

/// 全量微调的 BERT 分类模型：全部参数都训练（对照 LoRA）。
#[derive(Clone, Debug)]
pub struct BertClassifier<const M: usize, const H: usize, const F: usize, E: Dtype, D: Device<E>> {
    /// 全部参数。
    pub params: BertParams<M, H, F, E, D>,
    /// 超参数（来自 `config.json`）。
    pub config: EncoderConfig,
}

impl<const M: usize, const H: usize, const F: usize, E: Real, D: Kernels<E>>
    crate::train::SequenceClassifier<E, D> for BertClassifier<M, H, F, E, D>
{
    type Params = BertParams<M, H, F, E, D>;
    fn params(&self) -> &Self::Params {
        &self.params
    }
    fn params_mut(&mut self) -> &mut Self::Params {
        &mut self.params
    }
    fn num_labels(&self) -> usize {
        self.params.classifier.outputs()
    }
    fn logits<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        tokens: Tensor<(usize, usize), usize, D, T>,
        token_types: Option<Tensor<(usize, usize), usize, D>>,
        mask: &PaddingMask<E, D>,
        mode: Mode,
    ) -> Result<Tensor<(usize, usize), E, D, T>, InputError> {
        Ok(self
            .params
            .forward(&self.config, tokens, token_types, mask, mode)?
            .logits)
    }
}

/// 线性探测：BERT 全部冻结，只训练池化层之后的分类头（对照 LoRA 与全量微调，附录 A）。
/// 检查点里没有池化层时（`BertForMaskedLM` 存的文件），池化层是随机新建的，一起训练（否则探测的是一层冻结的随机变换之后的特征）。
#[derive(Clone, Debug)]
pub struct LinearProbe<const M: usize, const H: usize, const F: usize, E: Dtype, D: Device<E>> {
    /// 冻结的 BERT（优化器看不到它）。
    pub base: BertParams<M, H, F, E, D>,
    /// 可训练的部分。
    pub trainable: ProbeParams<M, E, D>,
    /// 超参数。
    pub config: EncoderConfig,
}

/// 线性探测训练的参数：分类头（从基座的分类头复制）与池化层的副本（检查点里没有池化层时）。
#[derive(Clone, Debug)]
pub struct ProbeParams<const M: usize, E: Dtype, D: Device<E>> {
    /// 分类头。
    pub head: Head<M, E, D>,
    /// 池化层 dense 的副本（`None`：用基座的、冻结的池化层）。
    pub pooler: SavedLinear<M, E, D>,
}

impl<const M: usize, E: Dtype, D: Device<E>> TensorCollection<E, D> for ProbeParams<M, E, D> {
    type To<E2: Dtype, D2: Device<E2>> = ();
    fn iter_tensors<Vis: ModuleVisitor<Self, E, D>>(
        visitor: &mut Vis,
    ) -> Result<Option<()>, Vis::Err> {
        visitor.visit_fields(
            (
                Self::module("head", |s| &s.head, |s| &mut s.head),
                Self::module("pooler", |s| &s.pooler, |s| &mut s.pooler),
            ),
            |_| (),
        )
    }
}

impl<const M: usize, const H: usize, const F: usize, E: Real, D: Kernels<E>>
    crate::train::SequenceClassifier<E, D> for LinearProbe<M, H, F, E, D>
{
    type Params = ProbeParams<M, E, D>;
    fn params(&self) -> &Self::Params {
        &self.trainable
    }
    fn params_mut(&mut self) -> &mut Self::Params {
        &mut self.trainable
    }
    fn num_labels(&self) -> usize {
        self.trainable.head.outputs()
    }
    fn logits<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        tokens: Tensor<(usize, usize), usize, D, T>,
        token_types: Option<Tensor<(usize, usize), usize, D>>,
        mask: &PaddingMask<E, D>,
        mode: Mode,
    ) -> Result<Tensor<(usize, usize), E, D, T>, InputError> {
        let (hooks, cfg, t) = (|_: usize| NoHooks, &self.config, &self.trainable);
        Ok(self
            .base
            .forward_with_head(
                &t.head,
                cfg,
                tokens,
                token_types,
                mask,
                mode,
                hooks,
                &t.pooler,
            )?
            .logits)
    }
}

/// BERT 的初始化（`BertPreTrainedModel._init_weights`）：矩阵（线性层的权重、嵌入）取标准差 0.02
/// （这里取同标准差的均匀分布 U(±0.02·√3)），偏置取 0，层归一化的 γ 取 1。从零预训练时用（附录 A）。
pub fn bert_init<M2: dfdx::nn::tensor_collection::TensorCollection<E, D>, E: Real, D: Device<E>>(
    module: &mut M2,
) {
    use dfdx::nn::tensor_collection::{
        RecursiveWalker, ScalarOptions, TensorOptions as Opts, TensorViewer, TensorVisitor,
        ViewTensorMut, ViewTensorName,
    };
    struct Init;
    impl<E: Real, D: Device<E>> TensorVisitor<E, D> for Init {
        type Viewer = (ViewTensorMut, ViewTensorName);
        type Err = D::Err;
        type E2 = E;
        type D2 = D;
        fn visit<S: Shape>(
            &mut self,
            _opts: Opts<S, E, D>,
            (t, path): <Self::Viewer as TensorViewer>::View<'_, Tensor<S, E, D>>,
        ) -> Result<Option<Tensor<S, E, D>>, Self::Err> {
            let dev = t.device().clone();
            let shape = *t.shape();
            *t = if S::NUM_DIMS >= 2 {
                let bound = E::from_f64(0.02 * 3f64.sqrt()).unwrap();
                dev.sample_like(&shape, rand_distr::Uniform::new(-bound, bound))
            } else if path.ends_with("weight") {
                dev.ones_like(&shape)
            } else {
                dev.zeros_like(&shape)
            };
            Ok(None)
        }
        fn visit_scalar<N: num_traits::NumCast>(
            &mut self,
            _opts: ScalarOptions<N>,
            _h: <Self::Viewer as TensorViewer>::View<'_, N>,
        ) -> Result<Option<N>, Self::Err> {
            Ok(None)
        }
    }
    M2::iter_tensors(&mut RecursiveWalker {
        m: (module, String::new()),
        f: &mut Init,
    })
    .expect("初始化不会失败");
}

/// 附录 A 离线预训练的中文迷你 BERT 的宽度：隐藏 256、4 个头、前馈 1024（字表 4096、4 层、128 个位置）。
pub type MiniChineseBert<E, D> = BertParams<256, 4, 1024, E, D>;

#[cfg(test)]
mod grad_tests {
    use super::*;
    use crate::basics::autodiff::assert_spot_gradients;
    use dfdx::nn::ZeroGrads;

    /// 反向传播必须沿 logits 一直回到嵌入：对几类参数各取几个元素，与中心差分比较（f64）。
    #[test]
    fn gradients_reach_every_layer_and_match_finite_differences() {
        let dev = Cpu::seed_from_u64(4);
        let bert = TinyBert::<f64, Cpu>::new(&dev, &TINY_DIMS);
        let cfg = bert_config(1e-12, 0.0, 24);
        let tokens: Tensor<(usize, usize), usize, Cpu> =
            dev.tensor_from_vec(vec![2, 17, 33, 5, 3, 2, 8, 60, 3, 0], (2, 5));
        let mask = PaddingMask::from_lengths(&dev, &[5, 4], 5).unwrap();
        let w: Tensor<(usize, usize), f64, Cpu> = dev.sample_normal_like(&(2, 3));
        let loss_of = |b: &TinyBert<f64, Cpu>| -> f64 {
            let out = b
                .forward(&cfg, tokens.clone(), None, &mask, Mode::Eval)
                .unwrap();
            (out.logits * w.clone()).sum::<(), _>().array()
        };
        let grads = {
            let g = bert.alloc_grads();
            let out = bert
                .forward(&cfg, tokens.clone().traced(g), None, &mask, Mode::Eval)
                .unwrap();
            (out.logits * w.clone()).sum::<(), _>().backward()
        };
        type Pick = fn(&mut TinyBert<f64, Cpu>) -> &mut Tensor<(Const<32>, Const<32>), f64, Cpu>;
        let picks: [(&str, Pick); 3] = [
            ("layer 0 w_q", |b| {
                &mut b.layers.modules[0].attention.w_q.weight
            }),
            ("layer 1 w_o", |b| {
                &mut b.layers.modules[1].attention.w_o.weight
            }),
            ("pooler", |b| &mut b.pooler.weight),
        ];
        for (name, pick) in picks {
            let analytic = grads.get(&*pick(&mut bert.clone())).as_vec();
            assert_spot_gradients(name, &analytic, &[0, 33, 517, 1023], |idx, delta| {
                let mut b = bert.clone();
                let mut v = pick(&mut b).as_vec();
                v[idx] += delta;
                pick(&mut b).copy_from(&v);
                loss_of(&b)
            });
        }
        // 词嵌入：用到的词（id 17）那一行有梯度
        let emb = grads.get(&bert.embeddings.word_embeddings.weight).as_vec();
        assert!(emb[17 * 32..18 * 32].iter().any(|g| g.abs() > 1e-8));
    }
}
