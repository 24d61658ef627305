//! 1.5 精确 GELU：GELU(x) = x·Φ(x)，反向传播给出正确的导数 Φ(x) + x·φ(x)。
//!
//! dfdx 0.13 的 `accurate_gelu` 前向正确、反向多乘了 √2 倍的密度项（见 0.4 节）。
//! 这里前向仍用它，梯度用一个“线性化”的构造改正：
//!
//! out = x·d + (y − x·d)，其中 y = GELU(x)、d = GELU′(x)，且 d 与 (y − x·d) 都不带 tape。
//!
//! 数值上 out = y；对 x 求导只剩第一项，恰好是 d。整个构造只用 dfdx 的公开算子，
//! 所以 CPU 与 CUDA 都能用（性能附录会换成融合的内核）。

use dfdx::prelude::*;

// ANCHOR: gelu
/// 精确 GELU，梯度正确。
///
/// # 形状
/// 任意形状 `S`，输出与输入相同。
pub fn gelu<S: Shape, E: Dtype, D: Device<E>, T: Tape<E, D> + Merge<NoneTape>>(
    x: Tensor<S, E, D, T>,
) -> Tensor<S, E, D, T> {
    let (x, tape) = x.split_tape();
    let y = x.clone().accurate_gelu(); // 前向：dfdx 的前向是对的
    let d = gelu_derivative(&x, &y);
    let offset = y - x.clone() * d.clone();
    x.put_tape(tape) * d + offset
}

/// GELU′(x) = Φ(x) + x·φ(x)，不带 tape。
///
/// dfdx 没有 erf 算子，但已经算好的 y = x·Φ(x) 给出 Φ(x) = y / x（x = 0 处取极限 ½）。
fn gelu_derivative<S: Shape, E: Dtype, D: Device<E>>(
    x: &Tensor<S, E, D>,
    y: &Tensor<S, E, D>,
) -> Tensor<S, E, D> {
    let half = x.device().ones_like(x) * E::from_f64(0.5).unwrap();
    let cdf = x.eq(E::default()).choose(half, y.clone() / x.clone());
    let inv_sqrt_2pi = E::from_f64(1.0 / (2.0 * std::f64::consts::PI).sqrt()).unwrap();
    let pdf = (x.clone().square() * E::from_f64(-0.5).unwrap()).exp() * inv_sqrt_2pi;
    cdf + x.clone() * pdf
}
// ANCHOR_END: gelu

#[cfg(test)]
mod tests {
    use super::*;
    use crate::basics::autodiff::{check_gradient, gelu_exact_derivative, ScalarFn};

    struct SumGelu;
    impl<S: Shape> ScalarFn<S, Cpu> for SumGelu {
        fn eval<T: Tape<f64, Cpu> + Merge<T> + Merge<NoneTape>>(
            &self,
            x: Tensor<S, f64, Cpu, T>,
        ) -> Tensor<(), f64, Cpu, T> {
            // 乘一个非均匀的权重，让每个元素的梯度不同
            let shape = *x.shape();
            let w = x.device().tensor_from_vec(
                (0..shape.num_elements())
                    .map(|i| 1.0 + 0.1 * i as f64)
                    .collect(),
                shape,
            );
            (gelu(x) * w).sum()
        }
    }

    #[test]
    fn gradient_matches_finite_differences_and_formula() {
        let dev: Cpu = Default::default();
        let xs = [-4.0, -2.5, -1.0, -0.3, 0.0, 1e-7, 0.4, 1.0, 2.0, 5.0];
        let x = dev.tensor(xs);
        let check = check_gradient(&x, 1e-5, &SumGelu);
        assert!(check.max_abs_error < 1e-8, "{check:?}");
        for (i, &xi) in xs.iter().enumerate() {
            let want = gelu_exact_derivative(xi) * (1.0 + 0.1 * i as f64);
            assert!(
                (check.analytic[i] - want).abs() < 1e-12,
                "x={xi}: {} vs {want}",
                check.analytic[i]
            );
        }
    }

    #[test]
    fn forward_equals_accurate_gelu_in_f32() {
        let dev: Cpu = Default::default();
        let x: Tensor<Rank1<64>, f32, _> = dev.sample_normal::<Rank1<64>>() * 3.0;
        let ours = gelu(x.clone()).as_vec();
        let reference = x.accurate_gelu().as_vec();
        for (a, b) in ours.iter().zip(&reference) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
        }
    }
}
