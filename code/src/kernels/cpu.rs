//! CPU 上的融合算子：一次遍历完成前向，反向直接读写梯度缓冲区；按行分块交给 rayon 的线程池，
//! 块内的循环由 [`multiversion!`] 按 CPU 的指令集（AVX-512、AVX2+FMA 或 SSE2）向量化。
//!
//! 每个算子只处理连续存放的输入（dfdx 里新算出的张量都是连续的）；遇到广播、转置后的视图，
//! 退回 [`super`] 里的组合算子，结果相同，只是慢。

use dfdx::dtypes::Unit;
use dfdx::prelude::*;
use rayon::prelude::*;

use super::math::{multiversion, FastMath, MulAdd};

use super::{LazyWeight, Shape4};
use std::borrow::Cow;
use std::sync::Arc;

/// 让调用线程（程序的主线程）成为 rayon 全局线程池的第 0 号线程，池里另有“核数 − 1”个线程。
///
/// 默认的池另开“核数”个线程，主线程每发起一个并行算子就把任务交出去、自己睡下，算完再被叫醒：
/// 训练一步有几千个这样的算子，2 个核上 3 个线程轮流上下文切换，占了 bert-base 一步的一成（附录 B）。
/// 加入线程池之后，主线程自己算一半，另一个线程偷走另一半，与 PyTorch（OpenMP）的做法相同。
/// 在 `main` 与基准测试的开头调用一次；全局池已经建好时（之前用过 rayon）返回 `false`，什么也不改。
pub fn join_thread_pool() -> bool {
    rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build_global()
        .is_ok()
}

/// 每个并行块大约处理这么多个元素：块太小，线程调度的开销占比大；太大，两个核分不匀。
pub(super) const BLOCK_ELEMS: usize = 16 * 1024;

/// 每块的行数（至少 1 行）。
fn rows_per_block(row_len: usize) -> usize {
    (BLOCK_ELEMS / row_len.max(1)).max(1)
}

/// 张量是否按行主序连续存放（没有广播、没有转置）。
pub fn is_contiguous<S: Shape, F: Dtype, T>(t: &Tensor<S, F, Cpu, T>) -> bool {
    Tensorlike::strides(t) == t.shape().strides()
}

/// 张量底层的缓冲区（不复制）。调用前要确认它是连续的。
pub(super) fn data<S: Shape, F: Dtype, T>(t: &Tensor<S, F, Cpu, T>) -> &[F] {
    &Tensorlike::data(t).expect("Tensor 总有数据")[..]
}

/// 张量的数据：连续时直接借用底层缓冲区，否则按行优先复制一份。
pub(super) fn host_data<S: Shape, F: Dtype>(t: &Tensor<S, F, Cpu>) -> std::borrow::Cow<'_, [F]> {
    if is_contiguous(t) {
        std::borrow::Cow::Borrowed(data(t))
    } else {
        std::borrow::Cow::Owned(t.as_vec())
    }
}

/// 参数的梯度：借用梯度缓冲区（与参数同样的连续布局）；参数本身不连续时复制。
pub(super) fn host_grad<'a, S: Shape, F: Dtype>(
    grads: &'a Gradients<F, Cpu>,
    t: &Tensor<S, F, Cpu>,
) -> std::borrow::Cow<'a, [F]>
where
    Cpu: Storage<F>,
{
    match grads.get_ref_checked(t) {
        Some(g) if is_contiguous(t) => std::borrow::Cow::Borrowed(buf(g)),
        _ => std::borrow::Cow::Owned(grads.get(t).as_vec()),
    }
}

/// 设备缓冲区（dfdx 的 `CachableVec`）看成切片。写成单独的函数，是因为在带 `Cpu: Device<F>` 约束的函数里，
/// 编译器不会把 `<Cpu as Storage<F>>::Vec` 展开成具体类型；这里没有那个约束，就能展开。
pub(super) fn buf<F: Dtype>(v: &<Cpu as Storage<F>>::Vec) -> &[F] {
    v
}

/// 同 [`buf`]，可写。
pub(super) fn buf_mut<F: Dtype>(v: &mut <Cpu as Storage<F>>::Vec) -> &mut [F] {
    v
}

/// 归约的路数：16 个 f32 正好是一条 AVX-512 寄存器（AVX2 上是两条）。
const LANES: usize = 16;

/// 对 K 个等长切片逐位置取值、映射、归约：`op(… op(op(init, f(r₀[0], r₁[0], …)), f(r₀[1], …)) …)`。
///
/// 浮点的加法与比较不满足结合律（NaN、舍入），编译器不会自己改变归约的顺序，一条依赖链也就无法向量化。
/// 这里显式地拆成 [`LANES`] 条独立的链、按定长数组处理（没有逐元素的边界检查），编译器才能把每一步变成一条向量指令。
#[inline(always)]
fn reduce<F: FastMath, const K: usize>(
    rows: [&[F]; K],
    init: F,
    f: impl Fn([F; K]) -> F,
    op: impl Fn(F, F) -> F,
) -> F {
    let n = rows[0].len();
    debug_assert!(rows.iter().all(|r| r.len() == n));
    let mut acc = [init; LANES];
    let full = n / LANES * LANES;
    let mut i = 0;
    while i < full {
        let c: [&[F; LANES]; K] = rows.map(|r| r[i..i + LANES].try_into().expect("定长"));
        for (l, a) in acc.iter_mut().enumerate() {
            *a = op(*a, f(c.map(|r| r[l])));
        }
        i += LANES;
    }
    let mut s = acc.into_iter().fold(init, &op);
    for j in full..n {
        s = op(s, f(rows.map(|r| r[j])));
    }
    s
}

/// Σ f(…)。
#[inline(always)]
fn sum<F: FastMath, const K: usize>(rows: [&[F]; K], f: impl Fn([F; K]) -> F) -> F {
    reduce(rows, F::zero(), f, |a, b| a + b)
}

/// max f(…)（空切片给 −∞）。
#[inline(always)]
fn max<F: FastMath, const K: usize>(rows: [&[F]; K], f: impl Fn([F; K]) -> F) -> F {
    reduce(rows, F::neg_infinity(), f, |a, b| if b > a { b } else { a })
}

/// 新的输出缓冲区（长度 `len`），按每块 `block` 个元素并行地由 `kernel(块号, 这一块)` 写满。
///
/// 不用 `vec![0; len]` 分配：复用的内存上那是调用线程里一次单线程的 memset，大张量上与算子本身一样慢。
/// 而是 `Vec::with_capacity(len)`，每块先由处理它的线程清零（这一块马上就要被写，还在缓存里），再交给内核，
/// 最后 `set_len(len)`。
pub(super) fn par_new<F: Unit>(
    len: usize,
    block: usize,
    kernel: impl Fn(usize, &mut [F]) + Sync,
) -> Vec<F> {
    par_new_map(len, block, kernel).0
}

/// 同 [`par_new`]，另外按块的顺序收集每块内核的返回值（LayerNorm 用它带回每行的均值与 1/σ）。
fn par_new_map<F: Unit, R: Send>(
    len: usize,
    block: usize,
    kernel: impl Fn(usize, &mut [F]) -> R + Sync,
) -> (Vec<F>, Vec<R>) {
    let mut out = Vec::with_capacity(len);
    let results = out.spare_capacity_mut()[..len]
        .par_chunks_mut(block)
        .enumerate()
        .map(|(i, o)| kernel(i, zeroed(o)))
        .collect();
    // SAFETY：并行循环按块覆盖了 [0, len)，每块都由 `zeroed` 初始化了
    unsafe { out.set_len(len) };
    (out, results)
}

/// 同 [`par_new`]，但不先清零：`kernel(块号, 这一块)` 要用 `MaybeUninit::write` 写满这一块。
/// 只写一遍的内核（GELU、dropout 的前向、加法、复制）用它，省掉一遍写。
///
/// # Safety
/// `kernel` 必须写过交给它的每一块里的每一个元素，否则返回的 `Vec` 含未初始化的值。
pub(super) unsafe fn par_new_uninit<F: Unit>(
    len: usize,
    block: usize,
    kernel: impl Fn(usize, &mut [std::mem::MaybeUninit<F>]) + Sync,
) -> Vec<F> {
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(block)
        .enumerate()
        .for_each(|(i, o)| kernel(i, o));
    // SAFETY：并行循环按块覆盖了 [0, len)，调用者保证每块都被写满
    unsafe { out.set_len(len) };
    out
}

/// 把未初始化的一块清零，交出 `&mut [F]`。
fn zeroed<F: Unit>(block: &mut [std::mem::MaybeUninit<F>]) -> &mut [F] {
    for v in block.iter_mut() {
        v.write(F::default()); // 数值类型的默认值是 0
    }
    // SAFETY：上面写过了这一块的每一个元素；MaybeUninit<F> 与 F 的布局相同
    unsafe { &mut *(block as *mut [std::mem::MaybeUninit<F>] as *mut [F]) }
}

/// 反向里给 `t` 的梯度加上一项：`kernel(块号, 上游梯度的这一块, t 的梯度的这一块)` 按块做 `+=`，
/// 每块的返回值按块的顺序收集起来。`upstream` 是算子输出的梯度。
///
/// `t` 还没有梯度时（中间张量大多只被一个算子用到），不用 dfdx 的 `try_alloc_for`——它在一个线程里把整块清零——
/// 而是像前向的输出一样由 [`par_new_map`] 新建，再交给 `Gradients`（补丁里的 `try_insert_cpu`）；已经有了时原地累加。
fn add_to_grad<S: Shape, O: Shape, F: Dtype, R: Send>(
    grads: &mut Gradients<F, Cpu>,
    t: &impl Tensorlike<S, F, Cpu>,
    upstream: &impl Tensorlike<O, F, Cpu>,
    block: usize,
    kernel: impl Fn(usize, &[F], &mut [F]) -> R + Sync,
) -> Result<Vec<R>, CpuError> {
    grads.try_alloc_for(upstream)?;
    if grads.contains(t) {
        let (dx, g) = grads.mut_and_ref(t, upstream);
        let (dx, g) = (buf_mut(dx), buf(g));
        return Ok(dx
            .par_chunks_mut(block)
            .enumerate()
            .map(|(i, d)| kernel(i, block_of(g, i, block, d.len()), d))
            .collect());
    }
    let g = buf(grads.get_ref(upstream));
    let (dx, results) = par_new_map(t.len(), block, |i, d| {
        kernel(i, block_of(g, i, block, d.len()), d)
    });
    grads
        .try_insert_cpu(t, dx)
        .unwrap_or_else(|_| unreachable!("刚检查过没有梯度"));
    Ok(results)
}

/// 同 [`add_to_grad`]，但 `t` 还没有梯度时不先清零：由 `write(块号, 上游梯度的这一块, 未初始化的一块)` 直接写满新的缓冲区
/// （只给逐元素、一次写完的反向用，例如 GELU），已经有了时由 `add` 原地累加。
///
/// # Safety
/// `write` 必须写过交给它的每一块里的每一个元素。
unsafe fn add_or_write_grad<S: Shape, O: Shape, F: Dtype>(
    grads: &mut Gradients<F, Cpu>,
    t: &impl Tensorlike<S, F, Cpu>,
    upstream: &impl Tensorlike<O, F, Cpu>,
    block: usize,
    add: impl Fn(usize, &[F], &mut [F]) + Sync,
    write: impl Fn(usize, &[F], &mut [std::mem::MaybeUninit<F>]) + Sync,
) -> Result<(), CpuError> {
    if grads.contains(t) {
        return add_to_grad(grads, t, upstream, block, add).map(|_| ());
    }
    grads.try_alloc_for(upstream)?;
    let g = buf(grads.get_ref(upstream));
    // SAFETY：调用者保证 write 写满每一块
    let dx = unsafe {
        par_new_uninit(t.len(), block, |i, d| {
            write(i, block_of(g, i, block, d.len()), d)
        })
    };
    grads
        .try_insert_cpu(t, dx)
        .unwrap_or_else(|_| unreachable!("刚检查过没有梯度"));
    Ok(())
}

/// 反向里把算好的一整块梯度 `d` 交给 `t`：`t` 还没有梯度时直接放进去（不复制），已经有了时并行地加上去。
pub(super) fn insert_or_add_grad<S: Shape, F: Dtype>(
    grads: &mut Gradients<F, Cpu>,
    t: &impl Tensorlike<S, F, Cpu>,
    d: Vec<F>,
) {
    if let Err(d) = grads.try_insert_cpu(t, d) {
        accumulate_grad(grads, t, &d);
    }
}

/// `t` 已有的梯度并行地加上 `d`。
fn accumulate_grad<S: Shape, F: Dtype>(
    grads: &mut Gradients<F, Cpu>,
    t: &impl Tensorlike<S, F, Cpu>,
    d: &[F],
) {
    buf_mut::<F>(grads.get_mut(t))
        .par_chunks_mut(BLOCK_ELEMS)
        .zip(d.par_chunks(BLOCK_ELEMS))
        .for_each(|(g, d)| {
            for (g, &v) in g.iter_mut().zip(d) {
                *g += v;
            }
        });
}

/// 全 0 的 `len` 个元素，并行清零（给 β = 0 的 gemm 作输出：见 [`Gemm::gemm`]）。
pub(super) fn par_zeros<F: Unit>(len: usize) -> Vec<F> {
    par_new(len, BLOCK_ELEMS, |_, _| {})
}

/// 行优先的 `x` 并行复制一份。
pub(super) fn par_copy<F: Unit>(x: &[F]) -> Vec<F> {
    // SAFETY：每块与 x 的对应一块等长，逐个写满
    unsafe {
        par_new_uninit(x.len(), BLOCK_ELEMS, |i, o| {
            let xb = block_of(x, i, BLOCK_ELEMS, o.len());
            for (o, &v) in o.iter_mut().zip(xb) {
                o.write(v);
            }
        })
    }
}

/// 反向里算子输出 `out` 的梯度，交出所有权：能取走就取走（见补丁里的 `take_non_leaf`），否则复制一份。
pub(super) fn take_grad<S: Shape, F: Dtype>(
    grads: &mut Gradients<F, Cpu>,
    out: &impl Tensorlike<S, F, Cpu>,
) -> Result<Vec<F>, CpuError> {
    grads.try_alloc_for(out)?;
    Ok(match grads.take_non_leaf(out) {
        Some(g) => g,
        None => par_copy(buf(grads.get_ref(out))),
    })
}

/// 与 `par_new` 的第 `i` 块对应的输入：`x[i·block ..]` 的前 `len` 个元素。
pub(super) fn block_of<F>(x: &[F], i: usize, block: usize, len: usize) -> &[F] {
    &x[i * block..][..len]
}

// ---------------------------------------------------------------- softmax

/// 一块行的 softmax(x + bias)：`bias` 为空表示没有掩码，否则第 g 行用 `bias[(g / rows_per_bias) * n..][..n]`。
#[inline(always)]
fn softmax_block<F: FastMath, M: MulAdd>(
    x: &[F],
    out: &mut [F],
    n: usize,
    first_row: usize,
    bias: &[F],
    rows_per_bias: usize,
) {
    for (r, (xr, yr)) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)).enumerate() {
        // 三遍，每遍是一个简单的循环（编译器才会向量化）：最大值、e^{x + b − max}、乘 1/Σ
        if bias.is_empty() {
            let m = max([xr], |[v]| v);
            for (y, &v) in yr.iter_mut().zip(xr) {
                *y = (v - m).exp_fast::<M>();
            }
        } else {
            let b = &bias[(first_row + r) / rows_per_bias * n..][..n];
            let m = max([xr, b], |[v, bv]| v + bv);
            for ((y, &v), &bv) in yr.iter_mut().zip(xr).zip(b) {
                *y = (v + bv - m).exp_fast::<M>();
            }
        }
        let inv = F::one() / sum([&*yr], |[v]| v);
        for y in yr.iter_mut() {
            *y = *y * inv;
        }
    }
}

multiversion!(pub(super) fn softmax_block_mv<F>(x: &[F], out: &mut [F], n: usize, first_row: usize, bias: &[F], rows_per_bias: usize) => softmax_block);

/// 一块行的 softmax 反向：dx += y ⊙ (g − Σⱼ gⱼyⱼ)。
#[inline(always)]
fn softmax_back_block<F: FastMath, M: MulAdd>(y: &[F], g: &[F], dx: &mut [F], n: usize) {
    for ((yr, gr), dr) in y
        .chunks_exact(n)
        .zip(g.chunks_exact(n))
        .zip(dx.chunks_exact_mut(n))
    {
        let dot = sum([gr, yr], |[g, y]| g * y);
        for ((d, &y), &g) in dr.iter_mut().zip(yr).zip(gr) {
            *d = M::mul_add(y, g - dot, *d);
        }
    }
}

multiversion!(pub(super) fn softmax_back_block_mv<F>(y: &[F], g: &[F], dx: &mut [F], n: usize) => softmax_back_block);

/// 最后一维上的 softmax(x + 掩码)，掩码 `(batch, seq_k)` 沿头与查询两维广播。
pub fn masked_softmax<F, T>(
    x: Tensor<Shape4, F, Cpu, T>,
    bias: Option<&Tensor<(usize, usize), F, Cpu>>,
) -> Tensor<Shape4, F, Cpu, T>
where
    F: FastMath + Dtype,
    Cpu: Device<F>,
    T: Tape<F, Cpu>,
{
    if !is_contiguous(&x) || bias.is_some_and(|b| !is_contiguous(b)) {
        return super::composite::masked_softmax_composite(x, bias);
    }
    let shape = *x.shape();
    let (batch, heads, q, n) = shape;
    if let Some(b) = bias {
        assert_eq!(*b.shape(), (batch, n), "掩码的形状应为 (batch, seq_k)");
    }
    let (x, mut tape) = x.split_tape();
    let bias_data: &[F] = bias.map_or(&[], |b| data(b));
    let xd = data(&x);
    let rpb = rows_per_block(n);
    let out = par_new(xd.len(), rpb * n, |i, o| {
        let xb = block_of(xd, i, rpb * n, o.len());
        softmax_block_mv(xb, o, n, i * rpb, bias_data, heads * q)
    });
    let out = x.device().tensor_from_vec(out, shape);
    if T::OWNS_TAPE {
        let x_ghost = x.ghost();
        let y = out.clone();
        tape.add_backward_op(move |grads| {
            let yd = data(&y);
            add_to_grad(grads, &x_ghost, &y, rpb * n, |i, g, d| {
                softmax_back_block_mv(block_of(yd, i, rpb * n, d.len()), g, d, n)
            })?;
            Ok(())
        });
    }
    out.put_tape(tape)
}

// ---------------------------------------------------------------- GELU

#[inline(always)]
fn gelu_block<F: FastMath, M: MulAdd>(x: &[F], out: &mut [std::mem::MaybeUninit<F>]) {
    for (y, &v) in out.iter_mut().zip(x) {
        y.write(v * v.normal_cdf::<M>());
    }
}

multiversion!(fn gelu_block_mv<F>(x: &[F], out: &mut [std::mem::MaybeUninit<F>]) => gelu_block);

/// dx += g·(Φ(x) + x·φ(x))。
#[inline(always)]
fn gelu_back_block<F: FastMath, M: MulAdd>(x: &[F], g: &[F], dx: &mut [F]) {
    for ((d, &v), &gv) in dx.iter_mut().zip(x).zip(g) {
        *d = M::mul_add(gv, v.gelu_slope::<M>(), *d);
    }
}

/// 同 [`gelu_back_block`]，x 还没有梯度时用：dx = g·(Φ(x) + x·φ(x))，写进未初始化的新缓冲区。
#[inline(always)]
fn gelu_grad_block<F: FastMath, M: MulAdd>(x: &[F], g: &[F], dx: &mut [std::mem::MaybeUninit<F>]) {
    for ((d, &v), &gv) in dx.iter_mut().zip(x).zip(g) {
        d.write(gv * v.gelu_slope::<M>());
    }
}

multiversion!(fn gelu_grad_block_mv<F>(x: &[F], g: &[F], dx: &mut [std::mem::MaybeUninit<F>]) => gelu_grad_block);

multiversion!(fn gelu_back_block_mv<F>(x: &[F], g: &[F], dx: &mut [F]) => gelu_back_block);

/// 精确 GELU：x·Φ(x)。
pub fn gelu<S, F, T>(x: Tensor<S, F, Cpu, T>) -> Tensor<S, F, Cpu, T>
where
    S: Shape,
    F: FastMath + Dtype,
    Cpu: Device<F>,
    T: Tape<F, Cpu>,
{
    if !is_contiguous(&x) {
        return super::composite::gelu(x);
    }
    let shape = *x.shape();
    let (x, mut tape) = x.split_tape();
    let xd = data(&x);
    // SAFETY：gelu_block 写满与输入等长的每一块
    let out = unsafe {
        par_new_uninit(xd.len(), BLOCK_ELEMS, |i, o| {
            gelu_block_mv(block_of(xd, i, BLOCK_ELEMS, o.len()), o)
        })
    };
    let out = x.device().tensor_from_vec(out, shape);
    if T::OWNS_TAPE {
        let out_ghost = out.ghost();
        tape.add_backward_op(move |grads| {
            let xd = data(&x);
            // x 还没有梯度时（FFN 里通常如此）直接写进新的缓冲区，不先清零
            // SAFETY：gelu_grad_block 写满与输入等长的每一块
            unsafe {
                add_or_write_grad(
                    grads,
                    &x,
                    &out_ghost,
                    BLOCK_ELEMS,
                    |i, g, d| gelu_back_block_mv(block_of(xd, i, BLOCK_ELEMS, d.len()), g, d),
                    |i, g, d| gelu_grad_block_mv(block_of(xd, i, BLOCK_ELEMS, d.len()), g, d),
                )?;
            }
            Ok(())
        });
    }
    out.put_tape(tape)
}

// ---------------------------------------------------------------- add

/// 逐元素的 x + y（残差连接）。
///
/// dfdx 的加法在一个线程里逐个元素地走 `NdIndex`，反向先把两块全 0 的梯度清零再累加；这里前向分块并行，
/// 反向把上游梯度本身交给 x（取不走时复制），给 y 复制一份——x、y 已经有梯度时才原地累加。
pub fn add<S, F, T>(x: Tensor<S, F, Cpu, T>, y: Tensor<S, F, Cpu, T>) -> Tensor<S, F, Cpu, T>
where
    S: Shape,
    F: FastMath + Dtype,
    Cpu: Device<F>,
    T: Tape<F, Cpu> + Merge<T>,
{
    if !is_contiguous(&x) || !is_contiguous(&y) || x.shape() != y.shape() {
        return x + y;
    }
    let shape = *x.shape();
    let (x, tx) = x.split_tape();
    let (y, ty) = y.split_tape();
    let mut tape = tx.merge(ty);
    let (xd, yd) = (data(&x), data(&y));
    // SAFETY：每块与 x、y 的对应一块等长，逐个写满
    let out = unsafe {
        par_new_uninit(xd.len(), BLOCK_ELEMS, |i, o| {
            let (a, b) = (
                block_of(xd, i, BLOCK_ELEMS, o.len()),
                block_of(yd, i, BLOCK_ELEMS, o.len()),
            );
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                o.write(a + b);
            }
        })
    };
    let out = x.device().tensor_from_vec(out, shape);
    if T::OWNS_TAPE {
        // 反向只要三者的 id 与形状，不留数据
        let (out_ghost, x, y) = (out.ghost(), x.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let g = take_grad(grads, &out_ghost)?;
            if grads.contains(&y) {
                accumulate_grad(grads, &y, &g);
            } else {
                insert_or_add_grad(grads, &y, par_copy(&g));
            }
            insert_or_add_grad(grads, &x, g);
            Ok(())
        });
    }
    out.put_tape(tape)
}

// ---------------------------------------------------------------- dropout

/// 32 位整数哈希（Chris Wellons 的 lowbias32）：只用 32 位乘法与移位，能向量化。
#[inline(always)]
fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// 第 i 个元素是否保留：由（这次调用的种子, i）决定，前向与反向各算一次，不必存掩码。
#[inline(always)]
pub(super) fn keeps(seed: u64, i: usize, threshold: u32) -> bool {
    hash32(hash32(i as u32 ^ seed as u32) ^ (seed >> 32) as u32) >= threshold
}

/// y = x·scale（保留）或 0。`first` 是这一块第一个元素的下标。
#[inline(always)]
#[allow(clippy::extra_unused_type_parameters)] // multiversion! 要求的形状；这里没有乘加
fn dropout_block<F: FastMath, M: MulAdd>(
    x: &[F],
    out: &mut [std::mem::MaybeUninit<F>],
    first: usize,
    seed: u64,
    threshold: u32,
    scale: F,
) {
    for (j, (y, &v)) in out.iter_mut().zip(x).enumerate() {
        y.write(if keeps(seed, first + j, threshold) {
            v * scale
        } else {
            F::zero()
        });
    }
}

multiversion!(fn dropout_block_mv<F>(x: &[F], out: &mut [std::mem::MaybeUninit<F>], first: usize, seed: u64, threshold: u32, scale: F) => dropout_block);

/// dx += g·scale（保留的位置）。
#[inline(always)]
fn dropout_back_block<F: FastMath, M: MulAdd>(
    g: &[F],
    dx: &mut [F],
    first: usize,
    seed: u64,
    threshold: u32,
    scale: F,
) {
    for (j, (d, &gv)) in dx.iter_mut().zip(g).enumerate() {
        if keeps(seed, first + j, threshold) {
            *d = M::mul_add(gv, scale, *d);
        }
    }
}

multiversion!(fn dropout_back_block_mv<F>(g: &[F], dx: &mut [F], first: usize, seed: u64, threshold: u32, scale: F) => dropout_back_block);

/// dropout 的（阈值, 放大倍数）：保留的概率是 1 − 阈值 / 2³²，保留的元素乘 1/(1 − p)。
pub(super) fn dropout_params<F: FastMath>(p: f64) -> (u32, F) {
    ((p * 4_294_967_296.0) as u32, F::c(1.0 / (1.0 - p)))
}

/// out = x 按（种子, 下标）丢弃并放大，`first` 是 `x[0]` 的下标（融合的注意力对概率做 dropout 用）。
pub(super) fn dropout_into<F: FastMath + Dtype>(
    x: &[F],
    out: &mut [F],
    first: usize,
    seed: u64,
    (threshold, scale): (u32, F),
) {
    // SAFETY：F 与 MaybeUninit<F> 的布局相同；dropout_block 写满 out 的每个元素
    let out = unsafe { &mut *(out as *mut [F] as *mut [std::mem::MaybeUninit<F>]) };
    dropout_block_mv(x, out, first, seed, threshold, scale);
}

/// dx += g 按（种子, 下标）丢弃并放大（dropout 的反向；融合的注意力用）。
pub(super) fn dropout_back_into<F: FastMath + Dtype>(
    g: &[F],
    dx: &mut [F],
    first: usize,
    seed: u64,
    (threshold, scale): (u32, F),
) {
    dropout_back_block_mv(g, dx, first, seed, threshold, scale);
}

/// dropout 的前向：`xd` 按（种子, 下标）丢弃并放大后的新缓冲区（按块并行）。
pub(super) fn dropout_new<F: FastMath + Dtype>(
    xd: &[F],
    seed: u64,
    (threshold, scale): (u32, F),
) -> Vec<F> {
    // SAFETY：dropout_block 写满与输入等长的每一块
    unsafe {
        par_new_uninit(xd.len(), BLOCK_ELEMS, |i, o| {
            let xb = block_of(xd, i, BLOCK_ELEMS, o.len());
            dropout_block_mv(xb, o, i * BLOCK_ELEMS, seed, threshold, scale)
        })
    }
}

/// dropout 的反向：dx += g 按（种子, 下标）丢弃并放大（按块并行）。
pub(super) fn dropout_back_add<F: FastMath + Dtype>(
    g: &[F],
    dx: &mut [F],
    seed: u64,
    (threshold, scale): (u32, F),
) {
    dx.par_chunks_mut(BLOCK_ELEMS)
        .enumerate()
        .for_each(|(i, d)| {
            let gb = block_of(g, i, BLOCK_ELEMS, d.len());
            dropout_back_block_mv(gb, d, i * BLOCK_ELEMS, seed, threshold, scale)
        });
}

/// 训练时的 dropout：以概率 `p` 置零，保留的元素乘 1/(1 − p)。
///
/// 每次调用取一个 u64 作种子：训练循环给了这一步的钥匙时由（种子, 步数, 第几次 dropout）决定
/// （[`super::step_key`]，接着训练时逐位相同），否则与 dfdx 的 `dropout` 一样从设备的随机数取。
/// 每个元素的去留由“种子与下标的哈希”决定：可以并行、可以向量化，反向时重新算一遍而不必存掩码。
pub fn dropout<S, F, T>(x: Tensor<S, F, Cpu, T>, p: f64) -> Tensor<S, F, Cpu, T>
where
    S: Shape,
    F: FastMath + Dtype,
    Cpu: Device<F>,
    T: Tape<F, Cpu>,
{
    assert!(
        (0.0..1.0).contains(&p),
        "dropout 的概率应在 [0, 1) 之内：{p}"
    );
    if p == 0.0 {
        return x;
    }
    if !is_contiguous(&x) {
        return x.dropout(p);
    }
    let seed = super::step_key::next_seed(|| x.device().random_u64());
    let (threshold, scale) = dropout_params::<F>(p);
    let shape = *x.shape();
    let (x, mut tape) = x.split_tape();
    let out = dropout_new(data(&x), seed, (threshold, scale));
    let out = x.device().tensor_from_vec(out, shape);
    if T::OWNS_TAPE {
        let (x_ghost, out_ghost) = (x.ghost(), out.ghost());
        drop(x);
        tape.add_backward_op(move |grads| {
            add_to_grad(grads, &x_ghost, &out_ghost, BLOCK_ELEMS, |i, g, d| {
                dropout_back_block_mv(g, d, i * BLOCK_ELEMS, seed, threshold, scale)
            })?;
            Ok(())
        });
    }
    out.put_tape(tape)
}

// ---------------------------------------------------------------- LayerNorm

/// 一块行的 LayerNorm：y = (x − μ)·rstd·w + b，同时记下每行的 μ 与 rstd = 1/√(σ² + ε)。
#[inline(always)]
fn layer_norm_block<F: FastMath, M: MulAdd>(
    x: &[F],
    w: &[F],
    b: &[F],
    eps: F,
    out: &mut [F],
    stats: &mut [F],
) {
    let m = w.len();
    let inv_m = F::one() / F::c(m as f64);
    for ((xr, yr), st) in x
        .chunks_exact(m)
        .zip(out.chunks_exact_mut(m))
        .zip(stats.chunks_exact_mut(2))
    {
        let mean = sum([xr], |[v]| v) * inv_m;
        // 两遍：先求均值再求方差，避免 E[x²] − E[x]² 的相消误差
        let var = sum([xr], |[v]| (v - mean) * (v - mean)) * inv_m;
        let rstd = F::one() / (var + eps).sqrt();
        for (((y, &v), &wj), &bj) in yr.iter_mut().zip(xr).zip(w).zip(b) {
            *y = M::mul_add((v - mean) * rstd, wj, bj);
        }
        st[0] = mean;
        st[1] = rstd;
    }
}

multiversion!(fn layer_norm_block_mv<F>(x: &[F], w: &[F], b: &[F], eps: F, out: &mut [F], stats: &mut [F]) => layer_norm_block);

/// 一块行的 LayerNorm 反向。x̂ = (x − μ)·rstd，ĝ = g ⊙ w：
/// dx += rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ ⊙ x̂))，dw += g ⊙ x̂，db += g（dw、db 累加到这一块自己的部分和里）。
#[inline(always)]
fn layer_norm_back_block<F: FastMath, M: MulAdd>(
    x: &[F],
    g: &[F],
    w: &[F],
    stats: &[F],
    dx: &mut [F],
    dwb: &mut [F],
) {
    let m = w.len();
    let inv_m = F::one() / F::c(m as f64);
    let (dw, db) = dwb.split_at_mut(m);
    for (((xr, gr), dr), st) in x
        .chunks_exact(m)
        .zip(g.chunks_exact(m))
        .zip(dx.chunks_exact_mut(m))
        .zip(stats.chunks_exact(2))
    {
        let (mean, rstd) = (st[0], st[1]);
        let a = sum([gr, w], |[g, wj]| g * wj) * inv_m;
        let c = sum([gr, w, xr], |[g, wj, v]| g * wj * ((v - mean) * rstd)) * inv_m;
        for j in 0..m {
            let xh = (xr[j] - mean) * rstd;
            dr[j] = M::mul_add(rstd, gr[j] * w[j] - a - xh * c, dr[j]);
            dw[j] = M::mul_add(gr[j], xh, dw[j]);
            db[j] += gr[j];
        }
    }
}

multiversion!(fn layer_norm_back_block_mv<F>(x: &[F], g: &[F], w: &[F], stats: &[F], dx: &mut [F], dwb: &mut [F]) => layer_norm_back_block);

/// 最后一维上的 LayerNorm（有偏方差，与 PyTorch 相同），γ = `w`、β = `b`。
pub fn layer_norm<const M: usize, F, T>(
    x: Tensor<(usize, usize, Const<M>), F, Cpu, T>,
    w: &Tensor<Rank1<M>, F, Cpu>,
    b: &Tensor<Rank1<M>, F, Cpu>,
    eps: f64,
) -> Tensor<(usize, usize, Const<M>), F, Cpu, T>
where
    F: FastMath + Dtype,
    Cpu: Device<F>,
    T: Tape<F, Cpu>,
{
    if !is_contiguous(&x) || !is_contiguous(w) || !is_contiguous(b) {
        return super::composite::layer_norm_composite(x, w, b, eps);
    }
    let shape = *x.shape();
    let (x, mut tape) = x.split_tape();
    let xd = data(&x);
    let rpb = rows_per_block(M);
    let (wd, bd, eps) = (data(w), data(b), F::c(eps));
    // 每块一份 [μ, rstd, μ, rstd, …]（这一块每行两个数），反向按同样的块用
    let (out, stats) = par_new_map(xd.len(), rpb * M, |i, o| {
        let mut st = vec![F::zero(); 2 * (o.len() / M)];
        layer_norm_block_mv(block_of(xd, i, rpb * M, o.len()), wd, bd, eps, o, &mut st);
        st
    });
    let out = x.device().tensor_from_vec(out, shape);
    if T::OWNS_TAPE {
        let (out_ghost, w, b) = (out.ghost(), w.clone(), b.clone());
        tape.add_backward_op(move |grads| {
            let (xd, wd) = (data(&x), data(&w));
            // 每块一份 [dw | db] 的部分和，最后按块的顺序相加（结果与线程数无关）
            let partials = add_to_grad(grads, &x, &out_ghost, rpb * M, |i, g, d| {
                let mut dwb = vec![F::zero(); 2 * M];
                let xb = block_of(xd, i, rpb * M, d.len());
                layer_norm_back_block_mv(xb, g, wd, &stats[i], d, &mut dwb);
                dwb
            })?;
            grads.try_alloc_for(&w)?;
            grads.try_alloc_for(&b)?;
            let dw = buf_mut::<F>(grads.get_mut(&w));
            for p in &partials {
                for (d, &v) in dw.iter_mut().zip(&p[..M]) {
                    *d += v;
                }
            }
            let db = buf_mut::<F>(grads.get_mut(&b));
            for p in &partials {
                for (d, &v) in db.iter_mut().zip(&p[M..]) {
                    *d += v;
                }
            }
            Ok(())
        });
    }
    out.put_tape(tape)
}

// ---------------------------------------------------------------- 基准测试用

/// 从任意形状的输出 `y` 开始反向传播，上游梯度直接给定为 `g`（PyTorch 的 `y.backward(g)`）。
///
/// dfdx 只能从标量开始反向；这里接一个“种子”算子：输出一个标量 0，它的反向把 `g` 写进 `y` 的梯度。
/// 基准测试用它单独测一个算子的反向，而不把 `(y * g).sum()` 的开销算进去。
pub fn backward_from<S: Shape, F: Dtype>(
    y: Tensor<S, F, Cpu, OwnedTape<F, Cpu>>,
    g: &Tensor<S, F, Cpu>,
) -> Gradients<F, Cpu>
where
    Cpu: Device<F>,
{
    assert!(is_contiguous(g), "上游梯度必须是连续的");
    let (y, mut tape) = y.split_tape();
    let (y_ghost, g) = (y.ghost(), g.clone());
    tape.add_backward_op(move |grads| {
        // y 的梯度是 g 的一份并行复制（y 只被这个种子用到，通常还没有梯度）
        let gd = data(&g);
        insert_or_add_grad(grads, &y_ghost, par_copy(gd));
        Ok(())
    });
    let seed: Tensor<(), F, Cpu> = y.device().zeros();
    seed.put_tape(tape).backward()
}

// ---------------------------------------------------------------- 线性层

/// 矩阵乘法 C ← α·A·B + β·C（行、列步长任意，转置不需要复制）：gemm 库的单线程内核，
/// 由 [`par_gemm`] 切块后交给 rayon 的线程池。
pub trait Gemm: Sized + Copy + Send + Sync + 'static {
    /// 单线程的 C ← α·A·B + β·C。β = 0 时 C 原来的值不影响结果，但 C 必须已初始化
    /// （gemm 库在边缘的小块上会先把 C 读进临时缓冲区）。
    ///
    /// # Safety
    /// 指针与步长描述的 m×k、k×n、m×n 三个矩阵都必须在各自的缓冲区之内，且 C 不与 A、B 重叠。
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: (*const Self, isize, isize),
        b: (*const Self, isize, isize),
        beta: Self,
        c: (*mut Self, isize, isize),
    );
}

macro_rules! gemm_impl {
    ($($e:ty),*) => {$(
        impl Gemm for $e {
            unsafe fn gemm(
                m: usize,
                k: usize,
                n: usize,
                alpha: $e,
                a: (*const $e, isize, isize),
                b: (*const $e, isize, isize),
                beta: $e,
                c: (*mut $e, isize, isize),
            ) {
                // gemm 库的约定：dst ← α′·dst + β′·lhs·rhs，步长先列后行；read_dst 为 false 时 α′ 当作 0
                // SAFETY：由调用者保证（见 trait 的说明）
                unsafe {
                    gemm::gemm(
                        m, n, k, c.0, c.2, c.1, beta != 0.0, a.0, a.2, a.1, b.0, b.2, b.1, beta, alpha,
                        false, false, false, gemm::Parallelism::None,
                    )
                }
            }
        }
    )*};
}
gemm_impl!(f32, f64);

/// 切块的边界取它的倍数（一条 AVX-512 寄存器的 f32 个数）：块内的小块尽量是满的。
const GEMM_TILE: usize = 16;

/// 乘加次数少于这个数的矩阵乘法不切块（线程调度的开销比省下的时间多）。
const GEMM_PAR_MIN: usize = 1 << 21;

/// 并行的 C ← α·A·B + β·C：把 C 按行（m）或按列（n）切成与线程数一样多的块，每块一次单线程的 gemm。
///
/// 矩阵乘法库自己的多线程另有一个线程池（当时用的 matrixmultiply 的 `threading`）：与融合算子的 rayon 池一起，
/// 2 个核上有 4 个忙等的线程，上下文切换占了训练一步的一成多（附录 B）。这里只用 rayon 的池，每块调用 gemm 库的单线程版本。
/// 切哪一维：每块都要把另一维的整个操作数重新打包一遍，所以切较长的那一维——m ≥ n 时按行切（B 被每块各打包一次），
/// 否则按列切（A 被各打包一次）。
///
/// # Safety
/// 同 [`Gemm::gemm`]。
#[allow(clippy::too_many_arguments)]
pub unsafe fn par_gemm<F: Gemm>(
    m: usize,
    k: usize,
    n: usize,
    alpha: F,
    a: (*const F, isize, isize),
    b: (*const F, isize, isize),
    beta: F,
    c: (*mut F, isize, isize),
) {
    let threads = rayon::current_num_threads();
    if threads == 1 || m * k * n < GEMM_PAR_MIN {
        return F::gemm(m, k, n, alpha, a, b, beta, c);
    }
    let by_rows = m >= n;
    let len = if by_rows { m } else { n };
    let chunk = len.div_ceil(threads).div_ceil(GEMM_TILE) * GEMM_TILE;
    // 裸指针不是 Send：按地址传给各线程（每块写 C 的不相交部分）
    let (pa, pb, pc) = (a.0 as usize, b.0 as usize, c.0 as usize);
    let (sa, sb, sc) = ((a.1, a.2), (b.1, b.2), (c.1, c.2));
    (0..len.div_ceil(chunk)).into_par_iter().for_each(|j| {
        let start = j * chunk;
        let size = chunk.min(len - start);
        let (a, b, c) = (
            (pa as *const F, sa.0, sa.1),
            (pb as *const F, sb.0, sb.1),
            (pc as *mut F, sc.0, sc.1),
        );
        let off = start as isize;
        // SAFETY：每块是原矩阵的子矩阵（同样的步长、更小的范围），都在原缓冲区之内；各块的 C 互不重叠
        unsafe {
            // 按行切：A 与 C 从第 start 行起；按列切：B 与 C 从第 start 列起
            let (rows, cols, a, b, c) = if by_rows {
                (
                    size,
                    n,
                    (a.0.offset(off * a.1), a.1, a.2),
                    b,
                    (c.0.offset(off * c.1), c.1, c.2),
                )
            } else {
                (
                    m,
                    size,
                    a,
                    (b.0.offset(off * b.2), b.1, b.2),
                    (c.0.offset(off * c.2), c.1, c.2),
                )
            };
            F::gemm(rows, k, cols, alpha, a, b, beta, c);
        }
    });
}

/// 线性层 y = x·Wᵀ + b（W 按 PyTorch 的 `(out, in)` 存放）。
///
/// 反向：dx += g·W 总是要算（梯度要继续往下传）；`train_weights` 为 `false`（LoRA、线性探测里冻结的 W₀）时
/// **不算** dW = gᵀ·x 与 db = Σg——dfdx 的 matmul 总是两个梯度都算，冻结的权重白白多花一次同样大的矩阵乘法。
pub fn linear<const I: usize, const O: usize, F, T>(
    x: Tensor<(usize, usize, Const<I>), F, Cpu, T>,
    w: &Tensor<Rank2<O, I>, F, Cpu>,
    b: &Tensor<Rank1<O>, F, Cpu>,
    train_weights: bool,
) -> Tensor<(usize, usize, Const<O>), F, Cpu, T>
where
    F: FastMath + Dtype + Gemm,
    Cpu: Device<F>,
    T: Tape<F, Cpu>,
{
    if !is_contiguous(&x) || !is_contiguous(w) || !is_contiguous(b) {
        return super::composite::linear_composite(x, w, b);
    }
    linear_with(x, Weight::Stored(w.clone()), b, train_weights)
}

/// 同 [`linear`]，权重冻结、按需还原（4.5 节的量化基座）：前向还原一次、算完就丢，反向（dx = g·W）再还原一次。
/// 整个训练步里不留任何一层的全精度权重——QLoRA 省内存靠的就是这一点。
pub fn linear_lazy<const I: usize, const O: usize, F, T>(
    x: Tensor<(usize, usize, Const<I>), F, Cpu, T>,
    w: &Arc<dyn LazyWeight<F>>,
    b: &Tensor<Rank1<O>, F, Cpu>,
) -> Tensor<(usize, usize, Const<O>), F, Cpu, T>
where
    F: FastMath + Dtype + Gemm,
    Cpu: Device<F>,
    T: Tape<F, Cpu>,
{
    assert_eq!(w.dims(), (O, I), "按需还原的权重形状不对");
    if !is_contiguous(&x) || !is_contiguous(b) {
        let wt = x
            .device()
            .tensor_from_vec(w.materialize(), (Const::<O>, Const::<I>));
        return super::composite::linear_composite(x, &wt, b);
    }
    linear_with(x, Weight::Lazy(w.clone()), b, false)
}

// ANCHOR: weight
/// 线性层的权重：存着的张量，或按需还原的（反向里再还原一次）。
enum Weight<const O: usize, const I: usize, F: Dtype> {
    Stored(Tensor<Rank2<O, I>, F, Cpu>),
    Lazy(Arc<dyn LazyWeight<F>>),
}

impl<const O: usize, const I: usize, F: Dtype> Weight<O, I, F>
where
    Cpu: Device<F>,
{
    /// 行优先的 `(O, I)` 数据：存着的直接借用，按需的现在还原。
    fn data(&self) -> Cow<'_, [F]> {
        match self {
            Weight::Stored(t) => Cow::Borrowed(data(t)),
            Weight::Lazy(l) => Cow::Owned(l.materialize()),
        }
    }
}
// ANCHOR_END: weight

fn linear_with<const I: usize, const O: usize, F, T>(
    x: Tensor<(usize, usize, Const<I>), F, Cpu, T>,
    w: Weight<O, I, F>,
    b: &Tensor<Rank1<O>, F, Cpu>,
    train_weights: bool,
) -> Tensor<(usize, usize, Const<O>), F, Cpu, T>
where
    F: FastMath + Dtype + Gemm,
    Cpu: Device<F>,
    T: Tape<F, Cpu>,
{
    let (batch, seq, _) = *x.shape();
    let rows = batch * seq;
    let (x, mut tape) = x.split_tape();
    let w_host = w.data();
    let (xd, wd, bd) = (data(&x), &w_host[..], data(b));
    // 先把偏置（并行地）写进每一行，再以 β = 1 累加 x·Wᵀ：偏置不用再单独遍历一遍
    // SAFETY：块长是 O 的整数倍，每一行都整行写了偏置
    let mut out: Vec<F> = unsafe {
        par_new_uninit(rows * O, rows_per_block(O) * O, |_, o| {
            for row in o.chunks_exact_mut(O) {
                for (o, &v) in row.iter_mut().zip(bd) {
                    o.write(v);
                }
            }
        })
    };
    // SAFETY：x 是 rows×I（行步长 I），Wᵀ 是 I×O（W 的转置：行步长 1、列步长 I），out 是 rows×O，都在各自缓冲区内。
    unsafe {
        par_gemm(
            rows,
            I,
            O,
            F::one(),
            (xd.as_ptr(), I as isize, 1),
            (wd.as_ptr(), 1, I as isize),
            F::one(),
            (out.as_mut_ptr(), O as isize, 1),
        );
    }
    drop(w_host);
    let out = x.device().tensor_from_vec(out, (batch, seq, Const::<O>));
    if T::OWNS_TAPE {
        let (out_ghost, x_ghost, b) = (out.ghost(), x.ghost(), b.clone());
        // 输入 x 只有算 dW 时才要：权重冻结时反向闭包不留它（否则比如 GELU 的输出只因这里还被引用，
        // 要一直留到反向结束）
        let x = train_weights.then_some(x);
        tape.add_backward_op(move |grads| {
            grads.try_alloc_for(&out_ghost)?;
            let w_host = w.data();
            // dx (+)= g·W，g 是 rows×O，W 是 O×I，dx 是 rows×I。x 还没有梯度时以 β = 0 写进新的缓冲区
            // （并行清零，不经过 dfdx 的单线程清零）。
            let dx_gemm = |g: &[F], beta: F, dx: *mut F| {
                // SAFETY：三个矩阵都在各自的缓冲区之内（dx 的容量至少 rows×I），dx 不与 g、W 重叠。
                unsafe {
                    par_gemm(
                        rows,
                        O,
                        I,
                        F::one(),
                        (g.as_ptr(), O as isize, 1),
                        (w_host.as_ptr(), I as isize, 1),
                        beta,
                        (dx, I as isize, 1),
                    )
                }
            };
            if grads.contains(&x_ghost) {
                let (dx, g) = grads.mut_and_ref(&x_ghost, &out_ghost);
                dx_gemm(buf(g), F::one(), buf_mut::<F>(dx).as_mut_ptr());
            } else {
                let g = buf(grads.get_ref(&out_ghost));
                let mut dx = par_zeros(rows * I);
                dx_gemm(g, F::zero(), dx.as_mut_ptr());
                grads
                    .try_insert_cpu(&x_ghost, dx)
                    .unwrap_or_else(|_| unreachable!("刚检查过没有梯度"));
            }
            if let Some(x) = &x {
                let Weight::Stored(w) = &w else {
                    unreachable!("按需还原的权重总是冻结的")
                };
                grads.try_alloc_for(w)?;
                grads.try_alloc_for(&b)?;
                // g 借自 grads，下面还要可写地借 dW、db：先复制一份指针范围之外的东西是不行的，
                // 所以用 muts_and_ref 一次借出 dW、db 与 g
                let (dw, db, g) = grads.muts_and_ref(w, &b, &out_ghost);
                let (dw, db, g) = (buf_mut::<F>(dw), buf_mut::<F>(db), buf(g));
                // SAFETY：gᵀ 是 O×rows（行步长 1、列步长 O），x 是 rows×I，dW 是 O×I。
                unsafe {
                    par_gemm(
                        O,
                        rows,
                        I,
                        F::one(),
                        (g.as_ptr(), 1, O as isize),
                        (data(x).as_ptr(), I as isize, 1),
                        F::one(),
                        (dw.as_mut_ptr(), I as isize, 1),
                    );
                }
                for row in g.chunks_exact(O) {
                    for (d, &v) in db.iter_mut().zip(row) {
                        *d += v;
                    }
                }
            }
            Ok(())
        });
    }
    out.put_tape(tape)
}
