//! 3.6、3.8 节：用任意 BERT 模型目录（或 Hub 上的名字）在一个分类任务上微调（全量、线性探测、从零训练或
//! PEFT 风格的 LoRA），以及推理命令 `classify`、`embed`。
//!
//! 命令行读到的是目录与 JSON，模型的宽度 (M, H, F) 却是类型参数：设备由 [`run_on`](crate::kernels::device::run_on)
//! 选，宽度由 [`dispatch_dir`] 选；其余的大小（层数、词表、类别数、LoRA 的秩与目标层）都是运行期的数。
//! 一切能在读权重之前核对的（`config.json`、LoRA 配置、`--max-len`）都先核对，再建输出目录、读权重、分词。

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use crate::kernels::Kernels;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::bert::config::HfBertConfig;
use crate::bert::hf::{load_dir, BertDir, HeadSource};
use crate::bert::model::{sentence_embedding, BertClassifier, BertDims, ProbeParams};
use crate::bert::presets::{dispatch_dir, WidthTask};
use crate::bert::runtime::{Head, SavedLinear};
use crate::bert::tokenizer::BertTokenizer;
use crate::data::batch::make_batch;
use crate::data::table::Row;
use crate::data::task::TaskData;
use crate::kernels::device::DeviceTask;
use crate::peft::config::LoraConfig;
use crate::peft::model::{
    check_config, classifier_config_json, save_hf_dir, PeftBert, TrainableParams, DEFAULT_ADAPTER,
};
use crate::quant::QuantKind;
use crate::train::finetune::{curves_svg, finetune, FinetuneConfig, FinetuneEvent, FinetuneReport};
use crate::train::EncodedData;
use crate::transformer::encoder::Mode;

/// 训练哪些参数。
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Method {
    /// 全量微调。
    Full,
    /// 不用预训练的权重：同样的结构随机初始化（BERT 的初始化），全部参数从零训练。
    Scratch,
    /// 线性探测：冻结 BERT，只训练分类头。
    Probe,
    /// PEFT 风格的 LoRA。
    Lora(Box<LoraConfig>),
}

impl Method {
    /// 没有给 `--lr` 时的峰值学习率：全量微调 3e-5（BERT 论文的 2e-5–5e-5 之间），
    /// 其余（LoRA、线性探测、从零训练）5e-4：新初始化的参数要大一个数量级的学习率。
    pub fn default_lr(&self) -> f64 {
        match self {
            Method::Full => 3e-5,
            Method::Scratch | Method::Probe | Method::Lora(_) => 5e-4,
        }
    }
}

/// 一次微调的结果（`cargo run --release -- finetune` 写进输出目录的 `summary.json`）。
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneSummary {
    /// 模型目录。
    pub model: String,
    /// 方法。
    pub method: Method,
    /// 超参数。
    pub config: FinetuneConfig,
    /// 最大长度（记号数，含 [CLS]、[SEP]）。
    pub max_len: usize,
    /// 数据从哪里来（早于这个字段的结果文件里没有它）。
    #[serde(default)]
    pub data: Option<String>,
    /// 类别名，按 id 的顺序（早于这个字段的结果文件里没有它）。
    #[serde(default)]
    pub labels: Vec<String>,
    /// 训练集、验证集、测试集的条数（早于这个字段的结果文件里没有它：`None`）。
    #[serde(default)]
    pub examples: Option<(usize, usize, usize)>,
    /// 训练集里 `[UNK]` 占全部记号（不含 [CLS]、[SEP]）的比例：词表不覆盖语料时，模型看到的多半是 [UNK]。
    /// （早于这个字段的结果文件里没有它：`None`。）
    #[serde(default)]
    pub unk_ratio: Option<f64>,
    /// 可训练参数 / 全部参数（与 PEFT 的计法相同）。
    pub trainable: usize,
    /// 全部参数。
    pub all: usize,
    /// 训练报告。
    pub report: FinetuneReport,
    /// 进程的峰值常驻内存（字节；Linux 的 VmHWM，其他系统为 `None`）。
    #[serde(default)]
    pub peak_rss_bytes: Option<u64>,
    /// 基座的投影权重量化成什么格式存放（QLoRA，4.5 节；`None`：f32。早于这个字段的结果文件里没有它）。
    #[serde(default)]
    pub quantize: Option<QuantKind>,
    /// AdaLoRA（4.4 节）训练后各模块留下的秩（模块名，秩），按模型里的顺序；不是 AdaLoRA 时没有。
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adalora_ranks: Option<Vec<(String, usize)>>,
    /// 机器。
    pub machine: String,
}

// ANCHOR: rank_grid
/// BERT 一层里 AdaLoRA 可以加的六种模块（`bert.encoder.layer.<层>.` 之后的名字）与图表里的简称。
pub const BERT_LAYER_MODULES: [(&str, &str); 6] = [
    ("attention.self.query", "Q"),
    ("attention.self.key", "K"),
    ("attention.self.value", "V"),
    ("attention.output.dense", "注意力输出"),
    ("intermediate.dense", "FFN 升维"),
    ("output.dense", "FFN 降维"),
];

/// 几次 AdaLoRA 训练最后的秩，按（层, 模块种类）取平均：第 l 行第 k 列是第 l 层第 k 种模块
/// （[`BERT_LAYER_MODULES`] 的次序）的平均秩；某次训练没有这个模块的，按 0 算。行数是结果里出现的最大层号加 1。
pub fn adalora_rank_grid(runs: &[FinetuneSummary]) -> anyhow::Result<Vec<Vec<f64>>> {
    anyhow::ensure!(!runs.is_empty(), "没有 AdaLoRA 的结果");
    let mut grid: Vec<Vec<f64>> = Vec::new();
    for run in runs {
        let ranks = run
            .adalora_ranks
            .as_ref()
            .context("结果里没有 adalora_ranks：不是 AdaLoRA 的训练")?;
        for (name, rank) in ranks {
            let rest = name
                .split_once("encoder.layer.")
                .map(|(_, rest)| rest)
                .with_context(|| format!("模块名 {name} 不是 BERT 编码器层里的"))?;
            let (layer, kind) = rest
                .split_once('.')
                .with_context(|| format!("模块名 {name} 里没有层号"))?;
            let layer: usize = layer
                .parse()
                .with_context(|| format!("模块名 {name} 的层号不是数"))?;
            let k = (BERT_LAYER_MODULES.iter().position(|(m, _)| *m == kind))
                .with_context(|| format!("模块名 {name}：不认识的模块种类 {kind}"))?;
            if grid.len() <= layer {
                grid.resize(layer + 1, vec![0.0; BERT_LAYER_MODULES.len()]);
            }
            grid[layer][k] += *rank as f64 / runs.len() as f64;
        }
    }
    Ok(grid)
}
// ANCHOR_END: rank_grid

/// 本进程的峰值常驻内存（`/proc/self/status` 的 VmHWM），读不到时为 `None`。
pub fn peak_rss_bytes() -> Option<u64> {
    crate::alloc::proc_status_bytes("VmHWM:").map(|b| b as u64)
}

/// 没给 `--max-len` 时的最大长度（模型的位置更少时取模型的 `max_position_embeddings`）。
pub const DEFAULT_MAX_LEN: usize = 128;

/// 最大长度：给了 `--max-len` 时须在 1 到模型的 `max_position_embeddings` 之间（更长的输入没有位置嵌入），
/// 没给时取 [`DEFAULT_MAX_LEN`] 与模型的 `max_position_embeddings` 中较小的一个。
pub fn resolve_max_len(
    requested: Option<usize>,
    dims: &BertDims,
    model_dir: &Path,
) -> anyhow::Result<usize> {
    match requested {
        None => Ok(DEFAULT_MAX_LEN.min(dims.max_positions)),
        Some(n) if n == 0 || n > dims.max_positions => bail!(
            "--max-len = {n}：须在 1 到 {}（{} 的 config.json 里的 max_position_embeddings）之间",
            dims.max_positions,
            model_dir.display()
        ),
        Some(n) => Ok(n),
    }
}

// ANCHOR: encode
/// 用模型的分词器把一个任务的三份数据编码成 id（超过 `max_len` 的截断；句子对按 BERT 的
/// `[CLS] A [SEP] B [SEP]` 拼接）。组批时用 0 填充，所以分词器的 `[PAD]` 必须是 0。
pub fn encode_task(
    tokenizer: &BertTokenizer,
    task: &TaskData,
    max_len: usize,
) -> anyhow::Result<EncodedData> {
    match tokenizer.token_id("[PAD]") {
        Some(0) => {}
        other => bail!("分词器的 [PAD] 的 id 是 {other:?}，本书的组批用 0 填充，要求 [PAD] 为 0"),
    }
    let [train_y, valid_y, test_y] = task.label_ids(None)?;
    let encode = |rows: &[Row], labels: Vec<usize>| -> anyhow::Result<Vec<(Vec<usize>, usize)>> {
        rows.iter()
            .zip(labels)
            .map(|(r, y)| {
                Ok((
                    tokenizer
                        .encode(&r.text, r.text_pair.as_deref(), max_len)?
                        .ids,
                    y,
                ))
            })
            .collect()
    };
    let pair_sep = match task.has_pairs() {
        true => Some(
            tokenizer
                .token_id("[SEP]")
                .context("分词器的词表里没有 [SEP]，不能处理句子对")?,
        ),
        false => None,
    };
    Ok(EncodedData {
        train: encode(&task.train, train_y)?,
        valid: encode(&task.valid, valid_y)?,
        test: encode(&task.test, test_y)?,
        pair_sep,
        labels: task.labels.names().to_vec(),
    })
}
// ANCHOR_END: encode

/// 训练集里 `[UNK]` 占全部记号（不含首尾的 [CLS]、[SEP]）的比例。
pub fn unk_ratio(tokenizer: &BertTokenizer, data: &EncodedData) -> f64 {
    let unk = tokenizer.token_id("[UNK]");
    let (mut n, mut u) = (0usize, 0usize);
    for (ids, _) in &data.train {
        let inner = &ids[1..ids.len().saturating_sub(1).max(1)];
        n += inner.len();
        u += inner.iter().filter(|&&i| Some(i) == unk).count();
    }
    u as f64 / n.max(1) as f64
}

/// 开始训练前报告给命令行的情况。
pub struct StartInfo {
    /// 可训练参数。
    pub counts: TrainableParams,
    /// 分类头是读进来的还是新建的。
    pub head: HeadSource,
    /// 池化层是读进来的还是新建的（新建时线性探测与 LoRA 也训练它）。
    pub pooler: HeadSource,
    /// 训练集里 [UNK] 的比例。
    pub unk_ratio: f64,
    /// LoRA 的 `target_modules` 里没有匹配到任何模块的名字。
    pub unmatched_targets: Vec<String>,
    /// 基座量化存放时（4.5 节）：格式、量化数据的字节数、同样的权重以 f32 存放的字节数。
    pub quant: Option<(QuantKind, usize, usize)>,
}

/// 微调命令的全部输入。
pub struct FinetuneJob<'a> {
    /// 模型目录（Hub 上的名字已由 [`crate::bert::hub`] 换成本地目录）。
    pub model_dir: PathBuf,
    /// 方法。
    pub method: Method,
    /// 超参数。
    pub config: FinetuneConfig,
    /// 最大长度（`None`：见 [`resolve_max_len`]）。
    pub max_len: Option<usize>,
    /// 输出目录。
    pub out: PathBuf,
    /// 是否从检查点接着训练。
    pub resume: bool,
    /// 是否另存合并后的模型（LoRA）。
    pub merge: bool,
    /// 把冻结基座的投影权重量化成这种格式存放（QLoRA，4.5 节；只用于 LoRA）。
    pub quantize: Option<QuantKind>,
    /// 数据。
    pub task: &'a TaskData,
    /// 开始训练前调用一次。
    pub on_start: &'a mut dyn FnMut(StartInfo),
    /// 训练事件。
    pub on_event: &'a mut dyn FnMut(FinetuneEvent) -> ControlFlow<()>,
}

/// [`FinetuneJob`] 在设备 D 上。
struct OnDevice<'a, 'b, D> {
    job: FinetuneJob<'a>,
    dev: &'b D,
}

impl DeviceTask for FinetuneJob<'_> {
    type Output = anyhow::Result<Option<FinetuneSummary>>;
    fn run<D: Kernels<f32> + Kernels<f64>>(self, dev: D) -> Self::Output {
        let dir = self.model_dir.clone();
        dispatch_dir(
            &dir,
            OnDevice {
                job: self,
                dev: &dev,
            },
        )?
    }
}

/// 分类头：模型带来的头类别名与任务相同（或任务的标签就是 0..n 的整数、个数相同）时沿用，否则新建。
fn task_head<const M: usize, const H: usize, const F: usize, D: Kernels<f32>>(
    model: &mut BertDir<M, H, F, f32, D>,
    task: &TaskData,
    dev: &D,
) {
    let names = task.labels.names();
    let integer_ids = names.iter().enumerate().all(|(i, n)| *n == i.to_string());
    let same = model.labels == names || (integer_ids && model.labels.len() == names.len());
    if model.head == HeadSource::Loaded && same {
        return;
    }
    model.params.classifier = Head::new(dev, names.len());
    model.head = HeadSource::New;
}

impl<D: Kernels<f32>> WidthTask for OnDevice<'_, '_, D> {
    type Output = anyhow::Result<Option<FinetuneSummary>>;
    fn run<const M: usize, const H: usize, const F: usize>(self) -> Self::Output {
        let mut job = self.job;
        // 读权重之前：config.json、--max-len、LoRA 配置都先核对，再建输出目录
        let config_path = job.model_dir.join("config.json");
        let (_, dims) = HfBertConfig::read(&config_path)?.check(&config_path)?;
        let max_len = resolve_max_len(job.max_len, &dims, &job.model_dir)?;
        let plan = match &job.method {
            Method::Lora(lora) => Some(check_config::<M, F>(lora, dims.num_layers)?),
            _ => None,
        };
        if job.quantize.is_some() && plan.is_none() {
            anyhow::bail!(
                "--quantize 只用于 LoRA（QLoRA：基座冻结、量化存放）；全量微调、从零训练要更新基座的权重，\
                 线性探测不加 LoRA，请去掉 --quantize"
            );
        }
        check_out_dir(&job.out)?;
        let mut model: BertDir<M, H, F, f32, D> = load_dir(self.dev, &job.model_dir)?;
        task_head(&mut model, job.task, self.dev);
        let data = encode_task(&model.tokenizer, job.task, max_len)?;
        let unk_ratio = unk_ratio(&model.tokenizer, &data);
        let start = |counts, quant| StartInfo {
            counts,
            quant,
            head: model.head,
            pooler: model.pooler,
            unk_ratio,
            unmatched_targets: plan
                .as_ref()
                .map(|p| p.unmatched.clone())
                .unwrap_or_default(),
        };
        let labels = job.task.labels.names().to_vec();
        let label_config = classifier_config_json(&job.model_dir, &labels)?;
        match job.method.clone() {
            Method::Probe => {
                // 检查点里没有池化层时它是随机新建的：与分类头一起训练（附录 A 的对比表的每一组都训练池化层）
                let pooler = SavedLinear {
                    module: (model.pooler == HeadSource::New).then(|| model.params.pooler.clone()),
                };
                let mut probe = crate::bert::model::LinearProbe {
                    trainable: ProbeParams {
                        head: model.params.classifier.clone(),
                        pooler,
                    },
                    base: model.params,
                    config: model.config,
                };
                let all = dfdx::nn::NumParams::num_trainable_params(&probe.base);
                let counts = TrainableParams {
                    trainable: dfdx::nn::NumParams::num_trainable_params(&probe.trainable),
                    all,
                };
                (job.on_start)(start(counts, None));
                let report = run_finetune(&mut probe, self.dev, &data, &mut job)?;
                if report.is_some() {
                    let mut merged = probe.base;
                    merged.classifier = probe.trainable.head;
                    if let Some(pooler) = probe.trainable.pooler.module {
                        merged.pooler = pooler;
                    }
                    save_hf_dir(&merged, &job.model_dir, &labels, &job.out.join("model"))?;
                }
                Ok(report.map(|r| summary(&job, max_len, counts, unk_ratio, r)))
            }
            Method::Full | Method::Scratch => {
                let mut params = model.params;
                if job.method == Method::Scratch {
                    crate::bert::model::bert_init(&mut params);
                }
                let mut classifier = BertClassifier {
                    params,
                    config: model.config,
                };
                let n = dfdx::nn::NumParams::num_trainable_params(&classifier.params);
                let counts = TrainableParams {
                    trainable: n,
                    all: n,
                };
                (job.on_start)(start(counts, None));
                let report = run_finetune(&mut classifier, self.dev, &data, &mut job)?;
                if report.is_some() {
                    save_hf_dir(
                        &classifier.params,
                        &job.model_dir,
                        &labels,
                        &job.out.join("model"),
                    )?;
                }
                Ok(report.map(|r| summary(&job, max_len, counts, unk_ratio, r)))
            }
            Method::Lora(lora) => {
                // 检查点里没有池化层：像线性探测一样训练它（PEFT 的 modules_to_save 加上 pooler，这时池化层不加 LoRA）
                let mut lora = *lora;
                if model.pooler == HeadSource::New && !lora.trains_pooler() {
                    lora.modules_to_save
                        .get_or_insert_with(Vec::new)
                        .push("pooler".into());
                    job.method = Method::Lora(Box::new(lora.clone()));
                }
                // QLoRA（4.5 节）：基座量化存放，适配器按量化后的基座初始化
                let mut peft = match job.quantize {
                    Some(kind) => {
                        PeftBert::get_peft_model_quantized(model.params, model.config, lora, kind)?
                    }
                    None => PeftBert::get_peft_model(model.params, model.config, lora)?,
                };
                let quant = peft
                    .quant
                    .as_ref()
                    .map(|q| (q.kind, q.stored_bytes, q.f32_bytes));
                let counts = peft.trainable_parameters();
                (job.on_start)(start(counts, quant));
                let report = run_finetune(&mut peft, self.dev, &data, &mut job)?;
                let ranks = peft.adalora_ranks();
                if report.is_some() {
                    peft.lora.base_model_name_or_path = Some(job.model_dir.display().to_string());
                    peft.save_pretrained(&job.out.join("adapter"), Some(&label_config))?;
                    if job.merge {
                        let merged = peft.merge_and_unload();
                        save_hf_dir(&merged, &job.model_dir, &labels, &job.out.join("merged"))?;
                    }
                }
                Ok(report.map(|r| FinetuneSummary {
                    adalora_ranks: ranks,
                    ..summary(&job, max_len, counts, unk_ratio, r)
                }))
            }
        }
    }
}

fn run_finetune<D: Kernels<f32>, Mo: crate::train::SequenceClassifier<f32, D>>(
    model: &mut Mo,
    dev: &D,
    data: &EncodedData,
    job: &mut FinetuneJob<'_>,
) -> anyhow::Result<Option<FinetuneReport>> {
    let report = finetune(
        model,
        dev,
        data,
        &job.config,
        &job.out,
        job.resume,
        job.on_event,
    )?;
    if let Some(r) = &report {
        let svg = curves_svg(&r.rows, "训练曲线")?;
        crate::io::write_atomic(&job.out.join("curves.svg"), svg.as_bytes())?;
    }
    Ok(report)
}

fn summary(
    job: &FinetuneJob<'_>,
    max_len: usize,
    counts: TrainableParams,
    unk_ratio: f64,
    report: FinetuneReport,
) -> FinetuneSummary {
    FinetuneSummary {
        model: job.model_dir.display().to_string(),
        method: job.method.clone(),
        config: job.config,
        max_len,
        data: Some(job.task.source.clone()),
        labels: job.task.labels.names().to_vec(),
        examples: Some((
            job.task.train.len(),
            job.task.valid.len(),
            job.task.test.len(),
        )),
        unk_ratio: Some(unk_ratio),
        trainable: counts.trainable,
        all: counts.all,
        report,
        peak_rss_bytes: peak_rss_bytes(),
        quantize: job.quantize,
        adalora_ranks: None,
        machine: super::machine_description(),
    }
}

/// 一段文本的分类结果。
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// 用的适配器（给了几个 `--adapter` 时，每个适配器各一组预测；没有适配器时为 `None`）。
    pub adapter: Option<String>,
    /// 文本。
    pub text: String,
    /// 预测的类别名。
    pub label: String,
    /// 每一类的概率（按类别 id 的顺序）。
    pub probabilities: Vec<(String, f64)>,
}

/// `classify` 与 `embed` 命令。
pub struct InferJob {
    /// 模型目录。
    pub model_dir: PathBuf,
    /// 适配器目录（只对 classify；可以几个，共用一个基座，4.6 节）。
    pub adapters: Vec<PathBuf>,
    /// 文本。
    pub texts: Vec<String>,
    /// 最大长度。
    pub max_len: Option<usize>,
    /// 分类（否则求句向量）。
    pub classify: bool,
}

/// 推理的结果。
pub enum Inference {
    /// 分类。
    Predictions(Vec<Prediction>),
    /// 句向量。
    Embeddings(Vec<Vec<f32>>),
}

impl DeviceTask for InferJob {
    type Output = anyhow::Result<Inference>;
    fn run<D: Kernels<f32> + Kernels<f64>>(self, dev: D) -> Self::Output {
        if self.texts.is_empty() {
            bail!("没有给出要处理的文本");
        }
        let dir = self.model_dir.clone();
        dispatch_dir(
            &dir,
            InferOn {
                job: self,
                dev: &dev,
            },
        )?
    }
}

struct InferOn<'a, D> {
    job: InferJob,
    dev: &'a D,
}

impl<D: Kernels<f32>> WidthTask for InferOn<'_, D> {
    type Output = anyhow::Result<Inference>;
    fn run<const M: usize, const H: usize, const F: usize>(self) -> Self::Output {
        let job = self.job;
        let config_path = job.model_dir.join("config.json");
        let (_, dims) = HfBertConfig::read(&config_path)?.check(&config_path)?;
        let max_len = resolve_max_len(job.max_len, &dims, &job.model_dir)?;
        // 读权重之前先核对每个适配器的配置与这个模型配套
        for dir in &job.adapters {
            let lora = LoraConfig::read(&dir.join(crate::peft::model::ADAPTER_CONFIG))?;
            check_config::<M, F>(&lora, dims.num_layers).with_context(|| {
                format!(
                    "适配器 {} 与模型 {} 不配套",
                    dir.display(),
                    job.model_dir.display()
                )
            })?;
        }
        let names = adapter_names(&job.adapters);
        let model: BertDir<M, H, F, f32, D> = load_dir(self.dev, &job.model_dir)?;
        let encoded = job
            .texts
            .iter()
            .map(|t| Ok(model.tokenizer.encode(t, None, max_len)?.ids))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let examples: Vec<(&[usize], usize)> = encoded.iter().map(|i| (i.as_slice(), 0)).collect();
        let batch = make_batch::<f32, D>(self.dev, &examples);
        if !job.classify {
            let out =
                model
                    .params
                    .forward(&model.config, batch.tokens, None, &batch.mask, Mode::Eval)?;
            let emb = sentence_embedding(out.last_hidden_state, &batch.mask).as_vec();
            return Ok(Inference::Embeddings(
                emb.chunks(M).map(|c| c.to_vec()).collect(),
            ));
        }
        let to_predictions = |adapter: Option<&String>, logits: Vec<f32>, labels: &[String]| {
            logits
                .chunks(labels.len())
                .zip(&job.texts)
                .map(|(row, text)| {
                    let p = super::softmax(row);
                    let best = crate::train::argmax(&p);
                    Prediction {
                        adapter: adapter.cloned(),
                        text: text.clone(),
                        label: labels[best].clone(),
                        probabilities: labels.iter().cloned().zip(p).collect(),
                    }
                })
                .collect::<Vec<_>>()
        };
        let Some((first, rest)) = job.adapters.split_first() else {
            if model.head == HeadSource::New {
                bail!(
                    "{} 里没有分类头（classifier.weight），直接分类只会得到随机结果：请给出 --adapter，或用微调后的模型目录",
                    job.model_dir.display()
                );
            }
            let out =
                model
                    .params
                    .forward(&model.config, batch.tokens, None, &batch.mask, Mode::Eval)?;
            return Ok(Inference::Predictions(to_predictions(
                None,
                out.logits.as_vec(),
                &model.labels,
            )));
        };
        // 几个适配器共用一个基座：第一个随基座读进来，其余 load_adapter，逐个 set_adapter 再前向
        let mut peft = PeftBert::from_pretrained(model.params, model.config, first)
            .with_context(|| format!("读适配器 {} 失败", first.display()))?;
        for (dir, name) in rest.iter().zip(&names[1..]) {
            peft.load_adapter(dir, name)
                .with_context(|| format!("读适配器 {} 失败", dir.display()))?;
        }
        let mut predictions = Vec::new();
        for (i, (dir, name)) in job.adapters.iter().zip(&names).enumerate() {
            peft.set_adapter(if i == 0 { DEFAULT_ADAPTER } else { name })?;
            // 类别名：适配器目录里的 config.json（本书写的），没有时用基座的
            let n = peft.adapters.head.outputs();
            let labels: Vec<String> = match HfBertConfig::read(&dir.join("config.json")) {
                Ok(c) if c.num_labels() == n => (0..n).map(|i| c.label_name(i)).collect(),
                _ if model.labels.len() == n => model.labels.clone(),
                _ => (0..n).map(|i| format!("LABEL_{i}")).collect(),
            };
            let out = peft.forward(batch.tokens.clone(), None, &batch.mask, Mode::Eval)?;
            let shown = (job.adapters.len() > 1).then_some(name);
            predictions.extend(to_predictions(shown, out.logits.as_vec(), &labels));
        }
        Ok(Inference::Predictions(predictions))
    }
}

/// 几个适配器目录的名字（命令行输出里区分它们）：路径末尾最短的、彼此不同的几段，
/// 如 `runs/sentiment/adapter` 与 `runs/domain/adapter` 得到 `sentiment/adapter`、`domain/adapter`。
pub fn adapter_names(dirs: &[PathBuf]) -> Vec<String> {
    let parts: Vec<Vec<String>> = dirs
        .iter()
        .map(|d| {
            d.components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect()
        })
        .collect();
    let suffix = |p: &[String], n: usize| p[p.len().saturating_sub(n)..].join("/");
    let longest = parts.iter().map(Vec::len).max().unwrap_or(0);
    (0..parts.len())
        .map(|i| {
            let unique = (1..=longest).find(|&n| {
                let mine = suffix(&parts[i], n);
                (0..parts.len()).all(|j| j == i || suffix(&parts[j], n) != mine)
            });
            suffix(&parts[i], unique.unwrap_or(longest))
        })
        .collect()
}

/// 检查输出目录可以写（写检查点之前就发现问题）。
pub fn check_out_dir(out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("无法创建输出目录 {}", out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_names_are_the_shortest_distinct_path_ends() {
        let dirs = |v: &[&str]| v.iter().map(PathBuf::from).collect::<Vec<_>>();
        assert_eq!(
            adapter_names(&dirs(&["runs/sentiment/adapter", "runs/domain/adapter"])),
            ["sentiment/adapter", "domain/adapter"]
        );
        assert_eq!(
            adapter_names(&dirs(&["a/情感", "b/类别"])),
            ["情感", "类别"]
        );
        assert_eq!(adapter_names(&dirs(&["x/a", "x/a"])), ["x/a", "x/a"]);
    }
}

/// `classify` 与 `embed` 共同的参数。
#[derive(clap::Args, Debug)]
pub struct InferArgs {
    /// 模型：本地目录（config.json、model.safetensors、tokenizer.json 或 vocab.txt），或 Hub 上的名字（如 hfl/rbt3）
    #[arg(long, value_name = "目录或名字")]
    pub model: String,
    /// 最大长度（记号数；默认 128，模型的位置更少时取 max_position_embeddings）
    #[arg(long, value_name = "长度")]
    pub max_len: Option<usize>,
    #[command(flatten)]
    pub device: super::args::OnDevice,
    /// 文本（可给多段）
    #[arg(required = true, value_name = "文本")]
    pub texts: Vec<String>,
}

/// `classify` 的参数。
#[derive(clap::Args, Debug)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub infer: InferArgs,
    /// PEFT 格式的适配器目录（adapter_config.json、adapter_model.safetensors）；可以给几次，
    /// 几个适配器共用一个基座、逐个输出（4.6 节）
    #[arg(long, value_name = "目录")]
    pub adapter: Vec<PathBuf>,
}

/// `cargo run --release -- classify`：每段文本一行，`[适配器]\t类别\t各类概率\t文本`。
pub fn classify(a: ClassifyArgs) -> anyhow::Result<()> {
    let Inference::Predictions(preds) = infer(a.infer, a.adapter, true)? else {
        unreachable!("分类总是返回预测")
    };
    for p in preds {
        let probs: Vec<String> = (p.probabilities.iter())
            .map(|(name, prob)| format!("{name} {prob:.4}"))
            .collect();
        match &p.adapter {
            Some(a) => println!("{a}\t{}\t{}\t{}", p.label, probs.join("  "), p.text),
            None => println!("{}\t{}\t{}", p.label, probs.join("  "), p.text),
        }
    }
    Ok(())
}

/// `cargo run --release -- embed`：输出 JSON `[{"text", "embedding"}]`。
pub fn embed(a: InferArgs) -> anyhow::Result<()> {
    let texts = a.texts.clone();
    let Inference::Embeddings(vectors) = infer(a, Vec::new(), false)? else {
        unreachable!("句向量总是返回向量")
    };
    let items: Vec<serde_json::Value> = (texts.iter().zip(vectors))
        .map(|(t, v)| serde_json::json!({ "text": t, "embedding": v }))
        .collect();
    println!("{}", serde_json::to_string(&items)?);
    Ok(())
}

fn infer(a: InferArgs, adapters: Vec<PathBuf>, classify: bool) -> anyhow::Result<Inference> {
    let job = InferJob {
        model_dir: crate::bert::hub::resolve_model(&a.model)?,
        adapters,
        texts: a.texts,
        max_len: a.max_len,
        classify,
    };
    a.device.run(0, job)?
}
