//! 第 3 部分 · BERT。
//!
//! | 文件 | 章节 |
//! | --- | --- |
//! | `model.rs` | 3.1 BERT 的结构：嵌入、Post-LN 编码器（复用第 1 部分的编码器层）、池化层、分类头 |
//! | `hf.rs` | 3.2 读取 Hugging Face 的检查点：键名映射 |
//! | `config.rs` | 3.2 `config.json` 与预设的核对 |
//! | `tokenizer.rs` | 3.2 分词：HF 的 tokenizers crate |
//! | `hub.rs` | 3.8 从 Hugging Face Hub 下载模型（与 Python 共用缓存） |
//! | `mlm.rs` | 附录 A 掩码语言模型：掩码与输出头 |
//! | `runtime.rs` | 3.1 大小在运行期才知道的模块：嵌入表、分类头、层数可变的编码器 |
//! | `presets.rs` | 3.8 从 `config.json` 分派到编译好的宽度 (M, H, F) |

pub mod config;
pub mod hf;
pub mod hub;
pub mod mlm;
pub mod model;
pub mod presets;
pub mod runtime;
pub mod tokenizer;
