//! 1.5 精确 GELU：GELU(x) = x·Φ(x)，反向传播给出正确的导数 Φ(x) + x·φ(x)。
//!
//! dfdx 0.13 的 `accurate_gelu` 前向正确、反向多乘了 √2 倍的密度项（见 0.4 节）。
//! 这里前向仍用它，梯度用一个“线性化”的构造改正：
//!
//! out = x·d + (y − x·d)，其中 y = GELU(x)、d = GELU′(x)，且 d 与 (y − x·d) 都不带 tape。
//!
//! 数值上 out = y；对 x 求导只剩第一项，恰好是 d。整个构造只用 dfdx 的公开算子，
//! 所以 CPU 与 CUDA 都能用（性能附录会换成融合的内核）。
//!
//! 代码在 `kernels/composite.rs`（[`gelu`]）：它也是附录 B 里 `Kernels::gelu` 的默认实现与融合内核的对照，
//! 而附录 B 的算子不依赖各章的模块。这里导出它，并检查它的梯度。

pub use crate::kernels::composite::gelu;

#[cfg(test)]
mod tests {
    use super::gelu;
    use crate::basics::autodiff::{check_gradient, gelu_exact_derivative, ScalarFn};
    use dfdx::prelude::*;

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
