//! 与 PyTorch 参考实现的逐组件比较（1.1–1.6 节的“验证”）。
//!
//! 参考数据由 `tests/fixtures/make_transformer_fixtures.py` 生成并提交；这里读入同一组参数和输入，
//! 用本 crate 的实现重算每个组件，报告与 PyTorch 输出的最大绝对误差。
//! 测试 `tests/pytorch_parity.rs` 要求每一项 ≤ 1e-5；`cargo run --release -- parity` 打印这张表。

use std::path::{Path, PathBuf};

use dfdx::nn::BuildModule;
use dfdx::prelude::*;

use super::attention::{scaled_dot_product_attention, PaddingMask};
use super::encoder::{EncoderConfig, EncoderLayer, Mode, NormPosition, TransformerEncoder};
use super::feed_forward::{Activation, FeedForward};
use super::multi_head::MultiHeadAttention;
use super::norm::LayerNorm;
use super::positional::PositionalEncoding;
use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::kernels::Kernels;

/// 参考数据的模型宽度：词表、隐藏维度、头数、前馈宽度、层数。
pub type FixtureEncoder<D> = TransformerEncoder<50, 16, 4, 32, 2, f32, D>;
const M: usize = 16;
const H: usize = 4;
const F: usize = 32;
const EPS: f64 = 1e-5;

/// 提交在仓库里的参考数据。
pub fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/transformer.safetensors")
}

/// 一个组件的比较结果。
#[derive(Clone, Debug)]
pub struct Comparison {
    /// 组件与情形，如“多头注意力（有掩码）”。
    pub name: &'static str,
    /// 比较的元素个数。
    pub elements: usize,
    /// 最大绝对误差。
    pub max_abs_error: f64,
}

/// 把 `ours` 与参考数据里的 `key` 逐元素比较，报告最大绝对误差。
pub fn compare<S: Shape, D: Device<f32>>(
    name: &'static str,
    ours: &Tensor<S, f32, D>,
    ckpt: &Checkpoint,
    key: &str,
) -> Result<Comparison, CheckpointError> {
    let reference = ckpt.get(key)?;
    let ours = ours.as_vec();
    assert_eq!(ours.len(), reference.len(), "{name}：元素个数不同");
    let max_abs_error = ours
        .iter()
        .zip(&reference.values())
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    Ok(Comparison {
        name,
        elements: ours.len(),
        max_abs_error,
    })
}

/// 逐组件与 PyTorch 比较（在 CPU 上）。
pub fn compare_all(path: &Path) -> Result<Vec<Comparison>, CheckpointError> {
    compare_all_on(&Cpu::default(), path)
}

/// 逐组件与 PyTorch 比较，在给定的设备上计算（CUDA 版本的测试用它在 GPU 上核对）。
pub fn compare_all_on<D: Kernels<f32>>(
    dev: &D,
    path: &Path,
) -> Result<Vec<Comparison>, CheckpointError> {
    let ckpt = Checkpoint::read(path)?;
    let dev = dev.clone();
    let x4 = |key: &str| -> Result<Tensor<(usize, usize, usize, usize), f32, D>, CheckpointError> {
        let s = &ckpt.get(key)?.shape;
        ckpt.tensor(&dev, key, (s[0], s[1], s[2], s[3]))
    };
    let lengths: Vec<usize> = ckpt
        .get("lengths")?
        .values()
        .iter()
        .map(|&v| v as usize)
        .collect();
    let x_shape = &ckpt.get("x")?.shape;
    let (batch, seq) = (x_shape[0], x_shape[1]);
    let mask = PaddingMask::from_lengths(&dev, &lengths, seq).expect("参考数据中的长度合法");
    let x: Tensor<(usize, usize, Const<M>), f32, D> =
        ckpt.tensor(&dev, "x", (batch, seq, Const::<M>))?;
    let mut out = Vec::new();

    let (q, k, v) = (x4("sdpa.q")?, x4("sdpa.k")?, x4("sdpa.v")?);
    let (o, w) = scaled_dot_product_attention(q.clone(), k.clone(), v.clone(), None, 0.0);
    out.push(compare("缩放点积注意力：输出", &o, &ckpt, "sdpa.out")?);
    out.push(compare("缩放点积注意力：权重", &w, &ckpt, "sdpa.weights")?);
    let (o, w) = scaled_dot_product_attention(q, k, v, Some(&mask.bias), 0.0);
    out.push(compare(
        "缩放点积注意力（掩码）：输出",
        &o,
        &ckpt,
        "sdpa_masked.out",
    )?);
    out.push(compare(
        "缩放点积注意力（掩码）：权重",
        &w,
        &ckpt,
        "sdpa_masked.weights",
    )?);

    let mut mha = MultiHeadAttention::<M, H, f32, D>::build(&dev);
    ckpt.load_into(&mut mha, "params.layers.0.attention.")?;
    let (o, w) = mha.forward(x.clone(), None);
    out.push(compare("多头注意力：输出", &o, &ckpt, "mha.out")?);
    out.push(compare("多头注意力：权重", &w, &ckpt, "mha.weights")?);
    let (o, w) = mha.forward(x.clone(), Some(&mask));
    out.push(compare(
        "多头注意力（掩码）：输出",
        &o,
        &ckpt,
        "mha_masked.out",
    )?);
    out.push(compare(
        "多头注意力（掩码）：权重",
        &w,
        &ckpt,
        "mha_masked.weights",
    )?);

    let pe_len = ckpt.get("pe.table")?.shape[0];
    out.push(compare(
        "位置编码表",
        &PositionalEncoding::<M, f32, D>::new(&dev, pe_len).table,
        &ckpt,
        "pe.table",
    )?);

    let mut ln = LayerNorm::<M, f32, D>::build(&dev);
    ckpt.load_into(&mut ln, "params.layers.0.norm1.")?;
    out.push(compare(
        "层归一化",
        &ln.forward(x.clone(), EPS),
        &ckpt,
        "layer_norm.out",
    )?);

    let mut ffn = FeedForward::<M, F, f32, D>::build(&dev);
    ckpt.load_into(&mut ffn, "params.layers.0.feed_forward.")?;
    out.push(compare(
        "前馈网络（ReLU）",
        &ffn.forward(x.clone(), Activation::Relu),
        &ckpt,
        "ffn_relu.out",
    )?);
    out.push(compare(
        "前馈网络（GELU）",
        &ffn.forward(x.clone(), Activation::Gelu),
        &ckpt,
        "ffn_gelu.out",
    )?);

    let mut layer = EncoderLayer::<M, H, F, f32, D>::build(&dev);
    ckpt.load_into(&mut layer, "params.layers.0.")?;
    for (norm_position, name, key) in [
        (
            NormPosition::Pre,
            "编码器层（Pre-LN，掩码）",
            "layer_pre.out",
        ),
        (
            NormPosition::Post,
            "编码器层（Post-LN，掩码）",
            "layer_post.out",
        ),
    ] {
        let cfg = EncoderConfig {
            norm_position,
            ..Default::default()
        };
        out.push(compare(
            name,
            &layer.forward(x.clone(), Some(&mask), &cfg, Mode::Eval).0,
            &ckpt,
            key,
        )?);
    }

    let tokens: Tensor<(usize, usize), usize, D> = dev.tensor_from_vec(
        ckpt.get("tokens")?
            .values()
            .iter()
            .map(|&v| v as usize)
            .collect(),
        (batch, seq),
    );
    for (norm_position, use_mask, name, key) in [
        (
            NormPosition::Pre,
            true,
            "编码器（Pre-LN，掩码）",
            "encoder_pre.out",
        ),
        (
            NormPosition::Post,
            true,
            "编码器（Post-LN，掩码）",
            "encoder_post.out",
        ),
        (
            NormPosition::Pre,
            false,
            "编码器（Pre-LN，无掩码）",
            "encoder_nomask.out",
        ),
    ] {
        let mut encoder = FixtureEncoder::new(
            &dev,
            EncoderConfig {
                norm_position,
                max_len: pe_len,
                ..Default::default()
            },
        );
        ckpt.load_into(&mut encoder.params, "params.")?;
        let hidden = encoder
            .forward(tokens.clone(), use_mask.then_some(&mask), Mode::Eval)
            .expect("输入合法")
            .hidden;
        out.push(compare(name, &hidden, &ckpt, key)?);
    }
    Ok(out)
}
