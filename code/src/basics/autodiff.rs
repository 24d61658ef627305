//! 0.4 自动微分：tape 记录前向，`backward` 沿链式法则求梯度；用有限差分检查梯度。
//!
//! 本章的实验 `cargo run --release -- gelu-grad` 用这里的梯度检查发现：dfdx 0.13 的
//! `accurate_gelu` 前向正确、反向公式有误。

use dfdx::prelude::*;

// ANCHOR: gradient
/// 用 tape 求标量函数 `f` 在 `x` 处的梯度 ∂f/∂x。
///
/// `leaky_trace` 给 `x` 的副本挂上一条空 tape；之后每个算子都把自己的反向函数记到 tape 上，
/// `backward` 从标量输出开始按相反顺序执行它们。
///
/// # 形状
/// - `x`: 任意形状 `S`
/// - 返回：与 `x` 相同
pub fn gradient<S, E, D, F>(x: &Tensor<S, E, D>, f: F) -> Tensor<S, E, D>
where
    S: Shape,
    E: Dtype,
    D: Device<E>,
    F: FnOnce(Tensor<S, E, D, OwnedTape<E, D>>) -> Tensor<(), E, D, OwnedTape<E, D>>,
{
    let y = f(x.leaky_trace());
    let grads = y.backward();
    grads.get(x)
}
// ANCHOR_END: gradient

// ANCHOR: numeric_gradient
/// 中心差分：∂f/∂xᵢ ≈ (f(x + h·eᵢ) − f(x − h·eᵢ)) / 2h，截断误差 O(h²)。
///
/// 在 f64 下计算：f32 只有约 7 位有效数字，相减会吃掉大部分精度。
pub fn numeric_gradient<S, D, F>(x: &Tensor<S, f64, D>, h: f64, mut f: F) -> Vec<f64>
where
    S: Shape,
    D: Device<f64>,
    F: FnMut(Tensor<S, f64, D>) -> f64,
{
    let base = x.as_vec();
    let mut at = |i: usize, delta: f64| {
        let mut v = base.clone();
        v[i] += delta;
        f(x.device().tensor_from_vec(v, *x.shape()))
    };
    (0..base.len())
        .map(|i| (at(i, h) - at(i, -h)) / (2.0 * h))
        .collect()
}
// ANCHOR_END: numeric_gradient

// ANCHOR: check_gradient
/// 梯度检查的结果：tape 给出的梯度与有限差分逐元素比较。
#[derive(Debug, Clone)]
pub struct GradCheck {
    /// tape（反向传播）给出的梯度，按行优先展平。
    pub analytic: Vec<f64>,
    /// 有限差分给出的梯度。
    pub numeric: Vec<f64>,
    /// 最大绝对误差 maxᵢ |analyticᵢ − numericᵢ|。
    pub max_abs_error: f64,
    /// 取得最大误差的元素下标。
    pub worst_index: usize,
}

/// 比较 `f` 在 `x` 处的反向传播梯度与中心差分梯度（步长 `h`）。
///
/// `f` 要被调用 2n + 1 次：一次带 tape，2n 次不带。它对 tape 类型 `T` 泛型，
/// 所以写成一个带泛型方法的 trait（[`ScalarFn`]）。
pub fn check_gradient<S, D, F>(x: &Tensor<S, f64, D>, h: f64, f: &F) -> GradCheck
where
    S: Shape,
    D: Device<f64>,
    F: ScalarFn<S, D>,
{
    let analytic = gradient(x, |t| f.eval(t)).as_vec();
    let numeric = numeric_gradient(x, h, |t| f.eval(t).as_vec()[0]);
    let (worst_index, max_abs_error) = analytic
        .iter()
        .zip(&numeric)
        .map(|(a, n)| (a - n).abs())
        .enumerate()
        .fold(
            (0, 0.0),
            |best, (i, e)| if e > best.1 { (i, e) } else { best },
        );
    GradCheck {
        analytic,
        numeric,
        max_abs_error,
        worst_index,
    }
}

/// 一个标量函数 f: 张量 → 标量，对 tape 类型泛型，既能带 tape 求导，也能不带 tape 求值。
pub trait ScalarFn<S: Shape, D: Device<f64>> {
    /// 计算 f(x)。`T` 是 `NoneTape` 或 `OwnedTape`；`Merge` 约束让 f 内部可以把 x 和常量张量混合运算。
    fn eval<T: Tape<f64, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        x: Tensor<S, f64, D, T>,
    ) -> Tensor<(), f64, D, T>;
}
// ANCHOR_END: check_gradient

/// 测试用的抽查：整个模型的参数太多，逐个差分太慢，只在下标 `idxs` 上把反向给出的梯度 `analytic`
/// 与中心差分比较（步长 1e-6，差 < 1e-6），并确认抽查的下标里至少有一个梯度明显不为 0（全 0 的梯度会让比较白白通过）。
/// `loss_at(i, δ)` 是第 i 个参数加上 δ 之后的损失（f64）。
#[cfg(test)]
pub(crate) fn assert_spot_gradients(
    name: &str,
    analytic: &[f64],
    idxs: &[usize],
    loss_at: impl Fn(usize, f64) -> f64,
) {
    let h = 1e-6;
    for &i in idxs {
        let numeric = (loss_at(i, h) - loss_at(i, -h)) / (2.0 * h);
        assert!(
            (numeric - analytic[i]).abs() < 1e-6,
            "{name}[{i}]：反向 {} vs 差分 {numeric}",
            analytic[i]
        );
    }
    // 抽查的下标里至少有一个梯度明显不为 0：否则“反向 0 对差分 0”的比较什么也没有检查（只看整个向量不够：
    // 挑中的恰好都是用不到的行时，照样白白通过）
    assert!(
        idxs.iter().any(|&i| analytic[i].abs() > 1e-6),
        "{name}：抽查的下标 {idxs:?} 上梯度都接近 0，换几个下标"
    );
}

// ANCHOR: gelu_exact
/// 标准正态分布的累积分布函数 Φ(x) = ½(1 + erf(x/√2))。
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2))
}

/// 标准正态分布的密度 φ(x) = exp(−x²/2) / √(2π)。
pub fn normal_pdf(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// 精确 GELU 的导数：d/dx [x·Φ(x)] = Φ(x) + x·φ(x)。
pub fn gelu_exact_derivative(x: f64) -> f64 {
    normal_cdf(x) + x * normal_pdf(x)
}
// ANCHOR_END: gelu_exact

/// GELU 梯度实验的一行：同一个点上三种方式得到的导数。
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeluGradPoint {
    /// 自变量 x。
    pub x: f64,
    /// 解析导数 Φ(x) + x·φ(x)。
    pub exact: f64,
    /// 对 dfdx `accurate_gelu` 的**前向**做中心差分。
    pub numeric: f64,
    /// dfdx `accurate_gelu` 的**反向**（tape）给出的导数。
    pub dfdx_backward: f64,
}

/// 在每个 `xs[i]` 处比较 GELU 的三种导数（f64，中心差分步长 1e-5）。
pub fn gelu_gradient_table<D: Device<f64>>(dev: &D, xs: &[f64]) -> Vec<GeluGradPoint> {
    let x = dev.tensor_from_vec(xs.to_vec(), (xs.len(),));
    // 各元素互不影响，所以 sum 的梯度就是逐元素导数
    let dfdx_backward = gradient(&x, |t| t.accurate_gelu().sum()).as_vec();
    let h = 1e-5;
    let plus = (x.clone() + h).accurate_gelu().as_vec();
    let minus = (x.clone() - h).accurate_gelu().as_vec();
    xs.iter()
        .enumerate()
        .map(|(i, &x)| GeluGradPoint {
            x,
            exact: gelu_exact_derivative(x),
            numeric: (plus[i] - minus[i]) / (2.0 * h),
            dfdx_backward: dfdx_backward[i],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f(x) = Σ sin(xᵢ)·xᵢ²，∂f/∂xᵢ = cos(xᵢ)·xᵢ² + 2xᵢ·sin(xᵢ)
    struct SinTimesSquare;
    impl<S: Shape> ScalarFn<S, Cpu> for SinTimesSquare {
        fn eval<T: Tape<f64, Cpu> + Merge<T> + Merge<NoneTape>>(
            &self,
            x: Tensor<S, f64, Cpu, T>,
        ) -> Tensor<(), f64, Cpu, T> {
            // x 被用到两次：retaped 复制出同一 id、带一条新空 tape 的张量，
            // 乘法把两条 tape 合并，两个分支的梯度都会累加到 x 上。
            let x_squared = x.retaped::<T>().square();
            (x.sin() * x_squared).sum()
        }
    }

    #[test]
    fn tape_gradient_equals_analytic_and_numeric() {
        let dev: Cpu = Default::default();
        let x = dev.tensor([-2.0f64, -0.5, 0.0, 0.7, 3.0]);
        let check = check_gradient(&x, 1e-5, &SinTimesSquare);
        for (i, &xi) in x.as_vec().iter().enumerate() {
            let exact = xi.cos() * xi * xi + 2.0 * xi * xi.sin();
            assert!((check.analytic[i] - exact).abs() < 1e-12, "x={xi}");
        }
        assert!(check.max_abs_error < 1e-8, "{check:?}");
    }

    #[test]
    fn dfdx_accurate_gelu_backward_is_wrong_but_forward_is_right() {
        let dev: Cpu = Default::default();
        let table = gelu_gradient_table(&dev, &[-2.0, -1.0, 0.0, 1.0, 2.0]);
        for p in &table {
            // 前向正确：对前向做差分得到的导数与解析式一致
            assert!((p.numeric - p.exact).abs() < 1e-8, "{p:?}");
        }
        let at_one = table[3];
        assert!((at_one.exact - 1.083_315).abs() < 1e-6, "{at_one:?}");
        assert!(
            (at_one.dfdx_backward - 1.183_543).abs() < 1e-6,
            "{at_one:?}"
        );
        // 在 x = 0 处错误项 x·(…) 为 0，两者恰好相等
        assert!((table[2].dfdx_backward - 0.5).abs() < 1e-12);
    }
}
