//! 3.2 节：`config.json` 的读取与核对。
//!
//! 宽度（hidden_size、num_attention_heads、intermediate_size）选出编译好的类型（[`super::presets`]）；
//! 其余的大小是运行期的数（[`BertDims`]）。本书的 BERT 做不到的配置（别的激活函数、相对位置编码、
//! 别的模型类型）在读权重之前就报出字段名与值。

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::model::{bert_config, BertDims};
use crate::transformer::encoder::EncoderConfig;

/// `config.json` 中本书用到的字段（其余字段忽略）。
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct HfBertConfig {
    /// 词表大小。
    pub vocab_size: usize,
    /// 隐藏维度。
    pub hidden_size: usize,
    /// 头数。
    pub num_attention_heads: usize,
    /// 前馈宽度。
    pub intermediate_size: usize,
    /// 层数。
    pub num_hidden_layers: usize,
    /// 位置嵌入的个数。
    pub max_position_embeddings: usize,
    /// 句子类型的个数。
    pub type_vocab_size: usize,
    /// 激活函数，须为精确 GELU（`gelu`）。
    pub hidden_act: String,
    /// 层归一化的 ε。
    pub layer_norm_eps: f64,
    /// 隐藏层（嵌入、子层输出、池化输出）上的 dropout 概率。
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// 注意力权重上的 dropout 概率。
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// 类别 id → 名字（分类模型才有；没有时与 transformers 一样按 2 类）。
    #[serde(default)]
    pub id2label: Option<std::collections::BTreeMap<String, String>>,
    /// 模型类型：须为 `bert`（没有这个字段时不核对）。
    #[serde(default)]
    pub model_type: Option<String>,
    /// 位置编码的类型：须为 `absolute`（没有时即是）。
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_dropout() -> f64 {
    0.1
}

impl HfBertConfig {
    /// 读 `config.json`。
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            path: path.into(),
            error: e.to_string(),
        })?;
        serde_json::from_str(&text).map_err(|e| {
            // serde 的英文说明里最有用的是字段名：“missing field `x`”换成中文
            let msg = e.to_string();
            let error = match msg
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
            {
                Some(field) => format!("缺少字段 {field}（{msg}）"),
                None => msg,
            };
            ConfigError::Parse {
                path: path.into(),
                error,
            }
        })
    }
}

impl HfBertConfig {
    /// 类别数：`id2label` 的项数，没有时为 2（transformers 的默认）。
    pub fn num_labels(&self) -> usize {
        self.id2label.as_ref().map_or(2, |m| m.len())
    }

    /// 第 i 类的名字：`id2label` 里有就用它，否则 `LABEL_i`。
    pub fn label_name(&self, i: usize) -> String {
        self.id2label
            .as_ref()
            .and_then(|m| m.get(&i.to_string()).cloned())
            .unwrap_or_else(|| format!("LABEL_{i}"))
    }
}

// ANCHOR: validate
impl HfBertConfig {
    /// 核对本书的 BERT 能否按这份配置计算，给出编码器的超参数与运行期的大小（类别数取 `id2label` 的项数）。
    /// 宽度在分派时核对（[`super::presets::dispatch_dir`]）。
    pub fn check(&self, path: &Path) -> Result<(EncoderConfig, BertDims), ConfigError> {
        let bad = |field: &str, found: String, expected: &str| ConfigError::Unsupported {
            path: path.into(),
            field: field.into(),
            found,
            expected: expected.into(),
        };
        if self.hidden_act != "gelu" {
            return Err(bad(
                "hidden_act",
                self.hidden_act.clone(),
                "\"gelu\"（精确 GELU）",
            ));
        }
        if let Some(t) = self.model_type.as_deref().filter(|t| *t != "bert") {
            return Err(bad("model_type", t.into(), "\"bert\""));
        }
        if let Some(t) = self
            .position_embedding_type
            .as_deref()
            .filter(|t| *t != "absolute")
        {
            return Err(bad(
                "position_embedding_type",
                t.into(),
                "\"absolute\"（学习的绝对位置嵌入）",
            ));
        }
        let dims = BertDims {
            vocab_size: self.vocab_size,
            num_layers: self.num_hidden_layers,
            max_positions: self.max_position_embeddings,
            type_vocab_size: self.type_vocab_size,
            num_labels: self.num_labels(),
        };
        for (field, value) in [
            ("vocab_size", dims.vocab_size),
            ("num_hidden_layers", dims.num_layers),
            ("max_position_embeddings", dims.max_positions),
            ("type_vocab_size", dims.type_vocab_size),
            ("id2label 的项数", dims.num_labels),
        ] {
            if value == 0 {
                return Err(bad(field, "0".into(), "至少为 1"));
            }
        }
        for (field, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(bad(field, p.to_string(), "在 [0, 1) 之内"));
            }
        }
        let config = EncoderConfig {
            attention_dropout: self.attention_probs_dropout_prob,
            ..bert_config(
                self.layer_norm_eps,
                self.hidden_dropout_prob,
                self.max_position_embeddings,
            )
        };
        Ok((config, dims))
    }
}
// ANCHOR_END: validate

/// `config.json` 的错误。
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigError {
    /// 读不了文件。
    Io {
        /// 文件。
        path: PathBuf,
        /// 原因。
        error: String,
    },
    /// 不是合法的 JSON，或缺少字段。
    Parse {
        /// 文件。
        path: PathBuf,
        /// 原因（含缺少的字段名）。
        error: String,
    },
    /// 本书的 BERT 做不到的配置。
    Unsupported {
        /// 文件。
        path: PathBuf,
        /// 字段。
        field: String,
        /// 文件中的值。
        found: String,
        /// 支持的值。
        expected: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Io { path, error } => write!(f, "无法读取 {}：{error}", path.display()),
            ConfigError::Parse { path, error } => {
                write!(f, "{} 不是有效的 BERT 配置：{error}", path.display())
            }
            ConfigError::Unsupported {
                path,
                field,
                found,
                expected,
            } => write!(
                f,
                "{} 的字段 {field} 为 {found}，本书的 BERT 要求 {expected}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert/config.json")
    }

    #[test]
    fn reads_the_runtime_sizes() {
        let cfg = HfBertConfig::read(&tiny()).unwrap();
        let (enc, dims) = cfg.check(&tiny()).unwrap();
        assert_eq!(enc.layer_norm_eps, 1e-12);
        assert_eq!(enc.max_len, 24);
        assert_eq!(dims, crate::bert::model::TINY_DIMS);
        assert_eq!(cfg.label_name(2), "LABEL_2");
    }

    #[test]
    fn broken_files_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.json");
        std::fs::write(&path, r#"{"vocab_size": 64, "hidden_size": 32}"#).unwrap();
        let err = HfBertConfig::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("不是有效的 BERT 配置：缺少字段 num_attention_heads"),
            "{err}"
        );
        let cfg = HfBertConfig::read(&tiny()).unwrap();
        let cases: [(&str, fn(&mut HfBertConfig)); 4] = [
            ("字段 hidden_act 为 gelu_new", |c| {
                c.hidden_act = "gelu_new".into()
            }),
            ("字段 model_type 为 roberta", |c| {
                c.model_type = Some("roberta".into())
            }),
            ("字段 position_embedding_type 为 relative_key", |c| {
                c.position_embedding_type = Some("relative_key".into())
            }),
            ("字段 num_hidden_layers 为 0", |c| {
                c.num_hidden_layers = 0
            }),
        ];
        for (expected, change) in cases {
            let mut bad = cfg.clone();
            change(&mut bad);
            let err = bad.check(&tiny()).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }
}
