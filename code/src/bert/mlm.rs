//! 附录 A：掩码语言模型（BERT 的预训练任务）。
//!
//! 每条序列随机选 15% 的记号：选中的 80% 换成 `[MASK]`、10% 换成随机记号、10% 不变，让模型在这些位置上预测原来的记号。
//! 输出头与 Hugging Face 的 `BertForMaskedLM` 相同（`cls.predictions`）：dense + GELU + 层归一化，再乘以**词嵌入矩阵的转置**
//! （输出层与输入嵌入共享权重）并加偏置。

use crate::kernels::Kernels;
use dfdx::nn::modules::{Linear, Module, ModuleVisitor, TensorCollection, TensorOptions};
use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::Rng;

use super::model::{BertDims, BertParams};
use crate::basics::tensors::Real;
use crate::transformer::attention::PaddingMask;
use crate::transformer::encoder::{EncoderConfig, InputError, Mode};
use crate::transformer::gelu::gelu;
use crate::transformer::hooks::NoHooks;
use crate::transformer::norm::LayerNorm;

// ANCHOR: masking
/// 一批掩码后的输入与要预测的位置。
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Masked {
    /// 掩码后的输入。
    pub input: Vec<Vec<usize>>,
    /// 要预测的位置：(第几条, 第几个位置, 原来的记号)。
    pub targets: Vec<(usize, usize, usize)>,
}

/// BERT 的掩码：每个普通记号（id ≥ `first_regular`，特殊记号不参与）以概率 `rate` 被选中；
/// 选中的 80% 换成 `mask_id`、10% 换成随机的普通记号、10% 保持不变。一批里至少选中一个。
pub fn mask_tokens(
    batch: &[Vec<usize>],
    rng: &mut StdRng,
    rate: f64,
    mask_id: usize,
    first_regular: usize,
    vocab_size: usize,
) -> Masked {
    let mut input = batch.to_vec();
    let mut targets = Vec::new();
    let candidates: Vec<(usize, usize)> = batch
        .iter()
        .enumerate()
        .flat_map(|(i, ids)| {
            ids.iter()
                .enumerate()
                .filter(|(_, &id)| id >= first_regular)
                .map(move |(j, _)| (i, j))
        })
        .collect();
    for &(i, j) in &candidates {
        if rng.gen::<f64>() < rate {
            targets.push((i, j, batch[i][j]));
        }
    }
    if targets.is_empty() {
        if let Some(&(i, j)) = candidates.get(rng.gen_range(0..candidates.len().max(1))) {
            targets.push((i, j, batch[i][j]));
        }
    }
    for &(i, j, _) in &targets {
        let r: f64 = rng.gen();
        if r < 0.8 {
            input[i][j] = mask_id;
        } else if r < 0.9 {
            input[i][j] = rng.gen_range(first_regular..vocab_size);
        }
    }
    Masked { input, targets }
}
// ANCHOR_END: masking

/// `BertForMaskedLM` 的输出头（HF 的键 `cls.predictions.*`）。解码层的权重就是词嵌入，不另存。
#[derive(Clone, Debug)]
pub struct MlmHead<const M: usize, E: Dtype, D: Device<E>> {
    /// `transform.dense`。
    pub dense: Linear<M, M, E, D>,
    /// `transform.LayerNorm`。
    pub layer_norm: LayerNorm<M, E, D>,
    /// 输出层的偏置 `bias` `(vocab_size,)`。
    pub bias: Tensor<(usize,), E, D>,
}

/// 掩码语言模型：BERT + MLM 输出头。
#[derive(Clone, Debug)]
pub struct BertMlm<const M: usize, const H: usize, const F: usize, E: Dtype, D: Device<E>> {
    /// BERT 本体（池化层与分类头不参与预训练）。
    pub bert: BertParams<M, H, F, E, D>,
    /// 输出头。
    pub head: MlmHead<M, E, D>,
}

impl<const M: usize, const H: usize, const F: usize, E: Real, D: Kernels<E>>
    BertMlm<M, H, F, E, D>
{
    // ANCHOR: logits
    /// 要预测的位置上的 logits。
    ///
    /// # 形状
    /// - `tokens`：`(batch, seq)`；`positions`：要预测的位置 (第几条, 第几个位置)，共 n 个
    /// - 返回：`(n, vocab_size)`
    pub fn logits<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        cfg: &EncoderConfig,
        tokens: Tensor<(usize, usize), usize, D, T>,
        mask: &PaddingMask<E, D>,
        positions: &[(usize, usize)],
        mode: Mode,
    ) -> Result<Tensor<(usize, usize), E, D, T>, InputError> {
        let (batch, seq) = *tokens.shape();
        let dev = tokens.device().clone();
        let hidden = self
            .bert
            .encode_with(cfg, tokens, None, mask, mode, |_| NoHooks)?;
        // 只取要预测的位置：(batch·seq, M) → (n, M) → (1, n, M)
        let n = positions.len();
        let flat = hidden.reshape_like(&(batch * seq, Const::<M>));
        let index =
            dev.tensor_from_vec(positions.iter().map(|&(i, j)| i * seq + j).collect(), (n,));
        let picked = flat.gather(index).reshape_like(&(1, n, Const::<M>));
        let h = gelu(self.head.dense.forward(picked));
        let h = self.head.layer_norm.forward(h, cfg.layer_norm_eps);
        // 输出层与词嵌入共享权重：logits = h·Eᵀ + b
        let embedding = self.bert.embeddings.word_embeddings.weight.retaped::<T>();
        let vocab = embedding.shape().0;
        let logits = h
            .reshape_like(&(n, Const::<M>))
            .matmul(embedding.permute::<(Const<M>, usize), _>());
        Ok(logits
            + self
                .head
                .bias
                .retaped::<T>()
                .broadcast_like::<_, Axis<0>>(&(n, vocab)))
    }
    // ANCHOR_END: logits
}

impl<const M: usize, E: Real, D: Device<E>> TensorCollection<E, D> for MlmHead<M, E, D> {
    type To<E2: Dtype, D2: Device<E2>> = MlmHead<M, E2, D2>;
    fn iter_tensors<Vis: ModuleVisitor<Self, E, D>>(
        visitor: &mut Vis,
    ) -> Result<Option<Self::To<Vis::E2, Vis::D2>>, Vis::Err> {
        visitor.visit_fields(
            (
                Self::module("transform.dense", |s| &s.dense, |s| &mut s.dense),
                Self::module(
                    "transform.LayerNorm",
                    |s| &s.layer_norm,
                    |s| &mut s.layer_norm,
                ),
                Self::tensor(
                    "bias",
                    |s| &s.bias,
                    |s| &mut s.bias,
                    TensorOptions::runtime((0,), |t| t.try_fill_with_zeros()),
                ),
            ),
            |(dense, layer_norm, bias)| MlmHead {
                dense,
                layer_norm,
                bias,
            },
        )
    }
}

impl<const M: usize, const H: usize, const F: usize, E: Real, D: Kernels<E>> TensorCollection<E, D>
    for BertMlm<M, H, F, E, D>
{
    type To<E2: Dtype, D2: Device<E2>> = BertMlm<M, H, F, E2, D2>;
    fn iter_tensors<Vis: ModuleVisitor<Self, E, D>>(
        visitor: &mut Vis,
    ) -> Result<Option<Self::To<Vis::E2, Vis::D2>>, Vis::Err> {
        visitor.visit_fields(
            (
                Self::module("bert", |s| &s.bert, |s| &mut s.bert),
                Self::module("cls.predictions", |s| &s.head, |s| &mut s.head),
            ),
            |(bert, head)| BertMlm { bert, head },
        )
    }
}

/// `BertMlm` 的字段路径 → Hugging Face `BertForMaskedLM` 的键（依次尝试）。
/// `bert.…` 走 [`hf_candidates`](super::hf::hf_candidates)，`cls.predictions.…` 原样。
pub fn mlm_candidates(path: &str) -> Vec<String> {
    match path.strip_prefix("bert.") {
        Some(rest) => super::hf::hf_candidates(rest),
        None => vec![path.to_string()],
    }
}

/// 把预训练好的模型存成 Hugging Face 的 `BertForMaskedLM` 目录：`config.json`、`model.safetensors`
/// （`bert.*` 与 `cls.predictions.*`；池化层与分类头没有参加预训练，不写）、`vocab.txt`（从 `vocab` 复制）。整个目录原子地写入。
pub fn save_mlm_dir<const M: usize, const H: usize, const F: usize, E, D>(
    model: &BertMlm<M, H, F, E, D>,
    enc: &EncoderConfig,
    vocab: &std::path::Path,
    dir: &std::path::Path,
    dtype: crate::checkpoint::StoreDtype,
) -> std::io::Result<()>
where
    E: Real + dfdx::tensor::safetensors::SafeDtype,
    D: Kernels<E>,
{
    let dims = model.bert.dims();
    let config = serde_json::json!({
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        "vocab_size": dims.vocab_size,
        "hidden_size": M,
        "num_attention_heads": H,
        "intermediate_size": F,
        "num_hidden_layers": dims.num_layers,
        "max_position_embeddings": dims.max_positions,
        "type_vocab_size": dims.type_vocab_size,
        "hidden_act": "gelu",
        "layer_norm_eps": enc.layer_norm_eps,
        "hidden_dropout_prob": enc.dropout,
        "attention_probs_dropout_prob": enc.dropout,
        "initializer_range": 0.02,
        "pad_token_id": 0,
        "tie_word_embeddings": true,
    });
    crate::io::write_dir_atomic(dir, |tmp| {
        crate::checkpoint::save_params_with(model, &tmp.join("model.safetensors"), &|path| {
            if path.starts_with("bert.pooler.") || path.starts_with("bert.classifier.") {
                None
            } else {
                Some(mlm_candidates(path).remove(0))
            }
        })
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        if dtype != crate::checkpoint::StoreDtype::F32 {
            crate::checkpoint::convert_floats(&tmp.join("model.safetensors"), dtype)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        let json = serde_json::to_string_pretty(&config).map_err(std::io::Error::other)?;
        std::fs::write(tmp.join("config.json"), json + "\n")?;
        std::fs::copy(vocab, tmp.join("vocab.txt"))?;
        Ok(())
    })
}

impl<const M: usize, const H: usize, const F: usize, E: Real, D: Kernels<E>>
    BertMlm<M, H, F, E, D>
{
    /// 随机初始化（预训练的起点）：与 BERT 一样，权重的标准差 0.02（这里取同标准差的均匀分布）、偏置 0、层归一化 γ = 1。
    pub fn init(dev: &D, dims: &BertDims) -> Self {
        use dfdx::nn::BuildModule;
        let mut model = Self {
            bert: BertParams::new(dev, dims),
            head: MlmHead {
                dense: Linear::build(dev),
                layer_norm: LayerNorm::build(dev),
                bias: dev.zeros_like(&(dims.vocab_size,)),
            },
        };
        crate::bert::model::bert_init(&mut model);
        model
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bert::hf::{fixtures_dir, max_error, reference_batch};
    use crate::bert::model::TINY_DIMS;
    use crate::checkpoint::{Checkpoint, CheckpointError};
    use rand::SeedableRng;

    #[test]
    fn masking_follows_bert_statistics() {
        let mut rng = StdRng::seed_from_u64(0);
        // 1000 条、每条 50 个普通记号，首尾是特殊记号 2、3
        let batch: Vec<Vec<usize>> = (0..1000)
            .map(|i| {
                let mut ids = vec![2];
                ids.extend((0..50).map(|j| 5 + (i * 7 + j) % 90));
                ids.push(3);
                ids
            })
            .collect();
        let m = mask_tokens(&batch, &mut rng, 0.15, 4, 5, 100);
        let n = 50_000.0;
        let chosen = m.targets.len() as f64;
        assert!((chosen / n - 0.15).abs() < 0.005, "选中比例 {}", chosen / n);
        let (mut masked, mut kept, mut random) = (0.0, 0.0, 0.0);
        for &(i, j, orig) in &m.targets {
            assert!(j != 0 && j != 51, "特殊记号不参与");
            match m.input[i][j] {
                4 => masked += 1.0,
                x if x == orig => kept += 1.0,
                _ => random += 1.0,
            }
        }
        // 随机替换有 1/95 的机会恰好换回原记号，算作“不变”
        assert!(
            (masked / chosen - 0.8).abs() < 0.01,
            "[MASK] {}",
            masked / chosen
        );
        assert!((kept / chosen - 0.1).abs() < 0.01, "不变 {}", kept / chosen);
        assert!(
            (random / chosen - 0.1).abs() < 0.01,
            "随机 {}",
            random / chosen
        );
        // 没有选中的位置原样保留
        let changed = (0..1000)
            .flat_map(|i| (0..52).map(move |j| (i, j)))
            .filter(|&(i, j)| m.input[i][j] != batch[i][j])
            .count();
        assert!(changed <= m.targets.len());
    }

    #[test]
    fn matches_transformers_bert_for_masked_lm() {
        let dev: Cpu = Default::default();
        let dir = fixtures_dir();
        let mut model = BertMlm::<32, 4, 48, f32, Cpu>::init(&dev, &TINY_DIMS);
        // BertForMaskedLM 的文件里没有池化层与分类头：它们不是这个模型的参数
        let file = Checkpoint::read(&dir.join("tiny-bert-mlm/model.safetensors")).unwrap();
        match file.load_into_with(
            &mut model,
            &mlm_candidates,
            &crate::bert::hf::is_parameter_key,
        ) {
            Err(CheckpointError::Mismatch {
                missing,
                shape_mismatch,
                unexpected,
                ..
            }) => {
                assert!(shape_mismatch.is_empty() && unexpected.is_empty());
                assert!(
                    missing
                        .iter()
                        .all(|k| k.starts_with("bert.pooler.") || k.starts_with("classifier.")),
                    "{missing:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        let reference = Checkpoint::read(&dir.join("tiny-bert-mlm-reference.safetensors")).unwrap();
        let (tokens, _, mask) = reference_batch(&reference, &dev);
        let positions: Vec<(usize, usize)> =
            (0..2).flat_map(|i| (0..7).map(move |j| (i, j))).collect();
        let cfg = crate::bert::model::bert_config(1e-12, 0.0, 24);
        let logits = model
            .logits(&cfg, tokens, &mask, &positions, Mode::Eval)
            .unwrap()
            .as_vec();
        let err = max_error(&logits, &reference, "logits");
        println!("BertForMaskedLM logits 最大误差 {err:.2e}");
        assert!(err <= 1e-4, "{err}");
    }

    #[test]
    fn training_lowers_the_loss_and_reaches_the_tied_embedding() {
        use crate::train::adamw::{AdamW, AdamWConfig};
        use dfdx::nn::ZeroGrads;
        let dev = Cpu::seed_from_u64(1);
        let mut model = BertMlm::<32, 4, 48, f32, Cpu>::init(&dev, &TINY_DIMS);
        let cfg = crate::bert::model::bert_config(1e-12, 0.0, 24);
        let batch = vec![vec![2, 10, 11, 12, 13, 3], vec![2, 14, 15, 16, 17, 3]];
        let mask = PaddingMask::from_lengths(&dev, &[6, 6], 6).unwrap();
        let mut opt = AdamW::new(AdamWConfig {
            lr: 3e-3,
            ..Default::default()
        });
        let mut grads = model.alloc_grads();
        let mut losses = Vec::new();
        let embedding_before = model.bert.embeddings.word_embeddings.weight.as_vec();
        for step in 0..100 {
            let mut rng = StdRng::seed_from_u64(step);
            let m = mask_tokens(&batch, &mut rng, 0.3, 4, 5, 64);
            let tokens = dev.tensor_from_vec(m.input.concat(), (2, 6));
            let positions: Vec<(usize, usize)> =
                m.targets.iter().map(|&(i, j, _)| (i, j)).collect();
            let logits = model
                .logits(&cfg, tokens.traced(grads), &mask, &positions, Mode::Train)
                .unwrap();
            let n = positions.len();
            let mut target = vec![0.0f32; n * 64];
            for (k, &(_, _, id)) in m.targets.iter().enumerate() {
                target[k * 64 + id] = 1.0;
            }
            let loss = cross_entropy_with_logits_loss(logits, dev.tensor_from_vec(target, (n, 64)));
            losses.push(loss.array());
            grads = loss.backward();
            opt.step(&mut model, &grads, 1.0);
            model.zero_grads(&mut grads);
        }
        // 前 10 步与最后 10 步的平均损失
        let (first, last) = (
            losses[..10].iter().sum::<f32>() / 10.0,
            losses[90..].iter().sum::<f32>() / 10.0,
        );
        assert!(last < first * 0.5, "损失没有下降：{first} → {last}");
        // 输出层与词嵌入共享权重：词嵌入也被更新了
        assert_ne!(
            model.bert.embeddings.word_embeddings.weight.as_vec(),
            embedding_before
        );
    }
}
