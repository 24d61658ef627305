//! 第 4 部分：PEFT 里 LoRA 的变体。

pub mod rslora;
