//! candle 一侧：读一个 Hugging Face 的 BERT 目录（config.json + model.safetensors），在 CPU 上对 [batch, seq] 的输入做推理（BertModel 的
//! last_hidden_state），先空跑一次，再计时 `rounds` 次，打印一行 JSON（毫秒：中位数、最小、最大）。
//! 输入与本书一侧（examples/peer_inference.rs）、PyTorch 一侧（scripts/peer_torch.py）相同：第 b 行第 s 个 id 是
//! `1000 + (b·seq + s)·7919 mod (vocab − 1000)`，不填充。
//!
//! 用法：candle-bench 模型目录 batch seq rounds
//!       candle-bench --train batch seq rounds   bert-base-chinese 大小（词表 21128，随机权重）的全量微调一步：前向到 [CLS] 上的分类头、
//!                                           交叉熵、反向（不含优化器），与 benches/train_step.rs 的 `full_8x128` 同形状。
//!                                           candle 的 BERT 没有实现 dropout（恒等），本书与 PyTorch 一侧的 dropout 是 0.1。
//!                                           LoRA 一步不测：candle-transformers 的 BertModel 没有接 LoRA 的地方。

use std::time::Instant;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::{Module, VarBuilder, VarMap};
use candle_transformers::models::bert::{BertModel, Config};

fn report(mut times: Vec<f64>) {
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"impl\": \"candle\", \"median_ms\": {}, \"min_ms\": {}, \"max_ms\": {}}}",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
}

fn train(batch: usize, seq: usize, rounds: usize) -> Result<(), Box<dyn std::error::Error>> {
    let config: Config = serde_json::from_str(
        r#"{"vocab_size": 21128, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "max_position_embeddings": 512,
            "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0, "model_type": "bert"}"#,
    )?;
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let model = BertModel::load(vb.pp("bert"), &config)?;
    let head = candle_nn::linear(768, 2, vb.pp("classifier"))?;
    let ids: Vec<u32> = (0..batch * seq).map(|i| ((i * 7919 + 13) % 21128) as u32).collect();
    let input = Tensor::from_vec(ids, (batch, seq), &device)?;
    let types = input.zeros_like()?;
    let mask = input.ones_like()?;
    let labels = Tensor::from_vec((0..batch as u32).map(|i| i % 2).collect::<Vec<u32>>(), batch, &device)?;
    let mut times = Vec::new();
    for r in 0..=rounds {
        let t = Instant::now();
        let hidden = model.forward(&input, &types, Some(&mask))?;
        let logits = head.forward(&hidden.i((.., 0))?)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
        let grads = loss.backward()?;
        std::hint::black_box(&grads);
        if r > 0 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    report(times);
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 5 && args[1] == "--train" {
        return train(args[2].parse()?, args[3].parse()?, args[4].parse()?);
    }
    if args.len() != 5 {
        eprintln!("用法：candle-bench 模型目录 batch seq rounds，或 candle-bench --train batch seq rounds");
        std::process::exit(2);
    }
    let dir = std::path::Path::new(&args[1]);
    let (batch, seq, rounds): (usize, usize, usize) = (args[2].parse()?, args[3].parse()?, args[4].parse()?);
    let config: Config = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let vocab = serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(dir.join("config.json"))?)?
        ["vocab_size"]
        .as_u64()
        .ok_or("config.json 没有 vocab_size")? as usize;
    let device = Device::Cpu;
    // SAFETY：只读映射模型文件，计时期间没有别人改它。
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &device)? };
    let model = BertModel::load(vb, &config)?;
    let ids: Vec<u32> = (0..batch * seq)
        .map(|i| (1000 + (i * 7919) % (vocab - 1000)) as u32)
        .collect();
    let input = Tensor::from_vec(ids, (batch, seq), &device)?;
    let types = input.zeros_like()?;
    let mask = input.ones_like()?;
    let mut times = Vec::new();
    for r in 0..=rounds {
        let t = Instant::now();
        let out = model.forward(&input, &types, Some(&mask))?;
        // 取回结果，确保计算已经完成
        let _ = out.sum_all()?.to_scalar::<f32>()?;
        if r > 0 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    report(times);
    Ok(())
}
