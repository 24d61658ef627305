//! 3.4 节：PEFT 的适配器在本书里的样子——每个被选中的线性层上一对 A、B，秩与缩放系数各自在运行期决定。
//!
//! 第 2 部分把秩 R 与目标层写在类型里（[`crate::lora::encoder`]），编译器替我们检查形状；可 PEFT 的一个
//! `adapter_config.json` 可以给每个模块不同的秩（`rank_pattern`）、不同的 α（`alpha_pattern`）、只改部分层
//! （`layers_to_transform`），还能给池化层加 LoRA——这些都只在读到文件时才知道。所以这里 A、B 的秩是运行期的
//! `usize`，而 A 的输入宽度、B 的输出宽度仍是类型里的常量：形状错误的一半仍由编译器挡住，另一半（秩）在读文件时
//! 核对（[`super::config::AdapterPlan`]）。

use std::sync::Arc;

use crate::kernels::{Kernels, LazyWeight};
use dfdx::nn::modules::{Linear, ModuleVisitor, TensorCollection, TensorOptions};
use dfdx::prelude::*;

use super::config::{InitLoraWeights, SiteSpec};
use super::{adalora, dora, init};
use crate::basics::tensors::Real;
use crate::bert::model::PoolerHook;
use crate::bert::runtime::{Head, LayerStack, SavedLinear};
use crate::lora::layer::{delta_weight, kaiming_uniform};
use crate::transformer::encoder::{EncoderLayer, Mode};
use crate::transformer::hooks::{AttentionHooks, FfnHooks, Hidden, Proj};

// ANCHOR: site
/// 一个线性层 `I → O` 上的 LoRA：A `(r, I)`、B `(O, r)`，秩 r 与缩放系数 s 在运行期决定。
#[derive(Clone, Debug)]
pub struct LoraWeights<const I: usize, const O: usize, E: Dtype, D: Device<E>> {
    /// A `(r, Const<I>)`。
    pub lora_a: Tensor<(usize, Const<I>), E, D>,
    /// B `(Const<O>, r)`。
    pub lora_b: Tensor<(Const<O>, usize), E, D>,
    /// 缩放系数 s = α/r（rsLoRA 时 α/√r）。
    pub scaling: f64,
    /// DoRA 的长度向量 m `(Const<O>,)`（`use_dora` 时才有，4.2 节）。
    pub magnitude: Option<Tensor<(Const<O>,), E, D>>,
    /// AdaLoRA 的奇异值 E `(r, Const<1>)`（`peft_type` 为 `"ADALORA"` 时才有，4.4 节）：增量是 s·B·diag(E)·A，
    /// 剪掉第 i 个奇异值就是把 E 的第 i 个置 0。形状与 PEFT 存的 `lora_E` 相同。
    pub lora_e: Option<Tensor<(usize, Const<1>), E, D>>,
}

/// 一个线性层位置：选中时有 LoRA，否则是 `None`（没有任何参数）。
#[derive(Clone, Debug)]
pub struct SiteLora<const I: usize, const O: usize, E: Dtype, D: Device<E>> {
    /// 这个位置上的 LoRA。
    pub lora: Option<LoraWeights<I, O, E, D>>,
}
// ANCHOR_END: site

impl<const I: usize, const O: usize, E: Real, D: Kernels<E>> SiteLora<I, O, E, D> {
    /// 按计划新建（PEFT 的初始化，`init_lora_weights` 见 [`InitLoraWeights`]）。默认 A 取 U(−1/√I, 1/√I)
    /// （即 PyTorch 对 `nn.Linear` 的 kaiming_uniform(a=√5)），B = 0，所以一开始不改变基座的输出；PiSSA、OLoRA
    /// 从原线性层 `base` 的权重算出 A、B（基座随后要减去 s·BA，见 [`PeftLayer::subtract_initial`]）。
    /// DoRA 时长度向量 m 取 ‖W + s·BA‖ 每行的范数（B = 0 时就是 ‖W‖），同样不改变输出。没有选中时什么也不建。
    pub fn init(dev: &D, spec: Option<SiteSpec>, base: &Linear<I, O, E, D>) -> Self {
        let lora = spec.map(|s| {
            let (lora_a, lora_b) = match s.init {
                // AdaLoRA（4.4 节）：A、B 取 N(0, 0.02²)，E = 0（一开始同样不改变输出）
                _ if s.svd => (
                    normal(dev, (s.r, Const::<I>), 0.02),
                    normal(dev, (Const::<O>, s.r), 0.02),
                ),
                InitLoraWeights::Kaiming => (
                    dev.sample_like(&(s.r, Const), kaiming_uniform(I)),
                    dev.zeros_like(&(Const, s.r)),
                ),
                InitLoraWeights::Uniform => (
                    dev.sample_like(&(s.r, Const), kaiming_uniform(I)),
                    dev.sample_like(&(Const, s.r), kaiming_uniform(s.r)),
                ),
                InitLoraWeights::Gaussian => (
                    normal(dev, (s.r, Const::<I>), 1.0 / s.r as f64),
                    dev.zeros_like(&(Const, s.r)),
                ),
                InitLoraWeights::Pissa | InitLoraWeights::Olora => {
                    let (a, b) =
                        init::from_weight(&base.weight.as_vec(), O, I, s.r, s.scaling, s.init);
                    (
                        dev.tensor_from_vec(a, (s.r, Const)),
                        dev.tensor_from_vec(b, (Const, s.r)),
                    )
                }
            };
            let magnitude = s
                .dora
                .then(|| dora::weight_norm(&base.weight, &lora_a, &lora_b, s.scaling));
            LoraWeights {
                lora_a,
                lora_b,
                scaling: s.scaling,
                magnitude,
                lora_e: s.svd.then(|| dev.zeros_like(&(s.r, Const))),
            }
        });
        Self { lora }
    }

    /// 秩（没有 LoRA 时为 `None`）。
    pub fn rank(&self) -> Option<usize> {
        self.lora.as_ref().map(|l| l.lora_a.shape().0)
    }

    // ANCHOR: apply
    /// 在原线性层 `base` 的输出 `out` 上加 s·B(A·dropout(x))；DoRA 时按 [`dora::forward`] 再乘上长度；
    /// 没有 LoRA 时原样返回 `out`。
    ///
    /// # 形状
    /// - `x`: `(batch, seq, Const<I>)`，`out` 与返回：`(batch, seq, Const<O>)`
    pub fn apply<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        x: Hidden<I, E, D, T>,
        out: Hidden<O, E, D, T>,
        base: &Linear<I, O, E, D>,
        dropout: f64,
        mode: Mode,
    ) -> Hidden<O, E, D, T> {
        let Some(l) = &self.lora else { return out };
        if l.lora_a.shape().0 == 0 {
            return out; // 读进来的 AdaLoRA 适配器里全被剪掉的模块：秩 0，没有分支
        }
        // 分支输入上的 dropout 只在训练时
        let p = if matches!(mode, Mode::Train) {
            dropout
        } else {
            0.0
        };
        let drop = |x: Hidden<I, E, D, T>| if p > 0.0 { D::dropout(x, p) } else { x };
        if let Some(e) = &l.lora_e {
            return adalora::forward(out, drop(x), &l.lora_a, e, &l.lora_b, l.scaling);
        }
        match &l.magnitude {
            // 普通的 LoRA：dropout 交给融合算子（CPU 上不为反向另存一份丢弃后的输入）
            None => D::lora_add(out, x, &l.lora_a, &l.lora_b, l.scaling, p),
            Some(m) => dora::forward(
                out,
                drop(x),
                p > 0.0,
                &base.weight,
                &base.bias,
                &l.lora_a,
                &l.lora_b,
                m,
                l.scaling,
            ),
        }
    }

    // ANCHOR_END: apply

    /// PiSSA、OLoRA（4.3 节）：原线性层减去刚初始化的 s·BA，换成剩余部分 W_res = W − s·B₀A₀，
    /// 于是 W_res + s·B₀A₀ = W，加上适配器后输出不变。没有 LoRA 时什么也不做。
    pub fn subtract_from(&self, linear: &mut Linear<I, O, E, D>) {
        let Some(l) = &self.lora else { return };
        linear.weight = linear.weight.clone() - delta_weight(&l.lora_a, &l.lora_b, l.scaling);
    }

    /// 合并进原线性层：W ← W + s·BA（DoRA：W ← (m/‖W + s·BA‖) ⊙ (W + s·BA)；AdaLoRA：W ← W + s·B·diag(E)·A）；
    /// 没有 LoRA 时什么也不做。
    pub fn merge_into(&self, linear: &mut Linear<I, O, E, D>) {
        let Some(l) = self.lora.as_ref().filter(|l| l.lora_a.shape().0 > 0) else {
            return;
        };
        linear.weight = match &l.magnitude {
            None => {
                let a = match &l.lora_e {
                    Some(e) => adalora::scaled_rows(&l.lora_a, e), // AdaLoRA：diag(E)·A
                    None => l.lora_a.clone(),
                };
                linear.weight.clone() + delta_weight(&a, &l.lora_b, l.scaling)
            }
            Some(m) => dora::merged_weight(&linear.weight, &l.lora_a, &l.lora_b, m, l.scaling),
        };
    }
}

/// N(0, std²) 的随机张量：泛型 E 上没有 dfdx 的正态采样，用 Box–Muller 由两个 U(0, 1) 得到标准正态。
pub(crate) fn normal<S: Shape, E: Real, D: Kernels<E>>(
    dev: &D,
    shape: S,
    std: f64,
) -> Tensor<S, E, D> {
    let unit = || dev.sample_like(&shape, rand_distr::Uniform::new(E::zero(), E::one()));
    let radius = ((unit().negate() + E::one()).ln() * E::from_f64(-2.0).unwrap()).sqrt();
    let angle = (unit() * E::from_f64(std::f64::consts::TAU).unwrap()).cos();
    radius * angle * E::from_f64(std).unwrap()
}

/// 适配器只能由 `init` 构造（按 `init_lora_weights` 初始化）；dfdx 的 `reset_params` 走到这里时停下并说明。
fn no_reset<S: Shape, E: Dtype, D: Device<E>>(_: &mut Tensor<S, E, D>) -> Result<(), D::Err> {
    panic!("LoRA 适配器请用 PeftBert::get_peft_model 构造（按 init_lora_weights 初始化），不能用 reset_params")
}

impl<const I: usize, const O: usize, E: Dtype, D: Device<E>> TensorCollection<E, D>
    for SiteLora<I, O, E, D>
{
    // 秩与缩放系数不是张量，dfdx 的“重建”类操作（to_device、to_dtype、build）无从得知：不支持，
    // 在目标设备上用 get_peft_model / from_pretrained 直接构造。优化器、梯度、参数计数、检查点读写不受影响。
    type To<E2: Dtype, D2: Device<E2>> = ();
    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(visitor: &mut V) -> Result<Option<()>, V::Err> {
        // 选中了没有、有没有 DoRA 的长度向量，只有看到模块本身才知道（dfdx 补丁的 peek）
        let (selected, dora, svd) = visitor
            .peek(&mut |s: &Self| {
                let l = s.lora.as_ref();
                (
                    l.is_some(),
                    l.is_some_and(|l| l.magnitude.is_some()),
                    l.is_some_and(|l| l.lora_e.is_some()),
                )
            })
            .unwrap_or((false, false, false));
        if !selected {
            return visitor.visit_fields((), |()| ());
        }
        let a = Self::tensor(
            "lora_a",
            |s| &s.lora.as_ref().expect("已核对选中").lora_a,
            |s| &mut s.lora.as_mut().expect("已核对选中").lora_a,
            TensorOptions::runtime((0, Const), no_reset),
        );
        let b = Self::tensor(
            "lora_b",
            |s| &s.lora.as_ref().expect("已核对选中").lora_b,
            |s| &mut s.lora.as_mut().expect("已核对选中").lora_b,
            TensorOptions::runtime((Const, 0), no_reset),
        );
        if svd {
            let e = Self::tensor(
                "lora_e",
                |s| lora_e(s).expect("已核对 AdaLoRA"),
                |s| lora_e_mut(s).expect("已核对 AdaLoRA"),
                TensorOptions::runtime((0, Const), no_reset),
            );
            return visitor.visit_fields((a, b, e), |_| ());
        }
        if !dora {
            return visitor.visit_fields((a, b), |_| ());
        }
        let m = Self::tensor(
            "magnitude",
            |s| magnitude(s).expect("已核对 DoRA"),
            |s| magnitude_mut(s).expect("已核对 DoRA"),
            TensorOptions::reset_with(no_reset),
        );
        visitor.visit_fields((a, b, m), |_| ())
    }
}

fn lora_e<const I: usize, const O: usize, E: Dtype, D: Device<E>>(
    s: &SiteLora<I, O, E, D>,
) -> Option<&Tensor<(usize, Const<1>), E, D>> {
    s.lora.as_ref()?.lora_e.as_ref()
}

fn lora_e_mut<const I: usize, const O: usize, E: Dtype, D: Device<E>>(
    s: &mut SiteLora<I, O, E, D>,
) -> Option<&mut Tensor<(usize, Const<1>), E, D>> {
    s.lora.as_mut()?.lora_e.as_mut()
}

fn magnitude<const I: usize, const O: usize, E: Dtype, D: Device<E>>(
    s: &SiteLora<I, O, E, D>,
) -> Option<&Tensor<(Const<O>,), E, D>> {
    s.lora.as_ref()?.magnitude.as_ref()
}

fn magnitude_mut<const I: usize, const O: usize, E: Dtype, D: Device<E>>(
    s: &mut SiteLora<I, O, E, D>,
) -> Option<&mut Tensor<(Const<O>,), E, D>> {
    s.lora.as_mut()?.magnitude.as_mut()
}

// ANCHOR: svd_site
/// AdaLoRA 的一个模块（4.4 节），擦去了输入、输出宽度的类型：秩分配要把所有模块的分数放在一起排序。
pub trait SvdSite<E: Dtype, D: Device<E>> {
    /// A `(r, I)`、E `(r,)`、B `(O, r)` 的数据；`grads` 给出时取它们的梯度。
    fn parts(&self, grads: Option<&Gradients<E, D>>) -> SvdParts<E>;
    /// 正交正则的两项 ‖AAᵀ − I‖_F、‖BᵀB − I‖_F（带 tape：梯度经它们流回 A、B）。
    fn orth_terms(&self) -> [Tensor<(), E, D, OwnedTape<E, D>>; 2];
    /// 把 `keep[i]` 为假的奇异值置 0（训练中剪枝：矩阵的形状不变）。
    fn mask(&mut self, keep: &[bool]);
    /// 只留下 `keep[i]` 为真的行、列（存盘前按 rank_pattern 裁小：秩变成留下的个数）。
    fn crop(&mut self, keep: &[bool]);
}

/// 一个 AdaLoRA 模块的 A、E、B（按行存放）与它的秩、输入、输出宽度。
#[derive(Clone, Debug, PartialEq)]
pub struct SvdParts<E> {
    /// 秩 r。
    pub r: usize,
    /// 输入宽度 I。
    pub fan_in: usize,
    /// 输出宽度 O。
    pub fan_out: usize,
    /// A `(r, I)`。
    pub a: Vec<E>,
    /// E `(r,)`。
    pub e: Vec<E>,
    /// B `(O, r)`。
    pub b: Vec<E>,
}

impl<const I: usize, const O: usize, E: Real, D: Kernels<E>> SvdSite<E, D>
    for LoraWeights<I, O, E, D>
{
    fn parts(&self, grads: Option<&Gradients<E, D>>) -> SvdParts<E> {
        let e = self.lora_e.as_ref().expect("只对 AdaLoRA 的模块调用");
        // 秩为 0 的模块（全被剪掉、存盘时裁空的）：dfdx 的 as_vec 对没有元素的张量会越界
        fn data<S: Shape, E: Dtype, D: Device<E>>(t: &Tensor<S, E, D>) -> Vec<E> {
            match t.shape().num_elements() {
                0 => Vec::new(),
                _ => t.as_vec(),
            }
        }
        let (a, e, b) = match grads {
            None => (data(&self.lora_a), data(e), data(&self.lora_b)),
            Some(g) => (
                data(&g.get(&self.lora_a)),
                data(&g.get(e)),
                data(&g.get(&self.lora_b)),
            ),
        };
        SvdParts {
            r: self.lora_a.shape().0,
            fan_in: I,
            fan_out: O,
            a,
            e,
            b,
        }
    }

    fn orth_terms(&self) -> [Tensor<(), E, D, OwnedTape<E, D>>; 2] {
        [adalora::orth_a(&self.lora_a), adalora::orth_b(&self.lora_b)]
    }

    fn mask(&mut self, keep: &[bool]) {
        let e = self.lora_e.as_mut().expect("只对 AdaLoRA 的模块调用");
        let mut v = e.as_vec();
        for (x, k) in v.iter_mut().zip(keep) {
            if !*k {
                *x = E::zero();
            }
        }
        e.copy_from(&v);
    }

    fn crop(&mut self, keep: &[bool]) {
        let parts = self.parts(None);
        let rows: Vec<usize> = (0..parts.r).filter(|&i| keep[i]).collect();
        let r = rows.len();
        let a: Vec<E> = (rows.iter())
            .flat_map(|&i| parts.a[i * I..(i + 1) * I].to_vec())
            .collect();
        let e: Vec<E> = rows.iter().map(|&i| parts.e[i]).collect();
        let b: Vec<E> = (0..O)
            .flat_map(|o| rows.iter().map(move |&i| (o, i)))
            .map(|(o, i)| parts.b[o * parts.r + i])
            .collect();
        let dev = self.lora_a.device().clone();
        self.lora_a = dev.tensor_from_vec(a, (r, Const));
        self.lora_b = dev.tensor_from_vec(b, (Const, r));
        self.lora_e = Some(dev.tensor_from_vec(e, (r, Const)));
    }
}
// ANCHOR_END: svd_site

/// 一层编码器的适配器：六个线性层各一个位置，字段名与基座的线性层相同。
#[derive(Clone, Debug)]
pub struct PeftLayer<const M: usize, const F: usize, E: Dtype, D: Device<E>> {
    /// `attention.self.query` 上的。
    pub w_q: SiteLora<M, M, E, D>,
    /// `attention.self.key` 上的。
    pub w_k: SiteLora<M, M, E, D>,
    /// `attention.self.value` 上的。
    pub w_v: SiteLora<M, M, E, D>,
    /// `attention.output.dense` 上的。
    pub w_o: SiteLora<M, M, E, D>,
    /// `intermediate.dense` 上的。
    pub linear1: SiteLora<M, F, E, D>,
    /// `output.dense` 上的。
    pub linear2: SiteLora<F, M, E, D>,
}

impl<const M: usize, const F: usize, E: Real, D: Kernels<E>> PeftLayer<M, F, E, D> {
    /// 按这一层六个位置的计划新建（`base` 是基座里对应的编码器层：DoRA 的长度向量取自它）。
    pub fn init<const H: usize>(
        dev: &D,
        specs: &[Option<SiteSpec>; 6],
        base: &EncoderLayer<M, H, F, E, D>,
    ) -> Self {
        let (att, ffn) = (&base.attention, &base.feed_forward);
        Self {
            w_q: SiteLora::init(dev, specs[0], &att.w_q),
            w_k: SiteLora::init(dev, specs[1], &att.w_k),
            w_v: SiteLora::init(dev, specs[2], &att.w_v),
            w_o: SiteLora::init(dev, specs[3], &att.w_o),
            linear1: SiteLora::init(dev, specs[4], &ffn.linear1),
            linear2: SiteLora::init(dev, specs[5], &ffn.linear2),
        }
    }

    /// 六个位置的秩（顺序同 [`LAYER_LINEARS`](super::config::LAYER_LINEARS)）。
    pub fn ranks(&self) -> [Option<usize>; 6] {
        [
            self.w_q.rank(),
            self.w_k.rank(),
            self.w_v.rank(),
            self.w_o.rank(),
            self.linear1.rank(),
            self.linear2.rank(),
        ]
    }

    /// PiSSA、OLoRA：`specs` 里初始化会改写基座的位置，编码器层的线性层减去刚初始化的 s·BA（[`SiteLora::subtract_from`]）。
    pub fn subtract_initial<const H: usize>(
        &self,
        specs: &[Option<SiteSpec>; 6],
        layer: &mut EncoderLayer<M, H, F, E, D>,
    ) {
        let rewrites = |j: usize| specs[j].is_some_and(|s| s.init.rewrites_base());
        let att = &mut layer.attention;
        let ffn = &mut layer.feed_forward;
        if rewrites(0) {
            self.w_q.subtract_from(&mut att.w_q);
        }
        if rewrites(1) {
            self.w_k.subtract_from(&mut att.w_k);
        }
        if rewrites(2) {
            self.w_v.subtract_from(&mut att.w_v);
        }
        if rewrites(3) {
            self.w_o.subtract_from(&mut att.w_o);
        }
        if rewrites(4) {
            self.linear1.subtract_from(&mut ffn.linear1);
        }
        if rewrites(5) {
            self.linear2.subtract_from(&mut ffn.linear2);
        }
    }

    /// 把这一层的适配器合并进编码器层的六个线性层。
    pub fn merge_into<const H: usize>(&self, layer: &mut EncoderLayer<M, H, F, E, D>) {
        self.w_q.merge_into(&mut layer.attention.w_q);
        self.w_k.merge_into(&mut layer.attention.w_k);
        self.w_v.merge_into(&mut layer.attention.w_v);
        self.w_o.merge_into(&mut layer.attention.w_o);
        self.linear1.merge_into(&mut layer.feed_forward.linear1);
        self.linear2.merge_into(&mut layer.feed_forward.linear2);
    }
}

impl<const M: usize, const F: usize, E: Dtype, D: Device<E>> TensorCollection<E, D>
    for PeftLayer<M, F, E, D>
{
    type To<E2: Dtype, D2: Device<E2>> = ();
    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(visitor: &mut V) -> Result<Option<()>, V::Err> {
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

/// 全部可训练的参数：每层的适配器、池化层上的 LoRA、分类头的副本（PEFT 的 adapter 与 `modules_to_save`）。
#[derive(Clone, Debug)]
pub struct PeftAdapters<const M: usize, const F: usize, E: Dtype, D: Device<E>> {
    /// 每层的适配器。
    pub layers: LayerStack<PeftLayer<M, F, E, D>>,
    /// `bert.pooler.dense` 上的（`target_modules` 含 `dense` 时 PEFT 也会选中它）。
    pub pooler: SiteLora<M, M, E, D>,
    /// 池化层 dense 的副本（`modules_to_save` 含 `pooler` 时，整个训练）。
    pub pooler_copy: SavedLinear<M, E, D>,
    /// 分类头的副本（整个训练）。
    pub head: Head<M, E, D>,
}

impl<const M: usize, const F: usize, E: Real, D: Kernels<E>> PeftAdapters<M, F, E, D> {
    /// AdaLoRA 的各个模块，按模型里的顺序（各层的六个位置，再是池化层；同 [`AdapterPlan::modules`](super::config::AdapterPlan::modules)）。
    pub fn svd_sites(&self) -> Vec<&dyn SvdSite<E, D>> {
        fn push<'a, const I: usize, const O: usize, E: Real, D: Kernels<E>>(
            out: &mut Vec<&'a dyn SvdSite<E, D>>,
            site: &'a SiteLora<I, O, E, D>,
        ) {
            if let Some(l) = site.lora.as_ref().filter(|l| l.lora_e.is_some()) {
                out.push(l);
            }
        }
        let mut out = Vec::new();
        for l in &self.layers.modules {
            push(&mut out, &l.w_q);
            push(&mut out, &l.w_k);
            push(&mut out, &l.w_v);
            push(&mut out, &l.w_o);
            push(&mut out, &l.linear1);
            push(&mut out, &l.linear2);
        }
        push(&mut out, &self.pooler);
        out
    }

    /// 同 [`svd_sites`](Self::svd_sites)，可变。
    pub fn svd_sites_mut(&mut self) -> Vec<&mut dyn SvdSite<E, D>> {
        fn push<'a, const I: usize, const O: usize, E: Real, D: Kernels<E>>(
            out: &mut Vec<&'a mut dyn SvdSite<E, D>>,
            site: &'a mut SiteLora<I, O, E, D>,
        ) {
            if let Some(l) = site.lora.as_mut().filter(|l| l.lora_e.is_some()) {
                out.push(l);
            }
        }
        let mut out = Vec::new();
        for l in &mut self.layers.modules {
            push(&mut out, &mut l.w_q);
            push(&mut out, &mut l.w_k);
            push(&mut out, &mut l.w_v);
            push(&mut out, &mut l.w_o);
            push(&mut out, &mut l.linear1);
            push(&mut out, &mut l.linear2);
        }
        push(&mut out, &mut self.pooler);
        out
    }
}

impl<const M: usize, const F: usize, E: Dtype, D: Device<E>> TensorCollection<E, D>
    for PeftAdapters<M, F, E, D>
{
    type To<E2: Dtype, D2: Device<E2>> = ();
    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(visitor: &mut V) -> Result<Option<()>, V::Err> {
        visitor.visit_fields(
            (
                Self::module("layers", |s| &s.layers, |s| &mut s.layers),
                Self::module("pooler", |s| &s.pooler, |s| &mut s.pooler),
                Self::module("pooler_copy", |s| &s.pooler_copy, |s| &mut s.pooler_copy),
                Self::module("head", |s| &s.head, |s| &mut s.head),
            ),
            |_| (),
        )
    }
}

/// 把一层的适配器接进第 1 部分的前向（钩子），以及池化层的钩子。
pub struct PeftHooks<'a, const M: usize, const H: usize, const F: usize, E: Dtype, D: Device<E>> {
    /// 这一层的适配器与基座里的这一层（池化层的钩子不用它们）。
    pub layer: Option<(&'a PeftLayer<M, F, E, D>, &'a EncoderLayer<M, H, F, E, D>)>,
    /// 基座量化存放时（4.5 节）这一层六个投影按需还原的权重（次序同 [`Proj::ALL`]）。
    pub quant: Option<&'a [Arc<dyn LazyWeight<E>>; 6]>,
    /// 池化层上的 LoRA。
    pub pooler: &'a SiteLora<M, M, E, D>,
    /// 基座量化存放时池化层 dense 按需还原的权重。
    pub pooler_quant: Option<&'a Arc<dyn LazyWeight<E>>>,
    /// 池化层 dense 的训练副本（`modules_to_save` 含 `pooler` 时）。
    pub pooler_copy: &'a SavedLinear<M, E, D>,
    /// LoRA 分支输入上的 dropout 概率。
    pub dropout: f64,
    /// 训练还是推理。
    pub mode: Mode,
    /// 是否是第 0 层：它的输入来自冻结的嵌入层（PEFT 的目标只能是线性层），不需要梯度。
    pub first_layer: bool,
}

impl<const M: usize, const H: usize, const F: usize, E: Real, D: Kernels<E>>
    PeftHooks<'_, M, H, F, E, D>
{
    /// `pick` 取出投影 `p` 上的适配器与基座里的线性层。
    fn site<const I: usize, const O: usize, T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        p: Proj,
        pick: impl for<'l> Fn(
            &'l PeftLayer<M, F, E, D>,
            &'l EncoderLayer<M, H, F, E, D>,
        ) -> (&'l SiteLora<I, O, E, D>, &'l Linear<I, O, E, D>),
        x: Hidden<I, E, D, T>,
        out: Hidden<O, E, D, T>,
    ) -> Hidden<O, E, D, T> {
        match self.layer {
            Some((adapters, base)) => {
                let (site, linear) = pick(adapters, base);
                let dora = site.lora.as_ref().is_some_and(|l| l.magnitude.is_some());
                let lazy = self.quant.filter(|_| dora).map(|q| &q[p as usize]);
                site.apply(x, out, &with_weight(linear, lazy), self.dropout, self.mode)
            }
            None => out,
        }
    }
}

/// DoRA 的前向要用基座的 W（求范数）：量化存放时还原一份（只在 DoRA 的位置上；这份留在 tape 上直到反向结束）。
/// 其余情况原样借用 `linear`。
fn with_weight<'l, const I: usize, const O: usize, E: Real, D: Kernels<E>>(
    linear: &'l Linear<I, O, E, D>,
    lazy: Option<&Arc<dyn LazyWeight<E>>>,
) -> std::borrow::Cow<'l, Linear<I, O, E, D>> {
    match lazy {
        Some(w) => {
            let dev = linear.weight.device();
            std::borrow::Cow::Owned(Linear {
                weight: dev.tensor_from_vec(w.materialize(), (Const, Const)),
                bias: linear.bias.clone(),
            })
        }
        None => std::borrow::Cow::Borrowed(linear),
    }
}

impl<const M: usize, const H: usize, const F: usize, E: Real, D: Kernels<E>> AttentionHooks<M, E, D>
    for PeftHooks<'_, M, H, F, E, D>
{
    /// 有适配器的模型里，原来的线性层总是冻结的。
    fn base_frozen(&self) -> bool {
        true
    }
    fn input_needs_grad(&self) -> bool {
        !self.first_layer
    }
    fn attention_weight(&self, proj: Proj) -> Option<&Arc<dyn LazyWeight<E>>> {
        self.quant.map(|q| &q[proj as usize])
    }
    fn query<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        x: Hidden<M, E, D, T>,
        out: Hidden<M, E, D, T>,
    ) -> Hidden<M, E, D, T> {
        self.site(Proj::Query, |l, b| (&l.w_q, &b.attention.w_q), x, out)
    }
    fn key<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        x: Hidden<M, E, D, T>,
        out: Hidden<M, E, D, T>,
    ) -> Hidden<M, E, D, T> {
        self.site(Proj::Key, |l, b| (&l.w_k, &b.attention.w_k), x, out)
    }
    fn value<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        x: Hidden<M, E, D, T>,
        out: Hidden<M, E, D, T>,
    ) -> Hidden<M, E, D, T> {
        self.site(Proj::Value, |l, b| (&l.w_v, &b.attention.w_v), x, out)
    }
    fn output<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        x: Hidden<M, E, D, T>,
        out: Hidden<M, E, D, T>,
    ) -> Hidden<M, E, D, T> {
        self.site(Proj::Output, |l, b| (&l.w_o, &b.attention.w_o), x, out)
    }
}

impl<const M: usize, const H: usize, const F: usize, E: Real, D: Kernels<E>> FfnHooks<M, F, E, D>
    for PeftHooks<'_, M, H, F, E, D>
{
    fn base_frozen(&self) -> bool {
        true
    }
    fn ffn_weight(&self, proj: Proj) -> Option<&Arc<dyn LazyWeight<E>>> {
        self.quant.map(|q| &q[proj as usize])
    }
    fn up<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        x: Hidden<M, E, D, T>,
        out: Hidden<F, E, D, T>,
    ) -> Hidden<F, E, D, T> {
        self.site(
            Proj::Up,
            |l, b| (&l.linear1, &b.feed_forward.linear1),
            x,
            out,
        )
    }
    fn down<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        x: Hidden<F, E, D, T>,
        out: Hidden<M, E, D, T>,
    ) -> Hidden<M, E, D, T> {
        self.site(
            Proj::Down,
            |l, b| (&l.linear2, &b.feed_forward.linear2),
            x,
            out,
        )
    }
}

impl<const M: usize, const H: usize, const F: usize, E: Real, D: Kernels<E>> PoolerHook<M, E, D>
    for PeftHooks<'_, M, H, F, E, D>
{
    fn pooler<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        dense: &Linear<M, M, E, D>,
        x: Tensor<(usize, Const<M>), E, D, T>,
    ) -> Tensor<(usize, Const<M>), E, D, T> {
        // modules_to_save 含 pooler：训练的副本代替基座的 dense（这时 PEFT 不给它加 LoRA）
        if self.pooler_copy.module.is_some() {
            return self.pooler_copy.pooler(dense, x);
        }
        // 融合的算子按 (batch, seq, M) 计算：[CLS] 看作长度为 1 的序列
        let batch = x.shape().0;
        let x = x.reshape_like(&(batch, 1, Const::<M>));
        // 基座的 dense 拿着整条 tape，LoRA 分支拿不带 tape 记录的副本（合并时两路汇合）；量化存放时按需还原（4.5 节）
        let x_copy = x.retaped::<T>();
        let out = match self.pooler_quant {
            Some(w) => D::linear_lazy(x, w, &dense.bias),
            None => D::linear(x, &dense.weight, &dense.bias, false),
        };
        let dora = (self.pooler.lora.as_ref()).is_some_and(|l| l.magnitude.is_some());
        let dense = with_weight(dense, self.pooler_quant.filter(|_| dora));
        let y = self
            .pooler
            .apply(x_copy, out, &dense, self.dropout, self.mode);
        y.reshape_like(&(batch, Const::<M>))
    }
}
