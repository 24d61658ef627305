//! 组批：把长短不一的 id 序列填充到同一长度，并给出填充掩码。

use dfdx::prelude::*;

use super::vocab::PAD;
use crate::transformer::attention::PaddingMask;

/// 一批分类样本。
pub struct Batch<E: Dtype, D: Device<E>> {
    /// 词 id，`(batch, seq)`，填充位置为 `[PAD]`。
    pub tokens: Tensor<(usize, usize), usize, D>,
    /// 句子对的句子类型 id（同形状；单句时为 `None`，即全为 0）。
    pub token_types: Option<Tensor<(usize, usize), usize, D>>,
    /// 填充掩码（含每条序列的真实长度）。
    pub mask: PaddingMask<E, D>,
    /// 标签。
    pub labels: Vec<usize>,
}

// ANCHOR: make_batch
/// 把 `(ids, label)` 组成一批：填充到这批中最长序列的长度。空序列会被换成一个 `[PAD]`，以免整行被遮住。
pub fn make_batch<E: Dtype, D: Device<E>>(dev: &D, examples: &[(&[usize], usize)]) -> Batch<E, D> {
    make_pair_batch(dev, examples, None)
}

/// 同 [`make_batch`]；`pair_sep` 给出 `[SEP]` 的 id 时样本是句子对，另给出句子类型 id：
/// `[CLS] A [SEP] B [SEP]` 里到第一个 `[SEP]`（含）为止是 0，之后是 1，填充位置为 0（与 HF 的分词器相同）。
pub fn make_pair_batch<E: Dtype, D: Device<E>>(
    dev: &D,
    examples: &[(&[usize], usize)],
    pair_sep: Option<usize>,
) -> Batch<E, D> {
    let lengths: Vec<usize> = examples.iter().map(|(ids, _)| ids.len().max(1)).collect();
    let seq = lengths.iter().copied().max().unwrap_or(1);
    let mut flat = Vec::with_capacity(examples.len() * seq);
    let mut types = Vec::with_capacity(if pair_sep.is_some() {
        examples.len() * seq
    } else {
        0
    });
    for (ids, _) in examples {
        flat.extend_from_slice(ids);
        flat.extend(std::iter::repeat_n(PAD, seq - ids.len()));
        if let Some(sep) = pair_sep {
            let first = ids
                .iter()
                .position(|&t| t == sep)
                .map_or(ids.len(), |p| p + 1);
            types.extend((0..seq).map(|j| usize::from(j >= first && j < ids.len())));
        }
    }
    let mask = PaddingMask::from_lengths(dev, &lengths, seq).expect("长度都在 1..=seq 之内");
    Batch {
        tokens: dev.tensor_from_vec(flat, (examples.len(), seq)),
        token_types: pair_sep.map(|_| dev.tensor_from_vec(types, (examples.len(), seq))),
        mask,
        labels: examples.iter().map(|e| e.1).collect(),
    }
}
// ANCHOR_END: make_batch

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_to_the_longest_and_masks_the_rest() {
        let dev: Cpu = Default::default();
        let b = make_batch::<f32, _>(&dev, &[(&[7, 8, 9], 1), (&[5], 0), (&[], 1)]);
        assert_eq!(b.tokens.shape(), &(3, 3));
        assert_eq!(b.tokens.as_vec(), vec![7, 8, 9, 5, PAD, PAD, PAD, PAD, PAD]);
        assert_eq!(b.mask.lengths, vec![3, 1, 1]);
        assert_eq!(b.labels, vec![1, 0, 1]);
    }

    #[test]
    fn token_types_switch_after_the_first_sep() {
        let dev: Cpu = Default::default();
        // [CLS]=2 A… [SEP]=3 B… [SEP]=3，第二条较短、有填充
        let b = make_pair_batch::<f32, _>(
            &dev,
            &[(&[2, 9, 9, 3, 8, 3], 0), (&[2, 9, 3, 8, 3], 1)],
            Some(3),
        );
        let t = b.token_types.unwrap();
        assert_eq!(t.as_vec(), vec![0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0]);
        assert!(make_batch::<f32, _>(&dev, &[(&[2, 3], 0)])
            .token_types
            .is_none());
    }
}
