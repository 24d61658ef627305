//! 全书的训练循环（只有这一个）。
//!
//! 一步是：任务给出这一步的损失 → 反向传播 → 优化器按学习率调度更新 → 梯度清零；循环本身还负责计时、
//! 上次评估以来损失与梯度范数的平均、按计划评估与写检查点、把事件交给调用者（进度条；返回 `Break` 即停下）。
//! 各处训练只写自己不同的部分（[`TrainTask`]）：
//!
//! | 调用者 | 一步的损失 | 评估 | 检查点 |
//! | --- | --- | --- | --- |
//! | 1.8 节 [`train_classifier`](super::train_classifier) | 每轮重新打乱，交叉熵 | 每轮结束 | 无 |
//! | 3.6 节 [`finetune`](super::finetune::finetune) | 分桶组批，交叉熵（+ AdaLoRA 的正则） | 每 `eval_every` 步，留最好的参数 | 有 |
//! | 附录 A [`pretrain`](super::pretrain::pretrain) | 掩码语言模型 | 每 `eval_every` 步 | 有 |
//! | 5.2 节 [`train_lm`](crate::gpt::train::train_lm) | 随机窗口，下一个字 | 每 `eval_every` 步 | 无 |

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use dfdx::nn::tensor_collection::TensorCollection;
use dfdx::nn::ZeroGrads;
use dfdx::optim::{Adam, Optimizer};
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

use super::adamw::{AdamW, StepInfo};
use super::finetune::FinetuneError;
use crate::basics::tensors::Real;
use crate::checkpoint::{save_params, Checkpoint, CheckpointError};
use crate::kernels::step_key::StepKey;
use crate::kernels::Kernels;

/// 优化器：按梯度更新参数；`lr_scale` 是学习率调度给出的倍数。
pub trait Update<E: Dtype, D: Device<E>, P> {
    /// 更新一步，返回这一步的学习率、梯度范数与裁剪系数。
    fn update(&mut self, params: &mut P, grads: &Gradients<E, D>, lr_scale: f64) -> StepInfo;
}

impl<E, D, P> Update<E, D, P> for AdamW<E>
where
    E: Real + dfdx::tensor::safetensors::SafeDtype,
    D: Kernels<E>,
    P: TensorCollection<E, D>,
{
    fn update(&mut self, params: &mut P, grads: &Gradients<E, D>, lr_scale: f64) -> StepInfo {
        self.step(params, grads, lr_scale)
    }
}

/// 第 1、2 部分的对照实验用 dfdx 自带的 Adam（恒定学习率，不裁剪）：不看 `lr_scale`，也不算梯度范数。
impl<E: Dtype, D: Device<E>, P> Update<E, D, P> for Adam<P, E, D>
where
    Adam<P, E, D>: Optimizer<P, D, E>,
{
    fn update(&mut self, params: &mut P, grads: &Gradients<E, D>, _lr_scale: f64) -> StepInfo {
        Optimizer::update(self, params, grads).expect("所有参数都有梯度");
        StepInfo {
            grad_norm: f64::NAN,
            lr: self.cfg.lr,
            clip: 1.0,
        }
    }
}

/// 上次评估以来的累计。
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// 损失之和。
    pub loss: f64,
    /// 梯度范数（裁剪前）之和。
    pub grad_norm: f64,
    /// 步数。
    pub steps: usize,
}

/// 训练的进度：写进检查点，接着训练时从这里继续。
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress<R> {
    /// 已完成的步数。
    pub step: usize,
    /// 评估的历史。
    pub rows: Vec<R>,
    /// 上次评估以来的累计。
    pub window: Window,
    /// 累计训练秒数（不含评估；接着训练时累加）。
    pub train_seconds: f64,
}

impl<R> Progress<R> {
    /// 平均每步的训练秒数（不含评估）。
    pub fn seconds_per_step(&self) -> f64 {
        self.train_seconds / self.step.max(1) as f64
    }
}

impl<R> Default for Progress<R> {
    fn default() -> Self {
        Self {
            step: 0,
            rows: Vec::new(),
            window: Window::default(),
            train_seconds: 0.0,
        }
    }
}

/// 评估时循环交给任务的数（任务用它们与验证集上的指标拼成自己的一行记录）。
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalPoint {
    /// 已完成的步数。
    pub step: usize,
    /// 最后一步的学习率。
    pub lr: f64,
    /// 上次评估以来的平均训练损失。
    pub train_loss: f64,
    /// 上次评估以来的平均梯度范数（裁剪前；dfdx 的 Adam 不算，为 NaN）。
    pub grad_norm: f64,
    /// 累计训练秒数。
    pub train_seconds: f64,
}

/// 训练过程中的事件（给进度条用）。返回 `ControlFlow::Break` 会立刻停下（模拟中断；检查点保留最近写的那个）。
#[derive(Clone, Copy, Debug)]
pub enum TrainEvent<R> {
    /// 从检查点接着训练。
    Resumed {
        /// 检查点的步数。
        step: usize,
    },
    /// 完成一步。
    Step {
        /// 已完成的步数。
        step: usize,
        /// 总步数。
        total: usize,
        /// 损失。
        loss: f64,
        /// 学习率。
        lr: f64,
    },
    /// 完成一次评估。
    Eval {
        /// 这一行记录。
        row: R,
        /// 是否是目前最好的（不评选的任务总是 false）。
        best: bool,
    },
}

/// 各处训练不同的部分。
pub trait TrainTask<E: Dtype, D: Device<E>> {
    /// 优化器更新的参数。
    type Params: TensorCollection<E, D>;
    /// 一次评估的记录。
    type Row: Copy;
    /// 错误。
    type Error;
    /// 参数。
    fn params(&self) -> &Self::Params;
    /// 参数（可改）。
    fn params_mut(&mut self) -> &mut Self::Params;
    /// 第 `step` 步（从 0 数）的损失：把 `grads` 交给输入（`tokens.traced(grads)`），返回带 tape 的标量。
    fn loss(
        &mut self,
        step: usize,
        grads: Gradients<E, D>,
    ) -> Result<Tensor<Rank0, E, D, OwnedTape<E, D>>, Self::Error>;
    /// 更新之后、梯度清零之前（AdaLoRA 在这里按梯度给各个秩打分）。
    fn after_update(&mut self, _step: usize, _grads: &Gradients<E, D>, _info: &StepInfo) {}
    /// 在验证集上评估：返回这一行记录，以及它是否是目前最好的。
    fn evaluate(&mut self, at: &EvalPoint) -> Result<(Self::Row, bool), Self::Error>;
}

/// 循环的安排。
pub struct Plan<'a> {
    /// 总步数。
    pub total: usize,
    /// 第 `step` 步（从 0 数）的学习率倍数。
    pub lr_scale: &'a dyn Fn(usize) -> f64,
    /// 给了种子时，每一步的 dropout 掩码只由（种子, 步数）决定（[`StepKey`]）：接着训练时逐位相同。
    pub step_key: Option<u64>,
    /// 完成第 `step` 步（从 1 数）之后是否评估。
    pub eval_at: &'a dyn Fn(usize) -> bool,
    /// 每多少步写一次检查点（每次评估之后也写）；`None` 为不写。
    pub checkpoint_every: Option<usize>,
}

// ANCHOR: run
/// 从 `progress.step` 训练到 `plan.total`。`save` 写检查点（评估之后，以及每 `checkpoint_every` 步）。
/// 返回 `Break` 表示事件回调要求停下。
pub fn run<E, D, T, O>(
    task: &mut T,
    opt: &mut O,
    progress: &mut Progress<T::Row>,
    plan: &Plan,
    save: &mut dyn FnMut(&T, &O, &Progress<T::Row>) -> Result<(), T::Error>,
    on_event: &mut dyn FnMut(TrainEvent<T::Row>) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, T::Error>
where
    E: Dtype,
    D: Device<E>,
    T: TrainTask<E, D>,
    O: Update<E, D, T::Params>,
{
    let mut grads = task.params().alloc_grads();
    while progress.step < plan.total {
        let started = Instant::now();
        let _key = plan
            .step_key
            .map(|seed| StepKey::enter(seed, progress.step));
        let loss = task.loss(progress.step, grads)?;
        let value = loss.as_vec()[0].to_f64().unwrap_or(f64::NAN);
        grads = loss.backward();
        let info = opt.update(task.params_mut(), &grads, (plan.lr_scale)(progress.step));
        task.after_update(progress.step, &grads, &info);
        task.params().zero_grads(&mut grads);
        progress.train_seconds += started.elapsed().as_secs_f64();
        progress.step += 1;
        progress.window.loss += value;
        progress.window.grad_norm += info.grad_norm;
        progress.window.steps += 1;
        let (step, total, lr) = (progress.step, plan.total, info.lr);
        if on_event(TrainEvent::Step {
            step,
            total,
            loss: value,
            lr,
        })
        .is_break()
        {
            return Ok(ControlFlow::Break(()));
        }
        if (plan.eval_at)(step) {
            let n = progress.window.steps.max(1) as f64;
            let at = EvalPoint {
                step,
                lr,
                train_loss: progress.window.loss / n,
                grad_norm: progress.window.grad_norm / n,
                train_seconds: progress.train_seconds,
            };
            let (row, best) = task.evaluate(&at)?;
            progress.window = Window::default();
            progress.rows.push(row);
            if plan.checkpoint_every.is_some() {
                save(task, opt, progress)?;
            }
            if on_event(TrainEvent::Eval { row, best }).is_break() {
                return Ok(ControlFlow::Break(()));
            }
        } else if plan.checkpoint_every.is_some_and(|n| step % n.max(1) == 0) {
            save(task, opt, progress)?;
        }
    }
    Ok(ControlFlow::Continue(()))
}
// ANCHOR_END: run

/// 不写检查点、事件回调从不要求停下时的 [`run`]：从头训练到 `plan.total`，返回进度（1.8 节的分类、5.2 节的 GPT）。
pub fn run_to_end<E, D, T, O>(
    task: &mut T,
    opt: &mut O,
    plan: &Plan,
    on_event: &mut dyn FnMut(TrainEvent<T::Row>),
) -> Result<Progress<T::Row>, T::Error>
where
    E: Dtype,
    D: Device<E>,
    T: TrainTask<E, D>,
    O: Update<E, D, T::Params>,
{
    assert!(plan.checkpoint_every.is_none(), "run_to_end 不写检查点");
    let mut progress = Progress::default();
    let mut events = |e| {
        on_event(e);
        ControlFlow::Continue(())
    };
    let _ = run(
        task,
        opt,
        &mut progress,
        plan,
        &mut |_, _, _| Ok(()),
        &mut events,
    )?;
    Ok(progress)
}

/// 检查点目录里的三个文件。
pub(crate) const PARAMS: &str = "params.safetensors";
pub(crate) const OPTIMIZER: &str = "optimizer.safetensors";
pub(crate) const STATE: &str = "state.json";

/// 原子地写检查点目录：可训练参数、优化器状态、训练状态三者总是同一步的。
pub(crate) fn save_checkpoint<E, D, P, S>(
    params: &P,
    opt: &AdamW<E>,
    state: &S,
    dir: &Path,
) -> Result<(), FinetuneError>
where
    E: Real + dfdx::tensor::safetensors::SafeDtype,
    D: Kernels<E>,
    P: TensorCollection<E, D>,
    S: Serialize,
{
    crate::io::write_dir_atomic(dir, |tmp| {
        let other = |e: CheckpointError| std::io::Error::other(e.to_string());
        save_params(params, &tmp.join(PARAMS)).map_err(other)?;
        opt.save(&tmp.join(OPTIMIZER)).map_err(other)?;
        let json = serde_json::to_string_pretty(state).map_err(std::io::Error::other)?;
        std::fs::write(tmp.join(STATE), json + "\n")
    })
    .map_err(|e| FinetuneError::Io(dir.to_path_buf(), e.to_string()))
}

/// 打开检查点目录 `dir`：先把两次改名之间被打断的目录恢复原处（不支持原子交换的系统），免得悄悄从头训练。
/// 有训练状态时：没有要求接着训练（`resume`）是错误；否则读出状态、把参数读进 `params`、读出优化器（超参数 `optim`）。
/// `check` 在读参数之前核对状态（超参数用 [`check_same_config`]、类别……），不符时的错误比“形状不对”更能说明问题。
/// 没有检查点时返回 `None`。
pub(crate) fn open_checkpoint<S, E, D, P>(
    dir: &Path,
    resume: bool,
    check: impl FnOnce(&S) -> Result<(), FinetuneError>,
    params: &mut P,
    optim: super::adamw::AdamWConfig,
) -> Result<Option<(S, AdamW<E>)>, FinetuneError>
where
    S: serde::de::DeserializeOwned,
    E: Real + dfdx::tensor::safetensors::SafeDtype,
    D: Kernels<E>,
    P: TensorCollection<E, D>,
{
    crate::io::recover_dir(dir).map_err(|e| FinetuneError::Io(dir.to_path_buf(), e.to_string()))?;
    if !dir.join(STATE).exists() {
        return Ok(None);
    }
    if !resume {
        return Err(FinetuneError::CheckpointExists(dir.to_path_buf()));
    }
    let path = dir.join(STATE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| FinetuneError::Io(path.clone(), e.to_string()))?;
    let state = serde_json::from_str(&text)
        .map_err(|e| FinetuneError::Io(path, format!("不是有效的训练状态文件：{e}")))?;
    check(&state)?;
    Checkpoint::read(&dir.join(PARAMS))?.load_into(params, "")?;
    let opt = AdamW::load(optim, &dir.join(OPTIMIZER))?;
    Ok(Some((state, opt)))
}

/// 逐个字段比较两份超参数，第一个不同的字段给出名字与两边的值。
pub(crate) fn check_same_config<C: Serialize>(saved: &C, now: &C) -> Result<(), FinetuneError> {
    let flat = |c: &C| {
        let mut out = Vec::new();
        flatten(
            "",
            &serde_json::to_value(c).expect("超参数总能转成 JSON"),
            &mut out,
        );
        out
    };
    for ((field, a), (_, b)) in flat(saved).into_iter().zip(flat(now)) {
        if a != b {
            return Err(FinetuneError::ConfigChanged {
                field,
                saved: a.to_string(),
                now: b.to_string(),
            });
        }
    }
    Ok(())
}

/// 把嵌套的 JSON 摊平成 (`a.b.c`, 值) 的列表。
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, v, out);
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}
