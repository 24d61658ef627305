//! LoRA 的秩 r 是类型参数 `const R: usize`：不合法的秩在编译期被拒绝（[`RankBound`]）。
//! 秩来自配置文件时（第 3 部分），先用 [`check_rank`] 在运行期检查，再分派到编译好的秩。
//!
//! 为什么不把秩做成运行期的 `usize` 维度？dfdx 0.13 的参数遍历（`TensorCollection`）要求每个参数的形状
//! 都是编译期常量（`TensorOptions` 的构造函数要求 `ConstShape`），运行期形状的张量无法成为可训练参数。

use std::fmt;

// ANCHOR: rank_bound
/// 秩的约束，作为关联常量在编译期求值：`R` 在 1 到 min(IN, OUT) 之间。
pub struct RankBound<const IN: usize, const OUT: usize, const R: usize>;

impl<const IN: usize, const OUT: usize, const R: usize> RankBound<IN, OUT, R> {
    /// 1 ≤ R ≤ min(IN, OUT)。
    pub const VALID: () = {
        assert!(R >= 1, "LoRA 的秩 R 必须 ≥ 1");
        assert!(R <= IN && R <= OUT, "LoRA 的秩 R 不能超过 min(IN, OUT)");
    };
    /// 参数上划算：r·(IN + OUT) < IN·OUT（需要时引用它）。
    pub const EFFICIENT: () = assert!(
        R * (IN + OUT) < IN * OUT,
        "这个秩的 LoRA 参数不比原矩阵少：要求 r(d+k) < dk"
    );
}

/// 运行期的秩检查：秩来自配置文件（如第 3 部分的 `adapter_config.json`）时，在构造模型之前调用。
pub fn check_rank(r: usize, d_in: usize, d_out: usize) -> Result<(), LoraError> {
    if r == 0 || r > d_in.min(d_out) {
        return Err(LoraError::Rank {
            r,
            max: d_in.min(d_out),
            shape: (d_out, d_in),
        });
    }
    Ok(())
}
// ANCHOR_END: rank_bound

/// LoRA 的配置错误。
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoraError {
    /// 秩不在 1..=min(IN, OUT) 之内。
    Rank {
        /// 给出的秩。
        r: usize,
        /// 允许的最大值。
        max: usize,
        /// 被适配的权重形状 (OUT, IN)。
        shape: (usize, usize),
    },
}

impl fmt::Display for LoraError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoraError::Rank { r, max, shape } => {
                write!(
                    f,
                    "LoRA 配置错误：字段 r = {r}，对形状为 {}×{} 的权重应在 1 到 {max} 之间",
                    shape.0, shape.1
                )
            }
        }
    }
}

impl std::error::Error for LoraError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_rank_is_checked_with_a_clear_message() {
        assert_eq!(check_rank(8, 16, 32), Ok(()));
        let err = check_rank(0, 16, 32).unwrap_err();
        assert_eq!(
            err.to_string(),
            "LoRA 配置错误：字段 r = 0，对形状为 32×16 的权重应在 1 到 16 之间"
        );
        assert!(check_rank(17, 16, 32).is_err());
        #[allow(clippy::let_unit_value)]
        let () = RankBound::<16, 32, 4>::VALID;
    }
}
