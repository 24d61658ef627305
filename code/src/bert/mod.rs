//! 第 3 部分 · BERT。
//!
//! | 文件 | 章节 |
//! | --- | --- |
//! | `model.rs` | 3.1 BERT 的结构：嵌入、Post-LN 编码器（复用第 1 部分的编码器层）、池化层、分类头 |
//! | `hf.rs` | 3.2 读取 Hugging Face 的检查点：键名映射 |
//! | `config.rs` | 3.2 `config.json` 与预设的核对 |
//! | `tokenizer.rs` | 3.2 分词：HF 的 tokenizers crate |
//! | `mlm.rs` | 附录 A 掩码语言模型：掩码与输出头 |
//! | `presets.rs` | 3.6 从 `config.json`、`adapter_config.json` 分派到编译好的宽度、秩与目标层 |

pub mod config;
pub mod hf;
pub mod mlm;
pub mod model;
pub mod presets;
pub mod tokenizer;
