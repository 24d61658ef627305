//! 附录 A（issue 21）：仓库里的中文迷你 BERT 大小（256/4/1024，4 层）、批 [32,64] 上训练 3 步的峰值常驻内存，
//! 减去训练前的常驻内存（Linux 的 VmHWM，开始前清零）：只看训练一步要的额外内存（激活、梯度、AdamW 状态、临时缓冲区），
//! 不含读数据、评估与进程本身。
//!
//! 用法：`cargo run --release --example mini_memory -- full|lora-qv|lora-all`（LoRA：r 8、α 16；`LORA_DROPOUT` 默认 0.1）。
//! 每种训练单独运行一个进程，峰值互不干扰。
use dfdx::prelude::*;
use llm_book::bert::model::{bert_config, BertClassifier, MiniChineseBert};
use llm_book::experiments::perf::{bench_batch, classifier_step};
use llm_book::experiments::pretrain::MINI_DIMS;
use llm_book::peft::config::LoraConfig;
use llm_book::peft::model::PeftBert;
use llm_book::train::adamw::{AdamW, AdamWConfig};
use llm_book::train::SequenceClassifier;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn run<Mo: SequenceClassifier<f32, Cpu>>(model: &mut Mo) -> f64 {
    let dev = Cpu::seed_from_u64(1);
    let (tokens, mask, labels) = bench_batch(&dev, 32, 64, 4096);
    let mut opt = AdamW::<f32>::new(AdamWConfig::default());
    let mut grads = None;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before = llm_book::alloc::reset_peak().expect("清零峰值常驻内存（/proc/self/clear_refs）");
    for _ in 0..3 {
        classifier_step(&*model, &mut grads, &tokens, &mask, &labels);
        opt.step(model.params_mut(), grads.as_ref().unwrap(), 1.0);
    }
    let peak = llm_book::alloc::proc_status_bytes("VmHWM:").expect("需要 Linux 的 /proc");
    (peak - before) / 1048576.0
}

fn main() {
    llm_book::kernels::cpu::join_thread_pool();
    let arm = std::env::args().nth(1).unwrap_or_default();
    if !["full", "lora-qv", "lora-all"].contains(&arm.as_str()) {
        eprintln!("用法：cargo run --release --example mini_memory -- full|lora-qv|lora-all");
        std::process::exit(2);
    }
    let p: f64 = std::env::var("LORA_DROPOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.1);
    let dev = Cpu::seed_from_u64(0);
    let config = bert_config(1e-12, 0.1, 128);
    let base = MiniChineseBert::<f32, Cpu>::new(&dev, &MINI_DIMS);
    let extra = match arm.as_str() {
        "full" => run(&mut BertClassifier {
            params: base,
            config,
        }),
        "lora-qv" => {
            let lora = LoraConfig::seq_cls(8, 16.0, &["query", "value"], p);
            run(&mut PeftBert::get_peft_model(base, config, lora).unwrap())
        }
        _ => {
            let t = [
                "query",
                "key",
                "value",
                "attention.output.dense",
                "intermediate.dense",
                "output.dense",
            ];
            let lora = LoraConfig::seq_cls(8, 16.0, &t, p);
            run(&mut PeftBert::get_peft_model(base, config, lora).unwrap())
        }
    };
    println!("{arm} lora_dropout={p}: 训练 3 步的峰值 − 之前常驻 = {extra:.1} MiB");
}
