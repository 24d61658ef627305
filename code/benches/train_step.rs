//! 附录 B：训练一步（前向 + 反向）的耗时，与 PyTorch 在同一台机器上比较（`code/scripts/bench_torch.py`）。
//!
//! - `encoder_d512`：第 1 部分的参考编码器（d_model 512、8 头、前馈 2048、6 层，Pre-LN，dropout 0.1），
//!   输出上给定随机的上游梯度（与 PyTorch 的 `out.backward(g)` 相同）。形状 [8, 128] 与 [2, 50]。
//! - `bert_base`：bert-base-chinese 大小的分类模型（随机初始化，隐藏层 dropout 0.1），[8, 128]，交叉熵损失；
//!   全量微调与 LoRA（r = 16、α = 32、query/value，与 3.4 节的例子相同）。
//!
//! - `inference_bert_base`：同一模型的推理（前向到 logits，不带 tape）：原模型、带 LoRA 分支（未合并）、合并后的模型
//!   （`merge_and_unload`）。合并后与原模型的结构相同，目标是耗时相差不超过 3%。
//!
//! 不含优化器的更新（AdamW 的耗时与参数量成正比，另行报告）。运行：`bash code/scripts/bench.sh`。

use criterion::{criterion_group, criterion_main, Criterion};
use dfdx::prelude::*;
use llm_book::bert::model::{bert_config, BertBase, BertClassifier, BERT_BASE_CHINESE_DIMS};
use llm_book::experiments::perf::{bench_batch, classifier_step};
use llm_book::kernels::cpu::backward_from;
use llm_book::peft::config::LoraConfig;
use llm_book::peft::model::PeftBert;
use llm_book::train::SequenceClassifier;
use llm_book::transformer::encoder::{EncoderConfig, Mode, SeedEncoder};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn encoder(c: &mut Criterion) {
    let dev = Cpu::seed_from_u64(0);
    let model = SeedEncoder::<f32, Cpu>::new(&dev, EncoderConfig::default());
    let mut group = c.benchmark_group("train_step_encoder_d512");
    group.sample_size(10);
    for (b, s) in [(8, 128), (2, 50)] {
        let (tokens, mask, _) = bench_batch(&dev, b, s, 10000);
        let g: Tensor<(usize, usize, Const<512>), f32, Cpu> =
            dev.sample_normal_like(&(b, s, Const));
        group.bench_function(format!("{b}x{s}"), |bench| {
            bench.iter(|| {
                let out = model
                    .forward(tokens.leaky_trace(), Some(&mask), Mode::Train)
                    .unwrap();
                backward_from(out.hidden, &g)
            })
        });
    }
    group.finish();
}

fn bert_base(c: &mut Criterion) {
    let dev = Cpu::seed_from_u64(0);
    let config = bert_config(1e-12, 0.1, 512);
    let (tokens, mask, labels) = bench_batch(&dev, 8, 128, 21128);
    let mut group = c.benchmark_group("train_step_bert_base");
    group.sample_size(10);
    let full = BertClassifier {
        params: BertBase::<f32, Cpu>::new(&dev, &BERT_BASE_CHINESE_DIMS),
        config,
    };
    let mut grads = None;
    group.bench_function("full_8x128", |bench| {
        bench.iter(|| classifier_step(&full, &mut grads, &tokens, &mask, &labels))
    });
    drop(grads);
    let lora = PeftBert::get_peft_model(
        full.params,
        config,
        LoraConfig::seq_cls(16, 32.0, &["query", "value"], 0.0),
    )
    .unwrap();
    let mut grads = None;
    group.bench_function("lora_8x128", |bench| {
        bench.iter(|| classifier_step(&lora, &mut grads, &tokens, &mask, &labels))
    });
    group.finish();
}

/// 优化器的一步：AdamW（梯度裁剪到全局范数 1、解耦权重衰减），bert-base 全量微调的全部参数与 LoRA 的可训练参数。
fn optimizer(c: &mut Criterion) {
    use llm_book::train::adamw::{AdamW, AdamWConfig};
    let dev = Cpu::seed_from_u64(2);
    let config = bert_config(1e-12, 0.1, 512);
    let (tokens, mask, labels) = bench_batch(&dev, 8, 128, 21128);
    let mut group = c.benchmark_group("optimizer_bert_base");
    group.sample_size(10);
    let mut full = BertClassifier {
        params: BertBase::<f32, Cpu>::new(&dev, &BERT_BASE_CHINESE_DIMS),
        config,
    };
    let mut grads = None;
    classifier_step(&full, &mut grads, &tokens, &mask, &labels);
    let grads = grads.unwrap();
    let mut opt = AdamW::new(AdamWConfig::default());
    group.bench_function("adamw_full", |bench| {
        bench.iter(|| opt.step(full.params_mut(), &grads, 1.0))
    });
    drop(opt);
    let mut lora = PeftBert::get_peft_model(
        full.params,
        config,
        LoraConfig::seq_cls(16, 32.0, &["query", "value"], 0.0),
    )
    .unwrap();
    let mut grads = None;
    classifier_step(&lora, &mut grads, &tokens, &mask, &labels);
    let grads = grads.unwrap();
    let mut opt = AdamW::new(AdamWConfig::default());
    group.bench_function("adamw_lora", |bench| {
        bench.iter(|| opt.step(lora.params_mut(), &grads, 1.0))
    });
    group.finish();
}

/// 推理：原模型、LoRA（未合并，多一条 B(Ax) 分支）、合并后的模型。
fn bert_inference(c: &mut Criterion) {
    let dev = Cpu::seed_from_u64(1);
    let config = bert_config(1e-12, 0.1, 512);
    let (tokens, mask, _) = bench_batch(&dev, 8, 128, 21128);
    let mut group = c.benchmark_group("inference_bert_base");
    group.sample_size(10);
    let base = BertClassifier {
        params: BertBase::<f32, Cpu>::new(&dev, &BERT_BASE_CHINESE_DIMS),
        config,
    };
    let lora = PeftBert::get_peft_model(
        base.params.clone(),
        config,
        LoraConfig::seq_cls(16, 32.0, &["query", "value"], 0.0),
    )
    .unwrap();
    group.bench_function("lora_8x128", |bench| {
        bench.iter(|| {
            lora.logits(tokens.clone(), None, &mask, Mode::Eval)
                .unwrap()
        })
    });
    let merged = BertClassifier {
        params: lora.merge_and_unload(),
        config,
    };
    group.bench_function("merged_8x128", |bench| {
        bench.iter(|| {
            merged
                .logits(tokens.clone(), None, &mask, Mode::Eval)
                .unwrap()
        })
    });
    group.bench_function("base_8x128", |bench| {
        bench.iter(|| {
            base.logits(tokens.clone(), None, &mask, Mode::Eval)
                .unwrap()
        })
    });
    group.finish();
}

/// 与 `llm-book` 程序相同的分配器与线程池设置（见 `llm_book::alloc`、`llm_book::kernels::cpu::join_thread_pool`）。
fn setup(_: &mut Criterion) {
    llm_book::alloc::keep_freed_memory();
    llm_book::kernels::cpu::join_thread_pool();
}

criterion_group!(
    benches,
    setup,
    encoder,
    bert_base,
    optimizer,
    bert_inference
);
criterion_main!(benches);
