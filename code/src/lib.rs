//! 《用 Rust 从零理解大模型》的配套 crate。
//!
//! 每个模块对应书中的一部分，每个文件对应一章（或一章中的一个概念）：
//!
//! | 模块 | 书中位置 |
//! | --- | --- |
//! | [`basics`] | 第 0 部分 · dfdx 与编译期形状 |
//! | [`transformer`] | 第 1 部分 · Transformer 编码器 |
//! | [`kernels`] | 附录 B · 融合算子；`kernels::composite` 是各章组合写法的所在，`kernels::device` 在选定的设备上运行（只依赖 [`basics`]） |
//! | [`checkpoint`] | 按名字读写 safetensors 检查点（第 1、3 部分共用） |
//! | [`data`] | 语料、词表与组批（1.8 节起） |
//! | [`train`] | 全书共用的分类训练循环 |
//! | [`experiments`] | 书中的实验及其结果文件（code/results） |
//! | [`lora`] | 第 2 部分 · LoRA |
//! | [`bert`] | 第 3 部分 · BERT 与 Hugging Face 检查点 |
//! | [`peft`] | 第 3 部分 · 与 PEFT 互通的 LoRA（适配器的配置、保存、加载与合并） |
//! | [`quant`] | 4.5 节 · QLoRA：量化存放的基座（int8、NF4） |
//! | [`gpt`] | 第 5 部分 · 解码器：因果掩码、字符级 GPT、采样、KV cache、GPT 上的 LoRA |
//! | [`plot`] | 书中所有图的绘制（plotters，SVG） |
//! | [`figures`] | 书中每张图的登记表：`cargo run --release -- figures` 逐一重新生成 |
//! | [`io`] | 原子写文件等共用工具 |
//! | [`cli`] | 实验命令行的中文帮助与错误信息 |

// 本书让类型写出张量的形状（如 `Tensor<(usize, usize, Const<M>), E, D, T>`），
// 这正是 clippy 的 type_complexity 所说的“复杂类型”；用别名藏起形状会违背本书的初衷。
#![allow(clippy::type_complexity)]

pub mod alloc;
pub mod basics;
pub mod bert;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod experiments;
pub mod figures;
pub mod gpt;
pub mod io;
pub mod kernels;
pub mod lora;
pub mod peft;
pub mod plot;
pub mod quant;
pub mod train;
pub mod transformer;
pub mod variants;

/// 本 crate 用的随机数库（rand 0.8）。依赖树里另有 rand 0.9（来自 tokenizers），书中片段若直接写 `extern crate rand`
/// 会遇到两个候选；片段通过 `llm_book::rand` 使用它。
pub use rand;
