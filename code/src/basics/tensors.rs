//! 0.1 张量：`Tensor<S, E, D, T>` 的四个类型参数，显式广播与按轴归约。
//!
//! 本章用一个手写的数值稳定 softmax 串起这些概念；第 1 部分的注意力会用到同一个公式。

use dfdx::prelude::*;

/// 本书模型支持的元素类型（f32、f64）：dfdx 的 `Dtype`，加上随机初始化需要的浮点运算与均匀采样。
///
/// 这只是一个 trait 别名，让模型代码的约束写成 `E: Real`，而不是一长串 trait。
pub trait Real: Dtype + num_traits::Float + rand_distr::uniform::SampleUniform {}

impl<E: Dtype + num_traits::Float + rand_distr::uniform::SampleUniform> Real for E {}

// ANCHOR: softmax_rows
/// 逐行的数值稳定 softmax：先减去每行的最大值，再取指数并归一化。
///
/// 数学上减去常数不改变结果，但能保证 `exp` 的参数都 ≤ 0，不会上溢。
///
/// # 形状
/// - `x`: `(M, Const<N>)`，`M` 可以是编译期常量也可以是运行期 `usize`
/// - 返回：与 `x` 相同，每行之和为 1
pub fn softmax_rows<M: Dim, const N: usize, E: Dtype, D: Device<E>>(
    x: Tensor<(M, Const<N>), E, D>,
) -> Tensor<(M, Const<N>), E, D> {
    let shape = *x.shape();
    // 归约的轴写在类型里：沿 Axis<1> 取最大值，(M, N) -> (M,)
    let row_max = x.clone().max::<(M,), Axis<1>>();
    // 广播也是显式的：(M,) -> (M, N)
    let shifted = x - row_max.broadcast_like(&shape);
    let exp = shifted.exp();
    let row_sum = exp.clone().sum::<(M,), Axis<1>>();
    exp / row_sum.broadcast_like(&shape)
}
// ANCHOR_END: softmax_rows

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_dfdx_softmax_and_rows_sum_to_one() {
        let dev: Cpu = Default::default();
        let x: Tensor<Rank2<3, 4>, f64, _> = dev.sample_normal::<Rank2<3, 4>>() * 10.0;
        let ours = softmax_rows(x.clone()).array();
        let reference = x.softmax::<Axis<1>>().array();
        for (row, ref_row) in ours.iter().zip(reference.iter()) {
            let sum: f64 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-12, "行和 = {sum}");
            for (a, b) in row.iter().zip(ref_row) {
                assert!((a - b).abs() < 1e-12, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn large_logits_do_not_overflow() {
        let dev: Cpu = Default::default();
        // 不减最大值时 exp(1000) = inf，结果会是 NaN。
        let x = dev.tensor([[1000.0f32, 1001.0, 1002.0]]);
        let y = softmax_rows(x).array()[0];
        assert!(y.iter().all(|v| v.is_finite()));
        assert!((y[2] - 0.665_240_9).abs() < 1e-6, "{y:?}");
    }
}
