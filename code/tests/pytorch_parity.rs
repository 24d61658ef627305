//! 第 1 部分的每个组件都与 PyTorch 参考实现一致（f32，最大绝对误差 ≤ 1e-5）。
//!
//! 参考数据：tests/fixtures/transformer.safetensors，由同目录的 make_transformer_fixtures.py 生成。

use llm_book::transformer::parity::{compare_all, fixture_path};

#[test]
fn every_component_matches_pytorch() {
    let results = compare_all(&fixture_path()).unwrap_or_else(|e| panic!("{e}"));
    assert!(results.len() >= 17, "比较项少于预期：{}", results.len());
    for r in &results {
        println!(
            "{:<28} {:>5} 个元素  最大误差 {:.2e}",
            r.name, r.elements, r.max_abs_error
        );
    }
    let bad: Vec<_> = results
        .iter()
        .filter(|r| r.max_abs_error.is_nan() || r.max_abs_error > 1e-5)
        .collect();
    assert!(bad.is_empty(), "与 PyTorch 不一致：{bad:?}");
}
