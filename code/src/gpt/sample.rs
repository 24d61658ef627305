//! 5.3 从下一个字的分布里选字：贪心、温度、top-k。
//!
//! 模型给出的是 logits；选字的规则与模型无关，所以这里只处理一行 `&[f32]`。

use std::fmt;

/// 随机数源与可设种子的生成器（转出，调用者与书中的片段不必直接依赖 rand 的哪个版本）。
pub use rand::{rngs::StdRng, Rng, SeedableRng};

// ANCHOR: sampling
/// 选字的规则。
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// 每次取概率最大的字（同分取 id 小的）：确定，但容易原地打转。
    Greedy,
    /// 按 softmax(logits / temperature) 随机抽；`top_k` 给出时只在 logits 最大的 k 个字里抽
    /// （与第 k 大的 logit 相等的也保留，同 transformers 的 `TopKLogitsWarper`）。
    Sample {
        /// 温度 T > 0：T < 1 让分布更尖，T > 1 更平。
        temperature: f64,
        /// 只保留前 k 个；`None` 不截断。
        top_k: Option<usize>,
    },
}

impl Sampling {
    /// 由命令行的两个数构造：温度为 0 表示贪心；温度为负、不是有限数，或 `top_k` 为 0，都是错误。
    pub fn new(temperature: f64, top_k: Option<usize>) -> Result<Self, SamplingError> {
        if !temperature.is_finite() || temperature < 0.0 {
            return Err(SamplingError::Temperature(temperature));
        }
        if top_k == Some(0) {
            return Err(SamplingError::TopK);
        }
        if temperature == 0.0 {
            return Ok(Sampling::Greedy);
        }
        Ok(Sampling::Sample { temperature, top_k })
    }
}
// ANCHOR_END: sampling

/// 选字规则的参数不合法。
#[derive(Clone, Debug, PartialEq)]
pub enum SamplingError {
    /// 温度为负或不是有限数。
    Temperature(f64),
    /// top-k 的 k 为 0。
    TopK,
}

impl fmt::Display for SamplingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SamplingError::Temperature(t) => {
                write!(
                    f,
                    "--temperature 是 {t}：温度应是 ≥ 0 的有限数（0 表示贪心）"
                )
            }
            SamplingError::TopK => write!(f, "--top-k 是 0：至少要保留 1 个字"),
        }
    }
}

impl std::error::Error for SamplingError {}

// ANCHOR: distribution
/// 温度与 top-k 作用之后的分布：softmax(logits / T)，不在前 k 个里的字概率为 0。
pub fn distribution(logits: &[f32], temperature: f64, top_k: Option<usize>) -> Vec<f64> {
    let threshold = match top_k {
        Some(k) if k < logits.len() => {
            let mut sorted: Vec<f32> = logits.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            sorted[k - 1]
        }
        _ => f32::NEG_INFINITY,
    };
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let weights: Vec<f64> = logits
        .iter()
        .map(|&l| {
            if l >= threshold {
                ((l as f64 - max) / temperature).exp()
            } else {
                0.0
            }
        })
        .collect();
    let total: f64 = weights.iter().sum();
    weights.into_iter().map(|w| w / total).collect()
}
// ANCHOR_END: distribution

// ANCHOR: next_token
/// 按规则选出下一个字的 id。
pub fn next_token<R: Rng>(logits: &[f32], sampling: Sampling, rng: &mut R) -> usize {
    match sampling {
        Sampling::Greedy => first_max(logits),
        Sampling::Sample { temperature, top_k } => {
            let probs = distribution(logits, temperature, top_k);
            // 逆变换抽样：u ~ U(0,1)，取累积概率第一次超过 u 的那个字
            let u: f64 = rng.gen();
            let mut acc = 0.0;
            for (id, p) in probs.iter().enumerate() {
                acc += p;
                if u < acc {
                    return id;
                }
            }
            // 舍入让累积和略小于 1 时：取最后一个概率不为 0 的字
            probs.iter().rposition(|&p| p > 0.0).unwrap_or(0)
        }
    }
}
// ANCHOR_END: next_token

/// 最大值第一次出现的位置（同 `torch.argmax`；NaN 不会被选中，除非全是 NaN）。
pub fn first_max(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] || row[best].is_nan() {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const LOGITS: [f32; 6] = [1.0, 3.0, -2.0, 2.5, 0.0, 3.0];

    #[test]
    fn greedy_takes_the_first_largest() {
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(next_token(&LOGITS, Sampling::Greedy, &mut rng), 1);
    }

    #[test]
    fn sampled_frequencies_follow_the_tempered_softmax() {
        let mut rng = StdRng::seed_from_u64(1);
        for temperature in [0.5, 1.0, 2.0] {
            let s = Sampling::new(temperature, None).unwrap();
            let n = 60_000;
            let mut counts = [0usize; 6];
            for _ in 0..n {
                counts[next_token(&LOGITS, s, &mut rng)] += 1;
            }
            let p = distribution(&LOGITS, temperature, None);
            // 皮尔逊 χ²，自由度 5：99.9% 分位数是 20.5
            let chi2: f64 = counts
                .iter()
                .zip(&p)
                .filter(|(_, &p)| p > 0.0)
                .map(|(&c, &p)| (c as f64 - n as f64 * p).powi(2) / (n as f64 * p))
                .sum();
            assert!(
                chi2 < 20.5,
                "T = {temperature}: χ² = {chi2:.1}, {counts:?} 对 {p:?}"
            );
        }
    }

    #[test]
    fn temperature_sharpens_and_flattens() {
        let entropy = |p: &[f64]| {
            -p.iter()
                .filter(|&&x| x > 0.0)
                .map(|x| x * x.ln())
                .sum::<f64>()
        };
        let (cold, warm, hot) = (
            entropy(&distribution(&LOGITS, 0.3, None)),
            entropy(&distribution(&LOGITS, 1.0, None)),
            entropy(&distribution(&LOGITS, 3.0, None)),
        );
        assert!(cold < warm && warm < hot, "{cold} {warm} {hot}");
        // T → ∞ 趋于均匀（熵 → ln 6）
        let flat = entropy(&distribution(&LOGITS, 1e6, None));
        assert!((flat - 6f64.ln()).abs() < 1e-5);
    }

    #[test]
    fn top_k_never_leaves_the_k_largest_and_keeps_ties() {
        let mut rng = StdRng::seed_from_u64(2);
        let s = Sampling::new(1.5, Some(2)).unwrap();
        let mut seen = [false; 6];
        for _ in 0..5_000 {
            seen[next_token(&LOGITS, s, &mut rng)] = true;
        }
        // 前 2 大是 3.0、3.0（id 1 与 5）：只抽到这两个
        assert_eq!(seen, [false, true, false, false, false, true]);
        // k = 3：第 3 大是 2.5
        let p = distribution(&LOGITS, 1.0, Some(3));
        assert!(p[3] > 0.0 && p[0] == 0.0 && p[4] == 0.0);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // k 不小于词表：不截断
        assert_eq!(
            distribution(&LOGITS, 1.0, Some(6)),
            distribution(&LOGITS, 1.0, None)
        );
    }

    #[test]
    fn bad_parameters_are_rejected() {
        assert_eq!(Sampling::new(0.0, Some(5)).unwrap(), Sampling::Greedy);
        assert!(matches!(
            Sampling::new(-1.0, None),
            Err(SamplingError::Temperature(_))
        ));
        assert!(matches!(
            Sampling::new(f64::NAN, None),
            Err(SamplingError::Temperature(_))
        ));
        assert_eq!(Sampling::new(1.0, Some(0)), Err(SamplingError::TopK));
    }
}
