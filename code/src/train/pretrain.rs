//! 附录 A：掩码语言模型的预训练循环。
//!
//! 与 3.6 节的微调共用 AdamW、学习率调度、分桶组批与原子检查点；不同的是目标：每一步随机掩掉 15% 的记号
//! （掩码由（种子, 步数）决定，接着训练时重新算出同样的掩码），在被掩的位置上预测原来的记号。

use std::ops::ControlFlow;
use std::path::Path;

use crate::kernels::Kernels;
use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::adamw::{linear_schedule, AdamW, AdamWConfig};
use super::finetune::{epoch_batches, FinetuneError};
use super::trainer::{
    check_same_config, open_checkpoint, run, save_checkpoint, EvalPoint, Plan, Progress,
    TrainEvent, TrainTask,
};
use crate::basics::tensors::Real;
use crate::bert::mlm::{mask_tokens, BertMlm, Masked};
use crate::data::batch::make_batch;
use crate::data::vocab::SPECIAL_TOKENS;
use crate::transformer::encoder::{EncoderConfig, Mode};

/// `[MASK]` 的 id（特殊记号的顺序见 [`SPECIAL_TOKENS`]）。
pub const MASK_ID: usize = 4;

// ANCHOR: config
/// 预训练的超参数。写进检查点：接着训练时必须与原来的一致。
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    /// 总步数。
    pub steps: usize,
    /// 批大小。
    pub batch_size: usize,
    /// AdamW 与梯度裁剪。
    pub optim: AdamWConfig,
    /// 预热步数占总步数的比例。
    pub warmup_ratio: f64,
    /// 每个普通记号被选中预测的概率（BERT：0.15）。
    pub mask_rate: f64,
    /// 每多少步在留出的文本上评估一次。
    pub eval_every: usize,
    /// 每多少步写一次检查点。
    pub checkpoint_every: usize,
    /// 随机种子：决定打乱顺序与掩码。
    pub seed: u64,
}
// ANCHOR_END: config

impl Default for PretrainConfig {
    fn default() -> Self {
        // 仓库里的 code/models/mini-chinese-bert 就是用这些值训练的（附录 A）
        Self {
            steps: 20_000,
            batch_size: 32,
            optim: AdamWConfig {
                lr: 1e-3,
                ..Default::default()
            },
            warmup_ratio: 0.06,
            mask_rate: 0.15,
            eval_every: 1000,
            checkpoint_every: 50,
            seed: 0,
        }
    }
}

/// 掩码语言模型的指标。
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MlmMetrics {
    /// 被掩位置上的平均交叉熵。
    pub loss: f64,
    /// 被掩位置上预测对的比例。
    pub accuracy: f64,
    /// 被掩的位置数。
    pub targets: usize,
}

/// 一次评估的记录。
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PretrainRow {
    /// 已完成的步数。
    pub step: usize,
    /// 学习率。
    pub lr: f64,
    /// 自上次评估以来的平均训练损失。
    pub train_loss: f64,
    /// 留出文本上的指标。
    pub valid: MlmMetrics,
    /// 累计训练秒数（不含评估）。
    pub train_seconds: f64,
}

/// 检查点里的训练状态。
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PretrainState {
    /// 超参数。
    pub config: PretrainConfig,
    /// 训练循环的进度：步数、评估的历史、上次评估以来的累计、训练秒数。
    #[serde(flatten)]
    pub progress: Progress<PretrainRow>,
}

/// 预训练的事件（[`TrainEvent`]，每次评估给出一行 [`PretrainRow`]；不评选最好的一步，`best` 总是 false）。
pub type PretrainEvent = TrainEvent<PretrainRow>;

/// 第 `step` 步的掩码：只由（种子, 步数）决定。
fn step_rng(seed: u64, step: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (step as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

// ANCHOR: pretrain
/// 预训练 `model`：`train`、`valid` 是编码好的句子（含 `[CLS]`、`[SEP]`）。检查点写在 `out/checkpoint`，
/// `resume` 为真时从那里接着训练；结束时写 `out/pretrain-report.json` 并删掉检查点。
/// 循环是 [`trainer::run`](super::trainer::run)（与 3.6 节的微调同一个），这里只有掩码语言模型自己的部分。
#[allow(clippy::too_many_arguments)]
pub fn pretrain<const M: usize, const H: usize, const F: usize, E, D>(
    model: &mut BertMlm<M, H, F, E, D>,
    enc: &EncoderConfig,
    dev: &D,
    train: &[Vec<usize>],
    valid: &[Vec<usize>],
    cfg: &PretrainConfig,
    out: &Path,
    resume: bool,
    on_event: &mut dyn FnMut(PretrainEvent) -> ControlFlow<()>,
) -> Result<Option<Vec<PretrainRow>>, FinetuneError>
where
    E: Real + dfdx::tensor::safetensors::SafeDtype,
    D: Kernels<E>,
{
    if train.is_empty() {
        return Err(FinetuneError::EmptyData("预训练文本"));
    }
    let ckpt_dir = out.join("checkpoint");
    let check = |state: &PretrainState| check_same_config(&state.config, cfg);
    let (mut opt, mut progress) = match open_checkpoint(&ckpt_dir, resume, check, model, cfg.optim)?
    {
        Some((state, opt)) => {
            let state: PretrainState = state;
            let _ = on_event(TrainEvent::Resumed {
                step: state.progress.step,
            });
            (opt, state.progress)
        }
        None => (AdamW::new(cfg.optim), Progress::default()),
    };
    let per_epoch = train.len().div_ceil(cfg.batch_size);
    let warmup = (cfg.warmup_ratio * cfg.steps as f64).round() as usize;
    let mut task = Pretrain {
        model,
        enc,
        dev,
        train,
        valid,
        cfg,
        lengths: train.iter().map(Vec::len).collect(),
        per_epoch,
    };
    let plan = Plan {
        total: cfg.steps,
        lr_scale: &|step| linear_schedule(step, warmup, cfg.steps),
        // dropout 的掩码与掩码语言模型的掩码一样，只由（种子, 步数）决定
        step_key: Some(cfg.seed),
        eval_at: &|step| step % cfg.eval_every.max(1) == 0 || step == cfg.steps,
        checkpoint_every: Some(cfg.checkpoint_every),
    };
    let mut save =
        |task: &Pretrain<M, H, F, E, D>, opt: &AdamW<E>, progress: &Progress<PretrainRow>| {
            let state = PretrainState {
                config: *cfg,
                progress: progress.clone(),
            };
            save_checkpoint(&*task.model, opt, &state, &ckpt_dir)
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
    let json = serde_json::to_string_pretty(&progress.rows).expect("指标总能写成 JSON") + "\n";
    let path = out.join("pretrain-report.json");
    crate::io::write_atomic(&path, json.as_bytes())
        .map_err(|e| FinetuneError::Io(path, e.to_string()))?;
    let _ = std::fs::remove_dir_all(&ckpt_dir);
    Ok(Some(progress.rows))
}

/// 预训练的 [`TrainTask`]：一步是分桶组出的一批句子，掩掉 15% 的记号后在被掩的位置上的交叉熵。
struct Pretrain<'a, const M: usize, const H: usize, const F: usize, E: Dtype, D: Device<E>> {
    model: &'a mut BertMlm<M, H, F, E, D>,
    enc: &'a EncoderConfig,
    dev: &'a D,
    train: &'a [Vec<usize>],
    valid: &'a [Vec<usize>],
    cfg: &'a PretrainConfig,
    lengths: Vec<usize>,
    per_epoch: usize,
}

impl<const M: usize, const H: usize, const F: usize, E, D> TrainTask<E, D>
    for Pretrain<'_, M, H, F, E, D>
where
    E: Real + dfdx::tensor::safetensors::SafeDtype,
    D: Kernels<E>,
{
    type Params = BertMlm<M, H, F, E, D>;
    type Row = PretrainRow;
    type Error = FinetuneError;
    fn params(&self) -> &Self::Params {
        self.model
    }
    fn params_mut(&mut self) -> &mut Self::Params {
        self.model
    }
    fn loss(
        &mut self,
        step: usize,
        grads: Gradients<E, D>,
    ) -> Result<Tensor<Rank0, E, D, OwnedTape<E, D>>, FinetuneError> {
        let cfg = self.cfg;
        let epoch = step / self.per_epoch;
        let batches = epoch_batches(&self.lengths, cfg.batch_size, cfg.seed, epoch, true);
        let ids: Vec<Vec<usize>> = (batches[step % self.per_epoch].iter())
            .map(|&i| self.train[i].clone())
            .collect();
        let masked = mask_tokens(
            &ids,
            &mut step_rng(cfg.seed, step),
            cfg.mask_rate,
            MASK_ID,
            SPECIAL_TOKENS.len(),
            self.model.bert.embeddings.word_embeddings.rows(),
        );
        let trace = |t: Tensor<(usize, usize), usize, D>| t.traced(grads);
        let (loss, _) = mlm_loss(self.model, self.enc, self.dev, &masked, trace, Mode::Train)?;
        Ok(loss)
    }
    fn evaluate(&mut self, at: &EvalPoint) -> Result<(PretrainRow, bool), FinetuneError> {
        let row = PretrainRow {
            step: at.step,
            lr: at.lr,
            train_loss: at.train_loss,
            valid: evaluate_mlm(self.model, self.enc, self.dev, self.valid, self.cfg)?,
            train_seconds: at.train_seconds,
        };
        Ok((row, false))
    }
}
// ANCHOR_END: pretrain

/// 一批掩码后的输入上的 MLM 损失，以及预测对的个数。`trace` 给输入挂上 tape（训练）或原样返回（评估，不分配梯度）。
fn mlm_loss<
    const M: usize,
    const H: usize,
    const F: usize,
    E: Real,
    D: Kernels<E>,
    T: Tape<E, D> + Merge<T> + Merge<NoneTape>,
>(
    model: &BertMlm<M, H, F, E, D>,
    enc: &EncoderConfig,
    dev: &D,
    masked: &Masked,
    trace: impl FnOnce(Tensor<(usize, usize), usize, D>) -> Tensor<(usize, usize), usize, D, T>,
    mode: Mode,
) -> Result<(Tensor<Rank0, E, D, T>, usize), FinetuneError> {
    let examples: Vec<(&[usize], usize)> =
        masked.input.iter().map(|ids| (ids.as_slice(), 0)).collect();
    let batch = make_batch::<E, D>(dev, &examples);
    let positions: Vec<(usize, usize)> = masked.targets.iter().map(|&(i, j, _)| (i, j)).collect();
    let n = positions.len();
    let vocab = model.bert.embeddings.word_embeddings.rows();
    let mut onehot = vec![E::default(); n * vocab];
    for (k, &(_, _, id)) in masked.targets.iter().enumerate() {
        onehot[k * vocab + id] = E::ONE;
    }
    let target = dev.tensor_from_vec(onehot, (n, vocab));
    let tokens = trace(batch.tokens);
    let logits = model.logits(enc, tokens, &batch.mask, &positions, mode)?;
    let rows = logits.retaped::<NoneTape>().as_vec();
    let correct = rows
        .chunks(vocab)
        .zip(&masked.targets)
        .filter(|(row, &(_, _, id))| crate::train::argmax(row) == id)
        .count();
    Ok((cross_entropy_with_logits_loss(logits, target), correct))
}

/// 在留出的文本上评估：掩码用固定的种子，每次评估的题目相同，数字可以前后比较。
pub fn evaluate_mlm<const M: usize, const H: usize, const F: usize, E: Real, D: Kernels<E>>(
    model: &BertMlm<M, H, F, E, D>,
    enc: &EncoderConfig,
    dev: &D,
    valid: &[Vec<usize>],
    cfg: &PretrainConfig,
) -> Result<MlmMetrics, FinetuneError> {
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0xE7A1);
    let (mut loss_sum, mut correct, mut targets) = (0.0, 0, 0);
    for chunk in valid.chunks(cfg.batch_size.max(1)) {
        let masked = mask_tokens(
            chunk,
            &mut rng,
            cfg.mask_rate,
            MASK_ID,
            SPECIAL_TOKENS.len(),
            model.bert.embeddings.word_embeddings.rows(),
        );
        let (loss, ok) = mlm_loss(model, enc, dev, &masked, |t| t, Mode::Eval)?;
        let n = masked.targets.len();
        loss_sum += loss.as_vec()[0].to_f64().unwrap_or(f64::NAN) * n as f64;
        correct += ok;
        targets += n;
    }
    Ok(MlmMetrics {
        loss: loss_sum / targets.max(1) as f64,
        accuracy: correct as f64 / targets.max(1) as f64,
        targets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bert::hf::{fixtures_dir, load_dir, HeadSource};
    use crate::bert::mlm::{mlm_candidates, save_mlm_dir};
    use crate::bert::model::bert_config;
    use crate::checkpoint::{Checkpoint, StoreDtype};
    use crate::transformer::attention::PaddingMask;

    type Tiny = BertMlm<32, 4, 48, f32, Cpu>;
    use crate::bert::model::TINY_DIMS;

    fn corpus() -> Vec<Vec<usize>> {
        (0..96)
            .map(|i| {
                let mut ids = vec![2];
                ids.extend((0..4 + i % 5).map(|j| 5 + (i * 3 + j * 7) % 30));
                ids.push(3);
                ids
            })
            .collect()
    }

    fn config() -> PretrainConfig {
        PretrainConfig {
            steps: 24,
            batch_size: 16,
            eval_every: 8,
            checkpoint_every: 4,
            ..Default::default()
        }
    }

    #[test]
    fn an_interrupted_pretraining_resumes_to_the_same_model() {
        // 带 dropout（隐藏层与注意力权重都是 0.1）：每个掩码只由（种子, 步数, 第几处）决定，接着训练仍逐位相同
        let enc = bert_config(1e-12, 0.1, 24);
        let data = corpus();
        let run = |stop_at: Option<usize>, seed: u64, out: &std::path::Path, resume: bool| {
            let dev = Cpu::seed_from_u64(seed);
            let mut model = Tiny::init(&dev, &TINY_DIMS);
            let rows = pretrain(
                &mut model,
                &enc,
                &dev,
                &data,
                &data[..32],
                &config(),
                out,
                resume,
                &mut |e| match e {
                    PretrainEvent::Step { step, .. } if Some(step) == stop_at => {
                        ControlFlow::Break(())
                    }
                    _ => ControlFlow::Continue(()),
                },
            )
            .unwrap();
            (rows, model)
        };
        let tmp = tempfile::tempdir().unwrap();
        let straight_dir = tmp.path().join("straight");
        let (want, straight) = run(None, 1, &straight_dir, false);
        let want = want.unwrap();
        assert!(
            want.last().unwrap().valid.loss < want[0].valid.loss,
            "{want:?}"
        );
        // 第 14 步被打断（检查点在第 12 步），换一个随机初始化的“新进程”接着训练
        let dir = tmp.path().join("resumed");
        assert!(run(Some(14), 1, &dir, false).0.is_none());
        let (got, resumed) = run(None, 99, &dir, true);
        let strip = |rows: &[PretrainRow]| {
            rows.iter()
                .map(|r| (r.step, r.lr, r.train_loss, r.valid))
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&got.unwrap()), strip(&want));
        assert_eq!(
            resumed.head.dense.weight.as_vec(),
            straight.head.dense.weight.as_vec()
        );
    }

    #[test]
    fn the_exported_directory_reads_back_as_mlm_and_as_a_classifier() {
        let dev = Cpu::seed_from_u64(5);
        let model = Tiny::init(&dev, &TINY_DIMS);
        let enc = bert_config(1e-12, 0.1, 24);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("export");
        save_mlm_dir(
            &model,
            &enc,
            &fixtures_dir().join("tiny-bert/vocab.txt"),
            &dir,
            StoreDtype::F32,
        )
        .unwrap();
        // 作为掩码语言模型读回：logits 逐位相同
        let mut back = Tiny::init(&Cpu::seed_from_u64(6), &TINY_DIMS);
        let file = Checkpoint::read(&dir.join("model.safetensors")).unwrap();
        assert!(!file
            .tensors
            .keys()
            .any(|k| k.contains("pooler") || k.starts_with("classifier")));
        let err = file
            .load_into_with(&mut back, &mlm_candidates, &|_| true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bert.pooler.dense.weight") && !err.contains("cls."),
            "{err}"
        );
        let tokens = dev.tensor_from_vec(vec![2, 10, 4, 12, 3], (1, 5));
        let mask = PaddingMask::from_lengths(&dev, &[5], 5).unwrap();
        let logits = |m: &Tiny| {
            m.logits(&enc, tokens.clone(), &mask, &[(0, 2)], Mode::Eval)
                .unwrap()
                .as_vec()
        };
        assert_eq!(logits(&back), logits(&model));
        // 作为分类模型读：配置核对通过，池化层与分类头是新建的
        let classifier = load_dir::<32, 4, 48, f32, Cpu>(&dev, &dir).unwrap();
        assert_eq!(classifier.head, HeadSource::New);
        assert_eq!(
            classifier.params.embeddings.word_embeddings.weight.as_vec(),
            model.bert.embeddings.word_embeddings.weight.as_vec()
        );
        // 存成 f16：每个权重是原值按最近偶数舍入到 f16，文件约小一半
        let half_dir = tmp.path().join("export-f16");
        save_mlm_dir(
            &model,
            &enc,
            &fixtures_dir().join("tiny-bert/vocab.txt"),
            &half_dir,
            StoreDtype::F16,
        )
        .unwrap();
        let size = |d: &std::path::Path| {
            std::fs::metadata(d.join("model.safetensors"))
                .unwrap()
                .len()
        };
        assert!(
            size(&half_dir) * 10 < size(&dir) * 6,
            "{} vs {}",
            size(&half_dir),
            size(&dir)
        );
        let halved = load_dir::<32, 4, 48, f32, Cpu>(&dev, &half_dir).unwrap();
        let rounded: Vec<f32> = model
            .bert
            .embeddings
            .word_embeddings
            .weight
            .as_vec()
            .into_iter()
            .map(|v| half::f16::from_f32(v).to_f32())
            .collect();
        assert_eq!(
            halved.params.embeddings.word_embeddings.weight.as_vec(),
            rounded
        );
        assert_ne!(
            rounded,
            model.bert.embeddings.word_embeddings.weight.as_vec()
        );
    }
}
