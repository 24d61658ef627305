//! 3.8 节：从 `config.json` 选到编译好的宽度。
//!
//! 决定计算形状的三个宽度——隐藏维度 M、头数 H、前馈宽度 F——是类型参数：注意力把 M 拆成 H 个头、
//! 前馈网络先升到 F 再降回 M，这些形状错了编译不过（第 0、1 部分的课）。其余的大小（词表、层数、位置个数、
//! 句子类型个数、类别数）随检查点与任务而变，在运行期读 `config.json` 得到（[`BertDims`](super::model::BertDims)）。
//!
//! 于是一个编译好的程序能读的检查点，就是宽度落在下面这张表里的全部 BERT：表只写一次，
//! 表里的每一行编译出一份模型代码。要支持新的宽度，在 [`width_table!`] 的调用里加一行。

use std::fmt;
use std::path::Path;

use super::config::{ConfigError, HfBertConfig};

/// 对宽度 (M, H, F) 泛型的一项工作。
pub trait WidthTask {
    /// 结果。
    type Output;
    /// 在隐藏维度 M、H 个头、前馈宽度 F 的 BERT 上完成这项工作。
    fn run<const M: usize, const H: usize, const F: usize>(self) -> Self::Output;
}

/// 由宽度表生成 [`WIDTHS`] 与 [`dispatch_widths`]：表只写一次，两者不会不一致。
macro_rules! width_table {
    ($( ($m:literal, $h:literal, $f:literal, $models:literal) ),+ $(,)?) => {
        /// 编译进本程序的宽度：(hidden_size, num_attention_heads, intermediate_size, 用这组宽度的公开检查点)。
        pub const WIDTHS: &[(usize, usize, usize, &str)] = &[$(($m, $h, $f, $models)),+];

        /// 按宽度 `(hidden_size, num_attention_heads, intermediate_size)` 选一个编译好的实例运行 `task`；
        /// 不在表里时为 `None`。
        pub fn dispatch_widths<T: WidthTask>(widths: (usize, usize, usize), task: T) -> Option<T::Output> {
            match widths {
                $(($m, $h, $f) => Some(task.run::<$m, $h, $f>()),)+
                _ => None,
            }
        }
    };
}

// ANCHOR: widths
width_table! {
    (32, 4, 48, "本书测试用的小 BERT（tests/fixtures/tiny-bert）"),
    (128, 2, 512, "google/bert_uncased_L-2_H-128_A-2（BERT-Tiny）"),
    (256, 4, 1024, "google/bert_uncased_L-4_H-256_A-4（BERT-Mini）、附录 A 的中文迷你 BERT"),
    (312, 12, 1200, "huawei-noah/TinyBERT_General_4L_312D"),
    (384, 12, 1536, "sentence-transformers/all-MiniLM-L6-v2、BAAI/bge-small-en-v1.5"),
    (512, 8, 2048, "google/bert_uncased_L-4_H-512_A-8（BERT-Small）、BAAI/bge-small-zh-v1.5"),
    (768, 12, 3072, "bert-base-chinese、hfl/chinese-roberta-wwm-ext、hfl/rbt3、bert-base-uncased"),
    (1024, 16, 4096, "bert-large-uncased、hfl/chinese-roberta-wwm-ext-large"),
}
// ANCHOR_END: widths

/// 读 `dir/config.json`，核对其余字段（[`HfBertConfig::check`]），按宽度选一个编译好的实例运行 `task`。
pub fn dispatch_dir<T: WidthTask>(dir: &Path, task: T) -> Result<T::Output, PresetError> {
    let path = dir.join("config.json");
    let config = HfBertConfig::read(&path)?;
    config.check(&path)?;
    let widths = (
        config.hidden_size,
        config.num_attention_heads,
        config.intermediate_size,
    );
    dispatch_widths(widths, task).ok_or_else(|| PresetError::NoWidth {
        path: path.display().to_string(),
        widths,
    })
}

/// 分派时的错误。
#[derive(Debug)]
pub enum PresetError {
    /// `config.json` 读不了或不合法。
    Config(ConfigError),
    /// 宽度不在表里。
    NoWidth {
        /// 文件。
        path: String,
        /// 文件中的 (hidden_size, num_attention_heads, intermediate_size)。
        widths: (usize, usize, usize),
    },
}

impl fmt::Display for PresetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PresetError::Config(e) => e.fmt(f),
            PresetError::NoWidth {
                path,
                widths: (m, h, ff),
            } => {
                write!(
                    f,
                    "{path} 的宽度没有编译进本程序：字段 hidden_size = {m}、num_attention_heads = {h}、intermediate_size = {ff}。\
                     编译进来的宽度（hidden_size / num_attention_heads / intermediate_size）："
                )?;
                for (m, h, ff, models) in WIDTHS {
                    write!(f, "\n  {m} / {h} / {ff}：{models}")?;
                }
                write!(
                    f,
                    "\n要支持新的宽度，在 code/src/bert/presets.rs 的 width_table! 里加一行，重新编译"
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
    use crate::bert::config::HfBertConfig;

    struct Widths;
    impl WidthTask for Widths {
        type Output = (usize, usize, usize);
        fn run<const M: usize, const H: usize, const F: usize>(self) -> Self::Output {
            (M, H, F)
        }
    }

    #[test]
    fn every_table_row_dispatches_to_its_own_widths() {
        for &(m, h, f, _) in WIDTHS {
            assert_eq!(dispatch_widths((m, h, f), Widths), Some((m, h, f)));
            assert_eq!(m % h, 0, "{m} 维分不成 {h} 个头");
        }
        assert_eq!(dispatch_widths((768, 12, 3071), Widths), None);
    }

    /// 公开检查点的 `config.json`（本书关心的字段）：都能解析、都落在宽度表里，运行期的大小照文件。
    #[test]
    fn public_checkpoint_configs_dispatch() {
        // (名字, vocab_size, hidden, heads, intermediate, layers, max_position_embeddings)
        let public = [
            ("bert-base-chinese", 21128, 768, 12, 3072, 12, 512),
            ("hfl/chinese-roberta-wwm-ext", 21128, 768, 12, 3072, 12, 512),
            ("hfl/rbt3", 21128, 768, 12, 3072, 3, 512),
            ("bert-base-uncased", 30522, 768, 12, 3072, 12, 512),
            ("bert-large-uncased", 30522, 1024, 16, 4096, 24, 512),
            (
                "huawei-noah/TinyBERT_General_4L_312D",
                30522,
                312,
                12,
                1200,
                4,
                512,
            ),
            (
                "sentence-transformers/all-MiniLM-L6-v2",
                30522,
                384,
                12,
                1536,
                6,
                512,
            ),
            ("BAAI/bge-small-zh-v1.5", 21128, 512, 8, 2048, 4, 512),
            (
                "google/bert_uncased_L-2_H-128_A-2",
                30522,
                128,
                2,
                512,
                2,
                512,
            ),
            (
                "google/bert_uncased_L-4_H-256_A-4",
                30522,
                256,
                4,
                1024,
                4,
                512,
            ),
        ];
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("public");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, vocab, m, h, f, layers, positions) in public {
            let json = serde_json::json!({
                "model_type": "bert", "vocab_size": vocab, "hidden_size": m, "num_attention_heads": h,
                "intermediate_size": f, "num_hidden_layers": layers, "max_position_embeddings": positions,
                "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
                "position_embedding_type": "absolute",
            });
            std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
            assert_eq!(dispatch_dir(&dir, Widths).unwrap(), (m, h, f), "{name}");
            let cfg = HfBertConfig::read(&dir.join("config.json")).unwrap();
            let (_, dims) = cfg.check(&dir.join("config.json")).unwrap();
            assert_eq!(
                (dims.vocab_size, dims.num_layers, dims.num_labels),
                (vocab, layers, 2)
            );
        }
    }

    /// 表里的每一组宽度都真的能算：建一个 1 层、小词表的模型，跑一次前向，输出形状对、数值有限。
    #[test]
    fn every_width_in_the_table_runs_a_forward_pass() {
        use crate::bert::model::{bert_config, BertDims, BertParams};
        use crate::transformer::attention::PaddingMask;
        use crate::transformer::encoder::Mode;
        use dfdx::prelude::*;
        struct Forward;
        impl WidthTask for Forward {
            type Output = (usize, Vec<f32>);
            fn run<const M: usize, const H: usize, const F: usize>(self) -> Self::Output {
                let dev = Cpu::seed_from_u64(0);
                let dims = BertDims {
                    vocab_size: 20,
                    num_layers: 1,
                    max_positions: 8,
                    type_vocab_size: 2,
                    num_labels: 5,
                };
                let bert = BertParams::<M, H, F, f32, Cpu>::new(&dev, &dims);
                let tokens = dev.tensor_from_vec(vec![2, 7, 9, 3, 2, 5, 3, 0], (2, 4));
                let mask = PaddingMask::from_lengths(&dev, &[4, 3], 4).unwrap();
                let out = bert
                    .forward(&bert_config(1e-12, 0.0, 8), tokens, None, &mask, Mode::Eval)
                    .unwrap();
                (out.last_hidden_state.shape().2.size(), out.logits.as_vec())
            }
        }
        for &(m, h, f, _) in WIDTHS {
            let (width, logits) = dispatch_widths((m, h, f), Forward).unwrap();
            assert_eq!(width, m);
            assert_eq!(logits.len(), 2 * 5);
            assert!(logits.iter().all(|x| x.is_finite()), "{m}/{h}/{f}");
        }
    }

    #[test]
    fn a_width_outside_the_table_names_the_fields_and_the_table() {
        let dir = crate::bert::hf::fixtures_dir().join("tiny-bert");
        assert_eq!(dispatch_dir(&dir, Widths).unwrap(), (32, 4, 48));
        let scratch = tempfile::tempdir().unwrap();
        let tmp = scratch.path().join("widths");
        std::fs::create_dir_all(&tmp).unwrap();
        let text = std::fs::read_to_string(dir.join("config.json"))
            .unwrap()
            .replace("\"intermediate_size\": 48", "\"intermediate_size\": 50");
        std::fs::write(tmp.join("config.json"), text).unwrap();
        let err = dispatch_dir(&tmp, Widths).unwrap_err().to_string();
        assert!(err.contains("intermediate_size = 50"), "{err}");
        assert!(err.contains("768 / 12 / 3072：bert-base-chinese"), "{err}");
    }
}
