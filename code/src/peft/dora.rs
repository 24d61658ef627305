//! 4.2 节：DoRA（Liu et al., 2024；PEFT 的 `use_dora`）——把权重拆成“长度”与“方向”。
//!
//! 对一个线性层 W `(O, I)`，DoRA 把它看成 O 行，每行一个长度 ‖W_i‖ 与一个方向 W_i/‖W_i‖。
//! LoRA 只改方向那一半（W + s·BA），长度另由一个可训练的向量 m `(O,)` 给出：
//!
//! W' = m ⊙ (W + s·BA) / ‖W + s·BA‖，范数按行（对输入维）取。
//!
//! 初始化时 B = 0，m 取 W 每行的范数，于是 W' = W，与 LoRA 一样“不改变基座的输出”。
//! 前向里那个范数当作常数（不求梯度，PEFT 照论文 4.3 节的做法 `.detach()`），它随 A、B 每步重算。
//! 这里的函数只用张量，不认识 BERT：[`super::adapter::SiteLora`] 在 `use_dora` 时调用它们。

use dfdx::prelude::*;

use crate::basics::tensors::Real;
use crate::kernels::Kernels;
use crate::lora::layer::delta_weight;
use crate::transformer::hooks::Hidden;

// ANCHOR: weight_norm
/// ‖W + s·BA‖，每个输出行一个数（对输入维求 L2 范数），不带 tape：前向里它是常数。
///
/// # 形状
/// - `w`: `(Const<O>, Const<I>)`，`a`: `(r, Const<I>)`，`b`: `(Const<O>, r)`，返回 `(Const<O>,)`
pub fn weight_norm<const I: usize, const O: usize, E: Real, D: Device<E>>(
    w: &Tensor<(Const<O>, Const<I>), E, D>,
    a: &Tensor<(usize, Const<I>), E, D>,
    b: &Tensor<(Const<O>, usize), E, D>,
    scaling: f64,
) -> Tensor<(Const<O>,), E, D> {
    (w.clone() + delta_weight(a, b, scaling))
        .square()
        .sum::<(Const<O>,), Axis<1>>()
        .sqrt()
}
// ANCHOR_END: weight_norm

// ANCHOR: forward
/// DoRA 的前向：在原线性层的输出 `out` = Wx + b 上加
/// (m/‖W + s·BA‖ − 1) ⊙ W·x′ + (m/‖W + s·BA‖) ⊙ s·BA·x′，x′ 是 LoRA 分支的输入（训练时可能经过 dropout）。
///
/// 合并同类项，写成 (m/‖·‖) ⊙ (W·x′ + s·BA·x′) + (out − W·x′)，括号里正是 LoRA 的融合内核 `lora_add` 算的东西：
/// - 没有 dropout 时 x′ = x，W·x′ 就是 `out − b`（不再乘一次 W），结果是 (m/‖·‖) ⊙ (Wx + s·BAx) + b：偏置只加一次；
/// - 有 dropout 时 W·x′ 要另算，与 PEFT 一样。
///
/// # 形状
/// - `out`: `(batch, seq, Const<O>)`，`x`: `(batch, seq, Const<I>)`，`magnitude`: `(Const<O>,)`
#[allow(clippy::too_many_arguments)]
pub fn forward<const I: usize, const O: usize, E, D, T>(
    out: Hidden<O, E, D, T>,
    x: Hidden<I, E, D, T>,
    dropped: bool,
    weight: &Tensor<(Const<O>, Const<I>), E, D>,
    bias: &Tensor<(Const<O>,), E, D>,
    a: &Tensor<(usize, Const<I>), E, D>,
    b: &Tensor<(Const<O>, usize), E, D>,
    magnitude: &Tensor<(Const<O>,), E, D>,
    scaling: f64,
) -> Hidden<O, E, D, T>
where
    E: Real,
    D: Kernels<E>,
    T: Tape<E, D> + Merge<T> + Merge<NoneTape>,
{
    let shape = *out.shape();
    // m/‖W + s·BA‖：范数不带 tape（detach），梯度只经 m 流回
    let norm = weight_norm(weight, a, b, scaling);
    let factor = (magnitude.retaped::<T>() / norm).broadcast_like::<_, Axes2<0, 1>>(&shape);
    if dropped {
        // W·x′：W 冻结，用线性层的内核且不算 W 的梯度（偏置取 0）
        let zero = bias.device().zeros_like(&(Const::<O>,));
        let base = D::linear(x.retaped::<T>(), weight, &zero, false);
        let rest = out - base.retaped::<T>(); // Wx + b − W·x′
        factor * D::lora_add(base, x, a, b, scaling, 0.0) + rest
    } else {
        let bias = bias.clone().broadcast_like::<_, Axes2<0, 1>>(&shape);
        factor * D::lora_add(out - bias.clone(), x, a, b, scaling, 0.0) + bias
    }
}
// ANCHOR_END: forward

// ANCHOR: merge
/// 合并：W′ = (m/‖W + s·BA‖) ⊙ (W + s·BA)，每行乘自己的系数；偏置不变。
pub fn merged_weight<const I: usize, const O: usize, E: Real, D: Device<E>>(
    weight: &Tensor<(Const<O>, Const<I>), E, D>,
    a: &Tensor<(usize, Const<I>), E, D>,
    b: &Tensor<(Const<O>, usize), E, D>,
    magnitude: &Tensor<(Const<O>,), E, D>,
    scaling: f64,
) -> Tensor<(Const<O>, Const<I>), E, D> {
    let direction = weight.clone() + delta_weight(a, b, scaling);
    let norm = weight_norm(weight, a, b, scaling);
    let factor = (magnitude.clone() / norm).broadcast_like::<_, Axis<1>>(direction.shape());
    direction * factor
}
// ANCHOR_END: merge

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bert::hf::{fixtures_dir, load_dir, max_error, reference_batch};
    use crate::bert::model::TinyBert;
    use crate::checkpoint::Checkpoint;
    use crate::lora::layer::low_rank;
    use crate::peft::adapter::SiteLora;
    use crate::peft::config::LoraConfig;
    use crate::peft::model::{peft_key, PeftBert, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
    use crate::transformer::encoder::{EncoderConfig, Mode};
    use dfdx::nn::modules::Linear;
    use dfdx::nn::ZeroGrads;

    type TinyPeft = PeftBert<32, 4, 48, f32, Cpu>;

    fn tiny_base(dev: &Cpu) -> (TinyBert<f32, Cpu>, EncoderConfig) {
        let dir = load_dir::<32, 4, 48, f32, Cpu>(dev, &fixtures_dir().join("tiny-bert-3label"))
            .unwrap_or_else(|e| panic!("{e}"));
        (dir.params, dir.config)
    }

    fn reference() -> Checkpoint {
        Checkpoint::read(&fixtures_dir().join("tiny-bert-peft-dora-reference.safetensors")).unwrap()
    }

    fn python_adapter(dev: &Cpu) -> TinyPeft {
        let (base, config) = tiny_base(dev);
        TinyPeft::from_pretrained(base, config, &fixtures_dir().join("tiny-bert-peft-dora"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    // ANCHOR: python_fixture
    /// PEFT 0.21.2 存的 DoRA 适配器（`make_peft_dora_fixtures.py`：q、v 与三种 dense 含池化层，共 11 个模块，
    /// value 的秩 2）：读进来的 logits 与 PEFT 的相差不超过 1e-5，合并后也一样。
    #[test]
    fn loads_a_dora_adapter_saved_by_python_peft() {
        let dev: Cpu = Default::default();
        let model = python_adapter(&dev);
        assert_eq!(model.plan.modules().len(), 11);
        assert!(model.lora.use_dora);
        let reference = reference();
        let (tokens, types, mask) = reference_batch(&reference, &dev);
        let logits = model
            .forward(tokens.clone(), Some(types.clone()), &mask, Mode::Eval)
            .unwrap()
            .logits
            .as_vec();
        let merged = model.merge_and_unload();
        let merged_logits = merged
            .forward(&model.config, tokens, Some(types), &mask, Mode::Eval)
            .unwrap()
            .logits
            .as_vec();
        let err = max_error(&logits, &reference, "logits");
        let merged_err = max_error(&merged_logits, &reference, "merged_logits");
        println!("DoRA：logits 最大误差 {err:.2e}，合并后 {merged_err:.2e}");
        assert!(err <= 1e-5 && merged_err <= 1e-5, "{err} / {merged_err}");
    }
    // ANCHOR_END: python_fixture

    /// 刚建好的 DoRA 适配器：长度向量与 PEFT 建的相同（基座每行的范数），输出与基座的相同。
    #[test]
    fn a_fresh_dora_adapter_starts_from_the_row_norms() {
        let dev = Cpu::seed_from_u64(1);
        let (base, config) = tiny_base(&dev);
        let lora = LoraConfig::read(
            &fixtures_dir()
                .join("tiny-bert-peft-dora")
                .join(ADAPTER_CONFIG),
        )
        .unwrap();
        let model = TinyPeft::get_peft_model(base.clone(), config, lora).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("adapter");
        model.save_pretrained(&dir, None).unwrap();
        let saved = Checkpoint::read(&dir.join(ADAPTER_WEIGHTS)).unwrap();
        let reference = reference();
        let mut checked = 0;
        for (key, t) in &saved.tensors {
            if key.ends_with("lora_magnitude_vector") {
                let ours: Vec<f32> = t.to_vec::<f32>();
                let err = max_error(&ours, &reference, &format!("init.{key}"));
                assert!(err <= 1e-6, "{key}：{err}");
                checked += 1;
            }
        }
        assert_eq!(checked, 11);
        // B = 0、m = ‖W‖：输出不变（分类头的副本与基座的分类头相同）
        let (tokens, types, mask) = reference_batch(&reference, &dev);
        let with = model
            .forward(tokens.clone(), Some(types.clone()), &mask, Mode::Eval)
            .unwrap()
            .logits
            .as_vec();
        let without = base
            .forward(&config, tokens, Some(types), &mask, Mode::Eval)
            .unwrap()
            .logits
            .as_vec();
        let diff = with
            .iter()
            .zip(&without)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff <= 1e-6, "刚建好的 DoRA 改变了输出：{diff}");
    }

    // ANCHOR: grads
    /// 损失 sum(logits · probe) 对 A、B、长度向量、分类头的梯度，与 PyTorch（PEFT 的 DoRA）算的相差
    /// 不超过 1e-5（梯度大于 1 时按相对误差）。
    #[test]
    fn dora_gradients_match_pytorch() {
        let dev: Cpu = Default::default();
        let model = python_adapter(&dev);
        let reference = reference();
        let (tokens, types, mask) = reference_batch(&reference, &dev);
        let probe: Tensor<(usize, usize), f32, Cpu> = {
            let p = reference.get("probe").unwrap();
            dev.tensor_from_vec(p.to_vec::<f32>(), (2, 3))
        };
        let grads = {
            let g = model.adapters.alloc_grads();
            let out = model
                .forward(tokens.traced(g), Some(types), &mask, Mode::Eval)
                .unwrap();
            (out.logits * probe).sum::<(), _>().backward()
        };
        let layers = &model.adapters.layers.modules;
        let v1 = layers[1].w_v.lora.as_ref().unwrap();
        let up0 = layers[0].linear1.lora.as_ref().unwrap();
        let down1 = layers[1].linear2.lora.as_ref().unwrap();
        let pooler = model.adapters.pooler.lora.as_ref().unwrap();
        let cases = [
            ("layers.1.w_v.lora_a", grads.get(&v1.lora_a).as_vec()),
            ("layers.1.w_v.lora_b", grads.get(&v1.lora_b).as_vec()),
            (
                "layers.1.w_v.magnitude",
                grads.get(v1.magnitude.as_ref().unwrap()).as_vec(),
            ),
            (
                "layers.0.linear1.magnitude",
                grads.get(up0.magnitude.as_ref().unwrap()).as_vec(),
            ),
            (
                "layers.1.linear2.magnitude",
                grads.get(down1.magnitude.as_ref().unwrap()).as_vec(),
            ),
            ("pooler.lora_a", grads.get(&pooler.lora_a).as_vec()),
            (
                "pooler.magnitude",
                grads.get(pooler.magnitude.as_ref().unwrap()).as_vec(),
            ),
            (
                "head.weight",
                grads.get(&model.adapters.head.weight).as_vec(),
            ),
        ];
        for (path, ours) in cases {
            let key = format!("grad.{}", peft_key(path));
            let err = max_error(&ours, &reference, &key);
            let scale = ours.iter().fold(0.0f32, |a, g| a.max(g.abs())) as f64;
            println!("{path}：梯度最大 {scale:.2e}，最大误差 {err:.2e}");
            assert!(scale > 1e-3, "{path} 的梯度太小，比不出什么");
            assert!(err <= 1e-5 * scale.max(1.0), "{path}：{err}");
        }
    }
    // ANCHOR_END: grads

    // ANCHOR: detached
    /// 陷阱：范数 ‖W + s·BA‖ 在前向里当作常数（PEFT 与论文都这样做，省显存），所以 A、B 拿到的“梯度”
    /// 不是损失真正的导数——对它们做有限差分检验会失败；长度向量 m 不经过范数，它的梯度仍与差分一致。
    #[test]
    fn the_norm_is_treated_as_a_constant() {
        type Tiny = PeftBert<32, 4, 48, f64, Cpu>;
        let dev = Cpu::seed_from_u64(7);
        let base =
            crate::bert::model::TinyBert::<f64, Cpu>::new(&dev, &crate::bert::model::TINY_DIMS);
        let config = crate::bert::model::bert_config(1e-12, 0.0, 24);
        let mut lora = LoraConfig::seq_cls(4, 8.0, &["value"], 0.0);
        lora.use_dora = true;
        let mut model = Tiny::get_peft_model(base, config, lora).unwrap();
        let site = model.adapters.layers.modules[0].w_v.lora.as_mut().unwrap();
        site.lora_b = dev.sample_normal_like(&(Const, 4)) * 0.5;
        let tokens: Tensor<(usize, usize), usize, Cpu> =
            dev.tensor_from_vec(vec![2, 17, 33, 5, 3, 2, 8, 60, 3, 0], (2, 5));
        let mask =
            crate::transformer::attention::PaddingMask::from_lengths(&dev, &[5, 4], 5).unwrap();
        let w: Tensor<(usize, usize), f64, Cpu> = dev.sample_normal_like(&(2, 3));
        let loss_of = |m: &Tiny| -> f64 {
            let out = m.forward(tokens.clone(), None, &mask, Mode::Eval).unwrap();
            (out.logits * w.clone()).sum::<(), _>().array()
        };
        let grads = {
            let g = model.adapters.alloc_grads();
            let out = model
                .forward(tokens.clone().traced(g), None, &mask, Mode::Eval)
                .unwrap();
            (out.logits * w.clone()).sum::<(), _>().backward()
        };
        let site = model.adapters.layers.modules[0].w_v.lora.as_ref().unwrap();
        let g_m = grads.get(site.magnitude.as_ref().unwrap()).as_vec();
        let g_b = grads.get(&site.lora_b).as_vec();
        // 中心差分：把第 i 个数（m 或 B 的）挪 ±h
        let fd = |i: usize, magnitude: bool| {
            let h = 1e-6;
            let at = |d: f64| {
                let mut m = model.clone();
                let s = m.adapters.layers.modules[0].w_v.lora.as_mut().unwrap();
                if magnitude {
                    let t = s.magnitude.as_mut().unwrap();
                    let mut v = t.as_vec();
                    v[i] += d;
                    t.copy_from(&v);
                } else {
                    let mut v = s.lora_b.as_vec();
                    v[i] += d;
                    s.lora_b.copy_from(&v);
                }
                loss_of(&m)
            };
            (at(h) - at(-h)) / (2.0 * h)
        };
        for i in [0, 5, 17, 31] {
            let n = fd(i, true);
            assert!(
                (n - g_m[i]).abs() < 1e-6,
                "m[{i}]：反向 {} vs 差分 {n}",
                g_m[i]
            );
        }
        let worst = [0, 9, 33, 70, 101]
            .into_iter()
            .map(|i| (fd(i, false) - g_b[i]).abs() / g_b[i].abs().max(1e-3))
            .fold(0.0, f64::max);
        println!("B 的梯度与差分的最大相对差：{worst:.3}");
        // 差分本身准到 1e-6 左右（上面 m 的检验），这里差出百分之几
        assert!(
            worst > 0.01,
            "范数若当作常数，B 的梯度应与真导数明显不同：{worst}"
        );
    }
    // ANCHOR_END: detached

    /// 没有 dropout 时 W·x′ 由 `out − b` 得到，有 dropout 时另算 W·x′：两条路在同一个 x 上结果相同，
    /// 偏置只加了一次；若把系数也乘到偏置上（常见的写错），结果就不同。
    #[test]
    fn the_bias_is_added_once() {
        let dev = Cpu::seed_from_u64(3);
        let linear = Linear::<6, 5, f64, Cpu> {
            weight: dev.sample_normal(),
            bias: dev.sample_normal(),
        };
        let a: Tensor<(usize, Const<6>), f64, Cpu> = dev.sample_normal_like(&(3, Const));
        let b: Tensor<(Const<5>, usize), f64, Cpu> = dev.sample_normal_like(&(Const, 3));
        let m: Tensor<(Const<5>,), f64, Cpu> = dev.sample_normal().abs() + 0.5;
        let x: Tensor<(usize, usize, Const<6>), f64, Cpu> = dev.sample_normal_like(&(2, 4, Const));
        let out = linear.forward(x.clone());
        let via_out = forward(
            out.clone(),
            x.clone(),
            false,
            &linear.weight,
            &linear.bias,
            &a,
            &b,
            &m,
            2.0,
        );
        let via_w = forward(
            out.clone(),
            x.clone(),
            true,
            &linear.weight,
            &linear.bias,
            &a,
            &b,
            &m,
            2.0,
        );
        let merged = Linear::<6, 5, f64, Cpu> {
            weight: merged_weight(&linear.weight, &a, &b, &m, 2.0),
            bias: linear.bias.clone(),
        };
        let closed = merged.forward(x.clone());
        let diff = |p: &Tensor<(usize, usize, Const<5>), f64, Cpu>,
                    q: &Tensor<(usize, usize, Const<5>), f64, Cpu>| {
            p.as_vec()
                .iter()
                .zip(q.as_vec())
                .map(|(u, v)| (u - v).abs())
                .fold(0.0, f64::max)
        };
        assert!(diff(&via_out, &via_w) < 1e-12);
        assert!(diff(&via_out, &closed) < 1e-12);
        // 写错：(m/‖·‖) ⊙ (Wx + b + s·BAx)，偏置也被缩放
        let norm = weight_norm(&linear.weight, &a, &b, 2.0);
        let factor = (m.clone() / norm).broadcast_like::<_, Axes2<0, 1>>(out.shape());
        let wrong = (out + low_rank(x, &a, &b, 2.0)) * factor;
        assert!(diff(&via_out, &wrong) > 1e-3);
    }

    /// PEFT 存长度向量的键没有 `.weight`（内存里有）；按内存里的名字存的文件 PEFT 0.21.2 也能读，本书同样两种都认。
    #[test]
    fn a_magnitude_key_with_the_weight_suffix_also_loads() {
        let dev: Cpu = Default::default();
        let src = fixtures_dir().join("tiny-bert-peft-dora");
        let file = Checkpoint::read(&src.join(ADAPTER_WEIGHTS)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("adapter");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(src.join(ADAPTER_CONFIG), dir.join(ADAPTER_CONFIG)).unwrap();
        let renamed: Vec<(String, Vec<usize>, Vec<f32>)> = file
            .tensors
            .iter()
            .map(|(k, t)| {
                let k = if k.ends_with("lora_magnitude_vector") {
                    format!("{k}.weight")
                } else {
                    k.clone()
                };
                (k, t.shape.clone(), t.to_vec::<f32>())
            })
            .collect();
        crate::checkpoint::save_tensors(&dir.join(ADAPTER_WEIGHTS), &renamed).unwrap();
        let (base, config) = tiny_base(&dev);
        let renamed = TinyPeft::from_pretrained(base, config, &dir).unwrap();
        let reference = reference();
        let (tokens, types, mask) = reference_batch(&reference, &dev);
        let logits = renamed
            .forward(tokens, Some(types), &mask, Mode::Eval)
            .unwrap()
            .logits
            .as_vec();
        assert!(max_error(&logits, &reference, "logits") <= 1e-5);
    }

    // ANCHOR: mismatch
    /// 陷阱：配置与权重对不上。普通 LoRA 的适配器把配置改成 `"use_dora": true`，文件里没有长度向量：
    /// PEFT 0.21.2 只警告“缺少的键”，m 留在初值，logits 差 0.73（本书用 Python 核对过）；本书拒绝并列出缺少的键。
    /// 反过来，DoRA 的适配器配置写成 `false`，长度向量成了多余的键，同样拒绝。
    #[test]
    fn dora_config_and_weights_must_agree() {
        let dev: Cpu = Default::default();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("adapter");
        for (adapter, use_dora, expect) in [
            (
                "tiny-bert-peft-qkvd",
                true,
                "缺少的张量：base_model.model.bert.encoder.layer.0.attention.self.query.lora_magnitude_vector",
            ),
            (
                "tiny-bert-peft-dora",
                false,
                "多余的张量：base_model.model.bert.encoder.layer.0.attention.output.dense.lora_magnitude_vector",
            ),
        ] {
            let src = fixtures_dir().join(adapter);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(src.join(ADAPTER_WEIGHTS), dir.join(ADAPTER_WEIGHTS)).unwrap();
            let mut lora = LoraConfig::read(&src.join(ADAPTER_CONFIG)).unwrap();
            lora.use_dora = use_dora;
            std::fs::write(dir.join(ADAPTER_CONFIG), lora.to_json()).unwrap();
            let (base, config) = tiny_base(&dev);
            let err = TinyPeft::from_pretrained(base, config, &dir)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expect), "{adapter}：{err}");
        }
    }
    // ANCHOR_END: mismatch

    /// 用一个“训练过”的值替换：A、B、分类头取随机值，长度向量乘上 (1 + 0.1·随机数)。
    fn perturb<const I: usize, const O: usize>(site: &mut SiteLora<I, O, f32, Cpu>, dev: &Cpu) {
        if let Some(l) = &mut site.lora {
            l.lora_a = dev.sample_normal_like(l.lora_a.shape()) * 0.2;
            l.lora_b = dev.sample_normal_like(l.lora_b.shape()) * 0.2;
            if let Some(m) = &mut l.magnitude {
                let noise: Tensor<(Const<O>,), f32, Cpu> = dev.sample_normal() * 0.1 + 1.0;
                *m = m.clone() * noise;
            }
        }
    }

    // ANCHOR: rust_to_python
    /// Rust 存的 DoRA 适配器：与仓库里的 `tiny-bert-rust-adapter-dora/` 逐位相同（Python 的 PEFT 加载它、
    /// logits 与 Rust 的相同，由 `check_rust_adapter.py` 核对），读回来 logits 逐位不变。
    /// 设 `LLM_BOOK_WRITE_FIXTURES=1` 时重新写出参考文件。
    #[test]
    fn rust_dora_adapter_round_trips_and_matches_the_fixture() {
        let dev = Cpu::seed_from_u64(2025);
        let (base, config) = tiny_base(&dev);
        let mut lora = LoraConfig::seq_cls(4, 8.0, &["query", "value", "dense"], 0.0);
        lora.use_dora = true;
        lora.base_model_name_or_path = Some("tiny-bert-3label".into());
        let mut model = TinyPeft::get_peft_model(base, config, lora).unwrap();
        for layer in model.adapters.layers.modules.iter_mut() {
            perturb(&mut layer.w_q, &dev);
            perturb(&mut layer.w_k, &dev);
            perturb(&mut layer.w_v, &dev);
            perturb(&mut layer.w_o, &dev);
            perturb(&mut layer.linear1, &dev);
            perturb(&mut layer.linear2, &dev);
        }
        perturb(&mut model.adapters.pooler, &dev);
        let head = &mut model.adapters.head;
        head.weight = dev.sample_normal_like(head.weight.shape()) * 0.2;
        let reference = reference();
        let (tokens, types, mask) = reference_batch(&reference, &dev);
        let logits = |m: &TinyPeft| {
            m.forward(tokens.clone(), Some(types.clone()), &mask, Mode::Eval)
                .unwrap()
                .logits
                .as_vec()
        };
        let ours = logits(&model);
        let write = std::env::var_os("LLM_BOOK_WRITE_FIXTURES").is_some();
        let tmp = tempfile::tempdir().unwrap();
        let dir = if write {
            fixtures_dir().join("tiny-bert-rust-adapter-dora")
        } else {
            tmp.path().join("adapter")
        };
        let labels: Vec<String> = ["负面", "中性", "正面"].map(String::from).to_vec();
        let json = crate::peft::model::classifier_config_json(
            &fixtures_dir().join("tiny-bert-3label"),
            &labels,
        )
        .unwrap();
        model.save_pretrained(&dir, Some(&json)).unwrap();
        let reference_file = fixtures_dir().join("tiny-bert-rust-dora-reference.safetensors");
        if write {
            crate::checkpoint::save_tensors(
                &reference_file,
                &[("logits", vec![2, 3], ours.clone())],
            )
            .unwrap();
        }
        let (base, config) = tiny_base(&dev);
        let back = TinyPeft::from_pretrained(base, config, &dir).unwrap();
        assert_eq!(back.plan, model.plan);
        assert_eq!(logits(&back), ours, "保存再读回，logits 必须逐位相同");
        let saved = Checkpoint::read(&dir.join(ADAPTER_WEIGHTS)).unwrap();
        assert_eq!(
            saved
                .tensors
                .keys()
                .filter(|k| k.ends_with("lora_magnitude_vector"))
                .count(),
            11
        );
        let committed = Checkpoint::read(
            &fixtures_dir()
                .join("tiny-bert-rust-adapter-dora")
                .join(ADAPTER_WEIGHTS),
        )
        .unwrap();
        assert_eq!(saved.tensors, committed.tensors);
        let text = std::fs::read_to_string(dir.join(ADAPTER_CONFIG)).unwrap();
        assert!(text.contains("\"use_dora\": true"), "{text}");
        let committed_logits = Checkpoint::read(&reference_file).unwrap();
        assert!(max_error(&ours, &committed_logits, "logits") <= 1e-6);
    }
    // ANCHOR_END: rust_to_python

    /// 用 `finetune` 训练一个 DoRA 适配器（lora_dropout 0.1：走另算 W·x′ 的那条路）：长度向量、A、B 都在动，
    /// 基座不动；存下的适配器能读回，输出不变。
    #[test]
    fn finetune_trains_the_magnitude() {
        use crate::train::finetune::{finetune, FinetuneConfig};
        let dev = Cpu::seed_from_u64(0);
        let dir = load_dir::<32, 4, 48, f32, Cpu>(&dev, &fixtures_dir().join("tiny-bert")).unwrap();
        let mut lora = LoraConfig::seq_cls(4, 8.0, &["query", "value"], 0.1);
        lora.use_dora = true;
        let mut model = PeftBert::get_peft_model(dir.params, dir.config, lora).unwrap();
        let site = |m: &TinyPeft| m.adapters.layers.modules[1].w_v.lora.clone().unwrap();
        let before = site(&model);
        let frozen = model.base.layers.modules[1].attention.w_v.weight.as_vec();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let cfg = FinetuneConfig {
            epochs: 3,
            batch_size: 16,
            eval_every: 100,
            ..Default::default()
        };
        let data = crate::train::tests::toy_data();
        finetune(&mut model, &dev, &data, &cfg, &out, false, &mut |_| {
            std::ops::ControlFlow::Continue(())
        })
        .unwrap()
        .unwrap();
        let after = site(&model);
        assert_ne!(
            after.magnitude.as_ref().unwrap().as_vec(),
            before.magnitude.as_ref().unwrap().as_vec(),
            "长度向量应被训练"
        );
        assert_ne!(after.lora_b.as_vec(), before.lora_b.as_vec());
        assert_eq!(
            model.base.layers.modules[1].attention.w_v.weight.as_vec(),
            frozen,
            "基座不变"
        );
        // finetune 按 best.safetensors 读回了最好的一步（含长度向量）；存成 PEFT 的目录再读回，输出逐位相同
        model.save_pretrained(&out.join("adapter"), None).unwrap();
        let dir = load_dir::<32, 4, 48, f32, Cpu>(&dev, &fixtures_dir().join("tiny-bert")).unwrap();
        let back = TinyPeft::from_pretrained(dir.params, dir.config, &out.join("adapter")).unwrap();
        let tokens: Tensor<(usize, usize), usize, Cpu> =
            dev.tensor_from_vec(vec![2, 17, 7, 5, 3, 2, 8, 60, 3, 0], (2, 5));
        let mask =
            crate::transformer::attention::PaddingMask::from_lengths(&dev, &[5, 4], 5).unwrap();
        let logits = |m: &TinyPeft| {
            m.forward(tokens.clone(), None, &mask, Mode::Eval)
                .unwrap()
                .logits
                .as_vec()
        };
        assert_eq!(logits(&back), logits(&model));
    }
}
