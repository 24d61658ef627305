//! 附录 B 的同行比较，本书一侧：读一个 Hugging Face 的 BERT 目录，在 CPU 上对 [batch, seq] 的输入做推理（不带 tape 的前向），
//! 先空跑一次，再计时 `rounds` 次，打印一行 JSON（毫秒：中位数、最小、最大）。输入与 candle 一侧（code/peers/candle-bench）、
//! PyTorch 一侧（code/scripts/peer_torch.py）相同：第 b 行第 s 个 id 是 `1000 + (b·seq + s)·7919 mod (vocab − 1000)`，不填充。
//!
//! 用法：`cargo run --release --example peer_inference -- 模型目录 batch seq rounds`（支持 all-MiniLM-L6-v2 的 384/12/1536 与 bert-base 的 768/12/3072）。
//! 三方的表由 `bash code/scripts/peers.sh` 打印。

use std::path::Path;
use std::time::Instant;

use dfdx::prelude::*;
use llm_book::basics::tensors::Real;
use llm_book::bert::hf::load_dir;
use llm_book::transformer::attention::PaddingMask;
use llm_book::transformer::encoder::Mode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn run<const M: usize, const H: usize, const F: usize>(
    dir: &Path,
    batch: usize,
    seq: usize,
    rounds: usize,
) -> Vec<f64>
where
    f32: Real,
{
    let dev = Cpu::default();
    let model = load_dir::<M, H, F, f32, Cpu>(&dev, dir).unwrap_or_else(|e| {
        eprintln!("错误：{e}");
        std::process::exit(1)
    });
    let vocab = model.params.embeddings.word_embeddings.weight.shape().0;
    let ids: Vec<usize> = (0..batch * seq)
        .map(|i| 1000 + (i * 7919) % (vocab - 1000))
        .collect();
    let tokens = dev.tensor_from_vec(ids, (batch, seq));
    let mask = PaddingMask::from_lengths(&dev, &vec![seq; batch], seq).expect("长度合法");
    let mut times = Vec::new();
    for r in 0..=rounds {
        let t = Instant::now();
        let out = model
            .params
            .forward(&model.config, tokens.clone(), None, &mask, Mode::Eval)
            .expect("输入合法");
        std::hint::black_box(&out.last_hidden_state);
        if r > 0 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times
}

/// `--summarize 结果.jsonl`：peers.sh 每次运行记一行（case、round、impl、median_ms），这里按“情形 × 实现”取各轮中位数的中位数，
/// 打印三方的表（各轮的范围）与两个比值。
fn summarize(path: &Path) {
    use std::collections::BTreeMap;
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        eprintln!("错误：读不了 {}：{e}", path.display());
        std::process::exit(1)
    });
    let mut cells: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
            eprintln!("错误：{} 第 {} 行不是 JSON：{e}", path.display(), n + 1);
            std::process::exit(1)
        });
        let (Some(case), Some(imp), Some(ms)) = (
            v["case"].as_str(),
            v["impl"].as_str(),
            v["median_ms"].as_f64(),
        ) else {
            eprintln!(
                "错误：{} 第 {} 行缺 case、impl 或 median_ms",
                path.display(),
                n + 1
            );
            std::process::exit(1)
        };
        if !order.iter().any(|c| c == case) {
            order.push(case.to_string());
        }
        cells
            .entry((case.to_string(), imp.to_string()))
            .or_default()
            .push(ms);
    }
    let stat = |case: &str, imp: &str| -> Option<(f64, f64, f64)> {
        let mut v = cells.get(&(case.to_string(), imp.to_string()))?.clone();
        v.sort_by(f64::total_cmp);
        Some((v[v.len() / 2], v[0], v[v.len() - 1]))
    };
    let show = |s: Option<(f64, f64, f64)>| match s {
        Some((m, lo, hi)) => format!("{m:.1}（{lo:.1}–{hi:.1}）"),
        None => "—".into(),
    };
    let ratio = |a: Option<(f64, f64, f64)>, b: Option<(f64, f64, f64)>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.2}", a.0 / b.0),
        _ => "—".into(),
    };
    println!("| 情形 | 本书（毫秒） | PyTorch（毫秒） | candle（毫秒） | 本书 / PyTorch（目标 ≤ 1.0） | candle / 本书（目标 ≥ 3） |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for case in &order {
        let (o, t, c) = (
            stat(case, "ours"),
            stat(case, "torch"),
            stat(case, "candle"),
        );
        println!(
            "| {case} | {} | {} | {} | {} | {} |",
            show(o),
            show(t),
            show(c),
            ratio(o, t),
            ratio(c, o)
        );
    }
    println!(
        "（各轮中位数的中位数，括号里是各轮的范围；{}）",
        llm_book::experiments::machine_description()
    );
}

fn main() {
    llm_book::alloc::keep_freed_memory();
    llm_book::kernels::cpu::join_thread_pool();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() == 2 && args[0] == "--summarize" {
        summarize(Path::new(&args[1]));
        return;
    }
    let parsed = (args.len() == 4)
        .then(|| {
            Some((
                args[1].parse().ok()?,
                args[2].parse().ok()?,
                args[3].parse().ok()?,
            ))
        })
        .flatten();
    let Some((batch, seq, rounds)) = parsed else {
        eprintln!(
            "用法：cargo run --release --example peer_inference -- 模型目录 batch seq rounds"
        );
        std::process::exit(2);
    };
    let dir = Path::new(&args[0]);
    let config: serde_json::Value = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| {
            eprintln!("错误：读不了 {}", dir.join("config.json").display());
            std::process::exit(1)
        });
    let mut times = match config["hidden_size"].as_u64() {
        Some(384) => run::<384, 12, 1536>(dir, batch, seq, rounds),
        Some(768) => run::<768, 12, 3072>(dir, batch, seq, rounds),
        other => {
            eprintln!("错误：hidden_size 是 {other:?}：这个比较只编译了 384（MiniLM）与 768（bert-base）两种宽度");
            std::process::exit(1)
        }
    };
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"impl\": \"ours\", \"median_ms\": {}, \"min_ms\": {}, \"max_ms\": {}}}",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
}
