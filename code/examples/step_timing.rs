//! 附录 B：bert-base 大小的分类模型训练一步（前向 + 反向，[8,128]），三种训练轮流计时：
//! 全量微调（`full`）、LoRA r = 16 q/v（`lora`）、只训练分类头（`head`，线性探测：基座全部冻结、没有 LoRA 分支）。
//!
//! 与 `benches/train_step.rs` 测的是同一个函数；这里三种轮流跑、每种取中位数，用来比较两个提交（各编译一份、交替运行），
//! 也用来把 LoRA 一步拆成“冻结基座的一步”（`head`）与 LoRA 分支本身的开销。
//!
//! 用法：`cargo run --release --example step_timing -- full lora head`（环境变量 `ROUNDS` 是每种计时的步数，默认 6；
//! 先空跑一轮）。

use std::collections::BTreeMap;
use std::time::Instant;

use dfdx::prelude::*;
use llm_book::bert::model::{bert_config, BertBase, BertClassifier, BERT_BASE_CHINESE_DIMS};
use llm_book::bert::runtime::LayerStack;
use llm_book::bert::runtime::SavedLinear;
use llm_book::experiments::perf::{bench_batch, classifier_step};
use llm_book::peft::adapter::{PeftAdapters, PeftLayer, SiteLora};
use llm_book::peft::config::{AdapterPlan, LoraConfig};
use llm_book::peft::model::{PeftBert, DEFAULT_ADAPTER};
use llm_book::train::SequenceClassifier;
use llm_book::transformer::attention::PaddingMask;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// 一步的毫秒数（`classifier_step` 与 `benches/train_step.rs` 测的是同一个函数）。
fn step<Mo: SequenceClassifier<f32, Cpu>>(
    model: &Mo,
    grads: &mut Option<Gradients<f32, Cpu>>,
    tokens: &Tensor<(usize, usize), usize, Cpu>,
    mask: &PaddingMask<f32, Cpu>,
    labels: &Tensor<(usize, usize), f32, Cpu>,
) -> f64 {
    let t = Instant::now();
    classifier_step(model, grads, tokens, mask, labels);
    t.elapsed().as_secs_f64() * 1e3
}

fn main() {
    llm_book::alloc::keep_freed_memory();
    llm_book::kernels::cpu::join_thread_pool();
    let which: Vec<String> = std::env::args().skip(1).collect();
    if which.is_empty()
        || which
            .iter()
            .any(|w| !["full", "lora", "head"].contains(&w.as_str()))
    {
        eprintln!("用法：cargo run --release --example step_timing -- full lora head（任选几种）");
        std::process::exit(2);
    }
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let dev = Cpu::seed_from_u64(0);
    let config = bert_config(1e-12, 0.1, 512);
    let (tokens, mask, labels) = bench_batch(&dev, 8, 128, 21128);
    let full = BertClassifier {
        params: BertBase::<f32, Cpu>::new(&dev, &BERT_BASE_CHINESE_DIMS),
        config,
    };
    let lora_config = LoraConfig::seq_cls(16, 32.0, &["query", "value"], 0.0);
    let lora = PeftBert::get_peft_model(full.params.clone(), config, lora_config.clone()).unwrap();
    // 线性探测：每层都没有适配器，只有分类头可训练（基座照样冻结）
    let head = PeftBert {
        base: full.params.clone(),
        adapters: PeftAdapters {
            layers: LayerStack {
                modules: (full.params.layers.modules.iter())
                    .map(|layer| PeftLayer::init(&dev, &[None; 6], layer))
                    .collect(),
            },
            pooler: SiteLora::init(&dev, None, &full.params.pooler),
            pooler_copy: SavedLinear { module: None },
            head: full.params.classifier.clone(),
        },
        lora: lora_config,
        plan: AdapterPlan {
            layers: vec![[None; 6]; 12],
            pooler: None,
            unmatched: Vec::new(),
        },
        config,
        active: DEFAULT_ADAPTER.to_string(),
        others: Default::default(),
        quant: None,
        allocator: None,
    };
    let (mut gf, mut gl, mut gh) = (None, None, None);
    let mut times: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in 0..=rounds {
        for w in &which {
            let (name, ms) = match w.as_str() {
                "full" => ("full", step(&full, &mut gf, &tokens, &mask, &labels)),
                "lora" => ("lora", step(&lora, &mut gl, &tokens, &mask, &labels)),
                _ => ("head", step(&head, &mut gh, &tokens, &mask, &labels)),
            };
            if r > 0 {
                times.entry(name).or_default().push(ms);
            }
        }
    }
    for (name, mut v) in times {
        v.sort_by(f64::total_cmp);
        println!(
            "{name}：中位数 {:.0} 毫秒（{} 步，最快 {:.0}，最慢 {:.0}）",
            v[v.len() / 2],
            v.len(),
            v[0],
            v[v.len() - 1]
        );
    }
}
