//! 4.5 节：QLoRA 式的训练——冻结的基座量化存放（int8 或 4 位 NF4），LoRA 照常是 f32，前向时按需还原。
//!
//! - [`format`]：两种量化格式本身（量化、还原、占多少字节）；
//! - [`QuantBase`]：把一个 BERT 基座里每层的六个投影与池化层的 dense 量化，原来的权重换成共享的零占位，
//!   前向经钩子（[`crate::transformer::hooks::AttentionHooks::attention_weight`]）取按需还原的权重。
//!
//! 嵌入表、LayerNorm、偏置与分类头不量化（bitsandbytes 也只替换 `nn.Linear` 的权重；分类头由
//! `llm_int8_skip_modules` 留在全精度，况且 PEFT 训练的是它的副本）。

pub mod format;

use std::sync::Arc;

use dfdx::prelude::*;

use crate::basics::tensors::Real;
use crate::bert::model::BertParams;
use crate::kernels::LazyWeight;
use crate::transformer::hooks::Proj;
pub use format::{QuantData, QuantKind, QuantMatrix, NF4_BLOCK, NF4_CODE};

impl<E: Real> LazyWeight<E> for QuantMatrix {
    fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
    fn materialize(&self) -> Vec<E> {
        self.dequantize()
            .into_iter()
            .map(|v| E::from(v).unwrap())
            .collect()
    }
}

/// 量化失败：哪个张量里有非有限数。
#[derive(Clone, Debug, PartialEq)]
pub struct QuantError {
    /// 张量在 Hugging Face 检查点里的名字。
    pub tensor: String,
    /// 出问题的数。
    pub detail: format::NonFinite,
}

impl std::fmt::Display for QuantError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}：第 {} 个数是 {}，不能量化（检查点可能已损坏）",
            self.tensor, self.detail.index, self.detail.value
        )
    }
}

impl std::error::Error for QuantError {}

// ANCHOR: quant_base
/// 量化存放的基座权重：每层六个投影（次序同 [`Proj::ALL`]），以及池化层的 dense。
#[derive(Clone, Debug)]
pub struct QuantBase<E> {
    /// 格式。
    pub kind: QuantKind,
    /// 第 i 层的六个权重。
    pub layers: Vec<[Arc<dyn LazyWeight<E>>; 6]>,
    /// 池化层 dense 的权重。
    pub pooler: Arc<dyn LazyWeight<E>>,
    /// 量化数据占的字节（码 + absmax）。
    pub stored_bytes: usize,
    /// 同样这些权重以 f32 存放要占的字节。
    pub f32_bytes: usize,
}
// ANCHOR_END: quant_base

/// HF 检查点里第 i 层投影 `p` 的权重名（出错时报给读者）。
fn hf_name(layer: usize, p: Proj) -> String {
    let module = match p {
        Proj::Query => "attention.self.query",
        Proj::Key => "attention.self.key",
        Proj::Value => "attention.self.value",
        Proj::Output => "attention.output.dense",
        Proj::Up => "intermediate.dense",
        Proj::Down => "output.dense",
    };
    format!("bert.encoder.layer.{layer}.{module}.weight")
}

// ANCHOR: quantize_base
impl<E: Real> QuantBase<E> {
    /// 量化 `base` 里每层的六个投影与池化层的 dense：量化数据存进返回值，`base` 里原来的权重换成
    /// 同形状的**共享**零张量（所有层共用一份，几乎不占内存）。此后 `base` 只能与返回值一起用：
    /// 前向经 [`crate::peft::PeftBert`] 的钩子取按需还原的权重，要全精度的基座时用 [`restore`](Self::restore)。
    pub fn quantize<const M: usize, const H: usize, const F: usize, D: Device<E>>(
        base: &mut BertParams<M, H, F, E, D>,
        kind: QuantKind,
    ) -> Result<Self, QuantError> {
        let dev = base.classifier.weight.device().clone();
        let (zero_mm, zero_fm, zero_mf) = (
            dev.zeros::<Rank2<M, M>>(),
            dev.zeros::<Rank2<F, M>>(),
            dev.zeros::<Rank2<M, F>>(),
        );
        let (mut stored_bytes, mut f32_bytes) = (0, 0);
        let mut quantize = |name: String, w: Vec<E>, rows: usize, cols: usize| {
            let w: Vec<f32> = w.into_iter().map(|v| v.to_f32().unwrap()).collect();
            let m = QuantMatrix::quantize(kind, &w, rows, cols).map_err(|detail| QuantError {
                tensor: name,
                detail,
            })?;
            stored_bytes += m.stored_bytes();
            f32_bytes += 4 * rows * cols;
            Ok::<Arc<dyn LazyWeight<E>>, QuantError>(Arc::new(m))
        };
        let mut layers = Vec::with_capacity(base.layers.modules.len());
        for (i, layer) in base.layers.modules.iter_mut().enumerate() {
            let attn = &mut layer.attention;
            let ffn = &mut layer.feed_forward;
            let name = |p| hf_name(i, p);
            let weights = [
                quantize(name(Proj::Query), attn.w_q.weight.as_vec(), M, M)?,
                quantize(name(Proj::Key), attn.w_k.weight.as_vec(), M, M)?,
                quantize(name(Proj::Value), attn.w_v.weight.as_vec(), M, M)?,
                quantize(name(Proj::Output), attn.w_o.weight.as_vec(), M, M)?,
                quantize(name(Proj::Up), ffn.linear1.weight.as_vec(), F, M)?,
                quantize(name(Proj::Down), ffn.linear2.weight.as_vec(), M, F)?,
            ];
            for w in [&mut attn.w_q, &mut attn.w_k, &mut attn.w_v, &mut attn.w_o] {
                w.weight = zero_mm.clone();
            }
            ffn.linear1.weight = zero_fm.clone();
            ffn.linear2.weight = zero_mf.clone();
            layers.push(weights);
        }
        let pooler = quantize(
            "bert.pooler.dense.weight".into(),
            base.pooler.weight.as_vec(),
            M,
            M,
        )?;
        base.pooler.weight = zero_mm;
        Ok(Self {
            kind,
            layers,
            pooler,
            stored_bytes,
            f32_bytes,
        })
    }

    /// 把还原的权重写回 `base`（合并适配器、存成普通模型、从基座的权重初始化新适配器之前）。
    pub fn restore<const M: usize, const H: usize, const F: usize, D: Device<E>>(
        &self,
        base: &mut BertParams<M, H, F, E, D>,
    ) {
        let dev = base.classifier.weight.device().clone();
        for (layer, w) in base.layers.modules.iter_mut().zip(&self.layers) {
            let attn = &mut layer.attention;
            for (linear, w) in [&mut attn.w_q, &mut attn.w_k, &mut attn.w_v, &mut attn.w_o]
                .into_iter()
                .zip(&w[..4])
            {
                linear.weight = dev.tensor_from_vec(w.materialize(), (Const, Const));
            }
            layer.feed_forward.linear1.weight =
                dev.tensor_from_vec(w[4].materialize(), (Const, Const));
            layer.feed_forward.linear2.weight =
                dev.tensor_from_vec(w[5].materialize(), (Const, Const));
        }
        base.pooler.weight = dev.tensor_from_vec(self.pooler.materialize(), (Const, Const));
    }

    /// 量化再还原：`base` 的这些权重换成 deq(Q(W))（仍以 f32 存放）。在它上面初始化的适配器看到的就是量化后的基座
    /// （PEFT 在 4 位的基座上 `get_peft_model` 时也是：DoRA 的长度、OLoRA 的分解都用还原的权重）。
    pub fn round_trip<const M: usize, const H: usize, const F: usize, D: Device<E>>(
        base: &mut BertParams<M, H, F, E, D>,
        kind: QuantKind,
    ) -> Result<(), QuantError> {
        Self::quantize(base, kind)?.restore(base);
        Ok(())
    }

    /// 第 i 层投影 `p` 的权重。
    pub fn weight(&self, layer: usize, p: Proj) -> &Arc<dyn LazyWeight<E>> {
        &self.layers[layer][p as usize]
    }
}
// ANCHOR_END: quantize_base

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bert::hf::{fixtures_dir, load_dir, max_error, reference_batch};
    use crate::bert::model::TinyBert;
    use crate::checkpoint::Checkpoint;
    use crate::peft::model::{peft_key, PeftBert};
    use crate::transformer::encoder::{EncoderConfig, Mode};
    use dfdx::nn::ZeroGrads;

    type TinyPeft = PeftBert<32, 4, 48, f32, Cpu>;

    fn tiny_base(dev: &Cpu) -> (TinyBert<f32, Cpu>, EncoderConfig) {
        let dir = load_dir::<32, 4, 48, f32, Cpu>(dev, &fixtures_dir().join("tiny-bert-3label"))
            .unwrap_or_else(|e| panic!("{e}"));
        (dir.params, dir.config)
    }

    fn reference() -> Checkpoint {
        Checkpoint::read(&fixtures_dir().join("tiny-bert-quant-reference.safetensors")).unwrap()
    }

    /// 基座里量化的 13 个权重：(HF 的名字, 行优先的数据, 行, 列)。
    fn base_weights(base: &TinyBert<f32, Cpu>) -> Vec<(String, Vec<f32>, usize, usize)> {
        let mut out = Vec::new();
        for (i, layer) in base.layers.modules.iter().enumerate() {
            let (a, f) = (&layer.attention, &layer.feed_forward);
            let name = |p| hf_name(i, p).trim_end_matches(".weight").to_string();
            out.push((name(Proj::Query), a.w_q.weight.as_vec(), 32, 32));
            out.push((name(Proj::Key), a.w_k.weight.as_vec(), 32, 32));
            out.push((name(Proj::Value), a.w_v.weight.as_vec(), 32, 32));
            out.push((name(Proj::Output), a.w_o.weight.as_vec(), 32, 32));
            out.push((name(Proj::Up), f.linear1.weight.as_vec(), 48, 32));
            out.push((name(Proj::Down), f.linear2.weight.as_vec(), 32, 48));
        }
        out.push((
            "bert.pooler.dense".into(),
            base.pooler.weight.as_vec(),
            32,
            32,
        ));
        out
    }

    // ANCHOR: codes_test
    /// 13 个权重逐个量化：NF4 的码（打包的字节）与每组的 absmax、int8 的码与每行的 absmax，都与 bitsandbytes 0.50.2
    /// 的**逐位**相同；还原出的权重与 bitsandbytes 还原的也相同。
    #[test]
    fn codes_match_bitsandbytes_bit_for_bit() {
        let dev: Cpu = Default::default();
        let (base, _) = tiny_base(&dev);
        let reference = reference();
        let theirs = |key: String| reference.get(&key).unwrap().values();
        let mut worst = 0.0f64;
        for (name, w, rows, cols) in base_weights(&base) {
            let nf4 = QuantMatrix::quantize(QuantKind::Nf4, &w, rows, cols).unwrap();
            let QuantData::Nf4 { packed, absmax, .. } = &nf4.data else {
                unreachable!()
            };
            let packed: Vec<f64> = packed.iter().map(|&b| b as f64).collect();
            assert_eq!(
                packed,
                theirs(format!("nf4.{name}.packed")),
                "{name} 的 NF4 码"
            );
            let absmax: Vec<f64> = absmax.iter().map(|&v| v as f64).collect();
            assert_eq!(
                absmax,
                theirs(format!("nf4.{name}.absmax")),
                "{name} 的 NF4 absmax"
            );

            let int8 = QuantMatrix::quantize(QuantKind::Int8, &w, rows, cols).unwrap();
            let QuantData::Int8 { codes, row_absmax } = &int8.data else {
                unreachable!()
            };
            let codes: Vec<f64> = codes.iter().map(|&q| q as f64).collect();
            assert_eq!(
                codes,
                theirs(format!("int8.{name}.codes")),
                "{name} 的 int8 码"
            );
            let row_absmax: Vec<f64> = row_absmax.iter().map(|&v| v as f64).collect();
            assert_eq!(
                row_absmax,
                theirs(format!("int8.{name}.absmax")),
                "{name} 的 int8 absmax"
            );

            for (kind, m) in [("nf4", &nf4), ("int8", &int8)] {
                let err = max_error(
                    &m.dequantize(),
                    &reference,
                    &format!("{kind}.{name}.dequant"),
                );
                worst = worst.max(err);
            }
        }
        println!("13 个权重的码与 absmax 逐位相同；还原的权重最大误差 {worst:.2e}");
        assert!(worst <= 1e-7, "{worst}");
    }
    // ANCHOR_END: codes_test

    // ANCHOR: qlora_test
    /// QLoRA：读 PEFT 在 4 位基座上存的适配器，基座量化成 NF4（或 int8）：logits 与 PEFT 的（Linear4bit；int8 是
    /// 还原的权重）相差不超过 1e-5，损失 sum(logits · probe) 对 A、B、分类头的梯度也一样——反向经过按需还原的权重。
    #[test]
    fn qlora_logits_and_gradients_match_peft() {
        let dev: Cpu = Default::default();
        let reference = reference();
        let (tokens, types, mask) = reference_batch(&reference, &dev);
        let probe: Tensor<(usize, usize), f32, Cpu> = {
            let p = reference.get("probe").unwrap();
            dev.tensor_from_vec(p.to_vec::<f32>(), (2, 3))
        };
        for kind in [QuantKind::Nf4, QuantKind::Int8] {
            let (base, config) = tiny_base(&dev);
            let mut model =
                TinyPeft::from_pretrained(base, config, &fixtures_dir().join("tiny-bert-peft-nf4"))
                    .unwrap_or_else(|e| panic!("{e}"));
            model.quantize_base(kind).unwrap();
            let k = kind.name();
            let logits = model
                .forward(tokens.clone(), Some(types.clone()), &mask, Mode::Eval)
                .unwrap()
                .logits
                .as_vec();
            let err = max_error(&logits, &reference, &format!("{k}.logits"));
            let grads = {
                let g = model.adapters.alloc_grads();
                let out = model
                    .forward(
                        tokens.clone().traced(g),
                        Some(types.clone()),
                        &mask,
                        Mode::Eval,
                    )
                    .unwrap();
                (out.logits * probe.clone()).sum::<(), _>().backward()
            };
            let layers = &model.adapters.layers.modules;
            let lora = |site: &Option<crate::peft::adapter::LoraWeights<32, 32, f32, Cpu>>| {
                site.clone().unwrap()
            };
            let cases = [
                (
                    "layers.0.w_q.lora_a",
                    grads.get(&lora(&layers[0].w_q.lora).lora_a).as_vec(),
                ),
                (
                    "layers.0.w_k.lora_b",
                    grads.get(&lora(&layers[0].w_k.lora).lora_b).as_vec(),
                ),
                (
                    "layers.0.linear1.lora_a",
                    grads
                        .get(&layers[0].linear1.lora.as_ref().unwrap().lora_a)
                        .as_vec(),
                ),
                (
                    "layers.1.w_v.lora_b",
                    grads.get(&lora(&layers[1].w_v.lora).lora_b).as_vec(),
                ),
                (
                    "layers.1.linear2.lora_a",
                    grads
                        .get(&layers[1].linear2.lora.as_ref().unwrap().lora_a)
                        .as_vec(),
                ),
                (
                    "pooler.lora_b",
                    grads
                        .get(&lora(&model.adapters.pooler.lora).lora_b)
                        .as_vec(),
                ),
                (
                    "head.weight",
                    grads.get(&model.adapters.head.weight).as_vec(),
                ),
            ];
            let mut grad_err = 0.0f64;
            for (path, ours) in cases {
                let key = format!("{k}.grad.{}", peft_key(path));
                grad_err = grad_err.max(max_error(&ours, &reference, &key));
            }
            println!("{k}：logits 最大误差 {err:.2e}，7 个梯度的最大误差 {grad_err:.2e}");
            assert!(err <= 1e-5 && grad_err <= 1e-5, "{k}：{err} / {grad_err}");
        }
    }
    // ANCHOR_END: qlora_test

    /// 量化之后：基座里的投影权重是共享的零占位；还原回来的就是量化数据还原的值；合并时先还原。
    #[test]
    fn a_quantized_base_restores_for_merging() {
        let dev: Cpu = Default::default();
        let (base, config) = tiny_base(&dev);
        let mut model = TinyPeft::from_pretrained(
            base.clone(),
            config,
            &fixtures_dir().join("tiny-bert-peft-nf4"),
        )
        .unwrap();
        model.quantize_base(QuantKind::Nf4).unwrap();
        let layer = &model.base.layers.modules[1];
        assert!(layer
            .attention
            .w_q
            .weight
            .as_vec()
            .iter()
            .all(|&v| v == 0.0));
        let q = model.quant.as_ref().unwrap();
        assert_eq!(q.f32_bytes, 4 * (2 * (4 * 32 * 32 + 2 * 32 * 48) + 32 * 32));
        // NF4：每个数半字节，每 64 个数再加一个 4 字节的 absmax：f32 的 (0.5 + 4/64)/4 ≈ 14%
        assert_eq!(q.stored_bytes * 64, q.f32_bytes / 4 * (32 + 4));
        let full = model.full_base();
        let expected = QuantMatrix::quantize(
            QuantKind::Nf4,
            &base.layers.modules[1].attention.w_q.weight.as_vec(),
            32,
            32,
        )
        .unwrap()
        .dequantize();
        assert_eq!(
            full.layers.modules[1].attention.w_q.weight.as_vec(),
            expected
        );
        // 合并后的普通 BERT 与量化基座 + 适配器的输出相同
        let reference = reference();
        let (tokens, types, mask) = reference_batch(&reference, &dev);
        let merged = model
            .merge_and_unload()
            .forward(
                &model.config,
                tokens.clone(),
                Some(types.clone()),
                &mask,
                Mode::Eval,
            )
            .unwrap()
            .logits
            .as_vec();
        let err = max_error(&merged, &reference, "nf4.logits");
        assert!(err <= 1e-5, "{err}");
        let again = model
            .quantize_base(QuantKind::Int8)
            .unwrap_err()
            .to_string();
        assert!(err <= 1e-5 && again.contains("已经量化成 nf4"), "{again}");
    }

    /// QLoRA 的 get_peft_model：刚建好的 DoRA 适配器（长度向量按 ‖deq(Q(W))‖）不改变量化基座的输出；
    /// 反过来，若按全精度的 ‖W‖ 初始化再量化，一开始的输出就偏了（这正是按还原的基座初始化的原因）。
    #[test]
    fn a_fresh_dora_adapter_on_a_quantized_base_changes_nothing() {
        let dev = Cpu::seed_from_u64(5);
        let (base, config) = tiny_base(&dev);
        let mut lora =
            crate::peft::config::LoraConfig::seq_cls(4, 8.0, &["query", "value", "dense"], 0.0);
        lora.use_dora = true;
        let reference = reference();
        let (tokens, types, mask) = reference_batch(&reference, &dev);
        let logits = |m: &TinyPeft| {
            m.forward(tokens.clone(), Some(types.clone()), &mask, Mode::Eval)
                .unwrap()
                .logits
                .as_vec()
        };
        let diff = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        };
        let model =
            TinyPeft::get_peft_model_quantized(base.clone(), config, lora.clone(), QuantKind::Nf4)
                .unwrap();
        // 没有适配器的量化基座：还原出的基座 + 分类头
        let plain = model
            .full_base()
            .forward(
                &config,
                tokens.clone(),
                Some(types.clone()),
                &mask,
                Mode::Eval,
            )
            .unwrap()
            .logits
            .as_vec();
        let fresh = diff(&logits(&model), &plain);
        assert!(fresh < 1e-5, "{fresh}");
        let mut naive = TinyPeft::get_peft_model(base, config, lora).unwrap();
        naive.quantize_base(QuantKind::Nf4).unwrap();
        let off = diff(&logits(&naive), &plain);
        println!("刚建好的 DoRA：按 deq(Q(W)) 初始化差 {fresh:.1e}，按全精度 W 初始化差 {off:.1e}");
        assert!(off > 100.0 * fresh.max(1e-7), "{off}");
    }

    /// 权重里有 NaN：量化报出是哪个张量的第几个数，不产出 NaN 的模型。
    #[test]
    fn a_nan_weight_is_named() {
        let dev: Cpu = Default::default();
        let (mut base, _) = tiny_base(&dev);
        let mut w = base.layers.modules[1].feed_forward.linear2.weight.as_vec();
        w[5] = f32::NAN;
        base.layers.modules[1]
            .feed_forward
            .linear2
            .weight
            .copy_from(&w);
        let err = QuantBase::quantize(&mut base, QuantKind::Int8)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bert.encoder.layer.1.output.dense.weight：第 5 个数是 NaN"),
            "{err}"
        );
    }

    /// 按需还原的线性层（CPU 内核，反向里再还原一次）与把权重存成张量的线性层：前向与 dx 相同。
    #[test]
    fn lazy_linear_matches_the_stored_linear() {
        use crate::kernels::Kernels;
        let dev = Cpu::seed_from_u64(3);
        let w: Tensor<Rank2<48, 32>, f32, Cpu> = dev.sample_normal();
        let m = QuantMatrix::quantize(QuantKind::Nf4, &w.as_vec(), 48, 32).unwrap();
        let stored: Tensor<Rank2<48, 32>, f32, Cpu> =
            dev.tensor_from_vec(m.dequantize(), (Const, Const));
        let lazy: Arc<dyn LazyWeight<f32>> = Arc::new(m);
        let b: Tensor<Rank1<48>, f32, Cpu> = dev.sample_normal();
        let x: Tensor<(usize, usize, Const<32>), f32, Cpu> = dev.sample_normal_like(&(2, 5, Const));
        let run = |use_lazy: bool| {
            let y = if use_lazy {
                Cpu::linear_lazy(x.leaky_trace(), &lazy, &b)
            } else {
                Cpu::linear(x.leaky_trace(), &stored, &b, false)
            };
            let out = y.retaped::<NoneTape>().as_vec();
            let grads = y.square().sum::<(), _>().backward();
            (out, grads.get(&x).as_vec())
        };
        let ((y1, g1), (y2, g2)) = (run(true), run(false));
        assert_eq!(y1, y2);
        assert_eq!(g1, g2);
    }
}
