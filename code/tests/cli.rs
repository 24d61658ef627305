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

/// 测试用的路径 `<新的临时目录>/name`（还不存在）：临时目录随它一起活着，
/// 离开作用域时（测试失败也是）连同里面的东西一起删掉。当作 `&Path` 用。
struct Temp {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl std::ops::Deref for Temp {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for Temp {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

fn temp(name: &str) -> Temp {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    Temp { _dir: dir, path }
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

/// 4.6 节：几个 `--adapter` 共用一个基座，逐个输出（行首是适配器的目录名），与各自单独运行的结果逐行相同。
#[test]
fn several_adapters_classify_on_one_base() {
    let base = fixtures().join("tiny-bert-3label");
    let adapters = ["tiny-bert-rust-adapter-qkvd", "tiny-bert-rust-adapter-dora"];
    let texts = ["书很好", "物流太慢了"];
    let mut args = vec![
        "classify".to_string(),
        "--model".into(),
        base.display().to_string(),
    ];
    for a in adapters {
        args.extend(["--adapter".into(), fixtures().join(a).display().to_string()]);
    }
    args.extend(texts.map(String::from));
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let both = run(&args);
    assert!(both.status.success(), "{}", stderr(&both));
    let both = stdout(&both);
    assert_eq!(both.lines().count(), 4);
    for (i, a) in adapters.iter().enumerate() {
        let one = run(&[
            "classify",
            "--model",
            base.to_str().unwrap(),
            "--adapter",
            fixtures().join(a).to_str().unwrap(),
            texts[0],
            texts[1],
        ]);
        assert!(one.status.success(), "{}", stderr(&one));
        for (line, single) in both.lines().skip(2 * i).take(2).zip(stdout(&one).lines()) {
            let (name, rest) = line.split_once('\t').unwrap();
            assert_eq!(name, *a);
            assert_eq!(rest, single);
        }
    }
    // 类别名来自适配器目录里的 config.json
    assert!(both.lines().all(|l| l.contains("中性")), "{both}");
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
        .map(|(k, t)| (k.clone(), t.shape.clone(), t.to_vec::<f32>()))
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
    // 适配器的配置说秩 3，文件里的张量是秩 4
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
    std::fs::copy(
        fixtures().join("tiny-bert-rust-adapter/adapter_model.safetensors"),
        bad.join("adapter_model.safetensors"),
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
    assert!(
        stderr(&out).contains("query.lora_A.weight：文件中为 [4, 32]，模型要求 [3, 32]"),
        "{}",
        stderr(&out)
    );
    // --max-len 超出 1..=max_position_embeddings（tiny-bert 是 24）
    for bad_len in ["0", "4096"] {
        let out = run(&[
            "classify",
            "--model",
            fixtures().join("tiny-bert").to_str().unwrap(),
            "--max-len",
            bad_len,
            "好",
        ]);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains(&format!("--max-len = {bad_len}：须在 1 到 24"))
                && err.contains("max_position_embeddings"),
            "{err}"
        );
    }
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
        stderr(&out).contains("的宽度没有编译进本程序：字段 hidden_size = 40"),
        "{}",
        stderr(&out)
    );
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
        "--max-len",
        "24",
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
    // 语料是两类（负面、正面），tiny-bert 的分类头是 3 类：新建 2 类的分类头。
    // q、v 上秩 4 的 LoRA：2 层 × 2 处 × 4 × (32 + 32) = 1,024，加分类头 2 × 32 + 2 = 66；
    // 全部 = 2 类的基座 20,230 − 1,123（3 类的基座里没有 LoRA 与头的副本）− 99 + 66，再加可训练的 1,090
    assert!(
        text.contains("可训练参数：1,090 || 全部参数：20,164"),
        "{text}"
    );
    assert!(text.contains("2 类：负面、正面"), "{text}");
    for f in [
        "metrics.csv",
        "curves.svg",
        "summary.json",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/config.json",
        "merged/model.safetensors",
        "merged/config.json",
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
    let label = stdout(&o).split('\t').next().unwrap().to_string();
    assert!(["负面", "正面"].contains(&label.as_str()), "{}", stdout(&o));
    // 合并后的模型目录带着类别名
    let merged: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("merged/config.json")).unwrap())
            .unwrap();
    assert_eq!(merged["id2label"]["1"], "正面");
    assert_eq!(merged["label2id"]["负面"], 0);
    // 不合法的 LoRA 参数：中文错误，不建输出目录
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
    assert!(!out.join("x").exists(), "配置不合法时不应建输出目录");
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
    let logits = &reference.get("logits").unwrap().values();
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
    // 两类的语料：分类头 2 × 32 + 2 = 66 个参数；从零训练是 tiny-bert 的全部参数（3 类的头换成 2 类）
    for (flag, trainable) in [
        ("--probe", 32 * 2 + 2),
        ("--scratch", 20_230 - 1_123 - 99 + 66),
    ] {
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
            "--max-len",
            "24",
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
    }
}

/// 读者自己的数据：3 类、字符串标签、句子对的 CSV；坏数据行给出文件、行号与列名，不建输出目录。
#[test]
fn finetune_on_a_three_class_csv_with_sentence_pairs() {
    let dir = temp("csv");
    std::fs::create_dir_all(&dir).unwrap();
    let mut csv = String::from("question,answer,label\n");
    let rows = [
        ("书好吗", "很好", "正面"),
        ("书好吗", "一般", "中性"),
        ("书好吗", "很差", "负面"),
    ];
    for i in 0..20 {
        for (q, a, l) in rows {
            csv.push_str(&format!("\"{q}{}\",{a},{l}\n", "？".repeat(i % 3)));
        }
    }
    let train = dir.join("train.csv");
    std::fs::write(&train, &csv).unwrap();
    let out = dir.join("run");
    let base = fixtures().join("tiny-bert");
    let args = |train: &Path, out: &Path| -> Vec<String> {
        [
            "finetune",
            "--model",
            base.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--train",
            train.to_str().unwrap(),
            "--text-column",
            "question",
            "--text-pair-column",
            "answer",
            "--targets",
            "query,key,value,dense",
            "--r",
            "2",
            "--max-len",
            "24",
            "--max-steps",
            "4",
            "--batch-size",
            "8",
        ]
        .map(String::from)
        .to_vec()
    };
    let a = args(&train, &out);
    let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    // 字符串标签按字典序（Unicode 码位），与 transformers 的 run_glue.py 相同
    assert!(text.contains("3 类：中性、正面、负面"), "{text}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        summary["labels"],
        serde_json::json!(["中性", "正面", "负面"])
    );
    assert_eq!(summary["report"]["confusion"].as_array().unwrap().len(), 3);
    // q、k、v、dense（含池化层）上秩 2 的 LoRA：13 处，每处 2 × (输入 + 输出)，加 3 类的分类头
    let lora = 2 * (2 * (4 * 64 + 2 * 80) + 64) + 3 * 32 + 3;
    assert_eq!(summary["trainable"].as_u64().unwrap() as usize, lora);
    let adapter: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter/config.json")).unwrap())
            .unwrap();
    assert_eq!(adapter["id2label"]["2"], "负面");
    let o = run(&[
        "classify",
        "--model",
        base.to_str().unwrap(),
        "--adapter",
        out.join("adapter").to_str().unwrap(),
        "书好吗",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(probabilities(stdout(&o).lines().next().unwrap()).len(), 3);

    // 坏的一行：第 5 行的标签为空
    let mut broken: Vec<&str> = csv.lines().collect();
    broken[4] = "书好吗,很好,";
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, broken.join("\n") + "\n").unwrap();
    let bad_out = dir.join("bad-run");
    let a = args(&bad, &bad_out);
    let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("bad.csv 第 5 行，列 label"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!bad_out.exists(), "数据有错时不应建输出目录");
}

/// 掩码语言模型的检查点（`BertForMaskedLM` 存的，没有池化层与分类头）：池化层是随机新建的，
/// 线性探测与 LoRA 也训练它（LoRA 的 `modules_to_save` 加上 pooler，适配器里存着池化层的副本）。
#[test]
fn a_checkpoint_without_a_pooler_trains_it_in_every_arm() {
    let data = temp("data-pooler");
    toy_corpus(&data);
    let base = fixtures().join("tiny-bert-mlm");
    // (参数, 可训练参数)：池化层 32 × 32 + 32 = 1,056，两类的分类头 66；LoRA 另有 q、v 上秩 4 的 1,024
    for (flag, trainable) in [("--probe", 1_056 + 66), ("--r=4", 1_024 + 1_056 + 66)] {
        let out = temp(&format!("pooler{flag}"));
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
            "2",
            "--batch-size",
            "8",
        ]);
        assert!(o.status.success(), "{flag}: {}", stderr(&o));
        assert!(
            stdout(&o).contains("池化层：检查点里没有"),
            "{}",
            stdout(&o)
        );
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(
            summary["trainable"].as_u64().unwrap() as usize,
            trainable,
            "{flag}"
        );
        if flag != "--probe" {
            let cfg = std::fs::read_to_string(out.join("adapter/adapter_config.json")).unwrap();
            assert!(cfg.contains("\"pooler\""), "{cfg}");
            let weights = llm_book::checkpoint::Checkpoint::read(
                &out.join("adapter/adapter_model.safetensors"),
            )
            .unwrap();
            assert!(weights
                .tensors
                .contains_key("base_model.model.bert.pooler.dense.weight"));
        }
    }
}

#[test]
fn convert_halves_a_model_that_still_classifies_the_same_way() {
    // tiny-bert 存成 f16：文件约小一半，分类的概率只差 f16 舍入带来的一点
    let dir = temp("convert");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors", "vocab.txt"] {
        std::fs::copy(fixtures().join("tiny-bert").join(f), dir.join(f)).unwrap();
    }
    let weights = dir.join("model.safetensors");
    let before = std::fs::metadata(&weights).unwrap().len();
    let o = run(&["convert", weights.to_str().unwrap(), "--dtype", "f16"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let after = std::fs::metadata(&weights).unwrap().len();
    assert!(after * 10 < before * 6, "{before} → {after}");
    let classify = |model: &Path| {
        let o = run(&["classify", "--model", model.to_str().unwrap(), "书很好"]);
        assert!(o.status.success(), "{}", stderr(&o));
        probabilities(stdout(&o).lines().next().unwrap())
    };
    let (f32_probs, f16_probs) = (classify(&fixtures().join("tiny-bert")), classify(&dir));
    let diff = f32_probs
        .iter()
        .zip(&f16_probs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(diff < 1e-2, "{f32_probs:?} vs {f16_probs:?}");
    // 不是 safetensors 的文件：中文错误、非零退出、文件不变
    let bad = dir.join("bad.safetensors");
    std::fs::write(&bad, b"not a safetensors file").unwrap();
    let o = run(&["convert", bad.to_str().unwrap(), "--dtype", "bf16"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("不是有效的 safetensors 文件"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"));
    assert_eq!(std::fs::read(&bad).unwrap(), b"not a safetensors file");
}

/// 4.5 节：`finetune --quantize nf4` 在量化的基座上训练，存下的是普通的 LoRA 适配器（classify 在全精度的基座上直接用）；
/// 打印量化前后投影权重的大小，summary.json 记下格式；`--quantize` 与全量微调一起给时是中文错误，不建输出目录。
#[test]
fn qlora_finetune_writes_a_plain_adapter() {
    let data = temp("qlora-data");
    toy_corpus(&data);
    let out = temp("qlora");
    let base = fixtures().join("tiny-bert");
    let common = [
        "finetune",
        "--model",
        base.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--r",
        "4",
        "--alpha",
        "8",
        "--max-len",
        "24",
        "--max-steps",
        "4",
        "--batch-size",
        "8",
        "--eval-every",
        "2",
        "--quantize",
        "nf4",
    ];
    let o = run(&[&common[..], &["--out", out.to_str().unwrap()]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    // tiny-bert：2 层 × (4×32×32 + 2×32×48) + 池化层 32×32 = 21,504 个数，f32 84 KiB；NF4 每个 0.5 字节 + 每 64 个 4 字节
    assert!(
        stdout(&o).contains("基座量化为 nf4：各层投影与池化层的权重 0.1 MiB → 0.0 MiB"),
        "{}",
        stdout(&o)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["quantize"], "nf4");
    let config = std::fs::read_to_string(out.join("adapter/adapter_config.json")).unwrap();
    assert!(config.contains("\"peft_type\": \"LORA\""), "{config}");
    let o = run(&[
        "classify",
        "--model",
        base.to_str().unwrap(),
        "--adapter",
        out.join("adapter").to_str().unwrap(),
        "书很好",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bad = out.join("full");
    let o = run(&[&common[..], &["--full", "--out", bad.to_str().unwrap()]].concat());
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("--quantize 只用于 LoRA") && !err.contains("panicked"),
        "{err}"
    );
    assert!(!bad.exists(), "出错时不应建输出目录");
}

/// 3.6 节的 `attention`：写出每层每个头的热力图；层号越界是中文错误、不写文件。
#[test]
fn attention_draws_every_layer_and_head() {
    let base = fixtures().join("tiny-bert");
    let tmp = temp("attention");
    let out = tmp.with_extension("svg");
    let o = run(&[
        "attention",
        "--model",
        base.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "书很好",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("记号：[CLS] 书 很 好 [SEP]"), "{text}");
    assert!(text.contains("第 1 层，[CLS] 最关注："), "{text}");
    let svg = std::fs::read_to_string(&out).unwrap();
    assert!(svg.contains("第 0 层 · 头 0") && svg.contains("第 1 层 · 头 3"));
    std::fs::remove_file(&out).unwrap();
    let o = run(&[
        "attention",
        "--model",
        base.to_str().unwrap(),
        "--layers",
        "0,2",
        "--out",
        out.to_str().unwrap(),
        "书很好",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("第 2 层不存在：这个模型有 2 层"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists(), "出错时不应写出图");
}

#[test]
fn gpt_trains_generates_and_rejects_bad_input() {
    // 训练 2 步（窗口 16 个字），写出模型目录
    let dir = temp("gpt");
    let out = run(&[
        "gpt",
        "train",
        "--steps",
        "2",
        "--batch",
        "2",
        "--seq",
        "16",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.join("model.safetensors").exists() && dir.join("vocab.txt").exists());
    let model = dir.to_str().unwrap();
    // 贪心续写 5 个字：有无 KV cache 结果相同
    let a = run(&[
        "gpt",
        "generate",
        "--model",
        model,
        "--max-new",
        "5",
        "--temperature",
        "0",
        "这本书",
    ]);
    let b = run(&[
        "gpt",
        "generate",
        "--model",
        model,
        "--max-new",
        "5",
        "--temperature",
        "0",
        "--no-cache",
        "这本书",
    ]);
    assert!(a.status.success(), "{}", stderr(&a));
    assert!(stdout(&a).starts_with("这本书|"), "{}", stdout(&a));
    assert_eq!(stdout(&a), stdout(&b));
    let fails = |args: &[&str], needle: &str| {
        let out = run(args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} 应当失败");
        assert!(
            err.contains(needle) && !err.contains("panicked"),
            "{args:?}：{err}"
        );
    };
    fails(
        &[
            "gpt",
            "generate",
            "--model",
            model,
            "--temperature=-1",
            "好",
        ],
        "--temperature",
    );
    fails(
        &["gpt", "generate", "--model", model, "--top-k", "0", "好"],
        "--top-k",
    );
    fails(
        &["gpt", "generate", "--model", model, &"好".repeat(130)],
        "上下文",
    );
    let empty = temp("gpt-empty");
    std::fs::create_dir_all(&empty).unwrap();
    fails(
        &["gpt", "generate", "--model", empty.to_str().unwrap(), "好"],
        "不是 `gpt train` 写出的模型目录",
    );
    fails(
        &[
            "gpt",
            "generate",
            "--model",
            model,
            "--adapter",
            empty.to_str().unwrap(),
            "好",
        ],
        "adapter.json",
    );
    // 截断的权重：指名文件的中文错误
    let cut = temp("gpt-cut");
    std::fs::create_dir_all(&cut).unwrap();
    std::fs::copy(dir.join("vocab.txt"), cut.join("vocab.txt")).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(cut.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    fails(
        &["gpt", "generate", "--model", cut.to_str().unwrap(), "好"],
        "model.safetensors",
    );
    // 窗口比上下文长：开始前报错，不留下模型目录
    let never = temp("gpt-never");
    fails(
        &[
            "gpt",
            "train",
            "--seq",
            "200",
            "--out",
            never.to_str().unwrap(),
        ],
        "--seq",
    );
    assert!(!never.exists());
    fails(&["gpt", "speed", "--lengths", "16,200"], "--lengths");
}

/// 一页帮助里列出的子命令名（“实验:” 一节每行的第一个词）。
fn subcommands(help: &str) -> Vec<String> {
    (help.lines())
        .skip_while(|l| !l.starts_with("实验"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn every_help_page_is_chinese() {
    let top = run(&["--help"]);
    assert!(top.status.success(), "{}", stderr(&top));
    let mut pages = vec![(Vec::new(), stdout(&top))];
    for cmd in subcommands(&stdout(&top)) {
        let o = run(&[&cmd, "--help"]);
        assert!(o.status.success(), "{cmd} --help：{}", stderr(&o));
        for sub in subcommands(&stdout(&o)) {
            let o = run(&[&cmd, &sub, "--help"]);
            assert!(o.status.success(), "{cmd} {sub} --help：{}", stderr(&o));
            pages.push((vec![cmd.clone(), sub], stdout(&o)));
        }
        pages.push((vec![cmd], stdout(&o)));
    }
    // 总览一页、21 个实验、gpt 下的 5 个
    assert!(pages.len() >= 27, "只找到 {} 页帮助", pages.len());
    for (cmd, page) in &pages {
        assert!(page.contains("用法："), "{cmd:?}：{page}");
        for english in [
            "Usage",
            "Options",
            "Arguments",
            "[OPTIONS]",
            "Possible values",
            "[default",
            "Commands",
        ] {
            assert!(
                !page.contains(english),
                "{cmd:?} 的帮助里有 {english}：{page}"
            );
        }
    }
}
