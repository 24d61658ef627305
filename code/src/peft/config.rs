//! 3.4 节：PEFT 的 `adapter_config.json`。
//!
//! [`LoraConfig`] 的 JSON 就是 PEFT 保存的 `adapter_config.json`：本书读得懂 PEFT 写的文件，PEFT 也读得懂本书写的。
//! 本书实现了其中的 LoRA 核心（r、lora_alpha、target_modules、lora_dropout、use_rslora、modules_to_save）、
//! 按模块的变化（rank_pattern、alpha_pattern、layers_to_transform、layers_pattern）、DoRA（use_dora，4.2 节）
//! 与 AdaLoRA（`peft_type: "ADALORA"`，4.4 节；它的超参数见 [`AdaLoraSettings`]）；
//! 其余会改变模型行为的选项（偏置训练、LoftQ……）只要取了非默认值，就给出指明字段的错误，
//! 而不是悄悄忽略。纯说明性的字段（peft_version、revision……）原样保留，保存时写回。
//!
//! [`LoraConfig::plan`] 按 PEFT 的规则把配置解析成“哪一层的哪个线性层、秩多少、缩放多少”：
//! 读权重、分词、建输出目录之前，配置与模型（`config.json` 的层数与宽度）就核对完了。

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

// ANCHOR: config
/// PEFT 的 LoRA 配置（`adapter_config.json`）。字段名、默认值与 PEFT 相同。
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// `"LORA"`，或 `"ADALORA"`（4.4 节：SVD 形式的适配器，按重要性分配秩，超参数见 [`LoraConfig::adalora`]）。
    #[serde(default = "default_peft_type")]
    pub peft_type: String,
    /// 任务类型；序列分类是 `"SEQ_CLS"`（此时分类头自动加入 `modules_to_save`）。
    #[serde(default)]
    pub task_type: Option<String>,
    /// 秩 r（AdaLoRA 不用它，用 `init_r`）。
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
    /// 整个训练（并随适配器保存）的模块：序列分类时是分类头 `classifier`；还可以加上池化层 `pooler`
    /// （检查点里没有池化层时——`BertForMaskedLM` 存的文件——它是随机新建的，不训练就是一层冻结的随机变换）。
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// rsLoRA：缩放系数取 α/√r。
    #[serde(default)]
    pub use_rslora: bool,
    /// DoRA（4.2 节）：每个选中的线性层再加一个按输出行的长度向量 m，权重写成 m·(W + s·BA)/‖W + s·BA‖。
    #[serde(default)]
    pub use_dora: bool,
    /// 怎样初始化 A、B（4.3 节）：`true`（默认：A 取 Kaiming 均匀分布、B = 0）、`false`、`"gaussian"`、`"pissa"`、`"olora"`。
    /// 原样保留文件里的值（布尔或字符串），用 [`init`](Self::init) 读出它的意思。
    #[serde(default = "default_init")]
    pub init_lora_weights: Value,
    /// 按模块的秩：键按 PEFT 的 `get_pattern_key` 与模块名匹配（模块名的后缀，或正则），没匹配到的用 r。
    /// AdaLoRA 写的是另一种：每个模块的 init_r 个奇异值各自留下没有（见 [`RankPattern`]）。
    #[serde(default)]
    pub rank_pattern: RankPattern,
    /// 按模块的 α（同上）。
    #[serde(default)]
    pub alpha_pattern: Pattern<f64>,
    /// 只给这些层加 LoRA（一个编号或编号的列表；`None` 为全部层）。
    #[serde(default)]
    pub layers_to_transform: Option<OneOrMany<usize>>,
    /// 从模块名里找层号时用的名字（BERT 是 `layer`；`None` 时取模块名里的第一个编号）。
    #[serde(default)]
    pub layers_pattern: Option<OneOrMany<String>>,
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

/// `rank_pattern` 的两种写法。
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum RankPattern {
    /// LoRA：按模块名匹配的秩，如 `{"value": 2}`。
    Ranks(Pattern<usize>),
    /// AdaLoRA（4.4 节）：键是 `模块名.lora_E`，值是 init_r 个布尔——第 i 个奇异值（A 的第 i 行、E 的第 i 个、
    /// B 的第 i 列）留下没有。PEFT 在训练中写它，存盘时按它裁掉没留下的行、列。
    Kept(Pattern<Vec<bool>>),
}
// ANCHOR_END: config

impl Default for RankPattern {
    fn default() -> Self {
        RankPattern::Ranks(Pattern::default())
    }
}

impl RankPattern {
    /// 是否为空（`{}` 或 `null`）。
    pub fn is_empty(&self) -> bool {
        match self {
            RankPattern::Ranks(p) => p.0.is_empty(),
            RankPattern::Kept(p) => p.0.is_empty(),
        }
    }

    /// LoRA 写法的各项（AdaLoRA 的写法没有整数的秩，返回空）。
    pub fn ranks(&self) -> &[(String, usize)] {
        match self {
            RankPattern::Ranks(p) => &p.0,
            RankPattern::Kept(_) => &[],
        }
    }
}

impl Serialize for RankPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            RankPattern::Ranks(p) => p.serialize(s),
            RankPattern::Kept(p) => {
                let mut map = s.serialize_map(Some(p.0.len()))?;
                for (k, v) in &p.0 {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

// ANCHOR: scaling_rule
/// LoRA 缩放系数的两种取法（4.1 节）。
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scaling {
    /// 原始 LoRA：s = α/r。
    Standard,
    /// rsLoRA（PEFT 的 `use_rslora`）：s = α/√r。
    RankStabilized,
}

impl Scaling {
    /// 秩为 r、α 给定时的缩放系数。
    pub fn factor(self, alpha: f64, r: usize) -> f64 {
        match self {
            Scaling::Standard => alpha / r as f64,
            Scaling::RankStabilized => alpha / (r as f64).sqrt(),
        }
    }
}
// ANCHOR_END: scaling_rule

/// 按模块名匹配的表（`rank_pattern`、`alpha_pattern`），保持文件里的顺序：PEFT 取第一个匹配的键。
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pattern<T>(pub Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Pattern<T> {
    fn deserialize<De: serde::Deserializer<'de>>(d: De) -> Result<Self, De::Error> {
        struct Entries<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Entries<T> {
            type Value = Pattern<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("模块名到取值的表")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Pattern(entries))
            }
            fn visit_unit<Er: serde::de::Error>(self) -> Result<Self::Value, Er> {
                Ok(Pattern(Vec::new()))
            }
        }
        d.deserialize_any(Entries(std::marker::PhantomData))
    }
}

/// `rank_pattern`（整数）与 `alpha_pattern`（数）的取值。
pub trait PatternValue: Copy {
    /// 写成 JSON 时的数值。
    fn as_f64(self) -> f64;
}
impl PatternValue for usize {
    fn as_f64(self) -> f64 {
        self as f64
    }
}
impl PatternValue for f64 {
    fn as_f64(self) -> f64 {
        self
    }
}

impl<T: PatternValue> Serialize for Pattern<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, &Whole(v.as_f64()))?;
        }
        map.end()
    }
}

/// 整数写成整数（PEFT 写的 `16`），否则写小数。
struct Whole(f64);
impl Serialize for Whole {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        integer_if_whole(&self.0, s)
    }
}

impl<T: Copy> Pattern<T> {
    /// PEFT 的 `get_pattern_key`：第一个与模块名匹配的键（`^(.*\.)?(键)$`）的取值。
    fn lookup(&self, field: &str, module: &str) -> Result<Option<T>, PeftError> {
        for (key, value) in &self.0 {
            let re = regex::Regex::new(&format!("^(?:.*\\.)?(?:{key})$")).map_err(|e| {
                PeftError::Field {
                    path: None,
                    field: field.into(),
                    value: format!("{key:?}"),
                    reason: format!("不是合法的正则表达式：{e}"),
                }
            })?;
            if re.is_match(module) {
                return Ok(Some(*value));
            }
        }
        Ok(None)
    }
}

impl LoraConfig {
    /// LoRA 写法的 `rank_pattern` 里第一个与模块名匹配的秩。
    fn rank_pattern_lookup(&self, module: &str) -> Result<Option<usize>, PeftError> {
        match &self.rank_pattern {
            RankPattern::Ranks(p) => p.lookup("rank_pattern", module),
            RankPattern::Kept(_) => Ok(None),
        }
    }
}

/// 一个值或一个列表（PEFT 的 `Union[int, List[int]]`、`Union[str, List[str]]`）。
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// 一个。
    One(T),
    /// 多个。
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn as_slice(&self) -> &[T] {
        match self {
            OneOrMany::One(v) => std::slice::from_ref(v),
            OneOrMany::Many(v) => v,
        }
    }
}

fn default_peft_type() -> String {
    "LORA".into()
}
fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    8.0
}
fn default_init() -> Value {
    Value::Bool(true)
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
const UNSUPPORTED: [(&str, &str); 8] = [
    (
        "fan_in_fan_out",
        "按 (in, out) 存放的权重（GPT-2 的 Conv1D）",
    ),
    ("layer_replication", "层的复制"),
    ("exclude_modules", "排除的模块"),
    ("lora_bias", "LoRA 分支的偏置"),
    ("loftq_config", "LoftQ 初始化"),
    ("trainable_token_indices", "只训练部分词嵌入"),
    ("target_parameters", "直接给参数（而非模块）加 LoRA"),
    ("use_qalora", "QA-LoRA"),
];

// ANCHOR: adalora_settings
/// AdaLoRA 的超参数（4.4 节）：`peft_type` 为 `"ADALORA"` 时 `adapter_config.json` 里多出的字段，名字与默认值同 PEFT 的
/// `AdaLoraConfig`。训练分三段：前 `tinit` 步不剪；之后预算（全部模块保留的奇异值个数之和）按三次方从 init_r × 模块数
/// 降到 target_r × 模块数，每 `deltaT` 步按重要性剪一次；最后 `tfinal` 步固定各模块的秩，只训练。
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaLoraSettings {
    /// 每个模块一开始的秩（PEFT 的 `init_r`，默认 12）。
    pub init_r: usize,
    /// 最后平均每个模块的秩（`target_r`，默认 8）。
    pub target_r: usize,
    /// 开头不剪的步数（`tinit`，默认 0）。
    pub tinit: usize,
    /// 结尾固定秩的步数（`tfinal`，默认 0）。
    pub tfinal: usize,
    /// 每隔几步剪一次（`deltaT`，默认 1）。
    pub delta_t: usize,
    /// 重要性的指数滑动平均系数（`beta1`，默认 0.85）。
    pub beta1: f64,
    /// 不确定性的指数滑动平均系数（`beta2`，默认 0.85）。
    pub beta2: f64,
    /// 正交正则的权重（`orth_reg_weight`，默认 0.5）。
    pub orth_reg_weight: f64,
    /// 训练的总步数（`total_step`，必填）：预算的时间表按它排。
    pub total_step: usize,
}
// ANCHOR_END: adalora_settings

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
            use_dora: false,
            init_lora_weights: default_init(),
            rank_pattern: RankPattern::default(),
            alpha_pattern: Pattern::default(),
            layers_to_transform: None,
            layers_pattern: None,
            base_model_name_or_path: None,
            inference_mode: false,
            other: BTreeMap::new(),
        }
    }

    /// `init_lora_weights` 的意思；本书没有实现的取值（`"loftq"`、`"eva"`、`"corda"`、随机化的 `"pissa_niter_K"` 等）报错并指明字段。
    pub fn init(&self) -> Result<InitLoraWeights, PeftError> {
        let v = &self.init_lora_weights;
        let init = match v {
            Value::Bool(true) => Some(InitLoraWeights::Kaiming),
            Value::Bool(false) => Some(InitLoraWeights::Uniform),
            Value::String(s) => match s.as_str() {
                // 大小写与 PEFT 的判断相同：gaussian、olora 不分大小写，pissa 要小写
                s if s.eq_ignore_ascii_case("gaussian") => Some(InitLoraWeights::Gaussian),
                s if s.eq_ignore_ascii_case("olora") => Some(InitLoraWeights::Olora),
                "pissa" => Some(InitLoraWeights::Pissa),
                _ => None,
            },
            _ => None,
        };
        init.ok_or_else(|| PeftError::Field {
            path: None,
            field: "init_lora_weights".into(),
            value: v.to_string(),
            reason: "本书只实现了 true、false、\"gaussian\"、\"pissa\"、\"olora\"（4.3 节）".into(),
        })
    }

    /// AdaLoRA 的超参数（`peft_type` 不是 `"ADALORA"` 时为 `None`）。字段缺省时取 PEFT 的默认值；
    /// 类型不对、取值不合 PEFT 的要求（`total_step` 缺省或为 0、没有剪枝的阶段……）都是指明字段的错误。
    pub fn adalora(&self) -> Result<Option<AdaLoraSettings>, PeftError> {
        if self.peft_type != "ADALORA" {
            return Ok(None);
        }
        fn get<T: serde::de::DeserializeOwned>(
            other: &BTreeMap<String, Value>,
            field: &str,
            default: Option<T>,
        ) -> Result<T, PeftError> {
            let bad = |reason: String| PeftError::Field {
                path: None,
                field: field.into(),
                value: other.get(field).map_or("null".into(), |v| v.to_string()),
                reason,
            };
            match other.get(field).filter(|v| !v.is_null()) {
                Some(v) => {
                    serde_json::from_value(v.clone()).map_err(|e| bad(format!("类型不对：{e}")))
                }
                None => default
                    .ok_or_else(|| bad("AdaLoRA 必须给出训练的总步数（PEFT 同样要求）".into())),
            }
        }
        let o = &self.other;
        let s = AdaLoraSettings {
            init_r: get(o, "init_r", Some(12))?,
            target_r: get(o, "target_r", Some(8))?,
            tinit: get(o, "tinit", Some(0))?,
            tfinal: get(o, "tfinal", Some(0))?,
            delta_t: get(o, "deltaT", Some(1))?,
            beta1: get(o, "beta1", Some(0.85))?,
            beta2: get(o, "beta2", Some(0.85))?,
            orth_reg_weight: get(o, "orth_reg_weight", Some(0.5))?,
            total_step: get(o, "total_step", None)?,
        };
        let bad = |field: &str, value: String, reason: &str| {
            Err(PeftError::Field {
                path: None,
                field: field.into(),
                value,
                reason: reason.into(),
            })
        };
        if s.init_r == 0 {
            return bad("init_r", "0".into(), "秩必须 ≥ 1");
        }
        if s.target_r > s.init_r {
            return bad(
                "target_r",
                s.target_r.to_string(),
                &format!("最后的平均秩不能超过一开始的秩 init_r = {}", s.init_r),
            );
        }
        if s.delta_t == 0 {
            return bad("deltaT", "0".into(), "剪枝的间隔必须 ≥ 1");
        }
        for (field, beta) in [("beta1", s.beta1), ("beta2", s.beta2)] {
            if !(beta > 0.0 && beta < 1.0) {
                return bad(field, beta.to_string(), "滑动平均的系数必须在 (0, 1) 之内");
            }
        }
        if !(s.orth_reg_weight.is_finite() && s.orth_reg_weight >= 0.0) {
            return bad(
                "orth_reg_weight",
                s.orth_reg_weight.to_string(),
                "必须是非负数",
            );
        }
        if s.total_step == 0 {
            return bad("total_step", "0".into(), "训练的总步数必须 ≥ 1");
        }
        if s.tinit + s.tfinal >= s.total_step {
            return bad(
                "tinit",
                s.tinit.to_string(),
                &format!(
                    "tinit + tfinal = {} 不小于 total_step = {}，没有剪枝的阶段（PEFT 同样拒绝）",
                    s.tinit + s.tfinal,
                    s.total_step
                ),
            );
        }
        Ok(Some(s))
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
    /// LoRA 分支的缩放系数：α/r，rsLoRA 时 α/√r（没有按模块改秩与 α 的模块）。
    pub fn scaling(&self) -> f64 {
        self.scaling_for(self.r, self.lora_alpha)
    }

    /// 秩 r、α 的模块的缩放系数。
    pub fn scaling_for(&self, r: usize, alpha: f64) -> f64 {
        let rule = if self.use_rslora {
            Scaling::RankStabilized
        } else {
            Scaling::Standard
        };
        rule.factor(alpha, r)
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

    /// 池化层是否整个训练（`modules_to_save` 含 `pooler`）：这时它不加 LoRA，副本随适配器保存。
    pub fn trains_pooler(&self) -> bool {
        self.modules_to_save.iter().flatten().any(|m| m == "pooler")
    }

    /// 整个训练、不加 LoRA 的模块：`modules_to_save`，SEQ_CLS 时另加 `classifier`、`score`（PEFT 的做法）。
    fn saved_modules(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .modules_to_save
            .iter()
            .flatten()
            .map(|s| s.as_str())
            .collect();
        if self.task_type.as_deref() == Some("SEQ_CLS") {
            out.extend(["classifier", "score"]);
        }
        out
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
        if self.peft_type != "LORA" && self.peft_type != "ADALORA" {
            return bad(
                "peft_type",
                self.peft_type.clone(),
                "本书只实现 LoRA 与 AdaLoRA（应为 \"LORA\" 或 \"ADALORA\"）",
            );
        }
        if self.adalora()?.is_some() {
            // PEFT 的 AdaLoRA 拒绝 DoRA；其余几项它悄悄不用——本书报错，免得以为它们起了作用
            if self.use_dora {
                return bad(
                    "use_dora",
                    "true".into(),
                    "AdaLoRA 不支持 DoRA（PEFT 同样拒绝）",
                );
            }
            if self.use_rslora {
                return bad(
                    "use_rslora",
                    "true".into(),
                    "AdaLoRA 的缩放固定为 lora_alpha/init_r（PEFT 不看 use_rslora）",
                );
            }
            if self.init_lora_weights != Value::Bool(true) {
                return bad(
                    "init_lora_weights",
                    self.init_lora_weights.to_string(),
                    "AdaLoRA 的 A、B 取 N(0, 0.02²)、E = 0，只接受 true",
                );
            }
            if !self.alpha_pattern.0.is_empty() {
                return bad(
                    "alpha_pattern",
                    format!("{:?}", self.alpha_pattern.0),
                    "AdaLoRA 各模块都用 lora_alpha（PEFT 不看 alpha_pattern）",
                );
            }
            if let RankPattern::Ranks(p) = &self.rank_pattern {
                if let Some((k, r)) = p.0.first() {
                    return bad(
                        "rank_pattern",
                        format!("{{{k:?}: {r}}}"),
                        "AdaLoRA 的 rank_pattern 是每个模块的布尔列表（训练时由 PEFT 写出），不是整数的秩",
                    );
                }
            }
        } else if let RankPattern::Kept(p) = &self.rank_pattern {
            if let Some((k, _)) = p.0.first() {
                return bad(
                    "rank_pattern",
                    format!("{{{k:?}: [...]}}"),
                    "布尔列表的 rank_pattern 只属于 AdaLoRA（peft_type 应为 \"ADALORA\"）",
                );
            }
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
            if !["classifier", "score", "pooler"].contains(&m.as_str()) {
                return bad(
                    "modules_to_save",
                    format!("{m:?}"),
                    "本书只支持整个训练分类头 classifier 与池化层 pooler",
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
        if let Some((k, _)) = self.rank_pattern.ranks().iter().find(|(_, r)| *r == 0) {
            return bad("rank_pattern", format!("{{{k:?}: 0}}"), "秩必须 ≥ 1");
        }
        if let Some((k, a)) = self
            .alpha_pattern
            .0
            .iter()
            .find(|(_, a)| !(a.is_finite() && *a > 0.0))
        {
            return bad("alpha_pattern", format!("{{{k:?}: {a}}}"), "必须是正数");
        }
        if matches!(self.target_modules, TargetModules::Regex(_)) {
            // 与 PEFT 的 LoraConfig.__post_init__ 相同
            if let Some(l) = &self.layers_to_transform {
                return bad(
                    "layers_to_transform",
                    format!("{l:?}"),
                    "target_modules 是正则表达式时不能再用 layers_to_transform（PEFT 同样拒绝）",
                );
            }
        }
        let init = self.init()?;
        if init.rewrites_base() && self.use_dora {
            return bad(
                "init_lora_weights",
                self.init_lora_weights.to_string(),
                "本书没有实现 PiSSA、OLoRA 与 DoRA（use_dora = true）一起用",
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
/// BERT 编码器层里六个可加 LoRA 的线性层在 PEFT（即 HF 模型）中的模块名（相对 `bert.encoder.layer.i`）。
pub const LAYER_LINEARS: [&str; 6] = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

/// 池化层的线性层：`target_modules` 里的 `dense` 也匹配它。
pub const POOLER_DENSE: &str = "bert.pooler.dense";

/// `BertForSequenceClassification` 中编码器层以外、不是线性层的模块名（PEFT 按全部模块名匹配 `target_modules`）。
const OTHER_MODULES: [&str; 12] = [
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
    "bert.pooler.activation",
    "dropout",
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

/// 一个被选中的线性层：秩、α 与缩放系数。
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SiteSpec {
    /// 秩 r。
    pub r: usize,
    /// α。
    pub lora_alpha: f64,
    /// 缩放系数 α/r（rsLoRA 时 α/√r）。
    pub scaling: f64,
    /// 是否 DoRA（`use_dora`）：多一个长度向量。
    pub dora: bool,
    /// A、B 的初始化（`init_lora_weights`，4.3 节）。
    pub init: InitLoraWeights,
    /// 是否 AdaLoRA 的 SVD 形式（4.4 节）：多一个奇异值向量 E，增量是 s·B·diag(E)·A，A、B 取 N(0, 0.02²)、E = 0。
    pub svd: bool,
}

// ANCHOR: adalora_scaling
/// AdaLoRA 的缩放系数：PEFT 的 `SVDLinear` 把分支乘以 lora_alpha/(ranknum + 1e-5)，ranknum 是 init_r——
/// 剪掉奇异值、甚至存盘时裁小了矩阵，它也不变。
pub fn adalora_scaling(lora_alpha: f64, init_r: usize) -> f64 {
    lora_alpha / (init_r as f64 + 1e-5)
}
// ANCHOR_END: adalora_scaling

// ANCHOR: init_kind
/// `init_lora_weights` 的几种取值（4.3 节）。
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum InitLoraWeights {
    /// `true`：A ~ U(−1/√d_in, 1/√d_in)（PyTorch 对 `nn.Linear` 的 Kaiming 均匀分布），B = 0。
    #[default]
    Kaiming,
    /// `false`：A、B 都取 PyTorch 线性层的默认初始化（B 也不是 0，一开始就改变输出；PEFT 说只用于调试）。
    Uniform,
    /// `"gaussian"`：A ~ N(0, (1/r)²)，B = 0。
    Gaussian,
    /// `"pissa"`：W 的前 r 个奇异值与奇异向量，s·BA = U_r Σ_r V_rᵀ；基座换成剩下的 W − s·BA。
    Pissa,
    /// `"olora"`：W = QR，B = Q 的前 r 列，A = R 的前 r 行；基座换成 W − s·BA。
    Olora,
}

impl InitLoraWeights {
    /// 是否改写基座的权重（PiSSA、OLoRA：W ← W − s·B₀A₀）。
    pub fn rewrites_base(self) -> bool {
        matches!(self, Self::Pissa | Self::Olora)
    }

    /// 写进 `adapter_config.json` 的值（与 PEFT 写的相同）。
    pub fn to_value(self) -> Value {
        match self {
            Self::Kaiming => Value::Bool(true),
            Self::Uniform => Value::Bool(false),
            Self::Gaussian => "gaussian".into(),
            Self::Pissa => "pissa".into(),
            Self::Olora => "olora".into(),
        }
    }
}
// ANCHOR_END: init_kind

/// 解析好的适配器：每层六个位置（顺序同 [`LAYER_LINEARS`]）与池化层，选中的有 [`SiteSpec`]。
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterPlan {
    /// 每层。
    pub layers: Vec<[Option<SiteSpec>; 6]>,
    /// 池化层。
    pub pooler: Option<SiteSpec>,
    /// `target_modules` 里没有匹配到任何模块的名字（PEFT 不报错；命令行提示一句）。
    pub unmatched: Vec<String>,
}

impl AdapterPlan {
    /// 选中的模块名（PEFT 的写法，按模型里的顺序）与它们的 [`SiteSpec`]。
    pub fn modules(&self) -> Vec<(String, SiteSpec)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for (name, spec) in LAYER_LINEARS.iter().zip(layer) {
                if let Some(spec) = spec {
                    out.push((format!("bert.encoder.layer.{i}.{name}"), *spec));
                }
            }
        }
        if let Some(spec) = self.pooler {
            out.push((POOLER_DENSE.to_string(), spec));
        }
        out
    }
}

/// 模块名里的层号：PEFT 的 `check_target_module_exists` 的写法（找第一个编号）。
fn layer_index(module: &str, patterns: Option<&OneOrMany<String>>) -> Option<usize> {
    let res: Vec<String> = match patterns.map(|p| p.as_slice()).filter(|p| !p.is_empty()) {
        None => vec![r"^.*?\.[^.]*\.(\d+)\.".into()],
        Some(ps) => ps
            .iter()
            .map(|p| format!(r"^(?:.*?\.)?{p}\.(\d+)\."))
            .collect(),
    };
    res.iter().find_map(|re| {
        let caps = regex::Regex::new(re).ok()?.captures(module)?;
        caps[1].parse().ok()
    })
}

impl LoraConfig {
    /// 按 PEFT 的规则解析出每个被选中的线性层与它的秩、α：
    /// - `target_modules` 是列表时，模块名等于其中某项或以 `.某项` 结尾；是字符串时按正则与整个模块名匹配；
    /// - `modules_to_save` 里的模块（分类头，以及给了时的池化层）与它们里面的模块不加 LoRA；
    /// - 列表写法下，`layers_to_transform` 只留下这些层（层号按 `layers_pattern` 从模块名里找）；
    /// - `rank_pattern`、`alpha_pattern` 取第一个匹配的键，没有匹配的用 r、lora_alpha。
    ///
    /// 匹配到线性层以外的模块（层归一化、嵌入……）、什么也没匹配到、秩超过 min(输入, 输出)，都是指明字段的错误。
    /// `hidden`、`intermediate` 是模型的 hidden_size、intermediate_size。
    pub fn plan(
        &self,
        num_layers: usize,
        hidden: usize,
        intermediate: usize,
    ) -> Result<AdapterPlan, PeftError> {
        self.validate()?;
        let field = |name: &str, value: String, reason: String| PeftError::Field {
            path: None,
            field: name.into(),
            value,
            reason,
        };
        let regex = match &self.target_modules {
            TargetModules::Regex(pattern) => {
                Some(regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
                    field(
                        "target_modules",
                        format!("{pattern:?}"),
                        format!("不是合法的正则表达式：{e}"),
                    )
                })?)
            }
            TargetModules::Names(_) => None,
        };
        let mut used = match &self.target_modules {
            TargetModules::Names(n) => vec![false; n.len()],
            TargetModules::Regex(_) => vec![false],
        };
        let layers_filter = self
            .layers_to_transform
            .as_ref()
            .map(|l| l.as_slice())
            .filter(|l| !l.is_empty());
        // modules_to_save 里的模块与它们里面的模块（PEFT 的 `(^|.*\.)名字($|\..*)`）：整个训练，不加 LoRA
        let saved = self.saved_modules();
        let is_saved = |module: &str| module.split('.').any(|part| saved.contains(&part));
        // 这个模块是否被选中（PEFT 的 check_target_module_exists）
        let mut targeted = |module: &str| -> bool {
            if is_saved(module) {
                return false;
            }
            match (&self.target_modules, &regex) {
                (TargetModules::Regex(_), Some(re)) => {
                    let hit = re.is_match(module);
                    used[0] |= hit;
                    hit
                }
                (TargetModules::Names(names), _) => {
                    let (mut exact, mut suffix) = (false, false);
                    for (i, t) in names.iter().enumerate() {
                        if module == t {
                            exact = true;
                            used[i] = true;
                        } else if module.ends_with(&format!(".{t}")) {
                            suffix = true;
                            used[i] = true;
                        }
                    }
                    if exact {
                        return true;
                    }
                    match layers_filter {
                        Some(keep) if suffix => layer_index(module, self.layers_pattern.as_ref())
                            .is_some_and(|i| keep.contains(&i)),
                        _ => suffix,
                    }
                }
                _ => false,
            }
        };
        let mut unsupported = None;
        for m in OTHER_MODULES {
            if targeted(m) {
                unsupported.get_or_insert(m.to_string());
            }
        }
        // (模块名, (层, 位置) 或池化层, 输入与输出较小的一维)
        let mut sites: Vec<(String, Option<(usize, usize)>, usize)> = Vec::new();
        for layer in 0..num_layers {
            for m in LAYER_MODULES {
                let name = format!("bert.encoder.layer.{layer}.{m}");
                let name = name.trim_end_matches('.');
                if targeted(name) {
                    unsupported.get_or_insert(name.to_string());
                }
            }
            for (s, m) in LAYER_LINEARS.iter().enumerate() {
                let name = format!("bert.encoder.layer.{layer}.{m}");
                if targeted(&name) {
                    let fan = if s >= 4 {
                        hidden.min(intermediate)
                    } else {
                        hidden
                    };
                    sites.push((name, Some((layer, s)), fan));
                }
            }
        }
        if targeted(POOLER_DENSE) {
            sites.push((POOLER_DENSE.into(), None, hidden));
        }
        if let Some(m) = unsupported {
            return Err(field(
                "target_modules",
                format!("{:?}", self.target_modules),
                format!("匹配到了模块 {m}；本书的 BERT 只能给线性层加 LoRA（query、key、value、attention.output.dense、intermediate.dense、output.dense、bert.pooler.dense）"),
            ));
        }
        if sites.is_empty() {
            return Err(field(
                "target_modules",
                format!("{:?}", self.target_modules),
                "没有匹配到任何线性层（可用的名字：query、key、value、dense、attention.output.dense、intermediate.dense、output.dense）".into(),
            ));
        }
        let unmatched = match &self.target_modules {
            TargetModules::Names(names) => names
                .iter()
                .zip(&used)
                .filter(|(_, u)| !**u)
                .map(|(n, _)| n.clone())
                .collect(),
            TargetModules::Regex(_) => Vec::new(),
        };
        let mut plan = AdapterPlan {
            layers: vec![[None; 6]; num_layers],
            pooler: None,
            unmatched,
        };
        let adalora = self.adalora()?;
        if let (Some(_), RankPattern::Kept(kept)) = (adalora, &self.rank_pattern) {
            // AdaLoRA 的键是 模块名.lora_E，逐字对应（PEFT 的 resize_modules_by_rank_pattern）
            if let Some((key, _)) = (kept.0.iter()).find(|(k, _)| {
                !sites
                    .iter()
                    .any(|(name, _, _)| format!("{name}.lora_E") == **k)
            }) {
                return Err(field(
                    "rank_pattern",
                    format!("{key:?}"),
                    "不是这个配置选中的某个模块的 lora_E（应为 模块名.lora_E，如 bert.encoder.layer.0.attention.self.query.lora_E）".into(),
                ));
            }
        }
        for (name, site, fan) in sites {
            let spec = match adalora {
                None => {
                    let pattern_r = self.rank_pattern_lookup(&name)?;
                    let r = pattern_r.unwrap_or(self.r);
                    let alpha = self
                        .alpha_pattern
                        .lookup("alpha_pattern", &name)?
                        .unwrap_or(self.lora_alpha);
                    if r > fan {
                        return Err(field(
                            if pattern_r.is_some() {
                                "rank_pattern"
                            } else {
                                "r"
                            },
                            r.to_string(),
                            format!("模块 {name} 的输入、输出较小的一维只有 {fan}，秩不能超过它"),
                        ));
                    }
                    SiteSpec {
                        r,
                        lora_alpha: alpha,
                        scaling: self.scaling_for(r, alpha),
                        dora: self.use_dora,
                        init: self.init()?,
                        svd: false,
                    }
                }
                Some(ada) => {
                    if ada.init_r > fan {
                        return Err(field(
                            "init_r",
                            ada.init_r.to_string(),
                            format!("模块 {name} 的输入、输出较小的一维只有 {fan}，秩不能超过它"),
                        ));
                    }
                    // 存盘时按 rank_pattern 裁掉了没留下的奇异值：读回来的秩是留下的个数
                    let r = match &self.rank_pattern {
                        RankPattern::Kept(kept) => {
                            match kept.0.iter().find(|(k, _)| *k == format!("{name}.lora_E")) {
                                Some((k, keep)) if keep.len() != ada.init_r => {
                                    return Err(field(
                                        "rank_pattern",
                                        format!("{k:?}"),
                                        format!(
                                            "有 {} 个布尔，应为 init_r = {} 个",
                                            keep.len(),
                                            ada.init_r
                                        ),
                                    ))
                                }
                                Some((_, keep)) => keep.iter().filter(|k| **k).count(),
                                None => ada.init_r,
                            }
                        }
                        RankPattern::Ranks(_) => ada.init_r,
                    };
                    SiteSpec {
                        r,
                        lora_alpha: self.lora_alpha,
                        scaling: adalora_scaling(self.lora_alpha, ada.init_r),
                        dora: false,
                        init: InitLoraWeights::Kaiming,
                        svd: true,
                    }
                }
            };
            match site {
                Some((layer, s)) => plan.layers[layer][s] = Some(spec),
                None => plan.pooler = Some(spec),
            }
        }
        Ok(plan)
    }
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
    /// 按名字找适配器的问题（4.6 节：一个基座上的多个适配器）。
    Adapter {
        /// 适配器的名字。
        name: String,
        /// 原因。
        reason: String,
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
                write!(
                    f,
                    "{} 不是有效的 adapter_config.json：{error}",
                    path.display()
                )
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
            PeftError::Adapter { name, reason } => write!(f, "适配器 {name:?}：{reason}"),
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

    fn cfg(targets: TargetModules) -> LoraConfig {
        let mut c = LoraConfig::seq_cls(4, 8.0, &[], 0.0);
        c.target_modules = targets;
        c
    }

    fn names(v: &[&str]) -> TargetModules {
        TargetModules::Names(v.iter().map(|s| s.to_string()).collect())
    }

    /// 每层选中的位置（true/false）与池化层。
    fn sites(plan: &AdapterPlan) -> (Vec<[bool; 6]>, bool) {
        let layers = plan.layers.iter().map(|l| l.map(|s| s.is_some())).collect();
        (layers, plan.pooler.is_some())
    }

    #[test]
    fn resolves_names_like_peft() {
        let q_v = [true, false, true, false, false, false];
        let plan = cfg(names(&["query", "value"])).plan(2, 32, 48).unwrap();
        assert_eq!(sites(&plan), (vec![q_v; 2], false));
        let plan = cfg(names(&["self.query", "attention.self.value"]))
            .plan(2, 32, 48)
            .unwrap();
        assert_eq!(sites(&plan), (vec![q_v; 2], false));
        // "output.dense" 是 attention.output.dense 与 output.dense 两者的后缀
        let plan = cfg(names(&["output.dense"])).plan(2, 32, 48).unwrap();
        assert_eq!(
            sites(&plan).0,
            vec![[false, false, false, true, false, true]; 2]
        );
        let plan = cfg(TargetModules::Regex(r".*\.(query|key|value)".into()))
            .plan(3, 32, 48)
            .unwrap();
        assert_eq!(
            sites(&plan).0,
            vec![[true, true, true, false, false, false]; 3]
        );
        // PEFT 常用的 ["query", "key", "value", "dense"]：dense 匹配三种 dense，连池化层也在内
        let plan = cfg(names(&["query", "key", "value", "dense"]))
            .plan(2, 32, 48)
            .unwrap();
        assert_eq!(sites(&plan), (vec![[true; 6]; 2], true));
        assert_eq!(plan.modules().len(), 13);
        assert_eq!(plan.modules()[12].0, "bert.pooler.dense");
        // 一个正则只选第 0 层的 query：各层可以不同
        let plan = cfg(TargetModules::Regex(
            r"bert\.encoder\.layer\.0\.attention\.self\.query".into(),
        ))
        .plan(2, 32, 48)
        .unwrap();
        assert_eq!(
            sites(&plan).0,
            vec![[true, false, false, false, false, false], [false; 6]]
        );
    }

    #[test]
    fn patterns_and_layers_follow_peft() {
        // 与 tests/fixtures/make_peft_pattern_fixtures.py 的 pattern 适配器相同的配置（PEFT 解析出的秩与 α 见那里）
        let mut c = cfg(names(&["query", "value", "intermediate.dense"]));
        c.rank_pattern = RankPattern::Ranks(Pattern(vec![
            ("value".into(), 2),
            ("layer.1.attention.self.query".into(), 6),
        ]));
        c.alpha_pattern = Pattern(vec![("intermediate.dense".into(), 16.0)]);
        let plan = c.plan(2, 32, 48).unwrap();
        let got: Vec<(String, usize, f64)> = plan
            .modules()
            .into_iter()
            .map(|(n, s)| (n.replace("bert.encoder.layer.", ""), s.r, s.scaling))
            .collect();
        let expected = [
            ("0.attention.self.query", 4, 2.0),
            ("0.attention.self.value", 2, 4.0),
            ("0.intermediate.dense", 4, 4.0),
            ("1.attention.self.query", 6, 8.0 / 6.0),
            ("1.attention.self.value", 2, 4.0),
            ("1.intermediate.dense", 4, 4.0),
        ];
        assert_eq!(got.len(), expected.len());
        for ((n, r, s), (en, er, es)) in got.iter().zip(expected) {
            assert_eq!((n.as_str(), *r), (en, er));
            assert!((s - es).abs() < 1e-12, "{n}: {s} vs {es}");
        }
        // layers_to_transform + layers_pattern + rsLoRA（tiny-bert-peft-layers）
        let mut c = cfg(names(&["query", "value"]));
        c.r = 2;
        c.lora_alpha = 4.0;
        c.use_rslora = true;
        c.layers_to_transform = Some(OneOrMany::Many(vec![1]));
        c.layers_pattern = Some(OneOrMany::One("layer".into()));
        let plan = c.plan(2, 32, 48).unwrap();
        assert_eq!(
            sites(&plan).0,
            vec![[false; 6], [true, false, true, false, false, false]]
        );
        assert!((plan.layers[1][0].unwrap().scaling - 4.0 / 2f64.sqrt()).abs() < 1e-12);
        // 层号按第一个编号找（不给 layers_pattern 时也是第 1 层）
        c.layers_pattern = None;
        assert_eq!(c.plan(2, 32, 48).unwrap(), plan);
        // modules_to_save 含 pooler：池化层整个训练，"dense" 不再选中它（tiny-bert-peft-pooler 里 PEFT 包上的是 10 个模块）
        let mut c = cfg(names(&["query", "value", "dense"]));
        assert!(c.plan(2, 32, 48).unwrap().pooler.is_some());
        c.modules_to_save = Some(vec!["pooler".into()]);
        c.validate().unwrap();
        let plan = c.plan(2, 32, 48).unwrap();
        assert!(plan.pooler.is_none() && c.trains_pooler());
        assert_eq!(plan.modules().len(), 10);
    }

    #[test]
    fn unsupported_targets_name_the_field() {
        // 有一个名字没匹配到：与 PEFT 一样不报错，记在 unmatched 里
        let plan = cfg(names(&["query", "quer"])).plan(2, 32, 48).unwrap();
        assert_eq!(plan.unmatched, ["quer"]);
        let err = cfg(names(&["quer"]))
            .plan(2, 32, 48)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("LoRA 配置的字段 target_modules = "),
            "{err}"
        );
        assert!(err.contains("没有匹配到任何线性层"), "{err}");
        let err = cfg(names(&["LayerNorm"]))
            .plan(2, 32, 48)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("匹配到了模块 bert.embeddings.LayerNorm"),
            "{err}"
        );
        let err = cfg(names(&["attention"]))
            .plan(2, 32, 48)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("匹配到了模块 bert.encoder.layer.0.attention"),
            "{err}"
        );
        // 秩超过 min(输入, 输出)
        let mut c = cfg(names(&["query"]));
        c.r = 33;
        let err = c.plan(2, 32, 48).unwrap_err().to_string();
        assert!(err.starts_with("LoRA 配置的字段 r = 33："), "{err}");
        c.r = 4;
        c.rank_pattern = RankPattern::Ranks(Pattern(vec![("query".into(), 40)]));
        let err = c.plan(2, 32, 48).unwrap_err().to_string();
        assert!(
            err.starts_with("LoRA 配置的字段 rank_pattern = 40："),
            "{err}"
        );
        // 正则写法的 target_modules 不能再配 layers_to_transform（PEFT 同样拒绝）
        let mut c = cfg(TargetModules::Regex(".*query".into()));
        c.layers_to_transform = Some(OneOrMany::One(0));
        let err = c.plan(2, 32, 48).unwrap_err().to_string();
        assert!(
            err.starts_with("LoRA 配置的字段 layers_to_transform"),
            "{err}"
        );
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
            (r#""use_qalora": true"#, "use_qalora"),
            (r#""bias": "all""#, "bias"),
            (r#""rank_pattern": {"query": 0}"#, "rank_pattern"),
            (r#""alpha_pattern": {"query": -1}"#, "alpha_pattern"),
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

    /// AdaLoRA 的配置（4.4 节）：读得懂 PEFT 写的（布尔列表的 rank_pattern 写回时原样），秩由 rank_pattern 定，
    /// 缩放是 lora_alpha/init_r；PEFT 拒绝的、悄悄不用的取值都报错并指明字段。
    #[test]
    fn adalora_configs_follow_peft() {
        let path = crate::bert::hf::fixtures_dir()
            .join("tiny-bert-peft-adalora")
            .join("adapter_config.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let cfg = LoraConfig::from_json(&text).unwrap();
        let ada = cfg.adalora().unwrap().unwrap();
        assert_eq!((ada.init_r, ada.target_r, ada.total_step), (6, 2, 8));
        let again = LoraConfig::from_json(&cfg.to_json()).unwrap();
        assert_eq!(again, cfg);
        let plan = cfg.plan(2, 32, 48).unwrap();
        let ranks: Vec<usize> = plan.modules().iter().map(|(_, s)| s.r).collect();
        assert_eq!(ranks, [3, 2, 2, 1]);
        assert!(plan
            .modules()
            .iter()
            .all(|(_, s)| s.svd && s.scaling == adalora_scaling(8.0, 6)));
        // 没有 rank_pattern（训练前）：每个模块都是 init_r
        let mut fresh = cfg.clone();
        fresh.rank_pattern = RankPattern::default();
        assert!(fresh
            .plan(2, 32, 48)
            .unwrap()
            .modules()
            .iter()
            .all(|(_, s)| s.r == 6));

        let base: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
        let q = "bert.encoder.layer.0.attention.self.query.lora_E";
        for (field, value, fails_in_plan) in [
            ("total_step", Value::Null, false),
            ("total_step", serde_json::json!(0), false),
            ("tinit", serde_json::json!(6), false),
            ("target_r", serde_json::json!(7), false),
            ("init_r", serde_json::json!("six"), false),
            ("deltaT", serde_json::json!(0), false),
            ("beta1", serde_json::json!(1.0), false),
            ("orth_reg_weight", serde_json::json!(-1), false),
            ("use_dora", Value::Bool(true), false),
            ("use_rslora", Value::Bool(true), false),
            ("init_lora_weights", serde_json::json!("pissa"), false),
            ("alpha_pattern", serde_json::json!({"query": 4}), false),
            ("rank_pattern", serde_json::json!({"query": 4}), false),
            (
                "rank_pattern",
                serde_json::json!({"query.lora_E": [true]}),
                true,
            ),
            ("rank_pattern", serde_json::json!({q: [true, false]}), true),
            ("init_r", serde_json::json!(40), true),
        ] {
            let mut v = base.clone();
            v.insert(field.into(), value.clone());
            let cfg: LoraConfig = serde_json::from_value(Value::Object(v)).unwrap();
            let err = match fails_in_plan {
                false => cfg.validate().unwrap_err(),
                true => cfg.plan(2, 32, 48).unwrap_err(),
            }
            .to_string();
            assert!(
                err.starts_with(&format!("LoRA 配置的字段 {field} = ")),
                "{field} = {value}：{err}"
            );
        }
        // 布尔列表只属于 AdaLoRA
        let mut v = base.clone();
        v.insert("peft_type".into(), "LORA".into());
        let cfg: LoraConfig = serde_json::from_value(Value::Object(v)).unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.starts_with("LoRA 配置的字段 rank_pattern = "), "{err}");
    }
}
