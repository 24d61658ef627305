//! 2.6 节：B(Ax) 与 (BA)x 的耗时；合并后的 LoRA 层与原层的推理耗时。
//!
//! 运行：`cargo bench --bench lora_order`，然后 `cargo run --release -- lora-order` 读取结果、与 FLOP 公式对照。

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dfdx::nn::modules::Linear;
use dfdx::nn::{BuildModule, Module};
use dfdx::prelude::*;
use llm_book::lora::layer::{LoraLinear, LoraOptions};
use llm_book::transformer::encoder::Mode;

/// 每次前向的词数（批 × 序列）。
const TOKENS: usize = 32;

macro_rules! order_case {
    ($group:expr, $dev:expr, $d:literal, $r:literal) => {{
        let x: Tensor<Rank2<TOKENS, $d>, f32, Cpu> = $dev.sample_normal();
        let a: Tensor<Rank2<$r, $d>, f32, Cpu> = $dev.sample_normal();
        let b: Tensor<Rank2<$d, $r>, f32, Cpu> = $dev.sample_normal();
        let id = format!("{}x{}", $d, $r);
        // B(Ax)：(T, d)·(d, r) → (T, r)·(r, d)
        $group.bench_function(BenchmarkId::new("b_ax", &id), |bench| {
            bench.iter(|| {
                x.clone()
                    .matmul(a.clone().permute())
                    .matmul(b.clone().permute())
            })
        });
        // (BA)x：先构造 d×d 的 BA，再乘 x
        $group.bench_function(BenchmarkId::new("ba_x", &id), |bench| {
            bench.iter(|| x.clone().matmul(b.clone().matmul(a.clone()).permute()))
        });
    }};
}

fn order(c: &mut Criterion) {
    let dev = Cpu::seed_from_u64(0);
    let mut group = c.benchmark_group("lora_order");
    group.sample_size(20);
    order_case!(group, dev, 256, 4);
    order_case!(group, dev, 256, 16);
    order_case!(group, dev, 1024, 4);
    order_case!(group, dev, 1024, 16);
    group.finish();
}

fn merged(c: &mut Criterion) {
    let dev = Cpu::seed_from_u64(0);
    let base = Linear::<1024, 1024, f32, Cpu>::build(&dev);
    let mut lora = LoraLinear::<1024, 1024, 16, f32, Cpu>::from_base(&base);
    lora.lora_b = dev.sample_normal();
    let opts = LoraOptions {
        alpha: 32.0,
        dropout: 0.0,
    };
    let merged = lora.merge(&opts);
    let x: Tensor<(usize, usize, Const<1024>), f32, Cpu> =
        dev.sample_normal_like(&(1, TOKENS, Const));
    let mut group = c.benchmark_group("lora_inference");
    group.sample_size(30);
    group.bench_function("base", |b| b.iter(|| base.forward(x.clone())));
    group.bench_function("merged", |b| b.iter(|| merged.forward(x.clone())));
    group.bench_function("unmerged", |b| {
        b.iter(|| lora.forward(x.clone(), &opts, Mode::Eval))
    });
    group.finish();
}

criterion_group!(benches, order, merged);
criterion_main!(benches);
