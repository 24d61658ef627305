//! 2.7 节：任务迁移。以 1.8 节训练好的情感分类器为基座，适配到“只看评论前 16 个字”的短文本情感分类，
//! 比较不训练、只训练分类头、LoRA（W_q、W_v，r = 8）与全量微调。
//!
//! 基座在最多 128 个字的评论上训练；只给前 16 个字时，输入分布变了（句子被截断、位置编码只用到前 16 行），
//! 这是一个真实数据上的分布迁移。

use crate::kernels::Kernels;
use dfdx::nn::NumParams;
use serde::{Deserialize, Serialize};

use super::results_dir;
use super::sentiment::{SentimentModel, MAX_LEN as BASE_MAX_LEN};
use crate::checkpoint::Checkpoint;
use crate::data::reviews;
use crate::data::vocab::CharVocab;
use crate::kernels::device::DeviceTask;
use crate::lora::analysis::optimizer_bytes;
use crate::lora::encoder::{Head, HeadOnly, LoraClassifier, QueryValue};
use crate::lora::layer::LoraOptions;
use crate::train::{evaluate, train_classifier, EncodedData, StepEvent, TrainConfig};
use crate::transformer::encoder::{EncoderConfig, NormPosition};

/// 迁移任务只看每条评论的前几个字。
pub const SHORT_LEN: usize = 16;
/// LoRA 的秩。
pub const RANK: usize = 8;

/// 一种适配方法的结果。
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MethodResult {
    /// 方法名。
    pub method: String,
    /// 学习率（不训练时为 0）。
    pub lr: f64,
    /// 测试集准确率。
    pub accuracy: f64,
    /// 测试集 F1。
    pub f1: f64,
    /// 可训练参数。
    pub trainable: usize,
    /// 梯度与 Adam 状态的字节数（f32）。
    pub optimizer_bytes: usize,
    /// 每步秒数（不训练时为 0）。
    pub seconds_per_step: f64,
}

/// 全部结果（存为 `code/results/part2-adaptation.json`）。
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AdaptationResult {
    /// 机器。
    pub machine: String,
    /// 基座的参数量。
    pub base_params: usize,
    /// 基座在完整（128 字）测试集上的准确率，作为参照。
    pub base_accuracy_full: f64,
    /// 各方法。
    pub methods: Vec<MethodResult>,
}

/// 读基座的词表，把三份数据截到 `len` 个字。
pub fn prepare(len: usize) -> anyhow::Result<(EncodedData, EncodedData)> {
    let vocab = CharVocab::load(&results_dir().join("part1-sentiment.vocab.txt"))?;
    let (splits, _) = reviews::load(&reviews::default_dir())?;
    let encode = |rs: &[reviews::Review], n: usize| {
        rs.iter()
            .map(|r| (vocab.encode(&r.text, n), r.label))
            .collect()
    };
    let short = EncodedData {
        train: encode(&splits.train, len),
        valid: encode(&splits.valid, len),
        test: encode(&splits.test, len),
        pair_sep: None,
        labels: Vec::new(),
    };
    let full = EncodedData {
        train: Vec::new(),
        valid: Vec::new(),
        test: encode(&splits.test, BASE_MAX_LEN),
        pair_sep: None,
        labels: Vec::new(),
    };
    Ok((short, full))
}

/// 在任意设备上运行整个对比。
pub struct AdaptationTask<'a> {
    /// 截短后的数据。
    pub short: &'a EncodedData,
    /// 完整长度的测试集（参照）。
    pub full: &'a EncodedData,
    /// 训练轮数。
    pub epochs: usize,
    /// 每步的回调：(方法名, 事件)。
    pub on_step: &'a mut dyn FnMut(&str, StepEvent),
}

impl DeviceTask for AdaptationTask<'_> {
    type Output = anyhow::Result<AdaptationResult>;

    fn run<D: Kernels<f32> + Kernels<f64>>(self, dev: D) -> Self::Output {
        let config = EncoderConfig {
            norm_position: NormPosition::Pre,
            dropout: 0.1,
            max_len: BASE_MAX_LEN,
            ..Default::default()
        };
        let mut base = SentimentModel::<f32, D>::new(&dev, config);
        Checkpoint::read(&results_dir().join("part1-sentiment.safetensors"))?
            .load_into(&mut base.params, "")?;
        let base_params = base.params.num_trainable_params();
        let batch = 32;
        let mut result = AdaptationResult {
            machine: super::machine_description(),
            base_params,
            base_accuracy_full: evaluate(&base, &dev, &self.full.test, None, batch)?.accuracy,
            methods: Vec::new(),
        };
        let zero = evaluate(&base, &dev, &self.short.test, None, batch)?;
        result.methods.push(MethodResult {
            method: "不训练（基座直接用）".into(),
            accuracy: zero.accuracy,
            f1: zero.f1,
            ..Default::default()
        });

        let train = |lr: f64| TrainConfig {
            epochs: self.epochs,
            max_steps: None,
            batch_size: batch,
            lr,
            seed: 0,
            log_every: 50,
        };
        let opts = LoraOptions {
            alpha: 2.0 * RANK as f64,
            dropout: 0.1,
        };
        let on_step = self.on_step;
        let record =
            |method: &str, lr: f64, trainable: usize, report: crate::train::TrainReport| {
                MethodResult {
                    method: method.into(),
                    lr,
                    accuracy: report.test.accuracy,
                    f1: report.test.f1,
                    trainable,
                    optimizer_bytes: optimizer_bytes(trainable),
                    seconds_per_step: report.seconds_per_step,
                }
            };

        let mut head_only =
            LoraClassifier::<3000, 128, 4, 256, 2, 2, RANK, HeadOnly, f32, D>::from_base(
                &base,
                opts,
                Head::CopyBase,
            );
        let n = head_only.adapters.num_trainable_params();
        let report = train_classifier(&mut head_only, &dev, self.short, &train(1e-3), &mut |e| {
            on_step("只训练分类头", e)
        })?;
        result.methods.push(record("只训练分类头", 1e-3, n, report));

        let mut lora =
            LoraClassifier::<3000, 128, 4, 256, 2, 2, RANK, QueryValue, f32, D>::from_base(
                &base,
                opts,
                Head::CopyBase,
            );
        let n = lora.adapters.num_trainable_params();
        let report = train_classifier(&mut lora, &dev, self.short, &train(1e-3), &mut |e| {
            on_step("LoRA W_q、W_v，r = 8", e)
        })?;
        result
            .methods
            .push(record("LoRA W_q、W_v，r = 8", 1e-3, n, report));

        let mut full = base.clone();
        let report = train_classifier(&mut full, &dev, self.short, &train(5e-4), &mut |e| {
            on_step("全量微调", e)
        })?;
        result
            .methods
            .push(record("全量微调", 5e-4, base_params, report));
        Ok(result)
    }
}

/// `adaptation` 的参数。
#[derive(clap::Args, Debug)]
pub struct AdaptationArgs {
    /// 训练轮数
    #[arg(long, default_value_t = 2, value_name = "轮数")]
    pub epochs: usize,
    #[command(flatten)]
    pub device: super::args::OnDevice,
}

/// `cargo run --release -- adaptation`：四种方法各训练一次，打印表并写 `part2-adaptation.json`。
pub fn run(a: AdaptationArgs) -> anyhow::Result<()> {
    let (short, full) = prepare(SHORT_LEN)?;
    let bar = super::args::step_bar(0);
    let mut on_step = |method: &str, e: StepEvent| {
        bar.set_length(e.total as u64);
        bar.set_position(e.step as u64);
        bar.set_message(format!("{method} 损失 {:.4}", e.loss));
    };
    let task = AdaptationTask {
        short: &short,
        full: &full,
        epochs: a.epochs,
        on_step: &mut on_step,
    };
    let result = a.device.run(0, task)??;
    bar.finish_and_clear();
    println!(
        "基座：{} 个参数，完整评论（≤128 字）测试准确率 {:.4}；迁移任务：只看前 {SHORT_LEN} 个字，训练 {} 轮（{}）",
        result.base_params, result.base_accuracy_full, a.epochs, result.machine
    );
    println!(
        "{:<22} {:>8} {:>8} {:>10} {:>12} {:>10}",
        "方法", "准确率", "F1", "可训练参数", "优化器内存", "每步秒数"
    );
    for m in &result.methods {
        println!(
            "{:<22} {:>8.4} {:>8.4} {:>10} {:>10.2} MiB {:>10.4}",
            m.method,
            m.accuracy,
            m.f1,
            m.trainable,
            m.optimizer_bytes as f64 / 1048576.0,
            m.seconds_per_step
        );
    }
    super::args::DryRun::default().save("part2-adaptation", &result)
}
