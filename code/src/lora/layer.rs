//! 2.2、2.3 节：LoRA 线性层。
//!
//! h = W₀x + b₀ + (α/r)·B(A·dropout(x))，W₀、b₀ 冻结，A ∈ ℝ^{r×in}、B ∈ ℝ^{out×r} 可训练。
//! 初始化与 PEFT 相同：A 取 Kaiming 均匀分布 U(−1/√in, 1/√in)，B 取 0，所以训练开始时 LoRA 层与原层完全相同。

pub use crate::kernels::composite::low_rank;
use crate::kernels::Kernels;
use dfdx::nn::modules::{Linear, ModuleVisitor, TensorCollection, TensorOptions};
use dfdx::prelude::*;

use super::rank::RankBound;
use crate::basics::tensors::Real;
use crate::transformer::encoder::Mode;

/// LoRA 的超参数（秩在类型或张量的形状里）。
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraOptions {
    /// α：缩放系数为 α/r。参考实现相当于 α = 1；PEFT 的常用设置是 α = 2r。
    pub alpha: f64,
    /// LoRA 分支输入上的 dropout 概率（只在训练时生效）。
    pub dropout: f64,
}

// ANCHOR: struct
/// LoRA 线性层：冻结的原权重 + 可训练的低秩更新。
///
/// 字段名即检查点的键：`weight`、`bias`（冻结，优化器不更新）、`lora_a`、`lora_b`。
#[derive(Clone, Debug)]
pub struct LoraLinear<const IN: usize, const OUT: usize, const R: usize, E: Dtype, D: Device<E>> {
    /// 冻结的 W₀，`(OUT, IN)`。
    pub weight: Tensor<Rank2<OUT, IN>, E, D>,
    /// 冻结的 b₀。
    pub bias: Tensor<Rank1<OUT>, E, D>,
    /// A，`(r, IN)`：先把输入降到 r 维。
    pub lora_a: Tensor<Rank2<R, IN>, E, D>,
    /// B，`(OUT, r)`：再升回 OUT 维；初始为 0。
    pub lora_b: Tensor<Rank2<OUT, R>, E, D>,
}
// ANCHOR_END: struct

// ANCHOR: from_base
impl<const IN: usize, const OUT: usize, const R: usize, E: Real, D: Kernels<E>>
    LoraLinear<IN, OUT, R, E, D>
{
    /// 从一个（训练好的）线性层构造：**复制**它的权重与偏置，A 随机、B 为 0。
    ///
    /// 这是构造 LoRA 层的途径：原权重只能从已有的层来，不会“忘了拷贝预训练权重”。
    /// 秩不合法（R = 0 或 R > min(IN, OUT)）时编译不过。
    pub fn from_base(base: &Linear<IN, OUT, E, D>) -> Self {
        #[allow(clippy::let_unit_value)]
        let () = RankBound::<IN, OUT, R>::VALID;
        let dev = base.weight.device().clone();
        Self {
            weight: base.weight.clone(),
            bias: base.bias.clone(),
            lora_a: dev.sample(kaiming_uniform(IN)),
            lora_b: dev.zeros(),
        }
    }

    /// 秩 r。
    pub fn rank(&self) -> usize {
        R
    }

    /// 缩放系数 α/r。
    pub fn scaling(&self, opts: &LoraOptions) -> f64 {
        opts.alpha / self.rank() as f64
    }
}

/// A 的初始分布 U(−1/√fan_in, 1/√fan_in)：PyTorch 给 `nn.Linear` 的 kaiming_uniform_(a=√5)，PEFT 用它初始化 A。
/// 本书所有 LoRA（2.2 节的 [`LoraLinear`]、2.4 节的适配器、3.4 节的 PEFT 适配器）都从这里取。
pub fn kaiming_uniform<E: Real>(fan_in: usize) -> rand_distr::Uniform<E> {
    let bound = E::from_f64(1.0 / (fan_in as f64).sqrt()).unwrap();
    rand_distr::Uniform::new(-bound, bound)
}
// ANCHOR_END: from_base

// ANCHOR: forward
impl<const IN: usize, const OUT: usize, const R: usize, E: Real, D: Kernels<E>>
    LoraLinear<IN, OUT, R, E, D>
{
    /// h = W₀x + b₀ + (α/r)·B(A·dropout(x))。先算 Ax（r 维），再乘 B：不构造 OUT×IN 的 BA。
    ///
    /// # 形状
    /// - `x`: `(batch, seq, Const<IN>)`
    /// - 返回：`(batch, seq, Const<OUT>)`
    pub fn forward<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        x: Tensor<(usize, usize, Const<IN>), E, D, T>,
        opts: &LoraOptions,
        mode: Mode,
    ) -> Tensor<(usize, usize, Const<OUT>), E, D, T> {
        let (batch, seq, _) = *x.shape();
        let out_shape = (batch, seq, Const::<OUT>);
        // 原层：W₀ 与 b₀ 不接到 tape 上，优化器看不到它们
        let lora_in = x.retaped::<T>();
        let base = x.matmul(self.weight.clone().permute::<Rank2<IN, OUT>, _>())
            + self.bias.clone().broadcast_like(&out_shape);
        base + lora_branch(
            lora_in,
            &self.lora_a,
            &self.lora_b,
            self.scaling(opts),
            opts.dropout,
            mode,
        )
    }
}

/// LoRA 分支 (α/r)·B(A·dropout(x))：先降到 r 维，再升回 OUT 维，不构造 OUT×IN 的 BA。
///
/// # 形状
/// - `x`: `(batch, seq, Const<IN>)`，`a`: `(R, IN)`，`b`: `(OUT, R)`
/// - 返回：`(batch, seq, Const<OUT>)`
pub fn lora_branch<const IN: usize, const OUT: usize, R: Dim, E, D, T>(
    x: Tensor<(usize, usize, Const<IN>), E, D, T>,
    a: &Tensor<(R, Const<IN>), E, D>,
    b: &Tensor<(Const<OUT>, R), E, D>,
    scaling: f64,
    dropout: f64,
    mode: Mode,
) -> Tensor<(usize, usize, Const<OUT>), E, D, T>
where
    E: Dtype,
    D: Kernels<E>,
    T: Tape<E, D> + Merge<T>,
{
    let x = match mode {
        Mode::Train if dropout > 0.0 => D::dropout(x, dropout),
        _ => x,
    };
    low_rank(x, a, b, scaling)
}
// ANCHOR_END: forward

// ANCHOR: merge
impl<const IN: usize, const OUT: usize, const R: usize, E: Real, D: Kernels<E>>
    LoraLinear<IN, OUT, R, E, D>
{
    /// 合并：W = W₀ + (α/r)·BA，得到一个普通的线性层，推理时与原层一样快。
    pub fn merge(&self, opts: &LoraOptions) -> Linear<IN, OUT, E, D> {
        let delta = delta_weight(&self.lora_a, &self.lora_b, self.scaling(opts));
        Linear {
            weight: self.weight.clone() + delta,
            bias: self.bias.clone(),
        }
    }

    /// 拆分：从合并后的层减去 (α/r)·BA，还原 W₀。
    pub fn unmerge(
        &self,
        merged: &Linear<IN, OUT, E, D>,
        opts: &LoraOptions,
    ) -> Linear<IN, OUT, E, D> {
        let delta = delta_weight(&self.lora_a, &self.lora_b, self.scaling(opts));
        Linear {
            weight: merged.weight.clone() - delta,
            bias: merged.bias.clone(),
        }
    }
}

/// 权重的增量 s·BA `(OUT, IN)`。合并、拆分，以及 4.3 节 PiSSA 的 W_res = W − s·B₀A₀，都用这一个函数；
/// 秩 R 与 [`low_rank`] 一样可以是编译期的 `Const<R>` 或运行期的 `usize`。
pub fn delta_weight<const IN: usize, const OUT: usize, R: Dim, E: Real, D: Device<E>>(
    a: &Tensor<(R, Const<IN>), E, D>,
    b: &Tensor<(Const<OUT>, R), E, D>,
    scaling: f64,
) -> Tensor<Rank2<OUT, IN>, E, D> {
    b.clone().matmul(a.clone()) * E::from_f64(scaling).unwrap()
}
// ANCHOR_END: merge

/// 试图随机初始化冻结的原权重时的说明。
const FROZEN_RESET: &str =
    "LoRA 层的原权重 W₀ 不能随机初始化：请用 LoraLinear::from_base 从训练好的线性层复制";

impl<const IN: usize, const OUT: usize, const R: usize, E: Real, D: Kernels<E>>
    TensorCollection<E, D> for LoraLinear<IN, OUT, R, E, D>
{
    type To<E2: Dtype, D2: Device<E2>> = LoraLinear<IN, OUT, R, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                // 原权重：detached，优化器不更新，也不计入可训练参数。
                // 它们只能从训练好的层复制（from_base），“随机初始化原权重”是一个错误：
                // `LoraLinear::build` 或 `reset_params` 走到这里会立刻停下并说明原因。
                Self::tensor(
                    "weight",
                    |s| &s.weight,
                    |s| &mut s.weight,
                    TensorOptions::detached(|_| panic!("{FROZEN_RESET}")),
                ),
                Self::tensor(
                    "bias",
                    |s| &s.bias,
                    |s| &mut s.bias,
                    TensorOptions::detached(|_| panic!("{FROZEN_RESET}")),
                ),
                Self::tensor(
                    "lora_a",
                    |s| &s.lora_a,
                    |s| &mut s.lora_a,
                    TensorOptions::reset_with(|t| t.try_fill_with_distr(kaiming_uniform(IN))),
                ),
                Self::tensor(
                    "lora_b",
                    |s| &s.lora_b,
                    |s| &mut s.lora_b,
                    TensorOptions::reset_to_zeros(),
                ),
            ),
            |(weight, bias, lora_a, lora_b)| LoraLinear {
                weight,
                bias,
                lora_a,
                lora_b,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;
    use dfdx::nn::{BuildModule, NumParams, ZeroGrads};
    use dfdx::optim::{Adam, AdamConfig, Optimizer};
    use std::path::Path;

    type X = (usize, usize, Const<6>);

    fn base(dev: &Cpu) -> Linear<6, 5, f64, Cpu> {
        Linear::<6, 5, f64, Cpu>::build(dev)
    }

    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    const OPTS: LoraOptions = LoraOptions {
        alpha: 4.0,
        dropout: 0.0,
    };

    #[test]
    fn starts_exactly_equal_to_the_base_layer() {
        let dev = Cpu::seed_from_u64(0);
        let base = base(&dev);
        let lora = LoraLinear::<6, 5, 2, f64, Cpu>::from_base(&base);
        let x: Tensor<X, f64, Cpu> = dev.sample_normal_like(&(2, 3, Const));
        let ours = lora.forward(x.clone(), &OPTS, Mode::Eval).as_vec();
        let reference = dfdx::nn::Module::forward(&base, x).as_vec();
        assert_eq!(ours, reference, "B = 0 时输出必须与原层逐位相同");
        assert_eq!(lora.num_trainable_params(), 2 * 6 + 5 * 2); // 只有 A、B 可训练
    }

    #[test]
    fn merged_equals_unmerged_and_unmerge_restores_the_base() {
        let dev = Cpu::seed_from_u64(1);
        let base = base(&dev);
        let mut lora = LoraLinear::<6, 5, 2, f64, Cpu>::from_base(&base);
        lora.lora_b = dev.sample_normal();
        let x: Tensor<X, f64, Cpu> = dev.sample_normal_like(&(2, 3, Const));
        let merged = lora.merge(&OPTS);
        let unmerged_out = lora.forward(x.clone(), &OPTS, Mode::Eval).as_vec();
        let merged_out = dfdx::nn::Module::forward(&merged, x).as_vec();
        assert!(max_diff(&unmerged_out, &merged_out) < 1e-12);
        let restored = lora.unmerge(&merged, &OPTS);
        assert!(max_diff(&restored.weight.as_vec(), &base.weight.as_vec()) < 1e-12);
        // f32 下往返的误差在 1e-6 以内
        let lora32 = LoraLinear::<6, 5, 2, f32, Cpu> {
            weight: base.weight.to_dtype(),
            bias: base.bias.to_dtype(),
            lora_a: lora.lora_a.to_dtype(),
            lora_b: lora.lora_b.to_dtype(),
        };
        let back = lora32.unmerge(&lora32.merge(&OPTS), &OPTS).weight.as_vec();
        let w0 = lora32.weight.as_vec();
        assert!(back.iter().zip(&w0).all(|(a, b)| (a - b).abs() < 1e-6));
    }

    #[test]
    fn optimizer_never_touches_the_frozen_weights() {
        let dev = Cpu::seed_from_u64(2);
        let mut lora = LoraLinear::<6, 5, 2, f64, Cpu>::from_base(&base(&dev));
        let (w0, b0, a0, b_0) = (
            lora.weight.as_vec(),
            lora.bias.as_vec(),
            lora.lora_a.as_vec(),
            lora.lora_b.as_vec(),
        );
        let mut opt = Adam::new(
            &lora,
            AdamConfig {
                lr: 1e-2,
                ..Default::default()
            },
        );
        let mut grads = lora.alloc_grads();
        for _ in 0..5 {
            let x: Tensor<X, f64, Cpu> = dev.sample_normal_like(&(4, 3, Const));
            let loss = lora
                .forward(x.traced(grads), &OPTS, Mode::Train)
                .square()
                .mean();
            grads = loss.backward();
            opt.update(&mut lora, &grads).unwrap();
            lora.zero_grads(&mut grads);
        }
        assert_eq!(lora.weight.as_vec(), w0, "W₀ 必须逐位不变");
        assert_eq!(lora.bias.as_vec(), b0, "b₀ 必须逐位不变");
        assert_ne!(lora.lora_a.as_vec(), a0, "A 应当被更新");
        assert_ne!(lora.lora_b.as_vec(), b_0, "B 应当被更新");
    }

    #[test]
    fn gradients_of_a_and_b_match_finite_differences() {
        let dev = Cpu::seed_from_u64(3);
        let mut lora = LoraLinear::<6, 5, 2, f64, Cpu>::from_base(&base(&dev));
        lora.lora_b = dev.sample_normal(); // B ≠ 0，A 的梯度才不为 0
        let x: Tensor<X, f64, Cpu> = dev.sample_normal_like(&(2, 3, Const));
        let w: Tensor<(usize, usize, Const<5>), f64, Cpu> = dev.sample_normal_like(&(2, 3, Const));
        let loss = |l: &LoraLinear<6, 5, 2, f64, Cpu>| {
            (l.forward(x.clone(), &OPTS, Mode::Eval) * w.clone())
                .sum::<(), _>()
                .array()
        };
        let grads = {
            let g = lora.alloc_grads();
            (lora.forward(x.clone().traced(g), &OPTS, Mode::Eval) * w.clone())
                .sum()
                .backward()
        };
        // 对 A（或 B）的第 i 个元素做中心差分
        let numeric = |is_a: bool, i: usize| -> f64 {
            let at = |delta: f64| -> f64 {
                let mut l = lora.clone();
                let mut v = if is_a {
                    l.lora_a.as_vec()
                } else {
                    l.lora_b.as_vec()
                };
                v[i] += delta;
                if is_a {
                    l.lora_a.copy_from(&v);
                } else {
                    l.lora_b.copy_from(&v);
                }
                loss(&l)
            };
            (at(1e-6) - at(-1e-6)) / 2e-6
        };
        for (is_a, analytic) in [
            (true, grads.get(&lora.lora_a).as_vec()),
            (false, grads.get(&lora.lora_b).as_vec()),
        ] {
            for (i, g) in analytic.iter().enumerate() {
                let n = numeric(is_a, i);
                assert!(
                    (n - g).abs() < 1e-7,
                    "{}[{i}]：{n} vs {g}",
                    if is_a { "A" } else { "B" }
                );
            }
        }
    }

    #[test]
    fn matches_the_pytorch_reference() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora.safetensors");
        let ckpt = Checkpoint::read(&path).unwrap();
        let dev: Cpu = Default::default();
        let base = Linear::<6, 5, f32, Cpu> {
            weight: ckpt
                .tensor(&dev, "weight", Rank2::<5, 6>::default())
                .unwrap(),
            bias: ckpt.tensor(&dev, "bias", Rank1::<5>::default()).unwrap(),
        };
        let mut lora = LoraLinear::<6, 5, 2, f32, Cpu>::from_base(&base);
        lora.lora_a = ckpt
            .tensor(&dev, "lora_a", Rank2::<2, 6>::default())
            .unwrap();
        lora.lora_b = ckpt
            .tensor(&dev, "lora_b", Rank2::<5, 2>::default())
            .unwrap();
        let x: Tensor<(usize, usize, Const<6>), f32, Cpu> =
            ckpt.tensor(&dev, "x", (2, 3, Const)).unwrap();
        for (alpha, key) in [(1.0, "out_alpha1"), (4.0, "out_alpha4")] {
            let ours = lora
                .forward(
                    x.clone(),
                    &LoraOptions {
                        alpha,
                        dropout: 0.0,
                    },
                    Mode::Eval,
                )
                .as_vec();
            let reference = &ckpt.get(key).unwrap().values();
            let err = ours
                .iter()
                .zip(reference)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0.0, f64::max);
            assert!(err <= 1e-5, "α = {alpha}：最大误差 {err}");
        }
        let merged = lora
            .merge(&LoraOptions {
                alpha: 4.0,
                dropout: 0.0,
            })
            .weight
            .as_vec();
        let reference = &ckpt.get("merged_weight_alpha4").unwrap().values();
        assert!(merged
            .iter()
            .zip(reference)
            .all(|(a, b)| (*a as f64 - b).abs() <= 1e-5));
    }

    #[test]
    #[should_panic(expected = "不能随机初始化")]
    fn building_with_random_base_weights_is_refused() {
        let dev: Cpu = Default::default();
        let _ = LoraLinear::<6, 5, 2, f32, Cpu>::build(&dev);
    }
}
