//! 3.2 节：`config.json` 与预设的核对。
//!
//! 模型宽度是类型参数，所以一个 HF 模型目录只能读进宽度相同的预设；`config.json` 的任何宽度字段
//! 与预设不一致，都在读权重之前报出字段名与两边的值。

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::model::bert_config;
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
    /// dropout 概率。
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// 类别 id → 名字（分类模型才有；没有时与 transformers 一样按 2 类）。
    #[serde(default)]
    pub id2label: Option<std::collections::BTreeMap<String, String>>,
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
    /// 与预设的宽度 `(V, M, H, F, L, P, TT)` 逐项核对；全部一致时给出编码器的超参数。
    pub fn check(&self, path: &Path, preset: [usize; 7]) -> Result<EncoderConfig, ConfigError> {
        let fields = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        let mismatches: Vec<(String, usize, usize)> = fields
            .iter()
            .zip(preset)
            .filter(|((_, found), expected)| found != expected)
            .map(|((name, found), expected)| (name.to_string(), *found, expected))
            .collect();
        if !mismatches.is_empty() {
            return Err(ConfigError::Mismatch {
                path: path.into(),
                mismatches,
            });
        }
        if self.hidden_act != "gelu" {
            return Err(ConfigError::Activation {
                path: path.into(),
                found: self.hidden_act.clone(),
            });
        }
        Ok(bert_config(
            self.layer_norm_eps,
            self.hidden_dropout_prob,
            self.max_position_embeddings,
        ))
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
    /// 宽度与预设不一致：(字段, 文件中的值, 预设的值)。
    Mismatch {
        /// 文件。
        path: PathBuf,
        /// 不一致的字段。
        mismatches: Vec<(String, usize, usize)>,
    },
    /// 激活函数不是精确 GELU。
    Activation {
        /// 文件。
        path: PathBuf,
        /// 文件中的值。
        found: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Io { path, error } => write!(f, "无法读取 {}：{error}", path.display()),
            ConfigError::Parse { path, error } => {
                write!(f, "{} 不是有效的 BERT 配置：{error}", path.display())
            }
            ConfigError::Mismatch { path, mismatches } => {
                write!(f, "{} 与所选的模型预设不一致：", path.display())?;
                for (name, found, expected) in mismatches {
                    write!(f, "\n  字段 {name}：文件中为 {found}，预设为 {expected}")?;
                }
                Ok(())
            }
            ConfigError::Activation { path, found } => {
                write!(
                    f,
                    "{} 的字段 hidden_act 为 \"{found}\"，本书的 BERT 只支持精确 GELU（\"gelu\"）",
                    path.display()
                )
            }
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
    fn accepts_the_matching_preset_and_names_every_mismatch() {
        let cfg = HfBertConfig::read(&tiny()).unwrap();
        let enc = cfg.check(&tiny(), [64, 32, 4, 48, 2, 24, 2]).unwrap();
        assert_eq!(enc.layer_norm_eps, 1e-12);
        let err = cfg
            .check(&tiny(), [21128, 768, 12, 3072, 12, 512, 2])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("字段 vocab_size：文件中为 64，预设为 21128"),
            "{err}"
        );
        assert!(
            err.contains("字段 num_hidden_layers：文件中为 2，预设为 12"),
            "{err}"
        );
        assert!(
            !err.contains("type_vocab_size"),
            "一致的字段不应列出：{err}"
        );
    }

    #[test]
    fn broken_files_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("llm-book-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        std::fs::write(&path, r#"{"vocab_size": 64, "hidden_size": 32}"#).unwrap();
        let err = HfBertConfig::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("不是有效的 BERT 配置：缺少字段 num_attention_heads"),
            "{err}"
        );
        let mut cfg = HfBertConfig::read(&tiny()).unwrap();
        cfg.hidden_act = "gelu_new".into();
        assert!(cfg
            .check(&tiny(), [64, 32, 4, 48, 2, 24, 2])
            .unwrap_err()
            .to_string()
            .contains("hidden_act"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
