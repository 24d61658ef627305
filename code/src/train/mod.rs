//! 全书共用的训练循环：分类任务的训练、评估与记录。
//!
//! 第 1 部分从零训练的编码器、第 2 部分的 LoRA、第 3 部分的 BERT 都实现 [`SequenceClassifier`]，
//! 由同一个 [`train_classifier`] 训练；实验命令只负责解析参数、画进度条和保存结果。

use std::time::Instant;

pub mod adamw;
pub mod finetune;
pub mod pretrain;

use crate::kernels::Kernels;
use dfdx::nn::tensor_collection::TensorCollection;
use dfdx::nn::ZeroGrads;
use dfdx::optim::{Adam, AdamConfig, Optimizer};
use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::basics::tensors::Real;
use crate::data::batch::make_batch;
use crate::transformer::attention::PaddingMask;
use crate::transformer::classifier::Classifier;
use crate::transformer::encoder::{InputError, Mode};

/// 一个 C 类的序列分类模型：参数可由优化器更新，前向给出 logits。
pub trait SequenceClassifier<const C: usize, E: Dtype, D: Device<E>> {
    /// 参数（优化器更新的对象）。
    type Params: TensorCollection<E, D>;
    /// 参数。
    fn params(&self) -> &Self::Params;
    /// 参数（可变）。
    fn params_mut(&mut self) -> &mut Self::Params;
    /// logits `(batch, Const<C>)`。
    fn logits<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        tokens: Tensor<(usize, usize), usize, D, T>,
        mask: &PaddingMask<E, D>,
        mode: Mode,
    ) -> Result<Tensor<(usize, Const<C>), E, D, T>, InputError>;
}

impl<
        const V: usize,
        const M: usize,
        const H: usize,
        const F: usize,
        const L: usize,
        const C: usize,
        E: Real,
        D: Kernels<E>,
    > SequenceClassifier<C, E, D> for Classifier<V, M, H, F, L, C, E, D>
{
    type Params = crate::transformer::classifier::ClassifierParams<V, M, H, F, L, C, E, D>;
    fn params(&self) -> &Self::Params {
        &self.params
    }
    fn params_mut(&mut self) -> &mut Self::Params {
        &mut self.params
    }
    fn logits<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        tokens: Tensor<(usize, usize), usize, D, T>,
        mask: &PaddingMask<E, D>,
        mode: Mode,
    ) -> Result<Tensor<(usize, Const<C>), E, D, T>, InputError> {
        self.forward(tokens, mask, mode).map(|(logits, _)| logits)
    }
}

/// 编码好的数据：每条样本是 (词 id, 标签)。
#[derive(Clone, Debug, Default)]
pub struct EncodedData {
    /// 训练集。
    pub train: Vec<(Vec<usize>, usize)>,
    /// 验证集。
    pub valid: Vec<(Vec<usize>, usize)>,
    /// 测试集。
    pub test: Vec<(Vec<usize>, usize)>,
}

/// 训练的超参数。
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// 训练轮数。
    pub epochs: usize,
    /// 最多训练的步数（到达即停，用于短实验）。
    pub max_steps: Option<usize>,
    /// 批大小。
    pub batch_size: usize,
    /// Adam 的学习率（恒定，不预热）。
    pub lr: f64,
    /// 随机种子：决定初始化、打乱顺序与 dropout。
    pub seed: u64,
    /// 每多少步记录一次平均损失。
    pub log_every: usize,
}

/// 分类指标。
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// 准确率。
    pub accuracy: f64,
    /// 正类（标签 1）的 F1。
    pub f1: f64,
    /// 平均交叉熵。
    pub loss: f64,
}

/// 训练的记录。
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// (步数, 最近 `log_every` 步的平均训练损失)。
    pub loss_curve: Vec<(usize, f64)>,
    /// 每轮结束时的验证集指标。
    pub valid: Vec<Metrics>,
    /// 最后在测试集上的指标。
    pub test: Metrics,
    /// 总步数。
    pub steps: usize,
    /// 平均每步的秒数（含前向、反向与更新）。
    pub seconds_per_step: f64,
    /// 训练中是否出现了非有限的损失（发散）。
    pub diverged: bool,
}

/// 训练过程中的事件（给进度条用）。
#[derive(Clone, Copy, Debug)]
pub struct StepEvent {
    /// 已完成的步数。
    pub step: usize,
    /// 总步数。
    pub total: usize,
    /// 这一步的损失。
    pub loss: f64,
}

// ANCHOR: train
/// 用 Adam 训练 `model`，每轮结束评估验证集，最后评估测试集。
pub fn train_classifier<const C: usize, E: Real, D: Kernels<E>, Mo: SequenceClassifier<C, E, D>>(
    model: &mut Mo,
    dev: &D,
    data: &EncodedData,
    cfg: &TrainConfig,
    on_step: &mut dyn FnMut(StepEvent),
) -> Result<TrainReport, InputError> {
    let mut opt = Adam::new(
        model.params(),
        AdamConfig {
            lr: cfg.lr,
            ..Default::default()
        },
    );
    let mut grads = model.params().alloc_grads();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..data.train.len()).collect();
    let per_epoch = data.train.len().div_ceil(cfg.batch_size);
    let total = cfg
        .max_steps
        .unwrap_or(usize::MAX)
        .min(per_epoch * cfg.epochs);
    let mut report = TrainReport::default();
    let (mut window, mut step, started) = (Vec::new(), 0, Instant::now());
    for _ in 0..cfg.epochs {
        order.shuffle(&mut rng);
        for chunk in order.chunks(cfg.batch_size) {
            let examples: Vec<(&[usize], usize)> = chunk
                .iter()
                .map(|&i| (&data.train[i].0[..], data.train[i].1))
                .collect();
            let batch = make_batch::<E, D>(dev, &examples);
            let logits = model.logits(batch.tokens.traced(grads), &batch.mask, Mode::Train)?;
            let loss =
                cross_entropy_with_logits_loss(logits, one_hot::<C, E, D>(dev, &batch.labels));
            let value = loss.as_vec()[0].to_f64().unwrap_or(f64::NAN);
            grads = loss.backward();
            opt.update(model.params_mut(), &grads)
                .expect("所有参数都有梯度");
            model.params().zero_grads(&mut grads);
            step += 1;
            report.diverged |= !value.is_finite();
            window.push(value);
            if window.len() == cfg.log_every {
                report
                    .loss_curve
                    .push((step, window.iter().sum::<f64>() / window.len() as f64));
                window.clear();
            }
            on_step(StepEvent {
                step,
                total,
                loss: value,
            });
            if step >= total {
                break;
            }
        }
        // 每轮（或提前停下的最后一轮）结束时评估验证集
        report
            .valid
            .push(evaluate(model, dev, &data.valid, cfg.batch_size)?);
        if step >= total {
            break;
        }
    }
    report.steps = step;
    report.seconds_per_step = started.elapsed().as_secs_f64() / step.max(1) as f64;
    report.test = evaluate(model, dev, &data.test, cfg.batch_size)?;
    Ok(report)
}
// ANCHOR_END: train

/// 在 `examples` 上评估（推理模式，不带 tape）。
pub fn evaluate<const C: usize, E: Real, D: Kernels<E>, Mo: SequenceClassifier<C, E, D>>(
    model: &Mo,
    dev: &D,
    examples: &[(Vec<usize>, usize)],
    batch_size: usize,
) -> Result<Metrics, InputError> {
    evaluate_detailed(model, dev, examples, batch_size).map(|(m, _)| m)
}

/// 同 [`evaluate`]，另给出混淆矩阵：第 i 行第 j 列 = 真实标签 i、预测为 j 的条数。
pub fn evaluate_detailed<
    const C: usize,
    E: Real,
    D: Kernels<E>,
    Mo: SequenceClassifier<C, E, D>,
>(
    model: &Mo,
    dev: &D,
    examples: &[(Vec<usize>, usize)],
    batch_size: usize,
) -> Result<(Metrics, Vec<Vec<usize>>), InputError> {
    let mut confusion = vec![vec![0usize; C]; C];
    let mut loss_sum = 0.0f64;
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<(&[usize], usize)> = chunk.iter().map(|(ids, y)| (&ids[..], *y)).collect();
        let batch = make_batch::<E, D>(dev, &refs);
        let logits = model.logits(batch.tokens, &batch.mask, Mode::Eval)?;
        let loss =
            cross_entropy_with_logits_loss(logits.clone(), one_hot::<C, E, D>(dev, &batch.labels));
        loss_sum += loss.as_vec()[0].to_f64().unwrap_or(f64::NAN) * chunk.len() as f64;
        for (row, &y) in logits.as_vec().chunks(C).zip(&batch.labels) {
            let pred = (0..C)
                .max_by(|&a, &b| {
                    row[a]
                        .partial_cmp(&row[b])
                        .unwrap_or(std::cmp::Ordering::Equal)
                })
                .unwrap_or(0);
            confusion[y][pred] += 1;
        }
    }
    let n = examples.len().max(1) as f64;
    let correct: usize = (0..C).map(|i| confusion[i][i]).sum();
    // 正类（标签 1）的 F1
    let (tp, fp, fn_) = if C > 1 {
        let tp = confusion[1][1];
        let predicted_1: usize = (0..C).map(|i| confusion[i][1]).sum();
        let actual_1: usize = confusion[1].iter().sum();
        (tp, predicted_1 - tp, actual_1 - tp)
    } else {
        (0, 0, 0)
    };
    let f1 = if tp == 0 {
        0.0
    } else {
        2.0 * tp as f64 / (2 * tp + fp + fn_) as f64
    };
    Ok((
        Metrics {
            accuracy: correct as f64 / n,
            f1,
            loss: loss_sum / n,
        },
        confusion,
    ))
}

/// 标签 → one-hot 概率 `(batch, Const<C>)`。
fn one_hot<const C: usize, E: Dtype, D: Kernels<E>>(
    dev: &D,
    labels: &[usize],
) -> Tensor<(usize, Const<C>), E, D> {
    let mut v = vec![E::default(); labels.len() * C];
    for (i, &y) in labels.iter().enumerate() {
        v[i * C + y] = E::ONE;
    }
    dev.tensor_from_vec(v, (labels.len(), Const::<C>))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::transformer::encoder::EncoderConfig;

    /// 一个能学会的玩具任务：含记号 7 的序列为正类。
    pub(crate) fn toy_data() -> EncodedData {
        let mut rng = StdRng::seed_from_u64(0);
        let mut make = |n: usize| {
            (0..n)
                .map(|_| {
                    let len = rand::Rng::gen_range(&mut rng, 3..8);
                    let mut ids: Vec<usize> = (0..len)
                        .map(|_| rand::Rng::gen_range(&mut rng, 5..7))
                        .collect();
                    let label = rand::Rng::gen_range(&mut rng, 0..2);
                    if label == 1 {
                        let at = rand::Rng::gen_range(&mut rng, 0..len);
                        ids[at] = 7;
                    }
                    (ids, label)
                })
                .collect()
        };
        EncodedData {
            train: make(256),
            valid: make(64),
            test: make(64),
        }
    }

    #[test]
    fn learns_a_toy_task_and_is_deterministic() {
        let run = || {
            let dev = Cpu::seed_from_u64(1);
            let cfg = EncoderConfig {
                dropout: 0.0,
                max_len: 16,
                ..Default::default()
            };
            let mut model = Classifier::<10, 16, 2, 32, 1, 2, f32, Cpu>::new(&dev, cfg);
            let train = TrainConfig {
                epochs: 8,
                max_steps: None,
                batch_size: 16,
                lr: 3e-3,
                seed: 2,
                log_every: 16,
            };
            train_classifier(&mut model, &dev, &toy_data(), &train, &mut |_| {}).unwrap()
        };
        let a = run();
        assert!(a.test.accuracy > 0.9, "{:?}", a.test);
        assert!(a.loss_curve.first().unwrap().1 > a.loss_curve.last().unwrap().1);
        let b = run();
        assert_eq!(
            a.loss_curve, b.loss_curve,
            "同一种子应得到完全相同的训练过程"
        );
    }
}
