//! 0.3 编译期形状与运行期维度。
//!
//! 本书的约定：**模型宽度是类型，数据大小是运行期的值**。隐藏维度、头数、词表大小写成
//! `Const<N>`，由编译器检查；批大小和序列长度是 `usize`，在数据进入模型的边界处检查一次。

use std::fmt;

use dfdx::prelude::*;

/// `(batch, seq, Const<N>)` 的隐藏状态：批与序列长度是运行期的值，宽度 `N` 是类型。
/// 附录 B 的算子（`kernels`）与各章的钩子、模型共用这一个别名。
pub type Hidden<const N: usize, E, D, T> = Tensor<(usize, usize, Const<N>), E, D, T>;

// ANCHOR: linear
/// 全连接层的前向：y = x Wᵀ + b（与 PyTorch 的 `nn.Linear` 同一布局）。
///
/// # 形状
/// - `x`: `(B, Const<IN>)`，`B` 是运行期的批大小
/// - `w`: `(Const<OUT>, Const<IN>)`
/// - `b`: `(Const<OUT>,)`
/// - 返回：`(B, Const<OUT>)`
pub fn linear<B: Dim, const IN: usize, const OUT: usize, E: Dtype, D: Device<E>, T: Tape<E, D>>(
    x: Tensor<(B, Const<IN>), E, D, T>,
    w: &Tensor<Rank2<OUT, IN>, E, D>,
    b: &Tensor<Rank1<OUT>, E, D>,
) -> Tensor<(B, Const<OUT>), E, D, T> {
    let batch = x.shape().0;
    // (B, IN) × (IN, OUT) -> (B, OUT)：内维 IN 必须相同，否则编译不过
    let y = x.matmul(w.clone().permute::<Rank2<IN, OUT>, _>());
    y + b.clone().broadcast_like(&(batch, Const::<OUT>))
}
// ANCHOR_END: linear

// ANCHOR: head_split
/// 多头注意力把 `D_MODEL` 维平均分给 `HEADS` 个头。
///
/// `D_HEAD` 是关联常量：在**编译期**对每一组具体的 `<D_MODEL, HEADS>` 求值，
/// 其中的 `assert!` 不成立就是编译错误，而不是运行时的 panic。
pub struct HeadSplit<const D_MODEL: usize, const HEADS: usize>;

impl<const D_MODEL: usize, const HEADS: usize> HeadSplit<D_MODEL, HEADS> {
    /// 每个头的维度 `D_MODEL / HEADS`。
    pub const D_HEAD: usize = {
        assert!(HEADS >= 1, "HEADS 必须 ≥ 1");
        assert!(D_MODEL % HEADS == 0, "D_MODEL 必须能被 HEADS 整除");
        D_MODEL / HEADS
    };
}
// ANCHOR_END: head_split

// ANCHOR: batch_from_rows
/// 把若干行特征拼成一个 `(usize, Const<N>)` 的批。
///
/// 行数是运行期的值，编译器无从检查；每行的宽度必须等于类型里的 `N`。
/// 这里是数据进入模型的边界：宽度不对就返回一个指明行号和期望值的错误，
/// 而不是让 dfdx 在深处 panic。
pub fn batch_from_rows<const N: usize, D: Device<f32>>(
    dev: &D,
    rows: &[Vec<f32>],
) -> Result<Tensor<(usize, Const<N>), f32, D>, ShapeError> {
    if rows.is_empty() {
        return Err(ShapeError::EmptyBatch);
    }
    let mut flat = Vec::with_capacity(rows.len() * N);
    for (index, row) in rows.iter().enumerate() {
        if row.len() != N {
            return Err(ShapeError::RowWidth {
                index,
                expected: N,
                found: row.len(),
            });
        }
        flat.extend_from_slice(row);
    }
    Ok(dev.tensor_from_vec(flat, (rows.len(), Const::<N>)))
}
// ANCHOR_END: batch_from_rows

/// 运行期形状错误。
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeError {
    /// 批里没有任何一行。
    EmptyBatch,
    /// 第 `index` 行的宽度与类型里的宽度不一致。
    RowWidth {
        /// 出错的行号（从 0 开始）。
        index: usize,
        /// 类型要求的宽度。
        expected: usize,
        /// 实际的宽度。
        found: usize,
    },
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShapeError::EmptyBatch => write!(f, "批为空：至少需要一行数据"),
            ShapeError::RowWidth {
                index,
                expected,
                found,
            } => {
                write!(f, "第 {index} 行的宽度是 {found}，模型要求 {expected}")
            }
        }
    }
}

impl std::error::Error for ShapeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_hand_computation() {
        let dev: Cpu = Default::default();
        let x = dev.tensor([[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]]);
        let x: Tensor<(usize, Const<2>), f32, _> = x.realize();
        let w = dev.tensor([[1.0f32, 0.0], [0.0, 1.0], [1.0, 1.0]]);
        let b = dev.tensor([0.5f32, -0.5, 0.0]);
        let y = linear(x, &w, &b);
        assert_eq!(y.shape(), &(3, Const::<3>));
        assert_eq!(
            y.as_vec(),
            vec![1.5, 1.5, 3.0, 3.5, 3.5, 7.0, 5.5, 5.5, 11.0]
        );
    }

    #[test]
    fn head_split_divides() {
        assert_eq!(HeadSplit::<512, 8>::D_HEAD, 64);
        assert_eq!(HeadSplit::<384, 12>::D_HEAD, 32);
    }

    #[test]
    fn batch_from_rows_names_the_bad_row() {
        let dev: Cpu = Default::default();
        let ok =
            batch_from_rows::<3, _>(&dev, &[vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]]).unwrap();
        assert_eq!(ok.shape(), &(2, Const::<3>));
        let err =
            batch_from_rows::<3, _>(&dev, &[vec![1.0, 2.0, 3.0], vec![4.0, 5.0]]).unwrap_err();
        assert_eq!(
            err,
            ShapeError::RowWidth {
                index: 1,
                expected: 3,
                found: 2
            }
        );
        assert_eq!(err.to_string(), "第 1 行的宽度是 2，模型要求 3");
        assert_eq!(
            batch_from_rows::<3, _>(&dev, &[]).unwrap_err(),
            ShapeError::EmptyBatch
        );
    }
}
