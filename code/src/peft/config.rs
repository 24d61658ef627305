//! 3.4 节：PEFT 的 `adapter_config.json`。
//!
//! [`LoraConfig`] 的 JSON 就是 PEFT 保存的 `adapter_config.json`：本书读得懂 PEFT 写的文件，PEFT 也读得懂本书写的。
//! 本书实现了其中的 LoRA 核心（r、lora_alpha、target_modules、lora_dropout、use_rslora、modules_to_save）；
//! 其余会改变模型行为的选项（DoRA、每层不同的秩、偏置训练……）只要取了非默认值，就给出指明字段的错误，
//! 而不是悄悄忽略。纯说明性的字段（peft_version、revision……）原样保留，保存时写回。

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

// ANCHOR: config
/// PEFT 的 LoRA 配置（`adapter_config.json`）。字段名、默认值与 PEFT 相同。
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// 固定为 `"LORA"`。
    #[serde(default = "default_peft_type")]
    pub peft_type: String,
    /// 任务类型；序列分类是 `"SEQ_CLS"`（此时分类头自动加入 `modules_to_save`）。
    #[serde(default)]
    pub task_type: Option<String>,
    /// 秩 r。
    #[serde(default = "default_r")]
    pub r: usize,
    /// α：缩放系数为 α/r（`use_rslora` 时为 α/√r）。
    #[serde(default = "default_alpha", serialize_with = "integer_if_whole")]
    pub lora_alpha: f64,
    /// LoRA 分支输入上的 dropout 概率。
    #[serde(default)]
    pub lora_dropout: f64,
    /// 加 LoRA 的模块：名字的列表（按后缀匹配），或一个正则表达式（整体匹配）。
    #[serde(default = "default_targets")]
    pub target_modules: TargetModules,
    /// 是否训练偏置：本书只支持 `"none"`（与 PEFT 的默认相同）。
    #[serde(default = "default_bias")]
    pub bias: String,
    /// 整个训练（并随适配器保存）的模块：序列分类时是分类头 `classifier`。
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// rsLoRA：缩放系数取 α/√r。
    #[serde(default)]
    pub use_rslora: bool,
    /// 基座模型的名字或目录（只作记录）。
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// 是否只做推理（PEFT 保存时写 true）。
    #[serde(default)]
    pub inference_mode: bool,
    /// 其余字段：原样保留。会改变模型行为的几个须取默认值，见 [`LoraConfig::validate`]。
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `target_modules` 的两种写法。
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// 名字的列表：模块名等于它，或以 `.它` 结尾。
    Names(Vec<String>),
    /// 一个正则表达式：与整个模块名匹配。
    Regex(String),
}
// ANCHOR_END: config

fn default_peft_type() -> String {
    "LORA".into()
}
fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    8.0
}
fn default_bias() -> String {
    "none".into()
}
/// PEFT 对 BERT 的默认目标（`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING["bert"]`）。
fn default_targets() -> TargetModules {
    TargetModules::Names(vec!["query".into(), "value".into()])
}

/// α 是整数时写成整数（PEFT 写的 `"lora_alpha": 32`），否则写小数。
fn integer_if_whole<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f64(*v)
    }
}

/// 会改变模型行为、本书没有实现的 PEFT 选项：文件里出现时必须是默认值（null、false、空表）。
const UNSUPPORTED: [(&str, &str); 13] = [
    ("use_dora", "DoRA（把权重拆成方向与长度）"),
    (
        "fan_in_fan_out",
        "按 (in, out) 存放的权重（GPT-2 的 Conv1D）",
    ),
    ("rank_pattern", "每个模块不同的秩"),
    ("alpha_pattern", "每个模块不同的 α"),
    ("layers_to_transform", "只给部分层加 LoRA"),
    ("layers_pattern", "只给部分层加 LoRA"),
    ("layer_replication", "层的复制"),
    ("exclude_modules", "排除的模块"),
    ("lora_bias", "LoRA 分支的偏置"),
    ("loftq_config", "LoftQ 初始化"),
    ("trainable_token_indices", "只训练部分词嵌入"),
    ("target_parameters", "直接给参数（而非模块）加 LoRA"),
    ("use_qalora", "QA-LoRA"),
];

impl LoraConfig {
    /// 与 PEFT 的 `LoraConfig(task_type=SEQ_CLS, r, lora_alpha, target_modules, lora_dropout)` 相同的配置。
    pub fn seq_cls(r: usize, lora_alpha: f64, target_modules: &[&str], lora_dropout: f64) -> Self {
        Self {
            peft_type: default_peft_type(),
            task_type: Some("SEQ_CLS".into()),
            r,
            lora_alpha,
            lora_dropout,
            target_modules: TargetModules::Names(
                target_modules.iter().map(|s| s.to_string()).collect(),
            ),
            bias: default_bias(),
            modules_to_save: None,
            use_rslora: false,
            base_model_name_or_path: None,
            inference_mode: false,
            other: BTreeMap::new(),
        }
    }

    /// 读 `adapter_config.json` 并检查（[`validate`](Self::validate)）。
    pub fn read(path: &Path) -> Result<Self, PeftError> {
        let text = std::fs::read_to_string(path).map_err(|e| PeftError::Io {
            path: path.into(),
            error: e.to_string(),
        })?;
        Self::from_json(&text).map_err(|e| match e {
            PeftError::Json { error, .. } => PeftError::Json {
                path: path.into(),
                error,
            },
            other => other.in_file(path),
        })
    }

    /// 从 JSON 文本读（PEFT 的 `adapter_config.json` 的内容）并检查。
    pub fn from_json(text: &str) -> Result<Self, PeftError> {
        let config: Self = serde_json::from_str(text).map_err(|e| PeftError::Json {
            path: "adapter_config.json".into(),
            error: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// 写成 `adapter_config.json`（缩进两格，键按字母序，与 PEFT 写的一样）。
    pub fn to_json(&self) -> String {
        // 先转成 Value：serde_json 的 Map 是有序的，flatten 进来的字段与具名字段一起排序
        let value = serde_json::to_value(self).expect("LoraConfig 总能转成 JSON");
        serde_json::to_string_pretty(&value).expect("JSON 总能写成文本")
    }

    // ANCHOR: scaling
    /// LoRA 分支的缩放系数：α/r，rsLoRA 时 α/√r。
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }
    // ANCHOR_END: scaling

    /// 分类头是否随适配器训练与保存：`task_type` 为 SEQ_CLS，或 `modules_to_save` 含 `classifier`。
    pub fn trains_classifier(&self) -> bool {
        self.task_type.as_deref() == Some("SEQ_CLS")
            || self
                .modules_to_save
                .iter()
                .flatten()
                .any(|m| m == "classifier")
    }

    /// 检查字段的取值：错误指明字段与原因。
    pub fn validate(&self) -> Result<(), PeftError> {
        let bad = |field: &str, value: String, reason: &str| {
            Err(PeftError::Field {
                path: None,
                field: field.into(),
                value,
                reason: reason.into(),
            })
        };
        if self.peft_type != "LORA" {
            return bad(
                "peft_type",
                self.peft_type.clone(),
                "本书只实现 LoRA（应为 \"LORA\"）",
            );
        }
        if self.r == 0 {
            return bad("r", "0".into(), "秩必须 ≥ 1");
        }
        if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return bad("lora_alpha", self.lora_alpha.to_string(), "必须是正数");
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return bad(
                "lora_dropout",
                self.lora_dropout.to_string(),
                "必须在 [0, 1) 之内",
            );
        }
        if self.bias != "none" {
            return bad(
                "bias",
                format!("{:?}", self.bias),
                "本书只支持 \"none\"（偏置保持冻结，与 PEFT 的默认相同）",
            );
        }
        for m in self.modules_to_save.iter().flatten() {
            // PEFT 对 SEQ_CLS 自动加入 ["classifier", "score"]；BERT 里没有 score，PEFT 也是忽略它
            if m != "classifier" && m != "score" {
                return bad(
                    "modules_to_save",
                    format!("{m:?}"),
                    "本书只支持整个训练分类头 classifier",
                );
            }
        }
        if !self.trains_classifier() {
            return bad(
                "task_type",
                format!("{:?}", self.task_type),
                "分类模型要训练分类头：task_type 应为 \"SEQ_CLS\"，或 modules_to_save 含 \"classifier\"",
            );
        }
        for (field, what) in UNSUPPORTED {
            if let Some(v) = self.other.get(field) {
                let default = match v {
                    Value::Null | Value::Bool(false) => true,
                    Value::Object(m) => m.is_empty(),
                    Value::Array(a) => a.is_empty(),
                    _ => false,
                };
                if !default {
                    return bad(
                        field,
                        v.to_string(),
                        &format!("本书没有实现{what}，只接受默认值"),
                    );
                }
            }
        }
        Ok(())
    }
}

// ANCHOR: resolve
/// BERT 编码器层里六个可加 LoRA 的线性层在 PEFT（即 HF 模型）中的模块名，顺序与
/// [`Targets::SITES`](crate::lora::encoder::Targets::SITES) 相同。
pub const LAYER_LINEARS: [&str; 6] = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

/// `BertForSequenceClassification` 中编码器层以外的模块名（PEFT 按全部模块名匹配 `target_modules`）。
const OTHER_MODULES: [&str; 16] = [
    "bert",
    "bert.embeddings",
    "bert.embeddings.word_embeddings",
    "bert.embeddings.position_embeddings",
    "bert.embeddings.token_type_embeddings",
    "bert.embeddings.LayerNorm",
    "bert.embeddings.dropout",
    "bert.encoder",
    "bert.encoder.layer",
    "bert.pooler",
    "bert.pooler.dense",
    "bert.pooler.activation",
    "dropout",
    "classifier",
    "classifier.modules_to_save",
    "classifier.original_module",
];

/// 编码器第 i 层里线性层以外的模块名（相对 `bert.encoder.layer.i`；线性层见 [`LAYER_LINEARS`]）。
const LAYER_MODULES: [&str; 12] = [
    "",
    "attention",
    "attention.self",
    "attention.self.dropout",
    "attention.output",
    "attention.output.LayerNorm",
    "attention.output.dropout",
    "intermediate",
    "intermediate.intermediate_act_fn",
    "output",
    "output.LayerNorm",
    "output.dropout",
];

impl TargetModules {
    fn matches(&self, module: &str, regex: Option<&regex::Regex>) -> Vec<usize> {
        match self {
            TargetModules::Names(names) => names
                .iter()
                .enumerate()
                .filter(|(_, t)| module == t.as_str() || module.ends_with(&format!(".{t}")))
                .map(|(i, _)| i)
                .collect(),
            TargetModules::Regex(_) => match regex {
                Some(re) if re.is_match(module) => vec![0],
                _ => vec![],
            },
        }
    }
}

/// 按 PEFT 的规则把 `target_modules` 解析成编码器层里的六个位置（各层须相同）。
///
/// 匹配规则与 PEFT 相同：列表里的名字与模块名相等或是它的后缀（以 `.` 分隔），正则表达式与整个模块名匹配。
/// 匹配到线性层以外的模块（如 `pooler.dense`、层归一化）、某个名字什么也没匹配到、各层不同，都是错误。
pub fn resolve_targets(targets: &TargetModules, layers: usize) -> Result<[bool; 6], PeftError> {
    let regex = match targets {
        TargetModules::Regex(pattern) => Some(
            regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| PeftError::Field {
                path: None,
                field: "target_modules".into(),
                value: format!("{pattern:?}"),
                reason: format!("不是合法的正则表达式：{e}"),
            })?,
        ),
        TargetModules::Names(_) => None,
    };
    let n_entries = match targets {
        TargetModules::Names(n) => n.len(),
        TargetModules::Regex(_) => 1,
    };
    let mut used = vec![false; n_entries];
    let mut per_layer = vec![[false; 6]; layers];
    let mut unsupported = Vec::new();
    let mut visit = |name: String, site: Option<(usize, usize)>| {
        let hits = targets.matches(&name, regex.as_ref());
        if hits.is_empty() {
            return;
        }
        for h in hits {
            used[h] = true;
        }
        match site {
            Some((layer, s)) => per_layer[layer][s] = true,
            None => unsupported.push(name),
        }
    };
    for m in OTHER_MODULES {
        visit(m.to_string(), None);
    }
    for layer in 0..layers {
        for m in LAYER_MODULES {
            let name = if m.is_empty() {
                format!("bert.encoder.layer.{layer}")
            } else {
                format!("bert.encoder.layer.{layer}.{m}")
            };
            visit(name, None);
        }
        for (s, m) in LAYER_LINEARS.iter().enumerate() {
            visit(format!("bert.encoder.layer.{layer}.{m}"), Some((layer, s)));
        }
    }
    let field = |value: String, reason: String| PeftError::Field {
        path: None,
        field: "target_modules".into(),
        value,
        reason,
    };
    if let Some(m) = unsupported.first() {
        return Err(field(
            format!("{targets:?}"),
            format!("匹配到了模块 {m}；本书的 BERT 只能给编码器层里的线性层加 LoRA（query、key、value、attention.output.dense、intermediate.dense、output.dense）"),
        ));
    }
    if let TargetModules::Names(names) = targets {
        if let Some(i) = used.iter().position(|u| !u) {
            return Err(field(
                format!("{:?}", names[i]),
                "没有匹配到模型中的任何模块（可用的名字：query、key、value、attention.output.dense、intermediate.dense、output.dense）".into(),
            ));
        }
    }
    let first = per_layer.first().copied().unwrap_or_default();
    if let Some(i) = per_layer.iter().position(|l| *l != first) {
        return Err(field(
            format!("{targets:?}"),
            format!("第 0 层与第 {i} 层选中的线性层不同；本书要求每层相同"),
        ));
    }
    if !first.contains(&true) {
        return Err(field(format!("{targets:?}"), "没有匹配到任何线性层".into()));
    }
    Ok(first)
}
// ANCHOR_END: resolve

/// PEFT 配置与适配器的错误。
#[derive(Clone, Debug, PartialEq)]
pub enum PeftError {
    /// 文件读不了。
    Io {
        /// 文件。
        path: PathBuf,
        /// 系统给出的原因。
        error: String,
    },
    /// 不是合法的 JSON，或字段类型不对。
    Json {
        /// 文件。
        path: PathBuf,
        /// 解析器给出的原因。
        error: String,
    },
    /// 某个字段的取值不被接受。
    Field {
        /// 文件（知道时）。
        path: Option<PathBuf>,
        /// 字段名。
        field: String,
        /// 取值。
        value: String,
        /// 原因。
        reason: String,
    },
    /// 适配器或模型的权重文件的问题。
    Checkpoint(crate::checkpoint::CheckpointError),
    /// 配置与编译好的模型类型（秩、目标层）不一致。
    Mismatch {
        /// 字段名。
        field: String,
        /// 配置中的值。
        config: String,
        /// 模型类型中的值。
        model: String,
    },
}

impl PeftError {
    fn in_file(self, file: &Path) -> Self {
        match self {
            PeftError::Field {
                field,
                value,
                reason,
                ..
            } => PeftError::Field {
                path: Some(file.into()),
                field,
                value,
                reason,
            },
            other => other,
        }
    }
}

impl fmt::Display for PeftError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeftError::Io { path, error } => write!(f, "无法读取 {}：{error}", path.display()),
            PeftError::Json { path, error } => {
                write!(f, "{} 不是有效的 adapter_config.json：{error}", path.display())
            }
            PeftError::Field {
                path,
                field,
                value,
                reason,
            } => {
                if let Some(p) = path {
                    write!(f, "{}：", p.display())?;
                }
                write!(f, "LoRA 配置的字段 {field} = {value}：{reason}")
            }
            PeftError::Checkpoint(e) => e.fmt(f),
            PeftError::Mismatch {
                field,
                config,
                model,
            } => write!(
                f,
                "LoRA 配置与模型类型不一致：字段 {field} 在配置中为 {config}，编译好的模型为 {model}"
            ),
        }
    }
}

impl std::error::Error for PeftError {}

impl From<crate::checkpoint::CheckpointError> for PeftError {
    fn from(e: crate::checkpoint::CheckpointError) -> Self {
        PeftError::Checkpoint(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> TargetModules {
        TargetModules::Names(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn resolves_names_like_peft() {
        let q_v = [true, false, true, false, false, false];
        assert_eq!(resolve_targets(&names(&["query", "value"]), 2), Ok(q_v));
        assert_eq!(
            resolve_targets(&names(&["self.query", "attention.self.value"]), 2),
            Ok(q_v)
        );
        // "output.dense" 是 attention.output.dense 与 output.dense 两者的后缀
        assert_eq!(
            resolve_targets(&names(&["output.dense"]), 2),
            Ok([false, false, false, true, false, true])
        );
        assert_eq!(
            resolve_targets(&TargetModules::Regex(r".*\.(query|key|value)".into()), 3),
            Ok([true, true, true, false, false, false])
        );
    }

    #[test]
    fn unsupported_targets_name_the_field() {
        let err = resolve_targets(&names(&["query", "quer"]), 2)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("LoRA 配置的字段 target_modules = \"quer\"：没有匹配到"),
            "{err}"
        );
        // "dense" 也匹配 bert.pooler.dense
        let err = resolve_targets(&names(&["dense"]), 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("匹配到了模块 bert.pooler.dense"), "{err}");
        let err = resolve_targets(&names(&["LayerNorm"]), 2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("匹配到了模块 bert.embeddings.LayerNorm"),
            "{err}"
        );
        // 只选第 0 层
        let err = resolve_targets(
            &TargetModules::Regex(r"bert\.encoder\.layer\.0\.attention\.self\.query".into()),
            2,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("第 0 层与第 1 层选中的线性层不同"), "{err}");
    }

    #[test]
    fn reads_what_peft_writes_and_rejects_what_it_cannot_do() {
        let peft = r#"{"alpha_pattern": {}, "bias": "none", "fan_in_fan_out": false,
            "lora_alpha": 32, "lora_dropout": 0.1, "modules_to_save": ["classifier", "score"],
            "peft_type": "LORA", "peft_version": "0.21.2", "r": 16, "rank_pattern": {},
            "target_modules": ["value", "query"], "task_type": "SEQ_CLS", "use_dora": false,
            "loftq_config": {}, "layers_to_transform": null}"#;
        let cfg: LoraConfig = serde_json::from_str(peft).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.scaling(), 2.0);
        // 写回时保留说明性字段，α 仍是整数
        let back = cfg.to_json();
        assert!(back.contains("\"peft_version\": \"0.21.2\""), "{back}");
        assert!(back.contains("\"lora_alpha\": 32,"), "{back}");
        let again: LoraConfig = serde_json::from_str(&back).unwrap();
        assert_eq!(again, cfg);

        for (patch, field) in [
            (r#""use_dora": true"#, "use_dora"),
            (r#""bias": "all""#, "bias"),
            (r#""rank_pattern": {"query": 4}"#, "rank_pattern"),
            (r#""r": 0"#, "r"),
            (r#""lora_dropout": 1.0"#, "lora_dropout"),
            (r#""peft_type": "IA3""#, "peft_type"),
        ] {
            let mut v: serde_json::Map<String, Value> = serde_json::from_str(peft).unwrap();
            let (k, val) = patch.split_once(": ").unwrap();
            v.insert(
                k.trim_matches('"').into(),
                serde_json::from_str(val).unwrap(),
            );
            let cfg: LoraConfig = serde_json::from_value(Value::Object(v)).unwrap();
            let err = cfg.validate().unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("LoRA 配置的字段 {field} = ")),
                "{err}"
            );
        }
    }

    #[test]
    fn rslora_scales_by_the_square_root() {
        let mut cfg = LoraConfig::seq_cls(16, 32.0, &["query"], 0.0);
        cfg.use_rslora = true;
        assert_eq!(cfg.scaling(), 8.0);
    }
}
