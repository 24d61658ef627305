//! 只打印、不训练的三个数值核对：`gelu-grad`（第 0 部分：dfdx 的 GELU 反向错在哪里）、
//! `positional`（1.3 节：位置编码两种写法在 f32 下的误差）、`parity`（第 1 部分：各组件与 PyTorch 的最大误差）。

use crate::basics::autodiff::{gelu_gradient_table, GeluGradPoint};
use crate::kernels::device::DeviceTask;
use crate::kernels::Kernels;

/// `gelu-grad` 的参数。
#[derive(clap::Args, Debug)]
pub struct GeluGradArgs {
    #[command(flatten)]
    pub device: super::args::OnDevice,
}

/// 在选定设备上计算 GELU 梯度表。
struct GeluGrad(Vec<f64>);

impl DeviceTask for GeluGrad {
    type Output = Vec<GeluGradPoint>;
    fn run<D: Kernels<f32> + Kernels<f64>>(self, dev: D) -> Self::Output {
        gelu_gradient_table(&dev, &self.0)
    }
}

/// `cargo run --release -- gelu-grad`：精确导数、中心差分与 dfdx 反向在 9 个点上的对照。
pub fn gelu_grad(a: GeluGradArgs) -> anyhow::Result<()> {
    let xs = vec![-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0];
    let table = a.device.run(0, GeluGrad(xs))?;
    println!("设备：{}（f64，中心差分步长 1e-5）", a.device.kind);
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
    let worst = (table.iter())
        .map(|p| (p.dfdx_backward - p.exact).abs())
        .fold(0.0, f64::max);
    println!("dfdx 反向与精确值的最大偏差：{worst:.6}");
    Ok(())
}

/// `cargo run --release -- positional`：频率与编码表在 f32 下的误差（与 f64 真值比较）。
pub fn positional() -> anyhow::Result<()> {
    let (d, len, stride) = crate::figures::PE_NUMERICS;
    let n = crate::transformer::pe_numerics::pe_numerics(d, len, stride);
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

/// `cargo run --release -- parity`：第 1 部分各组件与 PyTorch 参考数据的最大绝对误差。
pub fn parity() -> anyhow::Result<()> {
    let path = crate::transformer::parity::fixture_path();
    let results = crate::transformer::parity::compare_all(&path)?;
    println!("参考数据：{}（PyTorch，f32）", path.display());
    for r in &results {
        println!(
            "{:<28} {:>5} 个元素  最大绝对误差 {:.2e}",
            r.name, r.elements, r.max_abs_error
        );
    }
    Ok(())
}
