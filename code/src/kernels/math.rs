//! 融合算子里用到的 exp 与 erf：f32 用多项式近似（分支少，编译器能向量化），f64 用 libm 的精确实现。
//!
//! Rust 标准库的 `f32::exp` 调用 libm，一次只算一个数，编译器无法把循环向量化；softmax、GELU
//! 里每个元素都要一次 exp，这就是 dfdx 的这些算子慢的一个原因。这里的写法与 Cephes 的 `expf`、
//! PyTorch 向量化 CPU 内核里的 `erf`（Abramowitz–Stegun 7.1.26）相同：
//!
//! - exp：x = n·ln2 + r，|r| ≤ ½ln2，eʳ 用 6 次多项式，2ⁿ 直接写进指数位。相对误差 < 2e-7。
//!   x < −87.3 时结果直接取 0（与 `f32::exp` 的下溢一致，填充位置的注意力权重恰好为 0）。
//! - erf：有理函数 x·P(x²)/Q(x²)（与 Eigen 的 `generic_fast_erf_float` 相同的系数），相对误差 < 5e-7。
//!
//! 没有找到在稳定版 Rust 上做这件事、又有人维护的库（`wide` 等只在编译期选指令集），所以自己写，测试逐点对照 f64。
//!
//! 多项式按 Horner 法则一步一个乘加：有 FMA 指令的版本每步一条融合乘加（[`Fused`]），基线版本用 [`Baseline`]
//! （默认编译时是先乘后加，[`Separate`]），由 [`multiversion!`] 按指令集选（附录 B 的“第五轮”）。

/// a·b + c 的算法：多项式近似的每一步都是它。
///
/// Rust 不会把 `a * b + c` 自动合成一条 FMA 指令（结果的舍入不同；Rust 没有 fast-math 开关），要写 `mul_add`；
/// 可在没有以 `fma` 指令集编译的代码里，`f32::mul_add` 是对 libm 的 `fmaf` 的一次调用（即使 CPU 有 FMA）：
/// 一次只算一个数，循环不能向量化，比先乘后加慢二十倍；CPU 没有 FMA 时 `fmaf` 还是软件模拟。
/// 所以由 [`multiversion!`] 按指令集选：AVX2、AVX-512 两档用 [`Fused`]，基线一档用 [`Baseline`]。
pub trait MulAdd: 'static {
    /// a·b + c。
    fn mul_add<F: FastMath>(a: F, b: F, c: F) -> F;
}

/// 一条融合乘加指令（只舍入一次）。
pub enum Fused {}

/// 先乘后加（舍入两次），任何指令集上都快。
pub enum Separate {}

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add<F: FastMath>(a: F, b: F, c: F) -> F {
        a.mul_add(b, c)
    }
}

impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add<F: FastMath>(a: F, b: F, c: F) -> F {
        a * b + c
    }
}

/// 不按指令集重新编译的那一份（x86-64 的 SSE2 基线、其他架构）用的乘加：编译时就确定有 FMA 指令
/// （aarch64 总有；x86-64 上如 `-C target-feature=+fma`，或 `-C target-cpu` 指向有 FMA 的 CPU）才融合。
#[cfg(any(target_feature = "fma", target_arch = "aarch64"))]
pub type Baseline = Fused;
/// 见上。
#[cfg(not(any(target_feature = "fma", target_arch = "aarch64")))]
pub type Baseline = Separate;

/// 融合算子支持的浮点类型：f32 走近似，f64 走精确实现（给有限差分测试用）。
///
/// 近似的方法对乘加的算法 `M`（[`MulAdd`]）泛型：同一段代码在不同指令集的版本里用不同的乘加。
pub trait FastMath:
    Copy + Send + Sync + PartialOrd + num_traits::Float + std::ops::AddAssign + 'static
{
    /// eˣ。
    fn exp_fast<M: MulAdd>(self) -> Self;
    /// erf(x)。
    fn erf_fast<M: MulAdd>(self) -> Self;
    /// 由 f64 常数转换。
    fn c(x: f64) -> Self;
    /// 标准正态分布的分布函数 Φ(x) = ½(1 + erf(x/√2))（GELU 的前向）。
    #[inline(always)]
    fn normal_cdf<M: MulAdd>(self) -> Self {
        let half = Self::c(0.5);
        let erf = (self * Self::c(std::f64::consts::FRAC_1_SQRT_2)).erf_fast::<M>();
        M::mul_add(half, erf, half)
    }
    /// 标准正态分布的密度 φ(x) = e^{−x²/2}/√(2π)。
    #[inline(always)]
    fn normal_pdf<M: MulAdd>(self) -> Self {
        (Self::c(-0.5) * self * self).exp_fast::<M>()
            * Self::c(1.0 / (2.0 * std::f64::consts::PI).sqrt())
    }
    /// GELU 的导数 d(x·Φ(x))/dx = Φ(x) + x·φ(x)（GELU 的反向）。
    #[inline(always)]
    fn gelu_slope<M: MulAdd>(self) -> Self {
        M::mul_add(self, self.normal_pdf::<M>(), self.normal_cdf::<M>())
    }
}

impl FastMath for f64 {
    #[inline(always)]
    fn exp_fast<M: MulAdd>(self) -> Self {
        self.exp()
    }
    #[inline(always)]
    fn erf_fast<M: MulAdd>(self) -> Self {
        libm::erf(self)
    }
    #[inline(always)]
    fn c(x: f64) -> Self {
        x
    }
}

impl FastMath for f32 {
    #[inline(always)]
    fn exp_fast<M: MulAdd>(self) -> Self {
        exp_f32::<M>(self)
    }
    #[inline(always)]
    fn erf_fast<M: MulAdd>(self) -> Self {
        erf_f32::<M>(self)
    }
    #[inline(always)]
    fn c(x: f64) -> Self {
        x as f32
    }
}

// ANCHOR: exp_f32
/// 比这更小的 x，eˣ 在 f32 里下溢（取 0）。
const EXP_LO: f32 = -87.336_55;
/// 比这更大的 x 截到这里（2¹²⁷ 以内，指数位不溢出）；softmax 与 erf 里的 x 都不大于 0。
const EXP_HI: f32 = 88.0;

/// eˣ 的 f32 近似（Cephes `expf` 的系数），相对误差 < 2e-7。
#[inline(always)]
#[allow(clippy::manual_clamp)] // clamp 要处理 NaN，会妨碍向量化
pub fn exp_f32<M: MulAdd>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln2 拆成高低两段：n·C1 精确，r 的舍入误差只来自 n·C2
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // 不用 clamp、floor 与 `as i32`：clamp 处理 NaN、`as` 做饱和转换，都会让编译器放弃向量化；
    // SSE2 没有 floor 指令（要调 libm）。取整改成“加 ±½ 再截断”，截断用一条 cvttps2dq。
    let xc = x.max(EXP_LO).min(EXP_HI);
    let t = xc * LOG2E;
    // SAFETY：xc ∈ [EXP_LO, EXP_HI]，t + ½ 的绝对值小于 128，转换不会越界。
    let ni: i32 = unsafe { (t + 0.5f32.copysign(t)).to_int_unchecked() };
    let n = ni as f32;
    let r = xc - n * C1 - n * C2;
    // Horner 法则：每一步 p ← p·r + c 是一次乘加
    let p = 1.987_569_1e-4_f32;
    let p = M::mul_add(p, r, 1.398_199_9e-3);
    let p = M::mul_add(p, r, 8.333_452e-3);
    let p = M::mul_add(p, r, 4.166_579_6e-2);
    let p = M::mul_add(p, r, 1.666_666_5e-1);
    let p = M::mul_add(p, r, 0.5);
    let y = M::mul_add(p * r, r, r) + 1.0;
    // 2ⁿ：把 n + 127 写进 f32 的指数位
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    if x < EXP_LO {
        0.0
    } else {
        y * scale
    }
}
// ANCHOR_END: exp_f32

/// erf(x) 的 f32 近似：x·P(x²)/Q(x²)，x 先截到 [−4, 4]（之外 erf 在 f32 里就是 ±1）。
/// 系数与 Eigen 的 `generic_fast_erf_float` 相同；相对误差 < 5e-7，在 0 附近也是相对误差（没有 1 − … 的相消）。
#[inline(always)]
#[allow(clippy::excessive_precision)] // 系数照原样写出，由编译器舍入到 f32
pub fn erf_f32<M: MulAdd>(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = -2.726_142_258_013_06e-10_f32;
    let p = M::mul_add(p, x2, 2.770_681_424_959_02e-8);
    let p = M::mul_add(p, x2, -2.101_024_020_825_08e-6);
    let p = M::mul_add(p, x2, -5.692_506_394_623_46e-5);
    let p = M::mul_add(p, x2, -7.349_906_303_268_55e-4);
    let p = M::mul_add(p, x2, -2.954_599_808_540_25e-3);
    let p = M::mul_add(p, x2, -1.609_603_332_624_15e-2);
    let q = -1.456_607_184_649_96e-5_f32;
    let q = M::mul_add(q, x2, -2.133_740_552_789_05e-4);
    let q = M::mul_add(q, x2, -1.682_826_974_382_03e-3);
    let q = M::mul_add(q, x2, -7.373_329_167_204_68e-3);
    let q = M::mul_add(q, x2, -1.426_473_905_141_89e-2);
    x * p / q
}

/// 在 x86-64 上按 CPU 的指令集重新编译同一段代码：支持 AVX-512 时用 512 位指令，否则支持 AVX2 与 FMA 时用 256 位指令，
/// 再否则用默认的 SSE2 版本。打开指令集、确认 CPU 支持的部分交给 [pulp](https://docs.rs/pulp)（gemm 也用它）：
/// `V4::try_new()` 检测到 CPU 支持才给出一个值，`vectorize` 在打开了 x86-64-v4（或 v3）指令集的函数里调用闭包，
/// 所以这里没有 `unsafe`。
///
/// `$body` 是一个对 `F: FastMath`、`M: MulAdd` 泛型、标了 `#[inline(always)]` 的函数：它被内联进各个版本，各自按自己的指令集向量化；
/// AVX2、AVX-512 两档的乘加用 FMA 指令（`M = Fused`），基线一档用 [`Baseline`]。档位由 [`simd_level`] 决定（可用环境变量往下限制）。
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident<$F:ident>($($arg:ident: $ty:ty),* $(,)?) => $body:ident) => {
        $(#[$m])*
        $vis fn $name<$F: $crate::kernels::math::FastMath>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                use $crate::kernels::math::{simd_level, Fused, SimdLevel};
                match simd_level() {
                    SimdLevel::Avx512 => if let Some(simd) = pulp::x86::V4::try_new() {
                        return simd.vectorize(|| $body::<$F, Fused>($($arg),*));
                    },
                    SimdLevel::Avx2 => if let Some(simd) = pulp::x86::V3::try_new() {
                        return simd.vectorize(|| $body::<$F, Fused>($($arg),*));
                    },
                    SimdLevel::Sse2 => {}
                }
            }
            $body::<$F, $crate::kernels::math::Baseline>($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// 融合内核用哪一档指令集（[`multiversion!`] 选版本用）。
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimdLevel {
    /// AVX-512 F/VL/DQ/BW（512 位）。
    Avx512,
    /// AVX2 + FMA（256 位）。
    Avx2,
    /// x86-64 的基线 SSE2（128 位），其他架构上也是这一档（编译器的默认向量化）。
    Sse2,
}

/// 这台 CPU 支持的最高一档；环境变量 `LLM_BOOK_SIMD=avx2` 或 `sse2` 可以往下限制（对照测量、测试较低的档）。
/// 只在第一次调用时检测一次。
pub fn simd_level() -> SimdLevel {
    static LEVEL: std::sync::OnceLock<SimdLevel> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = match std::env::var("LLM_BOOK_SIMD").as_deref() {
            Ok("sse2") => SimdLevel::Sse2,
            Ok("avx2") => SimdLevel::Avx2,
            _ => SimdLevel::Avx512,
        };
        let detected = detect();
        // 枚举的顺序从高到低：取两者中较低的一档
        if (cap as u8) > (detected as u8) {
            cap
        } else {
            detected
        }
    })
}

#[cfg(target_arch = "x86_64")]
fn detect() -> SimdLevel {
    use std::arch::is_x86_feature_detected as has;
    if has!("avx512f") && has!("avx512vl") && has!("avx512dq") && has!("avx512bw") && has!("fma") {
        SimdLevel::Avx512
    } else if has!("avx2") && has!("fma") {
        SimdLevel::Avx2
    } else {
        SimdLevel::Sse2
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> SimdLevel {
    SimdLevel::Sse2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(lo: f64, hi: f64, n: usize) -> impl Iterator<Item = f32> {
        (0..=n).map(move |i| (lo + (hi - lo) * i as f64 / n as f64) as f32)
    }

    /// 两种乘加各测一遍（这里的 `Fused` 没有按指令集编译，走 libm 的 fmaf，结果与 FMA 指令逐位相同）。
    fn for_both(check: impl Fn(&dyn Fn(f32) -> f32, &dyn Fn(f32) -> f32, &str)) {
        check(&exp_f32::<Fused>, &erf_f32::<Fused>, "Fused");
        check(&exp_f32::<Separate>, &erf_f32::<Separate>, "Separate");
    }

    #[test]
    fn exp_f32_relative_error_below_2e_7() {
        for_both(|exp, _, m| {
            let mut worst = 0.0f64;
            for x in grid(-87.0, 88.0, 200_000) {
                let want = (x as f64).exp();
                worst = worst.max(((exp(x) as f64 - want) / want).abs());
            }
            assert!(worst < 2e-7, "{m}：最大相对误差 {worst:e}");
        });
    }

    #[test]
    fn exp_f32_underflows_to_exact_zero_like_std() {
        for_both(|exp, _, m| {
            for x in [-88.0f32, -100.0, -1e9, f32::NEG_INFINITY] {
                assert_eq!(exp(x), 0.0, "{m}：x = {x}");
            }
            assert_eq!(exp(0.0), 1.0, "{m}");
        });
    }

    #[test]
    fn erf_f32_relative_error_below_5e_7() {
        for_both(|_, erf, m| {
            let mut worst = 0.0f64;
            for x in grid(-6.0, 6.0, 400_000).chain(grid(-1e-3, 1e-3, 1000)) {
                let want = libm::erf(x as f64);
                if x != 0.0 {
                    worst = worst.max(((erf(x) as f64 - want) / want).abs());
                }
            }
            assert!(worst < 5e-7, "{m}：最大相对误差 {worst:e}");
            assert_eq!(erf(0.0), 0.0, "{m}");
            assert_eq!(erf(-10.0), -1.0, "{m}");
        });
    }
}
