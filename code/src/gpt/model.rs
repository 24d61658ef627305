//! 5.2 字符级 GPT：词嵌入 + 可学习的位置嵌入 → `L` 个 Pre-LN 解码器层（因果注意力 + GELU 前馈）→ 层归一化 →
//! 与词嵌入共享权重的语言模型头。5.4 的 KV cache 走同一份前向：缓存里存着前面位置的 K、V。

use std::fmt;

use dfdx::nn::modules::{Embedding, Linear, Module, ModuleVisitor, Repeated, TensorCollection};
use dfdx::nn::BuildModule;
use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::causal::causal_attention;
use super::sample::{next_token, Sampling};
use crate::basics::tensors::Real;
use crate::kernels::Kernels;
use crate::peft::adapter::normal;
use crate::transformer::encoder::{EncoderLayer, Mode};
use crate::transformer::feed_forward::Activation;
use crate::transformer::hooks::{AttentionHooks, FfnHooks, Hidden, NoHooks, Proj};
use crate::transformer::multi_head::MultiHeadAttention;
use crate::transformer::norm::LayerNorm;

// ANCHOR: config
/// GPT 的超参数（宽度是类型参数，不在这里）。
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptConfig {
    /// 残差分支与嵌入之后的 dropout 概率（只在训练时生效），默认 0.1。
    pub dropout: f64,
    /// 层归一化的 ε，默认 1e-5。
    pub layer_norm_eps: f64,
}

impl Default for GptConfig {
    fn default() -> Self {
        Self {
            dropout: 0.1,
            layer_norm_eps: 1e-5,
        }
    }
}
// ANCHOR_END: config

// ANCHOR: gpt
/// 字符级 GPT 的参数。类型参数：词表 `V`、上下文长度 `C`（位置嵌入的行数）、隐藏维度 `M`、头数 `H`、
/// 前馈宽度 `F`、层数 `L`。
///
/// 每个解码器层的参数与第 1 部分的编码器层是同一个类型：区别全在前向（因果掩码）里。
/// 语言模型头不单独存：logits = h·Eᵀ，E 是词嵌入（权重共享，GPT-2 的做法）。
#[derive(Clone, Debug)]
pub struct Gpt<
    const V: usize,
    const C: usize,
    const M: usize,
    const H: usize,
    const F: usize,
    const L: usize,
    E: Dtype,
    D: Device<E>,
> {
    /// 词嵌入 `(V, M)`，也是输出层的权重。
    pub embedding: Embedding<V, M, E, D>,
    /// 位置嵌入 `(C, M)`：第 p 行加到第 p 个位置上。
    pub position: Embedding<C, M, E, D>,
    /// `L` 个解码器层。
    pub layers: Repeated<EncoderLayer<M, H, F, E, D>, L>,
    /// 最后的层归一化。
    pub norm: LayerNorm<M, E, D>,
}
// ANCHOR_END: gpt

/// 每层缓存的 K、V：`(batch, 已处理的长度, M)`。
#[derive(Clone, Debug)]
pub struct LayerCache<const M: usize, E: Dtype, D: Device<E>> {
    /// 前面所有位置的键（投影之后、拆头之前）。
    pub k: Hidden<M, E, D, NoneTape>,
    /// 前面所有位置的值。
    pub v: Hidden<M, E, D, NoneTape>,
}

// ANCHOR: kv_cache
/// KV cache：每层一份 [`LayerCache`]。空的缓存表示“从第 0 个位置开始”。
#[derive(Clone, Debug, Default)]
pub struct KvCache<const M: usize, E: Dtype, D: Device<E>> {
    /// 每层的缓存；还没有算过任何位置时为空。
    pub layers: Vec<LayerCache<M, E, D>>,
}

impl<const M: usize, E: Dtype, D: Device<E>> KvCache<M, E, D> {
    /// 空缓存。
    pub fn new() -> Self {
        Self { layers: Vec::new() }
    }
    /// 已经缓存了多少个位置。
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |c| c.k.shape().1)
    }
    /// 是否为空。
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// 占用的元素个数（K 与 V，全部层）。
    pub fn elements(&self) -> usize {
        self.layers
            .iter()
            .map(|c| c.k.shape().num_elements() + c.v.shape().num_elements())
            .sum()
    }
}
// ANCHOR_END: kv_cache

/// 输入与模型不符。
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GptError {
    /// 缓存里的长度加上新输入超过了上下文长度（位置嵌入只有 `context` 行）。
    TooLong {
        /// 缓存里已有的长度。
        past: usize,
        /// 这次输入的长度。
        seq: usize,
        /// 上下文长度 C。
        context: usize,
    },
    /// 词 id 超出了词表。
    IdOutOfRange {
        /// 越界的 id。
        id: usize,
        /// 词表大小 V。
        vocab: usize,
    },
    /// 输入为空（批或序列长度为 0）。
    Empty,
    /// 缓存的批大小与输入不同。
    CacheBatch {
        /// 缓存的批大小。
        cache: usize,
        /// 输入的批大小。
        input: usize,
    },
}

impl fmt::Display for GptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GptError::TooLong { past, seq, context } => write!(
                f,
                "输入太长：已缓存 {past} 个位置，再加 {seq} 个，超过了上下文长度 {context}（位置嵌入只有 {context} 行）"
            ),
            GptError::IdOutOfRange { id, vocab } => {
                write!(f, "词 id {id} 超出了词表（{vocab} 个记号）：词表与模型不配套")
            }
            GptError::Empty => write!(f, "输入为空：至少要有一个字"),
            GptError::CacheBatch { cache, input } => {
                write!(f, "KV cache 的批大小是 {cache}，输入的批大小是 {input}")
            }
        }
    }
}

impl std::error::Error for GptError {}

// ANCHOR: causal_self_attention
/// 解码器层里的自注意力：与 1.2 节的多头注意力用同一组参数（W_q、W_k、W_v、W_o）和同样的钩子，
/// 只是核心换成了因果注意力；`past` 给出时，新位置的 K、V 接在缓存的后面（KV cache）。
/// 返回输出，以及包含新位置在内的全部 K、V（下一步的缓存）。
pub fn causal_self_attention<const M: usize, const H: usize, E, D, T, Hk>(
    mha: &MultiHeadAttention<M, H, E, D>,
    x: Hidden<M, E, D, T>,
    past: Option<&LayerCache<M, E, D>>,
    hooks: &Hk,
) -> (Hidden<M, E, D, T>, LayerCache<M, E, D>)
where
    E: Dtype,
    D: Kernels<E>,
    T: Tape<E, D> + Merge<T> + Merge<NoneTape>,
    Hk: AttentionHooks<M, E, D>,
{
    let (x, tape) = x.split_tape();
    let train = !hooks.base_frozen();
    let proj = |p: Proj, l: &Linear<M, M, E, D>, t| match hooks.attention_weight(p) {
        Some(w) => D::linear_lazy(t, w, &l.bias),
        None => D::linear(t, &l.weight, &l.bias, train),
    };
    let q = hooks.query(
        x.retaped::<T>(),
        proj(Proj::Query, &mha.w_q, x.clone().put_tape(tape)),
    );
    let k = hooks.key(
        x.retaped::<T>(),
        proj(Proj::Key, &mha.w_k, x.retaped::<T>()),
    );
    let v = hooks.value(
        x.retaped::<T>(),
        proj(Proj::Value, &mha.w_v, x.retaped::<T>()),
    );
    // 有缓存时：前面位置的 K、V 不必重算，新位置的接在后面（沿序列这一维拼接）
    let (k, v) = match past {
        Some(c) => (
            (c.k.clone().retaped::<T>(), k).concat_along(Axis::<1>),
            (c.v.clone().retaped::<T>(), v).concat_along(Axis::<1>),
        ),
        None => (k, v),
    };
    let cache = LayerCache {
        k: k.retaped::<NoneTape>(),
        v: v.retaped::<NoneTape>(),
    };
    let (out, _weights) = causal_attention(q, k, v, H);
    let out = hooks.output(out.retaped::<T>(), proj(Proj::Output, &mha.w_o, out));
    (out, cache)
}
// ANCHOR_END: causal_self_attention

// ANCHOR: decoder_layer
/// 一个 Pre-LN 解码器层：x + Dropout(因果自注意力(LN₁(x)))，再 x + Dropout(FFN(LN₂(x)))，FFN 用 GELU。
pub fn decoder_layer<const M: usize, const H: usize, const F: usize, E, D, T, Hk>(
    layer: &EncoderLayer<M, H, F, E, D>,
    x: Hidden<M, E, D, T>,
    past: Option<&LayerCache<M, E, D>>,
    cfg: &GptConfig,
    mode: Mode,
    hooks: &Hk,
) -> (Hidden<M, E, D, T>, LayerCache<M, E, D>)
where
    E: Dtype,
    D: Kernels<E>,
    T: Tape<E, D> + Merge<T> + Merge<NoneTape>,
    Hk: AttentionHooks<M, E, D> + FfnHooks<M, F, E, D>,
{
    let drop = |t: Hidden<M, E, D, T>| match mode {
        Mode::Train if cfg.dropout > 0.0 => D::dropout(t, cfg.dropout),
        _ => t,
    };
    let normed = layer.norm1.forward(x.retaped::<T>(), cfg.layer_norm_eps);
    let (attn, cache) = causal_self_attention(&layer.attention, normed, past, hooks);
    let x = D::add(x, drop(attn));
    let normed = layer.norm2.forward(x.retaped::<T>(), cfg.layer_norm_eps);
    let ffn = layer
        .feed_forward
        .forward_with(normed, Activation::Gelu, hooks);
    (D::add(x, drop(ffn)), cache)
}
// ANCHOR_END: decoder_layer

impl<
        const V: usize,
        const C: usize,
        const M: usize,
        const H: usize,
        const F: usize,
        const L: usize,
        E,
        D,
    > Gpt<V, C, M, H, F, L, E, D>
where
    E: Real,
    D: Kernels<E>,
{
    /// 随机初始化：两个嵌入取 N(0, 0.02²)（GPT-2 的做法；共享的输出层因此一开始给出接近均匀的分布），
    /// 线性层与 PyTorch 的 `nn.Linear` 同分布，层归一化 γ = 1、β = 0。
    pub fn init(dev: &D) -> Self {
        let mut gpt = Self::build(dev);
        gpt.embedding.weight = normal(dev, Rank2::<V, M>::default(), 0.02);
        gpt.position.weight = normal(dev, Rank2::<C, M>::default(), 0.02);
        gpt
    }

    /// 前向：`tokens` `(batch, seq)` → 每个位置上下一个字的 logits `(batch, seq, V)`。
    pub fn forward<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        tokens: Tensor<(usize, usize), usize, D, T>,
        cfg: &GptConfig,
        mode: Mode,
    ) -> Result<Tensor<(usize, usize, Const<V>), E, D, T>, GptError> {
        self.forward_with(tokens, None, cfg, mode, |_| NoHooks)
    }

    // ANCHOR: forward
    /// 同 [`forward`](Self::forward)，第 i 层用钩子 `hooks(i)`（5.5 节的 LoRA 由此接入）；
    /// 给出 `cache` 时，`tokens` 是接在缓存后面的新位置，算完后缓存随之变长。
    pub fn forward_with<T, Hk>(
        &self,
        tokens: Tensor<(usize, usize), usize, D, T>,
        cache: Option<&mut KvCache<M, E, D>>,
        cfg: &GptConfig,
        mode: Mode,
        hooks: impl Fn(usize) -> Hk,
    ) -> Result<Tensor<(usize, usize, Const<V>), E, D, T>, GptError>
    where
        T: Tape<E, D> + Merge<T> + Merge<NoneTape>,
        Hk: AttentionHooks<M, E, D> + FfnHooks<M, F, E, D>,
    {
        let (batch, seq) = *tokens.shape();
        let past = cache.as_ref().map_or(0, |c| c.len());
        self.check_input(&tokens, past)?;
        if let Some(c) = cache.as_ref().and_then(|c| c.layers.first()) {
            if c.k.shape().0 != batch {
                return Err(GptError::CacheBatch {
                    cache: c.k.shape().0,
                    input: batch,
                });
            }
        }
        // 第 b 行第 s 个字的位置是 past + s：位置 id 与词 id 一样查表
        let positions: Vec<usize> = (0..batch).flat_map(|_| past..past + seq).collect();
        let positions = tokens.device().tensor_from_vec(positions, (batch, seq));
        let (tokens, tape) = tokens.split_tape();
        let x = D::add(
            self.embedding.forward(tokens.put_tape(tape)),
            self.position.forward(positions.put_tape(T::default())),
        );
        let mut x = match mode {
            Mode::Train if cfg.dropout > 0.0 => D::dropout(x, cfg.dropout),
            _ => x,
        };
        let mut next = Vec::with_capacity(L);
        let past_layers = cache.as_ref().map(|c| &c.layers);
        for (i, layer) in self.layers.modules.iter().enumerate() {
            let p = past_layers.and_then(|ls| ls.get(i));
            let (y, c) = decoder_layer(layer, x, p, cfg, mode, &hooks(i));
            x = y;
            next.push(c);
        }
        if let Some(c) = cache {
            c.layers = next;
        }
        let h = self.norm.forward(x, cfg.layer_norm_eps);
        // 输出层与词嵌入共享权重：logits = h·Eᵀ
        let e = self.embedding.weight.retaped::<T>();
        Ok(h.matmul(e.permute::<_, Axes2<1, 0>>()))
    }
    // ANCHOR_END: forward

    /// 检查输入：非空、不超过上下文长度（算上缓存里的 `past` 个位置）、id 都在词表之内。
    pub fn check_input<T: Tape<E, D>>(
        &self,
        tokens: &Tensor<(usize, usize), usize, D, T>,
        past: usize,
    ) -> Result<(), GptError> {
        let (batch, seq) = *tokens.shape();
        if batch == 0 || seq == 0 {
            return Err(GptError::Empty);
        }
        if past + seq > C {
            return Err(GptError::TooLong {
                past,
                seq,
                context: C,
            });
        }
        if let Some(&id) = tokens.as_vec().iter().find(|&&id| id >= V) {
            return Err(GptError::IdOutOfRange { id, vocab: V });
        }
        Ok(())
    }

    // ANCHOR: generate
    /// 自回归生成：从 `prompt` 出发，每次取最后一个位置的 logits、按 `sampling` 选出下一个字、接到后面，
    /// 直到生成 `max_new` 个字或选出 `stop`。`use_cache` 为 false 时每一步都把整段重新算一遍（没有 KV cache），
    /// 为 true 时先一次算完 prompt，之后每步只算一个新位置。两种做法选出的字相同（5.4 节的测试）。
    /// 随机抽样用种子 `seed`：同样的种子得到同样的结果。
    pub fn generate(
        &self,
        prompt: &[usize],
        max_new: usize,
        sampling: Sampling,
        stop: Option<usize>,
        use_cache: bool,
        seed: u64,
    ) -> Result<Vec<usize>, GptError> {
        let mut rng = StdRng::seed_from_u64(seed);
        let cfg = GptConfig::default(); // Mode::Eval 时没有 dropout
        let dev = self.embedding.weight.device().clone();
        let mut ids = prompt.to_vec();
        let mut cache = KvCache::new();
        let mut generated = Vec::new();
        let mut fresh = ids.clone(); // 还没有进过模型的字
        while generated.len() < max_new {
            let logits = if use_cache {
                let input = dev.tensor_from_vec(fresh.clone(), (1, fresh.len()));
                self.forward_with(input, Some(&mut cache), &cfg, Mode::Eval, |_| NoHooks)?
            } else {
                let input = dev.tensor_from_vec(ids.clone(), (1, ids.len()));
                self.forward_with(input, None, &cfg, Mode::Eval, |_| NoHooks)?
            };
            let rows = logits.as_vec();
            let last: Vec<f32> = rows[rows.len() - V..]
                .iter()
                .map(|x| x.to_f32().unwrap_or(f32::NAN))
                .collect();
            let id = next_token(&last, sampling, &mut rng);
            generated.push(id);
            if Some(id) == stop {
                break;
            }
            ids.push(id);
            fresh = vec![id];
        }
        Ok(generated)
    }
    // ANCHOR_END: generate
}

impl<
        const V: usize,
        const C: usize,
        const M: usize,
        const H: usize,
        const F: usize,
        const L: usize,
        E,
        D,
    > TensorCollection<E, D> for Gpt<V, C, M, H, F, L, E, D>
where
    E: Real,
    D: Device<E>,
{
    type To<E2: Dtype, D2: Device<E2>> = Gpt<V, C, M, H, F, L, E2, D2>;

    fn iter_tensors<W: ModuleVisitor<Self, E, D>>(
        visitor: &mut W,
    ) -> Result<Option<Self::To<W::E2, W::D2>>, W::Err> {
        visitor.visit_fields(
            (
                Self::module("embedding", |s| &s.embedding, |s| &mut s.embedding),
                Self::module("position", |s| &s.position, |s| &mut s.position),
                Self::module("layers", |s| &s.layers, |s| &mut s.layers),
                Self::module("norm", |s| &s.norm, |s| &mut s.norm),
            ),
            |(embedding, position, layers, norm)| Gpt {
                embedding,
                position,
                layers,
                norm,
            },
        )
    }
}

// ANCHOR: lm_loss
/// 语言模型的损失：每个位置上 logits 与“下一个字” `targets`（按行展平，长度 batch·seq）的交叉熵，取平均。
/// 等于 `cross_entropy_with_logits_loss` 配 one-hot 的目标，但不构造 batch·seq × V 的 one-hot（词表 3000 时每步 24 MB）：
/// log_softmax 之后按目标 id 每行取一个数。
pub fn lm_loss<const V: usize, E: Real, D: Device<E>, T: Tape<E, D>>(
    logits: Tensor<(usize, usize, Const<V>), E, D, T>,
    targets: &[usize],
) -> Tensor<Rank0, E, D, T> {
    let (batch, seq, _) = *logits.shape();
    let n = batch * seq;
    assert_eq!(targets.len(), n, "目标的个数应为 batch × seq");
    let idx = logits.device().tensor_from_vec(targets.to_vec(), (n,));
    logits
        .reshape_like(&(n, Const::<V>))
        .log_softmax::<Axis<1>>()
        .select(idx)
        .mean()
        .negate()
}
// ANCHOR_END: lm_loss

#[cfg(test)]
mod tests {
    use super::*;

    type Tiny = Gpt<17, 12, 8, 2, 16, 2, f64, Cpu>;

    fn tiny() -> (Cpu, Tiny) {
        let dev: Cpu = Cpu::seed_from_u64(11);
        let mut gpt = Tiny::init(&dev);
        // 嵌入放大一些，让注意力不是近乎均匀（否则看不出缓存错位）
        gpt.embedding.weight = gpt.embedding.weight.clone() * 30.0;
        gpt.position.weight = gpt.position.weight.clone() * 30.0;
        (dev, gpt)
    }

    #[test]
    fn cached_logits_equal_recomputing_the_whole_sequence() {
        let (dev, gpt) = tiny();
        let cfg = GptConfig::default();
        let ids = [3usize, 7, 1, 16, 0, 9, 9, 4, 12, 5];
        let full = gpt
            .forward(
                dev.tensor_from_vec(ids.to_vec(), (1, ids.len())),
                &cfg,
                Mode::Eval,
            )
            .unwrap()
            .as_vec();
        // 先一次算前 4 个（prefill），再每次 1 个，最后一次 2 个
        let mut cache = KvCache::new();
        let mut cached = Vec::new();
        for chunk in [
            &ids[0..4],
            &ids[4..5],
            &ids[5..6],
            &ids[6..7],
            &ids[7..8],
            &ids[8..10],
        ] {
            let input = dev.tensor_from_vec(chunk.to_vec(), (1, chunk.len()));
            let logits = gpt
                .forward_with(input, Some(&mut cache), &cfg, Mode::Eval, |_| NoHooks)
                .unwrap();
            cached.extend(logits.as_vec());
        }
        assert_eq!(cache.len(), ids.len());
        assert_eq!(cache.elements(), 2 * 2 * ids.len() * 8);
        let d = full
            .iter()
            .zip(&cached)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(d < 1e-10, "KV cache 与重算的 logits 差 {d}");
        // 位置错一个（把缓存清空当成从 0 开始）就不同：这个测试能发现位置 id 的错误
        let wrong = gpt
            .forward(dev.tensor_from_vec(vec![ids[9]], (1, 1)), &cfg, Mode::Eval)
            .unwrap()
            .as_vec();
        let d = wrong
            .iter()
            .zip(&full[9 * 17..])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(d > 1e-3);
    }

    #[test]
    fn generating_with_and_without_the_cache_picks_the_same_tokens() {
        let (_, gpt) = tiny();
        let sampling = Sampling::new(1.0, Some(5)).unwrap();
        let x = gpt.generate(&[2, 4], 10, sampling, None, false, 3).unwrap();
        let y = gpt.generate(&[2, 4], 10, sampling, None, true, 3).unwrap();
        assert_eq!(x.len(), 10);
        assert_eq!(x, y);
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let (dev, gpt) = tiny();
        let cfg = GptConfig::default();
        let run = |ids: Vec<usize>| {
            let n = ids.len();
            gpt.forward(dev.tensor_from_vec(ids, (1, n)), &cfg, Mode::Eval)
                .map(|_| ())
        };
        assert_eq!(
            run(vec![0; 13]),
            Err(GptError::TooLong {
                past: 0,
                seq: 13,
                context: 12
            })
        );
        assert_eq!(
            run(vec![1, 17]),
            Err(GptError::IdOutOfRange { id: 17, vocab: 17 })
        );
        assert_eq!(run(vec![]), Err(GptError::Empty));
        let mut cache = KvCache::new();
        gpt.forward_with(
            dev.tensor_from_vec(vec![1; 10], (1, 10)),
            Some(&mut cache),
            &cfg,
            Mode::Eval,
            |_| NoHooks,
        )
        .unwrap();
        let more = gpt.forward_with(
            dev.tensor_from_vec(vec![1; 3], (1, 3)),
            Some(&mut cache),
            &cfg,
            Mode::Eval,
            |_| NoHooks,
        );
        assert_eq!(
            more.map(|_| ()),
            Err(GptError::TooLong {
                past: 10,
                seq: 3,
                context: 12
            })
        );
        let two = gpt.forward_with(
            dev.tensor_from_vec(vec![1; 2], (2, 1)),
            Some(&mut cache),
            &cfg,
            Mode::Eval,
            |_| NoHooks,
        );
        assert_eq!(
            two.map(|_| ()),
            Err(GptError::CacheBatch { cache: 1, input: 2 })
        );
        assert!(GptError::TooLong {
            past: 10,
            seq: 3,
            context: 12
        }
        .to_string()
        .contains("上下文长度 12"));
        // 生成到上下文用完：报错而不是越界
        assert!(gpt
            .generate(&[1; 5], 20, Sampling::Greedy, None, true, 0)
            .is_err());
    }
}
