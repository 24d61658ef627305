//! 2.7 节：`cargo run --release -- lora-recovery`——用秩 1–16 的 LoRA 恢复一个已知秩为 4 的 ΔW（模型与训练在 [`crate::lora::recovery`]）。

use crate::lora::recovery::{
    run_all, RecoveryConfig, RecoveryResult, RANKS, TARGET_SINGULAR_VALUES,
};

/// 每个秩训练一次，打印相对误差与学到的奇异值，写 `part2-recovery.json`。
pub fn run() -> anyhow::Result<()> {
    let config = RecoveryConfig::default();
    println!(
        "目标 ΔW：64×64，秩 {}，奇异值 {:?}；每个秩训练 {} 步（Adam，学习率 {}，每步 {} 个样本）",
        TARGET_SINGULAR_VALUES.len(),
        TARGET_SINGULAR_VALUES,
        config.steps,
        config.lr,
        config.batch
    );
    let bar = super::args::step_bar(RANKS.len() as u64);
    let runs = run_all(&config, &mut |r| {
        bar.set_message(format!("秩 {r}"));
        bar.inc(1);
    });
    bar.finish_and_clear();
    for run in &runs {
        let top: Vec<String> = (run.singular_values.iter())
            .take(5)
            .map(|s| format!("{s:.3}"))
            .collect();
        println!(
            "r = {:>2}：相对误差 {:.4}（最优 {:.4}），最后的均方误差 {:.2e}，学到的奇异值 [{}]",
            run.r,
            run.relative_error,
            run.optimal_error,
            run.final_loss,
            top.join(", ")
        );
    }
    let result = RecoveryResult {
        machine: super::machine_description(),
        config: Some(config),
        runs,
    };
    super::args::DryRun::default().save("part2-recovery", &result)
}
