//! candle 一侧：读一个 Hugging Face 的 BERT 目录（config.json + model.safetensors），在 CPU 上对 [batch, seq] 的输入做推理（BertModel 的
//! last_hidden_state），先空跑一次，再计时 `rounds` 次，打印一行 JSON（毫秒：中位数、最小、最大）。
//! 输入与本书一侧（examples/peer_inference.rs）、PyTorch 一侧（scripts/peer_torch.py）相同：第 b 行第 s 个 id 是
//! `1000 + (b·seq + s)·7919 mod (vocab − 1000)`，不填充。
//!
//! 用法：candle-bench 模型目录 batch seq rounds

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("用法：candle-bench 模型目录 batch seq rounds");
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
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"impl\": \"candle\", \"median_ms\": {}, \"min_ms\": {}, \"max_ms\": {}}}",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
    Ok(())
}
