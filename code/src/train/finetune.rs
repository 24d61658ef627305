//! 3.6 节：文本分类的完整训练流程。
//!
//! 与第 1、2 部分的 [`train_classifier`](super::train_classifier)（恒定学习率的 Adam，够做对照实验）相比，这里是微调
//! 预训练模型时实际要用的流程：按长度分桶组批（少填充）、AdamW + 线性预热与衰减、梯度裁剪、定期在验证集上评估
//! 并保留最好的参数、原子地写检查点、被打断（包括 `kill -9`）后从检查点接着训练、指标写成 CSV 并画成曲线。
//! 任何实现了 [`SequenceClassifier`] 的模型都能用它：全量微调的 BERT、PEFT 风格的 LoRA BERT、第 1 部分的编码器。

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use crate::kernels::Kernels;
use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::adamw::{linear_schedule, AdamW, AdamWConfig, StepInfo};
use super::trainer::{
    check_same_config, open_checkpoint, run, save_checkpoint, EvalPoint, Plan, Progress,
    TrainEvent, TrainTask, STATE,
};
use super::{evaluate_detailed, EncodedData, Metrics, SequenceClassifier};
use crate::basics::tensors::Real;
use crate::checkpoint::{save_params, Checkpoint, CheckpointError};
use crate::data::batch::make_pair_batch;
use crate::transformer::encoder::{InputError, Mode};

// ANCHOR: config
/// 微调的超参数。写进检查点：接着训练时必须与原来的一致。
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneConfig {
    /// 训练轮数。
    pub epochs: usize,
    /// 最多训练的步数（到达即停；学习率按它衰减）。
    pub max_steps: Option<usize>,
    /// 批大小。
    pub batch_size: usize,
    /// AdamW 与梯度裁剪。
    pub optim: AdamWConfig,
    /// 预热步数占总步数的比例（BERT 微调常用 0.06–0.1）。
    pub warmup_ratio: f64,
    /// 每多少步在验证集上评估一次（训练结束时总会评估）。
    pub eval_every: usize,
    /// 每轮结束时是否也评估。数据很少时一轮只有几步，逐轮评估会让验证集挑选的次数随数据量变化；
    /// 附录 A 的学习曲线关掉它，只按 `eval_every` 评估。旧的检查点与结果里没有这一项，读作“是”。
    #[serde(default = "eval_each_epoch_default")]
    pub eval_each_epoch: bool,
    /// 每多少步写一次检查点（每次评估后也写）。
    pub checkpoint_every: usize,
    /// 是否按长度分桶组批。
    pub bucket_by_length: bool,
    /// 随机种子：与步数一起决定打乱顺序与每一步的 dropout 掩码（[`StepKey`]），接着训练时逐位相同。
    pub seed: u64,
}
// ANCHOR_END: config

fn eval_each_epoch_default() -> bool {
    true
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            max_steps: None,
            batch_size: 32,
            optim: AdamWConfig::default(),
            warmup_ratio: 0.1,
            eval_every: 200,
            eval_each_epoch: true,
            checkpoint_every: 100,
            bucket_by_length: true,
            seed: 0,
        }
    }
}

/// 指标 CSV 的一行（每次评估一行）。
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    /// 已完成的步数。
    pub step: usize,
    /// 已完成的轮数（小数）。
    pub epoch: f64,
    /// 这一步的学习率。
    pub lr: f64,
    /// 自上次评估以来的平均训练损失。
    pub train_loss: f64,
    /// 自上次评估以来的平均梯度范数（裁剪前）。
    pub grad_norm: f64,
    /// 验证集指标。
    pub valid: Metrics,
    /// 从开始训练起的秒数（不含评估；接着训练时累加）。
    pub train_seconds: f64,
}

/// 检查点里的训练状态（`state.json`）。
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneState {
    /// 超参数。
    pub config: FinetuneConfig,
    /// 训练循环的进度：步数、评估的历史、上次评估以来的累计、训练秒数。
    #[serde(flatten)]
    pub progress: Progress<MetricsRow>,
    /// 最好的验证准确率及其步数。
    pub best: Option<(usize, f64)>,
    /// 类别 id → 名字（与 transformers 的 `config.json` 写法相同）。
    pub id2label: std::collections::BTreeMap<String, String>,
    /// 模型自己的训练状态（[`SequenceClassifier::training_state`]：AdaLoRA 的分数与 rank_pattern）。
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_state: Option<serde_json::Value>,
    /// 最好的那一步时模型自己的训练状态：AdaLoRA 的 rank_pattern 随参数变，读回最好的参数时要一起换回来。
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_model_state: Option<serde_json::Value>,
}

/// transformers 的写法：键是字符串形式的 id。
pub fn id2label(labels: &[String]) -> std::collections::BTreeMap<String, String> {
    labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), l.clone()))
        .collect()
}

/// 训练结束时的报告（也写成 `report.json`）。
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneReport {
    /// 评估的历史。
    pub rows: Vec<MetricsRow>,
    /// 最好的验证准确率所在的步数。
    pub best_step: usize,
    /// 用最好的参数在测试集上的指标。
    pub test: Metrics,
    /// 测试集的混淆矩阵：第 i 行第 j 列 = 真实标签 i、预测为 j 的条数。
    pub confusion: Vec<Vec<usize>>,
    /// 总步数。
    pub steps: usize,
    /// 平均每个训练步的秒数（前向、反向与更新，不含评估）。
    pub seconds_per_step: f64,
    /// 平均每批的填充比例（填充的位置 / 全部位置）。
    pub padding_ratio: f64,
    /// 优化器状态（AdamW 的 m、v）占的字节数。
    #[serde(default)]
    pub optimizer_bytes: usize,
}

/// 微调的事件（[`TrainEvent`]，每次评估给出指标的一行）。
pub type FinetuneEvent = TrainEvent<MetricsRow>;

/// 微调中的错误。
#[derive(Debug)]
pub enum FinetuneError {
    /// 模型的输入不合法（如序列太长）。
    Input(InputError),
    /// 读写检查点出错。
    Checkpoint(CheckpointError),
    /// 其他文件读写出错。
    Io(PathBuf, String),
    /// 检查点的超参数与这次的不同。
    ConfigChanged {
        /// 字段。
        field: String,
        /// 检查点里的值。
        saved: String,
        /// 这次的值。
        now: String,
    },
    /// 输出目录里已有检查点，却没有要求接着训练。
    CheckpointExists(PathBuf),
    /// 数据为空。
    EmptyData(&'static str),
    /// 检查点的类别与这次数据的不同。
    LabelsChanged {
        /// 检查点里的类别名。
        checkpoint: Vec<String>,
        /// 这次数据的类别名。
        data: Vec<String>,
    },
    /// 模型按更多的步数排了时间表（AdaLoRA 的 `total_step`），这次训练走不到头。
    ScheduleLonger {
        /// 配置的字段。
        field: &'static str,
        /// 配置里的步数。
        planned: usize,
        /// 这次训练的步数。
        steps: usize,
    },
}

impl std::fmt::Display for FinetuneError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FinetuneError::Input(e) => e.fmt(f),
            FinetuneError::Checkpoint(e) => e.fmt(f),
            FinetuneError::Io(p, e) => write!(f, "无法写入 {}：{e}", p.display()),
            FinetuneError::ConfigChanged { field, saved, now } => write!(
                f,
                "检查点的超参数与这次不同：字段 {field} 在检查点中为 {saved}，这次为 {now}（接着训练必须用同样的设置）"
            ),
            FinetuneError::CheckpointExists(p) => write!(
                f,
                "{} 中已有检查点：加 --resume 接着训练，或换一个输出目录",
                p.display()
            ),
            FinetuneError::EmptyData(which) => write!(f, "{which}为空"),
            FinetuneError::LabelsChanged { checkpoint, data } => write!(
                f,
                "检查点的类别（id2label）为 {checkpoint:?}，这次的数据为 {data:?}：接着训练必须用同样的类别"
            ),
            FinetuneError::ScheduleLonger {
                field,
                planned,
                steps,
            } => write!(
                f,
                "LoRA 配置的字段 {field} = {planned} 大于这次训练的步数 {steps}：预算降不到目标，各模块的秩定不下来\
                 （把 {field} 改成 {steps}，或用 --max-steps {planned}）"
            ),
        }
    }
}

impl std::error::Error for FinetuneError {}

impl From<InputError> for FinetuneError {
    fn from(e: InputError) -> Self {
        FinetuneError::Input(e)
    }
}
impl From<CheckpointError> for FinetuneError {
    fn from(e: CheckpointError) -> Self {
        FinetuneError::Checkpoint(e)
    }
}

// ANCHOR: buckets
/// 一轮的批次（样本下标）。打乱由 (种子, 轮次) 决定，所以接着训练时能重新得到同样的顺序。
///
/// 分桶：打乱后每 50 批的样本按长度排序再切成批，批的顺序再打乱一次。同一批里的句子长度相近，
/// 填充少；每批仍然来自随机的 50 批样本，保留了随机性。
pub fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: usize,
    bucket: bool,
) -> Vec<Vec<usize>> {
    let mut rng = StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rng);
    if bucket {
        for pool in order.chunks_mut(batch_size * 50) {
            pool.sort_by_key(|&i| lengths[i]);
        }
    }
    let mut batches: Vec<Vec<usize>> = order.chunks(batch_size).map(|c| c.to_vec()).collect();
    if bucket {
        batches.shuffle(&mut rng);
    }
    batches
}
// ANCHOR_END: buckets

// ANCHOR: finetune
/// 微调 `model`，结果写到 `out`：`metrics.csv`、`best.safetensors`（验证准确率最好时的可训练参数）、
/// `checkpoint/`（接着训练用）、`report.json`。`resume` 为真且 `out/checkpoint` 存在时从那里接着训练。
/// 结束时模型里是最好的参数。循环本身是 [`trainer::run`](super::trainer::run)，这里只有微调自己的部分。
pub fn finetune<E, D, Mo>(
    model: &mut Mo,
    dev: &D,
    data: &EncodedData,
    cfg: &FinetuneConfig,
    out: &Path,
    resume: bool,
    on_event: &mut dyn FnMut(FinetuneEvent) -> ControlFlow<()>,
) -> Result<Option<FinetuneReport>, FinetuneError>
where
    E: Real + dfdx::tensor::safetensors::SafeDtype,
    D: Kernels<E>,
    Mo: SequenceClassifier<E, D>,
{
    if data.train.is_empty() {
        return Err(FinetuneError::EmptyData("训练集"));
    }
    if data.valid.is_empty() {
        return Err(FinetuneError::EmptyData("验证集"));
    }
    let ckpt_dir = out.join("checkpoint");
    let per_epoch = data.train.len().div_ceil(cfg.batch_size);
    let total = (cfg.max_steps.unwrap_or(usize::MAX)).min(per_epoch * cfg.epochs);
    if let Some((field, planned)) = model.planned_steps() {
        if planned > total {
            return Err(FinetuneError::ScheduleLonger {
                field,
                planned,
                steps: total,
            });
        }
    }
    let warmup = (cfg.warmup_ratio * total as f64).round() as usize;
    let id2label = id2label(&data.labels);

    // 从检查点恢复，或从头开始
    let check = |state: &FinetuneState| {
        check_same_config(&state.config, cfg)?;
        if state.id2label != id2label {
            return Err(FinetuneError::LabelsChanged {
                checkpoint: state.id2label.values().cloned().collect(),
                data: data.labels.clone(),
            });
        }
        Ok(())
    };
    let (mut opt, state) =
        match open_checkpoint(&ckpt_dir, resume, check, model.params_mut(), cfg.optim)? {
            Some((state, opt)) => {
                let state: FinetuneState = state;
                if let Some(saved) = state.model_state.clone() {
                    (model.restore_training_state(saved))
                        .map_err(|e| FinetuneError::Io(ckpt_dir.join(STATE), e))?;
                }
                let _ = on_event(TrainEvent::Resumed {
                    step: state.progress.step,
                });
                (opt, state)
            }
            None => (
                AdamW::new(cfg.optim),
                FinetuneState {
                    config: *cfg,
                    progress: Progress::default(),
                    best: None,
                    id2label: id2label.clone(),
                    model_state: None,
                    best_model_state: None,
                },
            ),
        };

    let mut progress = state.progress;
    let mut task = Finetune {
        model,
        dev,
        data,
        out,
        batch_size: cfg.batch_size,
        per_epoch,
        total,
        lengths: data.train.iter().map(|(ids, _)| ids.len()).collect(),
        bucket: cfg.bucket_by_length,
        seed: cfg.seed,
        epoch: None,
        best: state.best,
        best_model_state: state.best_model_state,
        padding: (0, 0),
    };
    let plan = Plan {
        total,
        lr_scale: &|step| linear_schedule(step, warmup, total),
        step_key: Some(cfg.seed),
        eval_at: &|step| {
            step % cfg.eval_every.max(1) == 0
                || (cfg.eval_each_epoch && step % per_epoch == 0)
                || step == total
        },
        checkpoint_every: Some(cfg.checkpoint_every),
    };
    let mut save = |task: &Finetune<D, Mo>, opt: &AdamW<E>, progress: &Progress<MetricsRow>| {
        write_csv(&out.join("metrics.csv"), &progress.rows)?;
        let state = FinetuneState {
            config: *cfg,
            progress: progress.clone(),
            best: task.best,
            id2label: id2label.clone(),
            model_state: task.model.training_state(),
            best_model_state: task.best_model_state.clone(),
        };
        save_checkpoint(task.model.params(), opt, &state, &ckpt_dir)
    };
    if run(
        &mut task,
        &mut opt,
        &mut progress,
        &plan,
        &mut save,
        on_event,
    )?
    .is_break()
    {
        return Ok(None);
    }

    // 用最好的参数评估测试集
    let model = task.model;
    Checkpoint::read(&out.join("best.safetensors"))?.load_into(model.params_mut(), "")?;
    if let Some(best) = task.best_model_state.clone() {
        (model.restore_training_state(best))
            .map_err(|e| FinetuneError::Io(ckpt_dir.join(STATE), e))?;
    }
    let (test, confusion) =
        evaluate_detailed(&*model, dev, &data.test, data.pair_sep, cfg.batch_size)?;
    let (padded, positions) = task.padding;
    let report = FinetuneReport {
        rows: progress.rows.clone(),
        best_step: task.best.map_or(0, |(s, _)| s),
        test,
        confusion,
        steps: progress.step,
        seconds_per_step: progress.seconds_per_step(),
        padding_ratio: padded as f64 / positions.max(1) as f64,
        optimizer_bytes: opt.state_bytes(),
    };
    let json = serde_json::to_string_pretty(&report).expect("报告总能写成 JSON") + "\n";
    let path = out.join("report.json");
    crate::io::write_atomic(&path, json.as_bytes())
        .map_err(|e| FinetuneError::Io(path, e.to_string()))?;
    // 训练已经完成：留着检查点只会让下一次运行误以为要接着训练
    let _ = std::fs::remove_dir_all(&ckpt_dir);
    Ok(Some(report))
}

/// 微调的 [`TrainTask`]：一步是分桶组出的一批上的交叉熵（AdaLoRA 再加正交正则），评估时留下最好的参数。
struct Finetune<'a, D, Mo> {
    model: &'a mut Mo,
    dev: &'a D,
    data: &'a EncodedData,
    out: &'a Path,
    batch_size: usize,
    per_epoch: usize,
    total: usize,
    lengths: Vec<usize>,
    bucket: bool,
    seed: u64,
    /// 当前一轮的批次（轮次, 批次）：每轮算一次。
    epoch: Option<(usize, Vec<Vec<usize>>)>,
    best: Option<(usize, f64)>,
    best_model_state: Option<serde_json::Value>,
    /// 本次运行里（填充的位置, 全部位置）。
    padding: (usize, usize),
}

impl<E, D, Mo> TrainTask<E, D> for Finetune<'_, D, Mo>
where
    E: Real + dfdx::tensor::safetensors::SafeDtype,
    D: Kernels<E>,
    Mo: SequenceClassifier<E, D>,
{
    type Params = Mo::Params;
    type Row = MetricsRow;
    type Error = FinetuneError;
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
    ) -> Result<Tensor<Rank0, E, D, OwnedTape<E, D>>, FinetuneError> {
        let epoch = step / self.per_epoch;
        if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let batches = epoch_batches(
                &self.lengths,
                self.batch_size,
                self.seed,
                epoch,
                self.bucket,
            );
            self.epoch = Some((epoch, batches));
        }
        let (_, batches) = self.epoch.as_ref().expect("刚算好");
        let train = &self.data.train;
        let examples: Vec<(&[usize], usize)> = (batches[step % self.per_epoch].iter())
            .map(|&i| (&train[i].0[..], train[i].1))
            .collect();
        let batch = make_pair_batch::<E, D>(self.dev, &examples, self.data.pair_sep);
        let (b, s) = *batch.tokens.shape();
        self.padding.1 += b * s;
        self.padding.0 += b * s - batch.mask.lengths.iter().sum::<usize>();
        let logits = self.model.logits(
            batch.tokens.traced(grads),
            batch.token_types,
            &batch.mask,
            Mode::Train,
        )?;
        let onehot = super::one_hot(self.dev, &batch.labels, self.model.num_labels());
        let loss = cross_entropy_with_logits_loss(logits, onehot);
        // AdaLoRA 的正交正则与 PEFT 一样加进损失（记下的损失含它）
        Ok(match self.model.regularizer() {
            Some(reg) => loss + reg,
            None => loss,
        })
    }
    fn after_update(&mut self, step: usize, grads: &Gradients<E, D>, info: &StepInfo) {
        self.model.after_step(step, grads, info.clip);
    }
    fn evaluate(&mut self, at: &EvalPoint) -> Result<(MetricsRow, bool), FinetuneError> {
        let data = self.data;
        let (valid, _) = evaluate_detailed(
            &*self.model,
            self.dev,
            &data.valid,
            data.pair_sep,
            self.batch_size,
        )?;
        let row = MetricsRow {
            step: at.step,
            epoch: at.step as f64 / self.per_epoch as f64,
            lr: at.lr,
            train_loss: at.train_loss,
            grad_norm: at.grad_norm,
            valid,
            train_seconds: at.train_seconds,
        };
        // 还没定型的参数（AdaLoRA 的秩还在变）不参加评选；到最后一步还没有可选的，就留最后一步的
        let eligible = self.model.settled() || (self.best.is_none() && at.step == self.total);
        let best = eligible && self.best.is_none_or(|(_, acc)| valid.accuracy > acc);
        if best {
            self.best = Some((at.step, valid.accuracy));
            save_params(self.model.params(), &self.out.join("best.safetensors"))?;
            self.best_model_state = self.model.training_state();
        }
        Ok((row, best))
    }
}
// ANCHOR_END: finetune

/// 指标写成 CSV（每次整份重写，原子地）。
fn write_csv(path: &Path, rows: &[MetricsRow]) -> Result<(), FinetuneError> {
    let mut text = String::from(
        "step,epoch,lr,train_loss,grad_norm,valid_loss,valid_accuracy,valid_f1,train_seconds\n",
    );
    for r in rows {
        text.push_str(&format!(
            "{},{:.4},{:.3e},{:.6},{:.4},{:.6},{:.6},{:.6},{:.2}\n",
            r.step,
            r.epoch,
            r.lr,
            r.train_loss,
            r.grad_norm,
            r.valid.loss,
            r.valid.accuracy,
            r.valid.f1,
            r.train_seconds
        ));
    }
    crate::io::write_atomic(path, text.as_bytes())
        .map_err(|e| FinetuneError::Io(path.into(), e.to_string()))
}

/// 训练曲线：训练损失与验证准确率随步数的变化（SVG）。
pub fn curves_svg(rows: &[MetricsRow], title: &str) -> anyhow::Result<String> {
    use crate::plot::{LineChart, Series};
    LineChart {
        title: title.into(),
        x_label: "步数".into(),
        y_label: "损失 / 准确率".into(),
        series: vec![
            Series {
                name: "训练损失".into(),
                points: rows.iter().map(|r| (r.step as f64, r.train_loss)).collect(),
                ..Default::default()
            },
            Series {
                name: "验证损失".into(),
                points: rows.iter().map(|r| (r.step as f64, r.valid.loss)).collect(),
                dashed: true,
                ..Default::default()
            },
            Series {
                name: "验证准确率".into(),
                points: rows
                    .iter()
                    .map(|r| (r.step as f64, r.valid.accuracy))
                    .collect(),
                ..Default::default()
            },
        ],
    }
    .to_svg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::tests::toy_data;
    use crate::transformer::classifier::Classifier;
    use crate::transformer::encoder::EncoderConfig;

    type Toy = Classifier<10, 16, 2, 32, 1, 2, f32, Cpu>;

    fn toy_model(seed: u64) -> (Toy, Cpu) {
        toy_model_with(seed, 0.0)
    }

    /// 子层输出与注意力权重上都有概率为 `dropout` 的 dropout。
    fn toy_model_with(seed: u64, dropout: f64) -> (Toy, Cpu) {
        let dev = Cpu::seed_from_u64(seed);
        let cfg = EncoderConfig {
            dropout,
            attention_dropout: dropout,
            max_len: 16,
            ..Default::default()
        };
        (Toy::new(&dev, cfg), dev)
    }

    /// 带 dropout（子层输出与注意力权重，p = 0.1）时，在随机的几步“被杀”（检查点之后的几步白做）、
    /// 每次由一个新进程接着训练，结果与一口气训练完逐位相同：
    /// 每个 dropout 掩码只由（种子, 步数, 第几处）决定。
    #[test]
    fn resumes_exactly_with_dropout_after_several_kills() {
        use rand::Rng;
        let run = |out: &Path, kills: &[usize]| {
            let mut model = None;
            for (attempt, &kill) in kills.iter().chain(&[usize::MAX]).enumerate() {
                // 每个“新进程”的设备都从同一个种子开始：接着训练时它的随机数状态与不打断时在这一步的状态不同，
                // 掩码若取自设备的随机数，结果就会不同
                let (mut m, dev) = toy_model_with(100, 0.1);
                let got = finetune(
                    &mut m,
                    &dev,
                    &toy_data(),
                    &config(),
                    out,
                    attempt > 0,
                    &mut |e| match e {
                        FinetuneEvent::Step { step, .. } if step == kill => ControlFlow::Break(()),
                        _ => ControlFlow::Continue(()),
                    },
                )
                .unwrap();
                if let Some(report) = got {
                    model = Some((report, m));
                }
            }
            model.expect("最后一次没有被杀")
        };
        let tmp = tempfile::tempdir().unwrap();
        let straight_dir = tmp.path().join("dropout-straight");
        let (want, straight) = run(&straight_dir, &[]);
        // 随机挑 3 个被杀的步数（共 64 步，每 5 步一个检查点、每 10 步评估一次）
        let mut rng = StdRng::seed_from_u64(2024);
        let mut kills: Vec<usize> = (0..3).map(|_| rng.gen_range(1..64)).collect();
        kills.sort();
        kills.dedup();
        let killed_dir = tmp.path().join("dropout-killed");
        let (got, resumed) = run(&killed_dir, &kills);
        let strip = |r: &FinetuneReport| {
            r.rows
                .iter()
                .map(|row| (row.step, row.lr, row.train_loss, row.grad_norm, row.valid))
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&got), strip(&want), "被杀于第 {kills:?} 步");
        assert_eq!((got.test, got.best_step), (want.test, want.best_step));
        assert_eq!(
            resumed.params.head.weight.as_vec(),
            straight.params.head.weight.as_vec()
        );
        // dropout 确实起了作用：同样的设置不带 dropout，训练损失不同
        let plain_dir = tmp.path().join("dropout-plain");
        let (mut plain, dev) = toy_model_with(100, 0.0);
        let plain_report = finetune(
            &mut plain,
            &dev,
            &toy_data(),
            &config(),
            &plain_dir,
            false,
            &mut |_| ControlFlow::Continue(()),
        )
        .unwrap()
        .unwrap();
        assert_ne!(strip(&plain_report), strip(&want));
    }

    fn config() -> FinetuneConfig {
        FinetuneConfig {
            epochs: 4,
            batch_size: 16,
            optim: AdamWConfig {
                lr: 5e-3,
                ..Default::default()
            },
            eval_every: 10,
            checkpoint_every: 5,
            seed: 3,
            ..Default::default()
        }
    }

    #[test]
    fn batches_cover_every_example_once_and_bucketing_cuts_padding() {
        let lengths: Vec<usize> = (0..1000).map(|i| 5 + (i * 37) % 120).collect();
        for bucket in [false, true] {
            let batches = epoch_batches(&lengths, 8, 1, 0, bucket);
            let mut all: Vec<usize> = batches.concat();
            all.sort();
            assert_eq!(all, (0..1000).collect::<Vec<_>>());
            assert_eq!(
                batches,
                epoch_batches(&lengths, 8, 1, 0, bucket),
                "同样的种子与轮次，同样的批"
            );
            assert_ne!(
                batches,
                epoch_batches(&lengths, 8, 1, 1, bucket),
                "不同的轮次，不同的顺序"
            );
        }
        let padding = |bucket| {
            let batches = epoch_batches(&lengths, 8, 1, 0, bucket);
            let (mut pad, mut all) = (0, 0);
            for b in batches {
                let max = b.iter().map(|&i| lengths[i]).max().unwrap();
                all += max * b.len();
                pad += b.iter().map(|&i| max - lengths[i]).sum::<usize>();
            }
            pad as f64 / all as f64
        };
        let (plain, bucketed) = (padding(false), padding(true));
        assert!(
            bucketed < plain / 5.0,
            "分桶后填充比例 {bucketed:.3}，不分桶 {plain:.3}"
        );
    }

    #[test]
    fn learns_and_writes_metrics_best_and_report() {
        let (mut model, dev) = toy_model(1);
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("learn");
        let report = finetune(
            &mut model,
            &dev,
            &toy_data(),
            &config(),
            &out,
            false,
            &mut |_| ControlFlow::Continue(()),
        )
        .unwrap()
        .unwrap();
        assert!(report.test.accuracy > 0.9, "{:?}", report.test);
        assert_eq!(report.confusion.iter().flatten().sum::<usize>(), 64);
        let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
        assert_eq!(csv.lines().count(), 1 + report.rows.len());
        assert!(csv.starts_with("step,epoch,lr,train_loss"));
        assert!(out.join("best.safetensors").exists());
        assert!(out.join("report.json").exists());
        assert!(!out.join("checkpoint").exists(), "训练完成后删掉检查点");
        // 最好的一步确实是验证准确率最高的那一行
        let best = report
            .rows
            .iter()
            .find(|r| r.step == report.best_step)
            .unwrap();
        assert!(report
            .rows
            .iter()
            .all(|r| r.valid.accuracy <= best.valid.accuracy));
    }

    /// 评估的时刻：每 `eval_every` 步、每轮结束（可关）与训练结束。
    #[test]
    fn evaluates_every_n_steps_at_epoch_ends_unless_turned_off_and_at_the_end() {
        let data = toy_data(); // 256 条训练数据，批 16：每轮 16 步
        let steps = |eval_each_epoch| {
            let (mut model, dev) = toy_model(1);
            let tmp = tempfile::tempdir().unwrap();
            let out = tmp.path().join(format!("eval-{eval_each_epoch}"));
            let cfg = FinetuneConfig {
                max_steps: Some(45),
                eval_each_epoch,
                ..config()
            };
            let report = finetune(&mut model, &dev, &data, &cfg, &out, false, &mut |_| {
                ControlFlow::Continue(())
            })
            .unwrap()
            .unwrap();
            report.rows.iter().map(|r| r.step).collect::<Vec<_>>()
        };
        assert_eq!(steps(true), [10, 16, 20, 30, 32, 40, 45]);
        assert_eq!(steps(false), [10, 20, 30, 40, 45]);
    }

    // ANCHOR: resume_test
    #[test]
    fn an_interrupted_run_resumes_to_the_same_result() {
        // 不中断
        let (mut straight, dev) = toy_model(7);
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("straight");
        let want = finetune(
            &mut straight,
            &dev,
            &toy_data(),
            &config(),
            &out,
            false,
            &mut |_| ControlFlow::Continue(()),
        )
        .unwrap()
        .unwrap();

        // 第 23 步时“被杀”：最近的检查点是第 20 步写的，之后的 3 步白做了
        let (mut model, dev) = toy_model(7);
        let out2 = tmp.path().join("resumed");
        let stopped = finetune(
            &mut model,
            &dev,
            &toy_data(),
            &config(),
            &out2,
            false,
            &mut |e| match e {
                FinetuneEvent::Step { step: 23, .. } => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            },
        )
        .unwrap();
        assert!(stopped.is_none());
        // 没有 --resume：拒绝覆盖
        let (mut fresh, dev) = toy_model(99);
        let err = finetune(
            &mut fresh,
            &dev,
            &toy_data(),
            &config(),
            &out2,
            false,
            &mut |_| ControlFlow::Continue(()),
        )
        .unwrap_err();
        assert!(matches!(err, FinetuneError::CheckpointExists(_)), "{err}");
        // 改了超参数：拒绝接着训练，指明字段
        let mut changed = config();
        changed.optim.lr = 1e-3;
        let err = finetune(
            &mut fresh,
            &dev,
            &toy_data(),
            &changed,
            &out2,
            true,
            &mut |_| ControlFlow::Continue(()),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("字段 optim.lr 在检查点中为 0.005，这次为 0.001"),
            "{err}"
        );
        // 一个新进程（模型随机初始化也不同）从检查点接着训练
        let mut resumed_at = None;
        let got = finetune(
            &mut fresh,
            &dev,
            &toy_data(),
            &config(),
            &out2,
            true,
            &mut |e| {
                if let FinetuneEvent::Resumed { step } = e {
                    resumed_at = Some(step);
                }
                ControlFlow::Continue(())
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(resumed_at, Some(20));
        // 除了计时，与不中断的训练逐位相同
        let strip = |r: &FinetuneReport| {
            r.rows
                .iter()
                .map(|row| (row.step, row.lr, row.train_loss, row.grad_norm, row.valid))
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&got), strip(&want));
        assert_eq!((got.test, got.best_step), (want.test, want.best_step));
        assert_eq!(
            fresh.params.head.weight.as_vec(),
            straight.params.head.weight.as_vec()
        );
    }
    // ANCHOR_END: resume_test
}
