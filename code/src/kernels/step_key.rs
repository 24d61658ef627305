//! 3.6 节、附录 A：dropout 掩码的“钥匙”——打断后接着训练，与不打断逐位相同。
//!
//! 一次训练能存盘的只有参数、优化器状态、步数与种子；dfdx 的设备随机数存不了盘（字段是私有的）。
//! 如果 dropout 的掩码取自设备的随机数，接着训练时的掩码就与不打断时不同。所以训练循环在每一步开始时用
//! [`StepKey::enter`] 给出（种子, 步数），这一步里第 k 次 dropout 的种子是 hash(种子, 步数, k)：前向的顺序是确定的，
//! k 就是“第几个 dropout 位置”（第几层的哪一处）。掩码于是只由存得下的三个数决定。
//!
//! 没有钥匙时（推理、第 1、2 部分的实验）照旧从设备的随机数取种子，行为不变。钥匙存在线程局部变量里：
//! 前向在调用训练循环的那个线程上按顺序执行（并行只发生在单个算子内部）。
//!
//! 只有 CPU 的融合 dropout（[`super::cpu::dropout`]、融合注意力里对权重的 dropout）用钥匙；CUDA 上的 dropout
//! 仍是 dfdx 自己的（种子取自设备的随机数），在 GPU 上接着训练不逐位相同。

use std::cell::Cell;

thread_local! {
    /// （种子, 步数, 这一步里已经用掉的 dropout 个数）。
    static KEY: Cell<Option<(u64, u64, u64)>> = const { Cell::new(None) };
}

/// 一步的钥匙：存在期间，这个线程上的 dropout 由它决定；离开作用域时恢复原来的状态。
#[must_use = "钥匙只在存在期间生效：写成 `let _key = StepKey::enter(…)`"]
pub struct StepKey {
    previous: Option<(u64, u64, u64)>,
}

impl StepKey {
    /// 进入第 `step` 步（种子 `seed`）。
    pub fn enter(seed: u64, step: usize) -> Self {
        let previous = KEY.with(|k| k.replace(Some((seed, step as u64, 0))));
        Self { previous }
    }
}

impl Drop for StepKey {
    fn drop(&mut self) {
        KEY.with(|k| k.set(self.previous));
    }
}

// ANCHOR: next_seed
/// 下一次 dropout 的种子：有钥匙时是 hash(种子, 步数, 第几次)，否则由 `fallback`（设备的随机数）给出。
pub fn next_seed(fallback: impl FnOnce() -> u64) -> u64 {
    KEY.with(|k| match k.get() {
        Some((seed, step, site)) => {
            k.set(Some((seed, step, site + 1)));
            splitmix64(splitmix64(splitmix64(seed) ^ step) ^ site)
        }
        None => fallback(),
    })
}
// ANCHOR_END: next_seed

/// SplitMix64 的一步（Steele 等人，2014）：把相邻的整数打散成互不相关的 64 位数。
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_depend_only_on_seed_step_and_site() {
        let run = |seed, step| {
            let _key = StepKey::enter(seed, step);
            [next_seed(|| 0), next_seed(|| 0), next_seed(|| 0)]
        };
        let a = run(7, 3);
        assert_eq!(a, run(7, 3), "同样的（种子, 步数）给出同样的种子序列");
        assert_ne!(a, run(7, 4));
        assert_ne!(a, run(8, 3));
        assert!(a[0] != a[1] && a[1] != a[2], "同一步里每个位置的种子不同");
        // 钥匙离开作用域后回到设备的随机数
        assert_eq!(next_seed(|| 42), 42);
        // 嵌套时恢复外层的状态
        let _outer = StepKey::enter(1, 1);
        let first = next_seed(|| 0);
        drop(StepKey::enter(2, 2));
        let second = next_seed(|| 0);
        let _again = StepKey::enter(1, 1);
        assert_eq!([next_seed(|| 0), next_seed(|| 0)], [first, second]);
    }
}
