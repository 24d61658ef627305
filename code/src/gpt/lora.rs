//! 5.5 GPT 上的 LoRA：第 2 部分的适配器（[`LayerAdapters`]）与钩子（[`AdapterHooks`]）原样接到解码器层上。
//!
//! 解码器层与编码器层的参数是同一个类型，钩子的位置也相同，所以这里没有新的 LoRA 代码：
//! 只有“把适配器交给 GPT 的前向”和“合并回基座”两件事。

use dfdx::nn::modules::{ModuleVisitor, Repeated, TensorCollection};
use dfdx::prelude::*;

use super::model::{Gpt, GptConfig, GptError, KvCache};
use crate::basics::tensors::Real;
use crate::kernels::Kernels;
use crate::lora::encoder::{AdapterHooks, LayerAdapters, Targets};
use crate::lora::layer::LoraOptions;
use crate::transformer::encoder::Mode;

// ANCHOR: gpt_lora
/// GPT 每层的 LoRA 适配器（哪些线性层加、秩多少都在类型里：`Tg`、`R`）。基座不在这里：它冻结，由调用者借给前向。
#[derive(Clone, Debug)]
pub struct GptLora<
    const M: usize,
    const F: usize,
    const L: usize,
    const R: usize,
    Tg: Targets,
    E: Dtype,
    D: Device<E>,
> {
    /// 每层的适配器（A 随机、B = 0）。
    pub layers: Repeated<LayerAdapters<M, F, R, Tg, E, D>, L>,
    /// α 与 dropout。
    pub opts: LoraOptions,
}

impl<
        const M: usize,
        const F: usize,
        const L: usize,
        const R: usize,
        Tg: Targets,
        E: Real,
        D: Kernels<E>,
    > GptLora<M, F, L, R, Tg, E, D>
{
    /// 新建：每个被选中的线性层 A 随机、B = 0，所以一开始与基座的输出逐位相同。
    pub fn init(dev: &D, opts: LoraOptions) -> Self {
        Self {
            layers: Repeated {
                modules: (0..L).map(|_| LayerAdapters::init(dev)).collect(),
            },
            opts,
        }
    }

    /// 基座 + 适配器的前向：与 [`Gpt::forward_with`] 相同，每层的钩子换成这一层的适配器。
    pub fn forward<const V: usize, const C: usize, const H: usize, T>(
        &self,
        base: &Gpt<V, C, M, H, F, L, E, D>,
        tokens: Tensor<(usize, usize), usize, D, T>,
        cache: Option<&mut KvCache<M, E, D>>,
        cfg: &GptConfig,
        mode: Mode,
    ) -> Result<Tensor<(usize, usize, Const<V>), E, D, T>, GptError>
    where
        T: Tape<E, D> + Merge<T> + Merge<NoneTape>,
    {
        base.forward_with(tokens, cache, cfg, mode, |i| AdapterHooks {
            layer: &self.layers.modules[i],
            opts: self.opts,
            mode,
        })
    }

    /// 合并进基座的副本：W ← W + (α/r)·BA。返回的模型是一个普通的 GPT（推理时没有额外开销）。
    pub fn merged<const V: usize, const C: usize, const H: usize>(
        &self,
        base: &Gpt<V, C, M, H, F, L, E, D>,
    ) -> Gpt<V, C, M, H, F, L, E, D> {
        let mut merged = base.clone();
        for (adapters, layer) in self.layers.modules.iter().zip(&mut merged.layers.modules) {
            adapters.merge_into(layer, &self.opts);
        }
        merged
    }
}
// ANCHOR_END: gpt_lora

impl<
        const M: usize,
        const F: usize,
        const L: usize,
        const R: usize,
        Tg: Targets,
        E: Real,
        D: Kernels<E>,
    > TensorCollection<E, D> for GptLora<M, F, L, R, Tg, E, D>
{
    // 与第 2 部分的适配器相同：不支持重建（to_device 等），用 init 在目标设备上构造。
    type To<E2: Dtype, D2: Device<E2>> = ();
    fn iter_tensors<W: ModuleVisitor<Self, E, D>>(
        visitor: &mut W,
    ) -> Result<Option<Self::To<W::E2, W::D2>>, W::Err> {
        visitor.visit_fields(
            Self::module("layers", |s| &s.layers, |s| &mut s.layers),
            |_| (),
        )
    }
}
