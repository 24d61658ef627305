//! 第 2 部分 · LoRA。
//!
//! | 文件 | 章节 |
//! | --- | --- |
//! | `rank.rs` | 2.2 节：秩的编译期与运行期检查 |
//! | `layer.rs` | 2.2、2.3 节：LoRA 线性层，合并与拆分 |
//! | `encoder.rs` | 2.4 节：编码器中的 LoRA（冻结的基座 + 可训练的适配器，目标层写在类型里） |
//! | `analysis.rs` | 2.5 节：参数效率与优化器内存 |
//! | `recovery.rs` | 2.7 节：低秩恢复实验 |

pub mod analysis;
pub mod encoder;
pub mod layer;
pub mod rank;
pub mod recovery;
