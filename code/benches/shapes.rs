//! 第 0 部分的思考题：编译期形状会让矩阵乘法更快吗？
//!
//! 同一个 (B, 256) × (256, 256) 的乘法，批维分别写成 `Const<64>` 与运行期的 `usize`。
//! 运行：`cargo bench --bench shapes`。

use criterion::{criterion_group, criterion_main, Criterion};
use dfdx::prelude::*;

const BATCH: usize = 64;
const WIDTH: usize = 256;

fn matmul_const_vs_runtime(c: &mut Criterion) {
    let dev: Cpu = Default::default();
    let w: Tensor<Rank2<WIDTH, WIDTH>, f32, _> = dev.sample_normal();
    let x_const: Tensor<Rank2<BATCH, WIDTH>, f32, _> = dev.sample_normal();
    let x_runtime: Tensor<(usize, Const<WIDTH>), f32, _> = x_const.clone().realize();
    let mut group = c.benchmark_group("matmul_64x256x256");
    group.bench_function("编译期批维 Const<64>", |b| {
        b.iter(|| x_const.clone().matmul(w.clone()))
    });
    group.bench_function("运行期批维 usize", |b| {
        b.iter(|| x_runtime.clone().matmul(w.clone()))
    });
    group.finish();
}

criterion_group!(benches, matmul_const_vs_runtime);
criterion_main!(benches);
