//! CUDA 版本的训练一步（前向 + 反向）：与 `train_step.rs` 同样的模型与形状，在 GPU 上。
//! 只在 `--features cuda` 时编译（Cargo.toml 的 `required-features`）；由 `code/scripts/cuda-build.sh` 编译，
//! 在 GPU 机器上由 `run-gpu.sh` 运行。GPU 上的算子是异步的：每一步结束时 `synchronize()`，计的是真正算完的时间。

use criterion::{criterion_group, criterion_main, Criterion};
use dfdx::prelude::*;
use llm_book::bert::model::{bert_config, BertBase, BertClassifier, BERT_BASE_CHINESE_DIMS};
use llm_book::experiments::perf::{bench_batch, classifier_step};
use llm_book::peft::config::LoraConfig;
use llm_book::peft::model::PeftBert;
use llm_book::train::SequenceClassifier;
use llm_book::transformer::attention::PaddingMask;
use llm_book::transformer::encoder::{EncoderConfig, Mode, SeedEncoder};

fn gpu() -> Cuda {
    llm_book::basics::device::new_cuda(0).unwrap_or_else(|e| {
        eprintln!("没有可用的 GPU（{e}）：这个基准只在有 NVIDIA GPU 的机器上运行");
        std::process::exit(2)
    })
}

fn encoder(c: &mut Criterion) {
    let dev = gpu();
    let model = SeedEncoder::<f32, Cuda>::new(&dev, EncoderConfig::default());
    let mut group = c.benchmark_group("cuda_train_step_encoder_d512");
    group.sample_size(20);
    for (b, s) in [(8, 128), (2, 50)] {
        let (tokens, mask, _) = bench_batch(&dev, b, s, 10000);
        let g: Tensor<(usize, usize, Const<512>), f32, Cuda> =
            dev.sample_normal_like(&(b, s, Const));
        group.bench_function(format!("{b}x{s}"), |bench| {
            bench.iter(|| {
                let out = model
                    .forward(tokens.leaky_trace(), Some(&mask), Mode::Train)
                    .unwrap();
                let grads = (out.hidden * g.clone()).sum().backward();
                dev.synchronize();
                grads
            })
        });
    }
    group.finish();
}

/// 训练一步（与 CPU 的基准同一个函数），再等 GPU 算完。
fn step<Mo: SequenceClassifier<f32, Cuda>>(
    dev: &Cuda,
    model: &Mo,
    grads: &mut Option<Gradients<f32, Cuda>>,
    tokens: &Tensor<(usize, usize), usize, Cuda>,
    mask: &PaddingMask<f32, Cuda>,
    labels: &Tensor<(usize, usize), f32, Cuda>,
) {
    classifier_step(model, grads, tokens, mask, labels);
    dev.synchronize();
}

fn bert_base(c: &mut Criterion) {
    let dev = gpu();
    let config = bert_config(1e-12, 0.1, 512);
    let (tokens, mask, labels) = bench_batch(&dev, 8, 128, 21128);
    let mut group = c.benchmark_group("cuda_train_step_bert_base");
    group.sample_size(20);
    let full = BertClassifier {
        params: BertBase::<f32, Cuda>::new(&dev, &BERT_BASE_CHINESE_DIMS),
        config,
    };
    let mut grads = None;
    group.bench_function("full_8x128", |b| {
        b.iter(|| step(&dev, &full, &mut grads, &tokens, &mask, &labels))
    });
    drop(grads);
    let lora = PeftBert::get_peft_model(
        full.params,
        config,
        LoraConfig::seq_cls(16, 32.0, &["query", "value"], 0.0),
    )
    .unwrap();
    let mut grads = None;
    group.bench_function("lora_8x128", |b| {
        b.iter(|| step(&dev, &lora, &mut grads, &tokens, &mask, &labels))
    });
    group.finish();
}

criterion_group!(benches, encoder, bert_base);
criterion_main!(benches);
