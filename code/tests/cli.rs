//! 第 3 部分的命令行：`finetune`、`classify`、`embed` 端到端（在仓库里的小模型上），以及坏输入的中文错误。

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llm-book"))
        .args(args)
        .output()
        .expect("启动 llm-book")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("llm-book-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `classify` 一行输出：标签、各类概率、文本。
fn probabilities(line: &str) -> Vec<f64> {
    line.split('\t')
        .nth(1)
        .unwrap()
        .split("  ")
        .map(|p| p.rsplit(' ').next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn adapter_and_merged_model_classify_the_same() {
    let base = fixtures().join("tiny-bert");
    let adapter = fixtures().join("tiny-bert-rust-adapter");
    let merged = fixtures().join("tiny-bert-rust-merged");
    let with_adapter = run(&[
        "classify",
        "--model",
        base.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "书很好",
        "物流太慢了",
    ]);
    assert!(with_adapter.status.success(), "{}", stderr(&with_adapter));
    let from_merged = run(&[
        "classify",
        "--model",
        merged.to_str().unwrap(),
        "书很好",
        "物流太慢了",
    ]);
    assert!(from_merged.status.success(), "{}", stderr(&from_merged));
    let (a, b) = (stdout(&with_adapter), stdout(&from_merged));
    assert_eq!(a.lines().count(), 2);
    for (x, y) in a.lines().zip(b.lines()) {
        assert_eq!(x.split('\t').next(), y.split('\t').next(), "同样的预测");
        let (px, py) = (probabilities(x), probabilities(y));
        assert_eq!(px.len(), 3);
        assert!((px.iter().sum::<f64>() - 1.0).abs() < 1e-3);
        for (p, q) in px.iter().zip(&py) {
            assert!((p - q).abs() < 1e-3, "{x} vs {y}");
        }
    }
}

#[test]
fn embed_prints_unit_vectors_as_json() {
    let out = run(&[
        "embed",
        "--model",
        fixtures().join("tiny-bert").to_str().unwrap(),
        "书很好",
        "hello world",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["text"], "书很好");
    let e: Vec<f64> = items[1]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(e.len(), 32);
    assert!((e.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-4);
}

#[test]
fn bad_inputs_get_chinese_errors_without_panics() {
    // 模型目录里没有 config.json
    let empty = temp("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = run(&["classify", "--model", empty.to_str().unwrap(), "好"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.starts_with("错误：") && err.contains("config.json"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // 没有分类头的预训练模型不能直接分类（否则输出的是随机分类头的结果）
    let headless = temp("headless");
    std::fs::create_dir_all(&headless).unwrap();
    for f in ["config.json", "vocab.txt"] {
        std::fs::copy(fixtures().join("tiny-bert").join(f), headless.join(f)).unwrap();
    }
    let weights =
        llm_book::checkpoint::Checkpoint::read(&fixtures().join("tiny-bert/model.safetensors"))
            .unwrap();
    let kept: Vec<(String, Vec<usize>, Vec<f32>)> = weights
        .tensors
        .iter()
        .filter(|(k, _)| !k.starts_with("classifier."))
        .map(|(k, t)| {
            (
                k.clone(),
                t.shape.clone(),
                t.data.iter().map(|&x| x as f32).collect(),
            )
        })
        .collect();
    llm_book::checkpoint::save_tensors(&headless.join("model.safetensors"), &kept).unwrap();
    let out = run(&["classify", "--model", headless.to_str().unwrap(), "好"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("没有分类头"), "{}", stderr(&out));
    let out = run(&["embed", "--model", headless.to_str().unwrap(), "好"]);
    assert!(
        out.status.success(),
        "求句向量不需要分类头：{}",
        stderr(&out)
    );
    // 适配器的秩没有编译进来
    let bad = temp("bad-adapter");
    std::fs::create_dir_all(&bad).unwrap();
    let cfg =
        std::fs::read_to_string(fixtures().join("tiny-bert-rust-adapter/adapter_config.json"))
            .unwrap();
    std::fs::write(
        bad.join("adapter_config.json"),
        cfg.replace("\"r\": 4", "\"r\": 3"),
    )
    .unwrap();
    let out = run(&[
        "classify",
        "--model",
        fixtures().join("tiny-bert").to_str().unwrap(),
        "--adapter",
        bad.to_str().unwrap(),
        "好",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("字段 r = 3"), "{}", stderr(&out));
    // 宽度没有编译进来的模型
    let odd = temp("odd-model");
    std::fs::create_dir_all(&odd).unwrap();
    let cfg = std::fs::read_to_string(fixtures().join("tiny-bert/config.json")).unwrap();
    std::fs::write(
        odd.join("config.json"),
        cfg.replace("\"hidden_size\": 32", "\"hidden_size\": 40"),
    )
    .unwrap();
    let out = run(&["embed", "--model", odd.to_str().unwrap(), "好"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("没有编译进本程序。可用的预设"),
        "{}",
        stderr(&out)
    );
    for d in [empty, headless, bad, odd] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

/// 由小词表里的字拼出的评论语料（每类 60 条，互不相同）。
fn toy_corpus(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let (bad, good) = (
        ["差", "失望", "慢", "贵", "不好"],
        ["好", "喜欢", "推荐", "快", "便宜"],
    );
    let things = ["书", "物流", "价格", "质量"];
    let make = |words: &[&str]| -> String {
        let mut lines = Vec::new();
        for (i, w) in words.iter().enumerate() {
            for (j, t) in things.iter().enumerate() {
                for k in 0..3 {
                    lines.push(format!(
                        "{t}{}{w}{}",
                        "很".repeat(k),
                        "了".repeat((i + j) % 2)
                    ));
                }
            }
        }
        lines.join("\n") + "\n"
    };
    std::fs::write(dir.join("neg.txt"), make(&bad)).unwrap();
    std::fs::write(dir.join("pos.txt"), make(&good)).unwrap();
}

#[test]
fn finetune_writes_an_adapter_that_classify_can_use() {
    let data = temp("data");
    toy_corpus(&data);
    let out = temp("finetune");
    let base = fixtures().join("tiny-bert");
    let args = [
        "finetune",
        "--model",
        base.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--r",
        "4",
        "--alpha",
        "8",
        "--max-steps",
        "6",
        "--batch-size",
        "8",
        "--eval-every",
        "3",
        "--merge",
    ];
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("可训练参数：1,123 || 全部参数：20,230"),
        "{text}"
    );
    for f in [
        "metrics.csv",
        "curves.svg",
        "summary.json",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "merged/model.safetensors",
    ] {
        assert!(out.join(f).exists(), "缺少 {f}");
    }
    assert!(!out.join("checkpoint").exists());
    let o = run(&[
        "classify",
        "--model",
        base.to_str().unwrap(),
        "--adapter",
        out.join("adapter").to_str().unwrap(),
        "书很好",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // 不合法的 LoRA 参数：中文错误，不留检查点
    let o = run(&[
        "finetune",
        "--model",
        base.to_str().unwrap(),
        "--out",
        out.join("x").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--lora-dropout",
        "1.5",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("字段 lora_dropout = 1.5"),
        "{}",
        stderr(&o)
    );
    assert!(!out.join("x").join("checkpoint").exists());
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_dir_all(&data).unwrap();
}

#[test]
fn fill_mask_agrees_with_transformers_on_the_tiny_model() {
    // 参考：transformers 的 BertForMaskedLM 对 [CLS] 失 [MASK] 的 ! [MASK] [SEP] 算出的 logits（第 0 条）
    let out = run(&[
        "fill-mask",
        "--json",
        "--top",
        "64",
        "--model",
        fixtures().join("tiny-bert-mlm").to_str().unwrap(),
        "失[MASK]的![MASK]",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ours: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let reference = llm_book::checkpoint::Checkpoint::read(
        &fixtures().join("tiny-bert-mlm-reference.safetensors"),
    )
    .unwrap();
    let logits = &reference.get("logits").unwrap().data;
    let vocab: Vec<String> = std::fs::read_to_string(fixtures().join("tiny-bert-mlm/vocab.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    for (k, position) in [2usize, 5].into_iter().enumerate() {
        let row = &logits[position * 64..(position + 1) * 64];
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|z| (z - max).exp()).sum();
        for item in ours[k]["top"].as_array().unwrap() {
            let (token, p) = (item[0].as_str().unwrap(), item[1].as_f64().unwrap());
            let id = vocab.iter().position(|t| t == token).unwrap();
            let want = (row[id] - max).exp() / sum;
            assert!((p - want).abs() < 1e-6, "{token}: {p} vs {want}");
        }
    }
}

#[test]
fn probe_and_scratch_train_what_they_say() {
    let data = temp("data-probe");
    toy_corpus(&data);
    let base = fixtures().join("tiny-bert");
    for (flag, trainable) in [("--probe", 32 * 3 + 3), ("--scratch", 20_230 - 1_123)] {
        let out = temp(&format!("method{flag}"));
        let o = run(&[
            "finetune",
            flag,
            "--model",
            base.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--max-steps",
            "3",
            "--batch-size",
            "8",
        ]);
        assert!(o.status.success(), "{flag}: {}", stderr(&o));
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                .unwrap();
        let n = summary["trainable"].as_u64().unwrap() as usize;
        // 线性探测只有分类头；从零训练是全部参数（PEFT 数的 20,230 里有 LoRA 与分类头副本的 1,123 个）
        assert_eq!(n, trainable, "{flag}");
        // AdamW 的 m、v：每个可训练参数两个 f32
        assert_eq!(
            summary["report"]["optimizer_bytes"].as_u64().unwrap() as usize,
            2 * 4 * n
        );
        assert!(summary["peak_rss_bytes"].as_u64().unwrap() > 1_000_000);
        std::fs::remove_dir_all(&out).unwrap();
    }
    std::fs::remove_dir_all(&data).unwrap();
}
