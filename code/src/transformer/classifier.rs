//! 1.8 节：序列分类模型 = 编码器 + 对真实位置的平均池化 + 线性分类头。

use crate::kernels::Kernels;
use dfdx::nn::modules::{Linear, Module, ModuleVisitor, TensorCollection};
use dfdx::nn::BuildModule;
use dfdx::prelude::*;

use super::attention::PaddingMask;
use super::encoder::{EncoderConfig, EncoderOutput, EncoderParams, InputError, Mode};
use super::positional::PositionalEncoding;
use crate::basics::tensors::Real;

/// 分类模型的参数：编码器 + 分类头 `M → C`。
#[derive(Clone, Debug)]
pub struct ClassifierParams<
    const V: usize,
    const M: usize,
    const H: usize,
    const F: usize,
    const L: usize,
    const C: usize,
    E: Dtype,
    D: Device<E>,
> {
    /// 编码器。
    pub encoder: EncoderParams<V, M, H, F, L, E, D>,
    /// 分类头。
    pub head: Linear<M, C, E, D>,
}

/// 分类模型：参数 + 超参数 + 位置编码。
#[derive(Clone, Debug)]
pub struct Classifier<
    const V: usize,
    const M: usize,
    const H: usize,
    const F: usize,
    const L: usize,
    const C: usize,
    E: Dtype,
    D: Device<E>,
> {
    /// 可训练的参数。
    pub params: ClassifierParams<V, M, H, F, L, C, E, D>,
    /// 编码器的超参数。
    pub config: EncoderConfig,
    /// 位置编码。
    pub positional: PositionalEncoding<M, E, D>,
}

// ANCHOR: classifier
impl<
        const V: usize,
        const M: usize,
        const H: usize,
        const F: usize,
        const L: usize,
        const C: usize,
        E: Real,
        D: Kernels<E>,
    > Classifier<V, M, H, F, L, C, E, D>
{
    /// 随机初始化。
    pub fn new(dev: &D, config: EncoderConfig) -> Self {
        Self {
            params: ClassifierParams::build(dev),
            positional: PositionalEncoding::new(dev, config.max_len),
            config,
        }
    }

    /// # 形状
    /// - `tokens`: `(batch, seq)`，`mask` 与之相同
    /// - 返回：logits `(batch, Const<C>)`，以及编码器的输出（含注意力权重）
    pub fn forward<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        tokens: Tensor<(usize, usize), usize, D, T>,
        mask: &PaddingMask<E, D>,
        mode: Mode,
    ) -> Result<
        (
            Tensor<(usize, Const<C>), E, D, T>,
            Vec<Tensor<(usize, usize, usize, usize), E, D>>,
        ),
        InputError,
    > {
        let EncoderOutput { hidden, attention } = self.params.encoder.forward(
            &self.positional,
            &self.config,
            tokens,
            Some(mask),
            mode,
        )?;
        let pooled = mean_over_real_positions(hidden, mask);
        Ok((self.params.head.forward(pooled), attention))
    }
}

/// 只对真实位置取平均：Σₛ keepₛ·hₛ / 长度。填充位置的隐藏状态不参与。
///
/// # 形状
/// - `hidden`: `(batch, seq, Const<M>)`
/// - 返回：`(batch, Const<M>)`
pub fn mean_over_real_positions<const M: usize, E: Dtype, D: Kernels<E>, T: Tape<E, D>>(
    hidden: Tensor<(usize, usize, Const<M>), E, D, T>,
    mask: &PaddingMask<E, D>,
) -> Tensor<(usize, Const<M>), E, D, T> {
    let (batch, seq, _) = *hidden.shape();
    let dev = hidden.device().clone();
    let keep: Vec<E> = mask
        .lengths
        .iter()
        .flat_map(|&len| (0..seq).map(move |j| if j < len { E::ONE } else { E::default() }))
        .collect();
    let keep = dev.tensor_from_vec(keep, (batch, seq));
    let inv_len: Vec<E> = mask
        .lengths
        .iter()
        .map(|&len| E::from_f64(1.0 / len as f64).unwrap())
        .collect();
    let inv_len = dev.tensor_from_vec(inv_len, (batch,));
    let summed =
        (hidden * keep.broadcast_like::<_, Axis<2>>(&(batch, seq, Const::<M>)))
            .sum::<(usize, Const<M>), Axis<1>>();
    summed * inv_len.broadcast_like::<_, Axis<1>>(&(batch, Const::<M>))
}
// ANCHOR_END: classifier

impl<
        const V: usize,
        const M: usize,
        const H: usize,
        const F: usize,
        const L: usize,
        const C: usize,
        E: Real,
        D: Kernels<E>,
    > TensorCollection<E, D> for ClassifierParams<V, M, H, F, L, C, E, D>
{
    type To<E2: Dtype, D2: Device<E2>> = ClassifierParams<V, M, H, F, L, C, E2, D2>;

    fn iter_tensors<Vis: ModuleVisitor<Self, E, D>>(
        visitor: &mut Vis,
    ) -> Result<Option<Self::To<Vis::E2, Vis::D2>>, Vis::Err> {
        visitor.visit_fields(
            (
                Self::module("encoder", |s| &s.encoder, |s| &mut s.encoder),
                Self::module("head", |s| &s.head, |s| &mut s.head),
            ),
            |(encoder, head)| ClassifierParams { encoder, head },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_ignores_padded_positions() {
        let dev: Cpu = Default::default();
        // 第二条序列只有 1 个真实位置，填充位置放很大的值：不应影响平均
        let hidden = dev.tensor_from_vec(
            vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0, 100.0],
            (2, 2, Const::<2>),
        );
        let mask = PaddingMask::from_lengths(&dev, &[2, 1], 2).unwrap();
        assert_eq!(
            mean_over_real_positions(hidden, &mask).as_vec(),
            vec![2.0, 3.0, 5.0, 6.0]
        );
    }
}
