//! 1.4 层归一化：对每个位置的 d 维向量做标准化，再做逐维的缩放和平移。
//!
//! LayerNorm(x) = (x − μ) / √(σ² + ε) ⊙ γ + β，μ、σ² 是最后一维上的均值和（有偏）方差。

use dfdx::nn::modules::{ModuleVisitor, TensorCollection, TensorOptions};
use dfdx::prelude::*;

pub use crate::kernels::composite::layer_norm_composite;
use crate::kernels::Kernels;

// ANCHOR: layer_norm
/// 层归一化的参数：γ（`weight`）初始为 1，β（`bias`）初始为 0。字段名与 PyTorch 的 `nn.LayerNorm` 相同。
#[derive(Clone, Debug)]
pub struct LayerNorm<const M: usize, E: Dtype, D: Device<E>> {
    /// 缩放 γ。
    pub weight: Tensor<Rank1<M>, E, D>,
    /// 平移 β。
    pub bias: Tensor<Rank1<M>, E, D>,
}

impl<const M: usize, E: Dtype, D: Kernels<E>> LayerNorm<M, E, D> {
    /// 沿最后一维归一化；`eps` 是超参数（PyTorch 默认 1e-5，BERT 用 1e-12）。
    /// 由设备的 [`Kernels::layer_norm`] 计算：CPU 上是融合内核（附录 B），其他设备是组合写法 [`layer_norm_composite`]。
    ///
    /// # 形状
    /// - `x`: `(batch, seq, Const<M>)`
    /// - 返回：与 `x` 相同
    pub fn forward<T: Tape<E, D>>(
        &self,
        x: Tensor<(usize, usize, Const<M>), E, D, T>,
        eps: f64,
    ) -> Tensor<(usize, usize, Const<M>), E, D, T> {
        D::layer_norm(x, &self.weight, &self.bias, eps)
    }
}
// ANCHOR_END: layer_norm

impl<const M: usize, E: Dtype, D: Device<E>> TensorCollection<E, D> for LayerNorm<M, E, D> {
    type To<E2: Dtype, D2: Device<E2>> = LayerNorm<M, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::tensor(
                    "weight",
                    |s| &s.weight,
                    |s| &mut s.weight,
                    TensorOptions::reset_to_ones(),
                ),
                Self::tensor(
                    "bias",
                    |s| &s.bias,
                    |s| &mut s.bias,
                    TensorOptions::reset_to_zeros(),
                ),
            ),
            |(weight, bias)| LayerNorm { weight, bias },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfdx::nn::modules::{LayerNorm1D, Module};

    #[test]
    fn equals_dfdx_layer_norm() {
        let dev: Cpu = Default::default();
        let mut ours = LayerNorm::<6, f64, Cpu>::build(&dev);
        ours.weight = dev.sample_normal();
        ours.bias = dev.sample_normal();
        let mut theirs = dev.build_module::<dfdx::nn::builders::LayerNorm1D<6>, f64>();
        theirs.gamma = ours.weight.clone();
        theirs.beta = ours.bias.clone();
        let _: &LayerNorm1D<6, f64, Cpu> = &theirs;
        let x = dev.sample_normal_like(&(2, 3, Const::<6>)) * 4.0 + 1.0;
        let a = ours.forward(x.clone(), 1e-5).as_vec();
        let b = theirs.forward(x).as_vec();
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
    }
}
