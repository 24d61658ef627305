//! 语言模型的训练与评估：把评论接成一条长的字序列，随机截取窗口，预测每个位置的下一个字。
//!
//! 训练循环只认“参数”和“损失函数”：5.2 节训练整个 GPT，5.5 节只训练 LoRA 适配器（基座由损失函数借用），
//! 用的是同一个函数。

use dfdx::nn::modules::TensorCollection;
use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::model::GptError;
use crate::basics::tensors::Real;
use crate::data::vocab::CharVocab;
use crate::kernels::Kernels;
use crate::train::adamw::{linear_schedule, AdamW, AdamWConfig};
use crate::train::trainer::{run_to_end, EvalPoint, Plan, TrainEvent, TrainTask};

/// 一条评论结束的记号：`[SEP]`（id 3）。生成时选出它就停下。
pub const END: usize = 3;

// ANCHOR: stream
/// 把文本逐字编码，每条后面接一个 [`END`]，连成一条长序列（不在词表里的字记为 `[UNK]`）。
pub fn encode_stream<'a>(
    vocab: &CharVocab,
    texts: impl IntoIterator<Item = &'a str>,
) -> Vec<usize> {
    let mut out = Vec::new();
    for text in texts {
        out.extend(vocab.encode(text, usize::MAX));
        out.push(END);
    }
    out
}

/// 随机截取 `batch` 个长 `seq + 1` 的窗口：前 `seq` 个字是输入，后 `seq` 个是目标（错开一位）。
pub fn sample_windows<R: Rng>(
    stream: &[usize],
    batch: usize,
    seq: usize,
    rng: &mut R,
) -> (Vec<usize>, Vec<usize>) {
    assert!(stream.len() > seq + 1, "语料比一个窗口还短");
    let (mut inputs, mut targets) = (
        Vec::with_capacity(batch * seq),
        Vec::with_capacity(batch * seq),
    );
    for _ in 0..batch {
        let start = rng.gen_range(0..stream.len() - seq);
        inputs.extend_from_slice(&stream[start..start + seq]);
        targets.extend_from_slice(&stream[start + 1..start + seq + 1]);
    }
    (inputs, targets)
}
// ANCHOR_END: stream

/// 评估用的窗口：从头开始、互不重叠，最多 `max` 个（每次评估的题目相同，数字可以前后比较）。
pub fn eval_windows(stream: &[usize], seq: usize, max: usize) -> Vec<(Vec<usize>, Vec<usize>)> {
    (0..)
        .map(|k| k * seq)
        .take_while(|&s| s + seq < stream.len())
        .take(max)
        .map(|s| {
            (
                stream[s..s + seq].to_vec(),
                stream[s + 1..s + seq + 1].to_vec(),
            )
        })
        .collect()
}

/// 训练的超参数。
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LmTrainConfig {
    /// 训练步数。
    pub steps: usize,
    /// 每步的窗口数。
    pub batch: usize,
    /// 窗口长度（不超过模型的上下文长度 C）。
    pub seq: usize,
    /// 峰值学习率。
    pub lr: f64,
    /// 预热步数（之后线性衰减到 0）。
    pub warmup: usize,
    /// 权重衰减（只作用于矩阵参数）。
    pub weight_decay: f64,
    /// 每隔多少步在验证集上评估一次（另外最后一步总会评估）。
    pub eval_every: usize,
    /// 取窗口的随机种子。
    pub seed: u64,
}

/// 损失曲线上的一点。
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LmPoint {
    /// 第几步之后。
    pub step: usize,
    /// 上次记录以来训练损失的平均（nats/字）。
    pub train_loss: f64,
    /// 验证集上的平均损失（nats/字）。
    pub valid_loss: f64,
}

/// 训练的记录。
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LmReport {
    /// 损失曲线。
    pub curve: Vec<LmPoint>,
    /// 平均每步的秒数（不含评估）。
    pub seconds_per_step: f64,
}

// ANCHOR: train_lm
/// 训练 `params`：每步随机取窗口，`loss(params, 输入, 目标)` 给出带 tape 的损失，AdamW 更新 `params`
/// （线性预热再线性衰减，梯度范数裁剪到 1）。每 `eval_every` 步调用一次 `valid(params)`。
/// 循环是全书共用的 [`trainer::run`](crate::train::trainer::run)；这里只说一步的损失与怎样评估。
pub fn train_lm<E, D, P>(
    params: &mut P,
    dev: &D,
    stream: &[usize],
    cfg: &LmTrainConfig,
    loss: impl Fn(
        &P,
        Tensor<(usize, usize), usize, D, OwnedTape<E, D>>,
        &[usize],
    ) -> Result<Tensor<Rank0, E, D, OwnedTape<E, D>>, GptError>,
    valid: impl Fn(&P) -> Result<f64, GptError>,
    on_point: &mut dyn FnMut(&LmPoint),
) -> Result<LmReport, GptError>
where
    E: Real + dfdx::tensor::safetensors::SafeDtype,
    D: Kernels<E>,
    P: TensorCollection<E, D>,
{
    let mut opt = AdamW::new(AdamWConfig {
        lr: cfg.lr,
        weight_decay: cfg.weight_decay,
        ..Default::default()
    });
    let mut task = LmTask {
        params,
        dev,
        stream,
        cfg,
        rng: StdRng::seed_from_u64(cfg.seed),
        loss,
        valid,
    };
    let plan = Plan {
        total: cfg.steps,
        lr_scale: &|step| linear_schedule(step, cfg.warmup, cfg.steps),
        step_key: None,
        eval_at: &|step| step % cfg.eval_every.max(1) == 0 || step == cfg.steps,
        checkpoint_every: None,
    };
    let mut on_event = |e: TrainEvent<LmPoint>| {
        if let TrainEvent::Eval { row, .. } = e {
            on_point(&row);
        }
    };
    let progress = run_to_end(&mut task, &mut opt, &plan, &mut on_event)?;
    Ok(LmReport {
        seconds_per_step: progress.seconds_per_step(),
        curve: progress.rows,
    })
}

/// [`train_lm`] 的一步（随机取 `batch` 个窗口）与评估。
struct LmTask<'a, P, D, L, V> {
    params: &'a mut P,
    dev: &'a D,
    stream: &'a [usize],
    cfg: &'a LmTrainConfig,
    rng: StdRng,
    loss: L,
    valid: V,
}

impl<E, D, P, L, V> TrainTask<E, D> for LmTask<'_, P, D, L, V>
where
    E: Dtype,
    D: Device<E>,
    P: TensorCollection<E, D>,
    L: Fn(
        &P,
        Tensor<(usize, usize), usize, D, OwnedTape<E, D>>,
        &[usize],
    ) -> Result<Tensor<Rank0, E, D, OwnedTape<E, D>>, GptError>,
    V: Fn(&P) -> Result<f64, GptError>,
{
    type Params = P;
    type Row = LmPoint;
    type Error = GptError;
    fn params(&self) -> &P {
        self.params
    }
    fn params_mut(&mut self) -> &mut P {
        self.params
    }
    fn loss(
        &mut self,
        _step: usize,
        grads: Gradients<E, D>,
    ) -> Result<Tensor<Rank0, E, D, OwnedTape<E, D>>, GptError> {
        let (batch, seq) = (self.cfg.batch, self.cfg.seq);
        let (inputs, targets) = sample_windows(self.stream, batch, seq, &mut self.rng);
        let tokens = self.dev.tensor_from_vec(inputs, (batch, seq));
        (self.loss)(self.params, tokens.traced(grads), &targets)
    }
    fn evaluate(&mut self, at: &EvalPoint) -> Result<(LmPoint, bool), GptError> {
        let point = LmPoint {
            step: at.step,
            train_loss: at.train_loss,
            valid_loss: (self.valid)(self.params)?,
        };
        Ok((point, false))
    }
}
// ANCHOR_END: train_lm

/// 在固定的评估窗口上的平均损失（nats/字）：`logits_loss(输入, 目标)` 给出一批的平均损失，每批 16 个窗口。
pub fn mean_loss<E: Real, D: Device<E>>(
    dev: &D,
    windows: &[(Vec<usize>, Vec<usize>)],
    logits_loss: impl Fn(
        Tensor<(usize, usize), usize, D>,
        &[usize],
    ) -> Result<Tensor<Rank0, E, D>, GptError>,
) -> Result<f64, GptError> {
    let mut total = 0.0;
    for chunk in windows.chunks(16) {
        let seq = chunk[0].0.len();
        let inputs: Vec<usize> = chunk.iter().flat_map(|(i, _)| i.iter().copied()).collect();
        let targets: Vec<usize> = chunk.iter().flat_map(|(_, t)| t.iter().copied()).collect();
        let l = logits_loss(dev.tensor_from_vec(inputs, (chunk.len(), seq)), &targets)?;
        total += l.as_vec()[0].to_f64().unwrap_or(f64::NAN) * chunk.len() as f64;
    }
    Ok(total / windows.len().max(1) as f64)
}

/// 把 id 还原成文字：`[UNK]` 显示为 □，[`END`] 显示为 ⏎，其余特殊记号原样。
pub fn decode(vocab: &CharVocab, ids: &[usize]) -> String {
    ids.iter()
        .map(|&id| match id {
            1 => "□".to_string(),
            END => "⏎".to_string(),
            _ => vocab.token(id).to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_shifted_by_one() {
        let stream: Vec<usize> = (10..40).collect();
        let mut rng = StdRng::seed_from_u64(0);
        let (x, y) = sample_windows(&stream, 4, 6, &mut rng);
        assert_eq!(x.len(), 24);
        for (a, b) in x.iter().zip(&y) {
            assert_eq!(a + 1, *b);
        }
        let w = eval_windows(&stream, 6, 100);
        assert_eq!(w.len(), 4); // 起点 0、6、12、18；24 + 6 = 30 不小于 30，停
        assert_eq!(w[1].0[0], 16);
    }

    #[test]
    fn streams_end_each_text_with_the_end_token() {
        let vocab = CharVocab::build(["好书好书", "差"], 10);
        let s = encode_stream(&vocab, ["好书", "差评"]);
        assert_eq!(s.len(), 6);
        assert_eq!(s[2], END);
        assert_eq!(s[4], crate::data::vocab::UNK); // “评”不在表里
        assert_eq!(decode(&vocab, &s), "好书⏎差□⏎");
    }
}
