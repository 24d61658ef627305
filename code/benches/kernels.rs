//! 附录 B：融合算子与 dfdx 组合算子的耗时（前向、前向 + 反向），形状取 bert-base 的一批 [8, 128]。
//!
//! 运行：`bash code/scripts/bench.sh`（先跑本基准，再跑 PyTorch 的同一组测量，最后打印比值表）。

use criterion::{criterion_group, criterion_main, Criterion};
use dfdx::prelude::*;
use llm_book::kernels::composite::{
    gelu as gelu_composite, layer_norm_composite, linear_composite, masked_softmax_composite,
};
use llm_book::kernels::cpu::backward_from;
use llm_book::kernels::{Kernels, Shape4};
use llm_book::transformer::attention::PaddingMask;

/// 批大小、序列长度、头数、隐藏维、前馈维（bert-base）。
const B: usize = 8;
const S: usize = 128;
const H: usize = 12;
const M: usize = 768;
const FF: usize = 3072;

type Plain<S> = Tensor<S, f32, Cpu>;
type Traced<S> = Tensor<S, f32, Cpu, OwnedTape<f32, Cpu>>;

/// 测量一个算子：`fused`、`dfdx` 两种实现，各测前向（`fwd`）与前向 + 反向（`fwd_bwd`）。
/// criterion 的结果在 `target/criterion/kernels_<name>/<实现>_<fwd|fwd_bwd>/`。
fn bench_op<Sh: Shape, O: Shape>(
    c: &mut Criterion,
    name: &str,
    x: &Plain<Sh>,
    g: &Plain<O>,
    (fused, fused_eval): (
        impl Fn(Traced<Sh>) -> Traced<O>,
        impl Fn(Plain<Sh>) -> Plain<O>,
    ),
    (dfdx, dfdx_eval): (
        impl Fn(Traced<Sh>) -> Traced<O>,
        impl Fn(Plain<Sh>) -> Plain<O>,
    ),
) {
    let mut group = c.benchmark_group(format!("kernels_{name}"));
    group.sample_size(20);
    group.bench_function("fused_fwd", |b| b.iter(|| fused_eval(x.clone())));
    group.bench_function("fused_fwd_bwd", |b| {
        b.iter(|| backward_from(fused(x.leaky_trace()), g))
    });
    group.bench_function("dfdx_fwd", |b| b.iter(|| dfdx_eval(x.clone())));
    group.bench_function("dfdx_fwd_bwd", |b| {
        b.iter(|| backward_from(dfdx(x.leaky_trace()), g))
    });
    group.finish();
}

fn kernels(c: &mut Criterion) {
    let dev = Cpu::seed_from_u64(0);

    let scores: Tensor<Shape4, f32, Cpu> = dev.sample_normal_like(&(B, H, S, S));
    let g4: Tensor<Shape4, f32, Cpu> = dev.sample_normal_like(&(B, H, S, S));
    bench_op(
        c,
        "softmax",
        &scores,
        &g4,
        (
            |x| Cpu::masked_softmax(x, None),
            |x| Cpu::masked_softmax(x, None),
        ),
        (
            |x| masked_softmax_composite(x, None),
            |x| masked_softmax_composite(x, None),
        ),
    );
    // 一批长短不一的序列（与 PyTorch 一侧相同的长度）
    let lengths: Vec<usize> = (0..B).map(|i| S - 12 * i).collect();
    let mask = PaddingMask::<f32, Cpu>::from_lengths(&dev, &lengths, S).unwrap();
    let m = &mask.bias;
    bench_op(
        c,
        "masked_softmax",
        &scores,
        &g4,
        (
            |x| Cpu::masked_softmax(x, Some(m)),
            |x| Cpu::masked_softmax(x, Some(m)),
        ),
        (
            |x| masked_softmax_composite(x, Some(m)),
            |x| masked_softmax_composite(x, Some(m)),
        ),
    );

    let h: Tensor<(usize, usize, usize), f32, Cpu> = dev.sample_normal_like(&(B, S, FF));
    let gh: Tensor<(usize, usize, usize), f32, Cpu> = dev.sample_normal_like(&(B, S, FF));
    bench_op(
        c,
        "gelu",
        &h,
        &gh,
        (Cpu::gelu, Cpu::gelu),
        (gelu_composite, gelu_composite),
    );

    // dropout：bert-base 隐藏层输出的形状，p = 0.1（前向与反向都是训练模式）
    let hd: Tensor<(usize, usize, usize), f32, Cpu> = dev.sample_normal_like(&(B, S, M));
    let ghd: Tensor<(usize, usize, usize), f32, Cpu> = dev.sample_normal_like(&(B, S, M));
    bench_op(
        c,
        "dropout",
        &hd,
        &ghd,
        (|t| Cpu::dropout(t, 0.1), |t| Cpu::dropout(t, 0.1)),
        (|t| t.dropout(0.1), |t| t.dropout(0.1)),
    );

    let x: Tensor<(usize, usize, Const<M>), f32, Cpu> = dev.sample_normal_like(&(B, S, Const));
    let gx: Tensor<(usize, usize, Const<M>), f32, Cpu> = dev.sample_normal_like(&(B, S, Const));
    let w: Tensor<Rank1<M>, f32, Cpu> = dev.sample_normal();
    let bias: Tensor<Rank1<M>, f32, Cpu> = dev.sample_normal();
    bench_op(
        c,
        "layer_norm",
        &x,
        &gx,
        (
            |t| Cpu::layer_norm(t, &w, &bias, 1e-12),
            |t| Cpu::layer_norm(t, &w, &bias, 1e-12),
        ),
        (
            |t| layer_norm_composite(t, &w, &bias, 1e-12),
            |t| layer_norm_composite(t, &w, &bias, 1e-12),
        ),
    );
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// 与 `llm-book` 程序相同的分配器与线程池设置（见 `llm_book::alloc`、`llm_book::kernels::cpu::join_thread_pool`）。
fn setup(_: &mut Criterion) {
    llm_book::alloc::keep_freed_memory();
    llm_book::kernels::cpu::join_thread_pool();
}

/// 矩阵乘法的吞吐：bert-base 前馈网络的升维层，[8·128, 768] × [768, 3072]ᵀ（前向，2·m·k·n 次浮点运算）。
fn gemm(c: &mut Criterion) {
    let dev = Cpu::seed_from_u64(0);
    let x: Tensor<(usize, usize, Const<M>), f32, Cpu> = dev.sample_normal_like(&(B, S, Const));
    let w: Tensor<Rank2<FF, M>, f32, Cpu> = dev.sample_normal();
    let b: Tensor<Rank1<FF>, f32, Cpu> = dev.sample_normal();
    let mut group = c.benchmark_group("kernels_gemm");
    group.sample_size(20);
    group.bench_function("fused_fwd", |bench| {
        bench.iter(|| Cpu::linear(x.clone(), &w, &b, true))
    });
    group.bench_function("dfdx_fwd", |bench| {
        bench.iter(|| linear_composite(x.clone(), &w, &b))
    });
    group.finish();
}

criterion_group!(benches, setup, kernels, gemm);
criterion_main!(benches);
