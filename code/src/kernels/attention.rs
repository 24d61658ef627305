//! CPU 上融合的多头注意力（附录 B）：拆头、QKᵀ/√d_k、带掩码的 softmax、乘 V、拼回，一个算子。
//!
//! 组合写法（1.2 节的 [`attention_heads_composite`]）先 reshape + permute 成 `(batch, heads, seq, d_k)` 的视图，
//! 再由 dfdx 的批量矩阵乘法逐个头相乘，乘 1/√d_k 另走一遍内存，最后 permute + reshape 拼回时复制一份。
//! 这里不做任何重排：第 h 个头就是 `(batch, seq, M)` 里第 h·d_k 列起的 d_k 列（行步长 M），
//! gemm 按步长直接读写它；每个 (样本, 头) 是一个独立的任务，交给 rayon。
//!
//! 前向，对每个 (b, h)：S = (1/√d_k)·Q Kᵀ，P = softmax(S + 掩码)，O = P V（写进输出的第 h 个头的列）。
//! 反向，上游梯度 G（同样按头看）：dV = Pᵀ G，dP = G Vᵀ，dS = P ⊙ (dP − rowsum(dP ⊙ P))，
//! dQ = (1/√d_k)·dS K，dK = (1/√d_k)·dSᵀ Q。P 留给反向用（也作为注意力权重返回，供画图）。
//!
//! 训练时对 P 做 dropout（BERT 的 `attention_probs_dropout_prob`）：O = P′V，P′ = P ⊙ 掩码 / (1 − p)。
//! 掩码由（种子, P 里的下标）的哈希决定（与 [`super::cpu::dropout`] 相同），反向时重新算出 P′ 与掩码，不必存它们：
//! dV = P′ᵀ G，dP = (G Vᵀ) ⊙ 掩码 / (1 − p)，之后同上。
//!
//! [`attention_heads_composite`]: super::composite::attention_heads_composite

use dfdx::prelude::*;
use rayon::prelude::*;

use super::cpu::{
    buf, data, dropout_back_into, dropout_into, dropout_params, insert_or_add_grad, is_contiguous,
    par_zeros, softmax_back_block_mv, softmax_block_mv, Gemm,
};
use super::math::FastMath;
use super::Shape4;
use crate::basics::shapes::Hidden;

/// 一个 (b, h) 任务里三个矩阵的位置：`(batch, seq, M)` 里第 b 个样本、第 h 个头的 seq×d_k 子矩阵的起点。
#[derive(Clone, Copy)]
struct Heads {
    batch: usize,
    heads: usize,
    seq_q: usize,
    seq_k: usize,
    d_k: usize,
    m: usize,
}

impl Heads {
    /// 任务 t = b·heads + h 在查询一侧 `(batch, seq_q, M)` 里的偏移。
    fn q_offset(&self, t: usize) -> usize {
        let (b, h) = (t / self.heads, t % self.heads);
        b * self.seq_q * self.m + h * self.d_k
    }
    /// 同上，键、值一侧 `(batch, seq_k, M)`。
    fn k_offset(&self, t: usize) -> usize {
        let (b, h) = (t / self.heads, t % self.heads);
        b * self.seq_k * self.m + h * self.d_k
    }
    /// 任务数 batch·heads。
    fn tasks(&self) -> usize {
        self.batch * self.heads
    }
}

/// 单线程的 C ← α·A·B（β = 0，不读 C）。`a`、`b`、`c` 是（起点, 行步长, 列步长），步长以元素计。
///
/// # Safety
/// 三个矩阵都在各自的缓冲区之内，C 不与 A、B 重叠，且不与别的线程同时写的区域重叠。
#[allow(clippy::too_many_arguments)]
unsafe fn mm<F: Gemm + FastMath>(
    m: usize,
    k: usize,
    n: usize,
    alpha: F,
    a: (*const F, usize, usize),
    b: (*const F, usize, usize),
    c: (*mut F, usize, usize),
) {
    let s = |x: usize| x as isize;
    F::gemm(
        m,
        k,
        n,
        alpha,
        (a.0, s(a.1), s(a.2)),
        (b.0, s(b.1), s(b.2)),
        F::zero(),
        (c.0, s(c.1), s(c.2)),
    )
}

/// 裸指针不是 Send：按地址在线程之间传递（每个任务只写自己那一块）。
#[derive(Clone, Copy)]
struct Addr(usize);

impl Addr {
    fn of<F>(p: *const F) -> Self {
        Addr(p as usize)
    }
    fn at<F>(self, offset: usize) -> *mut F {
        (self.0 as *mut F).wrapping_add(offset)
    }
}

/// 对注意力权重的 dropout：（种子, 阈值与放大倍数）。
type AttentionDropout<F> = Option<(u64, (u32, F))>;

/// 多头的缩放点积注意力，`q` 为 `(batch, seq_q, M)`，`k`、`v` 为 `(batch, seq_k, M)`，按头切成 `heads` 份；
/// `mask` 是加性的偏置 `(batch, seq_k)`；`dropout` > 0 时对注意力权重做 dropout。返回拼回的输出 `(batch, seq_q, M)` 与注意力权重
/// `(batch, heads, seq_q, seq_k)`（dropout 之前的，不带 tape）。
pub fn attention<const M: usize, F, T>(
    q: Hidden<M, F, Cpu, T>,
    k: Hidden<M, F, Cpu, T>,
    v: Hidden<M, F, Cpu, T>,
    heads: usize,
    mask: Option<&Tensor<(usize, usize), F, Cpu>>,
    dropout: f64,
) -> (Hidden<M, F, Cpu, T>, Tensor<Shape4, F, Cpu>)
where
    F: FastMath + Dtype + Gemm,
    Cpu: super::Kernels<F>,
    T: Tape<F, Cpu> + Merge<T>,
{
    let contiguous = is_contiguous(&q) && is_contiguous(&k) && is_contiguous(&v);
    if !contiguous || mask.is_some_and(|m| !is_contiguous(m)) {
        // 组合写法，对权重的 dropout 仍用 CPU 的融合 dropout（同样由钥匙决定掩码）
        let drop = |w: Tensor<Shape4, F, Cpu, T>| super::cpu::dropout(w, dropout);
        return super::composite::attention_heads_composite(q, k, v, heads, mask, drop);
    }
    assert!(heads > 0 && M % heads == 0, "头数 {heads} 应整除 {M}");
    let ((batch, seq_q, _), (batch_k, seq_k, _)) = (*q.shape(), *k.shape());
    assert_eq!(batch, batch_k, "q 与 k 的批大小应相同");
    assert_eq!(k.shape(), v.shape(), "k 与 v 的形状应相同");
    if let Some(m) = mask {
        assert_eq!(*m.shape(), (batch, seq_k), "掩码的形状应为 (batch, seq_k)");
    }
    let hd = Heads {
        batch,
        heads,
        seq_q,
        seq_k,
        d_k: M / heads,
        m: M,
    };
    assert!(
        (0.0..1.0).contains(&dropout),
        "dropout 的概率应在 [0, 1) 之内：{dropout}"
    );
    let scale = F::c(1.0 / (hd.d_k as f64).sqrt());
    // 与 cpu::dropout 一样取这一次的种子（训练循环给了钥匙时由（种子, 步数, 位置）决定）
    let drop: AttentionDropout<F> = (dropout > 0.0).then(|| {
        let seed = super::step_key::next_seed(|| q.device().random_u64());
        (seed, dropout_params::<F>(dropout))
    });
    let (q, tq) = q.split_tape();
    let (k, tk) = k.split_tape();
    let (v, tv) = v.split_tape();
    let mut tape = tq.merge(tk).merge(tv);
    let bias: &[F] = mask.map_or(&[], |m| data(m));
    let (qa, ka, va) = (
        Addr::of(data(&q).as_ptr()),
        Addr::of(data(&k).as_ptr()),
        Addr::of(data(&v).as_ptr()),
    );
    let pp = seq_q * seq_k;
    let mut out = par_zeros::<F>(batch * seq_q * M);
    let mut p = par_zeros::<F>(hd.tasks() * pp);
    let (oa, pa) = (Addr::of(out.as_mut_ptr()), Addr::of(p.as_mut_ptr()));
    (0..hd.tasks()).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(scores, dropped): &mut (Vec<F>, Vec<F>), t| {
            scores.resize(pp, F::zero());
            let (qo, ko) = (hd.q_offset(t), hd.k_offset(t));
            // SAFETY：Q、K、V 的子矩阵在各自的缓冲区之内；P 的第 t 块与输出的第 (b, h) 块只由这个任务写
            unsafe {
                // S = (1/√d_k)·Q Kᵀ（Kᵀ：行步长 1、列步长 M）
                mm(
                    seq_q,
                    hd.d_k,
                    seq_k,
                    scale,
                    (qa.at(qo), M, 1),
                    (ka.at(ko), 1, M),
                    (scores.as_mut_ptr(), seq_k, 1),
                );
                let pt = std::slice::from_raw_parts_mut(pa.at::<F>(t * pp), pp);
                // 第 b 个样本的掩码行（没有掩码时为空）
                let b = if bias.is_empty() {
                    bias
                } else {
                    &bias[t / heads * seq_k..][..seq_k]
                };
                softmax_block_mv(scores, pt, seq_k, 0, b, seq_q);
                // 训练时 P′ = dropout(P)（P 本身留给反向与画图）
                let pv: &[F] = match drop {
                    Some((seed, params)) => {
                        dropped.resize(pp, F::zero());
                        dropout_into(pt, dropped, t * pp, seed, params);
                        dropped
                    }
                    None => pt,
                };
                // O = P′ V，写进输出里第 h 个头的列
                mm(
                    seq_q,
                    seq_k,
                    hd.d_k,
                    F::one(),
                    (pv.as_ptr(), seq_k, 1),
                    (va.at(ko), M, 1),
                    (oa.at(qo), M, 1),
                );
            }
        },
    );
    let dev = q.device().clone();
    let out = dev.tensor_from_vec(out, (batch, seq_q, Const::<M>));
    let weights = dev.tensor_from_vec(p, (batch, heads, seq_q, seq_k));
    if T::OWNS_TAPE {
        let (out_ghost, weights) = (out.ghost(), weights.clone());
        tape.add_backward_op(move |grads| {
            grads.try_alloc_for(&out_ghost)?;
            let g = buf(grads.get_ref(&out_ghost));
            let [dq, dk, dv] = attention_backward(hd, scale, drop, g, &q, &k, &v, data(&weights));
            insert_or_add_grad(grads, &q, dq);
            insert_or_add_grad(grads, &k, dk);
            insert_or_add_grad(grads, &v, dv);
            Ok(())
        });
    }
    (out.put_tape(tape), weights)
}

/// 反向：由上游梯度 `g` 与前向留下的 P 算出 dQ、dK、dV（新的缓冲区）；有 dropout 时重新算出 P′ 与掩码。
#[allow(clippy::too_many_arguments)]
fn attention_backward<const M: usize, F>(
    hd: Heads,
    scale: F,
    drop: AttentionDropout<F>,
    g: &[F],
    q: &Tensor<(usize, usize, Const<M>), F, Cpu>,
    k: &Tensor<(usize, usize, Const<M>), F, Cpu>,
    v: &Tensor<(usize, usize, Const<M>), F, Cpu>,
    p: &[F],
) -> [Vec<F>; 3]
where
    F: FastMath + Dtype + Gemm,
{
    let (seq_q, seq_k, d_k) = (hd.seq_q, hd.seq_k, hd.d_k);
    let pp = seq_q * seq_k;
    let (mut dq, mut dk, mut dv) = (
        par_zeros::<F>(q.len()),
        par_zeros::<F>(k.len()),
        par_zeros::<F>(v.len()),
    );
    let (ga, qa, ka, va) = (
        Addr::of(g.as_ptr()),
        Addr::of(data(q).as_ptr()),
        Addr::of(data(k).as_ptr()),
        Addr::of(data(v).as_ptr()),
    );
    let (dqa, dka, dva) = (
        Addr::of(dq.as_mut_ptr()),
        Addr::of(dk.as_mut_ptr()),
        Addr::of(dv.as_mut_ptr()),
    );
    (0..hd.tasks()).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new(), Vec::new()),
        |(dp, ds, dropped): &mut (Vec<F>, Vec<F>, Vec<F>), t| {
            dp.resize(pp, F::zero());
            ds.clear();
            ds.resize(pp, F::zero());
            let (qo, ko) = (hd.q_offset(t), hd.k_offset(t));
            let pt = &p[t * pp..][..pp];
            // 前向乘 V 的是 P′ = dropout(P)：重新算出来
            let pv: &[F] = match drop {
                Some((seed, params)) => {
                    dropped.resize(pp, F::zero());
                    dropout_into(pt, dropped, t * pp, seed, params);
                    dropped
                }
                None => pt,
            };
            // SAFETY：读的子矩阵都在各自的缓冲区之内；dQ、dK、dV 的第 (b, h) 块只由这个任务写
            unsafe {
                // dV = P′ᵀ G（P′ᵀ：行步长 1、列步长 seq_k）
                mm(
                    seq_k,
                    seq_q,
                    d_k,
                    F::one(),
                    (pv.as_ptr(), 1, seq_k),
                    (ga.at(qo), M, 1),
                    (dva.at(ko), M, 1),
                );
                // dP = G Vᵀ
                mm(
                    seq_q,
                    d_k,
                    seq_k,
                    F::one(),
                    (ga.at(qo), M, 1),
                    (va.at(ko), 1, M),
                    (dp.as_mut_ptr(), seq_k, 1),
                );
                // 有 dropout 时 dP = dP′ ⊙ 掩码 / (1 − p)（借 dropped 的缓冲区）
                if let Some((seed, params)) = drop {
                    dropped.iter_mut().for_each(|x| *x = F::zero());
                    dropout_back_into(dp, dropped, t * pp, seed, params);
                    std::mem::swap(dp, dropped);
                }
                // dS = P ⊙ (dP − rowsum(dP ⊙ P))（softmax 的反向，累加进清零的 ds）
                softmax_back_block_mv(pt, dp, ds, seq_k);
                // dQ = (1/√d_k)·dS K，dK = (1/√d_k)·dSᵀ Q
                mm(
                    seq_q,
                    seq_k,
                    d_k,
                    scale,
                    (ds.as_ptr(), seq_k, 1),
                    (ka.at(ko), M, 1),
                    (dqa.at(qo), M, 1),
                );
                mm(
                    seq_k,
                    seq_q,
                    d_k,
                    scale,
                    (ds.as_ptr(), 1, seq_k),
                    (qa.at(qo), M, 1),
                    (dka.at(ko), M, 1),
                );
            }
        },
    );
    [dq, dk, dv]
}
