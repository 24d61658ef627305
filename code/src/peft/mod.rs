//! 第 3 部分 · 与 Hugging Face PEFT 互通的 LoRA。
//!
//! | 文件 | 章节 |
//! | --- | --- |
//! | `config.rs` | 3.4 `adapter_config.json`（[`LoraConfig`](config::LoraConfig)）与 `target_modules` 的匹配 |
//! | `model.rs` | 3.4 `get_peft_model`、`print_trainable_parameters`；3.5 适配器的保存与加载、`merge_and_unload` |
//! | `dora.rs` | 4.2 DoRA（`use_dora`）：长度向量、按行的范数、前向与合并 |
//! | `adalora.rs` | 4.4 AdaLoRA（`peft_type: "ADALORA"`）：SVD 形式的前向、正交正则、按重要性分配秩 |
//! | `init.rs` | 4.3 从基座的权重算初值：PiSSA、OLoRA（`init_lora_weights`） |
//! | `combine.rs` | 4.6 把几个适配器加权合成一个（`add_weighted_adapter`：cat、linear、svd） |

pub mod adalora;
pub mod adapter;
pub mod combine;
pub mod config;
pub mod dora;
pub mod init;
pub mod model;
