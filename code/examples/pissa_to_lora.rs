//! 4.3 节：把“训练过”的 PiSSA、OLoRA 适配器换算成普通 LoRA，写进目录，供 `tests/fixtures/check_converted_adapter.py`
//! 用 PEFT 在原基座上加载、与 Rust 的 logits 比较（需要 Python，不在测试里；测试 `a_trained_pissa_adapter_converts_to_plain_lora`
//! 在 Rust 里核对同一件事）。
//!
//! 用法（在 code/ 下）：cargo run --release --example pissa_to_lora -- <输出目录>
//! 然后：python3 tests/fixtures/check_converted_adapter.py <输出目录>

use dfdx::prelude::*;
use llm_book::bert::hf::{fixtures_dir, load_dir, reference_batch};
use llm_book::checkpoint::Checkpoint;
use llm_book::peft::adapter::SiteLora;
use llm_book::peft::config::{InitLoraWeights, LoraConfig};
use llm_book::peft::model::PeftBert;
use llm_book::transformer::encoder::Mode;

fn main() -> anyhow::Result<()> {
    let Some(root) = std::env::args().nth(1) else {
        anyhow::bail!("用法：cargo run --release --example pissa_to_lora -- <输出目录>");
    };
    let dev = Cpu::seed_from_u64(7);
    let dir = fixtures_dir();
    let base = load_dir::<32, 4, 48, f32, Cpu>(&dev, &dir.join("tiny-bert-3label"))?;
    let reference = Checkpoint::read(&dir.join("tiny-bert-peft-reference.safetensors"))?;
    for (init, name) in [
        (InitLoraWeights::Pissa, "pissa"),
        (InitLoraWeights::Olora, "olora"),
    ] {
        let mut lora = LoraConfig::seq_cls(4, 8.0, &["query", "value", "intermediate.dense"], 0.0);
        lora.init_lora_weights = init.to_value();
        let mut model = PeftBert::get_peft_model(base.params.clone(), base.config, lora)?;
        // “训练”：A、B 各加一点随机数（升维层的 B 是 48 行，与 query、value 的 32 行不是同一个类型，单独调用）
        for layer in model.adapters.layers.modules.iter_mut() {
            perturb(&mut layer.w_q, &dev);
            perturb(&mut layer.w_v, &dev);
            perturb(&mut layer.linear1, &dev);
        }
        let (tokens, types, mask) = reference_batch(&reference, &dev);
        let logits = model
            .forward(tokens, Some(types), &mask, Mode::Eval)?
            .logits
            .as_vec();
        let out = std::path::Path::new(&root).join(name);
        model.save_pretrained_as_lora(&base.params, &out, None)?;
        std::fs::write(
            out.join("rust_logits.json"),
            serde_json::to_string(&logits)?,
        )?;
        println!(
            "{}：换算后的普通 LoRA 适配器与 PiSSA/OLoRA 模型的 logits",
            out.display()
        );
    }
    Ok(())
}

fn perturb<const I: usize, const O: usize>(site: &mut SiteLora<I, O, f32, Cpu>, dev: &Cpu) {
    let l = site.lora.as_mut().expect("选中的位置");
    l.lora_a = l.lora_a.clone() + dev.sample_normal_like(l.lora_a.shape()) * 0.1;
    l.lora_b = l.lora_b.clone() + dev.sample_normal_like(l.lora_b.shape()) * 0.1;
}
