//! 附录 B（issue：性能第二轮）：bert-base 大小的分类模型训练一步的内存，全量微调与 LoRA（r = 8，query、value）。
//!
//! 每种训练在自己的子进程里跑（峰值互不干扰）：建好模型之后的常驻内存（RSS）；训练若干步（前向 + 反向 + AdamW，[8,128]）
//! 期间的峰值常驻内存（Linux 的 VmHWM，建好模型后清零）；可训练参数的梯度与 AdamW 状态的字节数；
//! 以及几个**冻结**的大张量（词嵌入表、第 0 层的 query 权重）在反向之后有没有梯度缓冲区——有，就是白占的内存。
//!
//! 用法：`cargo run --release --example train_memory`（依次跑 full、lora，打印表格，写 `code/results/appendix-b-memory.json`）；
//! `-- full` 或 `-- lora` 只跑一种、打印一行 JSON。环境变量 `ROUNDS` 是步数（默认 3，另先空跑一步）。
//! PyTorch 一侧是 `code/scripts/memory_torch.py`（同样的模型、形状与优化器）。

use std::time::Instant;

use dfdx::nn::NumParams;
use dfdx::prelude::*;
use llm_book::bert::model::{bert_config, BertBase, BertClassifier, BERT_BASE_CHINESE_DIMS};
use llm_book::experiments::perf::{bench_batch, classifier_step};
use llm_book::peft::config::LoraConfig;
use llm_book::peft::model::PeftBert;
use llm_book::train::adamw::{AdamW, AdamWConfig};
use llm_book::train::SequenceClassifier;
use serde::{Deserialize, Serialize};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MIB: f64 = 1048576.0;

/// 一种训练的测量结果（MiB 与毫秒）。
#[derive(Debug, Serialize, Deserialize)]
struct Row {
    /// full 或 lora。
    arm: String,
    /// 全部参数（基座 + 适配器）的字节。
    params_mib: f64,
    /// 可训练参数的个数。
    trainable: usize,
    /// 可训练参数的梯度（f32）。
    grads_mib: f64,
    /// AdamW 的 m、v。
    optimizer_mib: f64,
    /// 建好模型之后的常驻内存。
    resident_mib: f64,
    /// 训练期间的峰值常驻内存。
    step_peak_mib: f64,
    /// 峰值减去建好后的常驻：训练一步额外需要的内存（激活、梯度、优化器状态、临时缓冲区）。
    step_extra_mib: f64,
    /// 每步（前向 + 反向 + AdamW）耗时的中位数。
    step_ms: f64,
    /// LoRA：冻结的词嵌入表有没有梯度缓冲区（全量微调时它本来就要梯度，为 `None`）。
    frozen_embedding_has_grad: Option<bool>,
    /// LoRA：冻结的第 0 层 query 权重有没有梯度缓冲区。
    frozen_query_has_grad: Option<bool>,
}

fn proc_status_kib(field: &str) -> f64 {
    llm_book::alloc::proc_status_bytes(field).expect("需要 Linux 的 /proc") / 1024.0
}

/// 训练 `rounds + 1` 步（第一步不计时），返回每步的毫秒数与最后的梯度。
fn train<Mo: SequenceClassifier<f32, Cpu>>(
    model: &mut Mo,
    rounds: usize,
) -> (Vec<f64>, Gradients<f32, Cpu>, usize) {
    let dev = Cpu::seed_from_u64(1);
    let (tokens, mask, labels) = bench_batch(&dev, 8, 128, 21128);
    let mut opt = AdamW::<f32>::new(AdamWConfig::default());
    let mut grads = None;
    let mut times = Vec::new();
    for r in 0..=rounds {
        let t = Instant::now();
        classifier_step(&*model, &mut grads, &tokens, &mask, &labels);
        opt.step(model.params_mut(), grads.as_ref().unwrap(), 1.0);
        if r > 0 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    (times, grads.unwrap(), opt.state_bytes())
}

fn measure(arm: &str) -> Row {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dev = Cpu::seed_from_u64(0);
    let config = bert_config(1e-12, 0.1, 512);
    let base = BertBase::<f32, Cpu>::new(&dev, &BERT_BASE_CHINESE_DIMS);
    let all = base.num_trainable_params();
    let settle = || {
        std::thread::sleep(std::time::Duration::from_millis(500));
        llm_book::alloc::reset_peak().expect("清零峰值常驻内存（/proc/self/clear_refs）")
    };
    let (resident, times, grads, opt_bytes, trainable, params, frozen) = match arm {
        "full" => {
            let mut model = BertClassifier {
                params: base,
                config,
            };
            let resident = settle();
            let (times, grads, opt_bytes) = train(&mut model, rounds);
            let frozen = (None, None);
            (resident, times, grads, opt_bytes, all, all, frozen)
        }
        _ => {
            let lora = LoraConfig::seq_cls(8, 16.0, &["query", "value"], 0.0);
            let mut model = PeftBert::get_peft_model(base, config, lora).unwrap();
            let trainable = model.adapters.num_trainable_params();
            let resident = settle();
            let (times, grads, opt_bytes) = train(&mut model, rounds);
            let frozen = (
                Some(
                    grads
                        .get_ref_checked(&model.base.embeddings.word_embeddings.weight)
                        .is_some(),
                ),
                Some(
                    grads
                        .get_ref_checked(&model.base.layers.modules[0].attention.w_q.weight)
                        .is_some(),
                ),
            );
            (
                resident,
                times,
                grads,
                opt_bytes,
                trainable,
                all + trainable,
                frozen,
            )
        }
    };
    drop(grads);
    let peak = proc_status_kib("VmHWM:") * 1024.0;
    Row {
        arm: arm.into(),
        params_mib: 4.0 * params as f64 / MIB,
        trainable,
        grads_mib: 4.0 * trainable as f64 / MIB,
        optimizer_mib: opt_bytes as f64 / MIB,
        resident_mib: resident / MIB,
        step_peak_mib: peak / MIB,
        step_extra_mib: (peak - resident) / MIB,
        step_ms: times[times.len() / 2],
        frozen_embedding_has_grad: frozen.0,
        frozen_query_has_grad: frozen.1,
    }
}

fn main() {
    llm_book::kernels::cpu::join_thread_pool();
    if let Some(arm) = std::env::args().nth(1) {
        if arm != "full" && arm != "lora" {
            eprintln!("用法：cargo run --release --example train_memory [-- full|lora]");
            std::process::exit(2);
        }
        println!("{}", serde_json::to_string(&measure(&arm)).unwrap());
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let mut rows = Vec::new();
    for arm in ["full", "lora"] {
        let out = std::process::Command::new(&exe).arg(arm).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        rows.push(serde_json::from_slice::<Row>(&out.stdout).unwrap());
    }
    let show = |b: Option<bool>| match b {
        Some(true) => "有",
        Some(false) => "无",
        None => "—",
    };
    println!("| 训练 | 可训练参数 | 参数 | 梯度 | AdamW 状态 | 建好后常驻 | 训练的峰值 | 峰值 − 常驻 | 每步 | 冻结的词嵌入/query 有梯度缓冲区 |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} 毫秒 | {}/{} |",
            r.arm,
            r.trainable,
            r.params_mib,
            r.grads_mib,
            r.optimizer_mib,
            r.resident_mib,
            r.step_peak_mib,
            r.step_extra_mib,
            r.step_ms,
            show(r.frozen_embedding_has_grad),
            show(r.frozen_query_has_grad)
        );
    }
    let ratio = rows[1].step_peak_mib / rows[0].step_peak_mib;
    println!(
        "（MiB；LoRA 峰值 / 全量峰值 = {ratio:.2}；{}）",
        llm_book::experiments::machine_description()
    );
    let result = serde_json::json!({
        "what": "bert-base-chinese 大小的分类模型（随机权重），训练一步 [8,128]（前向 + 反向 + AdamW）：全量与 LoRA r=8 q/v 的内存",
        "machine": llm_book::experiments::machine_description(),
        "rows": rows,
        "lora_over_full_peak": ratio,
    });
    let path = llm_book::experiments::results_dir().join("appendix-b-memory.json");
    llm_book::io::write_atomic(
        &path,
        serde_json::to_string_pretty(&result).unwrap().as_bytes(),
    )
    .unwrap();
    println!("结果写入 {}", path.display());
}
