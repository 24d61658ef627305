//! 2.4 节：给第 1 部分的编码器加上 LoRA。
//!
//! 冻结的基座（第 1 部分的 [`ClassifierParams`]，原样复制）与可训练的适配器（[`LoraAdapters`]：每层被选中的线性层上的
//! A、B，以及分类头）分开存放：优化器只看到适配器，基座的参数在训练中逐位不变。适配器经第 1 部分的钩子
//! （[`AttentionHooks`]、[`FfnHooks`]）接入前向，前向代码只有一份。
//!
//! 哪些线性层加 LoRA 写在类型里（[`Targets`]）：没被选中的位置是 [`NoAdapter`]，没有任何参数。

use std::fmt::Debug;

use crate::kernels::Kernels;
use dfdx::nn::modules::{Linear, Module, ModuleVisitor, Repeated, TensorCollection, TensorOptions};
use dfdx::nn::BuildModule;
use dfdx::prelude::*;

use super::layer::{delta_weight, kaiming_uniform, LoraOptions};
use super::rank::RankBound;
use crate::basics::tensors::Real;
use crate::transformer::attention::PaddingMask;
use crate::transformer::classifier::{mean_over_real_positions, Classifier, ClassifierParams};
use crate::transformer::encoder::{EncoderConfig, EncoderLayer, InputError, Mode};
use crate::transformer::hooks::{AttentionHooks, FfnHooks, Hidden};
use crate::transformer::positional::PositionalEncoding;

// ANCHOR: adapter
/// 一个线性层位置上的适配器：要么是 LoRA 的 A、B，要么什么也没有。
pub trait Adapter<const I: usize, const O: usize, E: Dtype, D: Device<E>>:
    TensorCollection<E, D> + Clone + Debug
{
    /// 新建：A 取 U(−1/√I, 1/√I)，B = 0（所以一开始不改变基座的输出）。
    fn init(dev: &D) -> Self
    where
        E: Real;
    /// 在原线性层的输出 `out` 上加上 (α/r)·B(A·dropout(x))；没有适配器时原样返回。
    fn apply<T: Tape<E, D> + Merge<T>>(
        &self,
        x: Hidden<I, E, D, T>,
        out: Hidden<O, E, D, T>,
        opts: &LoraOptions,
        mode: Mode,
    ) -> Hidden<O, E, D, T>
    where
        D: Kernels<E>;
    /// 合并进原线性层：W ← W + (α/r)·BA；没有适配器时什么也不做。
    fn merge_into(&self, linear: &mut Linear<I, O, E, D>, opts: &LoraOptions)
    where
        E: Real;
}

/// LoRA 的 A `(R, I)` 与 B `(O, R)`。
#[derive(Clone, Debug)]
pub struct LoraPair<const I: usize, const O: usize, const R: usize, E: Dtype, D: Device<E>> {
    /// A。
    pub lora_a: Tensor<Rank2<R, I>, E, D>,
    /// B。
    pub lora_b: Tensor<Rank2<O, R>, E, D>,
}

/// 这个位置不加 LoRA：没有参数。
#[derive(Clone, Copy, Debug, Default)]
pub struct NoAdapter;

impl<const I: usize, const O: usize, const R: usize, E: Dtype, D: Device<E>> Adapter<I, O, E, D>
    for LoraPair<I, O, R, E, D>
{
    fn init(dev: &D) -> Self
    where
        E: Real,
    {
        #[allow(clippy::let_unit_value)]
        let () = RankBound::<I, O, R>::VALID;
        Self {
            lora_a: dev.sample(kaiming_uniform(I)),
            lora_b: dev.zeros(),
        }
    }
    fn apply<T: Tape<E, D> + Merge<T>>(
        &self,
        x: Hidden<I, E, D, T>,
        out: Hidden<O, E, D, T>,
        opts: &LoraOptions,
        mode: Mode,
    ) -> Hidden<O, E, D, T>
    where
        D: Kernels<E>,
    {
        // out + (α/r)·B(A·dropout(x))：交给设备的 Kernels::lora_add（默认是 dropout 再 out + low_rank，CPU 上是一个融合算子）
        let dropout = match mode {
            Mode::Train => opts.dropout,
            Mode::Eval => 0.0,
        };
        D::lora_add(
            out,
            x,
            &self.lora_a,
            &self.lora_b,
            opts.alpha / R as f64,
            dropout,
        )
    }
    fn merge_into(&self, linear: &mut Linear<I, O, E, D>, opts: &LoraOptions)
    where
        E: Real,
    {
        let delta = delta_weight(&self.lora_a, &self.lora_b, opts.alpha / R as f64);
        linear.weight = linear.weight.clone() + delta;
    }
}

impl<const I: usize, const O: usize, E: Dtype, D: Device<E>> Adapter<I, O, E, D> for NoAdapter {
    fn init(_dev: &D) -> Self
    where
        E: Real,
    {
        NoAdapter
    }
    fn apply<T: Tape<E, D> + Merge<T>>(
        &self,
        _x: Hidden<I, E, D, T>,
        out: Hidden<O, E, D, T>,
        _: &LoraOptions,
        _: Mode,
    ) -> Hidden<O, E, D, T>
    where
        D: Kernels<E>,
    {
        out
    }
    fn merge_into(&self, _: &mut Linear<I, O, E, D>, _: &LoraOptions)
    where
        E: Real,
    {
    }
}
impl<E: Dtype, D: Device<E>> TensorCollection<E, D> for NoAdapter {
    type To<E2: Dtype, D2: Device<E2>> = NoAdapter;
    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields((), |()| NoAdapter)
    }
}

/// 适配器只能由 `init` 构造（A 随机、B = 0）；`build`/`reset_params` 走到这里时停下并说明。
const ADAPTER_RESET: &str =
    "LoRA 适配器请用 LoraClassifier::from_base 构造（A 随机、B = 0），不能用 build 或 reset_params";

impl<const I: usize, const O: usize, const R: usize, E: Dtype, D: Device<E>> TensorCollection<E, D>
    for LoraPair<I, O, R, E, D>
{
    type To<E2: Dtype, D2: Device<E2>> = LoraPair<I, O, R, E2, D2>;
    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::tensor(
                    "lora_a",
                    |s| &s.lora_a,
                    |s| &mut s.lora_a,
                    TensorOptions::reset_with(|_| panic!("{ADAPTER_RESET}")),
                ),
                Self::tensor(
                    "lora_b",
                    |s| &s.lora_b,
                    |s| &mut s.lora_b,
                    TensorOptions::reset_with(|_| panic!("{ADAPTER_RESET}")),
                ),
            ),
            |(lora_a, lora_b)| LoraPair { lora_a, lora_b },
        )
    }
}
// ANCHOR_END: adapter

// ANCHOR: targets
/// 一个位置是否加 LoRA：[`On`] 或 [`Off`]。
pub trait Site: Clone + Debug {
    /// 是否加 LoRA（运行期的配置与类型核对时用）。
    const ON: bool;
    /// 这个位置上的适配器类型。
    type Adapter<const I: usize, const O: usize, const R: usize, E: Dtype, D: Device<E>>: Adapter<
        I,
        O,
        E,
        D,
    >;
}

/// 加 LoRA。
#[derive(Clone, Copy, Debug)]
pub struct On;
/// 不加。
#[derive(Clone, Copy, Debug)]
pub struct Off;

impl Site for On {
    const ON: bool = true;
    type Adapter<const I: usize, const O: usize, const R: usize, E: Dtype, D: Device<E>> =
        LoraPair<I, O, R, E, D>;
}
impl Site for Off {
    const ON: bool = false;
    type Adapter<const I: usize, const O: usize, const R: usize, E: Dtype, D: Device<E>> =
        NoAdapter;
}

/// 编码器层里六个线性层各自是否加 LoRA。
pub trait Targets: Clone + Debug {
    /// W_q。
    type Q: Site;
    /// W_k。
    type K: Site;
    /// W_v。
    type V: Site;
    /// W_o。
    type O: Site;
    /// 前馈的升维层。
    type Up: Site;
    /// 前馈的降维层。
    type Down: Site;
    /// 六个位置（W_q、W_k、W_v、W_o、升维、降维）各自是否加 LoRA。
    const SITES: [bool; 6] = [
        Self::Q::ON,
        Self::K::ON,
        Self::V::ON,
        Self::O::ON,
        Self::Up::ON,
        Self::Down::ON,
    ];
}

/// W_q、W_v（参考实现与 PEFT 的默认）。
#[derive(Clone, Copy, Debug)]
pub struct QueryValue;
/// 注意力的四个投影。
#[derive(Clone, Copy, Debug)]
pub struct Attention;
/// 全部六个线性层。
#[derive(Clone, Copy, Debug)]
pub struct AllLinear;
/// 一个也不加：只训练分类头（线性探测）。
#[derive(Clone, Copy, Debug)]
pub struct HeadOnly;

impl Targets for QueryValue {
    type Q = On;
    type K = Off;
    type V = On;
    type O = Off;
    type Up = Off;
    type Down = Off;
}
impl Targets for Attention {
    type Q = On;
    type K = On;
    type V = On;
    type O = On;
    type Up = Off;
    type Down = Off;
}
impl Targets for AllLinear {
    type Q = On;
    type K = On;
    type V = On;
    type O = On;
    type Up = On;
    type Down = On;
}
impl Targets for HeadOnly {
    type Q = Off;
    type K = Off;
    type V = Off;
    type O = Off;
    type Up = Off;
    type Down = Off;
}
// ANCHOR_END: targets

/// 一层的适配器。字段名与基座的线性层对应。
#[derive(Clone, Debug)]
pub struct LayerAdapters<
    const M: usize,
    const F: usize,
    const R: usize,
    T: Targets,
    E: Dtype,
    D: Device<E>,
> {
    /// W_q 上的。
    pub w_q: <T::Q as Site>::Adapter<M, M, R, E, D>,
    /// W_k 上的。
    pub w_k: <T::K as Site>::Adapter<M, M, R, E, D>,
    /// W_v 上的。
    pub w_v: <T::V as Site>::Adapter<M, M, R, E, D>,
    /// W_o 上的。
    pub w_o: <T::O as Site>::Adapter<M, M, R, E, D>,
    /// 前馈升维层上的。
    pub linear1: <T::Up as Site>::Adapter<M, F, R, E, D>,
    /// 前馈降维层上的。
    pub linear2: <T::Down as Site>::Adapter<F, M, R, E, D>,
}

impl<const M: usize, const F: usize, const R: usize, Tg: Targets, E: Real, D: Kernels<E>>
    LayerAdapters<M, F, R, Tg, E, D>
{
    /// 新建一层的适配器：每个被选中的位置 A 随机、B = 0。
    pub fn init(dev: &D) -> Self {
        Self {
            w_q: Adapter::init(dev),
            w_k: Adapter::init(dev),
            w_v: Adapter::init(dev),
            w_o: Adapter::init(dev),
            linear1: Adapter::init(dev),
            linear2: Adapter::init(dev),
        }
    }

    /// 把这一层的适配器合并进编码器层的六个线性层（W ← W + (α/r)·BA）。
    pub fn merge_into<const H: usize>(
        &self,
        layer: &mut EncoderLayer<M, H, F, E, D>,
        opts: &LoraOptions,
    ) {
        self.w_q.merge_into(&mut layer.attention.w_q, opts);
        self.w_k.merge_into(&mut layer.attention.w_k, opts);
        self.w_v.merge_into(&mut layer.attention.w_v, opts);
        self.w_o.merge_into(&mut layer.attention.w_o, opts);
        self.linear1
            .merge_into(&mut layer.feed_forward.linear1, opts);
        self.linear2
            .merge_into(&mut layer.feed_forward.linear2, opts);
    }
}

/// 全部可训练的参数：每层的适配器 + 分类头（对应 PEFT 的 adapter 与 `modules_to_save`）。
#[derive(Clone, Debug)]
pub struct LoraAdapters<
    const M: usize,
    const F: usize,
    const L: usize,
    const C: usize,
    const R: usize,
    T: Targets,
    E: Dtype,
    D: Device<E>,
> {
    /// 每层的适配器。
    pub layers: Repeated<LayerAdapters<M, F, R, T, E, D>, L>,
    /// 分类头（整个训练）。
    pub head: Linear<M, C, E, D>,
}

/// 一层的钩子：把这一层的适配器接进第 1 部分的前向。
pub struct AdapterHooks<
    'a,
    const M: usize,
    const F: usize,
    const R: usize,
    T: Targets,
    E: Dtype,
    D: Device<E>,
> {
    /// 这一层的适配器。
    pub layer: &'a LayerAdapters<M, F, R, T, E, D>,
    /// α 与 dropout。
    pub opts: LoraOptions,
    /// 训练还是推理（决定 LoRA 分支上的 dropout）。
    pub mode: Mode,
}

impl<const M: usize, const F: usize, const R: usize, Tg: Targets, E: Real, D: Kernels<E>>
    AttentionHooks<M, E, D> for AdapterHooks<'_, M, F, R, Tg, E, D>
{
    /// 有适配器的模型里，原来的线性层总是冻结的。
    fn base_frozen(&self) -> bool {
        true
    }
    fn query<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        x: Hidden<M, E, D, T>,
        out: Hidden<M, E, D, T>,
    ) -> Hidden<M, E, D, T> {
        self.layer.w_q.apply(x, out, &self.opts, self.mode)
    }
    fn key<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        x: Hidden<M, E, D, T>,
        out: Hidden<M, E, D, T>,
    ) -> Hidden<M, E, D, T> {
        self.layer.w_k.apply(x, out, &self.opts, self.mode)
    }
    fn value<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        x: Hidden<M, E, D, T>,
        out: Hidden<M, E, D, T>,
    ) -> Hidden<M, E, D, T> {
        self.layer.w_v.apply(x, out, &self.opts, self.mode)
    }
    fn output<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        x: Hidden<M, E, D, T>,
        out: Hidden<M, E, D, T>,
    ) -> Hidden<M, E, D, T> {
        self.layer.w_o.apply(x, out, &self.opts, self.mode)
    }
}

impl<const M: usize, const F: usize, const R: usize, Tg: Targets, E: Real, D: Kernels<E>>
    FfnHooks<M, F, E, D> for AdapterHooks<'_, M, F, R, Tg, E, D>
{
    fn base_frozen(&self) -> bool {
        true
    }
    fn up<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        x: Hidden<M, E, D, T>,
        out: Hidden<F, E, D, T>,
    ) -> Hidden<F, E, D, T> {
        self.layer.linear1.apply(x, out, &self.opts, self.mode)
    }
    fn down<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        x: Hidden<F, E, D, T>,
        out: Hidden<M, E, D, T>,
    ) -> Hidden<M, E, D, T> {
        self.layer.linear2.apply(x, out, &self.opts, self.mode)
    }
}

/// 分类头的来源。
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// 复制基座的分类头（同一任务上继续适配）。
    CopyBase,
    /// 新的随机分类头（换了任务）。
    Fresh,
}

// ANCHOR: classifier
/// 加了 LoRA 的分类模型：冻结的基座 + 可训练的适配器。
#[derive(Clone, Debug)]
pub struct LoraClassifier<
    const V: usize,
    const M: usize,
    const H: usize,
    const F: usize,
    const L: usize,
    const C: usize,
    const R: usize,
    T: Targets,
    E: Dtype,
    D: Device<E>,
> {
    /// 冻结的基座（复制自训练好的模型；优化器看不到它）。
    pub base: ClassifierParams<V, M, H, F, L, C, E, D>,
    /// 可训练的适配器与分类头。
    pub adapters: LoraAdapters<M, F, L, C, R, T, E, D>,
    /// LoRA 的 α 与 dropout。
    pub opts: LoraOptions,
    /// 编码器的超参数（与基座相同）。
    pub config: EncoderConfig,
    /// 位置编码。
    pub positional: PositionalEncoding<M, E, D>,
}

impl<
        const V: usize,
        const M: usize,
        const H: usize,
        const F: usize,
        const L: usize,
        const C: usize,
        const R: usize,
        Tg,
        E,
        D,
    > LoraClassifier<V, M, H, F, L, C, R, Tg, E, D>
where
    Tg: Targets,
    E: Real,
    D: Kernels<E>,
{
    /// 从训练好的模型构造：**复制**它的全部参数作为冻结的基座，适配器 B = 0。
    pub fn from_base(
        base: &Classifier<V, M, H, F, L, C, E, D>,
        opts: LoraOptions,
        head: Head,
    ) -> Self {
        let dev = base.params.head.weight.device().clone();
        let layers = (0..L).map(|_| LayerAdapters::init(&dev)).collect();
        let head = match head {
            Head::CopyBase => base.params.head.clone(),
            Head::Fresh => Linear::build(&dev),
        };
        Self {
            base: base.params.clone(),
            adapters: LoraAdapters {
                layers: Repeated { modules: layers },
                head,
            },
            opts,
            config: base.config,
            positional: base.positional.clone(),
        }
    }

    /// # 形状
    /// - `tokens`: `(batch, seq)`，`mask` 与之相同
    /// - 返回：logits `(batch, Const<C>)`
    pub fn forward<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        tokens: Tensor<(usize, usize), usize, D, T>,
        mask: &PaddingMask<E, D>,
        mode: Mode,
    ) -> Result<Tensor<(usize, Const<C>), E, D, T>, InputError> {
        let hooks = |i: usize| AdapterHooks {
            layer: &self.adapters.layers.modules[i],
            opts: self.opts,
            mode,
        };
        let out = self.base.encoder.forward_with(
            &self.positional,
            &self.config,
            tokens,
            Some(mask),
            mode,
            hooks,
        )?;
        Ok(self
            .adapters
            .head
            .forward(mean_over_real_positions(out.hidden, mask)))
    }
}
// ANCHOR_END: classifier

impl<const M: usize, const F: usize, const R: usize, Tg: Targets, E: Dtype, D: Kernels<E>>
    TensorCollection<E, D> for LayerAdapters<M, F, R, Tg, E, D>
{
    // 字段的类型是投影 `<Tg::Q as Site>::Adapter<…>`，编译器无法证明它的 `To<E2, D2>` 就是同一个投影在 E2、D2 上的版本，
    // 所以适配器不支持 dfdx 的“重建”类操作（to_device、to_dtype、build）：在目标设备上用 `from_base` 直接构造。
    // 优化器、梯度、参数计数、检查点读写都不需要重建，不受影响。
    type To<E2: Dtype, D2: Device<E2>> = ();
    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::module("w_q", |s| &s.w_q, |s| &mut s.w_q),
                Self::module("w_k", |s| &s.w_k, |s| &mut s.w_k),
                Self::module("w_v", |s| &s.w_v, |s| &mut s.w_v),
                Self::module("w_o", |s| &s.w_o, |s| &mut s.w_o),
                Self::module("linear1", |s| &s.linear1, |s| &mut s.linear1),
                Self::module("linear2", |s| &s.linear2, |s| &mut s.linear2),
            ),
            |_| (),
        )
    }
}

impl<
        const M: usize,
        const F: usize,
        const L: usize,
        const C: usize,
        const R: usize,
        Tg: Targets,
        E: Real,
        D: Kernels<E>,
    > TensorCollection<E, D> for LoraAdapters<M, F, L, C, R, Tg, E, D>
{
    // 同上：不支持重建。
    type To<E2: Dtype, D2: Device<E2>> = ();
    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::module("layers", |s| &s.layers, |s| &mut s.layers),
                Self::module("head", |s| &s.head, |s| &mut s.head),
            ),
            |_| (),
        )
    }
}

impl<
        const V: usize,
        const M: usize,
        const H: usize,
        const F: usize,
        const L: usize,
        const C: usize,
        const R: usize,
        Tg,
        E,
        D,
    > crate::train::SequenceClassifier<E, D> for LoraClassifier<V, M, H, F, L, C, R, Tg, E, D>
where
    Tg: Targets,
    E: Real,
    D: Kernels<E>,
{
    type Params = LoraAdapters<M, F, L, C, R, Tg, E, D>;
    fn params(&self) -> &Self::Params {
        &self.adapters
    }
    fn params_mut(&mut self) -> &mut Self::Params {
        &mut self.adapters
    }
    fn num_labels(&self) -> usize {
        C
    }
    fn logits<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        tokens: Tensor<(usize, usize), usize, D, T>,
        _token_types: Option<Tensor<(usize, usize), usize, D>>,
        mask: &PaddingMask<E, D>,
        mode: Mode,
    ) -> Result<Tensor<(usize, usize), E, D, T>, InputError> {
        Ok(crate::train::to_runtime_labels(
            self.forward(tokens, mask, mode)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::batch::make_batch;
    use crate::train::{train_classifier, EncodedData, TrainConfig};
    use dfdx::nn::NumParams;

    type Base = Classifier<20, 16, 4, 32, 2, 2, f32, Cpu>;

    fn base(dev: &Cpu) -> Base {
        Base::new(
            dev,
            EncoderConfig {
                dropout: 0.0,
                max_len: 16,
                ..Default::default()
            },
        )
    }

    const OPTS: LoraOptions = LoraOptions {
        alpha: 8.0,
        dropout: 0.0,
    };

    #[test]
    fn starts_exactly_equal_to_the_base_model() {
        let dev = Cpu::seed_from_u64(0);
        let base = base(&dev);
        let lora = LoraClassifier::<20, 16, 4, 32, 2, 2, 4, AllLinear, f32, Cpu>::from_base(
            &base,
            OPTS,
            Head::CopyBase,
        );
        let batch = make_batch::<f32, Cpu>(&dev, &[(&[1, 2, 3, 4], 1), (&[5, 6], 0)]);
        let ours = lora
            .forward(batch.tokens.clone(), &batch.mask, Mode::Eval)
            .unwrap()
            .as_vec();
        let reference = base
            .forward(batch.tokens, &batch.mask, Mode::Eval)
            .unwrap()
            .0
            .as_vec();
        assert_eq!(ours, reference, "B = 0 时 LoRA 模型必须与基座逐位相同");
    }

    #[test]
    fn trainable_parameters_follow_the_targets() {
        let dev = Cpu::seed_from_u64(0);
        let base = base(&dev);
        let head = 16 * 2 + 2;
        let qv = LoraClassifier::<20, 16, 4, 32, 2, 2, 4, QueryValue, f32, Cpu>::from_base(
            &base,
            OPTS,
            Head::Fresh,
        );
        assert_eq!(
            qv.adapters.num_trainable_params(),
            2 * 2 * 4 * (16 + 16) + head
        );
        let all = LoraClassifier::<20, 16, 4, 32, 2, 2, 4, AllLinear, f32, Cpu>::from_base(
            &base,
            OPTS,
            Head::Fresh,
        );
        assert_eq!(
            all.adapters.num_trainable_params(),
            2 * (4 * 4 * 32 + 2 * 4 * (16 + 32)) + head
        );
        let probe = LoraClassifier::<20, 16, 4, 32, 2, 2, 4, HeadOnly, f32, Cpu>::from_base(
            &base,
            OPTS,
            Head::Fresh,
        );
        assert_eq!(probe.adapters.num_trainable_params(), head);
    }

    #[test]
    fn training_changes_only_the_adapters() {
        let dev = Cpu::seed_from_u64(1);
        let base = base(&dev);
        let mut lora = LoraClassifier::<20, 16, 4, 32, 2, 2, 4, QueryValue, f32, Cpu>::from_base(
            &base,
            OPTS,
            Head::Fresh,
        );
        let frozen_q = lora.base.encoder.layers.modules[0]
            .attention
            .w_q
            .weight
            .as_vec();
        let frozen_ln = lora.base.encoder.norm.weight.as_vec();
        let b_before = lora.adapters.layers.modules[1].w_v.lora_b.as_vec();
        // 玩具任务：含记号 7 的序列为正类
        let data: Vec<(Vec<usize>, usize)> = (0..64)
            .map(|i| (vec![5 + i % 3, if i % 2 == 1 { 7 } else { 8 }, 6], i % 2))
            .collect();
        let data = EncodedData {
            train: data.clone(),
            valid: data.clone(),
            test: data,
            pair_sep: None,
            labels: Vec::new(),
        };
        let cfg = TrainConfig {
            epochs: 8,
            max_steps: None,
            batch_size: 16,
            lr: 1e-2,
            seed: 0,
            log_every: 4,
        };
        let report = train_classifier(&mut lora, &dev, &data, &cfg, &mut |_| {}).unwrap();
        assert_eq!(
            lora.base.encoder.layers.modules[0]
                .attention
                .w_q
                .weight
                .as_vec(),
            frozen_q,
            "基座必须逐位不变"
        );
        assert_eq!(lora.base.encoder.norm.weight.as_vec(), frozen_ln);
        assert_ne!(
            lora.adapters.layers.modules[1].w_v.lora_b.as_vec(),
            b_before,
            "B 应当被更新"
        );
        assert!(report.test.accuracy > 0.9, "{:?}", report.test);
    }
}
