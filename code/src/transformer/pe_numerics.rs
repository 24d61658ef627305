//! 1.3 节的数值实验：ωᵢ = 10000^(−2i/d) 的两种 f32 写法，以及它们在位置编码表上的差别。
//!
//! exp(log) 写法：ωᵢ = exp(2i · (−ln 10000 / d))；pow 写法：ωᵢ = 1 / 10000^(2i/d)。
//! 频率的舍入误差在角度 pos·ωᵢ 中被位置 pos 放大，所以位置越靠后，两种写法的差别越大。

use super::positional::{frequencies_exp_log, frequencies_f64, frequencies_pow};

/// 两种写法与 f64 真值的比较。
#[derive(Clone, Debug)]
pub struct PeNumerics {
    /// d_model。
    pub d_model: usize,
    /// 频率的最大相对误差：(exp(log) 写法, pow 写法)。
    pub freq_rel_error: (f64, f64),
    /// 每隔 `stride` 个位置，编码表一行上与真值的最大绝对误差：
    /// (位置, 只舍入频率的 exp(log) 写法, 只舍入频率的 pow 写法, 全程 f32 的 exp(log) 写法)。
    pub curve: Vec<(usize, f64, f64, f64)>,
    /// 两种 f32 写法的编码表之间的最大差别，及其位置 (pos, 维度)。
    pub max_diff_between: (f64, usize, usize),
}

/// 在 `max_len` 个位置、`d_model` 维上比较（角度与 sin/cos 都在 f64 下计算，只保留频率的 f32 舍入）。
pub fn pe_numerics(d_model: usize, max_len: usize, stride: usize) -> PeNumerics {
    let truth = frequencies_f64(d_model);
    let explog32 = frequencies_exp_log(d_model);
    let explog: Vec<f64> = explog32.iter().map(|&w| f64::from(w)).collect();
    let pow: Vec<f64> = frequencies_pow(d_model)
        .into_iter()
        .map(f64::from)
        .collect();
    let rel = |f: &[f64]| {
        f.iter()
            .zip(&truth)
            .map(|(a, t)| ((a - t) / t).abs())
            .fold(0.0, f64::max)
    };
    let mut curve = Vec::new();
    let mut max_diff_between = (0.0, 0, 0);
    for pos in 0..max_len {
        let mut row = (0.0f64, 0.0f64, 0.0f64);
        for i in 0..truth.len() {
            let p = pos as f64;
            // 全程 f32：角度 pos·ω 与 sin/cos 都在 f32 下计算（本书 sinusoidal_table 的做法）
            let angle32 = pos as f32 * explog32[i];
            let full32 = [f64::from(angle32.sin()), f64::from(angle32.cos())];
            for (k, trig) in [f64::sin as fn(f64) -> f64, f64::cos]
                .into_iter()
                .enumerate()
            {
                let (t, a, b) = (trig(p * truth[i]), trig(p * explog[i]), trig(p * pow[i]));
                row.0 = row.0.max((a - t).abs());
                row.1 = row.1.max((b - t).abs());
                row.2 = row.2.max((full32[k] - t).abs());
                if (a - b).abs() > max_diff_between.0 {
                    max_diff_between = ((a - b).abs(), pos, 2 * i + k);
                }
            }
        }
        if pos % stride == 0 {
            curve.push((pos, row.0, row.1, row.2));
        }
    }
    PeNumerics {
        d_model,
        freq_rel_error: (rel(&explog), rel(&pow)),
        curve,
        max_diff_between,
    }
}

/// 两个位置编码向量的点积：PE(a)·PE(b) = Σᵢ cos((a − b)·ωᵢ)，只依赖距离 a − b。
pub fn pe_dot(table: &[f32], d_model: usize, a: usize, b: usize) -> f32 {
    let (ra, rb) = (
        &table[a * d_model..(a + 1) * d_model],
        &table[b * d_model..(b + 1) * d_model],
    );
    ra.iter().zip(rb).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transformer::positional::sinusoidal_table;

    #[test]
    fn dot_product_depends_only_on_distance() {
        let d = 64;
        let table = sinusoidal_table(200, &frequencies_exp_log(d));
        // PE(a)·PE(a) = d/2（每对 sin² + cos² = 1）
        assert!((pe_dot(&table, d, 17, 17) - 32.0).abs() < 1e-4);
        // 距离相同，点积相同（f32 下到 1e-3）
        let near = pe_dot(&table, d, 10, 15);
        let far = pe_dot(&table, d, 110, 115);
        assert!((near - far).abs() < 1e-3, "{near} vs {far}");
    }

    #[test]
    fn rounding_error_grows_with_position() {
        let n = pe_numerics(512, 2048, 256);
        let first = n.curve.first().unwrap();
        let last = n.curve.last().unwrap();
        assert_eq!(first.1, 0.0); // 位置 0 的角度为 0，没有误差
        assert!(last.1 > 1e-5 && last.2 > 1e-5, "{last:?}");
        assert!(
            n.freq_rel_error.0 < 1e-6 && n.freq_rel_error.1 < 1e-6,
            "{:?}",
            n.freq_rel_error
        );
    }
}
