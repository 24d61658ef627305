//! 训练：全书唯一的训练循环（[`trainer`]），以及分类任务的训练、评估与记录。
//!
//! 第 1 部分从零训练的编码器、第 2 部分的 LoRA、第 3 部分的 BERT 都实现 [`SequenceClassifier`]，
//! 由 [`train_classifier`]（对照实验：恒定学习率的 Adam）或 [`finetune::finetune`]（微调的完整流程）训练；
//! 两者、附录 A 的 [`pretrain::pretrain`] 与第 5 部分的 GPT 都是 [`trainer::run`] 加上各自的 [`trainer::TrainTask`]。

pub mod adamw;
pub mod finetune;
pub mod pretrain;
pub mod trainer;

use crate::kernels::Kernels;
use dfdx::nn::tensor_collection::TensorCollection;
use dfdx::optim::{Adam, AdamConfig};
use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::basics::tensors::Real;
use crate::data::batch::make_pair_batch;
use crate::transformer::attention::PaddingMask;
use crate::transformer::classifier::Classifier;
use crate::transformer::encoder::{InputError, Mode};
use trainer::{run_to_end, EvalPoint, Plan, TrainEvent, TrainTask};

/// 一个序列分类模型：参数可由优化器更新，前向给出 logits。
///
/// 类别数在运行期：第 1、2 部分的模型把它写在类型里（`Const<C>`，经 `realize` 交给训练循环），
/// 第 3 部分的 BERT 从 `config.json` 或数据里读到。
pub trait SequenceClassifier<E: Dtype, D: Device<E>> {
    /// 参数（优化器更新的对象）。
    type Params: TensorCollection<E, D>;
    /// 参数。
    fn params(&self) -> &Self::Params;
    /// 参数（可变）。
    fn params_mut(&mut self) -> &mut Self::Params;
    /// 类别数。
    fn num_labels(&self) -> usize;
    /// logits `(batch, num_labels)`。`token_types` 是句子对的句子类型 id（没有时全为 0）。
    fn logits<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        tokens: Tensor<(usize, usize), usize, D, T>,
        token_types: Option<Tensor<(usize, usize), usize, D>>,
        mask: &PaddingMask<E, D>,
        mode: Mode,
    ) -> Result<Tensor<(usize, usize), E, D, T>, InputError>;
    /// 加在交叉熵上的正则项（AdaLoRA 的正交正则，4.4 节）；默认没有。
    fn regularizer(&self) -> Option<Tensor<(), E, D, OwnedTape<E, D>>> {
        None
    }
    /// 每步优化器更新之后、梯度清零之前调用，`step` 从 0 数，`grad_scale` 是这一步梯度的裁剪系数
    /// （AdaLoRA 的秩分配，4.4 节）；默认什么也不做。
    fn after_step(&mut self, step: usize, grads: &Gradients<E, D>, grad_scale: f64) {
        let _ = (step, grads, grad_scale);
    }
    /// 模型自己按多少步排了时间表（配置的字段名, 步数）：AdaLoRA 的 `total_step`；训练的步数比它少就报错。默认没有。
    fn planned_steps(&self) -> Option<(&'static str, usize)> {
        None
    }
    /// 现在的参数能不能留作“最好的”结果（AdaLoRA 在各模块的秩定下来之前不能：那时的适配器还没剪到预算）；默认能。
    fn settled(&self) -> bool {
        true
    }
    /// 参数与优化器之外、恢复训练时还要的状态（AdaLoRA 的分数与 rank_pattern）；默认没有。
    fn training_state(&self) -> Option<serde_json::Value> {
        None
    }
    /// 从检查点恢复 [`training_state`](Self::training_state) 存下的状态；格式不对时返回原因。
    fn restore_training_state(&mut self, state: serde_json::Value) -> Result<(), String> {
        let _ = state;
        Ok(())
    }
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
    > SequenceClassifier<E, D> for Classifier<V, M, H, F, L, C, E, D>
{
    type Params = crate::transformer::classifier::ClassifierParams<V, M, H, F, L, C, E, D>;
    fn params(&self) -> &Self::Params {
        &self.params
    }
    fn params_mut(&mut self) -> &mut Self::Params {
        &mut self.params
    }
    fn num_labels(&self) -> usize {
        C
    }
    fn logits<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        tokens: Tensor<(usize, usize), usize, D, T>,
        _token_types: Option<Tensor<(usize, usize), usize, D>>,
        mask: &PaddingMask<E, D>,
        mode: Mode,
    ) -> Result<Tensor<(usize, usize), E, D, T>, InputError> {
        let (logits, _) = self.forward(tokens, mask, mode)?;
        Ok(to_runtime_labels(logits))
    }
}

/// 类别数在类型里的 logits `(batch, Const<C>)` 换成训练循环用的 `(batch, C)`：只改形状的类型，不复制数据、不动 tape。
pub fn to_runtime_labels<const C: usize, E: Dtype, D: Device<E>, T: Tape<E, D>>(
    logits: Tensor<(usize, Const<C>), E, D, T>,
) -> Tensor<(usize, usize), E, D, T> {
    match logits.try_realize() {
        Ok(t) => t,
        Err(_) => unreachable!("(usize, Const<C>) 总能看作 (usize, usize)"),
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
    /// 样本是句子对时，`[SEP]` 的 id：句子类型由它得出（见 [`token_types`](crate::data::batch::make_pair_batch)）。
    pub pair_sep: Option<usize>,
    /// 类别名，按 id 的顺序（可以为空：第 1、2 部分的实验不需要名字）。微调的检查点记下它，接着训练时核对。
    pub labels: Vec<String>,
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
    /// F1：两类时是正类（标签 1）的 F1，多类时是 macro-F1（见 [`f1_score`]）。
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
/// 用 Adam（恒定学习率）训练 `model`，每轮结束评估验证集，最后评估测试集。循环是 [`trainer::run`]；
/// 这里的 [`ClassifierTask`] 只说一步的损失是什么（每轮重新打乱后的一批上的交叉熵）、评估什么。
pub fn train_classifier<E: Real, D: Kernels<E>, Mo: SequenceClassifier<E, D>>(
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
    let per_epoch = data.train.len().div_ceil(cfg.batch_size).max(1);
    let total = (cfg.max_steps.unwrap_or(usize::MAX)).min(per_epoch * cfg.epochs);
    let mut task = ClassifierTask {
        model,
        dev,
        data,
        batch_size: cfg.batch_size,
        per_epoch,
        rng: StdRng::seed_from_u64(cfg.seed),
        order: (0..data.train.len()).collect(),
    };
    let plan = Plan {
        total,
        lr_scale: &|_| 1.0,
        step_key: None,
        eval_at: &|step| step % per_epoch == 0 || step == total,
        checkpoint_every: None,
    };
    // 进度条与每 log_every 步的平均损失
    let mut report = TrainReport::default();
    let mut window = Vec::new();
    let mut on_event = |e: TrainEvent<Metrics>| {
        if let TrainEvent::Step {
            step, total, loss, ..
        } = e
        {
            report.diverged |= !loss.is_finite();
            window.push(loss);
            if window.len() == cfg.log_every {
                let mean = window.iter().sum::<f64>() / window.len() as f64;
                report.loss_curve.push((step, mean));
                window.clear();
            }
            on_step(StepEvent { step, total, loss });
        }
    };
    let progress = run_to_end(&mut task, &mut opt, &plan, &mut on_event)?;
    report.seconds_per_step = progress.seconds_per_step();
    report.valid = progress.rows;
    report.steps = progress.step;
    report.test = evaluate(task.model, dev, &data.test, data.pair_sep, cfg.batch_size)?;
    Ok(report)
}

/// [`train_classifier`] 的一步与评估。
struct ClassifierTask<'a, D, Mo> {
    model: &'a mut Mo,
    dev: &'a D,
    data: &'a EncodedData,
    batch_size: usize,
    per_epoch: usize,
    rng: StdRng,
    /// 这一轮的顺序：每轮开始时重新打乱。
    order: Vec<usize>,
}

impl<E: Real, D: Kernels<E>, Mo: SequenceClassifier<E, D>> TrainTask<E, D>
    for ClassifierTask<'_, D, Mo>
{
    type Params = Mo::Params;
    type Row = Metrics;
    type Error = InputError;
    fn params(&self) -> &Mo::Params {
        self.model.params()
    }
    fn params_mut(&mut self) -> &mut Mo::Params {
        self.model.params_mut()
    }
    fn loss(
        &mut self,
        step: usize,
        grads: Gradients<E, D>,
    ) -> Result<Tensor<Rank0, E, D, OwnedTape<E, D>>, InputError> {
        if step % self.per_epoch == 0 {
            self.order.shuffle(&mut self.rng);
        }
        let start = (step % self.per_epoch) * self.batch_size;
        let chunk = &self.order[start..(start + self.batch_size).min(self.order.len())];
        let train = &self.data.train;
        let examples: Vec<(&[usize], usize)> = chunk
            .iter()
            .map(|&i| (&train[i].0[..], train[i].1))
            .collect();
        let batch = make_pair_batch::<E, D>(self.dev, &examples, self.data.pair_sep);
        let tokens = batch.tokens.traced(grads);
        let logits = self
            .model
            .logits(tokens, batch.token_types, &batch.mask, Mode::Train)?;
        let labels = one_hot(self.dev, &batch.labels, self.model.num_labels());
        Ok(cross_entropy_with_logits_loss(logits, labels))
    }
    fn evaluate(&mut self, _: &EvalPoint) -> Result<(Metrics, bool), InputError> {
        let (data, n) = (self.data, self.batch_size);
        let valid = evaluate(&*self.model, self.dev, &data.valid, data.pair_sep, n)?;
        Ok((valid, false))
    }
}
// ANCHOR_END: train

/// 在 `examples` 上评估（推理模式，不带 tape）。`pair_sep` 见 [`EncodedData::pair_sep`]。
pub fn evaluate<E: Real, D: Kernels<E>, Mo: SequenceClassifier<E, D>>(
    model: &Mo,
    dev: &D,
    examples: &[(Vec<usize>, usize)],
    pair_sep: Option<usize>,
    batch_size: usize,
) -> Result<Metrics, InputError> {
    evaluate_detailed(model, dev, examples, pair_sep, batch_size).map(|(m, _)| m)
}

/// 同 [`evaluate`]，另给出混淆矩阵：第 i 行第 j 列 = 真实标签 i、预测为 j 的条数。
pub fn evaluate_detailed<E: Real, D: Kernels<E>, Mo: SequenceClassifier<E, D>>(
    model: &Mo,
    dev: &D,
    examples: &[(Vec<usize>, usize)],
    pair_sep: Option<usize>,
    batch_size: usize,
) -> Result<(Metrics, Vec<Vec<usize>>), InputError> {
    let c = model.num_labels();
    let mut confusion = vec![vec![0usize; c]; c];
    let mut loss_sum = 0.0f64;
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<(&[usize], usize)> = chunk.iter().map(|(ids, y)| (&ids[..], *y)).collect();
        let batch = make_pair_batch::<E, D>(dev, &refs, pair_sep);
        let logits = model.logits(batch.tokens, batch.token_types, &batch.mask, Mode::Eval)?;
        let loss = cross_entropy_with_logits_loss(logits.clone(), one_hot(dev, &batch.labels, c));
        loss_sum += loss.as_vec()[0].to_f64().unwrap_or(f64::NAN) * chunk.len() as f64;
        for (row, &y) in logits.as_vec().chunks(c).zip(&batch.labels) {
            confusion[y][argmax(row)] += 1;
        }
    }
    let n = examples.len().max(1) as f64;
    let correct: usize = (0..c).map(|i| confusion[i][i]).sum();
    Ok((
        Metrics {
            accuracy: correct as f64 / n,
            f1: f1_score(&confusion),
            loss: loss_sum / n,
        },
        confusion,
    ))
}

/// 一行 logits 里最大的下标（并列时取后一个，与 `Iterator::max_by` 相同）。
pub fn argmax<E: PartialOrd>(row: &[E]) -> usize {
    (0..row.len())
        .max_by(|&a, &b| {
            row[a]
                .partial_cmp(&row[b])
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .unwrap_or(0)
}

/// F1：两类时是正类（标签 1）的 F1，多类时是各类 F1 的平均（macro-F1，scikit-learn 的 `average="macro"`）。
pub fn f1_score(confusion: &[Vec<usize>]) -> f64 {
    let c = confusion.len();
    let f1_of = |k: usize| {
        let tp = confusion[k][k];
        let predicted: usize = (0..c).map(|i| confusion[i][k]).sum();
        let actual: usize = confusion[k].iter().sum();
        if tp == 0 {
            0.0
        } else {
            2.0 * tp as f64 / (predicted + actual) as f64
        }
    };
    match c {
        0 | 1 => 0.0,
        2 => f1_of(1),
        _ => (0..c).map(f1_of).sum::<f64>() / c as f64,
    }
}

/// 标签 → one-hot 概率 `(batch, classes)`。
pub(crate) fn one_hot<E: Dtype, D: Kernels<E>>(
    dev: &D,
    labels: &[usize],
    classes: usize,
) -> Tensor<(usize, usize), E, D> {
    let mut v = vec![E::default(); labels.len() * classes];
    for (i, &y) in labels.iter().enumerate() {
        v[i * classes + y] = E::ONE;
    }
    dev.tensor_from_vec(v, (labels.len(), classes))
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
            pair_sep: None,
            labels: Vec::new(),
        }
    }

    #[test]
    fn f1_is_the_positive_class_for_two_labels_and_macro_otherwise() {
        // 两类：正类 tp = 3、fp = 1、fn = 2 → 2·3 / (2·3 + 1 + 2) = 6/9
        let two = vec![vec![5, 1], vec![2, 3]];
        assert!((f1_score(&two) - 6.0 / 9.0).abs() < 1e-12);
        // 三类：各类 F1 = 2·tp / (预测为它 + 实际为它)，再平均
        let three = vec![vec![2, 1, 0], vec![0, 3, 0], vec![1, 0, 1]];
        let per = [4.0 / 6.0, 6.0 / 7.0, 2.0 / 3.0];
        let macro_f1 = per.iter().sum::<f64>() / 3.0;
        assert!((f1_score(&three) - macro_f1).abs() < 1e-12);
        assert_eq!(argmax(&[0.1, 0.7, 0.2]), 1);
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
