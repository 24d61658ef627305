//! CPU 上融合的低秩更新（附录 B，LoRA 的分支）：h = out + s·B(A·x)，一个算子。
//!
//! 组合写法（2.2 节的 [`low_rank`]）是两次 dfdx 的 matmul、一次乘 s、一次加法，各自遍历内存、各自分配，
//! 反向里四个算子各自复制一遍梯度；dfdx 的 matmul 还用另一个库的内核。这里把它们收成三次
//! [`par_gemm`]（前向）与四次（反向），缩放系数 s 并进 gemm 的 α：
//!
//! - 前向：down = x·Aᵀ `(rows, r)`（留给反向），h = out + s·down·Bᵀ（先复制 out，再以 β = 1 累加）；
//! - 反向，上游梯度 g：∂out = g（取走 h 的梯度），gB = s·g·B `(rows, r)`，∂B += s·gᵀ·down，∂A += gBᵀ·x，∂x += gB·A。
//!
//! 训练时分支的输入先做 dropout（x′ = dropout(x)）。单独的 dropout 算子会为反向留下 x′——每个加了 LoRA 的线性层一份 `(rows, I)`，
//! q、k、v 共用同一个 x 也各留一份。这里把 dropout 并进来：前向在临时缓冲区里算出 x′、用完即丢；反向由（种子, 下标）重新算出同一个 x′
//! 求 ∂A，∂x += mask ⊙ (gB·A)/(1 − p)。留给反向的只有 x 本身（它本来就被原线性层与别的分支共用）。
//! 丢弃的位置与单独的 dropout 算子完全相同（同一个种子、同一个哈希），结果逐位相同。
//!
//! [`low_rank`]: super::composite::low_rank

use dfdx::prelude::*;

use super::cpu::{
    buf_mut, data, dropout_back_add, dropout_new, dropout_params, insert_or_add_grad,
    is_contiguous, par_copy, par_gemm, par_zeros, take_grad, Gemm,
};
use super::math::FastMath;
use crate::basics::shapes::Hidden;

/// 矩阵的（起点, 行步长, 列步长）：行优先存放的 `rows × cols`。
fn rm<F>(p: *const F, cols: usize) -> (*const F, isize, isize) {
    (p, cols as isize, 1)
}

/// 同 [`rm`]，但按转置读：行优先的 `rows × cols` 当作 `cols × rows`。
fn tr<F>(p: *const F, cols: usize) -> (*const F, isize, isize) {
    (p, 1, cols as isize)
}

/// h = out + s·B(A·x)，`out` 是原线性层的输出，A `(R, I)`、B `(O, R)` 可训练（秩 R 可以是编译期的
/// `Const<R>`，也可以是运行期的 `usize`）。
pub fn lora_add<const I: usize, const O: usize, R: Dim, F, T>(
    out: Hidden<O, F, Cpu, T>,
    x: Hidden<I, F, Cpu, T>,
    a: &Tensor<(R, Const<I>), F, Cpu>,
    b: &Tensor<(Const<O>, R), F, Cpu>,
    scaling: f64,
    dropout: f64,
) -> Hidden<O, F, Cpu, T>
where
    F: FastMath + Dtype + Gemm,
    Cpu: super::Kernels<F>,
    T: Tape<F, Cpu> + Merge<T>,
{
    let contiguous = [is_contiguous(&out), is_contiguous(&x)];
    if contiguous.contains(&false) || !is_contiguous(a) || !is_contiguous(b) {
        let x = if dropout > 0.0 {
            super::cpu::dropout(x, dropout)
        } else {
            x
        };
        return out + super::composite::low_rank(x, a, b, scaling);
    }
    assert!(
        (0.0..1.0).contains(&dropout),
        "dropout 的概率应在 [0, 1) 之内：{dropout}"
    );
    // 与单独的 dropout 算子在同一处取种子：掩码与原来的写法相同
    let mask = (dropout > 0.0).then(|| {
        let seed = super::step_key::next_seed(|| x.device().random_u64());
        (seed, dropout_params::<F>(dropout))
    });
    let (batch, seq, _) = *x.shape();
    assert_eq!(
        *out.shape(),
        (batch, seq, Const::<O>),
        "out 与 x 的批、序列长度应相同"
    );
    let rows = batch * seq;
    let r = a.shape().0.size();
    assert_eq!(b.shape().1.size(), r, "A、B 的秩应相同");
    let s = F::c(scaling);
    let (out, t_out) = out.split_tape();
    let (x, t_x) = x.split_tape();
    let mut tape = t_out.merge(t_x);
    let (ad, bd) = (data(a), data(b));
    // 分支的输入 x′：有 dropout 时是临时算出的丢弃结果（前向、反向各算一次，不留到反向）
    let xd = branch_input(&x, mask);
    let mut down = par_zeros(rows * r);
    let mut h = par_copy(data(&out));
    // SAFETY：x′ 为 rows×I、Aᵀ 为 I×r、down 为 rows×r，Bᵀ 为 r×O、h 为 rows×O，都在各自的缓冲区之内
    unsafe {
        par_gemm(
            rows,
            I,
            r,
            F::one(),
            rm(xd.as_ptr(), I),
            tr(ad.as_ptr(), I),
            F::zero(),
            (down.as_mut_ptr(), r as isize, 1),
        );
        par_gemm(
            rows,
            r,
            O,
            s,
            rm(down.as_ptr(), r),
            tr(bd.as_ptr(), r),
            F::one(),
            (h.as_mut_ptr(), O as isize, 1),
        );
    }
    drop(xd);
    let h = x.device().tensor_from_vec(h, (batch, seq, Const::<O>));
    if T::OWNS_TAPE {
        let (h_ghost, out_ghost, a, b) = (h.ghost(), out.ghost(), a.clone(), b.clone());
        drop(out);
        tape.add_backward_op(move |grads| {
            // ∂out = g：取走 h 的梯度（下面还要可写地借 ∂A、∂B，不能一直借着 grads 里的 g）
            let g = take_grad(grads, &h_ghost)?;
            let (xd, ad, bd) = (branch_input(&x, mask), data(&a), data(&b));
            let mut gb = par_zeros(rows * r);
            grads.try_alloc_for(&a)?;
            grads.try_alloc_for(&b)?;
            // SAFETY：各矩阵都在各自的缓冲区之内（形状见模块说明），gb 已清零
            unsafe {
                // gB = s·g·B
                par_gemm(
                    rows,
                    O,
                    r,
                    s,
                    rm(g.as_ptr(), O),
                    rm(bd.as_ptr(), r),
                    F::zero(),
                    (gb.as_mut_ptr(), r as isize, 1),
                );
                // ∂B += s·gᵀ·down，按 ∂Bᵀ += s·downᵀ·g 算（C 按转置写进 ∂B）：
                // r 行 × O 列的结果让 gemm 沿 O 切块、整行读 g，比 O 行 × r 列快一倍
                let db = buf_mut::<F>(grads.get_mut(&b));
                par_gemm(
                    r,
                    rows,
                    O,
                    s,
                    tr(down.as_ptr(), r),
                    rm(g.as_ptr(), O),
                    F::one(),
                    (db.as_mut_ptr(), 1, r as isize),
                );
                // ∂A += gBᵀ·x
                let da = buf_mut::<F>(grads.get_mut(&a));
                par_gemm(
                    r,
                    rows,
                    I,
                    F::one(),
                    tr(gb.as_ptr(), r),
                    rm(xd.as_ptr(), I),
                    F::one(),
                    (da.as_mut_ptr(), I as isize, 1),
                );
            }
            drop(xd);
            // gB·A 写进 dx（β = 0）或累加进去（β = 1）
            let dx_gemm = |beta: F, dx: &mut [F]| {
                // SAFETY：gB 为 rows×r、A 为 r×I、dx 为 rows×I，都在各自的缓冲区之内
                unsafe {
                    par_gemm(
                        rows,
                        r,
                        I,
                        F::one(),
                        rm(gb.as_ptr(), r),
                        rm(ad.as_ptr(), I),
                        beta,
                        (dx.as_mut_ptr(), I as isize, 1),
                    )
                }
            };
            if let Some((seed, params)) = mask {
                // ∂x′ = gB·A（临时），∂x += mask ⊙ ∂x′/(1 − p)：与单独的 dropout 算子的反向同一段代码
                let mut dxd = par_zeros(rows * I);
                dx_gemm(F::zero(), &mut dxd);
                grads.try_alloc_for(&x)?;
                dropout_back_add(&dxd, buf_mut::<F>(grads.get_mut(&x)), seed, params);
            } else if grads.contains(&x) {
                // ∂x (+)= gB·A：x 已有梯度时直接累加进去，否则写进新的缓冲区
                dx_gemm(F::one(), buf_mut::<F>(grads.get_mut(&x)));
            } else {
                let mut dx = par_zeros(rows * I);
                dx_gemm(F::zero(), &mut dx);
                insert_or_add_grad(grads, &x, dx);
            }
            insert_or_add_grad(grads, &out_ghost, g);
            Ok(())
        });
    }
    h.put_tape(tape)
}

/// 分支的输入 x′ = dropout(x)：有掩码（种子, 阈值与放大倍数）时算出一份临时的副本，否则直接借用 x。
fn branch_input<S: Shape, F: FastMath + Dtype>(
    x: &Tensor<S, F, Cpu>,
    mask: Option<(u64, (u32, F))>,
) -> std::borrow::Cow<'_, [F]> {
    match mask {
        Some((seed, params)) => std::borrow::Cow::Owned(dropout_new(data(x), seed, params)),
        None => std::borrow::Cow::Borrowed(data(x)),
    }
}
