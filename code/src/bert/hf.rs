//! 3.2 节：Hugging Face BERT 检查点的键名。
//!
//! 本书的字段路径（如 `encoder.layer.0.attention.w_q.weight`）与 HF 的键
//! （`bert.encoder.layer.0.attention.self.query.weight`）不同的地方只在编码器层内部；
//! 这里给出映射，并兼容两种常见的变体：没有 `bert.` 前缀（`BertModel` 直接保存的文件）和旧的 `gamma`/`beta`。

use std::path::Path;

use crate::kernels::Kernels;
use dfdx::prelude::*;

use super::config::{ConfigError, HfBertConfig};
use super::model::BertParams;
use super::runtime::Head;
use super::tokenizer::BertTokenizer;
use crate::basics::tensors::Real;
use crate::checkpoint::{Checkpoint, CheckpointError};

// ANCHOR: key_map
/// 编码器层内部：本书的名字 → HF 的名字。
const LAYER_NAMES: [(&str, &str); 8] = [
    (".attention.w_q.", ".attention.self.query."),
    (".attention.w_k.", ".attention.self.key."),
    (".attention.w_v.", ".attention.self.value."),
    (".attention.w_o.", ".attention.output.dense."),
    (".norm1.", ".attention.output.LayerNorm."),
    (".feed_forward.linear1.", ".intermediate.dense."),
    (".feed_forward.linear2.", ".output.dense."),
    (".norm2.", ".output.LayerNorm."),
];

/// 任务头（池化层 `bert.pooler.*`、分类头 `classifier.*`）的键：读检查点时只缺它们不算错，缺的新建
/// （transformers 的 `from_pretrained` 也这样；`BertForMaskedLM` 存的文件就没有它们）。
pub fn is_task_head_key(key: &str) -> bool {
    key.starts_with("classifier.") || key.starts_with("bert.pooler.")
}

/// 一个字段路径在 HF 文件中可能的键，按优先顺序。
pub fn hf_candidates(path: &str) -> Vec<String> {
    if path.starts_with("classifier.") {
        return vec![path.to_string()];
    }
    let mut mapped = path.to_string();
    for (ours, theirs) in LAYER_NAMES {
        mapped = mapped.replace(ours, theirs);
    }
    let mut keys = vec![format!("bert.{mapped}"), mapped.clone()];
    // 旧版检查点的层归一化参数叫 gamma、beta
    for (new, old) in [
        ("LayerNorm.weight", "LayerNorm.gamma"),
        ("LayerNorm.bias", "LayerNorm.beta"),
    ] {
        if let Some(stem) = mapped.strip_suffix(new) {
            keys.push(format!("bert.{stem}{old}"));
            keys.push(format!("{stem}{old}"));
        }
    }
    keys
}

/// 文件中模型应当用到的键：除了不是参数的缓冲区（`position_ids`）与预训练任务的输出头
/// （`cls.predictions.*`、`cls.seq_relationship.*`，bert-base-chinese 这类预训练检查点里有）以外的全部。
pub fn is_parameter_key(key: &str) -> bool {
    !key.ends_with("position_ids") && !key.starts_with("cls.")
}
// ANCHOR_END: key_map

/// 仓库中的参考数据目录 `code/tests/fixtures`（书中片段用）。
pub fn fixtures_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

/// 分类头从哪里来。
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadSource {
    /// 文件里有 `classifier.weight`、`classifier.bias`（微调过的分类模型）。
    Loaded,
    /// 文件里没有（预训练的检查点，如 bert-base-chinese、all-MiniLM-L6-v2）：与 transformers 一样新建，
    /// 权重的标准差 0.02、偏置取 0，需要在任务上训练。`BertForMaskedLM` 存的检查点连池化层也没有，同样新建。
    New,
}

/// 两个任务头（池化层与分类头）各自从哪里来。
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskHeads {
    /// 池化层 `bert.pooler.dense`。
    pub pooler: HeadSource,
    /// 分类头 `classifier`。
    pub classifier: HeadSource,
}

/// 从 `model.safetensors` 读入全部参数。除任务头（分类头、池化层）以外，缺少任何张量都是错误；
/// 缺的任务头新建（[`HeadSource::New`]），与 transformers 的 `from_pretrained` 相同。
pub fn load_bert<const M: usize, const H: usize, const F: usize, E, D>(
    params: &mut BertParams<M, H, F, E, D>,
    path: &Path,
) -> Result<TaskHeads, CheckpointError>
where
    E: Real,
    D: Kernels<E>,
{
    let result = Checkpoint::read(path)?.load_into_with(params, &hf_candidates, &is_parameter_key);
    match result {
        Err(CheckpointError::Mismatch {
            missing,
            shape_mismatch,
            unexpected,
            ..
        }) if shape_mismatch.is_empty()
            && unexpected.is_empty()
            && !missing.is_empty()
            && missing.iter().all(|k| is_task_head_key(k)) =>
        {
            let dev = params.classifier.weight.device().clone();
            // 标准差与 transformers 的 N(0, 0.02²) 相同：U(±0.02·√3)
            let bound = E::from_f64(0.02 * 3f64.sqrt()).unwrap();
            let uniform = || rand_distr::Uniform::new(-bound, bound);
            let source = |new: bool| {
                if new {
                    HeadSource::New
                } else {
                    HeadSource::Loaded
                }
            };
            let heads = TaskHeads {
                pooler: source(missing.iter().any(|k| k.starts_with("bert.pooler."))),
                classifier: source(missing.iter().any(|k| k.starts_with("classifier."))),
            };
            if heads.classifier == HeadSource::New {
                params.classifier = Head::new(&dev, params.classifier.outputs());
            }
            if heads.pooler == HeadSource::New {
                params.pooler.weight = dev.sample(uniform());
                params.pooler.bias = dev.zeros();
            }
            Ok(heads)
        }
        Err(e) => Err(e),
        Ok(()) => Ok(TaskHeads {
            pooler: HeadSource::Loaded,
            classifier: HeadSource::Loaded,
        }),
    }
}

/// 一批词 id。
type Ids<D> = Tensor<(usize, usize), usize, D>;

/// 参考数据里的一批输入：`input_ids`、`token_type_ids`，以及由 `attention_mask` 得到的填充掩码
/// （测试共用，CPU 与 GPU 的测试都用它）。
pub fn reference_batch<D: Device<f32>>(
    reference: &Checkpoint,
    dev: &D,
) -> (
    Ids<D>,
    Ids<D>,
    crate::transformer::attention::PaddingMask<f32, D>,
) {
    let ids = |key: &str| -> Ids<D> {
        let t = reference.get(key).unwrap();
        dev.tensor_from_vec(
            t.values().iter().map(|&v| v as usize).collect(),
            (t.shape[0], t.shape[1]),
        )
    };
    let mask = reference.get("attention_mask").unwrap();
    let seq = mask.shape[1];
    let lengths: Vec<usize> = mask
        .values()
        .chunks(seq)
        .map(|r| r.iter().sum::<f64>() as usize)
        .collect();
    let mask =
        crate::transformer::attention::PaddingMask::from_lengths(dev, &lengths, seq).unwrap();
    (ids("input_ids"), ids("token_type_ids"), mask)
}

/// `ours` 与参考数据中 `key` 的最大绝对误差（测试共用）。
pub fn max_error(ours: &[f32], reference: &Checkpoint, key: &str) -> f64 {
    let theirs = &reference.get(key).unwrap().values();
    assert_eq!(ours.len(), theirs.len(), "{key} 的元素个数不同");
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bert::model::{bert_config, TinyBert, TINY_DIMS};
    use crate::transformer::encoder::Mode;

    fn fixtures() -> std::path::PathBuf {
        fixtures_dir()
    }

    #[test]
    fn maps_our_names_to_hugging_face_keys() {
        assert_eq!(
            hf_candidates("encoder.layer.3.attention.w_q.weight")[0],
            "bert.encoder.layer.3.attention.self.query.weight"
        );
        assert_eq!(
            hf_candidates("encoder.layer.0.norm2.bias")[0],
            "bert.encoder.layer.0.output.LayerNorm.bias"
        );
        assert_eq!(
            hf_candidates("encoder.layer.0.feed_forward.linear2.weight")[1],
            "encoder.layer.0.output.dense.weight"
        );
        assert!(hf_candidates("embeddings.LayerNorm.weight")
            .contains(&"bert.embeddings.LayerNorm.gamma".to_string()));
        assert_eq!(hf_candidates("classifier.bias"), vec!["classifier.bias"]);
    }

    #[test]
    fn tiny_bert_matches_transformers() {
        let dev: Cpu = Default::default();
        let mut bert = TinyBert::<f32, Cpu>::new(&dev, &TINY_DIMS);
        load_bert(&mut bert, &fixtures().join("tiny-bert/model.safetensors"))
            .unwrap_or_else(|e| panic!("{e}"));
        let reference =
            Checkpoint::read(&fixtures().join("tiny-bert-reference.safetensors")).unwrap();
        let (tokens, types, mask) = reference_batch(&reference, &dev);
        let cfg = bert_config(1e-12, 0.1, 24);
        let out = bert
            .forward(&cfg, tokens, Some(types), &mask, Mode::Eval)
            .unwrap();
        for (name, err) in [
            (
                "last_hidden_state",
                max_error(
                    &out.last_hidden_state.as_vec(),
                    &reference,
                    "last_hidden_state",
                ),
            ),
            (
                "pooler_output",
                max_error(&out.pooler_output.as_vec(), &reference, "pooler_output"),
            ),
            (
                "logits",
                max_error(&out.logits.as_vec(), &reference, "logits"),
            ),
        ] {
            println!("{name}: 最大误差 {err:.2e}");
            assert!(err <= 1e-4, "{name}：与 transformers 相差 {err}");
        }
    }

    #[test]
    fn missing_and_unexpected_keys_are_listed() {
        let dev: Cpu = Default::default();
        // 形状不同的模型（3 层）读 2 层的文件：第 3 层的键缺失
        let dims = crate::bert::model::BertDims {
            num_layers: 3,
            ..TINY_DIMS
        };
        let mut bigger = TinyBert::<f32, Cpu>::new(&dev, &dims);
        let err = load_bert(&mut bigger, &fixtures().join("tiny-bert/model.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("缺少的张量：bert.encoder.layer.2.attention.self.query.weight"),
            "{err}"
        );
    }
}

/// 一个读进来的 Hugging Face BERT 模型目录。
pub struct BertDir<const M: usize, const H: usize, const F: usize, E: Dtype, D: Device<E>> {
    /// 参数。
    pub params: BertParams<M, H, F, E, D>,
    /// 由 `config.json` 得到的超参数（ε、dropout、最大位置）。
    pub config: crate::transformer::encoder::EncoderConfig,
    /// 分词器。
    pub tokenizer: BertTokenizer,
    /// 分类头是读进来的，还是新建的。
    pub head: HeadSource,
    /// 池化层是读进来的，还是新建的（`BertForMaskedLM` 存的检查点没有池化层）。
    pub pooler: HeadSource,
    /// 类别名（`id2label`；没有时为 `LABEL_0`、`LABEL_1`）。
    pub labels: Vec<String>,
}

// ANCHOR: load_dir
/// 读一个模型目录：先读 `config.json`，核对本书能否计算、宽度是否就是类型里的 (M, H, F)，
/// 按其中的大小建好模型，再读 `model.safetensors`，最后读分词器（词表不能比 `vocab_size` 大）。
/// 任何一步出错都返回指明文件与字段的错误。
pub fn load_dir<const M: usize, const H: usize, const F: usize, E, D>(
    dev: &D,
    dir: &Path,
) -> Result<BertDir<M, H, F, E, D>, LoadError>
where
    E: Real,
    D: Kernels<E>,
{
    let config_path = dir.join("config.json");
    let hf = HfBertConfig::read(&config_path)?;
    let (config, dims) = hf.check(&config_path)?;
    let widths = (hf.hidden_size, hf.num_attention_heads, hf.intermediate_size);
    if widths != (M, H, F) {
        return Err(LoadError::Config(ConfigError::Unsupported {
            path: config_path,
            field: "hidden_size / num_attention_heads / intermediate_size".into(),
            found: format!("{} / {} / {}", widths.0, widths.1, widths.2),
            expected: format!("{M} / {H} / {F}（调用者选的类型）"),
        }));
    }
    let mut params = BertParams::to_load(dev, &dims);
    let heads = load_bert(&mut params, &dir.join("model.safetensors"))?;
    let tokenizer = BertTokenizer::from_dir(dir)?;
    if tokenizer.vocab_size() > dims.vocab_size {
        return Err(LoadError::Config(ConfigError::Unsupported {
            path: config_path,
            field: "vocab_size".into(),
            found: dims.vocab_size.to_string(),
            expected: format!("不小于分词器的词表（{} 个记号）", tokenizer.vocab_size()),
        }));
    }
    let labels = (0..dims.num_labels).map(|i| hf.label_name(i)).collect();
    Ok(BertDir {
        params,
        config,
        tokenizer,
        head: heads.classifier,
        pooler: heads.pooler,
        labels,
    })
}
// ANCHOR_END: load_dir

/// 读模型目录时的错误。
#[derive(Debug)]
pub enum LoadError {
    /// `config.json` 的问题。
    Config(super::config::ConfigError),
    /// `model.safetensors` 的问题。
    Checkpoint(CheckpointError),
    /// 分词器的问题。
    Tokenizer(super::tokenizer::TokenizerError),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Config(e) => e.fmt(f),
            LoadError::Checkpoint(e) => e.fmt(f),
            LoadError::Tokenizer(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for LoadError {}

impl From<super::config::ConfigError> for LoadError {
    fn from(e: super::config::ConfigError) -> Self {
        LoadError::Config(e)
    }
}
impl From<CheckpointError> for LoadError {
    fn from(e: CheckpointError) -> Self {
        LoadError::Checkpoint(e)
    }
}
impl From<super::tokenizer::TokenizerError> for LoadError {
    fn from(e: super::tokenizer::TokenizerError) -> Self {
        LoadError::Tokenizer(e)
    }
}

#[cfg(test)]
mod dir_tests {
    use super::*;

    #[test]
    fn loads_the_tiny_model_directory() {
        let dev: Cpu = Default::default();
        let dir = fixtures_dir().join("tiny-bert");
        let model = load_dir::<32, 4, 48, f32, Cpu>(&dev, &dir).unwrap();
        assert_eq!(model.config.layer_norm_eps, 1e-12);
        assert_eq!(
            model.tokenizer.encode("书很好", None, 16).unwrap().ids,
            vec![2, 12, 10, 11, 3]
        );
        assert_eq!(model.params.dims(), crate::bert::model::TINY_DIMS);
        assert_eq!(model.labels, ["LABEL_0", "LABEL_1", "LABEL_2"]);
        // 选错了类型：在读权重之前就指出不一致的字段
        let err = load_dir::<32, 4, 64, f32, Cpu>(&dev, &dir)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("intermediate_size 为 32 / 4 / 48"), "{err}");
    }

    /// 三种布局（`BertForSequenceClassification`、`BertModel`、`BertForMaskedLM`）与任意的运行期大小都读得进来：
    /// 存一个 3 层、词表 50、3 种句子类型、10 类的模型，再读回来，logits 逐位相同。
    #[test]
    fn loads_any_runtime_size_and_every_layout() {
        use crate::bert::model::{BertDims, TinyBert};
        use crate::transformer::attention::PaddingMask;
        use crate::transformer::encoder::Mode;
        let dev = Cpu::seed_from_u64(9);
        let dims = BertDims {
            vocab_size: 50,
            num_layers: 3,
            max_positions: 16,
            type_vocab_size: 3,
            num_labels: 10,
        };
        let model = TinyBert::<f32, Cpu>::new(&dev, &dims);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sizes");
        let src = tmp.path().join("sizes-src");
        std::fs::create_dir_all(&src).unwrap();
        let config = std::fs::read_to_string(fixtures_dir().join("tiny-bert/config.json"))
            .unwrap()
            .replace("\"vocab_size\": 64", "\"vocab_size\": 50")
            .replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3")
            .replace(
                "\"max_position_embeddings\": 24",
                "\"max_position_embeddings\": 16",
            )
            .replace("\"type_vocab_size\": 2", "\"type_vocab_size\": 3");
        std::fs::write(src.join("config.json"), config).unwrap();
        // 词表也取前 50 个记号（分词器的记号数不能超过 vocab_size）
        let vocab = std::fs::read_to_string(fixtures_dir().join("tiny-bert/vocab.txt")).unwrap();
        let vocab: Vec<&str> = vocab.lines().take(50).collect();
        std::fs::write(src.join("vocab.txt"), vocab.join("\n") + "\n").unwrap();
        let labels: Vec<String> = (0..10).map(|i| format!("类{i}")).collect();
        crate::peft::model::save_hf_dir(&model, &src, &labels, &dir).unwrap();
        let back = load_dir::<32, 4, 48, f32, Cpu>(&dev, &dir).unwrap();
        assert_eq!(back.params.dims(), dims);
        assert_eq!(back.labels, labels);
        assert_eq!(back.head, HeadSource::Loaded);
        let tokens = dev.tensor_from_vec(vec![2, 40, 49, 3], (1, 4));
        let types = dev.tensor_from_vec(vec![0, 1, 2, 2], (1, 4));
        let mask = PaddingMask::from_lengths(&dev, &[4], 4).unwrap();
        let logits = |m: &TinyBert<f32, Cpu>| {
            m.forward(
                &back.config,
                tokens.clone(),
                Some(types.clone()),
                &mask,
                Mode::Eval,
            )
            .unwrap()
            .logits
            .as_vec()
        };
        assert_eq!(logits(&back.params), logits(&model));
        // 越界的 id 是错误，不是 panic
        let bad = dev.tensor_from_vec(vec![2, 50], (1, 2));
        let mask2 = PaddingMask::from_lengths(&dev, &[2], 2).unwrap();
        let err = back
            .params
            .forward(&back.config, bad, None, &mask2, Mode::Eval)
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("input_ids 里有 id 50，超出了嵌入表的 50 行"),
            "{err}"
        );

        // BertModel 的布局：没有 bert. 前缀、没有分类头
        let weights = Checkpoint::read(&dir.join("model.safetensors")).unwrap();
        let kept: Vec<(String, Vec<usize>, Vec<f32>)> = weights
            .tensors
            .iter()
            .filter(|(k, _)| !k.starts_with("classifier."))
            .map(|(k, t)| {
                let key = k.strip_prefix("bert.").unwrap_or(k).to_string();
                (key, t.shape.clone(), t.to_vec::<f32>())
            })
            .collect();
        crate::checkpoint::save_tensors(&dir.join("model.safetensors"), &kept).unwrap();
        let bare = load_dir::<32, 4, 48, f32, Cpu>(&dev, &dir).unwrap();
        assert_eq!(bare.head, HeadSource::New);
        assert_eq!(
            bare.params.layers.modules[2].attention.w_q.weight.as_vec(),
            model.layers.modules[2].attention.w_q.weight.as_vec()
        );
        // BertForMaskedLM 的布局（cls.predictions.*，没有池化层与分类头）
        let mlm =
            load_dir::<32, 4, 48, f32, Cpu>(&dev, &fixtures_dir().join("tiny-bert-mlm")).unwrap();
        assert_eq!(mlm.head, HeadSource::New);
    }

    #[test]
    fn a_truncated_weight_file_is_a_clear_error() {
        let dev: Cpu = Default::default();
        let src = fixtures_dir().join("tiny-bert");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("bert");
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["config.json", "vocab.txt"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
        std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
        let err = load_dir::<32, 4, 48, f32, Cpu>(&dev, &dir)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("不是有效的 safetensors 文件（可能被截断或损坏）"),
            "{err}"
        );
    }
}
