//! 3.6 节：从运行期的配置选到编译期的类型。
//!
//! 模型宽度、LoRA 的秩与目标层都是类型参数；命令行读到的是 `config.json` 与 `adapter_config.json`。
//! 这里把“读到的数”分派到“编译好的类型”：像 [`DeviceTask`](crate::basics::device::DeviceTask) 一样，
//! 要做的事写成一个对类型参数泛型的 trait 方法，分派函数按配置选一个实例调用它。
//! 没有编译进来的组合给出列出全部可选项的中文错误。

use std::fmt;
use std::path::Path;

use super::config::{ConfigError, HfBertConfig};
use crate::lora::encoder::{AllLinear, Attention, QueryValue, Targets};
use crate::peft::config::LAYER_LINEARS;

// ANCHOR: presets
/// 编译进命令行程序的 BERT 预设：名字、宽度 `[V, M, H, F, L, P, TT]`、类别数 C。
pub const PRESETS: [(&str, [usize; 7], usize); 4] = [
    ("bert-base-chinese", [21128, 768, 12, 3072, 12, 512, 2], 2),
    (
        "中文迷你 BERT（附录 A）",
        [4096, 256, 4, 1024, 4, 128, 2],
        2,
    ),
    ("all-MiniLM-L6-v2", [30522, 384, 12, 1536, 6, 512, 2], 2),
    ("tiny（测试用）", [64, 32, 4, 48, 2, 24, 2], 3),
];

/// 对模型宽度泛型的一项工作。
pub trait PresetTask {
    /// 结果。
    type Output;
    /// 在宽度为 `(V, M, H, F, L, P, TT)`、C 类的 BERT 上完成这项工作。
    fn run<
        const V: usize,
        const M: usize,
        const H: usize,
        const F: usize,
        const L: usize,
        const P: usize,
        const TT: usize,
        const C: usize,
    >(
        self,
    ) -> Self::Output;
}

/// 读 `dir/config.json`，按宽度选一个预设来运行 `task`。类别数 C 取预设的：预训练的检查点没有分类头，
/// `config.json` 里的类别数对它没有意义；有分类头时，读权重时会核对它的形状 `(C, M)`。
pub fn dispatch_preset<T: PresetTask>(dir: &Path, task: T) -> Result<T::Output, PresetError> {
    let path = dir.join("config.json");
    let config = HfBertConfig::read(&path)?;
    let widths = config.widths();
    match widths {
        [21128, 768, 12, 3072, 12, 512, 2] => Ok(task.run::<21128, 768, 12, 3072, 12, 512, 2, 2>()),
        [4096, 256, 4, 1024, 4, 128, 2] => Ok(task.run::<4096, 256, 4, 1024, 4, 128, 2, 2>()),
        [30522, 384, 12, 1536, 6, 512, 2] => Ok(task.run::<30522, 384, 12, 1536, 6, 512, 2, 2>()),
        [64, 32, 4, 48, 2, 24, 2] => Ok(task.run::<64, 32, 4, 48, 2, 24, 2, 3>()),
        _ => Err(PresetError::NoPreset {
            path: path.display().to_string(),
            widths,
        }),
    }
}
// ANCHOR_END: presets

// ANCHOR: lora_dispatch
/// 编译进命令行程序的 LoRA 秩。最大 32：测试用的 tiny 预设隐藏维度只有 32，更大的秩在编译期就被
/// [`RankBound`](crate::lora::rank::RankBound) 拒绝（分派的每个分支都会被实例化）。
pub const RANKS: [usize; 6] = [1, 2, 4, 8, 16, 32];

/// 对 LoRA 的秩与目标层泛型的一项工作。
pub trait LoraTask {
    /// 结果。
    type Output;
    /// 用秩 R、目标层 Tg 完成这项工作。
    fn run<const R: usize, Tg: Targets>(self) -> Self::Output;
}

/// 按秩 `r` 与解析出的目标层 `sites`（见 [`resolve_targets`](crate::peft::config::resolve_targets)）选一个实例运行 `task`。
pub fn dispatch_lora<T: LoraTask>(
    r: usize,
    sites: [bool; 6],
    task: T,
) -> Result<T::Output, PresetError> {
    fn with_rank<T: LoraTask, Tg: Targets>(r: usize, task: T) -> Option<T::Output> {
        Some(match r {
            1 => task.run::<1, Tg>(),
            2 => task.run::<2, Tg>(),
            4 => task.run::<4, Tg>(),
            8 => task.run::<8, Tg>(),
            16 => task.run::<16, Tg>(),
            32 => task.run::<32, Tg>(),
            _ => return None,
        })
    }
    let out = if sites == QueryValue::SITES {
        with_rank::<T, QueryValue>(r, task)
    } else if sites == Attention::SITES {
        with_rank::<T, Attention>(r, task)
    } else if sites == AllLinear::SITES {
        with_rank::<T, AllLinear>(r, task)
    } else {
        return Err(PresetError::NoTargets(sites));
    };
    out.ok_or(PresetError::NoRank(r))
}
// ANCHOR_END: lora_dispatch

impl HfBertConfig {
    /// 宽度 `[V, M, H, F, L, P, TT]`。
    pub fn widths(&self) -> [usize; 7] {
        [
            self.vocab_size,
            self.hidden_size,
            self.num_attention_heads,
            self.intermediate_size,
            self.num_hidden_layers,
            self.max_position_embeddings,
            self.type_vocab_size,
        ]
    }
}

/// 分派时的错误。
#[derive(Debug)]
pub enum PresetError {
    /// `config.json` 读不了。
    Config(ConfigError),
    /// 没有与之相符的预设。
    NoPreset {
        /// 文件。
        path: String,
        /// 文件中的宽度。
        widths: [usize; 7],
    },
    /// 这个秩没有编译进来。
    NoRank(usize),
    /// 这组目标层没有编译进来。
    NoTargets([bool; 6]),
}

impl fmt::Display for PresetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PresetError::Config(e) => e.fmt(f),
            PresetError::NoPreset { path, widths } => {
                write!(
                    f,
                    "{path} 的模型（宽度 [vocab_size, hidden_size, num_attention_heads, intermediate_size, num_hidden_layers, max_position_embeddings, type_vocab_size] = {widths:?}）没有编译进本程序。可用的预设："
                )?;
                for (name, w, c) in PRESETS {
                    write!(f, "\n  {name}：{w:?}，{c} 类")?;
                }
                write!(f, "\n要支持新的宽度，在 code/src/bert/presets.rs 的 dispatch_preset 里加一行")
            }
            PresetError::NoRank(r) => write!(
                f,
                "LoRA 配置的字段 r = {r}：本程序编译了这些秩：{RANKS:?}（要加别的，改 code/src/bert/presets.rs 的 RANKS 与 dispatch_lora）"
            ),
            PresetError::NoTargets(sites) => {
                let names: Vec<&str> = LAYER_LINEARS
                    .iter()
                    .zip(sites)
                    .filter(|(_, on)| **on)
                    .map(|(n, _)| *n)
                    .collect();
                write!(
                    f,
                    "LoRA 配置的字段 target_modules 选中了 {}：本程序编译了三组目标层：query、value（[\"query\", \"value\"]）；注意力的四个投影（[\"query\", \"key\", \"value\", \"attention.output.dense\"]）；全部六个线性层（再加 \"intermediate.dense\", \"output.dense\"）",
                    names.join("、")
                )
            }
        }
    }
}

impl std::error::Error for PresetError {}

impl From<ConfigError> for PresetError {
    fn from(e: ConfigError) -> Self {
        PresetError::Config(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Widths;
    impl PresetTask for Widths {
        type Output = (usize, usize, usize);
        fn run<
            const V: usize,
            const M: usize,
            const H: usize,
            const F: usize,
            const L: usize,
            const P: usize,
            const TT: usize,
            const C: usize,
        >(
            self,
        ) -> Self::Output {
            (V, L, C)
        }
    }

    struct Rank;
    impl LoraTask for Rank {
        type Output = (usize, [bool; 6]);
        fn run<const R: usize, Tg: Targets>(self) -> Self::Output {
            (R, Tg::SITES)
        }
    }

    #[test]
    fn dispatches_to_the_compiled_types() {
        let dir = crate::bert::hf::fixtures_dir().join("tiny-bert");
        assert_eq!(dispatch_preset(&dir, Widths).unwrap(), (64, 2, 3));
        assert_eq!(
            dispatch_lora(16, QueryValue::SITES, Rank).unwrap(),
            (16, QueryValue::SITES)
        );
        assert_eq!(
            dispatch_lora(3, QueryValue::SITES, Rank).unwrap_err().to_string(),
            "LoRA 配置的字段 r = 3：本程序编译了这些秩：[1, 2, 4, 8, 16, 32]（要加别的，改 code/src/bert/presets.rs 的 RANKS 与 dispatch_lora）"
        );
        let err = dispatch_lora(8, [true, false, false, false, false, false], Rank)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("LoRA 配置的字段 target_modules 选中了 attention.self.query："),
            "{err}"
        );
    }
}
