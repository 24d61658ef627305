//! 3.4、3.5 节：`get_peft_model` 的对应物——给 BERT 加上 PEFT 格式的 LoRA；适配器的保存、加载与合并。
//!
//! [`PeftBert`] = 冻结的 BERT（[`BertParams`]，原样保留，含原来的分类头）+ 可训练的适配器
//! （第 2 部分的 [`LoraAdapters`]：每层选中线性层上的 A、B，以及分类头的副本——PEFT 的 `modules_to_save`）。
//! 秩与目标层在类型里，`adapter_config.json` 在构造时与类型核对；适配器按 PEFT 的键名读写，
//! Python 的 PEFT 可以直接加载，反之亦然。

use std::fmt;
use std::path::Path;

use crate::kernels::Kernels;
use dfdx::nn::modules::Linear;
use dfdx::nn::NumParams;
use dfdx::prelude::*;

use super::config::{resolve_targets, LoraConfig, PeftError, LAYER_LINEARS};
use crate::basics::tensors::Real;
use crate::bert::hf::hf_candidates;
use crate::bert::model::{BertOutput, BertParams};
use crate::checkpoint::{save_params_with, Checkpoint};
use crate::lora::encoder::{AdapterHooks, LayerAdapters, LoraAdapters, Targets};
use crate::lora::layer::LoraOptions;
use crate::transformer::attention::PaddingMask;
use crate::transformer::encoder::{EncoderConfig, InputError, Mode};

/// 适配器的配置文件名。
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// 适配器的权重文件名。
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

// ANCHOR: struct
/// 加了 LoRA 的 BERT 分类模型（PEFT 的 `PeftModelForSequenceClassification`）。
#[derive(Clone, Debug)]
pub struct PeftBert<
    const V: usize,
    const M: usize,
    const H: usize,
    const F: usize,
    const L: usize,
    const P: usize,
    const TT: usize,
    const C: usize,
    const R: usize,
    Tg: Targets,
    E: Dtype,
    D: Device<E>,
> {
    /// 冻结的基座（优化器看不到它）。
    pub base: BertParams<V, M, H, F, L, P, TT, C, E, D>,
    /// 可训练的部分：LoRA 的 A、B 与分类头的副本。
    pub adapters: LoraAdapters<M, F, L, C, R, Tg, E, D>,
    /// PEFT 的配置（保存时写成 `adapter_config.json`）。
    pub lora: LoraConfig,
    /// BERT 的超参数（来自 `config.json`）。
    pub config: EncoderConfig,
}
// ANCHOR_END: struct

/// 可训练参数与全部参数的个数（PEFT 的 `print_trainable_parameters`）。
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrainableParams {
    /// 可训练的。
    pub trainable: usize,
    /// 全部（冻结的基座 + 适配器 + 分类头的副本，与 PEFT 的计法相同）。
    pub all: usize,
}

impl fmt::Display for TrainableParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "可训练参数：{} || 全部参数：{} || 可训练占比：{:.4}%",
            thousands(self.trainable),
            thousands(self.all),
            100.0 * self.trainable as f64 / self.all as f64
        )
    }
}

/// 千位分隔：591362 → "591,362"（与 PEFT 的输出一样）。
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ANCHOR: check
/// 运行期的配置与编译期的类型核对：字段合法（[`LoraConfig::validate`]），秩 r 等于类型里的 R，
/// `target_modules` 按 PEFT 的规则解析出的线性层等于类型里的 `Tg`。
pub fn check_against_types<const R: usize, const L: usize, Tg: Targets>(
    lora: &LoraConfig,
) -> Result<(), PeftError> {
    lora.validate()?;
    if lora.r != R {
        return Err(PeftError::Mismatch {
            field: "r".into(),
            config: lora.r.to_string(),
            model: R.to_string(),
        });
    }
    let sites = resolve_targets(&lora.target_modules, L)?;
    if sites != Tg::SITES {
        let names = |s: [bool; 6]| {
            LAYER_LINEARS
                .iter()
                .zip(s)
                .filter(|(_, on)| *on)
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join("、")
        };
        return Err(PeftError::Mismatch {
            field: "target_modules".into(),
            config: names(sites),
            model: names(Tg::SITES),
        });
    }
    Ok(())
}
// ANCHOR_END: check

// ANCHOR: peft_key
/// 适配器的字段路径 → PEFT 保存的键名。
///
/// `layers.3.w_q.lora_a` → `base_model.model.bert.encoder.layer.3.attention.self.query.lora_A.weight`，
/// `head.weight` → `base_model.model.classifier.weight`（`modules_to_save` 的副本存为原模块的名字）。
pub fn peft_key(path: &str) -> String {
    if let Some(rest) = path.strip_prefix("head.") {
        return format!("base_model.model.classifier.{rest}");
    }
    const SITES: [&str; 6] = ["w_q", "w_k", "w_v", "w_o", "linear1", "linear2"];
    let parse = || {
        let rest = path.strip_prefix("layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        let (site, ab) = rest.split_once('.')?;
        let module = LAYER_LINEARS[SITES.iter().position(|s| *s == site)?];
        let ab = match ab {
            "lora_a" => "lora_A",
            "lora_b" => "lora_B",
            _ => return None,
        };
        Some(format!(
            "base_model.model.bert.encoder.layer.{layer}.{module}.{ab}.weight"
        ))
    };
    parse().unwrap_or_else(|| panic!("适配器里没有这样的字段路径：{path}"))
}
// ANCHOR_END: peft_key

impl<
        const V: usize,
        const M: usize,
        const H: usize,
        const F: usize,
        const L: usize,
        const P: usize,
        const TT: usize,
        const C: usize,
        const R: usize,
        Tg,
        E,
        D,
    > PeftBert<V, M, H, F, L, P, TT, C, R, Tg, E, D>
where
    Tg: Targets,
    E: Real,
    D: Kernels<E>,
{
    // ANCHOR: get_peft_model
    /// PEFT 的 `get_peft_model(model, config)`：核对配置与类型，新建适配器（A 随机、B = 0），
    /// 分类头复制一份来训练。基座原样保留。
    pub fn get_peft_model(
        base: BertParams<V, M, H, F, L, P, TT, C, E, D>,
        config: EncoderConfig,
        lora: LoraConfig,
    ) -> Result<Self, PeftError> {
        check_against_types::<R, L, Tg>(&lora)?;
        let dev = base.classifier.weight.device().clone();
        let layers = (0..L).map(|_| LayerAdapters::init(&dev)).collect();
        let head = base.classifier.clone();
        Ok(Self {
            base,
            adapters: LoraAdapters {
                layers: dfdx::nn::modules::Repeated { modules: layers },
                head,
            },
            lora,
            config,
        })
    }

    // ANCHOR_END: get_peft_model

    /// 第 2 部分的 LoRA 选项：缩放系数 α/r（rsLoRA 时 α/√r）写成等价的 α。
    pub fn options(&self) -> LoraOptions {
        LoraOptions {
            alpha: self.lora.scaling() * R as f64,
            dropout: self.lora.lora_dropout,
        }
    }

    /// 前向：BERT 的前向，每层经钩子加上 LoRA 分支，分类头用可训练的副本。
    pub fn forward<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        tokens: Tensor<(usize, usize), usize, D, T>,
        token_types: Option<Tensor<(usize, usize), usize, D>>,
        mask: &PaddingMask<E, D>,
        mode: Mode,
    ) -> Result<BertOutput<M, C, E, D, T>, InputError> {
        let opts = self.options();
        self.base.forward_with_head(
            &self.adapters.head,
            &self.config,
            tokens,
            token_types,
            mask,
            mode,
            |i| AdapterHooks {
                layer: &self.adapters.layers.modules[i],
                opts,
                mode,
            },
        )
    }

    // ANCHOR: trainable
    /// PEFT 的 `print_trainable_parameters` 所数的两个数。
    pub fn trainable_parameters(&self) -> TrainableParams {
        let trainable = self.adapters.num_trainable_params();
        TrainableParams {
            trainable,
            all: self.base.num_trainable_params() + trainable,
        }
    }
    // ANCHOR_END: trainable

    // ANCHOR: merge
    /// PEFT 的 `merge_and_unload`：把 (α/r)·BA 合并进基座的权重，分类头换成训练后的副本，
    /// 得到一个普通的 BERT（推理时与基座一样快，可存成 Hugging Face 的模型目录）。
    pub fn merge_and_unload(&self) -> BertParams<V, M, H, F, L, P, TT, C, E, D> {
        let mut merged = self.base.clone();
        let opts = self.options();
        for (layer, adapters) in merged
            .layers
            .modules
            .iter_mut()
            .zip(&self.adapters.layers.modules)
        {
            adapters.merge_into(layer, &opts);
        }
        merged.classifier = Linear {
            weight: self.adapters.head.weight.clone(),
            bias: self.adapters.head.bias.clone(),
        };
        merged
    }
    // ANCHOR_END: merge
}

impl<
        const V: usize,
        const M: usize,
        const H: usize,
        const F: usize,
        const L: usize,
        const P: usize,
        const TT: usize,
        const C: usize,
        const R: usize,
        Tg,
        E,
        D,
    > PeftBert<V, M, H, F, L, P, TT, C, R, Tg, E, D>
where
    Tg: Targets,
    E: Real + dfdx::tensor::safetensors::SafeDtype,
    D: Kernels<E>,
{
    // ANCHOR: save
    /// PEFT 的 `save_pretrained`：目录里写 `adapter_config.json` 与 `adapter_model.safetensors`（PEFT 的键名）。
    /// 整个目录原子地写入。
    pub fn save_pretrained(&self, dir: &Path) -> Result<(), PeftError> {
        let mut lora = self.lora.clone();
        lora.inference_mode = true;
        crate::io::write_dir_atomic(dir, |tmp| {
            save_params_with(&self.adapters, &tmp.join(ADAPTER_WEIGHTS), &|p| {
                Some(peft_key(p))
            })
            .map_err(|e| std::io::Error::other(e.to_string()))?;
            std::fs::write(tmp.join(ADAPTER_CONFIG), lora.to_json() + "\n")
        })
        .map_err(|e| PeftError::Io {
            path: dir.into(),
            error: e.to_string(),
        })
    }

    /// PEFT 的 `PeftModel.from_pretrained(base, dir)`：读适配器目录，装到基座上。
    pub fn from_pretrained(
        base: BertParams<V, M, H, F, L, P, TT, C, E, D>,
        config: EncoderConfig,
        dir: &Path,
    ) -> Result<Self, PeftError> {
        let lora = LoraConfig::read(&dir.join(ADAPTER_CONFIG))?;
        let mut model = Self::get_peft_model(base, config, lora)?;
        let weights = dir.join(ADAPTER_WEIGHTS);
        if !weights.exists() && dir.join("adapter_model.bin").exists() {
            return Err(PeftError::Io {
                path: weights,
                error: "只找到 PyTorch 的 adapter_model.bin；请用 PEFT 以 safetensors 格式保存（save_pretrained 的默认）".into(),
            });
        }
        Checkpoint::read(&weights)?.load_into_with(
            &mut model.adapters,
            &|path| vec![peft_key(path)],
            &|_| true,
        )?;
        Ok(model)
    }
    // ANCHOR_END: save
}

/// 把一个 BERT 存成 Hugging Face 的模型目录：`model.safetensors`（HF 的键名）、`config.json`
/// （取自 `config_from`，架构写成 `BertForSequenceClassification`、类别数写成 C）、分词器文件（从 `config_from` 复制）。
/// 整个目录原子地写入。
pub fn save_hf_dir<
    const V: usize,
    const M: usize,
    const H: usize,
    const F: usize,
    const L: usize,
    const P: usize,
    const TT: usize,
    const C: usize,
    E,
    D,
>(
    params: &BertParams<V, M, H, F, L, P, TT, C, E, D>,
    config_from: &Path,
    dir: &Path,
) -> Result<(), PeftError>
where
    E: Real + dfdx::tensor::safetensors::SafeDtype,
    D: Kernels<E>,
{
    let config_path = config_from.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| PeftError::Io {
        path: config_path.clone(),
        error: e.to_string(),
    })?;
    let mut config: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
        .map_err(|e| PeftError::Json {
            path: config_path.clone(),
            error: e.to_string(),
        })?;
    config.insert(
        "architectures".into(),
        serde_json::json!(["BertForSequenceClassification"]),
    );
    let labels = config
        .get("id2label")
        .and_then(|v| v.as_object())
        .map_or(0, |m| m.len());
    if labels != C {
        let id2label: serde_json::Map<_, _> = (0..C)
            .map(|i| (i.to_string(), serde_json::json!(format!("LABEL_{i}"))))
            .collect();
        let label2id: serde_json::Map<_, _> = (0..C)
            .map(|i| (format!("LABEL_{i}"), serde_json::json!(i)))
            .collect();
        config.insert("id2label".into(), id2label.into());
        config.insert("label2id".into(), label2id.into());
    }
    crate::io::write_dir_atomic(dir, |tmp| {
        save_params_with(params, &tmp.join("model.safetensors"), &|path| {
            Some(hf_candidates(path).remove(0))
        })
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        let json = serde_json::to_string_pretty(&serde_json::Value::Object(config))
            .map_err(std::io::Error::other)?;
        std::fs::write(tmp.join("config.json"), json + "\n")?;
        for f in [
            "vocab.txt",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ] {
            if config_from.join(f).exists() {
                std::fs::copy(config_from.join(f), tmp.join(f))?;
            }
        }
        Ok(())
    })
    .map_err(|e| PeftError::Io {
        path: dir.into(),
        error: e.to_string(),
    })
}

impl<
        const V: usize,
        const M: usize,
        const H: usize,
        const F: usize,
        const L: usize,
        const P: usize,
        const TT: usize,
        const C: usize,
        const R: usize,
        Tg,
        E,
        D,
    > crate::train::SequenceClassifier<C, E, D> for PeftBert<V, M, H, F, L, P, TT, C, R, Tg, E, D>
where
    Tg: Targets,
    E: Real,
    D: Kernels<E>,
{
    type Params = LoraAdapters<M, F, L, C, R, Tg, E, D>;
    fn params(&self) -> &Self::Params {
        &self.adapters
    }
    fn params_mut(&mut self) -> &mut Self::Params {
        &mut self.adapters
    }
    fn logits<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        tokens: Tensor<(usize, usize), usize, D, T>,
        mask: &PaddingMask<E, D>,
        mode: Mode,
    ) -> Result<Tensor<(usize, Const<C>), E, D, T>, InputError> {
        Ok(self.forward(tokens, None, mask, mode)?.logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bert::hf::{fixtures_dir, load_dir, max_error, reference_batch};
    use crate::bert::model::{BertBaseChinese, TinyBert};
    use crate::lora::encoder::{AllLinear, QueryValue};

    type TinyPeft<const R: usize, Tg> = PeftBert<64, 32, 4, 48, 2, 24, 2, 3, R, Tg, f32, Cpu>;

    fn tiny_base(dev: &Cpu) -> (TinyBert<f32, Cpu>, EncoderConfig) {
        let dir = load_dir::<64, 32, 4, 48, 2, 24, 2, 3, f32, Cpu>(
            dev,
            &fixtures_dir().join("tiny-bert"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        (dir.params, dir.config)
    }

    #[test]
    fn trainable_parameters_equal_pefts_count() {
        let dev: Cpu = Default::default();
        let (base, config) = tiny_base(&dev);
        let tiny = TinyPeft::<4, QueryValue>::get_peft_model(
            base,
            config,
            LoraConfig::seq_cls(4, 8.0, &["query", "value"], 0.1),
        )
        .unwrap();
        // PEFT 0.21.2 对同一个模型与配置打印：trainable params: 1,123 || all params: 20,230
        assert_eq!(
            tiny.trainable_parameters(),
            TrainableParams {
                trainable: 1_123,
                all: 20_230
            }
        );
        // bert-base-chinese，r = 16，query/value，2 类：PEFT 打印 591,362 / 102,860,548
        let base = BertBaseChinese::<f32, Cpu>::random(&dev);
        let big = PeftBert::<21128, 768, 12, 3072, 12, 512, 2, 2, 16, QueryValue, f32, Cpu>::get_peft_model(
            base,
            EncoderConfig::default(),
            LoraConfig::seq_cls(16, 32.0, &["query", "value"], 0.1),
        )
        .unwrap();
        let counts = big.trainable_parameters();
        assert_eq!(
            counts,
            TrainableParams {
                trainable: 591_362,
                all: 102_860_548
            }
        );
        assert_eq!(
            counts.to_string(),
            "可训练参数：591,362 || 全部参数：102,860,548 || 可训练占比：0.5749%"
        );
    }

    #[test]
    fn a_config_that_does_not_fit_the_type_is_refused() {
        let dev: Cpu = Default::default();
        let (base, config) = tiny_base(&dev);
        let err = TinyPeft::<4, QueryValue>::get_peft_model(
            base.clone(),
            config,
            LoraConfig::seq_cls(8, 16.0, &["query", "value"], 0.1),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "LoRA 配置与模型类型不一致：字段 r 在配置中为 8，编译好的模型为 4"
        );
        let err = TinyPeft::<4, QueryValue>::get_peft_model(
            base,
            config,
            LoraConfig::seq_cls(4, 8.0, &["query", "key", "value"], 0.1),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "LoRA 配置与模型类型不一致：字段 target_modules 在配置中为 attention.self.query、attention.self.key、attention.self.value，编译好的模型为 attention.self.query、attention.self.value"
        );
    }

    #[test]
    fn loads_an_adapter_saved_by_python_peft() {
        let dev: Cpu = Default::default();
        let (base, config) = tiny_base(&dev);
        let model = TinyPeft::<4, QueryValue>::from_pretrained(
            base,
            config,
            &fixtures_dir().join("tiny-bert-peft"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let reference =
            Checkpoint::read(&fixtures_dir().join("tiny-bert-peft-reference.safetensors")).unwrap();
        let (tokens, types, mask) = reference_batch(&reference, &dev);
        let logits = model
            .forward(tokens.clone(), Some(types.clone()), &mask, Mode::Eval)
            .unwrap()
            .logits
            .as_vec();
        let err = max_error(&logits, &reference, "logits");
        println!("PEFT 保存的适配器：logits 最大误差 {err:.2e}");
        assert!(err <= 1e-4, "{err}");
        // merge_and_unload 之后是一个普通的 BERT
        let merged = model.merge_and_unload();
        let merged_logits = merged
            .forward(&model.config, tokens, Some(types), &mask, Mode::Eval)
            .unwrap()
            .logits
            .as_vec();
        let err = max_error(&merged_logits, &reference, "merged_logits");
        println!("合并后：logits 最大误差 {err:.2e}");
        assert!(err <= 1e-4, "{err}");
    }

    #[test]
    fn a_missing_adapter_tensor_is_named() {
        let dev: Cpu = Default::default();
        let (base, config) = tiny_base(&dev);
        // 目标层多了 key：文件里没有 key 的 A、B
        let dir = std::env::temp_dir().join(format!("llm-book-peft-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = fixtures_dir().join("tiny-bert-peft");
        std::fs::copy(src.join(ADAPTER_WEIGHTS), dir.join(ADAPTER_WEIGHTS)).unwrap();
        let mut lora = LoraConfig::read(&src.join(ADAPTER_CONFIG)).unwrap();
        lora.target_modules = super::super::config::TargetModules::Names(
            [
                "query",
                "key",
                "value",
                "attention.output.dense",
                "intermediate.dense",
                "output.dense",
            ]
            .map(String::from)
            .to_vec(),
        );
        std::fs::write(dir.join(ADAPTER_CONFIG), lora.to_json()).unwrap();
        let err = TinyPeft::<4, AllLinear>::from_pretrained(base, config, &dir)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("缺少的张量：base_model.model.bert.encoder.layer.0.attention.self.key.lora_A.weight"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// 一个确定的、“训练过”的 Rust 适配器：A 照常随机，B 与分类头的副本也取随机值。
    fn rust_adapter(dev: &Cpu) -> TinyPeft<4, QueryValue> {
        let (base, config) = tiny_base(dev);
        let mut lora = LoraConfig::seq_cls(4, 8.0, &["query", "value"], 0.1);
        lora.base_model_name_or_path = Some("tiny-bert".into());
        let mut model = TinyPeft::<4, QueryValue>::get_peft_model(base, config, lora).unwrap();
        for layer in model.adapters.layers.modules.iter_mut() {
            layer.w_q.lora_b = dev.sample_normal::<Rank2<32, 4>>() * 0.2;
            layer.w_v.lora_b = dev.sample_normal::<Rank2<32, 4>>() * 0.2;
        }
        model.adapters.head.weight = dev.sample_normal() * 0.2;
        model.adapters.head.bias = dev.sample_normal() * 0.2;
        model
    }

    // ANCHOR: rust_to_python
    /// Rust 保存的适配器与合并后的模型目录：内容与仓库里的 `tiny-bert-rust-adapter/`、`tiny-bert-rust-merged/`
    /// 一致（Python 的 PEFT 与 transformers 加载它们的结果由 `check_rust_adapter.py` 核对），读回来 logits 不变。
    /// 设 `LLM_BOOK_WRITE_FIXTURES=1` 时重新写出这些参考文件。
    #[test]
    fn rust_adapter_round_trips_and_matches_the_fixture() {
        let dev = Cpu::seed_from_u64(2024);
        let model = rust_adapter(&dev);
        let reference =
            Checkpoint::read(&fixtures_dir().join("tiny-bert-peft-reference.safetensors")).unwrap();
        let (tokens, types, mask) = reference_batch(&reference, &dev);
        let logits = |m: &TinyPeft<4, QueryValue>| {
            m.forward(tokens.clone(), Some(types.clone()), &mask, Mode::Eval)
                .unwrap()
                .logits
                .as_vec()
        };
        let ours = logits(&model);

        let tmp =
            std::env::temp_dir().join(format!("llm-book-rust-adapter-{}", std::process::id()));
        let (adapter_dir, merged_dir) = if std::env::var_os("LLM_BOOK_WRITE_FIXTURES").is_some() {
            (
                fixtures_dir().join("tiny-bert-rust-adapter"),
                fixtures_dir().join("tiny-bert-rust-merged"),
            )
        } else {
            (tmp.join("adapter"), tmp.join("merged"))
        };
        model.save_pretrained(&adapter_dir).unwrap();
        save_hf_dir(
            &model.merge_and_unload(),
            &fixtures_dir().join("tiny-bert"),
            &merged_dir,
        )
        .unwrap();
        if adapter_dir.starts_with(fixtures_dir()) {
            crate::checkpoint::save_tensors(
                &fixtures_dir().join("tiny-bert-rust-reference.safetensors"),
                &[("logits", vec![2, 3], ours.clone())],
            )
            .unwrap();
        }

        // 读回来：PEFT 格式的适配器
        let (base, config) = tiny_base(&dev);
        let back = TinyPeft::<4, QueryValue>::from_pretrained(base, config, &adapter_dir).unwrap();
        assert_eq!(logits(&back), ours, "保存再读回，logits 必须逐位相同");
        // 读回来：合并后的 HF 模型目录
        let merged = load_dir::<64, 32, 4, 48, 2, 24, 2, 3, f32, Cpu>(&dev, &merged_dir).unwrap();
        let merged_logits = merged
            .params
            .forward(
                &merged.config,
                tokens.clone(),
                Some(types.clone()),
                &mask,
                Mode::Eval,
            )
            .unwrap()
            .logits
            .as_vec();
        let diff = merged_logits
            .iter()
            .zip(&ours)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff <= 1e-5, "合并前后 logits 相差 {diff}");

        // 与仓库里的参考文件一致：适配器逐位相同，logits 在 1e-6 之内
        let committed =
            |dir: &str, file: &str| Checkpoint::read(&fixtures_dir().join(dir).join(file)).unwrap();
        assert_eq!(
            Checkpoint::read(&adapter_dir.join(ADAPTER_WEIGHTS))
                .unwrap()
                .tensors,
            committed("tiny-bert-rust-adapter", ADAPTER_WEIGHTS).tensors
        );
        assert_eq!(
            LoraConfig::read(&adapter_dir.join(ADAPTER_CONFIG)).unwrap(),
            LoraConfig::read(
                &fixtures_dir()
                    .join("tiny-bert-rust-adapter")
                    .join(ADAPTER_CONFIG)
            )
            .unwrap()
        );
        let reference =
            Checkpoint::read(&fixtures_dir().join("tiny-bert-rust-reference.safetensors")).unwrap();
        assert!(max_error(&ours, &reference, "logits") <= 1e-6);
        let _ = std::fs::remove_dir_all(&tmp);
    }
    // ANCHOR_END: rust_to_python
}

#[cfg(test)]
mod train_tests {
    use super::*;
    use crate::basics::autodiff::assert_spot_gradients;
    use crate::bert::hf::{fixtures_dir, load_dir};
    use crate::lora::encoder::QueryValue;
    use crate::train::finetune::{finetune, FinetuneConfig};
    use std::ops::ControlFlow;

    /// 基座冻结时嵌入不带 tape、W₀ 不算梯度（附录 B）：适配器的梯度仍与中心差分一致，
    /// 包括第 0 层的 A（它的梯度要用到嵌入层的输出）与分类头。
    #[test]
    fn adapter_gradients_match_finite_differences() {
        use dfdx::nn::ZeroGrads;
        type Tiny = PeftBert<64, 32, 4, 48, 2, 24, 2, 3, 4, QueryValue, f64, Cpu>;
        let dev = Cpu::seed_from_u64(5);
        let base = crate::bert::model::TinyBert::<f64, Cpu>::random(&dev);
        let config = crate::bert::model::bert_config(1e-12, 0.0, 24);
        let mut model = Tiny::get_peft_model(
            base,
            config,
            LoraConfig::seq_cls(4, 8.0, &["query", "value"], 0.0),
        )
        .unwrap();
        // B 初始化为 0 时 A 的梯度恒为 0：换成随机值
        for layer in model.adapters.layers.modules.iter_mut() {
            layer.w_q.lora_b = dev.sample_normal();
            layer.w_v.lora_b = dev.sample_normal();
        }
        let tokens: Tensor<(usize, usize), usize, Cpu> =
            dev.tensor_from_vec(vec![2, 17, 33, 5, 3, 2, 8, 60, 3, 0], (2, 5));
        let mask = PaddingMask::from_lengths(&dev, &[5, 4], 5).unwrap();
        let w: Tensor<(usize, Const<3>), f64, Cpu> = dev.sample_normal_like(&(2, Const::<3>));
        let loss_of = |m: &Tiny| -> f64 {
            let out = m.forward(tokens.clone(), None, &mask, Mode::Eval).unwrap();
            (out.logits * w.clone()).sum::<(), _>().array()
        };
        let grads = {
            let g = model.adapters.alloc_grads();
            let out = model
                .forward(tokens.clone().traced(g), None, &mask, Mode::Eval)
                .unwrap();
            (out.logits * w.clone()).sum::<(), _>().backward()
        };
        type Pick = fn(&mut Tiny) -> Vec<f64>;
        type Put = fn(&mut Tiny, &[f64]);
        let cases: [(&str, Pick, Put); 3] = [
            (
                "第 0 层 query 的 A",
                |m| m.adapters.layers.modules[0].w_q.lora_a.as_vec(),
                |m, v| m.adapters.layers.modules[0].w_q.lora_a.copy_from(v),
            ),
            (
                "第 1 层 value 的 B",
                |m| m.adapters.layers.modules[1].w_v.lora_b.as_vec(),
                |m, v| m.adapters.layers.modules[1].w_v.lora_b.copy_from(v),
            ),
            (
                "分类头",
                |m| m.adapters.head.weight.as_vec(),
                |m, v| m.adapters.head.weight.copy_from(v),
            ),
        ];
        let analytic = [
            grads
                .get(&model.adapters.layers.modules[0].w_q.lora_a)
                .as_vec(),
            grads
                .get(&model.adapters.layers.modules[1].w_v.lora_b)
                .as_vec(),
            grads.get(&model.adapters.head.weight).as_vec(),
        ];
        for ((name, pick, put), analytic) in cases.into_iter().zip(analytic) {
            assert_spot_gradients(name, &analytic, &[0, 7, 29, 60], |idx, delta| {
                let mut m = model.clone();
                let mut v = pick(&mut m);
                v[idx] += delta;
                put(&mut m, &v);
                loss_of(&m)
            });
        }
    }

    #[test]
    fn a_peft_model_trains_only_its_adapters() {
        let dev = Cpu::seed_from_u64(0);
        let dir = load_dir::<64, 32, 4, 48, 2, 24, 2, 3, f32, Cpu>(
            &dev,
            &fixtures_dir().join("tiny-bert"),
        )
        .unwrap();
        let mut model =
            PeftBert::<64, 32, 4, 48, 2, 24, 2, 3, 4, QueryValue, f32, Cpu>::get_peft_model(
                dir.params,
                dir.config,
                LoraConfig::seq_cls(4, 8.0, &["query", "value"], 0.1),
            )
            .unwrap();
        let frozen = model.base.layers.modules[0].attention.w_q.weight.as_vec();
        let data = crate::train::tests::toy_data();
        let out = std::env::temp_dir().join(format!("llm-book-peft-train-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let cfg = FinetuneConfig {
            epochs: 3,
            batch_size: 16,
            eval_every: 100,
            ..Default::default()
        };
        let report = finetune(&mut model, &dev, &data, &cfg, &out, false, &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            model.base.layers.modules[0].attention.w_q.weight.as_vec(),
            frozen,
            "基座不变"
        );
        assert!(report.rows.len() >= 3);
        std::fs::remove_dir_all(&out).unwrap();
    }
}
