//! 4.3 节：从基座的权重算出 LoRA 的初值——PiSSA 与 OLoRA（PEFT 的 `init_lora_weights="pissa"`、`"olora"`）。
//!
//! 默认的初始化让 B = 0：适配器一开始什么也不做，训练从“原模型”出发，A、B 都从随机的小数起步。
//! PiSSA（Meng 等 2024）与 OLoRA（Büyükakyüz 2024）换了个思路：把 W 里“最重要”的一部分搬进 A、B 去训练，基座只留下剩余部分
//!
//! W = W_res + s·B₀A₀，
//!
//! 于是一开始输出照样不变，可训练的恰好是 W 的主要方向。PiSSA 取 W 的前 r 个奇异值与奇异向量（s·B₀A₀ = U_r Σ_r V_rᵀ），
//! OLoRA 取 W = QR 的前 r 列与前 r 行（s·B₀A₀ = s·Q_r R_r，即 W 在前 r 个正交方向上的投影乘 s）。
//! 基座要换成 W_res——这是这两种初始化与其他所有初始化最大的不同：**它们改写了基座**（[`super::adapter::PeftLayer::subtract_initial`]）。
//! 分解用 nalgebra，按 f64 计算。

use std::path::Path;

use dfdx::prelude::*;
use nalgebra::DMatrix;

use super::adapter::{PeftLayer, SiteLora};
use super::config::{InitLoraWeights, LoraConfig, PeftError, RankPattern};
use super::model::{new_adapter, write_adapter, PeftBert};
use crate::basics::tensors::Real;
use crate::bert::model::BertParams;
use crate::kernels::Kernels;

// ANCHOR: from_weight
/// 由线性层的权重 `w`（`(o, i)`，按行存）算出 PiSSA 或 OLoRA 的初值 `(A, B)`：A `(r, i)`、B `(o, r)`，都按行存。
/// `scaling` 是这个模块的缩放系数 s。
///
/// - PiSSA：W = U Σ Vᵀ，A = √(Σ_r/s)·V_rᵀ，B = U_r·√(Σ_r/s)，于是 s·BA = U_r Σ_r V_rᵀ（PEFT 的 `pissa_init`）。
/// - OLoRA：W = QR（约化的 QR 分解），A = R 的前 r 行，B = Q 的前 r 列（PEFT 的 `olora_init`：不除以 s）。
pub fn from_weight<E: Real>(
    w: &[E],
    o: usize,
    i: usize,
    r: usize,
    scaling: f64,
    kind: InitLoraWeights,
) -> (Vec<E>, Vec<E>) {
    let w = DMatrix::from_row_slice(
        o,
        i,
        &w.iter().map(|x| x.to_f64().unwrap()).collect::<Vec<_>>(),
    );
    let (a, b) = match kind {
        InitLoraWeights::Pissa => {
            // nalgebra 的 SVD::new 把奇异值从大到小排好
            let svd = w.svd(true, true);
            let (u, vt) = (svd.u.unwrap(), svd.v_t.unwrap());
            let root = (svd.singular_values.rows(0, r) / scaling).map(f64::sqrt);
            let a = DMatrix::from_diagonal(&root) * vt.rows(0, r);
            let b = u.columns(0, r) * DMatrix::from_diagonal(&root);
            (a, b)
        }
        InitLoraWeights::Olora => {
            let qr = w.qr();
            (
                qr.r().rows(0, r).into_owned(),
                qr.q().columns(0, r).into_owned(),
            )
        }
        other => unreachable!("{other:?} 不从权重算初值"),
    };
    let rows = |m: DMatrix<f64>| -> Vec<E> {
        m.transpose().iter().map(|&x| E::from(x).unwrap()).collect()
    };
    (rows(a), rows(b))
}
// ANCHOR_END: from_weight

// ANCHOR: stack
/// 一个位置上：A′ = [A; A₀]（按行拼），B′ = [B, −B₀]（按列拼），于是 s·B′A′ = s·(BA − B₀A₀)。
fn stack_with_initial<const I: usize, const O: usize, E: Real, D: Kernels<E>>(
    trained: &mut SiteLora<I, O, E, D>,
    initial: &SiteLora<I, O, E, D>,
) {
    let (Some(t), Some(i)) = (trained.lora.as_mut(), initial.lora.as_ref()) else {
        return;
    };
    let r = t.lora_a.shape().0;
    let mut a = t.lora_a.as_vec();
    a.extend(i.lora_a.as_vec());
    let (b, b0) = (t.lora_b.as_vec(), i.lora_b.as_vec());
    let rows = (0..O).flat_map(|o| {
        let minus = b0[o * r..(o + 1) * r].iter().map(|&x| -x);
        b[o * r..(o + 1) * r].iter().copied().chain(minus)
    });
    let dev = t.lora_a.device().clone();
    t.lora_a = dev.tensor_from_vec(a, (2 * r, Const));
    t.lora_b = dev.tensor_from_vec(rows.collect(), (Const, 2 * r));
}
// ANCHOR_END: stack

impl<const M: usize, const H: usize, const F: usize, E, D> PeftBert<M, H, F, E, D>
where
    E: Real + dfdx::tensor::safetensors::SafeDtype,
    D: Kernels<E>,
{
    /// 把训练好的 PiSSA、OLoRA 适配器换算成普通的 LoRA 适配器存下来（PEFT 的
    /// `save_pretrained(…, path_initial_model_for_weight_conversion=…)`）：装到**原**基座 `original` 上输出不变，
    /// 于是它能与别的适配器共用基座。初值 A₀、B₀ 由 `original` 重新算出（与训练开始时的算法相同，结果逐位相同）；
    /// 秩与 α 都翻倍（rsLoRA 时 α 乘 √2，缩放系数不变），`init_lora_weights` 写 `true`。
    pub fn save_pretrained_as_lora(
        &self,
        original: &BertParams<M, H, F, E, D>,
        dir: &Path,
        config_json: Option<&str>,
    ) -> Result<(), PeftError> {
        if !self.lora.init()?.rewrites_base() {
            return Err(PeftError::Field {
                path: None,
                field: "init_lora_weights".into(),
                value: self.lora.init_lora_weights.to_string(),
                reason: "只有 pissa、olora 的适配器需要换算，这个适配器本来就是普通的 LoRA".into(),
            });
        }
        let initial = new_adapter(original, self.lora.clone())?;
        let mut adapters = self.adapters.clone();
        for (t, i) in adapters
            .layers
            .modules
            .iter_mut()
            .zip(&initial.adapters.layers.modules)
        {
            stack_layer(t, i);
        }
        stack_with_initial(&mut adapters.pooler, &initial.adapters.pooler);
        let alpha_factor = if self.lora.use_rslora {
            2f64.sqrt()
        } else {
            2.0
        };
        let mut lora: LoraConfig = self.lora.clone();
        lora.r *= 2;
        lora.lora_alpha *= alpha_factor;
        if let RankPattern::Ranks(p) = &mut lora.rank_pattern {
            p.0.iter_mut().for_each(|(_, r)| *r *= 2);
        }
        lora.alpha_pattern
            .0
            .iter_mut()
            .for_each(|(_, a)| *a *= alpha_factor);
        lora.init_lora_weights = InitLoraWeights::Kaiming.to_value();
        write_adapter(&adapters, &lora, dir, config_json)
    }
}

/// 一层的六个位置逐个换算。
fn stack_layer<const M: usize, const F: usize, E: Real, D: Kernels<E>>(
    trained: &mut PeftLayer<M, F, E, D>,
    initial: &PeftLayer<M, F, E, D>,
) {
    stack_with_initial(&mut trained.w_q, &initial.w_q);
    stack_with_initial(&mut trained.w_k, &initial.w_k);
    stack_with_initial(&mut trained.w_v, &initial.w_v);
    stack_with_initial(&mut trained.w_o, &initial.w_o);
    stack_with_initial(&mut trained.linear1, &initial.linear1);
    stack_with_initial(&mut trained.linear2, &initial.linear2);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bert::hf::{fixtures_dir, load_dir, max_error, reference_batch};
    use crate::checkpoint::Checkpoint;
    use crate::peft::config::LoraConfig;
    use crate::peft::model::PeftBert;
    use crate::transformer::encoder::Mode;

    type TinyPeft = PeftBert<32, 4, 48, f32, Cpu>;

    fn config(init: InitLoraWeights) -> LoraConfig {
        let mut lora = LoraConfig::seq_cls(4, 8.0, &["query", "value", "intermediate.dense"], 0.0);
        lora.init_lora_weights = init.to_value();
        lora
    }

    fn logits(model: &TinyPeft, reference: &Checkpoint, dev: &Cpu) -> Vec<f32> {
        let (tokens, types, mask) = reference_batch(reference, dev);
        (model
            .forward(tokens, Some(types), &mask, Mode::Eval)
            .unwrap())
        .logits
        .as_vec()
    }

    // ANCHOR: init_test
    /// 与 `make_peft_init_fixtures.py` 里 PEFT 0.21.2 的 PiSSA、OLoRA 比：刚建好时 6 个模块的 s·BA 与改写后的基座
    /// W_res（奇异向量、QR 的正负号不唯一，比乘积）、logits；再读 PEFT 存的“训练过”的适配器——读时在原基座上重跑初始化——
    /// logits 与 PEFT 的相差都不超过 1e-5。
    #[test]
    fn pissa_and_olora_match_peft() {
        let dev: Cpu = Default::default();
        let dir = fixtures_dir();
        let reference =
            Checkpoint::read(&dir.join("tiny-bert-peft-init-reference.safetensors")).unwrap();
        let base = load_dir::<32, 4, 48, f32, Cpu>(&dev, &dir.join("tiny-bert-3label")).unwrap();
        for (init, name) in [
            (InitLoraWeights::Pissa, "pissa"),
            (InitLoraWeights::Olora, "olora"),
        ] {
            let model =
                TinyPeft::get_peft_model(base.params.clone(), base.config, config(init)).unwrap();
            for l in 0..2 {
                let (sites, layer) = (
                    &model.adapters.layers.modules[l],
                    &model.base.layers.modules[l],
                );
                let modules = [
                    ("attention.self.query", &sites.w_q, &layer.attention.w_q),
                    ("attention.self.value", &sites.w_v, &layer.attention.w_v),
                ];
                let path = |m: &str| format!("{name}/init/bert.encoder.layer.{l}.{m}");
                let check = |m: &str, delta: Vec<f32>, residual: Vec<f32>| {
                    let err = max_error(&delta, &reference, &format!("{}.delta", path(m)));
                    assert!(err <= 1e-5, "{name} {l} {m} 的 s·BA：{err}");
                    let err = max_error(&residual, &reference, &format!("{}.residual", path(m)));
                    assert!(err <= 1e-5, "{name} {l} {m} 的 W_res：{err}");
                };
                for (m, site, linear) in modules {
                    let lw = site.lora.as_ref().unwrap();
                    let delta = lw.lora_b.clone().matmul(lw.lora_a.clone()) * lw.scaling as f32;
                    check(m, delta.as_vec(), linear.weight.as_vec());
                }
                let lw = sites.linear1.lora.as_ref().unwrap();
                let delta = lw.lora_b.clone().matmul(lw.lora_a.clone()) * lw.scaling as f32;
                check(
                    "intermediate.dense",
                    delta.as_vec(),
                    layer.feed_forward.linear1.weight.as_vec(),
                );
            }
            let err = max_error(
                &logits(&model, &reference, &dev),
                &reference,
                &format!("{name}/init/logits"),
            );
            assert!(err <= 1e-5, "{name} 刚建好时的 logits：{err}");
            let dir = dir.join(format!("tiny-bert-peft-{name}"));
            let loaded = TinyPeft::from_pretrained(base.params.clone(), base.config, &dir).unwrap();
            assert_eq!(loaded.lora.init().unwrap(), init);
            let err = max_error(
                &logits(&loaded, &reference, &dev),
                &reference,
                &format!("{name}/logits"),
            );
            assert!(err <= 1e-5, "{name} 读 PEFT 存的适配器：{err}");
        }
    }
    // ANCHOR_END: init_test

    /// PiSSA 的 B 各列两两正交、长度是 √(σⱼ/s)，A 各行两两正交；OLoRA 的 B 各列是单位正交的。
    #[test]
    fn the_factors_are_orthogonal() {
        let dev = Cpu::seed_from_u64(0);
        let w: Tensor<Rank2<12, 9>, f64, Cpu> = dev.sample_normal();
        let (r, s) = (3, 2.0);
        for kind in [InitLoraWeights::Pissa, InitLoraWeights::Olora] {
            let (a, b) = from_weight(&w.as_vec(), 12, 9, r, s, kind);
            let a = DMatrix::from_row_slice(r, 9, &a);
            let b = DMatrix::from_row_slice(12, r, &b);
            let btb = b.transpose() * &b;
            let sigma = DMatrix::from_row_slice(12, 9, &w.as_vec()).singular_values();
            for j in 0..r {
                for k in 0..r {
                    let want = match (kind, j == k) {
                        (_, false) => 0.0,
                        (InitLoraWeights::Pissa, true) => sigma[j] / s,
                        _ => 1.0,
                    };
                    assert!((btb[(j, k)] - want).abs() < 1e-10, "{kind:?} BᵀB[{j},{k}]");
                }
            }
            if kind == InitLoraWeights::Pissa {
                let aat = &a * a.transpose();
                assert!((aat[(0, 1)]).abs() < 1e-10 && (aat[(0, 0)] - sigma[0] / s).abs() < 1e-10);
            }
        }
    }

    /// gaussian：A 的标准差是 1/r，B = 0；false：B 也是随机的（一开始就改变输出）。
    #[test]
    fn gaussian_and_false_initialise_like_peft() {
        let dev = Cpu::seed_from_u64(1);
        let base = load_dir::<32, 4, 48, f32, Cpu>(&dev, &fixtures_dir().join("tiny-bert-3label"))
            .unwrap();
        let mut lora = LoraConfig::seq_cls(4, 8.0, &["query", "key", "value", "dense"], 0.0);
        lora.init_lora_weights = InitLoraWeights::Gaussian.to_value();
        let model =
            TinyPeft::get_peft_model(base.params.clone(), base.config, lora.clone()).unwrap();
        let site = |m: &TinyPeft, l: usize| m.adapters.layers.modules[l].w_q.lora.clone().unwrap();
        let a: Vec<f32> = (0..2)
            .flat_map(|l| site(&model, l).lora_a.as_vec())
            .collect();
        let sd = (a.iter().map(|x| x * x).sum::<f32>() / a.len() as f32).sqrt();
        assert!((sd - 0.25).abs() < 0.03, "{sd}");
        assert!(site(&model, 0).lora_b.as_vec().iter().all(|&x| x == 0.0));
        lora.init_lora_weights = InitLoraWeights::Uniform.to_value();
        let model = TinyPeft::get_peft_model(base.params, base.config, lora).unwrap();
        let b = site(&model, 0).lora_b.as_vec();
        assert!(b.iter().all(|x| x.abs() <= 0.5) && b.iter().any(|&x| x != 0.0));
    }

    /// 本书没有实现的取值、与 DoRA 一起用、与别的适配器共用基座：各有一句指明字段或适配器的中文错误。
    #[test]
    fn what_is_not_supported_is_refused() {
        for (value, ok) in [
            (r#"true"#, true),
            (r#""OLoRA""#, true),
            (r#""Gaussian""#, true),
            (r#""pissa_niter_4""#, false),
            (r#""loftq""#, false),
            (r#""eva""#, false),
            (r#"1"#, false),
        ] {
            let json = format!(
                r#"{{"peft_type": "LORA", "task_type": "SEQ_CLS", "r": 4, "init_lora_weights": {value}}}"#
            );
            match LoraConfig::from_json(&json) {
                Ok(_) => assert!(ok, "{value} 应被拒绝"),
                Err(e) => {
                    assert!(!ok, "{value}：{e}");
                    assert!(e.to_string().contains("字段 init_lora_weights"), "{e}");
                }
            }
        }
        let json = r#"{"peft_type": "LORA", "task_type": "SEQ_CLS", "init_lora_weights": "pissa", "use_dora": true}"#;
        let err = LoraConfig::from_json(json).unwrap_err().to_string();
        assert!(
            err.contains("init_lora_weights") && err.contains("use_dora"),
            "{err}"
        );

        let dev: Cpu = Default::default();
        let dir = fixtures_dir();
        let base = load_dir::<32, 4, 48, f32, Cpu>(&dev, &dir.join("tiny-bert-3label")).unwrap();
        let mut model = TinyPeft::from_pretrained(
            base.params.clone(),
            base.config,
            &dir.join("tiny-bert-peft-pissa"),
        )
        .unwrap();
        let err = (model.load_adapter(&dir.join("tiny-bert-peft-qkvd"), "qkvd"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("改写了基座"), "{err}");
        let mut model =
            TinyPeft::from_pretrained(base.params, base.config, &dir.join("tiny-bert-peft-qkvd"))
                .unwrap();
        let err = (model.load_adapter(&dir.join("tiny-bert-peft-olora"), "olora"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("改写了基座"), "{err}");
        assert_eq!(model.adapter_names(), ["default"]);
    }

    /// 训练过的 PiSSA、OLoRA 适配器换算成普通 LoRA：装到原基座上 logits 不变；秩、α 翻倍，init_lora_weights 为 true；
    /// 换算后可以与别的适配器共用基座。普通 LoRA 不需要换算，报错。
    #[test]
    fn a_trained_pissa_adapter_converts_to_plain_lora() {
        let dev = Cpu::seed_from_u64(7);
        let dir = fixtures_dir();
        let base = load_dir::<32, 4, 48, f32, Cpu>(&dev, &dir.join("tiny-bert-3label")).unwrap();
        let reference =
            Checkpoint::read(&dir.join("tiny-bert-peft-reference.safetensors")).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        for init in [InitLoraWeights::Pissa, InitLoraWeights::Olora] {
            let mut model =
                TinyPeft::get_peft_model(base.params.clone(), base.config, config(init)).unwrap();
            // “训练”：A、B 各加一点随机数
            for layer in model.adapters.layers.modules.iter_mut() {
                for site in [&mut layer.w_q, &mut layer.w_v] {
                    let l = site.lora.as_mut().unwrap();
                    l.lora_a = l.lora_a.clone() + dev.sample_normal_like(l.lora_a.shape()) * 0.1;
                    l.lora_b = l.lora_b.clone() + dev.sample_normal_like(l.lora_b.shape()) * 0.1;
                }
            }
            let trained = logits(&model, &reference, &dev);
            let out = tmp.path().join(format!("to-lora-{init:?}"));
            model
                .save_pretrained_as_lora(&base.params, &out, None)
                .unwrap();
            let mut back =
                TinyPeft::from_pretrained(base.params.clone(), base.config, &out).unwrap();
            assert_eq!(
                (back.lora.init().unwrap(), back.lora.r, back.lora.lora_alpha),
                (InitLoraWeights::Kaiming, 8, 16.0)
            );
            let gap = max_gap(&logits(&back, &reference, &dev), &trained);
            assert!(gap <= 1e-5, "{init:?}：{gap}");
            back.load_adapter(&dir.join("tiny-bert-peft-qkvd"), "qkvd")
                .unwrap();
        }
        let plain = TinyPeft::get_peft_model(
            base.params.clone(),
            base.config,
            config(InitLoraWeights::Kaiming),
        )
        .unwrap();
        let err = (plain.save_pretrained_as_lora(&base.params, &tmp.path().join("never"), None))
            .unwrap_err()
            .to_string();
        assert!(err.contains("本来就是普通的 LoRA"), "{err}");
    }

    fn max_gap(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }
}
