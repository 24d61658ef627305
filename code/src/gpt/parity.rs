//! 第 5 部分与 PyTorch 参考实现的比较。
//!
//! 参考数据由 `tests/fixtures/make_gpt_fixtures.py` 生成并提交（小 GPT：V=13、C=8、M=8、H=2、F=16、L=2）；
//! 这里读入同一组参数与输入，重算因果注意力、logits、损失、全部参数的梯度、贪心生成，以及 W_q、W_v 上加了 LoRA 之后的
//! logits 与 A、B 的梯度。测试要求每一项 ≤ 1e-5、生成的字逐个相同；`cargo run --release -- gpt parity` 打印这张表。

use std::path::{Path, PathBuf};

use dfdx::prelude::*;

use super::causal::causal_attention;
use super::lora::GptLora;
use super::model::{lm_loss, Gpt, GptConfig};
use super::sample::Sampling;
use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::lora::encoder::QueryValue;
use crate::lora::layer::LoraOptions;
use crate::transformer::encoder::Mode;
use crate::transformer::hooks::Hidden;
use crate::transformer::parity::{compare, Comparison};

/// 参考数据的模型：V=13、C=8、M=8、H=2、F=16、L=2。
pub type FixtureGpt = Gpt<13, 8, 8, 2, 16, 2, f32, Cpu>;
const M: usize = 8;

/// 提交在仓库里的参考数据。
pub fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt.safetensors")
}

/// 比较的结果，以及贪心生成的两份序列（参考的、本书的：有 KV cache 与没有的两种做法都要与参考相同）。
#[derive(Clone, Debug)]
pub struct GptParity {
    /// 各项的最大绝对误差。
    pub comparisons: Vec<Comparison>,
    /// PyTorch 贪心生成的序列（含开头的两个字）。
    pub greedy_reference: Vec<usize>,
    /// 本书不用 KV cache 生成的序列。
    pub greedy_no_cache: Vec<usize>,
    /// 本书用 KV cache 生成的序列。
    pub greedy_cache: Vec<usize>,
}

fn ids(ckpt: &Checkpoint, key: &str) -> Result<Vec<usize>, CheckpointError> {
    Ok(ckpt
        .get(key)?
        .values()
        .iter()
        .map(|&v| v as usize)
        .collect())
}

/// 逐项与 PyTorch 比较（CPU，f32）。
pub fn compare_gpt(path: &Path) -> Result<GptParity, CheckpointError> {
    let dev = Cpu::default();
    let ckpt = Checkpoint::read(path)?;
    let mut out = Vec::new();

    let h3 = |key: &str| -> Result<Hidden<M, f32, Cpu, NoneTape>, CheckpointError> {
        let s = &ckpt.get(key)?.shape;
        ckpt.tensor(&dev, key, (s[0], s[1], Const::<M>))
    };
    let (q, k, v) = (h3("causal.q")?, h3("causal.k")?, h3("causal.v")?);
    let (o, _) = causal_attention(q, k.clone(), v.clone(), 2);
    out.push(compare(
        "因果注意力（4 个查询、6 个键）",
        &o,
        &ckpt,
        "causal.out",
    )?);
    let (o, _) = causal_attention(k.clone(), k, v, 2);
    out.push(compare(
        "因果注意力（6 个查询、6 个键）",
        &o,
        &ckpt,
        "causal.full",
    )?);

    let mut gpt = FixtureGpt::init(&dev);
    ckpt.load_into(&mut gpt, "params.")?;
    let cfg = GptConfig::default(); // Mode::Eval 时没有 dropout
    let shape = &ckpt.get("tokens")?.shape;
    let (batch, seq) = (shape[0], shape[1]);
    let tokens = dev.tensor_from_vec(ids(&ckpt, "tokens")?, (batch, seq));
    let targets = ids(&ckpt, "targets")?;

    let grads = gpt.alloc_grads();
    let logits = gpt
        .forward(tokens.clone().traced(grads), &cfg, Mode::Eval)
        .expect("参考数据的输入合法");
    out.push(compare(
        "logits",
        &logits.retaped::<NoneTape>(),
        &ckpt,
        "logits",
    )?);
    let loss = lm_loss(logits, &targets);
    out.push(compare("损失", &loss.retaped::<NoneTape>(), &ckpt, "loss")?);
    let grads = loss.backward();
    let mut named: Vec<(String, Vec<f32>)> = vec![
        (
            "embedding.weight".into(),
            grads.get(&gpt.embedding.weight).as_vec(),
        ),
        (
            "position.weight".into(),
            grads.get(&gpt.position.weight).as_vec(),
        ),
        ("norm.weight".into(), grads.get(&gpt.norm.weight).as_vec()),
        ("norm.bias".into(), grads.get(&gpt.norm.bias).as_vec()),
    ];
    for (i, l) in gpt.layers.modules.iter().enumerate() {
        let a = &l.attention;
        for (name, w, b) in [
            ("attention.w_q", &a.w_q.weight, &a.w_q.bias),
            ("attention.w_k", &a.w_k.weight, &a.w_k.bias),
            ("attention.w_v", &a.w_v.weight, &a.w_v.bias),
            ("attention.w_o", &a.w_o.weight, &a.w_o.bias),
        ] {
            named.push((format!("layers.{i}.{name}.weight"), grads.get(w).as_vec()));
            named.push((format!("layers.{i}.{name}.bias"), grads.get(b).as_vec()));
        }
        let f = &l.feed_forward;
        named.push((
            format!("layers.{i}.feed_forward.linear1.weight"),
            grads.get(&f.linear1.weight).as_vec(),
        ));
        named.push((
            format!("layers.{i}.feed_forward.linear1.bias"),
            grads.get(&f.linear1.bias).as_vec(),
        ));
        named.push((
            format!("layers.{i}.feed_forward.linear2.weight"),
            grads.get(&f.linear2.weight).as_vec(),
        ));
        named.push((
            format!("layers.{i}.feed_forward.linear2.bias"),
            grads.get(&f.linear2.bias).as_vec(),
        ));
        for (name, n) in [("norm1", &l.norm1), ("norm2", &l.norm2)] {
            named.push((
                format!("layers.{i}.{name}.weight"),
                grads.get(&n.weight).as_vec(),
            ));
            named.push((
                format!("layers.{i}.{name}.bias"),
                grads.get(&n.bias).as_vec(),
            ));
        }
    }
    let mut worst = (String::new(), 0.0f64, 0usize);
    for (name, g) in &named {
        let reference = &ckpt.get(&format!("grad.{name}"))?.values();
        assert_eq!(reference.len(), g.len(), "{name}：梯度的元素个数不同");
        worst.2 += g.len();
        for (a, b) in g.iter().zip(reference) {
            let d = (*a as f64 - b).abs();
            if d > worst.1 || d.is_nan() {
                worst = (name.clone(), d, worst.2);
            }
        }
    }
    let grads_reference = ckpt
        .tensors
        .keys()
        .filter(|k| k.starts_with("grad."))
        .count();
    assert_eq!(
        grads_reference,
        named.len(),
        "参考数据里的梯度与本书比较的个数不同"
    );
    out.push(Comparison {
        name: "全部参数的梯度（36 个张量）",
        elements: worst.2,
        max_abs_error: worst.1,
    });

    // LoRA：W_q、W_v，r = 2，α = 4
    let mut lora = GptLora::<M, 16, 2, 2, QueryValue, f32, Cpu>::init(
        &dev,
        LoraOptions {
            alpha: 4.0,
            dropout: 0.0,
        },
    );
    ckpt.load_into_with(&mut lora, &|path| vec![format!("lora.{path}")], &|key| {
        key.starts_with("lora.layers.")
    })?;
    let grads = lora.alloc_grads();
    let logits = lora
        .forward(&gpt, tokens.traced(grads), None, &cfg, Mode::Eval)
        .expect("参考数据的输入合法");
    out.push(compare(
        "LoRA：logits",
        &logits.retaped::<NoneTape>(),
        &ckpt,
        "lora.logits",
    )?);
    let loss = lm_loss(logits, &targets);
    out.push(compare(
        "LoRA：损失",
        &loss.retaped::<NoneTape>(),
        &ckpt,
        "lora.loss",
    )?);
    let grads = loss.backward();
    let mut max = 0.0f64;
    let mut elements = 0;
    for (i, l) in lora.layers.modules.iter().enumerate() {
        for (name, pair) in [("w_q", &l.w_q), ("w_v", &l.w_v)] {
            for (part, g) in [
                ("lora_a", grads.get(&pair.lora_a).as_vec()),
                ("lora_b", grads.get(&pair.lora_b).as_vec()),
            ] {
                let reference = &ckpt
                    .get(&format!("lora.grad.layers.{i}.{name}.{part}"))?
                    .values();
                elements += g.len();
                for (a, b) in g.iter().zip(reference) {
                    max = max.max((*a as f64 - b).abs());
                }
            }
        }
    }
    out.push(Comparison {
        name: "LoRA：A、B 的梯度（8 个张量）",
        elements,
        max_abs_error: max,
    });

    let reference = ids(&ckpt, "greedy")?;
    let prompt = &reference[..2];
    let n = reference.len() - prompt.len();
    let run = |cache| -> Vec<usize> {
        let new = gpt
            .generate(prompt, n, Sampling::Greedy, None, cache, 0)
            .expect("长度不超过上下文");
        prompt.iter().copied().chain(new).collect()
    };
    let (greedy_no_cache, greedy_cache) = (run(false), run(true));
    Ok(GptParity {
        comparisons: out,
        greedy_reference: reference,
        greedy_no_cache,
        greedy_cache,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gpt_matches_pytorch() {
        let p = compare_gpt(&fixture_path()).unwrap_or_else(|e| panic!("{e}"));
        for c in &p.comparisons {
            println!(
                "{:<32} {:>5} 个元素  最大误差 {:.2e}",
                c.name, c.elements, c.max_abs_error
            );
            assert!(c.max_abs_error <= 1e-5, "与 PyTorch 不一致：{c:?}");
        }
        assert_eq!(p.comparisons.len(), 8);
        println!("贪心生成：PyTorch {:?}", p.greedy_reference);
        assert_eq!(p.greedy_no_cache, p.greedy_reference, "不用 KV cache");
        assert_eq!(p.greedy_cache, p.greedy_reference, "用 KV cache");
    }
}
