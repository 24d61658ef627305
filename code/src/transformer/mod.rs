//! 第 1 部分 · Transformer 编码器。
//!
//! | 文件 | 章节 |
//! | --- | --- |
//! | `attention.rs` | 1.1 缩放点积注意力（含填充掩码） |
//! | `multi_head.rs` | 1.2 多头注意力 |
//! | `positional.rs` | 1.3 位置编码 |
//! | `norm.rs` | 1.4 层归一化 |
//! | `feed_forward.rs`、`gelu.rs` | 1.5 前馈网络与精确 GELU |
//! | `encoder.rs` | 1.6 编码器层与编码器 |
//! | `hooks.rs` | 线性层之后的钩子（第 2 部分的 LoRA 借此接入） |
//! | `cost.rs` | 1.7 参数量、显存与计算量 |
//! | `classifier.rs` | 1.8 序列分类模型（平均池化 + 分类头） |
//! | `parity.rs` | 与 PyTorch 参考实现的逐组件比较 |

pub mod attention;
pub mod classifier;
pub mod cost;
pub mod encoder;
pub mod feed_forward;
pub mod gelu;
pub mod hooks;
pub mod multi_head;
pub mod norm;
pub mod parity;
pub mod pe_numerics;
pub mod positional;
