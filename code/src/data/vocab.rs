//! 字符级词表：按训练集中的字频取前若干个字，加上 BERT 风格的特殊记号。
//!
//! 词表大小是模型的类型参数（词嵌入 `Embedding<V, M>`），所以这里按一个固定的容量截断，
//! 而不是有多少字就建多大的表。保存为 `vocab.txt`：每行一个记号，行号即 id（与 BERT 的格式相同）。

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

/// 特殊记号，id 依次为 0..5。
pub const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
/// 填充记号的 id。
pub const PAD: usize = 0;
/// 未登录字的 id。
pub const UNK: usize = 1;

/// 字符级词表。
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CharVocab {
    tokens: Vec<String>,
    index: HashMap<String, usize>,
}

impl CharVocab {
    // ANCHOR: build
    /// 从训练文本建表：特殊记号之后，按字频从高到低（同频按字符编码）取满 `capacity` 个。
    pub fn build<'a>(texts: impl IntoIterator<Item = &'a str>, capacity: usize) -> Self {
        let mut counts: BTreeMap<char, usize> = BTreeMap::new();
        for text in texts {
            for c in text.chars() {
                *counts.entry(c).or_default() += 1;
            }
        }
        let mut by_freq: Vec<(char, usize)> = counts.into_iter().collect();
        by_freq.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let room = capacity.saturating_sub(SPECIAL_TOKENS.len());
        let tokens = SPECIAL_TOKENS
            .iter()
            .map(|s| s.to_string())
            .chain(by_freq.into_iter().take(room).map(|(c, _)| c.to_string()));
        Self::from_tokens(tokens.collect())
    }
    // ANCHOR_END: build

    // ANCHOR: build_wordpiece
    /// BERT 格式的字表（附录 A 的中文迷你 BERT）：正好 `size` 个记号，配合 BERT 的分词流程（小写、去重音、汉字两侧加空格、
    /// 按标点切开、WordPiece）使用。依次是：特殊记号；可打印 ASCII 字符（小写）及字母数字的 `##` 续写形式——这样任何英文单词、
    /// 数字都能被 WordPiece 拆成单字，不会整个变成 `[UNK]`；其余字符按（小写后的）字频从高到低；不足时用 `[unused0]`… 补齐。
    pub fn build_wordpiece<'a>(texts: impl IntoIterator<Item = &'a str>, size: usize) -> Self {
        let mut tokens: Vec<String> = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
        let ascii: Vec<char> = ('!'..='~').filter(|c| !c.is_ascii_uppercase()).collect();
        tokens.extend(ascii.iter().map(|c| c.to_string()));
        tokens.extend(
            ascii
                .iter()
                .filter(|c| c.is_ascii_alphanumeric())
                .map(|c| format!("##{c}")),
        );
        let mut counts: BTreeMap<char, usize> = BTreeMap::new();
        for text in texts {
            for c in text.chars().flat_map(char::to_lowercase) {
                if !c.is_ascii() && !c.is_whitespace() && !c.is_control() {
                    *counts.entry(c).or_default() += 1;
                }
            }
        }
        let mut by_freq: Vec<(char, usize)> = counts.into_iter().collect();
        by_freq.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let room = size.saturating_sub(tokens.len());
        tokens.extend(by_freq.into_iter().take(room).map(|(c, _)| c.to_string()));
        let missing = size.saturating_sub(tokens.len());
        tokens.extend((0..missing).map(|k| format!("[unused{k}]")));
        tokens.truncate(size);
        Self::from_tokens(tokens)
    }
    // ANCHOR_END: build_wordpiece

    fn from_tokens(tokens: Vec<String>) -> Self {
        let index = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i))
            .collect();
        Self { tokens, index }
    }

    /// 记号个数。
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// 是否为空（不会发生：至少有特殊记号）。
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// id 对应的记号。
    pub fn token(&self, id: usize) -> &str {
        &self.tokens[id]
    }

    /// 把文本逐字转成 id，最多 `max_len` 个；不在表中的字记为 `[UNK]`。
    pub fn encode(&self, text: &str, max_len: usize) -> Vec<usize> {
        text.chars()
            .take(max_len)
            .map(|c| {
                *self
                    .index
                    .get(c.encode_utf8(&mut [0; 4]) as &str)
                    .unwrap_or(&UNK)
            })
            .collect()
    }

    /// 写成 `vocab.txt`（原子写入）。
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut text = self.tokens.join("\n");
        text.push('\n');
        crate::io::write_atomic(path, text.as_bytes())
    }

    /// 读 `vocab.txt`：每行一个记号；空行、重复的记号、缺少特殊记号都是错误，并指明行号。
    pub fn load(path: &Path) -> Result<Self, VocabError> {
        let text = std::fs::read_to_string(path).map_err(|e| VocabError::Io {
            path: path.into(),
            error: e.to_string(),
        })?;
        let mut seen = HashMap::new();
        let mut tokens = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.is_empty() {
                return Err(VocabError::Line {
                    path: path.into(),
                    line: i + 1,
                    problem: "空行".into(),
                });
            }
            if let Some(first) = seen.insert(line.to_string(), i + 1) {
                return Err(VocabError::Line {
                    path: path.into(),
                    line: i + 1,
                    problem: format!("记号 `{line}` 与第 {first} 行重复"),
                });
            }
            tokens.push(line.to_string());
        }
        for (id, special) in SPECIAL_TOKENS.iter().enumerate() {
            if tokens.get(id).map(String::as_str) != Some(*special) {
                return Err(VocabError::Line {
                    path: path.into(),
                    line: id + 1,
                    problem: format!("第 {} 行应为特殊记号 {special}", id + 1),
                });
            }
        }
        Ok(Self::from_tokens(tokens))
    }
}

/// 读词表时的错误。
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VocabError {
    /// 文件读不了。
    Io {
        /// 文件。
        path: PathBuf,
        /// 原因。
        error: String,
    },
    /// 某一行有问题。
    Line {
        /// 文件。
        path: PathBuf,
        /// 行号（从 1 开始）。
        line: usize,
        /// 问题。
        problem: String,
    },
}

impl fmt::Display for VocabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VocabError::Io { path, error } => write!(f, "无法读取词表 {}：{error}", path.display()),
            VocabError::Line {
                path,
                line,
                problem,
            } => write!(f, "词表 {} 第 {line} 行：{problem}", path.display()),
        }
    }
}

impl std::error::Error for VocabError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_by_frequency_and_encodes_with_unk() {
        let v = CharVocab::build(["好好好书", "书不好", "差"], 8);
        assert_eq!(v.len(), 8);
        assert_eq!((v.token(5), v.token(6), v.token(7)), ("好", "书", "不")); // 4 次、2 次、1 次（不 < 差）
        assert_eq!(v.encode("好书差啊", 10), vec![5, 6, UNK, UNK]);
        assert_eq!(v.encode("好书差啊", 2), vec![5, 6]);
    }

    #[test]
    fn save_load_round_trip_and_bad_files() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("vocab.txt");
        let v = CharVocab::build(["你好世界"], 100);
        v.save(&path).unwrap();
        assert_eq!(CharVocab::load(&path).unwrap(), v);
        std::fs::write(&path, "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n好\n好\n").unwrap();
        assert_eq!(
            CharVocab::load(&path).unwrap_err().to_string(),
            format!("词表 {} 第 7 行：记号 `好` 与第 6 行重复", path.display())
        );
        std::fs::write(&path, "[UNK]\n[PAD]\n").unwrap();
        assert!(CharVocab::load(&path)
            .unwrap_err()
            .to_string()
            .contains("第 1 行应为特殊记号 [PAD]"));
    }

    #[test]
    fn wordpiece_vocab_spells_any_ascii_word_and_has_the_exact_size() {
        let texts = ["这本书很好，iPhone 4S 也不错！", "物流太慢了"];
        let vocab = CharVocab::build_wordpiece(texts, 200);
        assert_eq!(vocab.len(), 200);
        assert_eq!(vocab.token(0), "[PAD]");
        assert_eq!(vocab.token(4), "[MASK]");
        // 5 个特殊记号 + 68 个 ASCII 字符 + 36 个 ## 续写 + 15 个汉字与全角标点，其余补 [unused…]
        assert_eq!(vocab.token(5 + 68 + 36 + 15), "[unused0]");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        vocab.save(&dir.join("vocab.txt")).unwrap();
        let tok =
            crate::bert::tokenizer::BertTokenizer::from_vocab(&dir.join("vocab.txt")).unwrap();
        let ids = tok.encode("iPhone 4S 很好！Rust", None, 64).unwrap().ids;
        assert!(!ids.contains(&UNK), "{ids:?}");
    }
}
