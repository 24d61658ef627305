//! CUDA 版本的测试：在 GPU 上重做与 PyTorch、transformers 的一致性检查和梯度检查。
//!
//! 只在 `--features cuda` 时编译（Cargo.toml 的 `required-features`）；由 `code/scripts/cuda-build.sh` 编译，
//! 带到有 NVIDIA GPU 的机器上由 `run-gpu.sh` 运行。没有 GPU 时每个测试都以“没有可用的 GPU”失败，而不是悄悄通过。
//! GPU 上用的是 `Kernels` 的组合写法（CPU 上是融合内核），所以这些测试同时核对了两条路径给出同样的数。

use dfdx::prelude::*;
use llm_book::basics::autodiff::{check_gradient, ScalarFn};
use llm_book::bert::hf::{fixtures_dir, load_bert, max_error, reference_batch};
use llm_book::bert::model::{bert_config, TinyBert};
use llm_book::checkpoint::Checkpoint;
use llm_book::kernels::Kernels;
use llm_book::transformer::attention::{scaled_dot_product_attention, PaddingMask};
use llm_book::transformer::encoder::Mode;
use llm_book::transformer::gelu::gelu;
use llm_book::transformer::parity::{compare_all_on, fixture_path};

fn gpu() -> Cuda {
    llm_book::basics::device::new_cuda(0).unwrap_or_else(|e| {
        panic!("没有可用的 GPU（{e}）：这些测试只在有 NVIDIA GPU 的机器上运行（code/scripts/run-gpu.sh）")
    })
}

#[test]
fn transformer_matches_pytorch_on_gpu() {
    let results = compare_all_on(&gpu(), &fixture_path()).unwrap_or_else(|e| panic!("{e}"));
    assert!(results.len() >= 17, "比较项少于预期：{}", results.len());
    for r in &results {
        println!("{:<28} 最大误差 {:.2e}", r.name, r.max_abs_error);
    }
    // GPU 上的归约顺序与 CPU 不同：容差比 CPU 测试（1e-5）放宽一个数量级
    let bad: Vec<_> = results
        .iter()
        .filter(|r| r.max_abs_error.is_nan() || r.max_abs_error > 1e-4)
        .collect();
    assert!(bad.is_empty(), "GPU 上与 PyTorch 不一致：{bad:?}");
}

#[test]
fn tiny_bert_matches_transformers_on_gpu() {
    let dev = gpu();
    let mut bert = TinyBert::<f32, Cuda>::new(&dev, &llm_book::bert::model::TINY_DIMS);
    load_bert(
        &mut bert,
        &fixtures_dir().join("tiny-bert/model.safetensors"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let reference = Checkpoint::read(&fixtures_dir().join("tiny-bert-reference.safetensors"))
        .unwrap_or_else(|e| panic!("{e}"));
    let (tokens, types, mask) = reference_batch(&reference, &dev);
    let out = bert
        .forward(
            &bert_config(1e-12, 0.1, 24),
            tokens,
            Some(types),
            &mask,
            Mode::Eval,
        )
        .unwrap();
    for (key, ours) in [
        ("last_hidden_state", out.last_hidden_state.as_vec()),
        ("pooler_output", out.pooler_output.as_vec()),
        ("logits", out.logits.as_vec()),
    ] {
        let err = max_error(&ours, &reference, key);
        println!("{key}: 最大误差 {err:.2e}");
        assert!(err <= 1e-4, "{key}：GPU 上与 transformers 相差 {err}");
    }
}

/// GPU 上的梯度检查（f64）：GELU、LayerNorm、带掩码的注意力，反向传播与中心差分一致。
#[test]
fn gradients_match_finite_differences_on_gpu() {
    struct Loss {
        w: Tensor<(usize, usize, Const<6>), f64, Cuda>,
        gamma: Tensor<Rank1<6>, f64, Cuda>,
        beta: Tensor<Rank1<6>, f64, Cuda>,
    }
    impl ScalarFn<(usize, usize, Const<6>), Cuda> for Loss {
        fn eval<T: Tape<f64, Cuda> + Merge<T> + Merge<NoneTape>>(
            &self,
            x: Tensor<(usize, usize, Const<6>), f64, Cuda, T>,
        ) -> Tensor<(), f64, Cuda, T> {
            let y = Cuda::layer_norm(gelu(x), &self.gamma, &self.beta, 1e-5);
            (y * self.w.clone()).sum()
        }
    }
    let dev = gpu();
    let shape = (2, 3, Const::<6>);
    let f = Loss {
        w: dev.sample_normal_like(&shape),
        gamma: dev.sample_normal(),
        beta: dev.sample_normal(),
    };
    let x = dev.sample_normal_like(&shape);
    let check = check_gradient(&x, 1e-6, &f);
    assert!(check.max_abs_error < 1e-7, "GELU + LayerNorm：{check:?}");

    struct AttentionOfQuery {
        k: Tensor<(usize, usize, usize, usize), f64, Cuda>,
        v: Tensor<(usize, usize, usize, usize), f64, Cuda>,
        w: Tensor<(usize, usize, usize, usize), f64, Cuda>,
        mask: PaddingMask<f64, Cuda>,
    }
    impl ScalarFn<(usize, usize, usize, usize), Cuda> for AttentionOfQuery {
        fn eval<T: Tape<f64, Cuda> + Merge<T> + Merge<NoneTape>>(
            &self,
            q: Tensor<(usize, usize, usize, usize), f64, Cuda, T>,
        ) -> Tensor<(), f64, Cuda, T> {
            let (q, tape) = q.split_tape();
            let (out, _) = scaled_dot_product_attention(
                q.put_tape(tape),
                self.k.clone().retaped::<T>(),
                self.v.clone().retaped::<T>(),
                Some(&self.mask.bias),
                0.0,
            );
            (out * self.w.clone()).sum()
        }
    }
    let shape = (2, 2, 4, 3);
    let f = AttentionOfQuery {
        k: dev.sample_normal_like(&shape),
        v: dev.sample_normal_like(&shape),
        w: dev.sample_normal_like(&shape),
        mask: PaddingMask::from_lengths(&dev, &[4, 2], 4).unwrap(),
    };
    let q = dev.sample_normal_like(&shape);
    let check = check_gradient(&q, 1e-6, &f);
    assert!(check.max_abs_error < 1e-7, "带掩码的注意力：{check:?}");
}
