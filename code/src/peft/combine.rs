//! 4.6 节：把同一个基座上的几个 LoRA 适配器加权合成一个——PEFT 的 `add_weighted_adapter` 的三种精确或常用的方式：
//!
//! - `cat`：把各自的 A、B 拼起来，秩是各秩之和；合成的 ΔW 正好是 Σ wᵢ·ΔWᵢ（ΔWᵢ = sᵢ·BᵢAᵢ）。
//! - `linear`：A = Σ sign(cᵢ)·√|cᵢ|·Aᵢ、B = Σ √|cᵢ|·Bᵢ（cᵢ = wᵢ·sᵢ），秩不变；BA 里多出 i≠j 的交叉项，只是近似。
//! - `svd`：先算 ΔW = Σ wᵢ·ΔWᵢ，再取它的最优秩 k 近似（奇异值分解，B = U_k·Σ_k，A = V_kᵀ）。
//!
//! 合成的配置沿用第一个适配器的，改为 r = α = 新的秩（缩放系数 1）、`target_modules` 取并集、不要 `rank_pattern`
//! 与 `alpha_pattern`——与 PEFT 相同。与 PEFT 不同的地方：DoRA、PiSSA、OLoRA 的适配器拒绝合成；重名报错（PEFT 什么也不做就返回）；
//! 别的适配器在第一个适配器的 `layers_to_transform` 之外的层上有 LoRA 时报错（PEFT 悄悄丢掉）；另有两处影响结果，在文档与测试里说明：
//! 1. PEFT 沿用第一个适配器的 `use_rslora`，于是合成的适配器缩放系数成了 k/√k = √k，ΔW 被放大 √k 倍；这里写
//!    `use_rslora = false`，缩放系数是 1，ΔW 与上面的公式一致（存出的文件 PEFT 读进去结果相同）。
//! 2. PEFT 不许两个以上带着分类头副本（`modules_to_save`）的适配器合成，只有一个带时给合成的适配器一份**基座的**
//!    分类头（没训练过的）。本书的分类适配器都带分类头，所以这里取第一个适配器的分类头（与整个训练的池化层的副本）。
//!
//! DoRA 适配器不能这样合成（长度向量是按合成前的方向算的）：直接报错。奇异值分解用 nalgebra。

use nalgebra::DMatrix;

use super::adapter::{PeftAdapters, PeftLayer, SiteLora};
use super::config::{LoraConfig, PeftError, TargetModules, LAYER_LINEARS, POOLER_DENSE};
use super::model::{new_adapter, PeftBert};
use crate::basics::tensors::Real;
use crate::kernels::Kernels;
use dfdx::prelude::*;

// ANCHOR: combination
/// 合成的方式（PEFT 的 `combination_type`）。
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Combination {
    /// 拼接：秩为各秩之和，ΔW 精确等于 Σ wᵢ·ΔWᵢ。
    Cat,
    /// 线性：各适配器的秩须相同，结果的秩不变；有交叉项，只是近似。
    Linear,
    /// 奇异值分解：Σ wᵢ·ΔWᵢ 的最优秩 `rank` 近似（`None` 时取各秩中最大的，PEFT 的 `svd_rank`）。
    Svd {
        /// 合成后的秩。
        rank: Option<usize>,
    },
}
// ANCHOR_END: combination

/// 一个位置上参与合成的适配器：它在这里的 LoRA（没有时为 `None`）与权重 wᵢ。
type Parts<'a, const I: usize, const O: usize, E, D> = Vec<(&'a SiteLora<I, O, E, D>, f64)>;

fn to_f64<E: Real>(v: Vec<E>) -> Vec<f64> {
    v.into_iter().map(|x| x.to_f64().unwrap()).collect()
}

// ANCHOR: combine_site
/// 按 `how` 合成一个线性层 `I → O` 上的 LoRA，写进 `out`（它的秩 k 与缩放系数 1 已由合成的配置定好）。
/// `module` 是 PEFT 的模块名（报错用）。
fn combine_site<const I: usize, const O: usize, E: Real, D: Kernels<E>>(
    out: &mut SiteLora<I, O, E, D>,
    parts: Parts<'_, I, O, E, D>,
    how: Combination,
    module: &str,
) -> Result<(), String> {
    let parts: Vec<_> = parts
        .into_iter()
        .filter_map(|(site, w)| site.lora.as_ref().map(|l| (l, w)))
        .collect();
    let Some(target) = out.lora.as_mut() else {
        return match parts.is_empty() {
            true => Ok(()),
            false => Err(format!(
                "{module} 上有 LoRA，可合成的配置（沿用第一个适配器的 layers_to_transform 等）不含这个模块"
            )),
        };
    };
    let k = target.lora_a.shape().0;
    // PEFT 先把新的 A、B 清零：这个位置上谁都没有 LoRA 时就是 0
    let mut a = vec![0.0; k * I]; // (k, I)，按行
    let mut b = vec![0.0; O * k]; // (O, k)，按行
    match how {
        Combination::Cat => {
            let mut offset = 0;
            for (l, w) in &parts {
                let r = l.lora_a.shape().0;
                let c = w * l.scaling;
                for (dst, src) in a[offset * I..].iter_mut().zip(to_f64(l.lora_a.as_vec())) {
                    *dst = c * src;
                }
                let lb = to_f64(l.lora_b.as_vec());
                for o in 0..O {
                    b[o * k + offset..o * k + offset + r].copy_from_slice(&lb[o * r..(o + 1) * r]);
                }
                offset += r;
            }
        }
        Combination::Linear => {
            for (l, w) in &parts {
                let r = l.lora_a.shape().0;
                if r != k {
                    return Err(format!(
                        "{module} 上的秩是 {r}，linear 要求每个适配器在每个模块上的秩都是 {k}"
                    ));
                }
                let c = w * l.scaling;
                let (ca, cb) = (c.signum() * c.abs().sqrt(), c.abs().sqrt());
                for (dst, src) in a.iter_mut().zip(to_f64(l.lora_a.as_vec())) {
                    *dst += ca * src;
                }
                for (dst, src) in b.iter_mut().zip(to_f64(l.lora_b.as_vec())) {
                    *dst += cb * src;
                }
            }
        }
        Combination::Svd { .. } => {
            // k ≤ min(I, O) 已由合成的配置核对过（LoraConfig::plan）
            // ΔW = Σ wᵢ·sᵢ·BᵢAᵢ，(O, I)
            let mut delta = DMatrix::<f64>::zeros(O, I);
            for (l, w) in &parts {
                let r = l.lora_a.shape().0;
                let la = DMatrix::from_row_slice(r, I, &to_f64(l.lora_a.as_vec()));
                let lb = DMatrix::from_row_slice(O, r, &to_f64(l.lora_b.as_vec()));
                delta += (lb * la) * (w * l.scaling);
            }
            // nalgebra 的 SVD::new 把奇异值从大到小排好
            let svd = delta.svd(true, true);
            let (u, vt) = (svd.u.unwrap(), svd.v_t.unwrap());
            for j in 0..k {
                let s = svd.singular_values[j];
                for o in 0..O {
                    b[o * k + j] = u[(o, j)] * s;
                }
                for i in 0..I {
                    a[j * I + i] = vt[(j, i)];
                }
            }
        }
    }
    let dev = target.lora_a.device().clone();
    let cast = |v: Vec<f64>| v.into_iter().map(|x| E::from(x).unwrap()).collect();
    target.lora_a = dev.tensor_from_vec(cast(a), (k, Const));
    target.lora_b = dev.tensor_from_vec(cast(b), (Const, k));
    Ok(())
}
// ANCHOR_END: combine_site

/// 一层的六个线性层逐个合成（第 `l` 层）。
fn combine_layer<const M: usize, const F: usize, E: Real, D: Kernels<E>>(
    out: &mut PeftLayer<M, F, E, D>,
    parts: &[(&PeftLayer<M, F, E, D>, f64)],
    how: Combination,
    l: usize,
) -> Result<(), String> {
    let name = |j: usize| format!("bert.encoder.layer.{l}.{}", LAYER_LINEARS[j]);
    macro_rules! site {
        ($field:ident, $j:expr) => {
            combine_site(
                &mut out.$field,
                parts.iter().map(|(p, w)| (&p.$field, *w)).collect(),
                how,
                &name($j),
            )?
        };
    }
    site!(w_q, 0);
    site!(w_k, 1);
    site!(w_v, 2);
    site!(w_o, 3);
    site!(linear1, 4);
    site!(linear2, 5);
    Ok(())
}

impl<const M: usize, const H: usize, const F: usize, E, D> PeftBert<M, H, F, E, D>
where
    E: Real + dfdx::tensor::safetensors::SafeDtype,
    D: Kernels<E>,
{
    /// 名为 `name` 的适配器的参数与配置（正在用的或存着的）。
    fn adapter_by_name(
        &self,
        name: &str,
    ) -> Result<(&PeftAdapters<M, F, E, D>, &LoraConfig), PeftError> {
        if name == self.active {
            return Ok((&self.adapters, &self.lora));
        }
        (self.others.get(name))
            .map(|s| (&s.adapters, &s.lora))
            .ok_or_else(|| PeftError::Adapter {
                name: name.into(),
                reason: format!(
                    "没有这个适配器；已载入的：{}",
                    self.adapter_names().join("、")
                ),
            })
    }

    // ANCHOR: add_weighted_adapter
    /// PEFT 的 `add_weighted_adapter(adapters, weights, adapter_name, combination_type)`：把 `adapters`
    /// 按权重 `weights` 合成一个新适配器 `name`，装到同一个基座上（不切换过去，用 [`set_adapter`](Self::set_adapter)）。
    /// 与 PEFT 的两处不同见本模块的文档：不沿用 `use_rslora`；分类头取第一个适配器的。
    pub fn add_weighted_adapter(
        &mut self,
        adapters: &[&str],
        weights: &[f64],
        name: &str,
        how: Combination,
    ) -> Result<(), PeftError> {
        let fail = |who: &str, reason: String| PeftError::Adapter {
            name: who.into(),
            reason,
        };
        self.check_new_name(name)?;
        if adapters.is_empty() || adapters.len() != weights.len() {
            let reason = format!(
                "要合成 {} 个适配器，却给了 {} 个权重",
                adapters.len(),
                weights.len()
            );
            return Err(fail(name, reason));
        }
        let inputs = (adapters.iter())
            .map(|a| self.adapter_by_name(a))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(a) = (adapters.iter().zip(&inputs)).find(|(_, (_, l))| l.peft_type == "ADALORA")
        {
            let reason = "AdaLoRA 的适配器不能加权合成（PEFT 的 add_weighted_adapter 同样拒绝）：它的增量是 B·diag(E)·A".into();
            return Err(fail(a.0, reason));
        }
        if let Some(a) = adapters.iter().zip(&inputs).find(|(_, (_, l))| l.use_dora) {
            let reason =
                "use_dora = true 的适配器不能加权合成：长度向量 m 是按合成前的方向算的".into();
            return Err(fail(a.0, reason));
        }
        let rewrites = |l: &LoraConfig| l.init().is_ok_and(|i| i.rewrites_base());
        if let Some(a) = adapters.iter().zip(&inputs).find(|(_, (_, l))| rewrites(l)) {
            let reason = "init_lora_weights 为 pissa、olora 的适配器改写了基座：合成的配置沿用它的初始化，建新适配器时会再改写一次共用的基座".into();
            return Err(fail(a.0, reason));
        }
        // 只有一个适配器时 PEFT 只用 linear
        let how = if inputs.len() == 1 {
            Combination::Linear
        } else {
            how
        };
        // 每个适配器的秩按配置里最大的算（rank_pattern 里的也算上）
        let ranks: Vec<usize> = (inputs.iter())
            .map(|(_, l)| {
                l.rank_pattern
                    .ranks()
                    .iter()
                    .map(|(_, r)| *r)
                    .fold(l.r, usize::max)
            })
            .collect();
        let new_rank = match how {
            Combination::Cat => ranks.iter().sum(),
            Combination::Linear if ranks.iter().any(|&r| r != ranks[0]) => {
                let reason =
                    format!("linear 要求各适配器的秩 r 相同，这里是 {ranks:?}；用 cat 或 svd");
                return Err(fail(name, reason));
            }
            Combination::Linear => ranks[0],
            Combination::Svd { rank } => rank.unwrap_or_else(|| *ranks.iter().max().unwrap()),
        };
        let target_modules = match inputs[0].1.target_modules {
            TargetModules::Names(_) => {
                let mut names = Vec::new();
                for (a, (_, l)) in adapters.iter().zip(&inputs) {
                    let TargetModules::Names(n) = &l.target_modules else {
                        return Err(fail(
                            a,
                            "target_modules 一个是名字的列表、一个是正则表达式，不能合成".into(),
                        ));
                    };
                    names.extend(n.iter().cloned());
                }
                names.sort();
                names.dedup();
                TargetModules::Names(names)
            }
            TargetModules::Regex(_) => {
                let mut parts = Vec::new();
                for (a, (_, l)) in adapters.iter().zip(&inputs) {
                    let TargetModules::Regex(r) = &l.target_modules else {
                        return Err(fail(
                            a,
                            "target_modules 一个是名字的列表、一个是正则表达式，不能合成".into(),
                        ));
                    };
                    parts.push(format!("({r})"));
                }
                TargetModules::Regex(parts.join("|"))
            }
        };
        let mut lora = inputs[0].1.clone();
        lora.r = new_rank;
        lora.lora_alpha = new_rank as f64;
        lora.target_modules = target_modules;
        lora.rank_pattern = Default::default();
        lora.alpha_pattern = Default::default();
        lora.use_rslora = false;
        // 基座量化时（4.5 节）这里的权重是零占位：不要紧——能合成的适配器不用基座的权重初始化（DoRA、PiSSA、OLoRA
        // 上面已拒绝），A、B、分类头与池化层的副本下面都换成合成的结果
        let mut combined = new_adapter(&self.base, lora)?;
        let out = &mut combined.adapters;
        for (l, layer) in out.layers.modules.iter_mut().enumerate() {
            let parts: Vec<_> = (inputs.iter().zip(weights))
                .map(|((p, _), w)| (&p.layers.modules[l], *w))
                .collect();
            combine_layer(layer, &parts, how, l).map_err(|e| fail(name, e))?;
        }
        let parts = (inputs.iter().zip(weights)).map(|((p, _), w)| (&p.pooler, *w));
        combine_site(&mut out.pooler, parts.collect(), how, POOLER_DENSE)
            .map_err(|e| fail(name, e))?;
        out.head = inputs[0].0.head.clone();
        out.pooler_copy = inputs[0].0.pooler_copy.clone();
        self.others.insert(name.into(), combined);
        Ok(())
    }
    // ANCHOR_END: add_weighted_adapter
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bert::hf::{fixtures_dir, load_dir, max_error, reference_batch};
    use crate::checkpoint::Checkpoint;
    use crate::transformer::encoder::Mode;

    type TinyPeft = PeftBert<32, 4, 48, f32, Cpu>;

    fn two_adapters(dev: &Cpu) -> TinyPeft {
        let dir = fixtures_dir();
        let base = load_dir::<32, 4, 48, f32, Cpu>(dev, &dir.join("tiny-bert-3label")).unwrap();
        let mut model = TinyPeft::from_pretrained(
            base.params,
            base.config,
            &dir.join("tiny-bert-peft-combine-first"),
        )
        .unwrap();
        model.active = "first".into();
        model
            .load_adapter(&dir.join("tiny-bert-peft-combine-second"), "second")
            .unwrap();
        model
    }

    fn logits(model: &TinyPeft, reference: &Checkpoint, dev: &Cpu) -> Vec<f32> {
        let (tokens, types, mask) = reference_batch(reference, dev);
        (model
            .forward(tokens, Some(types), &mask, Mode::Eval)
            .unwrap())
        .logits
        .as_vec()
    }

    // ANCHOR: combine_test
    /// 与 `make_peft_combine_fixtures.py` 里 PEFT 0.21.2 的 add_weighted_adapter 比：cat、linear 的每个 A、B，
    /// svd 的 ΔW = s·BA（奇异向量的正负号不唯一，比乘积），与合成适配器的 logits，都相差不超过 1e-5；
    /// 配置的秩与 PEFT 相同；存盘再读回，logits 不变。
    #[test]
    fn weighted_combinations_match_peft() {
        let dev: Cpu = Default::default();
        let mut model = two_adapters(&dev);
        let reference =
            Checkpoint::read(&fixtures_dir().join("tiny-bert-peft-combine-reference.safetensors"))
                .unwrap();
        let cases = [
            ("cat", Combination::Cat, 8),
            ("linear", Combination::Linear, 4),
            ("svd", Combination::Svd { rank: Some(3) }, 3),
        ];
        let tmp = tempfile::tempdir().unwrap();
        for (name, how, rank) in cases {
            model
                .add_weighted_adapter(&["first", "second"], &[0.7, -0.4], name, how)
                .unwrap();
            model.set_adapter(name).unwrap();
            assert_eq!((model.lora.r, model.lora.lora_alpha), (rank, rank as f64));
            let err = max_error(
                &logits(&model, &reference, &dev),
                &reference,
                &format!("logits.{name}"),
            );
            assert!(err <= 1e-5, "{name} 的 logits：{err}");
            let dir = tmp.path().join(name);
            model.save_pretrained(&dir, None).unwrap();
            let saved = Checkpoint::read(&dir.join("adapter_model.safetensors")).unwrap();
            let mut checked = 0;
            for key in saved
                .tensors
                .keys()
                .filter(|k| k.ends_with("lora_A.weight"))
            {
                let stem = key.trim_end_matches(".lora_A.weight");
                let f32s = |k: &str| -> Vec<f32> {
                    saved
                        .get(k)
                        .unwrap()
                        .values()
                        .iter()
                        .map(|&x| x as f32)
                        .collect()
                };
                let (a, b) = (f32s(key), f32s(&format!("{stem}.lora_B.weight")));
                if name == "svd" {
                    let (o, i) = (b.len() / rank, a.len() / rank);
                    let delta: Vec<f32> = (0..o * i)
                        .map(|n| {
                            (0..rank)
                                .map(|j| b[n / i * rank + j] * a[j * i + n % i])
                                .sum()
                        })
                        .collect();
                    let err = max_error(&delta, &reference, &format!("svd/{stem}.delta"));
                    assert!(err <= 1e-5, "{stem} 的 ΔW：{err}");
                } else {
                    for (ours, part) in [(&a, "lora_A"), (&b, "lora_B")] {
                        let err =
                            max_error(ours, &reference, &format!("{name}/{stem}.{part}.weight"));
                        assert!(err <= 1e-5, "{name} {stem} {part}：{err}");
                    }
                }
                checked += 1;
            }
            assert_eq!(checked, 6, "两层 × query、value、intermediate.dense");
            let back = TinyPeft::from_pretrained(model.base.clone(), model.config, &dir).unwrap();
            assert_eq!(
                logits(&back, &reference, &dev),
                logits(&model, &reference, &dev)
            );
        }
        assert_eq!(
            model.adapter_names(),
            ["svd", "cat", "first", "linear", "second"]
        );
    }
    // ANCHOR_END: combine_test

    /// 只合成一个适配器、权重 1：不论原来的缩放系数是 α/r 还是 rsLoRA 的 α/√r，输出都不变（PEFT 沿用 use_rslora，
    /// 缩放成了 √r，输出会变；本书不沿用）。
    #[test]
    fn one_adapter_with_weight_one_changes_nothing() {
        let dev: Cpu = Default::default();
        let dir = fixtures_dir();
        let base = load_dir::<32, 4, 48, f32, Cpu>(&dev, &dir.join("tiny-bert")).unwrap();
        let mut model =
            TinyPeft::from_pretrained(base.params, base.config, &dir.join("tiny-bert-peft-layers"))
                .unwrap();
        assert!(model.lora.use_rslora);
        let reference =
            Checkpoint::read(&dir.join("tiny-bert-peft-reference.safetensors")).unwrap();
        let before = logits(&model, &reference, &dev);
        model
            .add_weighted_adapter(&["default"], &[1.0], "copy", Combination::Cat)
            .unwrap();
        model.set_adapter("copy").unwrap();
        assert!(!model.lora.use_rslora);
        let after = logits(&model, &reference, &dev);
        let gap = before
            .iter()
            .zip(&after)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(gap <= 1e-6, "{gap}");
    }

    /// 不能合成的情形各有一句指明适配器与原因的中文错误，且什么也不添。
    #[test]
    fn what_cannot_be_combined_is_refused() {
        let dev: Cpu = Default::default();
        let mut model = two_adapters(&dev);
        let dir = fixtures_dir();
        model
            .load_adapter(&dir.join("tiny-bert-peft-pattern"), "pattern")
            .unwrap();
        model
            .load_adapter(&dir.join("tiny-bert-peft-dora"), "dora")
            .unwrap();
        let names = model.adapter_names();
        let cases: [(&[&str], &[f64], Combination, &str); 5] = [
            (
                &["first", "pattern"],
                &[1.0, 1.0],
                Combination::Linear,
                "linear 要求各适配器的秩 r 相同",
            ),
            (
                &["first", "dora"],
                &[1.0, 1.0],
                Combination::Cat,
                "use_dora = true",
            ),
            (
                &["first", "情感"],
                &[1.0, 1.0],
                Combination::Cat,
                "没有这个适配器",
            ),
            (
                &["first", "second"],
                &[1.0],
                Combination::Cat,
                "却给了 1 个权重",
            ),
            (
                &["first", "second"],
                &[1.0, 1.0],
                Combination::Svd { rank: Some(40) },
                "秩不能超过它",
            ),
        ];
        for (adapters, weights, how, expected) in cases {
            let err = model
                .add_weighted_adapter(adapters, weights, "new", how)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{err}");
            assert_eq!(model.adapter_names(), names);
        }
        let err = (model.add_weighted_adapter(&["first"], &[1.0], "second", Combination::Cat))
            .unwrap_err()
            .to_string();
        assert!(err.contains("这个名字已经有适配器了"), "{err}");
        // PiSSA 的适配器改写了基座：连只合成它自己也拒绝
        let base = load_dir::<32, 4, 48, f32, Cpu>(&dev, &dir.join("tiny-bert-3label")).unwrap();
        let mut pissa =
            TinyPeft::from_pretrained(base.params, base.config, &dir.join("tiny-bert-peft-pissa"))
                .unwrap();
        let err = (pissa.add_weighted_adapter(&["default"], &[1.0], "copy", Combination::Linear))
            .unwrap_err()
            .to_string();
        assert!(err.contains("改写了基座"), "{err}");
    }
}
