//! 第 5 部分 · 解码器：因果掩码、字符级 GPT、采样、KV cache 与 GPT 上的 LoRA。
//!
//! | 文件 | 章节 |
//! | --- | --- |
//! | `causal.rs` | 5.1 因果掩码与因果注意力 |
//! | `model.rs` | 5.2 字符级 GPT（与 5.4 的 KV cache 共用一份前向） |
//! | `sample.rs` | 5.3 贪心、温度与 top-k 采样 |
//! | `lora.rs` | 5.5 GPT 上的 LoRA（复用第 2 部分的适配器与钩子） |
//! | `train.rs` | 语言模型的训练与评估（5.2、5.5 的实验） |
//! | `parity.rs` | 与 PyTorch 参考实现的比较 |
//!
//! 解码器层的参数与第 1 部分的编码器层完全相同（[`EncoderLayer`](crate::transformer::encoder::EncoderLayer)），
//! 不同的只是注意力里多了因果掩码、层归一化放在子层之前（Pre-LN），以及输出端的语言模型头。

pub mod causal;
pub mod lora;
pub mod model;
pub mod parity;
pub mod sample;
pub mod train;
