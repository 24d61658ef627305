//! 1.7 参数量、显存与计算量。
//!
//! 参数量有两种算法：遍历模型的每个参数张量（dfdx 的 `NumParams`），和闭式公式。
//! 两者对任何配置都必须相等——测试检查这一点。显存按“参数 + 梯度 + Adam 状态 + 激活”估算。

use crate::kernels::Kernels;
use dfdx::nn::NumParams;
use dfdx::prelude::*;

use crate::basics::tensors::Real;

use super::encoder::TransformerEncoder;

/// 编码器的各个宽度（运行期的值，用于公式与表格）。
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelDims {
    /// 词表大小 V。
    pub vocab: usize,
    /// 隐藏维度 d（d_model）。
    pub d_model: usize,
    /// 头数 h。
    pub heads: usize,
    /// 前馈宽度 d_ff。
    pub d_ff: usize,
    /// 层数 L。
    pub layers: usize,
}

impl<
        const V: usize,
        const M: usize,
        const H: usize,
        const F: usize,
        const L: usize,
        E: Dtype,
        D: Kernels<E>,
    > TransformerEncoder<V, M, H, F, L, E, D>
{
    /// 类型参数中的宽度。
    pub const DIMS: ModelDims = ModelDims {
        vocab: V,
        d_model: M,
        heads: H,
        d_ff: F,
        layers: L,
    };
}

// ANCHOR: param_formula
/// 参数量的闭式公式：V·d + L·(4d² + 2d·d_ff + 9d + d_ff) + 2d。
///
/// 每层：注意力 4(d² + d)，前馈 2d·d_ff + d_ff + d，两个层归一化 4d；最后的层归一化 2d。
pub fn param_count(dims: &ModelDims) -> usize {
    let (v, d, f, l) = (dims.vocab, dims.d_model, dims.d_ff, dims.layers);
    v * d + l * (4 * d * d + 2 * d * f + 9 * d + f) + 2 * d
}
// ANCHOR_END: param_formula

/// 遍历模型的全部参数张量，数元素个数。
pub fn count_params<
    const V: usize,
    const M: usize,
    const H: usize,
    const F: usize,
    const L: usize,
    E,
    D,
>(
    model: &TransformerEncoder<V, M, H, F, L, E, D>,
) -> usize
where
    E: Real,
    D: Kernels<E>,
{
    model.params.num_trainable_params()
}

// ANCHOR: memory
/// 训练一步的显存（内存）估算，单位字节。
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// 参数。
    pub params: usize,
    /// 梯度（与参数同样大）。
    pub grads: usize,
    /// Adam 的一阶、二阶矩（参数的两倍）。
    pub adam: usize,
    /// 为反向传播保存的激活。
    pub activations: usize,
}

impl MemoryEstimate {
    /// 合计。
    pub fn total(&self) -> usize {
        self.params + self.grads + self.adam + self.activations
    }
}

/// 批大小 `batch`、序列长度 `seq`、每个元素 `bytes` 字节时，训练一步的内存估算。
///
/// 激活按每层保存 B·S·(11d + 2d_ff) + 2·B·h·S² 个元素计：层归一化的输入与输出 4 份、
/// Q/K/V 3 份、注意力输出与 W_o 输出 2 份、两个 dropout 掩码 2 份（共 11 份 B·S·d），
/// 前馈的隐层激活前后 2 份 B·S·d_ff，注意力分数与 softmax 输出 2 份 B·h·S²；
/// 另加嵌入输出与最后层归一化的 2 份 B·S·d。
pub fn training_memory(dims: &ModelDims, batch: usize, seq: usize, bytes: usize) -> MemoryEstimate {
    let p = param_count(dims);
    let (d, f, h, l) = (dims.d_model, dims.d_ff, dims.heads, dims.layers);
    let per_layer = batch * seq * (11 * d + 2 * f) + 2 * batch * h * seq * seq;
    let activations = l * per_layer + 2 * batch * seq * d;
    MemoryEstimate {
        params: p * bytes,
        grads: p * bytes,
        adam: 2 * p * bytes,
        activations: activations * bytes,
    }
}

/// 一次前向的浮点运算数（乘加计 2 次）：每层 2·B·S·(4d² + 2d·d_ff) + 4·B·S²·d（QKᵀ 与 AV）。
pub fn forward_flops(dims: &ModelDims, batch: usize, seq: usize) -> usize {
    let (d, f, l) = (dims.d_model, dims.d_ff, dims.layers);
    let linear = 2 * batch * seq * (4 * d * d + 2 * d * f);
    let attention = 2 * 2 * batch * seq * seq * d;
    l * (linear + attention)
}
// ANCHOR_END: memory

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transformer::encoder::{EncoderConfig, SeedEncoder, TinyEncoder};

    fn walk_equals_formula<
        const V: usize,
        const M: usize,
        const H: usize,
        const F: usize,
        const L: usize,
    >() {
        let dev: Cpu = Default::default();
        let model = TransformerEncoder::<V, M, H, F, L, f32, Cpu>::new(
            &dev,
            EncoderConfig {
                max_len: 8,
                ..Default::default()
            },
        );
        let dims = TransformerEncoder::<V, M, H, F, L, f32, Cpu>::DIMS;
        assert_eq!(count_params(&model), param_count(&dims), "{dims:?}");
    }

    #[test]
    fn walking_the_model_equals_the_formula_for_several_configs() {
        walk_equals_formula::<50, 16, 4, 32, 2>();
        walk_equals_formula::<7, 6, 3, 5, 1>();
        walk_equals_formula::<100, 32, 8, 128, 3>();
        walk_equals_formula::<1000, 64, 1, 64, 0>();
        assert_eq!(
            param_count(&TinyEncoder::<f32, Cpu>::DIMS),
            50 * 16 + 2 * (4 * 256 + 2 * 16 * 32 + 9 * 16 + 32) + 32
        );
    }

    #[test]
    fn seed_config_has_24_million_parameters() {
        let dims = SeedEncoder::<f32, Cpu>::DIMS;
        assert_eq!(param_count(&dims), 24_035_328);
        let dev: Cpu = Default::default();
        let model = SeedEncoder::<f32, Cpu>::new(&dev, EncoderConfig::default());
        assert_eq!(count_params(&model), 24_035_328);
        // f32：参数 96 MB，梯度 96 MB，Adam 192 MB
        let m = training_memory(&dims, 2, 50, 4);
        assert_eq!(
            (m.params, m.grads, m.adam),
            (96_141_312, 96_141_312, 192_282_624)
        );
        assert_eq!(
            m.activations,
            4 * (6 * (100 * (11 * 512 + 2 * 2048) + 2 * 2 * 8 * 2500) + 2 * 100 * 512)
        );
    }
}
