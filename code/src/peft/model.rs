//! 3.4、3.5 节：`get_peft_model` 的对应物——给 BERT 加上 PEFT 格式的 LoRA；适配器的保存、加载与合并。
//!
//! [`PeftBert`] = 冻结的 BERT（[`BertParams`]，原样保留，含原来的分类头）+ 可训练的适配器
//! （第 2 部分的 [`LoraAdapters`]：每层选中线性层上的 A、B，以及分类头的副本——PEFT 的 `modules_to_save`）。
//! 秩与目标层在类型里，`adapter_config.json` 在构造时与类型核对；适配器按 PEFT 的键名读写，
//! Python 的 PEFT 可以直接加载，反之亦然。

use std::fmt;
use std::path::Path;

use crate::kernels::Kernels;
use dfdx::nn::NumParams;
use dfdx::prelude::*;

use super::adalora::{orth_regularizer, Allocation, RankAllocator};
use super::adapter::{PeftAdapters, PeftHooks, PeftLayer, SiteLora};
use super::config::{
    AdapterPlan, InitLoraWeights, LoraConfig, Pattern, PeftError, RankPattern, LAYER_LINEARS,
};
use crate::basics::tensors::Real;
use crate::bert::hf::hf_candidates;
use crate::bert::model::{BertOutput, BertParams};
use crate::bert::runtime::LayerStack;
use crate::bert::runtime::SavedLinear;
use crate::checkpoint::{save_params_with, Checkpoint};
use crate::quant::{QuantBase, QuantKind};
use crate::transformer::attention::PaddingMask;
use crate::transformer::encoder::{EncoderConfig, InputError, Mode};

/// 适配器的配置文件名。
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// 适配器的权重文件名。
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

// ANCHOR: struct
/// 加了 LoRA 的 BERT 分类模型（PEFT 的 `PeftModelForSequenceClassification`）。
#[derive(Clone, Debug)]
pub struct PeftBert<const M: usize, const H: usize, const F: usize, E: Dtype, D: Device<E>> {
    /// 冻结的基座（优化器看不到它）。
    pub base: BertParams<M, H, F, E, D>,
    /// 可训练的部分：LoRA 的 A、B 与分类头的副本。
    pub adapters: PeftAdapters<M, F, E, D>,
    /// PEFT 的配置（保存时写成 `adapter_config.json`）。
    pub lora: LoraConfig,
    /// 由配置解析出的选中模块与各自的秩、缩放系数。
    pub plan: AdapterPlan,
    /// BERT 的超参数（来自 `config.json`）。
    pub config: EncoderConfig,
    /// 上面三项（`adapters`、`lora`、`plan`）是哪个适配器：PEFT 的 `active_adapter`，默认 `"default"`（4.6 节）。
    pub active: String,
    /// 同一个基座上载入的其余适配器（不参与前向与训练），按名字（4.6 节）。
    pub others: std::collections::BTreeMap<String, StoredAdapter<M, F, E, D>>,
    /// 基座的投影权重量化存放时（4.5 节，[`quantize_base`](Self::quantize_base)）的量化数据；
    /// 这时 `base` 里的这些权重只是零占位，要全精度的基座用 [`full_base`](Self::full_base)。
    pub quant: Option<QuantBase<E>>,
    /// AdaLoRA 训练时的秩分配器（4.4 节；`get_peft_model` 建新的 AdaLoRA 适配器时才有）与它管的适配器名。
    pub allocator: Option<(String, RankAllocator<E>)>,
}
// ANCHOR_END: struct

/// 一个不在用的适配器：它的参数、配置与解析出的计划（4.6 节）。
#[derive(Clone, Debug)]
pub struct StoredAdapter<const M: usize, const F: usize, E: Dtype, D: Device<E>> {
    /// 参数。
    pub adapters: PeftAdapters<M, F, E, D>,
    /// 配置。
    pub lora: LoraConfig,
    /// 选中的模块。
    pub plan: AdapterPlan,
}

/// PEFT 默认的适配器名。
pub const DEFAULT_ADAPTER: &str = "default";

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
/// 读权重、分词、建输出目录之前先核对：配置的字段合法，`target_modules`、`rank_pattern`…… 在这个模型
/// （层数 `num_layers`、宽度 M、F）上按 PEFT 的规则解析得出（[`LoraConfig::plan`]）。命令行在读权重之前调用它。
pub fn check_config<const M: usize, const F: usize>(
    lora: &LoraConfig,
    num_layers: usize,
) -> Result<AdapterPlan, PeftError> {
    lora.plan(num_layers, M, F)
}
// ANCHOR_END: check

// ANCHOR: peft_key
/// 适配器的字段路径 → PEFT 保存的键名。
///
/// `layers.3.w_q.lora_a` → `base_model.model.bert.encoder.layer.3.attention.self.query.lora_A.weight`，
/// `layers.3.w_q.magnitude` → `base_model.model.bert.encoder.layer.3.attention.self.query.lora_magnitude_vector`（DoRA），
/// `layers.3.w_q.lora_e` → `…query.lora_E`（AdaLoRA；它的 A、B 是 PEFT 的 `ParameterDict`，键也没有 `.weight`，见 [`adapter_key`]），
/// `pooler.lora_b` → `base_model.model.bert.pooler.dense.lora_B.weight`，
/// `pooler_copy.weight` → `base_model.model.bert.pooler.dense.weight`（`modules_to_save` 含 `pooler` 时的副本），
/// `head.weight` → `base_model.model.classifier.weight`（`modules_to_save` 的副本存为原模块的名字）。
pub fn peft_key(path: &str) -> String {
    if let Some(rest) = path.strip_prefix("head.") {
        return format!("base_model.model.classifier.{rest}");
    }
    // A、B 是 nn.Linear，键以 .weight 结尾；DoRA 的长度向量 PEFT 存时去掉了 .weight
    let ab_name = |ab: &str| match ab {
        "lora_a" => Some("lora_A.weight"),
        "lora_b" => Some("lora_B.weight"),
        "magnitude" => Some("lora_magnitude_vector"),
        "lora_e" => Some("lora_E"),
        _ => None,
    };
    if let Some(ab) = path.strip_prefix("pooler.").and_then(ab_name) {
        return format!("base_model.model.bert.pooler.dense.{ab}");
    }
    if let Some(rest) = path.strip_prefix("pooler_copy.") {
        return format!("base_model.model.bert.pooler.dense.{rest}");
    }
    const SITES: [&str; 6] = ["w_q", "w_k", "w_v", "w_o", "linear1", "linear2"];
    let parse = || {
        let rest = path.strip_prefix("layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        let (site, ab) = rest.split_once('.')?;
        let module = LAYER_LINEARS[SITES.iter().position(|s| *s == site)?];
        let ab = ab_name(ab)?;
        Some(format!(
            "base_model.model.bert.encoder.layer.{layer}.{module}.{ab}"
        ))
    };
    parse().unwrap_or_else(|| panic!("适配器里没有这样的字段路径：{path}"))
}

/// 适配器 `lora` 的字段路径 → 它的文件里的键：[`peft_key`]；AdaLoRA 的 A、B 不是 `nn.Linear` 而是参数，键去掉 `.weight`。
pub fn adapter_key(lora: &LoraConfig, path: &str) -> String {
    let key = peft_key(path);
    if lora.peft_type == "ADALORA" {
        for ab in [".lora_A.weight", ".lora_B.weight"] {
            if let Some(stem) = key.strip_suffix(ab) {
                return format!("{stem}{}", &ab[..7]);
            }
        }
    }
    key
}
// ANCHOR_END: peft_key

impl<const M: usize, const H: usize, const F: usize, E, D> PeftBert<M, H, F, E, D>
where
    E: Real,
    D: Kernels<E>,
{
    // ANCHOR: get_peft_model
    /// PEFT 的 `get_peft_model(model, config)`：按配置解析出选中的模块（[`check_config`]），在每个选中的线性层上
    /// 按 `init_lora_weights` 新建 A、B（默认 A 随机、B = 0），分类头复制一份来训练。基座原样保留——PiSSA、OLoRA 除外（4.3 节：基座换成 W − s·B₀A₀）。
    pub fn get_peft_model(
        mut base: BertParams<M, H, F, E, D>,
        config: EncoderConfig,
        lora: LoraConfig,
    ) -> Result<Self, PeftError> {
        let new = new_adapter(&base, lora)?;
        rewrite_base(&mut base, &new);
        let mut model = Self::with_adapter(base, config, new);
        model.allocator = model.new_allocator()?;
        Ok(model)
    }
    // ANCHOR_END: get_peft_model

    /// 当前适配器是要训练的 AdaLoRA 时，它的秩分配器（PEFT 的 `AdaLoraModel.__init__` 建的 `rankallocator`）。
    fn new_allocator(&self) -> Result<Option<(String, RankAllocator<E>)>, PeftError> {
        let Some(settings) = self.lora.adalora()? else {
            return Ok(None);
        };
        if self.lora.inference_mode {
            return Ok(None);
        }
        let ranks: Vec<usize> = self.plan.modules().iter().map(|(_, s)| s.r).collect();
        Ok(Some((
            self.active.clone(),
            RankAllocator::new(settings, &ranks),
        )))
    }

    // ANCHOR: update_and_allocate
    /// PEFT 的 `model.base_model.update_and_allocate(step)`（4.4 节）：每步优化器更新之后、梯度清零之前调用，
    /// `grads` 是这一步的梯度。按 [`RankAllocator::step`] 打分、剪枝；剪了就把各模块留下的奇异值写进配置的
    /// `rank_pattern`（键 `模块名.lora_E`，存盘时按它裁小 A、E、B）。`grad_scale` 是优化器这一步给梯度乘的裁剪系数
    /// （[`StepInfo::clip`](crate::train::adamw::StepInfo::clip)；不裁剪时为 1）：HF 的 Trainer 就地裁剪梯度，PEFT 打分用的是裁剪后的梯度。
    /// 不是 AdaLoRA 时返回 `None`。
    pub fn update_and_allocate(
        &mut self,
        step: usize,
        grads: &Gradients<E, D>,
        grad_scale: f64,
    ) -> Option<Allocation> {
        let (name, allocator) = self.allocator.as_mut()?;
        if *name != self.active {
            return None; // 正在用的是别的适配器：AdaLoRA 只训练它自己那一个（PEFT 同样只允许一个）
        }
        let names: Vec<String> = (self.plan.modules().into_iter())
            .map(|(m, _)| format!("{m}.lora_E"))
            .collect();
        let fixed: Option<Vec<Vec<bool>>> = match &self.lora.rank_pattern {
            RankPattern::Kept(p) => names
                .iter()
                .map(|n| p.0.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()))
                .collect(),
            RankPattern::Ranks(_) => None,
        };
        let mut sites = self.adapters.svd_sites_mut();
        let result = allocator.step(step, &mut sites, grads, grad_scale, fixed.as_deref());
        if let Allocation::Masked { keep, .. } = &result {
            self.lora.rank_pattern = RankPattern::Kept(Pattern(
                names.into_iter().zip(keep.iter().cloned()).collect(),
            ));
        }
        Some(result)
    }

    /// AdaLoRA 的适配器各模块现在的秩（模块名，留下的奇异值个数），按模型里的顺序：按 `rank_pattern` 数，
    /// 还没剪过的模块是它的矩阵的秩。不是 AdaLoRA 时为 `None`。
    pub fn adalora_ranks(&self) -> Option<Vec<(String, usize)>> {
        self.lora.adalora().ok()??;
        let kept = match &self.lora.rank_pattern {
            RankPattern::Kept(p) => p.0.as_slice(),
            RankPattern::Ranks(_) => &[],
        };
        let ranks = (self.plan.modules().into_iter())
            .map(|(m, spec)| {
                let key = format!("{m}.lora_E");
                let r = (kept.iter().find(|(k, _)| *k == key))
                    .map_or(spec.r, |(_, keep)| keep.iter().filter(|k| **k).count());
                (m, r)
            })
            .collect();
        Some(ranks)
    }

    /// AdaLoRA 加在损失上的正交正则（[`orth_regularizer`]）；不是 AdaLoRA、或权重为 0 时为 `None`。
    pub fn regularizer(&self) -> Option<Tensor<(), E, D, OwnedTape<E, D>>> {
        let weight = self.lora.adalora().ok()??.orth_reg_weight;
        if weight == 0.0 {
            return None;
        }
        orth_regularizer(&self.adapters.svd_sites(), weight)
    }
    // ANCHOR_END: update_and_allocate

    fn with_adapter(
        base: BertParams<M, H, F, E, D>,
        config: EncoderConfig,
        adapter: StoredAdapter<M, F, E, D>,
    ) -> Self {
        Self {
            base,
            adapters: adapter.adapters,
            lora: adapter.lora,
            plan: adapter.plan,
            config,
            active: DEFAULT_ADAPTER.into(),
            others: Default::default(),
            quant: None,
            allocator: None,
        }
    }

    // ANCHOR: quantize_base
    /// QLoRA（4.5 节）的 `get_peft_model`：新建适配器，基座的投影权重量化成 `kind` 存放。
    ///
    /// 适配器按量化后的基座 deq(Q(W)) 初始化，与 PEFT 在 4 位基座上 `get_peft_model` 相同（DoRA 的长度向量取
    /// ‖deq(Q(W))‖，一开始输出才与量化的基座相同；OLoRA 分解的是 deq(Q(W))）。PiSSA 例外：PEFT 拒绝在量化的基座上做
    /// PiSSA，要求先在全精度下初始化、再量化剩余部分 W_res——主要方向留在全精度的 A、B 里，量化误差只落在 W_res 上。
    pub fn get_peft_model_quantized(
        mut base: BertParams<M, H, F, E, D>,
        config: EncoderConfig,
        lora: LoraConfig,
        kind: QuantKind,
    ) -> Result<Self, PeftError> {
        if lora.init()? != InitLoraWeights::Pissa {
            QuantBase::round_trip(&mut base, kind).map_err(|e| PeftError::Adapter {
                name: DEFAULT_ADAPTER.into(),
                reason: format!("量化基座失败：{e}"),
            })?;
        }
        let mut model = Self::get_peft_model(base, config, lora)?;
        model.quantize_base(kind)?;
        Ok(model)
    }

    /// 把冻结基座里每层的六个投影与池化层的 dense 量化成 `kind` 存放，前向时按需还原（读进来的适配器用它；
    /// 新建适配器用 [`get_peft_model_quantized`](Self::get_peft_model_quantized)）。
    pub fn quantize_base(&mut self, kind: QuantKind) -> Result<(), PeftError> {
        if let Some(q) = &self.quant {
            return Err(PeftError::Adapter {
                name: self.active.clone(),
                reason: format!("基座已经量化成 {} 了，不能再量化一次", q.kind.name()),
            });
        }
        self.quant =
            Some(
                QuantBase::quantize(&mut self.base, kind).map_err(|e| PeftError::Adapter {
                    name: self.active.clone(),
                    reason: format!("量化基座失败：{e}"),
                })?,
            );
        Ok(())
    }
    // ANCHOR_END: quantize_base

    /// 全精度的基座：没有量化时就是 `base`，量化了则还原一份（bert-base 约 340 MB，用完即丢）。
    pub fn full_base(&self) -> std::borrow::Cow<'_, BertParams<M, H, F, E, D>> {
        match &self.quant {
            None => std::borrow::Cow::Borrowed(&self.base),
            Some(q) => {
                let mut base = self.base.clone();
                q.restore(&mut base);
                std::borrow::Cow::Owned(base)
            }
        }
    }
    // ANCHOR_END: get_peft_model

    /// 第 i 层（`None` 为池化层）的钩子。
    fn hooks(&self, layer: Option<usize>, mode: Mode) -> PeftHooks<'_, M, H, F, E, D> {
        PeftHooks {
            layer: layer.map(|i| {
                (
                    &self.adapters.layers.modules[i],
                    &self.base.layers.modules[i],
                )
            }),
            quant: match (&self.quant, layer) {
                (Some(q), Some(i)) => Some(&q.layers[i]),
                _ => None,
            },
            pooler: &self.adapters.pooler,
            pooler_quant: self.quant.as_ref().map(|q| &q.pooler),
            pooler_copy: &self.adapters.pooler_copy,
            dropout: self.lora.lora_dropout,
            mode,
            first_layer: layer == Some(0),
        }
    }

    /// 前向：BERT 的前向，每层与池化层经钩子加上 LoRA 分支，分类头用可训练的副本。
    pub fn forward<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        tokens: Tensor<(usize, usize), usize, D, T>,
        token_types: Option<Tensor<(usize, usize), usize, D>>,
        mask: &PaddingMask<E, D>,
        mode: Mode,
    ) -> Result<BertOutput<M, E, D, T>, InputError> {
        self.base.forward_with_head(
            &self.adapters.head,
            &self.config,
            tokens,
            token_types,
            mask,
            mode,
            |i| self.hooks(Some(i), mode),
            &self.hooks(None, mode),
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
    /// PEFT 的 `merge_and_unload`：把 s·BA 合并进基座的权重，分类头换成训练后的副本，
    /// 得到一个普通的 BERT（推理时与基座一样快，可存成 Hugging Face 的模型目录）。
    pub fn merge_and_unload(&self) -> BertParams<M, H, F, E, D> {
        // 量化的基座先还原（PEFT 合并 4 位基座时也是先还原、合并，得到全精度的权重）
        let mut merged = self.full_base().into_owned();
        for (layer, adapters) in merged
            .layers
            .modules
            .iter_mut()
            .zip(&self.adapters.layers.modules)
        {
            adapters.merge_into(layer);
        }
        self.adapters.pooler.merge_into(&mut merged.pooler);
        if let Some(copy) = &self.adapters.pooler_copy.module {
            merged.pooler = copy.clone();
        }
        merged.classifier = self.adapters.head.clone();
        merged
    }
    // ANCHOR_END: merge
}

impl<const M: usize, const H: usize, const F: usize, E, D> PeftBert<M, H, F, E, D>
where
    E: Real + dfdx::tensor::safetensors::SafeDtype,
    D: Kernels<E>,
{
    // ANCHOR: save
    /// PEFT 的 `save_pretrained`：目录里写 `adapter_config.json` 与 `adapter_model.safetensors`（PEFT 的键名）。
    /// `config_json` 给出时另写一个 `config.json`（[`classifier_config_json`]：类别名 `id2label`、`label2id`）：
    /// PEFT 的文件里没有类别名，Python 一侧用 `AutoConfig.from_pretrained(目录)` 读它。整个目录原子地写入。
    pub fn save_pretrained(&self, dir: &Path, config_json: Option<&str>) -> Result<(), PeftError> {
        write_adapter(&self.adapters, &self.lora, dir, config_json)
    }

    /// PEFT 的 `PeftModel.from_pretrained(base, dir)`：读适配器目录，装到基座上（名字 `"default"`）。
    /// 文件里每个张量的形状（秩）都须与配置解析出的一致，缺的、多的、形状不符的键一并列出。
    pub fn from_pretrained(
        base: BertParams<M, H, F, E, D>,
        config: EncoderConfig,
        dir: &Path,
    ) -> Result<Self, PeftError> {
        let mut base = base;
        let adapter = read_adapter(&mut base, dir)?;
        Ok(Self::with_adapter(base, config, adapter))
    }
    // ANCHOR_END: save
}

// ANCHOR: multi
impl<const M: usize, const H: usize, const F: usize, E, D> PeftBert<M, H, F, E, D>
where
    E: Real + dfdx::tensor::safetensors::SafeDtype,
    D: Kernels<E>,
{
    /// PEFT 的 `load_adapter(dir, adapter_name)`：再读一个适配器，装到同一个基座上，起名 `name`；
    /// 不改变正在用的适配器（用 [`set_adapter`](Self::set_adapter) 切换）。基座不复制，每个适配器只多它自己的参数。
    pub fn load_adapter(&mut self, dir: &Path, name: &str) -> Result<(), PeftError> {
        self.check_new_name(name)?;
        let lora = LoraConfig::read(&dir.join(ADAPTER_CONFIG))?;
        self.check_shared_base(name, &lora)?;
        // 基座量化了：在还原的副本上读（不改写基座的适配器才走到这里，副本读完即丢）。
        // 只有训练池化层副本的适配器要读基座的权重（文件里没有副本时从基座复制）；其余的用占位的基座就够了
        let adapter = match &self.quant {
            Some(_) if lora.trains_pooler() => {
                read_adapter(&mut self.full_base().into_owned(), dir)?
            }
            _ => read_adapter(&mut self.base, dir)?,
        };
        self.others.insert(name.into(), adapter);
        Ok(())
    }

    /// PEFT 的 `add_adapter(name, config)`：按配置新建一个适配器（按 `init_lora_weights` 初始化，默认 A 随机、B = 0），
    /// 装到同一个基座上，不改变正在用的。
    pub fn add_adapter(&mut self, name: &str, lora: LoraConfig) -> Result<(), PeftError> {
        self.check_new_name(name)?;
        self.check_shared_base(name, &lora)?;
        // 新适配器要从基座的权重初始化时（DoRA 的长度、池化层的副本、OLoRA 的分解）：量化时用还原的基座
        let needs_weights =
            lora.use_dora || lora.trains_pooler() || lora.init().is_ok_and(|i| i.rewrites_base());
        let adapter = match &self.quant {
            Some(_) if needs_weights => new_adapter(&self.full_base(), lora)?,
            _ => new_adapter(&self.base, lora)?,
        };
        self.others.insert(name.into(), adapter);
        Ok(())
    }

    /// 几个适配器共用基座的前提是谁都不改写它：PiSSA、OLoRA 的适配器（4.3 节）不能与别的适配器装在同一个基座上。
    /// （PEFT 0.21.2 不拦，只在 load_adapter 时警告一句：读一个 PiSSA 适配器会再改写一遍基座，已有的适配器从此算错。）
    fn check_shared_base(&self, name: &str, lora: &LoraConfig) -> Result<(), PeftError> {
        let rewrites = |l: &LoraConfig| l.init().is_ok_and(|i| i.rewrites_base());
        let loaded = std::iter::once(&self.lora).chain(self.others.values().map(|s| &s.lora));
        if rewrites(lora) || loaded.into_iter().any(rewrites) {
            return Err(PeftError::Adapter {
                name: name.into(),
                reason: "init_lora_weights 为 pissa、olora 的适配器改写了基座，不能与别的适配器共用一个基座；\
                         请分别加载"
                    .into(),
            });
        }
        Ok(())
    }

    pub(crate) fn check_new_name(&self, name: &str) -> Result<(), PeftError> {
        if self.adapter_names().iter().any(|n| n == name) {
            return Err(PeftError::Adapter {
                name: name.into(),
                reason: "这个名字已经有适配器了，换一个名字".into(),
            });
        }
        Ok(())
    }

    // ANCHOR: set_adapter
    /// PEFT 的 `set_adapter(name)`：之后的前向、训练、保存、合并都用这个适配器。
    pub fn set_adapter(&mut self, name: &str) -> Result<(), PeftError> {
        if name == self.active {
            return Ok(());
        }
        let Some(next) = self.others.remove(name) else {
            return Err(PeftError::Adapter {
                name: name.into(),
                reason: format!(
                    "没有这个适配器；已载入的：{}",
                    self.adapter_names().join("、")
                ),
            });
        };
        let previous = StoredAdapter {
            adapters: std::mem::replace(&mut self.adapters, next.adapters),
            lora: std::mem::replace(&mut self.lora, next.lora),
            plan: std::mem::replace(&mut self.plan, next.plan),
        };
        let old = std::mem::replace(&mut self.active, name.into());
        self.others.insert(old, previous);
        Ok(())
    }
    // ANCHOR_END: set_adapter

    /// PEFT 的 `delete_adapter(name)`：卸下一个不在用的适配器。
    pub fn delete_adapter(&mut self, name: &str) -> Result<(), PeftError> {
        if name == self.active {
            return Err(PeftError::Adapter {
                name: name.into(),
                reason: "它正在用：先用 set_adapter 换到别的适配器".into(),
            });
        }
        self.others
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| PeftError::Adapter {
                name: name.into(),
                reason: "没有这个适配器".into(),
            })
    }

    /// 载入的全部适配器的名字：正在用的在前，其余按名字排序。
    pub fn adapter_names(&self) -> Vec<String> {
        std::iter::once(self.active.clone())
            .chain(self.others.keys().cloned())
            .collect()
    }
}
// ANCHOR_END: multi

/// 在基座 `base` 上按配置新建一个适配器（`get_peft_model` 的核心）：解析出选中的模块（[`check_config`]），
/// 每个选中的线性层上按 `init_lora_weights` 建 A、B（默认 A 随机、B = 0；DoRA 时再加长度向量），分类头复制一份来训练。
pub fn new_adapter<const M: usize, const H: usize, const F: usize, E, D>(
    base: &BertParams<M, H, F, E, D>,
    lora: LoraConfig,
) -> Result<StoredAdapter<M, F, E, D>, PeftError>
where
    E: Real,
    D: Kernels<E>,
{
    let plan = check_config::<M, F>(&lora, base.layers.modules.len())?;
    let dev = base.classifier.weight.device().clone();
    let layers = (plan.layers.iter())
        .zip(&base.layers.modules)
        .map(|(specs, layer)| PeftLayer::init(&dev, specs, layer));
    let adapters = PeftAdapters {
        layers: LayerStack {
            modules: layers.collect(),
        },
        pooler: SiteLora::init(&dev, plan.pooler, &base.pooler),
        pooler_copy: SavedLinear {
            module: lora.trains_pooler().then(|| base.pooler.clone()),
        },
        head: base.classifier.clone(),
    };
    Ok(StoredAdapter {
        adapters,
        lora,
        plan,
    })
}

/// 把一个适配器写成 PEFT 的目录（[`PeftBert::save_pretrained`]）：`adapter_config.json`（`inference_mode` 写 true）、
/// `adapter_model.safetensors`（PEFT 的键名），`config_json` 给出时另写 `config.json`。整个目录原子地写入。
pub fn write_adapter<const M: usize, const F: usize, E, D>(
    adapters: &PeftAdapters<M, F, E, D>,
    lora: &LoraConfig,
    dir: &Path,
    config_json: Option<&str>,
) -> Result<(), PeftError>
where
    E: Real + dfdx::tensor::safetensors::SafeDtype,
    D: Kernels<E>,
{
    let mut lora = lora.clone();
    lora.inference_mode = true;
    let cropped = crop_by_rank_pattern(adapters, &lora)?;
    let adapters = cropped.as_ref().unwrap_or(adapters);
    crate::io::write_dir_atomic(dir, |tmp| {
        save_params_with(adapters, &tmp.join(ADAPTER_WEIGHTS), &|p| {
            Some(adapter_key(&lora, p))
        })
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        if let Some(json) = config_json {
            std::fs::write(tmp.join("config.json"), json)?;
        }
        std::fs::write(tmp.join(ADAPTER_CONFIG), lora.to_json() + "\n")
    })
    .map_err(|e| PeftError::Io {
        path: dir.into(),
        error: e.to_string(),
    })
}

/// AdaLoRA（4.4 节）存盘前按 `rank_pattern` 裁掉被剪的奇异值（PEFT 的 `resize_state_dict_by_rank_pattern`）：
/// A 只留下对应的行、E 只留下对应的项、B 只留下对应的列。已经裁过的（从文件读进来的）模块不再裁。
/// 没有要裁的时返回 `None`。
fn crop_by_rank_pattern<const M: usize, const F: usize, E: Real, D: Kernels<E>>(
    adapters: &PeftAdapters<M, F, E, D>,
    lora: &LoraConfig,
) -> Result<Option<PeftAdapters<M, F, E, D>>, PeftError> {
    let RankPattern::Kept(kept) = &lora.rank_pattern else {
        return Ok(None);
    };
    if kept.0.is_empty() || lora.adalora()?.is_none() {
        return Ok(None);
    }
    let names = lora.plan(adapters.layers.modules.len(), M, F)?.modules();
    let mut out = adapters.clone();
    for ((name, _), site) in names.iter().zip(out.svd_sites_mut()) {
        let key = format!("{name}.lora_E");
        if let Some((_, keep)) = kept.0.iter().find(|(k, _)| *k == key) {
            if site.parts(None).r == keep.len() {
                site.crop(keep);
            }
        }
    }
    Ok(Some(out))
}

/// PiSSA、OLoRA（4.3 节）：刚建好的适配器的 s·B₀A₀ 从基座里减掉（其余的初始化什么也不做）。
pub fn rewrite_base<const M: usize, const H: usize, const F: usize, E: Real, D: Kernels<E>>(
    base: &mut BertParams<M, H, F, E, D>,
    adapter: &StoredAdapter<M, F, E, D>,
) {
    for ((layer, specs), target) in (adapter.adapters.layers.modules.iter())
        .zip(&adapter.plan.layers)
        .zip(base.layers.modules.iter_mut())
    {
        layer.subtract_initial(specs, target);
    }
    if adapter.plan.pooler.is_some_and(|s| s.init.rewrites_base()) {
        adapter.adapters.pooler.subtract_from(&mut base.pooler);
    }
}

/// 读一个 PEFT 适配器目录，按基座 `base` 建好（`from_pretrained`、`load_adapter` 的核心）。与 PEFT 相同，先按配置
/// 初始化——PiSSA、OLoRA 时由基座的权重算出 B₀、A₀ 并改写基座（W ← W − s·B₀A₀）——再用文件里的 A、B 覆盖。
pub fn read_adapter<const M: usize, const H: usize, const F: usize, E, D>(
    base: &mut BertParams<M, H, F, E, D>,
    dir: &Path,
) -> Result<StoredAdapter<M, F, E, D>, PeftError>
where
    E: Real + dfdx::tensor::safetensors::SafeDtype,
    D: Kernels<E>,
{
    let lora = LoraConfig::read(&dir.join(ADAPTER_CONFIG))?;
    let mut adapter = new_adapter(base, lora)?;
    rewrite_base(base, &adapter);
    let weights = dir.join(ADAPTER_WEIGHTS);
    if !weights.exists() && dir.join("adapter_model.bin").exists() {
        return Err(PeftError::Io {
            path: weights,
            error: "只找到 PyTorch 的 adapter_model.bin；请用 PEFT 以 safetensors 格式保存（save_pretrained 的默认）".into(),
        });
    }
    let file = Checkpoint::read(&weights)?;
    // 类别数以适配器里分类头的副本为准（基座的 config.json 可能仍是预训练时的 2 类）
    if let Ok(head) = file.get("base_model.model.classifier.weight") {
        if head.shape.len() == 2 && head.shape[0] != adapter.adapters.head.outputs() {
            let dev = base.classifier.weight.device().clone();
            adapter.adapters.head = crate::bert::runtime::Head::new(&dev, head.shape[0]);
        }
    }
    // DoRA 的长度向量：PEFT 存时没有 .weight，读时两种写法都认（PEFT 0.21.2 也是）
    let lora = adapter.lora.clone();
    let candidates = |path: &str| {
        let key = adapter_key(&lora, path);
        let with_weight = format!("{key}.weight");
        match key.ends_with("lora_magnitude_vector") {
            true => vec![key, with_weight],
            false => vec![key],
        }
    };
    file.load_into_with(&mut adapter.adapters, &candidates, &|_| true)?;
    Ok(adapter)
}

/// 模型目录的 `config.json`：取自 `config_from/config.json`，架构写成 `BertForSequenceClassification`，
/// `id2label`、`label2id` 写成 `labels`（与 transformers 写的一样：键是字符串形式的 id）。
pub fn classifier_config_json(config_from: &Path, labels: &[String]) -> Result<String, PeftError> {
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
    let id2label: serde_json::Map<_, _> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), serde_json::json!(l)))
        .collect();
    let label2id: serde_json::Map<_, _> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), serde_json::json!(i)))
        .collect();
    config.insert("id2label".into(), id2label.into());
    config.insert("label2id".into(), label2id.into());
    let json = serde_json::to_string_pretty(&serde_json::Value::Object(config))
        .expect("JSON 总能写成文本");
    Ok(json + "\n")
}

/// 把一个 BERT 存成 Hugging Face 的模型目录：`model.safetensors`（HF 的键名）、`config.json`
/// （[`classifier_config_json`]：类别名 `labels`，个数须等于分类头的输出个数）、分词器文件（从 `config_from` 复制）。
/// 整个目录原子地写入。
pub fn save_hf_dir<const M: usize, const H: usize, const F: usize, E, D>(
    params: &BertParams<M, H, F, E, D>,
    config_from: &Path,
    labels: &[String],
    dir: &Path,
) -> Result<(), PeftError>
where
    E: Real + dfdx::tensor::safetensors::SafeDtype,
    D: Kernels<E>,
{
    assert_eq!(
        labels.len(),
        params.classifier.outputs(),
        "类别名的个数须等于分类头的输出个数"
    );
    let config = classifier_config_json(config_from, labels)?;
    crate::io::write_dir_atomic(dir, |tmp| {
        save_params_with(params, &tmp.join("model.safetensors"), &|path| {
            Some(hf_candidates(path).remove(0))
        })
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        std::fs::write(tmp.join("config.json"), &config)?;
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

impl<const M: usize, const H: usize, const F: usize, E, D> crate::train::SequenceClassifier<E, D>
    for PeftBert<M, H, F, E, D>
where
    E: Real,
    D: Kernels<E>,
{
    type Params = PeftAdapters<M, F, E, D>;
    fn params(&self) -> &Self::Params {
        &self.adapters
    }
    fn params_mut(&mut self) -> &mut Self::Params {
        &mut self.adapters
    }
    fn num_labels(&self) -> usize {
        self.adapters.head.outputs()
    }
    fn logits<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        tokens: Tensor<(usize, usize), usize, D, T>,
        token_types: Option<Tensor<(usize, usize), usize, D>>,
        mask: &PaddingMask<E, D>,
        mode: Mode,
    ) -> Result<Tensor<(usize, usize), E, D, T>, InputError> {
        Ok(self.forward(tokens, token_types, mask, mode)?.logits)
    }
    fn regularizer(&self) -> Option<Tensor<(), E, D, OwnedTape<E, D>>> {
        PeftBert::regularizer(self)
    }
    fn after_step(&mut self, step: usize, grads: &Gradients<E, D>, grad_scale: f64) {
        self.update_and_allocate(step, grads, grad_scale);
    }
    fn planned_steps(&self) -> Option<(&'static str, usize)> {
        let (_, allocator) = self.allocator.as_ref()?;
        Some(("total_step", allocator.settings.total_step))
    }
    fn settled(&self) -> bool {
        self.allocator.as_ref().is_none_or(|(_, a)| a.settled)
    }
    fn training_state(&self) -> Option<serde_json::Value> {
        let (_, allocator) = self.allocator.as_ref()?;
        Some(serde_json::json!({
            "rank_pattern": self.lora.rank_pattern,
            "adalora_scores": allocator.scores_to_json(),
        }))
    }
    fn restore_training_state(&mut self, state: serde_json::Value) -> Result<(), String> {
        let Some((_, allocator)) = self.allocator.as_mut() else {
            return Ok(());
        };
        let bad = |e: String| format!("检查点里 AdaLoRA 的状态不对：{e}");
        self.lora.rank_pattern = serde_json::from_value(state["rank_pattern"].clone())
            .map_err(|e| bad(format!("rank_pattern：{e}")))?;
        allocator
            .scores_from_json(&state["adalora_scores"])
            .map_err(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bert::hf::{fixtures_dir, load_dir, max_error, reference_batch};
    use crate::bert::model::{BertBase, TinyBert};

    type TinyPeft = PeftBert<32, 4, 48, f32, Cpu>;

    fn tiny_base(dev: &Cpu, dir: &str) -> (TinyBert<f32, Cpu>, EncoderConfig) {
        let dir = load_dir::<32, 4, 48, f32, Cpu>(dev, &fixtures_dir().join(dir))
            .unwrap_or_else(|e| panic!("{e}"));
        (dir.params, dir.config)
    }

    #[test]
    fn trainable_parameters_equal_pefts_count() {
        let dev: Cpu = Default::default();
        let (base, config) = tiny_base(&dev, "tiny-bert");
        let tiny = TinyPeft::get_peft_model(
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
        let base = BertBase::<f32, Cpu>::new(&dev, &crate::bert::model::BERT_BASE_CHINESE_DIMS);
        let big = PeftBert::get_peft_model(
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
        // 同样的配置加 use_dora：每个选中的线性层多一个 768 维的长度向量。PEFT 打印 609,794 / 102,878,980
        let base = BertBase::<f32, Cpu>::new(&dev, &crate::bert::model::BERT_BASE_CHINESE_DIMS);
        let mut lora = LoraConfig::seq_cls(16, 32.0, &["query", "value"], 0.1);
        lora.use_dora = true;
        let dora = PeftBert::get_peft_model(base, EncoderConfig::default(), lora).unwrap();
        assert_eq!(
            dora.trainable_parameters(),
            TrainableParams {
                trainable: 609_794,
                all: 102_878_980
            }
        );
    }

    // ANCHOR: python_fixtures
    /// Python 的 PEFT 0.21.2 保存的四个适配器（`make_peft_fixtures.py`、`make_peft_pattern_fixtures.py`）：
    /// query/value；q、k、v 与三种 dense（含池化层）在 3 类的模型上；rank_pattern 与 alpha_pattern；
    /// layers_to_transform 与 rsLoRA；池化层整个训练（`modules_to_save` 含 `pooler`）。读进来的 logits 与 PEFT 的相差不超过 1e-5，合并后也一样。
    #[test]
    fn loads_adapters_saved_by_python_peft() {
        let dev: Cpu = Default::default();
        for (base_dir, adapter, modules) in [
            ("tiny-bert", "tiny-bert-peft", 4),
            ("tiny-bert-3label", "tiny-bert-peft-qkvd", 13),
            ("tiny-bert-3label", "tiny-bert-peft-pattern", 6),
            ("tiny-bert-3label", "tiny-bert-peft-layers", 2),
            ("tiny-bert-3label", "tiny-bert-peft-pooler", 10),
        ] {
            let (base, config) = tiny_base(&dev, base_dir);
            let model = TinyPeft::from_pretrained(base, config, &fixtures_dir().join(adapter))
                .unwrap_or_else(|e| panic!("{adapter}：{e}"));
            assert_eq!(model.plan.modules().len(), modules, "{adapter}");
            let reference =
                Checkpoint::read(&fixtures_dir().join(format!("{adapter}-reference.safetensors")))
                    .unwrap();
            let (tokens, types, mask) = reference_batch(&reference, &dev);
            let logits = model
                .forward(tokens.clone(), Some(types.clone()), &mask, Mode::Eval)
                .unwrap()
                .logits
                .as_vec();
            let err = max_error(&logits, &reference, "logits");
            let merged = model.merge_and_unload();
            let merged_logits = merged
                .forward(&model.config, tokens, Some(types), &mask, Mode::Eval)
                .unwrap()
                .logits
                .as_vec();
            let merged_err = max_error(&merged_logits, &reference, "merged_logits");
            println!("{adapter}：logits 最大误差 {err:.2e}，合并后 {merged_err:.2e}");
            assert!(
                err <= 1e-5 && merged_err <= 1e-5,
                "{adapter}：{err} / {merged_err}"
            );
        }
    }
    // ANCHOR_END: python_fixtures

    #[test]
    fn a_missing_or_misshapen_adapter_tensor_is_named() {
        let dev: Cpu = Default::default();
        let src = fixtures_dir().join("tiny-bert-peft");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("adapter");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(src.join(ADAPTER_WEIGHTS), dir.join(ADAPTER_WEIGHTS)).unwrap();
        let original = LoraConfig::read(&src.join(ADAPTER_CONFIG)).unwrap();
        // 目标层多了 key：文件里没有 key 的 A、B
        let mut lora = original.clone();
        lora.target_modules = super::super::config::TargetModules::Names(
            ["query", "key", "value"].map(String::from).to_vec(),
        );
        std::fs::write(dir.join(ADAPTER_CONFIG), lora.to_json()).unwrap();
        let (base, config) = tiny_base(&dev, "tiny-bert");
        let err = TinyPeft::from_pretrained(base.clone(), config, &dir)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("缺少的张量：base_model.model.bert.encoder.layer.0.attention.self.key.lora_A.weight"),
            "{err}"
        );
        // 配置说秩 8，文件里是秩 4
        let mut lora = original;
        lora.r = 8;
        std::fs::write(dir.join(ADAPTER_CONFIG), lora.to_json()).unwrap();
        let err = TinyPeft::from_pretrained(base, config, &dir)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight：文件中为 [4, 32]，模型要求 [8, 32]"),
            "{err}"
        );
    }

    /// 把每个 B 与分类头的副本换成随机值（相当于“训练过”；B = 0 时什么也测不出）。
    fn randomize(model: &mut TinyPeft, dev: &Cpu) {
        fn b<const I: usize, const O: usize>(site: &mut SiteLora<I, O, f32, Cpu>, dev: &Cpu) {
            if let Some(l) = &mut site.lora {
                l.lora_b = dev.sample_normal_like(l.lora_b.shape()) * 0.2;
            }
        }
        for layer in model.adapters.layers.modules.iter_mut() {
            b(&mut layer.w_q, dev);
            b(&mut layer.w_k, dev);
            b(&mut layer.w_v, dev);
            b(&mut layer.w_o, dev);
            b(&mut layer.linear1, dev);
            b(&mut layer.linear2, dev);
        }
        b(&mut model.adapters.pooler, dev);
        if let Some(p) = &mut model.adapters.pooler_copy.module {
            p.weight = dev.sample_normal_like(p.weight.shape()) * 0.2;
            p.bias = dev.sample_normal_like(p.bias.shape()) * 0.2;
        }
        let head = &mut model.adapters.head;
        head.weight = dev.sample_normal_like(head.weight.shape()) * 0.2;
        head.bias = dev.sample_normal_like(head.bias.shape()) * 0.2;
    }

    /// 一个确定的、“训练过”的 Rust 适配器：query、value 上秩 4。
    fn rust_adapter(dev: &Cpu) -> TinyPeft {
        let (base, config) = tiny_base(dev, "tiny-bert");
        let mut lora = LoraConfig::seq_cls(4, 8.0, &["query", "value"], 0.1);
        lora.base_model_name_or_path = Some("tiny-bert".into());
        let mut model = TinyPeft::get_peft_model(base, config, lora).unwrap();
        randomize(&mut model, dev);
        model
    }

    /// 第二个 Rust 适配器：3 类的模型，q、k、v 与三种 dense（含池化层），value 的秩 2、dense 的 α 16。
    fn rust_adapter_qkvd(dev: &Cpu) -> TinyPeft {
        let (base, config) = tiny_base(dev, "tiny-bert-3label");
        let mut lora = LoraConfig::seq_cls(4, 8.0, &["query", "key", "value", "dense"], 0.0);
        lora.rank_pattern = super::super::config::RankPattern::Ranks(
            super::super::config::Pattern(vec![("value".into(), 2)]),
        );
        lora.alpha_pattern = super::super::config::Pattern(vec![("dense".into(), 16.0)]);
        lora.base_model_name_or_path = Some("tiny-bert-3label".into());
        let mut model = TinyPeft::get_peft_model(base, config, lora).unwrap();
        randomize(&mut model, dev);
        model
    }

    /// 第三个 Rust 适配器：池化层整个训练（`modules_to_save` 含 `pooler`），query、value 上秩 2。
    fn rust_adapter_pooler(dev: &Cpu) -> TinyPeft {
        let (base, config) = tiny_base(dev, "tiny-bert-3label");
        let mut lora = LoraConfig::seq_cls(2, 4.0, &["query", "value"], 0.0);
        lora.modules_to_save = Some(vec!["pooler".into()]);
        lora.base_model_name_or_path = Some("tiny-bert-3label".into());
        let mut model = TinyPeft::get_peft_model(base, config, lora).unwrap();
        randomize(&mut model, dev);
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
        let logits = |m: &TinyPeft| {
            m.forward(tokens.clone(), Some(types.clone()), &mask, Mode::Eval)
                .unwrap()
                .logits
                .as_vec()
        };
        let ours = logits(&model);

        let tmp = tempfile::tempdir().unwrap();
        let (adapter_dir, merged_dir) = if std::env::var_os("LLM_BOOK_WRITE_FIXTURES").is_some() {
            (
                fixtures_dir().join("tiny-bert-rust-adapter"),
                fixtures_dir().join("tiny-bert-rust-merged"),
            )
        } else {
            (tmp.path().join("adapter"), tmp.path().join("merged"))
        };
        let labels: Vec<String> = ["LABEL_0", "LABEL_1", "LABEL_2"].map(String::from).to_vec();
        model.save_pretrained(&adapter_dir, None).unwrap();
        save_hf_dir(
            &model.merge_and_unload(),
            &fixtures_dir().join("tiny-bert"),
            &labels,
            &merged_dir,
        )
        .unwrap();
        // 第二个适配器（池化层、rank_pattern、alpha_pattern；类别名写进目录里的 config.json）
        let qkvd = rust_adapter_qkvd(&dev);
        let ours_qkvd = logits(&qkvd);
        // 第三个适配器：池化层整个训练（modules_to_save 含 pooler）
        let pooler = rust_adapter_pooler(&dev);
        let ours_pooler = logits(&pooler);
        let qkvd_dir = adapter_dir.with_file_name("tiny-bert-rust-adapter-qkvd");
        let pooler_dir = adapter_dir.with_file_name("tiny-bert-rust-adapter-pooler");
        let labels3: Vec<String> = ["负面", "中性", "正面"].map(String::from).to_vec();
        let json =
            classifier_config_json(&fixtures_dir().join("tiny-bert-3label"), &labels3).unwrap();
        qkvd.save_pretrained(&qkvd_dir, Some(&json)).unwrap();
        pooler.save_pretrained(&pooler_dir, Some(&json)).unwrap();
        if adapter_dir.starts_with(fixtures_dir()) {
            crate::checkpoint::save_tensors(
                &fixtures_dir().join("tiny-bert-rust-reference.safetensors"),
                &[
                    ("logits", vec![2, 3], ours.clone()),
                    ("logits_qkvd", vec![2, 3], ours_qkvd.clone()),
                    ("logits_pooler", vec![2, 3], ours_pooler.clone()),
                ],
            )
            .unwrap();
        }
        let (base, config) = tiny_base(&dev, "tiny-bert-3label");
        let back = TinyPeft::from_pretrained(base, config, &qkvd_dir).unwrap();
        assert_eq!(back.plan, qkvd.plan);
        assert_eq!(logits(&back), ours_qkvd, "保存再读回，logits 必须逐位相同");
        let (base, config) = tiny_base(&dev, "tiny-bert-3label");
        let back = TinyPeft::from_pretrained(base, config, &pooler_dir).unwrap();
        assert!(back.adapters.pooler_copy.module.is_some() && back.plan.pooler.is_none());
        assert_eq!(
            logits(&back),
            ours_pooler,
            "保存再读回，logits 必须逐位相同"
        );

        // 读回来：PEFT 格式的适配器
        let (base, config) = tiny_base(&dev, "tiny-bert");
        let back = TinyPeft::from_pretrained(base, config, &adapter_dir).unwrap();
        assert_eq!(logits(&back), ours, "保存再读回，logits 必须逐位相同");
        // 读回来：合并后的 HF 模型目录
        let merged = load_dir::<32, 4, 48, f32, Cpu>(&dev, &merged_dir).unwrap();
        assert_eq!(merged.labels, labels);
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
        assert_eq!(
            Checkpoint::read(&qkvd_dir.join(ADAPTER_WEIGHTS))
                .unwrap()
                .tensors,
            committed("tiny-bert-rust-adapter-qkvd", ADAPTER_WEIGHTS).tensors
        );
        assert_eq!(
            Checkpoint::read(&pooler_dir.join(ADAPTER_WEIGHTS))
                .unwrap()
                .tensors,
            committed("tiny-bert-rust-adapter-pooler", ADAPTER_WEIGHTS).tensors
        );
        let reference =
            Checkpoint::read(&fixtures_dir().join("tiny-bert-rust-reference.safetensors")).unwrap();
        assert!(max_error(&ours, &reference, "logits") <= 1e-6);
        assert!(max_error(&ours_qkvd, &reference, "logits_qkvd") <= 1e-6);
        assert!(max_error(&ours_pooler, &reference, "logits_pooler") <= 1e-6);
    }
    // ANCHOR_END: rust_to_python

    // ANCHOR: multi_test
    /// 4.6 节：三个 PEFT 存的适配器装到同一个基座上，按 `make_peft_multi_fixtures.py` 里 PEFT 的顺序切换
    /// （default → dora → pattern → default）：每次的 logits 与 PEFT 的相差不超过 1e-5，基座一个数都不变。
    #[test]
    fn several_adapters_share_one_base_like_peft() {
        let dev: Cpu = Default::default();
        let (base, config) = tiny_base(&dev, "tiny-bert-3label");
        let dir = fixtures_dir();
        let mut model =
            TinyPeft::from_pretrained(base.clone(), config, &dir.join("tiny-bert-peft-qkvd"))
                .unwrap();
        model
            .load_adapter(&dir.join("tiny-bert-peft-pattern"), "pattern")
            .unwrap();
        model
            .load_adapter(&dir.join("tiny-bert-peft-dora"), "dora")
            .unwrap();
        assert_eq!(model.adapter_names(), ["default", "dora", "pattern"]);
        let reference =
            Checkpoint::read(&dir.join("tiny-bert-peft-multi-reference.safetensors")).unwrap();
        let (tokens, types, mask) = reference_batch(&reference, &dev);
        for (i, name) in ["default", "dora", "pattern", "default"].iter().enumerate() {
            model.set_adapter(name).unwrap();
            assert_eq!(&model.active, name);
            let logits = model
                .forward(tokens.clone(), Some(types.clone()), &mask, Mode::Eval)
                .unwrap()
                .logits
                .as_vec();
            let err = max_error(&logits, &reference, &format!("logits.{i}.{name}"));
            assert!(err <= 1e-5, "{name}：{err}");
        }
        assert_eq!(
            model.base.layers.modules[1].attention.w_v.weight.as_vec(),
            base.layers.modules[1].attention.w_v.weight.as_vec()
        );
        // 名字的错误都指明是哪个适配器
        let err = model
            .load_adapter(&dir.join("tiny-bert-peft-dora"), "dora")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("适配器 \"dora\"：这个名字已经有适配器了"),
            "{err}"
        );
        let err = model.set_adapter("情感").unwrap_err().to_string();
        assert_eq!(
            err,
            "适配器 \"情感\"：没有这个适配器；已载入的：default、dora、pattern"
        );
        let err = model.delete_adapter("default").unwrap_err().to_string();
        assert!(err.contains("它正在用"), "{err}");
        model.delete_adapter("dora").unwrap();
        assert_eq!(model.adapter_names(), ["default", "pattern"]);
    }
    // ANCHOR_END: multi_test

    /// 适配器的分类头与基座的类别数不同（基座 2 类、任务 3 类）：读适配器时按文件里的分类头建。
    #[test]
    fn the_adapter_decides_the_number_of_labels() {
        let dev = Cpu::seed_from_u64(3);
        let (base, config) = tiny_base(&dev, "tiny-bert");
        let mut two = base.clone();
        two.classifier = crate::bert::runtime::Head::new(&dev, 2);
        let model = rust_adapter(&dev);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("adapter");
        let labels: Vec<String> = ["负面", "中性", "正面"].map(String::from).to_vec();
        let json = classifier_config_json(&fixtures_dir().join("tiny-bert"), &labels).unwrap();
        model.save_pretrained(&dir, Some(&json)).unwrap();
        let back = TinyPeft::from_pretrained(two, config, &dir).unwrap();
        assert_eq!(back.adapters.head.outputs(), 3);
        assert_eq!(
            back.adapters.head.weight.as_vec(),
            model.adapters.head.weight.as_vec()
        );
        let cfg = crate::bert::config::HfBertConfig::read(&dir.join("config.json")).unwrap();
        assert_eq!(cfg.label_name(1), "中性");
    }
}

#[cfg(test)]
mod train_tests {
    use super::*;
    use crate::basics::autodiff::assert_spot_gradients;
    use crate::bert::hf::{fixtures_dir, load_dir};
    use crate::train::finetune::{finetune, FinetuneConfig};
    use std::ops::ControlFlow;

    /// 基座冻结时嵌入不带 tape、W₀ 不算梯度（附录 B）：适配器的梯度仍与中心差分一致，
    /// 包括第 0 层的 A（它的梯度要用到嵌入层的输出）、池化层上的 LoRA 与分类头。
    #[test]
    fn adapter_gradients_match_finite_differences() {
        use dfdx::nn::ZeroGrads;
        type Tiny = PeftBert<32, 4, 48, f64, Cpu>;
        let dev = Cpu::seed_from_u64(5);
        let base =
            crate::bert::model::TinyBert::<f64, Cpu>::new(&dev, &crate::bert::model::TINY_DIMS);
        let config = crate::bert::model::bert_config(1e-12, 0.0, 24);
        let mut model = Tiny::get_peft_model(
            base,
            config,
            LoraConfig::seq_cls(4, 8.0, &["query", "value", "pooler.dense"], 0.0),
        )
        .unwrap();
        // B 初始化为 0 时 A 的梯度恒为 0：换成随机值
        for layer in model.adapters.layers.modules.iter_mut() {
            for site in [&mut layer.w_q, &mut layer.w_v] {
                site.lora.as_mut().unwrap().lora_b = dev.sample_normal_like(&(Const, 4));
            }
        }
        model.adapters.pooler.lora.as_mut().unwrap().lora_b = dev.sample_normal_like(&(Const, 4));
        let tokens: Tensor<(usize, usize), usize, Cpu> =
            dev.tensor_from_vec(vec![2, 17, 33, 5, 3, 2, 8, 60, 3, 0], (2, 5));
        let mask = PaddingMask::from_lengths(&dev, &[5, 4], 5).unwrap();
        let w: Tensor<(usize, usize), f64, Cpu> = dev.sample_normal_like(&(2, 3));
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
        let l = |m: &Tiny, i: usize| m.adapters.layers.modules[i].clone();
        type Pick = fn(&mut Tiny) -> Vec<f64>;
        type Put = fn(&mut Tiny, &[f64]);
        let cases: [(&str, Pick, Put); 4] = [
            (
                "第 0 层 query 的 A",
                |m| {
                    m.adapters.layers.modules[0]
                        .w_q
                        .lora
                        .as_ref()
                        .unwrap()
                        .lora_a
                        .as_vec()
                },
                |m, v| {
                    m.adapters.layers.modules[0]
                        .w_q
                        .lora
                        .as_mut()
                        .unwrap()
                        .lora_a
                        .copy_from(v)
                },
            ),
            (
                "第 1 层 value 的 B",
                |m| {
                    m.adapters.layers.modules[1]
                        .w_v
                        .lora
                        .as_ref()
                        .unwrap()
                        .lora_b
                        .as_vec()
                },
                |m, v| {
                    m.adapters.layers.modules[1]
                        .w_v
                        .lora
                        .as_mut()
                        .unwrap()
                        .lora_b
                        .copy_from(v)
                },
            ),
            (
                "池化层的 A",
                |m| m.adapters.pooler.lora.as_ref().unwrap().lora_a.as_vec(),
                |m, v| m.adapters.pooler.lora.as_mut().unwrap().lora_a.copy_from(v),
            ),
            (
                "分类头",
                |m| m.adapters.head.weight.as_vec(),
                |m, v| m.adapters.head.weight.copy_from(v),
            ),
        ];
        let analytic = [
            grads.get(&l(&model, 0).w_q.lora.unwrap().lora_a).as_vec(),
            grads.get(&l(&model, 1).w_v.lora.unwrap().lora_b).as_vec(),
            grads
                .get(&model.adapters.pooler.lora.as_ref().unwrap().lora_a)
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

    /// 两个任务各一个适配器、共用一个基座：训练时只有正在用的那个在变，另一个与基座都不动。
    #[test]
    fn training_changes_only_the_active_adapter() {
        let dev = Cpu::seed_from_u64(1);
        let dir = load_dir::<32, 4, 48, f32, Cpu>(&dev, &fixtures_dir().join("tiny-bert")).unwrap();
        let lora = LoraConfig::seq_cls(4, 8.0, &["query", "value"], 0.0);
        let mut model = PeftBert::get_peft_model(dir.params, dir.config, lora.clone()).unwrap();
        model.add_adapter("second", lora).unwrap();
        model.set_adapter("second").unwrap();
        let idle_b = |m: &PeftBert<32, 4, 48, f32, Cpu>| {
            m.others["default"].adapters.layers.modules[0]
                .w_q
                .lora
                .as_ref()
                .unwrap()
                .lora_a
                .as_vec()
        };
        let before = idle_b(&model);
        let head_before = model.adapters.head.weight.as_vec();
        let frozen = model.base.layers.modules[0].attention.w_q.weight.as_vec();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let cfg = FinetuneConfig {
            epochs: 2,
            batch_size: 16,
            eval_every: 100,
            ..Default::default()
        };
        let data = crate::train::tests::toy_data();
        finetune(&mut model, &dev, &data, &cfg, &out, false, &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap()
        .unwrap();
        assert_ne!(
            model.adapters.head.weight.as_vec(),
            head_before,
            "正在用的适配器被训练"
        );
        assert_eq!(idle_b(&model), before, "不在用的适配器不动");
        assert_eq!(
            model.base.layers.modules[0].attention.w_q.weight.as_vec(),
            frozen
        );
    }

    #[test]
    fn a_peft_model_trains_only_its_adapters() {
        let dev = Cpu::seed_from_u64(0);
        let dir = load_dir::<32, 4, 48, f32, Cpu>(&dev, &fixtures_dir().join("tiny-bert")).unwrap();
        let mut model = PeftBert::get_peft_model(
            dir.params,
            dir.config,
            LoraConfig::seq_cls(4, 8.0, &["query", "value"], 0.1),
        )
        .unwrap();
        let frozen = model.base.layers.modules[0].attention.w_q.weight.as_vec();
        let b_before = model.adapters.layers.modules[1]
            .w_v
            .lora
            .as_ref()
            .unwrap()
            .lora_b
            .as_vec();
        let head_before = model.adapters.head.weight.as_vec();
        let data = crate::train::tests::toy_data();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
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
        // 适配器与分类头的副本确实被更新了（一个什么也不做的优化器过不了这两条）
        let b_after = model.adapters.layers.modules[1]
            .w_v
            .lora
            .as_ref()
            .unwrap()
            .lora_b
            .as_vec();
        assert!(b_after.iter().any(|v| *v != 0.0), "B 应当离开 0");
        assert_ne!(b_after, b_before);
        assert_ne!(model.adapters.head.weight.as_vec(), head_before);
        assert!(report.rows.len() >= 3);
    }
}
