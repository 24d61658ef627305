//! 4.5 节：两种量化格式——int8（每行一个 absmax）与 4 位 NF4（每 64 个数一个 absmax）。
//!
//! 两者都是“absmax 量化”：一组数除以组里绝对值最大的那个，落进 [−1, 1]，再取最近的码。
//! - **int8**（bitsandbytes 的 `int8_vectorwise_quant`，LLM.int8() 的权重一侧）：一组是权重的一行，
//!   码是 round(127·x/absmax)，即 [−1, 1] 上等距的 255 个点；还原 q·absmax/127。
//! - **NF4**（QLoRA，Dettmers et al., 2023；bitsandbytes 的 `quantize_4bit(quant_type="nf4")`）：一组是按行优先
//!   摊平后的连续 64 个数，码是 [−1, 1] 上 16 个**不等距**的点——标准正态分布的分位数，0 附近密、两头疏，
//!   正好配合近似正态的权重；每个数取最近的码（正好落在两码中点时取较小的那个），两个 4 位码拼进一个字节，
//!   前一个在高 4 位。还原 code[q]·absmax。
//!
//! 运算的次序照搬 bitsandbytes 的 PyTorch 实现（先算 1/absmax 再乘；不足一组的尾巴直接除），
//! 所以得到的码与 absmax 与它逐位相同（`code/src/quant/mod.rs` 的测试对照 bitsandbytes 0.50.2 存的码）。

use rayon::prelude::*;

// ANCHOR: nf4_code
/// NF4 的 16 个码（bitsandbytes 0.50.2 `functional.get_4bit_type("nf4")`）：标准正态分布的分位数，缩放到 [−1, 1]，
/// 正负两侧各取 8 个与 7 个点，再加上精确的 0。
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];
// ANCHOR_END: nf4_code

/// NF4 一组的大小（QLoRA 与 bitsandbytes 的默认 `blocksize`）。
pub const NF4_BLOCK: usize = 64;

/// 1/127 在 f32 里的值（bitsandbytes 还原 int8 时乘的常数）。
const INV_127: f32 = 7.874_016e-3;

/// 相邻两个 NF4 码的中点（f32 里算，与 bitsandbytes 的 `(code[:-1] + code[1:]) / 2` 相同）。
fn nf4_midpoints() -> [f32; 15] {
    std::array::from_fn(|i| (NF4_CODE[i] + NF4_CODE[i + 1]) / 2.0)
}

/// 量化格式。
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum QuantKind {
    /// 每行一个 absmax 的 int8。
    Int8,
    /// 每 64 个数一个 absmax 的 4 位 NF4。
    Nf4,
}

impl QuantKind {
    /// 命令行与结果文件里的名字。
    pub fn name(self) -> &'static str {
        match self {
            QuantKind::Int8 => "int8",
            QuantKind::Nf4 => "nf4",
        }
    }
}

impl std::str::FromStr for QuantKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "int8" => Ok(QuantKind::Int8),
            "nf4" => Ok(QuantKind::Nf4),
            _ => Err(format!("不认识的量化格式 {s:?}：可选 int8、nf4")),
        }
    }
}

/// 量化后的数据。
#[derive(Clone, Debug, PartialEq)]
pub enum QuantData {
    /// int8：码按行优先，每行一个 absmax。
    Int8 {
        /// 码，−127..=127。
        codes: Vec<i8>,
        /// 每行的 absmax。
        row_absmax: Vec<f32>,
    },
    /// NF4：两个码一个字节（前一个在高 4 位），每 `block` 个数一个 absmax。
    Nf4 {
        /// 打包的码，长 ⌈n/2⌉。
        packed: Vec<u8>,
        /// 每组的 absmax，长 ⌈n/block⌉。
        absmax: Vec<f32>,
        /// 一组的大小。
        block: usize,
    },
}

/// 一个量化存放的 `(rows, cols)` 矩阵（行优先，与 PyTorch 的 `nn.Linear.weight` 相同）。
#[derive(Clone, Debug, PartialEq)]
pub struct QuantMatrix {
    /// 行数（线性层的输出维）。
    pub rows: usize,
    /// 列数（输入维）。
    pub cols: usize,
    /// 码与 absmax。
    pub data: QuantData,
}

/// 量化失败：权重里有 NaN 或无穷大（absmax 量化没有意义，还原出来全是 NaN）。
#[derive(Clone, Debug, PartialEq)]
pub struct NonFinite {
    /// 第一个非有限数的下标（行优先）。
    pub index: usize,
    /// 它的值。
    pub value: f32,
}

// ANCHOR: quantize
impl QuantMatrix {
    /// 把行优先的 `(rows, cols)` 矩阵 `w` 量化成 `kind`。
    pub fn quantize(
        kind: QuantKind,
        w: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<Self, NonFinite> {
        assert_eq!(w.len(), rows * cols, "矩阵的元素个数与形状不符");
        if let Some((index, &value)) = w.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(NonFinite { index, value });
        }
        let data = match kind {
            QuantKind::Int8 => {
                let (codes, row_absmax) = quantize_int8(w, cols);
                QuantData::Int8 { codes, row_absmax }
            }
            QuantKind::Nf4 => {
                let (packed, absmax) = quantize_nf4(w, NF4_BLOCK);
                QuantData::Nf4 {
                    packed,
                    absmax,
                    block: NF4_BLOCK,
                }
            }
        };
        Ok(Self { rows, cols, data })
    }

    /// 还原成行优先的 f32 矩阵。
    pub fn dequantize(&self) -> Vec<f32> {
        let n = self.rows * self.cols;
        let mut out = vec![0.0f32; n];
        match &self.data {
            QuantData::Int8 { codes, row_absmax } => {
                out.par_chunks_mut(self.cols)
                    .zip(codes.par_chunks(self.cols))
                    .zip(row_absmax.par_iter())
                    .for_each(|((o, q), &s)| {
                        for (o, &q) in o.iter_mut().zip(q) {
                            *o = q as f32 * s * INV_127;
                        }
                    });
            }
            QuantData::Nf4 {
                packed,
                absmax,
                block,
            } => {
                // 一组 block 个数对应 block/2 个字节：block 须为偶数，组与字节才对得齐
                assert!(block % 2 == 0, "NF4 的组大小须为偶数");
                out.par_chunks_mut(*block)
                    .zip(packed.par_chunks(block / 2))
                    .zip(absmax.par_iter())
                    .for_each(|((o, bytes), &s)| {
                        for (pair, &byte) in o.chunks_mut(2).zip(bytes) {
                            pair[0] = NF4_CODE[(byte >> 4) as usize] * s;
                            if let Some(second) = pair.get_mut(1) {
                                *second = NF4_CODE[(byte & 0x0f) as usize] * s;
                            }
                        }
                    });
            }
        }
        out
    }

    /// 存放占的字节数：码加上 absmax（f32）。
    pub fn stored_bytes(&self) -> usize {
        match &self.data {
            QuantData::Int8 { codes, row_absmax } => codes.len() + 4 * row_absmax.len(),
            QuantData::Nf4 { packed, absmax, .. } => packed.len() + 4 * absmax.len(),
        }
    }
}

/// int8：每行 absmax，q = round(x·(127/absmax))（四舍六入五成双，与 `torch.round` 相同）。全零的行码全是 0。
pub fn quantize_int8(w: &[f32], cols: usize) -> (Vec<i8>, Vec<f32>) {
    let row_absmax: Vec<f32> = w
        .par_chunks(cols)
        .map(|row| row.iter().fold(0.0f32, |m, v| m.max(v.abs())))
        .collect();
    let mut codes = vec![0i8; w.len()];
    codes
        .par_chunks_mut(cols)
        .zip(w.par_chunks(cols))
        .zip(row_absmax.par_iter())
        .for_each(|((q, row), &absmax)| {
            if absmax > 0.0 {
                let k = 127.0f32 / absmax;
                for (q, &x) in q.iter_mut().zip(row) {
                    *q = (x * k).round_ties_even() as i8;
                }
            }
        });
    (codes, row_absmax)
}

/// NF4：按行优先摊平，每 `block` 个数一组取 absmax，x/absmax 取最近的码（中点归较小的码），两个码拼一字节。
pub fn quantize_nf4(w: &[f32], block: usize) -> (Vec<u8>, Vec<f32>) {
    assert!(block % 2 == 0, "NF4 的组大小须为偶数");
    let mids = nf4_midpoints();
    // 码的下标 = 小于它的中点的个数（torch.bucketize 的 right=False）
    let code = |scaled: f32| mids.partition_point(|&m| m < scaled) as u8;
    let absmax: Vec<f32> = w
        .par_chunks(block)
        .map(|b| b.iter().fold(0.0f32, |m, v| m.max(v.abs())))
        .collect();
    let full = w.len() / block * block;
    let mut packed = vec![0u8; w.len().div_ceil(2)];
    packed
        .par_chunks_mut(block / 2)
        .zip(w.par_chunks(block))
        .zip(absmax.par_iter())
        .enumerate()
        .for_each(|(i, ((bytes, b), &am))| {
            let am = am.max(1e-38);
            // 完整的组：先算倒数再乘；不足一组的尾巴：直接除（bitsandbytes 的两条路径就是这样写的）
            let scaled = |x: f32| {
                let s = if i * block < full {
                    x * (1.0 / am)
                } else {
                    x / am
                };
                s.clamp(-1.0, 1.0)
            };
            for (byte, pair) in bytes.iter_mut().zip(b.chunks(2)) {
                let hi = code(scaled(pair[0]));
                // 总个数为奇数时最后补一个 0（与 bitsandbytes 的 pad 相同）
                let lo = pair.get(1).map_or(code(0.0), |&x| code(scaled(x)));
                *byte = (hi << 4) | lo;
            }
        });
    (packed, absmax)
}
// ANCHOR_END: quantize

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nf4_codes_are_sorted_and_symmetric_in_range() {
        assert!(NF4_CODE.windows(2).all(|w| w[0] < w[1]));
        assert_eq!((NF4_CODE[0], NF4_CODE[7], NF4_CODE[15]), (-1.0, 0.0, 1.0));
    }

    #[test]
    fn each_code_value_quantizes_to_itself() {
        // 一组里放 16 个码本身（absmax = 1）：每个都量化成自己的下标，还原后分毫不差
        let w: Vec<f32> = NF4_CODE.iter().cycle().take(64).copied().collect();
        let m = QuantMatrix::quantize(QuantKind::Nf4, &w, 4, 16).unwrap();
        assert_eq!(m.dequantize(), w);
        let QuantData::Nf4 { packed, .. } = &m.data else {
            unreachable!()
        };
        assert_eq!(packed[0], 0x01, "前一个码在高 4 位");
        assert_eq!(packed[7], 0xef);
    }

    #[test]
    fn a_midpoint_goes_to_the_lower_code() {
        let mids = nf4_midpoints();
        // 第一组：absmax = 1（放一个 1.0），再放一个正好在码 8、9 中点上的数
        let mut w = vec![0.0f32; 64];
        w[0] = 1.0;
        w[1] = mids[8];
        w[2] = f32::from_bits(mids[8].to_bits() + 1); // 中点往上一点点：归较大的码
        let m = QuantMatrix::quantize(QuantKind::Nf4, &w, 1, 64).unwrap();
        let QuantData::Nf4 { packed, .. } = &m.data else {
            unreachable!()
        };
        assert_eq!(packed[0] & 0x0f, 8);
        assert_eq!(packed[1] >> 4, 9);
    }

    #[test]
    fn int8_rounds_half_to_even_and_keeps_zero_rows() {
        // absmax = 127 时 q = round(x)：2.5 → 2，3.5 → 4，−2.5 → −2
        let w = [127.0f32, 2.5, 3.5, -2.5, 0.0, 0.0, 0.0, 0.0];
        let m = QuantMatrix::quantize(QuantKind::Int8, &w, 2, 4).unwrap();
        let QuantData::Int8 { codes, row_absmax } = &m.data else {
            unreachable!()
        };
        assert_eq!(codes, &[127, 2, 4, -2, 0, 0, 0, 0]);
        assert_eq!(row_absmax, &[127.0, 0.0]);
        assert_eq!(
            &m.dequantize()[4..],
            &[0.0; 4],
            "全零的行还原成 0，不是 NaN"
        );
    }

    #[test]
    fn error_is_bounded_by_half_a_step() {
        // int8 的误差不超过半格 absmax/254；NF4 不超过相邻两码最大间距的一半乘 absmax
        let w: Vec<f32> = (0..3 * 96)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        for kind in [QuantKind::Int8, QuantKind::Nf4] {
            let m = QuantMatrix::quantize(kind, &w, 3, 96).unwrap();
            let back = m.dequantize();
            let (group, half_step) = match kind {
                QuantKind::Int8 => (96, 1.0 / 254.0),
                QuantKind::Nf4 => (64, 0.5 * (NF4_CODE[1] - NF4_CODE[0])),
            };
            for (g, (x, y)) in w.chunks(group).zip(back.chunks(group)).enumerate() {
                let am = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                for (a, b) in x.iter().zip(y) {
                    assert!(
                        (a - b).abs() <= half_step * am * 1.0001,
                        "{kind:?} 组 {g}：{a} → {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_short_tail_block_and_an_odd_count_are_handled() {
        // 70 个数：一组 64 + 尾巴 6；71 个：再补半个字节
        for n in [70usize, 71] {
            let w: Vec<f32> = (0..n).map(|i| (i as f32 - 35.0) / 10.0).collect();
            let m = QuantMatrix::quantize(QuantKind::Nf4, &w, 1, n).unwrap();
            let QuantData::Nf4 { packed, absmax, .. } = &m.data else {
                unreachable!()
            };
            assert_eq!((packed.len(), absmax.len()), (n.div_ceil(2), 2));
            assert_eq!(
                absmax[1],
                w[64..].iter().fold(0.0f32, |m, v| m.max(v.abs()))
            );
            let back = m.dequantize();
            assert_eq!(back.len(), n);
            assert_eq!(
                back[n - 1],
                w[n - 1],
                "尾巴的最大值量化成码 ±1，还原得分毫不差"
            );
        }
    }

    #[test]
    fn non_finite_weights_are_refused() {
        let w = [1.0f32, f32::NAN, 0.0, 0.0];
        let err = QuantMatrix::quantize(QuantKind::Nf4, &w, 2, 2).unwrap_err();
        assert_eq!(err.index, 1);
    }

    #[test]
    fn stored_bytes_count_codes_and_scales() {
        let w = vec![0.5f32; 768 * 768];
        let int8 = QuantMatrix::quantize(QuantKind::Int8, &w, 768, 768).unwrap();
        let nf4 = QuantMatrix::quantize(QuantKind::Nf4, &w, 768, 768).unwrap();
        assert_eq!(int8.stored_bytes(), 768 * 768 + 4 * 768);
        assert_eq!(nf4.stored_bytes(), 768 * 768 / 2 + 4 * 768 * 768 / 64);
    }
}
