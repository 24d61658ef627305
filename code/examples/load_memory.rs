//! issue 22：读 bert-base 大小的检查点（f32，约 390 MiB）时的峰值常驻内存。
//!
//! 用法：`cargo run --release --example load_memory`。第一次运行先把随机初始化的 bert-base 参数存到
//! `$TMPDIR/llm-book-bert-base.safetensors`；之后建好模型、把峰值清零（/proc/self/clear_refs），
//! 再 `Checkpoint::read` + `load_into`，打印峰值减去读之前的常驻内存（MiB）与文件大小。

use dfdx::prelude::*;
use llm_book::bert::model::{BertBase, BERT_BASE_CHINESE_DIMS};
use llm_book::checkpoint::{save_params, Checkpoint};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let path = std::env::temp_dir().join("llm-book-bert-base.safetensors");
    let dev = Cpu::seed_from_u64(0);
    let mut model = BertBase::<f32, Cpu>::new(&dev, &BERT_BASE_CHINESE_DIMS);
    if !path.exists() {
        save_params(&model, &path).unwrap();
    }
    let before = llm_book::alloc::reset_peak().expect("清零峰值常驻内存（/proc/self/clear_refs）");
    Checkpoint::read(&path)
        .unwrap()
        .load_into(&mut model, "")
        .unwrap();
    let peak = llm_book::alloc::proc_status_bytes("VmHWM:").expect("需要 Linux 的 /proc");
    let file = std::fs::metadata(&path).unwrap().len() as f64 / 1048576.0;
    println!(
        "{{\"file_mib\": {file:.1}, \"resident_before_mib\": {:.1}, \"load_extra_mib\": {:.1}}}",
        before / 1048576.0,
        (peak - before) / 1048576.0
    );
}
