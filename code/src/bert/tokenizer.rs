//! 3.2 节：分词。用 Hugging Face 的 `tokenizers` crate（与 Python 的 transformers 同一份实现）读
//! `tokenizer.json`；只有 `vocab.txt` 时，按 BERT 的约定组装 WordPiece 分词器（BERT 规范化 + BERT 预分词 +
//! WordPiece + `[CLS] … [SEP]` 模板）。
//!
//! 一些模型的 `tokenizer.json` 把每个输入都填充到固定长度（如 all-MiniLM-L6-v2 的 128）：这里关掉填充与截断，
//! 填充交给组批（按批内最长的序列），截断由 [`BertTokenizer::encode`] 的 `max_len` 控制。

use std::fmt;
use std::path::{Path, PathBuf};

use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{Tokenizer, TruncationParams};

/// 一段（或一对）文本的编码。
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// 词 id，含 `[CLS]`、`[SEP]`。
    pub ids: Vec<usize>,
    /// 句子类型 id（第一句 0，第二句 1）。
    pub type_ids: Vec<usize>,
}

/// BERT 的分词器。
pub struct BertTokenizer {
    inner: Tokenizer,
    /// 设好了截断长度的副本，按最近一次的 `max_len` 缓存（不必每次编码都复制整个分词器）。
    truncating: std::sync::Mutex<Option<(usize, Tokenizer)>>,
    source: PathBuf,
}

// ANCHOR: load
impl BertTokenizer {
    /// 从模型目录读：优先 `tokenizer.json`，否则 `vocab.txt`。
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let json = dir.join("tokenizer.json");
        if json.exists() {
            let mut inner =
                Tokenizer::from_file(&json).map_err(|e| TokenizerError::new(&json, e))?;
            inner.with_padding(None);
            inner
                .with_truncation(None)
                .map_err(|e| TokenizerError::new(&json, e))?;
            return Ok(Self {
                inner,
                truncating: Default::default(),
                source: json,
            });
        }
        let vocab = dir.join("vocab.txt");
        if !vocab.exists() {
            return Err(TokenizerError {
                source: dir.into(),
                error: "目录中既没有 tokenizer.json 也没有 vocab.txt".into(),
            });
        }
        Self::from_vocab(&vocab)
    }

    /// 由 BERT 的 `vocab.txt`（每行一个记号）组装 WordPiece 分词器。
    pub fn from_vocab(vocab: &Path) -> Result<Self, TokenizerError> {
        let path = vocab.to_string_lossy().into_owned();
        let wordpiece = WordPiece::from_file(&path)
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| TokenizerError::new(vocab, e))?;
        let mut inner = Tokenizer::new(wordpiece);
        let id = |t: &str| {
            inner.token_to_id(t).ok_or_else(|| TokenizerError {
                source: vocab.into(),
                error: format!("词表中没有 {t}"),
            })
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        inner
            .with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
            .map_err(|e| TokenizerError::new(vocab, e))?;
        inner.with_pre_tokenizer(Some(BertPreTokenizer));
        inner.with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), sep),
            ("[CLS]".into(), cls),
        )));
        // 文本里写的 “[MASK]” 等要当成一个特殊记号，而不是拆成 “[”“mask”“]”（与 transformers 的 BertTokenizer 相同）
        let specials: Vec<tokenizers::AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            .into_iter()
            .filter(|t| inner.token_to_id(t).is_some())
            .map(|t| tokenizers::AddedToken::from(t, true))
            .collect();
        inner
            .add_special_tokens(specials)
            .map_err(|e| TokenizerError::new(vocab, e))?;
        Ok(Self {
            inner,
            truncating: Default::default(),
            source: vocab.into(),
        })
    }

    /// 编码一段文本（`pair` 为第二句），最多 `max_len` 个记号（含特殊记号）。
    pub fn encode(
        &self,
        text: &str,
        pair: Option<&str>,
        max_len: usize,
    ) -> Result<Encoded, TokenizerError> {
        let mut cache = self.truncating.lock().unwrap_or_else(|e| e.into_inner());
        if cache.as_ref().map(|(len, _)| *len) != Some(max_len) {
            let mut tok = self.inner.clone();
            let trunc = TruncationParams {
                max_length: max_len,
                ..Default::default()
            };
            tok.with_truncation(Some(trunc))
                .map_err(|e| TokenizerError::new(&self.source, e))?;
            *cache = Some((max_len, tok));
        }
        let tok = &cache.as_ref().expect("刚刚设好").1;
        let enc = match pair {
            Some(p) => tok.encode((text, p), true),
            None => tok.encode(text, true),
        }
        .map_err(|e| TokenizerError::new(&self.source, e))?;
        Ok(Encoded {
            ids: enc.get_ids().iter().map(|&i| i as usize).collect(),
            type_ids: enc.get_type_ids().iter().map(|&i| i as usize).collect(),
        })
    }

    /// 一个记号的 id（不在词表里时为 `None`）。
    pub fn token_id(&self, token: &str) -> Option<usize> {
        self.inner.token_to_id(token).map(|i| i as usize)
    }

    /// id 对应的记号（不在词表里时为 `None`）。
    pub fn token(&self, id: usize) -> Option<String> {
        self.inner.id_to_token(id as u32)
    }

    /// 词表大小。
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
// ANCHOR_END: load

/// 分词器的错误。
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizerError {
    /// 出错的文件或目录。
    pub source: PathBuf,
    /// 原因。
    pub error: String,
}

impl TokenizerError {
    fn new(source: &Path, e: impl fmt::Display) -> Self {
        Self {
            source: source.into(),
            error: e.to_string(),
        }
    }
}

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "分词器 {}：{}", self.source.display(), self.error)
    }
}

impl std::error::Error for TokenizerError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Case {
        text: String,
        pair: Option<String>,
        ids: Vec<usize>,
        type_ids: Vec<usize>,
    }

    #[test]
    fn vocab_txt_matches_transformers_bert_tokenizer() {
        let fixtures = crate::bert::hf::fixtures_dir();
        let tok = BertTokenizer::from_dir(&fixtures.join("tiny-bert")).unwrap();
        assert_eq!(tok.vocab_size(), 64);
        let cases: Vec<Case> = serde_json::from_str(
            &std::fs::read_to_string(fixtures.join("tiny-bert-tokens.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(cases.len(), 4);
        for c in cases {
            let enc = tok.encode(&c.text, c.pair.as_deref(), 512).unwrap();
            assert_eq!(enc.ids, c.ids, "{}", c.text);
            assert_eq!(enc.type_ids, c.type_ids, "{}", c.text);
        }
        // 截断保留 [CLS] 与 [SEP]
        let short = tok.encode("这本书质量很好，推荐！", None, 5).unwrap();
        assert_eq!(short.ids.len(), 5);
        assert_eq!((short.ids[0], short.ids[4]), (2, 3));
    }

    #[test]
    fn missing_files_are_clear_errors() {
        let err = BertTokenizer::from_dir(Path::new("/不存在")).err().unwrap();
        assert_eq!(
            err.to_string(),
            "分词器 /不存在：目录中既没有 tokenizer.json 也没有 vocab.txt"
        );
    }
}
