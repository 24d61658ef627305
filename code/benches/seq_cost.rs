//! 1.7 节：注意力与编码器层的耗时随序列长度的变化（参考配置 d_model 512、8 个头、前馈 2048，批大小 1）。
//!
//! 运行：`cargo bench --bench seq_cost`，然后 `cargo run --release -- seq-cost` 读取 criterion 的结果、
//! 与 O(S²·d) + O(S·d²) 的公式对照并画图。

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dfdx::nn::BuildModule;
use dfdx::prelude::*;
use llm_book::transformer::encoder::{EncoderConfig, EncoderLayer, Mode};
use llm_book::transformer::multi_head::MultiHeadAttention;

/// 测量的序列长度（与 `llm-book seq-cost` 读取的一致）。
pub const SEQ_LENS: [usize; 5] = [32, 64, 128, 256, 512];

fn seq_cost(c: &mut Criterion) {
    let dev = Cpu::seed_from_u64(0);
    let mha = MultiHeadAttention::<512, 8, f32, Cpu>::build(&dev);
    let layer = EncoderLayer::<512, 8, 2048, f32, Cpu>::build(&dev);
    let cfg = EncoderConfig::default();
    let mut group = c.benchmark_group("seq_cost");
    group.sample_size(10);
    for seq in SEQ_LENS {
        let x: Tensor<(usize, usize, Const<512>), f32, Cpu> =
            dev.sample_normal_like(&(1, seq, Const));
        group.bench_with_input(BenchmarkId::new("attention", seq), &x, |b, x| {
            b.iter(|| mha.forward(x.clone(), None))
        });
        group.bench_with_input(BenchmarkId::new("layer", seq), &x, |b, x| {
            b.iter(|| layer.forward(x.clone(), None, &cfg, Mode::Eval))
        });
    }
    group.finish();
}

criterion_group!(benches, seq_cost);
criterion_main!(benches);
