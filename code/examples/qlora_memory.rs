//! 4.5 节：QLoRA 省下多少内存。bert-base-chinese 大小的分类模型（随机权重，词表 21128、12 层），LoRA r = 8 加在
//! query、value 上，基座的投影权重分别以 f32、int8、NF4 存放：
//! - 基座各部分存放占的字节（嵌入表、各层投影与池化层、其余的偏置与 LayerNorm）；
//! - 建好模型之后的常驻内存（RSS），以及训练一步 [8,128]（前向 + 反向）期间的峰值常驻内存、每步耗时。
//!
//! 每种格式在自己的子进程里跑，峰值互不干扰；建模型时的 f32 权重在量化后释放，mimalloc 把它还给系统
//! （`mi_collect`），再把峰值计数清零（Linux 的 `/proc/self/clear_refs` 写 5），然后才开始计步；计步时与命令行一样，
//! 释放的内存留着复用（`alloc::keep_freed_memory`）。
//!
//! 用法：`cargo run --release --example qlora_memory`（依次跑三种，打印表格，写 `code/results/part4-quant/memory.json`）；
//! `-- f32`、`-- int8`、`-- nf4` 只跑一种、打印一行 JSON。环境变量 `ROUNDS` 是计时的步数（默认 4，先空跑一步）。

use std::time::Instant;

use dfdx::nn::NumParams;
use dfdx::prelude::*;
use llm_book::bert::model::{bert_config, BertBase, BERT_BASE_CHINESE_DIMS};
use llm_book::experiments::perf::{bench_batch, classifier_step};
use llm_book::peft::config::LoraConfig;
use llm_book::peft::model::PeftBert;
use llm_book::quant::QuantKind;
use serde::{Deserialize, Serialize};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// 一种格式的测量结果（MiB 与毫秒）。
#[derive(Debug, Serialize, Deserialize)]
struct Row {
    /// f32、int8 或 nf4。
    format: String,
    /// 嵌入表（不量化）。
    embeddings_mib: f64,
    /// 各层六个投影与池化层 dense 的权重。
    projections_mib: f64,
    /// 偏置、LayerNorm、分类头（不量化）。
    rest_mib: f64,
    /// 上面三项之和。
    base_mib: f64,
    /// 建好模型（量化并释放 f32 权重）之后的常驻内存。
    resident_mib: f64,
    /// 训练一步期间的峰值常驻内存。
    step_peak_mib: f64,
    /// 每步耗时的中位数。
    step_ms: f64,
    /// 每步耗时的最小、最大值。
    step_ms_range: (f64, f64),
    /// 把全部投影权重还原一遍的耗时（毫秒；f32 为 0）。训练一步还原两遍：前向一遍，反向一遍。
    dequantize_ms: f64,
}

fn proc_status_kib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("需要 Linux 的 /proc");
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

const MIB: f64 = 1048576.0;

fn measure(kind: Option<QuantKind>) -> Row {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let dev = Cpu::seed_from_u64(0);
    let config = bert_config(1e-12, 0.1, 512);
    let base = BertBase::<f32, Cpu>::new(&dev, &BERT_BASE_CHINESE_DIMS);
    let embeddings = base.embeddings.num_trainable_params();
    let all = base.num_trainable_params();
    let lora = LoraConfig::seq_cls(8, 16.0, &["query", "value"], 0.0);
    let mut model = PeftBert::get_peft_model(base, config, lora).unwrap();
    if let Some(kind) = kind {
        model.quantize_base(kind).unwrap();
    }
    let (projections, stored) = match &model.quant {
        Some(q) => (q.f32_bytes, q.stored_bytes),
        None => {
            let m = 768 * 768;
            let n = 12 * (4 * m + 2 * 768 * 3072) + m;
            (4 * n, 4 * n)
        }
    };
    let rest = 4 * (all - embeddings) - projections;
    // 量化时释放的 f32 权重还给系统，再把峰值清零：下面的峰值只含模型本身与训练一步
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // SAFETY：mi_collect 只整理 mimalloc 自己的空闲内存。
    unsafe { libmimalloc_sys::mi_collect(true) };
    let resident = proc_status_kib("VmRSS:") * 1024.0;
    std::fs::write("/proc/self/clear_refs", "5")
        .expect("清零峰值常驻内存（/proc/self/clear_refs）");
    // 从这里起与命令行（main）一样，让 mimalloc 不把释放的内存还给系统：每步还原出的权重缓冲区就不必每次重新缺页
    llm_book::alloc::keep_freed_memory();

    let (tokens, mask, labels) = bench_batch(&dev, 8, 128, 21128);
    let mut grads = None;
    let mut times = Vec::new();
    for r in 0..=rounds {
        let t = Instant::now();
        classifier_step(&model, &mut grads, &tokens, &mask, &labels);
        if r > 0 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    let peak = proc_status_kib("VmHWM:") * 1024.0;
    // 还原全部投影权重一遍（取 3 次的中位数）
    let dequantize_ms = model.quant.as_ref().map_or(0.0, |q| {
        let mut t: Vec<f64> = (0..3)
            .map(|_| {
                let start = Instant::now();
                for w in q.layers.iter().flatten().chain([&q.pooler]) {
                    std::hint::black_box(w.materialize());
                }
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        t.sort_by(f64::total_cmp);
        t[1]
    });
    Row {
        format: kind.map_or("f32", QuantKind::name).into(),
        embeddings_mib: 4.0 * embeddings as f64 / MIB,
        projections_mib: stored as f64 / MIB,
        rest_mib: rest as f64 / MIB,
        base_mib: (4 * embeddings + stored + rest) as f64 / MIB,
        resident_mib: resident / MIB,
        step_peak_mib: peak / MIB,
        step_ms: times[times.len() / 2],
        step_ms_range: (times[0], times[times.len() - 1]),
        dequantize_ms,
    }
}

fn main() {
    llm_book::kernels::cpu::join_thread_pool();
    let arg = std::env::args().nth(1);
    let parse = |s: &str| match s {
        "f32" => None,
        other => Some(other.parse::<QuantKind>().unwrap_or_else(|e| {
            eprintln!("{e}（或 f32）");
            std::process::exit(2)
        })),
    };
    if let Some(a) = arg {
        println!("{}", serde_json::to_string(&measure(parse(&a))).unwrap());
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let mut rows = Vec::new();
    for kind in ["f32", "int8", "nf4"] {
        let out = std::process::Command::new(&exe).arg(kind).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let row: Row = serde_json::from_slice(&out.stdout).unwrap();
        rows.push(row);
    }
    println!("| 基座 | 嵌入表 | 投影权重 | 其余 | 基座合计 | 建好后常驻 | 训练一步的峰值 | 每步（中位数） | 还原一遍 |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in &rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} 毫秒（{:.0}–{:.0}） | {:.0} 毫秒 |",
            r.format,
            r.embeddings_mib,
            r.projections_mib,
            r.rest_mib,
            r.base_mib,
            r.resident_mib,
            r.step_peak_mib,
            r.step_ms,
            r.step_ms_range.0,
            r.step_ms_range.1,
            r.dequantize_ms
        );
    }
    println!("（MiB；{}）", llm_book::experiments::machine_description());
    let result = serde_json::json!({
        "what": "bert-base-chinese 大小、LoRA r=8 q/v，训练一步 [8,128]：基座各部分的字节、常驻内存与峰值",
        "machine": llm_book::experiments::machine_description(),
        "rows": rows,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results/part4-quant");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("memory.json");
    llm_book::io::write_atomic(
        &path,
        serde_json::to_string_pretty(&result).unwrap().as_bytes(),
    )
    .unwrap();
    println!("结果写入 {}", path.display());
}
