//! 1.3 正弦位置编码：PE[pos, 2i] = sin(pos·ωᵢ)，PE[pos, 2i+1] = cos(pos·ωᵢ)，ωᵢ = 10000^(−2i/d)。
//!
//! 编码只算一次，不是参数（不参与训练，也不进检查点）。

use dfdx::prelude::*;

// ANCHOR: frequencies
/// 频率 ωᵢ = exp(−(2i/d)·ln 10000)，i = 0, 1, …, d/2 − 1（参考实现的写法）。
pub fn frequencies_exp_log(d_model: usize) -> Vec<f32> {
    let step = -(10000.0f32).ln() / d_model as f32;
    (0..d_model)
        .step_by(2)
        .map(|i| (i as f32 * step).exp())
        .collect()
}

/// 同一个频率的 pow 写法：ωᵢ = 1 / 10000^(2i/d)。数学上相同，f32 下的舍入不同。
pub fn frequencies_pow(d_model: usize) -> Vec<f32> {
    (0..d_model)
        .step_by(2)
        .map(|i| 1.0 / 10000.0f32.powf(i as f32 / d_model as f32))
        .collect()
}

/// f64 下的频率，作为比较两种 f32 写法的“真值”。
pub fn frequencies_f64(d_model: usize) -> Vec<f64> {
    (0..d_model)
        .step_by(2)
        .map(|i| (-(i as f64) / d_model as f64 * 10000f64.ln()).exp())
        .collect()
}

/// 位置编码表，`max_len × d_model`，按行优先展平。
pub fn sinusoidal_table(max_len: usize, frequencies: &[f32]) -> Vec<f32> {
    let mut table = Vec::with_capacity(max_len * frequencies.len() * 2);
    for pos in 0..max_len {
        for &w in frequencies {
            let angle = pos as f32 * w;
            table.push(angle.sin());
            table.push(angle.cos());
        }
    }
    table
}
// ANCHOR_END: frequencies

// ANCHOR: positional
/// 预先算好的位置编码表（不是参数）。
///
/// # 形状
/// - `table`: `(max_len, Const<M>)`
#[derive(Clone, Debug)]
pub struct PositionalEncoding<const M: usize, E: Dtype, D: Device<E>> {
    /// 编码表。
    pub table: Tensor<(usize, Const<M>), E, D>,
}

impl<const M: usize, E: Dtype, D: Device<E>> PositionalEncoding<M, E, D> {
    const EVEN: () = assert!(M % 2 == 0, "正弦位置编码要求 d_model 为偶数");

    /// 计算前 `max_len` 个位置的编码。
    pub fn new(dev: &D, max_len: usize) -> Self {
        let () = Self::EVEN;
        let table = sinusoidal_table(max_len, &frequencies_exp_log(M));
        let table = table.into_iter().map(|v| E::from_f32(v).unwrap()).collect();
        Self {
            table: dev.tensor_from_vec(table, (max_len, Const::<M>)),
        }
    }

    /// 能编码的最大长度。
    pub fn max_len(&self) -> usize {
        self.table.shape().0
    }

    /// x + PE[..seq]，沿批维广播。
    ///
    /// # 形状
    /// - `x`: `(batch, seq, Const<M>)`，要求 `seq ≤ max_len`
    /// - 返回：与 `x` 相同
    pub fn forward<T: Tape<E, D>>(
        &self,
        x: Tensor<(usize, usize, Const<M>), E, D, T>,
    ) -> Tensor<(usize, usize, Const<M>), E, D, T> {
        let shape = *x.shape();
        assert!(
            shape.1 <= self.max_len(),
            "序列长度 {} 超过位置编码的最大长度 {}",
            shape.1,
            self.max_len()
        );
        let pe = self.table.clone().slice((..shape.1, ..)); // (seq, M)
                                                            // (seq, M) 与 (batch, seq, M) 的 seq 都是 usize，广播哪一维有歧义：写明是新增第 0 维
        x + pe.broadcast_like::<_, Axis<0>>(&shape)
    }
}
// ANCHOR_END: positional

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_rows_match_the_formula() {
        let f = frequencies_exp_log(4); // ω = [1, 0.01]
        assert!(
            (f[0] - 1.0).abs() < 1e-7 && (f[1] - 0.01).abs() < 1e-7,
            "{f:?}"
        );
        let t = sinusoidal_table(2, &f);
        // pos = 0: [sin 0, cos 0, sin 0, cos 0]
        assert_eq!(&t[..4], &[0.0, 1.0, 0.0, 1.0]);
        // pos = 1: [sin 1, cos 1, sin 0.01, cos 0.01]
        let want = [1f32.sin(), 1f32.cos(), 0.01f32.sin(), 0.01f32.cos()];
        for (a, b) in t[4..].iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn adds_the_same_encoding_to_every_sequence_in_the_batch() {
        let dev: Cpu = Default::default();
        let pe = PositionalEncoding::<8, f32, Cpu>::new(&dev, 16);
        let x = dev.zeros_like(&(3, 5, Const::<8>));
        let y = pe.forward(x).as_vec();
        let table = pe.table.as_vec();
        for b in 0..3 {
            assert_eq!(&y[b * 40..(b + 1) * 40], &table[..40]);
        }
    }
}
