//! 1.8 节：Pre-LN 与 Post-LN 的训练稳定性。
//!
//! 同一个较深的编码器（6 层）、同样的恒定学习率、不做预热，只改层归一化的位置，
//! 各用几个种子训练同样的步数，比较损失曲线。

use crate::kernels::Kernels;
use serde::{Deserialize, Serialize};

use crate::experiments::sentiment::VOCAB;
use crate::kernels::device::DeviceTask;
use crate::train::{train_classifier, EncodedData, StepEvent, TrainConfig};
use crate::transformer::classifier::Classifier;
use crate::transformer::encoder::{EncoderConfig, NormPosition};

// ANCHOR: preset
/// 稳定性实验的模型：d_model 64、4 个头、前馈 128、6 层。
pub type DeepModel<E, D> = Classifier<VOCAB, 64, 4, 128, 6, 2, E, D>;
// ANCHOR_END: preset

/// 每条评论最多取的字数（比情感实验短，省时间）。
pub const MAX_LEN: usize = 64;

/// 一次训练的记录。
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LnRun {
    /// true 为 Pre-LN。
    pub pre_ln: bool,
    /// 学习率。
    pub lr: f64,
    /// 种子。
    pub seed: u64,
    /// (步数, 平均损失)。
    pub loss_curve: Vec<(usize, f64)>,
    /// 训练结束时验证集的准确率。
    pub valid_accuracy: f64,
    /// 是否出现非有限的损失。
    pub diverged: bool,
}

/// 全部结果（存为 `code/results/part1-ln-stability.json`）。
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LnStabilityResult {
    /// 机器。
    pub machine: String,
    /// 每次训练的步数。
    pub steps: usize,
    /// 所有训练。
    pub runs: Vec<LnRun>,
}

/// 把数据截短到 [`MAX_LEN`] 个字。
pub fn truncate(data: &EncodedData) -> EncodedData {
    let cut = |v: &[(Vec<usize>, usize)]| {
        v.iter()
            .map(|(ids, y)| (ids[..ids.len().min(MAX_LEN)].to_vec(), *y))
            .collect()
    };
    EncodedData {
        train: cut(&data.train),
        valid: cut(&data.valid),
        test: cut(&data.test),
        pair_sep: data.pair_sep,
        labels: data.labels.clone(),
    }
}

/// 在任意设备上训练一次。
pub struct LnTask<'a> {
    /// Pre-LN 还是 Post-LN。
    pub pre_ln: bool,
    /// 训练设置（学习率、种子、步数）。
    pub train: TrainConfig,
    /// 已截短的数据。
    pub data: &'a EncodedData,
    /// 每步的回调。
    pub on_step: &'a mut dyn FnMut(StepEvent),
}

impl DeviceTask for LnTask<'_> {
    type Output = anyhow::Result<LnRun>;

    fn run<D: Kernels<f32> + Kernels<f64>>(self, dev: D) -> Self::Output {
        let norm_position = if self.pre_ln {
            NormPosition::Pre
        } else {
            NormPosition::Post
        };
        let config = EncoderConfig {
            norm_position,
            dropout: 0.1,
            max_len: MAX_LEN,
            ..Default::default()
        };
        let mut model = DeepModel::<f32, D>::new(&dev, config);
        // 只关心训练过程：不到一轮就停，验证集在停下时评估一次；测试集不碰
        let data = EncodedData {
            train: self.data.train.clone(),
            valid: self.data.valid.clone(),
            test: Vec::new(),
            pair_sep: None,
            labels: Vec::new(),
        };
        let report = train_classifier(&mut model, &dev, &data, &self.train, self.on_step)?;
        let valid_accuracy = report.valid.last().map_or(f64::NAN, |m| m.accuracy);
        Ok(LnRun {
            pre_ln: self.pre_ln,
            lr: self.train.lr,
            seed: self.train.seed,
            loss_curve: report.loss_curve,
            valid_accuracy,
            diverged: report.diverged,
        })
    }
}

/// `ln-stability` 的参数。
#[derive(clap::Args, Debug)]
pub struct LnStabilityArgs {
    /// 每次训练的步数
    #[arg(long, default_value_t = 300, value_name = "步数")]
    pub steps: usize,
    /// 种子个数（0, 1, …）
    #[arg(long, default_value_t = 3, value_name = "个数")]
    pub seeds: u64,
    /// 学习率（可给多个，逗号分隔）
    #[arg(
        long,
        default_value = "0.001",
        value_delimiter = ',',
        value_name = "学习率"
    )]
    pub lr: Vec<f64>,
    #[command(flatten)]
    pub device: super::args::OnDevice,
    #[command(flatten)]
    pub dry_run: super::args::DryRun,
}

/// `cargo run --release -- ln-stability`：每个学习率 × {Pre-LN, Post-LN} × 种子各训练一次，写 `part1-ln-stability.json`。
pub fn run(a: LnStabilityArgs) -> anyhow::Result<()> {
    let (data, _, _) = super::sentiment::prepare()?;
    let data = truncate(&data);
    let mut result = LnStabilityResult {
        machine: super::machine_description(),
        steps: a.steps,
        runs: Vec::new(),
    };
    let total = a.lr.len() as u64 * 2 * a.seeds;
    let bar = super::args::step_bar(total * a.steps as u64);
    for &lr in &a.lr {
        for pre_ln in [true, false] {
            for seed in 0..a.seeds {
                let done = result.runs.len() as u64 * a.steps as u64;
                let label = format!(
                    "{} lr={lr} 种子 {seed}",
                    if pre_ln { "Pre-LN" } else { "Post-LN" }
                );
                let mut on_step = |e: StepEvent| {
                    bar.set_position(done + e.step as u64);
                    bar.set_message(format!("{label} 损失 {:.4}", e.loss));
                };
                let train = TrainConfig {
                    epochs: 100,
                    max_steps: Some(a.steps),
                    batch_size: 32,
                    lr,
                    seed,
                    log_every: 10,
                };
                let task = LnTask {
                    pre_ln,
                    train,
                    data: &data,
                    on_step: &mut on_step,
                };
                let run = a.device.run(seed, task)??;
                bar.suspend(|| {
                    println!(
                        "{label}：最后 10 步平均损失 {:.4}，验证集准确率 {:.4}{}",
                        run.loss_curve.last().map_or(f64::NAN, |p| p.1),
                        run.valid_accuracy,
                        if run.diverged { "（发散）" } else { "" }
                    )
                });
                result.runs.push(run);
            }
        }
    }
    bar.finish_and_clear();
    a.dry_run.save("part1-ln-stability", &result)
}
