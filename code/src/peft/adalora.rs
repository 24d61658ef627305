//! 4.4 节：AdaLoRA——SVD 形式的适配器，按重要性在模块之间分配秩（PEFT 的 `peft_type: "ADALORA"`）。
//!
//! 每个选中的线性层上的增量写成 ΔW = s·B·diag(E)·A：A `(r, I)` 是“右奇异向量”，E `(r,)` 是“奇异值”，B `(O, r)`
//! 是“左奇异向量”，s = lora_alpha/init_r（[`adalora_scaling`](super::config::adalora_scaling)）。训练时损失上加一个
//! 正交正则，让 A 的行、B 的列接近正交（[`orth_regularizer`]），于是 E 的每一项真像一个奇异值；每步优化器更新之后，
//! [`RankAllocator`] 给每个三元组（A 的第 i 行、E 的第 i 项、B 的第 i 列）打分，预算（全部模块留下的奇异值个数之和）
//! 按时间表从 init_r × 模块数降到 target_r × 模块数，分数最低的那些 E 置 0——秩就这样从不重要的模块挪给重要的模块。
//!
//! 与 PEFT 0.21.2 的 `tuners/adalora`（`layer.py` 的 `SVDLinear`、`RankAllocator`，`model.py` 的 `forward`、
//! `update_and_allocate`）逐步对照：同样的初值、同样的训练步，每步的损失、剪枝的掩码与最后的 logits 都与它一致
//! （本文件末尾的测试）。

use dfdx::prelude::*;

use super::adapter::{SvdParts, SvdSite};
use super::config::AdaLoraSettings;
use crate::basics::tensors::Real;
use crate::kernels::Kernels;
use crate::transformer::hooks::Hidden;

// ANCHOR: forward
/// AdaLoRA 的前向：out + s·B·(diag(E)·A)·x。先在 tape 上算出 A′ = diag(E)·A（A 的第 i 行乘 E 的第 i 项），
/// 再交给 LoRA 的融合算子（[`Kernels::lora_add`]）：算子把梯度记给 A′，A′ 的乘法再把它分给 A 与 E。
///
/// # 形状
/// - `x`: `(batch, seq, Const<I>)`，`out` 与返回：`(batch, seq, Const<O>)`
/// - `a`: `(r, I)`，`e`: `(r, 1)`，`b`: `(O, r)`
pub fn forward<const I: usize, const O: usize, E, D, T>(
    out: Hidden<O, E, D, T>,
    x: Hidden<I, E, D, T>,
    a: &Tensor<(usize, Const<I>), E, D>,
    e: &Tensor<(usize, Const<1>), E, D>,
    b: &Tensor<(Const<O>, usize), E, D>,
    scaling: f64,
) -> Hidden<O, E, D, T>
where
    E: Real,
    D: Kernels<E>,
    T: Tape<E, D> + Merge<T>,
{
    let r = a.shape().0;
    let scaled = a.retaped::<T>()
        * (e.retaped::<T>().reshape_like(&(r,))).broadcast_like::<_, Axis<1>>(a.shape());
    // A′ 的 tape（乘法的反向）并进 x 的 tape：算子的反向先跑（它的输出更晚建出），A′ 的梯度到时已经有了
    let (scaled, tape) = scaled.split_tape();
    let (x, x_tape) = x.split_tape();
    D::lora_add(
        out,
        x.put_tape(x_tape.merge(tape)),
        &scaled,
        b,
        scaling,
        0.0,
    )
}
// ANCHOR_END: forward

/// diag(E)·A：A 的第 i 行乘 E 的第 i 项（合并时用，不带 tape）。
pub fn scaled_rows<const I: usize, E: Real, D: Kernels<E>>(
    a: &Tensor<(usize, Const<I>), E, D>,
    e: &Tensor<(usize, Const<1>), E, D>,
) -> Tensor<(usize, Const<I>), E, D> {
    let r = a.shape().0;
    a.clone()
        * e.clone()
            .reshape_like(&(r,))
            .broadcast_like::<_, Axis<1>>(a.shape())
}

// ANCHOR: orth
/// ‖AAᵀ − I‖_F（A `(r, I)`），带 tape。
///
/// dfdx 的二元算子不接受同一个张量作两个操作数（梯度按张量的 id 记，两边会写同一块）：右边先乘 1，
/// 得到一个新 id 的副本，它的梯度经这次乘法再加回 A。
pub fn orth_a<const I: usize, E: Real, D: Kernels<E>>(
    a: &Tensor<(usize, Const<I>), E, D>,
) -> Tensor<(), E, D, OwnedTape<E, D>> {
    let r = a.shape().0;
    let copy = a.retaped::<OwnedTape<E, D>>() * E::one();
    let cov = a
        .retaped::<OwnedTape<E, D>>()
        .matmul(copy.permute::<(Const<I>, usize), _>());
    frobenius_from_identity(cov, r)
}

/// ‖BᵀB − I‖_F（B `(O, r)`），带 tape。
pub fn orth_b<const O: usize, E: Real, D: Kernels<E>>(
    b: &Tensor<(Const<O>, usize), E, D>,
) -> Tensor<(), E, D, OwnedTape<E, D>> {
    let r = b.shape().1;
    let copy = b.retaped::<OwnedTape<E, D>>() * E::one();
    let cov = (b
        .retaped::<OwnedTape<E, D>>()
        .permute::<(usize, Const<O>), _>())
    .matmul(copy);
    frobenius_from_identity(cov, r)
}

fn frobenius_from_identity<E: Real, D: Kernels<E>>(
    cov: Tensor<(usize, usize), E, D, OwnedTape<E, D>>,
    r: usize,
) -> Tensor<(), E, D, OwnedTape<E, D>> {
    let mut eye = vec![E::zero(); r * r];
    (0..r).for_each(|i| eye[i * r + i] = E::one());
    let eye = cov.device().tensor_from_vec(eye, (r, r));
    (cov - eye).square().sum::<(), _>().sqrt()
}

/// PEFT 加在损失上的正交正则：weight × 平均（每个模块的 ‖AAᵀ − I‖_F 与 ‖BᵀB − I‖_F，两项各算一个）。
/// 没有 AdaLoRA 的模块时为 `None`。
pub fn orth_regularizer<E: Real, D: Kernels<E>>(
    sites: &[&dyn SvdSite<E, D>],
    weight: f64,
) -> Option<Tensor<(), E, D, OwnedTape<E, D>>> {
    let terms: Vec<_> = sites.iter().flat_map(|s| s.orth_terms()).collect();
    let n = terms.len();
    let sum = terms.into_iter().reduce(|x, y| x + y)?;
    Some(sum / E::from_usize(n).unwrap() * E::from_f64(weight).unwrap())
}
// ANCHOR_END: orth

/// 每个模块 A、B、E 各元素的两个滑动平均：重要性 Ī 与不确定性 Ū（次序 A、B、E）。
#[derive(Clone, Debug, PartialEq)]
pub struct SiteEma<E> {
    /// Ī：|p·∂p| 的指数滑动平均（beta1）。
    pub ipt: [Vec<E>; 3],
    /// Ū：|I − Ī| 的指数滑动平均（beta2）。
    pub unc: [Vec<E>; 3],
}

// ANCHOR: allocator
/// PEFT 的 `RankAllocator`：给每个三元组打分，按预算的时间表把分数最低的奇异值剪掉。
#[derive(Clone, Debug, PartialEq)]
pub struct RankAllocator<E> {
    /// 超参数。
    pub settings: AdaLoraSettings,
    /// 一开始的预算：各模块的 init_r 之和。
    pub init_bgt: usize,
    /// 最后的预算：target_r × 模块数。
    pub target_bgt: usize,
    /// 各模块的滑动平均（按模型里的顺序；第一次更新前、进入最后阶段后为空）。
    pub ema: Vec<SiteEma<E>>,
    /// 各模块的秩是否已经定下（走过了 total_step − tfinal 那一步）。
    pub settled: bool,
}

impl<E: Real> RankAllocator<E> {
    /// `ranks` 是各模块一开始的秩。
    pub fn new(settings: AdaLoraSettings, ranks: &[usize]) -> Self {
        Self {
            settings,
            init_bgt: ranks.iter().sum(),
            target_bgt: settings.target_r * ranks.len(),
            ema: Vec::new(),
            settled: false,
        }
    }

    /// 第 `step` 步（从 0 数）的预算，以及这一步剪不剪：前 tinit 步不剪；最后 tfinal 步固定为 target_bgt；
    /// 中间按三次方下降 b(t) = ⌊(init − target)·(1 − (t − tinit)/(total − tfinal − tinit))³ + target⌋，每 deltaT 步剪一次。
    pub fn budget_schedule(&self, step: usize) -> (usize, bool) {
        let s = &self.settings;
        if step <= s.tinit {
            (self.init_bgt, false)
        } else if step > s.total_step - s.tfinal {
            (self.target_bgt, true)
        } else {
            let span = (s.total_step - s.tfinal - s.tinit) as f64;
            let mul = 1.0 - (step - s.tinit) as f64 / span;
            let spare = (self.init_bgt - self.target_bgt) as f64;
            let budget = (spare * mul.powi(3) + self.target_bgt as f64) as usize;
            (budget, step % s.delta_t == 0)
        }
    }

    /// 用这一步的参数与梯度更新滑动平均：I = |p·∂p|，Ī ← β₁Ī + (1 − β₁)I，Ū ← β₂Ū + (1 − β₂)|I − Ī|。
    /// 梯度先乘 `grad_scale`（裁剪系数）。
    pub fn update_ipt(&mut self, params: &[SvdParts<E>], grads: &[SvdParts<E>], grad_scale: f64) {
        let scale = E::from_f64(grad_scale).unwrap();
        let (b1, b2) = (self.settings.beta1, self.settings.beta2);
        let c = |x: f64| E::from_f64(x).unwrap();
        if self.ema.len() != params.len() {
            let zeros =
                |p: &SvdParts<E>| [p.a.len(), p.b.len(), p.e.len()].map(|n| vec![E::zero(); n]);
            self.ema = (params.iter())
                .map(|p| SiteEma {
                    ipt: zeros(p),
                    unc: zeros(p),
                })
                .collect();
        }
        for ((ema, p), g) in self.ema.iter_mut().zip(params).zip(grads) {
            for (k, (pv, gv)) in [(&p.a, &g.a), (&p.b, &g.b), (&p.e, &g.e)]
                .into_iter()
                .enumerate()
            {
                for (i, (&pi, &gi)) in pv.iter().zip(gv.iter()).enumerate() {
                    let ipt = (pi * (gi * scale)).abs();
                    let avg = c(b1) * ema.ipt[k][i] + c(1.0 - b1) * ipt;
                    ema.ipt[k][i] = avg;
                    ema.unc[k][i] = c(b2) * ema.unc[k][i] + c(1.0 - b2) * (ipt - avg).abs();
                }
            }
        }
    }

    /// 每个三元组的分数：E 第 i 项的 Ī·Ū，加上 A 第 i 行的 Ī·Ū 的平均与 B 第 i 列的 Ī·Ū 的平均。
    pub fn triplet_scores(&self, shapes: &[SvdParts<E>]) -> Vec<Vec<E>> {
        (self.ema.iter().zip(shapes))
            .map(|(ema, p)| {
                let score = |k: usize, j: usize| ema.ipt[k][j] * ema.unc[k][j];
                (0..p.r)
                    .map(|i| {
                        let a_mean = (0..p.fan_in)
                            .fold(E::zero(), |acc, j| acc + score(0, i * p.fan_in + j))
                            / E::from_usize(p.fan_in).unwrap();
                        let b_mean = (0..p.fan_out)
                            .fold(E::zero(), |acc, o| acc + score(1, o * p.r + i))
                            / E::from_usize(p.fan_out).unwrap();
                        score(2, i) + (a_mean + b_mean)
                    })
                    .collect()
            })
            .collect()
    }

    /// 按预算剪：全部三元组的分数里第 init_bgt − budget 小的作阈值，分数 ≤ 阈值的剪掉。返回每个模块留下哪些
    /// （PEFT 的 `mask_to_budget`；它在 init_bgt − budget = 0 时会报错，这里是一个也不剪；还没有分数时也一个不剪）。
    pub fn keep_for_budget(&self, shapes: &[SvdParts<E>], budget: usize) -> Vec<Vec<bool>> {
        let k = self.init_bgt.saturating_sub(budget);
        if k == 0 || self.ema.is_empty() {
            return shapes.iter().map(|p| vec![true; p.r]).collect();
        }
        let scores = self.triplet_scores(shapes);
        let mut all: Vec<E> = scores.iter().flatten().copied().collect();
        let k = k.min(all.len());
        let (_, threshold, _) = all.select_nth_unstable_by(k - 1, |x, y| {
            x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal)
        });
        let threshold = *threshold;
        (scores.iter())
            .map(|s| s.iter().map(|&x| keep_above(x, threshold)).collect())
            .collect()
    }
}

/// 分数高于阈值的留下。与 PEFT 的 `~(分数 <= 阈值)` 相同：分数是 NaN 时也留下（不与阈值比较出“小于等于”）。
fn keep_above<E: PartialOrd>(x: E, threshold: E) -> bool {
    !matches!(
        x.partial_cmp(&threshold),
        Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
    )
}
// ANCHOR_END: allocator

/// 一步之后 [`RankAllocator::step`] 做了什么。
#[derive(Clone, Debug, PartialEq)]
pub enum Allocation {
    /// 只更新了分数（或什么也没做）。
    Scored,
    /// 按预算剪了一次：各模块留下哪些（新的 rank_pattern）与这时的预算。
    Masked {
        /// 各模块留下的奇异值。
        keep: Vec<Vec<bool>>,
        /// 预算。
        budget: usize,
    },
    /// 最后阶段：按已定的 rank_pattern 再置一次 0。
    Fixed,
}

// ANCHOR: step
impl<E: Real> RankAllocator<E> {
    /// PEFT 的 `update_and_allocate(global_step)`：在优化器更新之后、梯度清零之前调用（`step` 从 0 数；
    /// `grad_scale` 是这一步梯度的裁剪系数，见 [`PeftBert::update_and_allocate`](super::model::PeftBert::update_and_allocate)）。
    /// - step < total_step − tfinal：用更新后的参数与这一步的梯度更新分数；时间表说要剪就按预算剪；
    /// - step = total_step − tfinal：按最后的预算剪最后一次，定下各模块的秩，清掉分数；
    /// - 之后：每步按定下的 `fixed`（上一次剪出的 rank_pattern）把被剪的 E 再置 0（优化器会把它们更新成非 0）。
    pub fn step<D: Kernels<E>>(
        &mut self,
        step: usize,
        sites: &mut [&mut dyn SvdSite<E, D>],
        grads: &Gradients<E, D>,
        grad_scale: f64,
        fixed: Option<&[Vec<bool>]>,
    ) -> Allocation {
        let s = self.settings;
        let end = s.total_step - s.tfinal;
        let shapes: Vec<SvdParts<E>> = sites.iter().map(|x| x.parts(None)).collect();
        let masked = |keep: Vec<Vec<bool>>, sites: &mut [&mut dyn SvdSite<E, D>], budget| {
            for (site, k) in sites.iter_mut().zip(&keep) {
                site.mask(k);
            }
            Allocation::Masked { keep, budget }
        };
        if step < end {
            let g: Vec<SvdParts<E>> = sites.iter().map(|x| x.parts(Some(grads))).collect();
            self.update_ipt(&shapes, &g, grad_scale);
            let (budget, mask) = self.budget_schedule(step);
            if !mask {
                return Allocation::Scored;
            }
            masked(self.keep_for_budget(&shapes, budget), sites, budget)
        } else if step == end {
            let (budget, _) = self.budget_schedule(step);
            let keep = self.keep_for_budget(&shapes, budget);
            self.ema.clear();
            self.settled = true;
            masked(keep, sites, budget)
        } else {
            self.settled = true;
            if let Some(keep) = fixed {
                for (site, k) in sites.iter_mut().zip(keep) {
                    site.mask(k);
                }
            }
            Allocation::Fixed
        }
    }
}
// ANCHOR_END: step

impl<E: Real> RankAllocator<E> {
    /// 滑动平均写成 JSON（恢复训练用）：`{"settled": 秩是否已定, "sites": [每个模块 {"ipt": [A, B, E], "unc": [A, B, E]}]}`。
    pub fn scores_to_json(&self) -> serde_json::Value {
        let list = |v: &[Vec<E>; 3]| -> Vec<Vec<f64>> {
            v.iter()
                .map(|x| x.iter().map(|e| e.to_f64().unwrap_or(f64::NAN)).collect())
                .collect()
        };
        let sites: Vec<_> = (self.ema.iter())
            .map(|s| serde_json::json!({"ipt": list(&s.ipt), "unc": list(&s.unc)}))
            .collect();
        serde_json::json!({"settled": self.settled, "sites": sites})
    }

    /// 滑动平均与各模块的 A、B、E 是否一样大（检查点里读回来的要核对）。
    pub fn check_shapes(&self, shapes: &[SvdParts<E>]) -> Result<(), String> {
        if self.ema.is_empty() {
            return Ok(());
        }
        if self.ema.len() != shapes.len() {
            return Err(format!(
                "有 {} 个模块的分数，模型有 {} 个模块",
                self.ema.len(),
                shapes.len()
            ));
        }
        for (i, (ema, p)) in self.ema.iter().zip(shapes).enumerate() {
            let want = [p.a.len(), p.b.len(), p.e.len()];
            for table in [&ema.ipt, &ema.unc] {
                if table.iter().map(|v| v.len()).ne(want) {
                    return Err(format!(
                        "第 {i} 个模块的分数大小不对，应为 A、B、E 各 {want:?} 个"
                    ));
                }
            }
        }
        Ok(())
    }

    /// 读回 [`scores_to_json`](Self::scores_to_json) 写的滑动平均。
    pub fn scores_from_json(&mut self, v: &serde_json::Value) -> Result<(), String> {
        self.settled = (v.get("settled").and_then(|s| s.as_bool()))
            .ok_or("adalora_scores.settled 应为 true 或 false")?;
        let sites: Vec<serde_json::Map<String, serde_json::Value>> =
            serde_json::from_value(v.get("sites").cloned().unwrap_or_default())
                .map_err(|e| format!("adalora_scores.sites：{e}"))?;
        let three = |site: &serde_json::Map<_, _>, key: &str| -> Result<[Vec<E>; 3], String> {
            let lists: Vec<Vec<f64>> =
                serde_json::from_value(site.get(key).cloned().unwrap_or_default())
                    .map_err(|e| format!("adalora_scores.{key}：{e}"))?;
            let lists: [Vec<f64>; 3] = lists
                .try_into()
                .map_err(|_| format!("adalora_scores.{key} 应有 A、B、E 三项"))?;
            Ok(lists.map(|l| l.into_iter().map(|x| E::from_f64(x).unwrap()).collect()))
        };
        self.ema = (sites.iter())
            .map(|s| {
                Ok(SiteEma {
                    ipt: three(s, "ipt")?,
                    unc: three(s, "unc")?,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bert::hf::{fixtures_dir, load_dir, max_error, reference_batch};
    use crate::checkpoint::Checkpoint;
    use crate::peft::config::{LoraConfig, RankPattern};
    use crate::peft::model::{adapter_key, PeftBert, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
    use crate::transformer::encoder::Mode;
    use dfdx::nn::ZeroGrads;
    use dfdx::optim::{Optimizer, Sgd, SgdConfig};

    type TinyPeft = PeftBert<32, 4, 48, f32, Cpu>;
    const NAME: &str = "tiny-bert-peft-adalora";

    fn reference() -> Checkpoint {
        Checkpoint::read(&fixtures_dir().join(format!("{NAME}-reference.safetensors"))).unwrap()
    }

    fn base(
        dev: &Cpu,
    ) -> (
        crate::bert::model::TinyBert<f32, Cpu>,
        crate::transformer::encoder::EncoderConfig,
    ) {
        let dir = load_dir::<32, 4, 48, f32, Cpu>(dev, &fixtures_dir().join("tiny-bert-3label"))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut config = dir.config;
        // 参考数据把 PEFT 模型里所有 dropout 都关了：训练步才能逐位重放
        config.dropout = 0.0;
        config.attention_dropout = 0.0;
        (dir.params, config)
    }

    /// 参考数据的配置（训练前的样子：还没有 rank_pattern，不是推理模式），从 PEFT 建好时的初值出发。
    fn fresh_from_reference(dev: &Cpu, reference: &Checkpoint) -> TinyPeft {
        let (params, config) = base(dev);
        let mut lora = LoraConfig::read(&fixtures_dir().join(NAME).join(ADAPTER_CONFIG)).unwrap();
        lora.rank_pattern = RankPattern::default();
        lora.inference_mode = false;
        let mut model = TinyPeft::get_peft_model(params, config, lora).unwrap();
        let lora = model.lora.clone();
        reference
            .load_into_with(
                &mut model.adapters,
                &|p: &str| vec![format!("init.{}", adapter_key(&lora, p))],
                &|key| key.starts_with("init."),
            )
            .unwrap();
        model
    }

    // ANCHOR: replay
    /// 与 PEFT 0.21.2 逐步对照（`make_peft_adalora_fixtures.py`：q、v 共 4 个模块，init_r 6 → target_r 2，
    /// tinit 1、tfinal 2、total_step 8，SGD 学习率 0.5）：从同样的初值出发，每步的损失（含正交正则）、
    /// 每步剪枝后 E 的掩码、训练后的 logits、存下的适配器（按 rank_pattern 裁过）都与 PEFT 的一致。
    #[test]
    fn adalora_training_matches_peft_step_by_step() {
        let dev: Cpu = Default::default();
        let reference = reference();
        let mut model = fresh_from_reference(&dev, &reference);
        let (tokens, types, mask) = reference_batch(&reference, &dev);
        let labels: Vec<usize> = (reference.get("labels").unwrap().values().iter())
            .map(|&v| v as usize)
            .collect();
        // 学习率与 PEFT 每步的预算记在参考文件的元数据里
        let bytes =
            std::fs::read(fixtures_dir().join(format!("{NAME}-reference.safetensors"))).unwrap();
        let (_, header) = ::safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = header.metadata().clone().unwrap();
        let lr = meta["lr"].parse::<f64>().unwrap();
        let budgets: Vec<usize> = serde_json::from_str(&meta["budgets"]).unwrap();
        let mut opt = Sgd::new(
            &model.adapters,
            SgdConfig {
                lr,
                momentum: None,
                weight_decay: None,
            },
        );
        let mut grads = model.adapters.alloc_grads();
        let (mut loss_err, mut orth_err) = (0f64, 0f64);
        let mut masks_checked = 0;
        for (step, &want_budget) in budgets.iter().enumerate() {
            let logits = model
                .forward(
                    tokens.clone().traced(grads),
                    Some(types.clone()),
                    &mask,
                    Mode::Train,
                )
                .unwrap()
                .logits;
            let onehot = crate::train::one_hot(&dev, &labels, 3);
            let ce = cross_entropy_with_logits_loss(logits, onehot);
            let reg = model.regularizer().unwrap();
            let orth =
                reg.as_vec()[0] as f64 / model.lora.adalora().unwrap().unwrap().orth_reg_weight;
            let loss = ce + reg;
            loss_err = loss_err.max(max_error(
                &loss.as_vec(),
                &reference,
                &format!("step{step}.loss"),
            ));
            let want = reference.get(&format!("step{step}.orth")).unwrap().values()[0];
            orth_err = orth_err.max((orth - want).abs());
            grads = loss.backward();
            opt.update(&mut model.adapters, &grads).unwrap();
            let result = model.update_and_allocate(step, &grads, 1.0).unwrap();
            if let Allocation::Masked { budget, .. } = &result {
                assert_eq!(*budget, want_budget, "第 {step} 步的预算");
            }
            model.adapters.zero_grads(&mut grads);
            // 每步之后 E 的非零掩码
            for ((name, _), site) in model.plan.modules().iter().zip(model.adapters.svd_sites()) {
                let key = format!("step{step}.mask.base_model.model.{name}.lora_E");
                let ours: Vec<f32> = site
                    .parts(None)
                    .e
                    .iter()
                    .map(|&e| (e != 0.0) as u8 as f32)
                    .collect();
                assert_eq!(max_error(&ours, &reference, &key), 0.0, "{key}");
                masks_checked += 1;
            }
        }
        assert_eq!(masks_checked, 8 * 4);
        let logits = model
            .forward(tokens, Some(types), &mask, Mode::Eval)
            .unwrap()
            .logits
            .as_vec();
        let logits_err = max_error(&logits, &reference, "logits");
        println!(
            "AdaLoRA 8 步：损失最大误差 {loss_err:.2e}，正交正则 {orth_err:.2e}，训练后 logits {logits_err:.2e}；\
             32 个掩码与 PEFT 的相同"
        );
        assert!(loss_err <= 1e-5 && orth_err <= 1e-5 && logits_err <= 1e-5);

        // 存盘：rank_pattern 与 PEFT 写的相同，A、E、B 按它裁过、与 PEFT 存的相差不超过 1e-5
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("adapter");
        model.save_pretrained(&dir, None).unwrap();
        let ours = Checkpoint::read(&dir.join(ADAPTER_WEIGHTS)).unwrap();
        let ours_config = LoraConfig::read(&dir.join(ADAPTER_CONFIG)).unwrap();
        let peft = Checkpoint::read(&fixtures_dir().join(NAME).join(ADAPTER_WEIGHTS)).unwrap();
        let peft_config =
            LoraConfig::read(&fixtures_dir().join(NAME).join(ADAPTER_CONFIG)).unwrap();
        assert_eq!(ours_config.rank_pattern, peft_config.rank_pattern);
        let mut keys: Vec<_> = ours.tensors.keys().collect();
        keys.sort();
        let mut want: Vec<_> = peft.tensors.keys().collect();
        want.sort();
        assert_eq!(keys, want);
        let mut weight_err = 0f64;
        for (key, t) in &ours.tensors {
            let p = peft.get(key).unwrap();
            assert_eq!(t.shape, p.shape, "{key}");
            for (a, b) in t.values().iter().zip(&p.values()) {
                weight_err = weight_err.max((a - b).abs());
            }
        }
        println!(
            "存下的适配器：{} 个张量，与 PEFT 存的最大差 {weight_err:.2e}",
            keys.len()
        );
        assert!(weight_err <= 1e-5, "{weight_err}");
    }
    // ANCHOR_END: replay

    /// PEFT 存的 AdaLoRA 适配器（A、E、B 按 rank_pattern 裁过，秩 3、2、2、1）读进来：logits 与 PEFT 的相同，合并后也一样。
    #[test]
    fn loads_an_adalora_adapter_saved_by_python_peft() {
        let dev: Cpu = Default::default();
        let (params, config) = base(&dev);
        let model = TinyPeft::from_pretrained(params, config, &fixtures_dir().join(NAME)).unwrap();
        let ranks: Vec<usize> = model.plan.modules().iter().map(|(_, s)| s.r).collect();
        assert_eq!(ranks, [3, 2, 2, 1]);
        assert!(
            model.allocator.is_none(),
            "读进来的适配器是推理模式，没有秩分配器"
        );
        let reference = reference();
        let (tokens, types, mask) = reference_batch(&reference, &dev);
        let logits = (model.forward(tokens.clone(), Some(types.clone()), &mask, Mode::Eval))
            .unwrap()
            .logits
            .as_vec();
        let merged = model.merge_and_unload();
        let merged_logits = (merged.forward(&model.config, tokens, Some(types), &mask, Mode::Eval))
            .unwrap()
            .logits
            .as_vec();
        let err = max_error(&logits, &reference, "logits");
        let merged_err = max_error(&merged_logits, &reference, "logits");
        println!("读 PEFT 的 AdaLoRA 适配器：logits 最大误差 {err:.2e}，合并后 {merged_err:.2e}");
        assert!(err <= 1e-5 && merged_err <= 1e-5, "{err} / {merged_err}");
    }

    /// 一个模块全被剪掉（秩 0）时也能存、能读：PEFT 存的是 (0, I)、(0, 1)、(O, 0) 的张量，读回来这个模块没有分支。
    #[test]
    fn a_module_pruned_to_rank_zero_saves_and_loads() {
        let dev: Cpu = Default::default();
        let reference = reference();
        let mut model = fresh_from_reference(&dev, &reference);
        let init_r = model.lora.adalora().unwrap().unwrap().init_r;
        let names: Vec<String> = (model.plan.modules().iter())
            .map(|(m, _)| format!("{m}.lora_E"))
            .collect();
        // E 取非 0 的值（刚建好时是 0，分支不起作用）
        for layer in &mut model.adapters.layers.modules {
            for site in [&mut layer.w_q, &mut layer.w_v] {
                let l = site.lora.as_mut().unwrap();
                let e: Vec<f32> = (0..init_r).map(|i| 0.5 + i as f32).collect();
                l.lora_e = Some(dev.tensor_from_vec(e, (init_r, Const)));
            }
        }
        // 第一个模块一个不留，其余留前两个
        let keep: Vec<Vec<bool>> = (0..names.len())
            .map(|i| (0..init_r).map(|j| i > 0 && j < 2).collect())
            .collect();
        for (site, k) in model.adapters.svd_sites_mut().into_iter().zip(&keep) {
            site.mask(k);
        }
        model.lora.rank_pattern = RankPattern::Kept(crate::peft::config::Pattern(
            names.into_iter().zip(keep).collect(),
        ));
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("adapter");
        model.save_pretrained(&dir, None).unwrap();
        let saved = Checkpoint::read(&dir.join(ADAPTER_WEIGHTS)).unwrap();
        let a = saved
            .get("base_model.model.bert.encoder.layer.0.attention.self.query.lora_A")
            .unwrap();
        assert_eq!(a.shape, [0, 32]);
        let (params, config) = base(&dev);
        let back = TinyPeft::from_pretrained(params, config, &dir).unwrap();
        let ranks: Vec<usize> = back
            .adalora_ranks()
            .unwrap()
            .iter()
            .map(|(_, r)| *r)
            .collect();
        assert_eq!(ranks, [0, 2, 2, 2]);
        let (tokens, types, mask) = reference_batch(&reference, &dev);
        let ours = (model.forward(tokens.clone(), Some(types.clone()), &mask, Mode::Eval))
            .unwrap()
            .logits
            .as_vec();
        let loaded = (back.forward(tokens, Some(types), &mask, Mode::Eval))
            .unwrap()
            .logits
            .as_vec();
        let base_logits = {
            let (params, config) = base(&dev);
            let (tokens, types, mask) = reference_batch(&reference, &dev);
            params
                .forward(&config, tokens, Some(types), &mask, Mode::Eval)
                .unwrap()
                .logits
                .as_vec()
        };
        assert_ne!(ours, base_logits, "留下的奇异值改变了输出");
        assert_eq!(ours, loaded, "剪成 0 的模块读回来后输出不变");
    }

    /// 打分用裁剪后的梯度（HF 的 Trainer 就地裁剪，PEFT 读到的是裁剪后的）：乘系数 c 与直接给 c·g 一样，
    /// 与不乘的不一样。
    #[test]
    fn importance_uses_the_clipped_gradient() {
        let settings = AdaLoraSettings {
            init_r: 2,
            target_r: 1,
            tinit: 0,
            tfinal: 0,
            delta_t: 1,
            beta1: 0.85,
            beta2: 0.85,
            orth_reg_weight: 0.5,
            total_step: 10,
        };
        let parts = |scale: f32| SvdParts::<f32> {
            r: 2,
            fan_in: 3,
            fan_out: 2,
            a: [0.5, -1.0, 2.0, 0.25, 1.5, -0.75]
                .map(|x| x * scale)
                .to_vec(),
            e: [0.3, -0.2].map(|x| x * scale).to_vec(),
            b: [1.0, 2.0, -1.0, 0.5].map(|x| x * scale).to_vec(),
        };
        let params = [parts(1.0)];
        let run = |grads: SvdParts<f32>, scale: f64| {
            let mut alloc = RankAllocator::<f32>::new(settings, &[2]);
            // 两步：第二步起不确定性 Ū 才不为 0
            alloc.update_ipt(&params, std::slice::from_ref(&grads), scale);
            alloc.update_ipt(&params, std::slice::from_ref(&grads), scale);
            alloc
        };
        let clipped = run(parts(0.25), 1.0);
        assert_eq!(run(parts(1.0), 0.25), clipped);
        assert_ne!(run(parts(1.0), 1.0), clipped);
        assert!(clipped.ema[0].unc[2].iter().all(|&u| u > 0.0));
    }

    /// 用 `finetune` 训练 AdaLoRA：在剪枝阶段被杀几次、每次接着训练（分数与 rank_pattern 在检查点里），结果与一口气
    /// 训练完逐位相同；最好的一步只从秩定下之后选；最后的秩加起来正好是预算；total_step 比训练的步数多时报错。
    #[test]
    fn finetune_with_adalora_resumes_exactly_and_ends_on_budget() {
        use crate::train::finetune::{finetune, FinetuneConfig, FinetuneError, FinetuneEvent};
        use crate::train::SequenceClassifier;
        use std::ops::ControlFlow;
        let adalora = |total_step: usize| {
            LoraConfig::from_json(&format!(
                r#"{{"peft_type": "ADALORA", "task_type": "SEQ_CLS", "target_modules": ["query", "value"],
                    "init_r": 4, "target_r": 2, "tinit": 4, "tfinal": 8, "deltaT": 2, "total_step": {total_step},
                    "lora_alpha": 8, "lora_dropout": 0.1}}"#
            ))
            .unwrap()
        };
        let data = crate::train::tests::toy_data(); // 256 条，批大小 16：每轮 16 步
        let cfg = FinetuneConfig {
            epochs: 2,
            batch_size: 16,
            eval_every: 4,
            checkpoint_every: 3,
            optim: crate::train::adamw::AdamWConfig {
                lr: 5e-3,
                ..Default::default()
            },
            ..Default::default()
        };
        let run = |out: &std::path::Path, kills: &[usize], total_step: usize| {
            let mut last = None;
            for (attempt, &kill) in kills.iter().chain(&[usize::MAX]).enumerate() {
                let dev = Cpu::seed_from_u64(0);
                let dir = load_dir::<32, 4, 48, f32, Cpu>(&dev, &fixtures_dir().join("tiny-bert"))
                    .unwrap();
                let mut model =
                    TinyPeft::get_peft_model(dir.params, dir.config, adalora(total_step)).unwrap();
                let got = finetune(
                    &mut model,
                    &dev,
                    &data,
                    &cfg,
                    out,
                    attempt > 0,
                    &mut |e| match e {
                        FinetuneEvent::Step { step, .. } if step == kill => ControlFlow::Break(()),
                        _ => ControlFlow::Continue(()),
                    },
                );
                if let Some(report) = got? {
                    last = Some((report, model));
                }
            }
            Ok::<_, FinetuneError>(last.expect("最后一次没有被杀"))
        };
        let tmp = tempfile::tempdir().unwrap();
        let dir = |name: &str| tmp.path().join(name);
        let (straight_dir, killed_dir) = (dir("straight"), dir("killed"));
        let (want, straight) = run(&straight_dir, &[], 32).unwrap();
        // 被杀于剪枝阶段的两步（第 5–24 步）与定秩之后的一步
        let (got, resumed) = run(&killed_dir, &[9, 17, 27], 32).unwrap();
        let rows = |r: &crate::train::finetune::FinetuneReport| {
            (r.rows.iter())
                .map(|row| (row.step, row.train_loss, row.valid))
                .collect::<Vec<_>>()
        };
        assert_eq!(rows(&got), rows(&want));
        assert_eq!((got.best_step, got.test), (want.best_step, want.test));
        assert_eq!(resumed.lora.rank_pattern, straight.lora.rank_pattern);
        for (a, b) in resumed
            .adapters
            .svd_sites()
            .iter()
            .zip(straight.adapters.svd_sites())
        {
            assert_eq!(a.parts(None), b.parts(None));
        }
        // 秩在第 24 步（从 0 数）定下：评估的第 4、8、…、24 步都不参加评选
        assert!(want.best_step > 24, "最好的一步是第 {} 步", want.best_step);
        assert!(straight.settled());
        let ranks = straight.adalora_ranks().unwrap();
        assert_eq!(
            ranks.iter().map(|(_, r)| r).sum::<usize>(),
            2 * 4,
            "{ranks:?}"
        );
        // 被剪的奇异值在读回的“最好的一步”里也是 0
        let zeros: usize = (straight.adapters.svd_sites().iter())
            .map(|s| s.parts(None).e.iter().filter(|&&e| e == 0.0).count())
            .sum();
        assert_eq!(zeros, 4 * 4 - 2 * 4);
        // total_step 比训练的步数（32）多：预算降不到目标，报错并指出字段
        let err = run(&dir("longer"), &[], 40).map(|_| ()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("total_step = 40") && text.contains("32"),
            "{text}"
        );
    }
}
