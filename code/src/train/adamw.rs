//! 3.6 节：AdamW、学习率的线性预热与衰减、梯度裁剪。
//!
//! dfdx 0.13 自带的 `Adam` 把一阶、二阶矩放在私有字段里，无法存盘，也就无法“中断后接着训练”；
//! 它也没有梯度裁剪。这里写一个小的 AdamW（Loshchilov & Hutter 2019，与 `torch.optim.AdamW` 相同的更新式）：
//! 状态按参数的字段路径存放，可以整个存成 safetensors 再读回来，读回后的训练与不中断时逐位相同。
//!
//! 更新在主机内存里逐元素完成（每个参数读一次梯度、写回一次），按块交给 rayon 并行，用参数自己的精度计算（与 PyTorch 相同）；
//! CPU 上这比十来个 dfdx 逐元素运算快。在 CUDA 上每步多一次设备与主机之间的拷贝。
//! 并行的块划分是固定的（与线程数无关），全局范数按块求和再按顺序相加：结果逐位确定。

use std::collections::BTreeMap;

use dfdx::nn::tensor_collection::{
    RecursiveWalker, ScalarOptions, TensorCollection, TensorOptions, TensorViewer, TensorVisitor,
    ViewTensorMut, ViewTensorName,
};
use dfdx::prelude::*;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::basics::tensors::Real;
use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::kernels::Kernels;
use std::borrow::Cow;

// ANCHOR: config
/// AdamW 的超参数（默认值与 `torch.optim.AdamW` 相同，权重衰减取 BERT 微调常用的 0.01）。
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// 峰值学习率（预热结束时达到）。
    pub lr: f64,
    /// β₁、β₂。
    pub betas: [f64; 2],
    /// 分母上的 ε。
    pub eps: f64,
    /// 解耦的权重衰减系数：只作用于矩阵参数（偏置、层归一化等向量参数不衰减）。
    pub weight_decay: f64,
    /// 梯度的全局 L2 范数上限（超过时整体按比例缩小）；`None` 不裁剪。
    pub max_grad_norm: Option<f64>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.01,
            max_grad_norm: Some(1.0),
        }
    }
}

/// 线性预热再线性衰减到 0（transformers 的 `get_linear_schedule_with_warmup`）：第 `step` 步（从 0 数）的学习率倍数。
pub fn linear_schedule(step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return (step + 1) as f64 / warmup as f64;
    }
    let remaining = total.saturating_sub(step) as f64;
    let decay_steps = total.saturating_sub(warmup).max(1) as f64;
    (remaining / decay_steps).clamp(0.0, 1.0)
}
// ANCHOR_END: config

/// AdamW 的状态：步数，以及每个参数（按字段路径）的一阶矩 m、二阶矩 v（元素类型与参数相同，和 PyTorch 一样）。
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW<E> {
    /// 超参数。
    pub cfg: AdamWConfig,
    /// 已经做过的更新次数 t。
    pub t: usize,
    /// 字段路径 → (m, v)，与参数同样展平。
    pub moments: BTreeMap<String, (Vec<E>, Vec<E>)>,
}

/// 一次更新的记录。
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepInfo {
    /// 裁剪前的梯度全局范数。
    pub grad_norm: f64,
    /// 这一步用的学习率。
    pub lr: f64,
    /// 梯度乘上的裁剪系数（没有裁剪时为 1）：PyTorch 的 `clip_grad_norm_` 就地改梯度，之后读梯度的（AdaLoRA 的打分）
    /// 看到的是裁剪后的梯度，要与它一致就乘上这个数。
    pub clip: f64,
}

impl<E: Real + dfdx::tensor::safetensors::SafeDtype> AdamW<E> {
    /// 新建（矩为 0）。
    pub fn new(cfg: AdamWConfig) -> Self {
        Self {
            cfg,
            t: 0,
            moments: BTreeMap::new(),
        }
    }

    // ANCHOR: step
    /// 一次更新：先算全部梯度的全局范数（需要时裁剪），再对每个可训练参数做
    /// m ← β₁m + (1−β₁)g，v ← β₂v + (1−β₂)g²，θ ← θ − lr·(m̂/(√v̂ + ε) + λθ)。
    /// `lr_scale` 是学习率调度给出的倍数。冻结的参数（`TensorOptions::detached`）跳过。
    pub fn step<D: Kernels<E>, M: TensorCollection<E, D>>(
        &mut self,
        params: &mut M,
        grads: &Gradients<E, D>,
        lr_scale: f64,
    ) -> StepInfo {
        // 第一遍：取出梯度，算全局范数
        let mut collect = GradCollector {
            grads,
            out: BTreeMap::new(),
        };
        M::iter_tensors(&mut RecursiveWalker {
            m: (&mut *params, String::new()),
            f: &mut collect,
        })
        .expect("收集梯度不会失败");
        let grad_norm = collect
            .out
            .values()
            .flat_map(|g| {
                g.par_chunks(CHUNK)
                    .map(|c| c.iter().map(|g| g.to_f64().unwrap().powi(2)).sum::<f64>())
                    .collect::<Vec<f64>>()
            })
            .sum::<f64>()
            .sqrt();
        let clip = match self.cfg.max_grad_norm {
            Some(max) if grad_norm > max => max / (grad_norm + 1e-6),
            _ => 1.0,
        };
        // 第二遍：更新
        self.t += 1;
        let lr = self.cfg.lr * lr_scale;
        let mut update = Updater {
            opt: self,
            grads: collect.out,
            clip,
            lr,
        };
        M::iter_tensors(&mut RecursiveWalker {
            m: (params, String::new()),
            f: &mut update,
        })
        .expect("更新参数不会失败");
        StepInfo {
            grad_norm,
            lr,
            clip,
        }
    }
    // ANCHOR_END: step

    /// 状态（全部的 m、v）占的字节数。
    pub fn state_bytes(&self) -> usize {
        self.moments
            .values()
            .map(|(m, v)| (m.len() + v.len()) * std::mem::size_of::<E>())
            .sum()
    }

    /// 存成 safetensors：`m.路径`、`v.路径`（与参数同样的元素类型，读回后逐位相同），步数写在 `t` 里。
    pub fn save(&self, path: &std::path::Path) -> Result<(), CheckpointError> {
        let mut tensors: Vec<(String, Vec<usize>, Vec<E>)> =
            vec![("t".into(), vec![1], vec![E::from_usize(self.t).unwrap()])];
        for (name, (m, v)) in &self.moments {
            tensors.push((format!("m.{name}"), vec![m.len()], m.clone()));
            tensors.push((format!("v.{name}"), vec![v.len()], v.clone()));
        }
        crate::checkpoint::save_tensors(path, &tensors)
    }

    /// 从 [`save`](Self::save) 写的文件读回（超参数用 `cfg`）。
    pub fn load(cfg: AdamWConfig, path: &std::path::Path) -> Result<Self, CheckpointError> {
        let file = Checkpoint::read(path)?;
        let t = file.get("t")?.values()[0] as usize;
        let mut moments = BTreeMap::new();
        for (key, m) in &file.tensors {
            if let Some(name) = key.strip_prefix("m.") {
                let v = file.get(&format!("v.{name}"))?;
                moments.insert(name.to_string(), (m.to_vec::<E>(), v.to_vec::<E>()));
            }
        }
        Ok(Self { cfg, t, moments })
    }
}

/// 并行的块大小（元素个数）。
const CHUNK: usize = 1 << 15;

/// 第一遍：按字段路径收集可训练参数的梯度（CPU 上是借用，不复制）。
struct GradCollector<'a, E: Dtype, D: Device<E>> {
    grads: &'a Gradients<E, D>,
    out: BTreeMap<String, Cow<'a, [E]>>,
}

impl<'a, E: Real, D: Kernels<E>> TensorVisitor<E, D> for GradCollector<'a, E, D> {
    type Viewer = (ViewTensorMut, ViewTensorName);
    type Err = D::Err;
    type E2 = E;
    type D2 = D;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, E, D>,
        (t, path): <Self::Viewer as TensorViewer>::View<'_, Tensor<S, E, D>>,
    ) -> Result<Option<Tensor<S, E, D>>, Self::Err> {
        if opts.do_gradient_update {
            self.out.insert(path, D::host_grad(self.grads, &*t));
        }
        Ok(None)
    }

    fn visit_scalar<N: num_traits::NumCast>(
        &mut self,
        _opts: ScalarOptions<N>,
        _h: <Self::Viewer as TensorViewer>::View<'_, N>,
    ) -> Result<Option<N>, Self::Err> {
        Ok(None)
    }
}

/// 第二遍：AdamW 的逐元素更新。
struct Updater<'a, 'g, E: Clone> {
    opt: &'a mut AdamW<E>,
    grads: BTreeMap<String, Cow<'g, [E]>>,
    clip: f64,
    lr: f64,
}

impl<E: Real, D: Kernels<E>> TensorVisitor<E, D> for Updater<'_, '_, E> {
    type Viewer = (ViewTensorMut, ViewTensorName);
    type Err = D::Err;
    type E2 = E;
    type D2 = D;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, E, D>,
        (t, path): <Self::Viewer as TensorViewer>::View<'_, Tensor<S, E, D>>,
    ) -> Result<Option<Tensor<S, E, D>>, Self::Err> {
        if !opts.do_gradient_update {
            return Ok(None);
        }
        let g = &self.grads[&path];
        let cfg = self.opt.cfg;
        let (b1, b2) = (cfg.betas[0], cfg.betas[1]);
        let step = self.opt.t as i32;
        let (c1, c2) = (1.0 - b1.powi(step), 1.0 - b2.powi(step));
        // 矩阵参数衰减，向量参数（偏置、层归一化、嵌入之外的一维参数）不衰减
        let decay = if S::NUM_DIMS >= 2 {
            cfg.weight_decay
        } else {
            0.0
        };
        let (m, v) = self
            .opt
            .moments
            .entry(path)
            .or_insert_with(|| (vec![E::zero(); g.len()], vec![E::zero(); g.len()]));
        // 新的参数值写进一块新的缓冲区（读参数不复制），最后整块写回
        // 常数先换成参数的精度，逐元素的运算都在 E 里做（f32 参数用 f32 算，与 PyTorch 相同）
        let e = |x: f64| E::from_f64(x).unwrap();
        let (b1, nb1, b2, nb2) = (e(b1), e(1.0 - b1), e(b2), e(1.0 - b2));
        let (c1, c2, clip, lr, eps, decay) =
            (e(c1), e(c2), e(self.clip), e(self.lr), e(cfg.eps), e(decay));
        let old = D::host_data(&*t);
        let mut theta: Vec<E> = Vec::with_capacity(old.len());
        theta.spare_capacity_mut()[..old.len()]
            .par_chunks_mut(CHUNK)
            .zip(old.par_chunks(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|((((theta, old), g), m), v)| {
                for i in 0..theta.len() {
                    let gi = g[i] * clip;
                    let mi = b1 * m[i] + nb1 * gi;
                    let vi = b2 * v[i] + nb2 * gi * gi;
                    let p = old[i];
                    theta[i].write(p - lr * ((mi / c1) / ((vi / c2).sqrt() + eps) + decay * p));
                    (m[i], v[i]) = (mi, vi);
                }
            });
        // SAFETY：上面的并行循环按块覆盖了 [0, old.len()) 的每一个元素
        unsafe { theta.set_len(old.len()) };
        drop(old);
        t.copy_from(&theta);
        Ok(None)
    }

    fn visit_scalar<N: num_traits::NumCast>(
        &mut self,
        _opts: ScalarOptions<N>,
        _h: <Self::Viewer as TensorViewer>::View<'_, N>,
    ) -> Result<Option<N>, Self::Err> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfdx::nn::modules::Linear;
    use dfdx::nn::ZeroGrads;

    fn run(steps: std::ops::Range<usize>, lin: &mut Linear<2, 2, f64, Cpu>, opt: &mut AdamW<f64>) {
        let dev: Cpu = Default::default();
        let mut grads = lin.alloc_grads();
        for step in steps {
            let x = dev.tensor([1.0, 2.0]);
            let k = dev.tensor([3.0, -1.0]);
            let y = dfdx::nn::Module::forward(&*lin, x.traced(grads));
            let loss = (y * k).sum() * (step + 1) as f64;
            grads = loss.backward();
            opt.step(lin, &grads, linear_schedule(step, 2, 4));
            lin.zero_grads(&mut grads);
        }
    }

    fn start() -> (Linear<2, 2, f64, Cpu>, AdamW<f64>) {
        let dev: Cpu = Default::default();
        let lin = Linear {
            weight: dev.tensor([[0.5, -0.3], [0.2, 0.8]]),
            bias: dev.tensor([0.1, -0.2]),
        };
        let opt = AdamW::new(AdamWConfig {
            lr: 0.1,
            ..Default::default()
        });
        (lin, opt)
    }

    #[test]
    fn matches_torch_adamw_with_clipping_and_schedule() {
        // 参考值：torch.optim.AdamW（lr 0.1，权重 weight_decay 0.01、偏置 0）+ clip_grad_norm_(1.0)
        // + LambdaLR（与 linear_schedule(step, 2, 4) 相同的倍数），float64，四步之后的参数。
        let (mut lin, mut opt) = start();
        run(0..4, &mut lin, &mut opt);
        let want_w = [
            [0.1988264813495002, -0.5987761213194897],
            [0.49907577712551693, 1.0972777378320353],
        ];
        let want_b = [-0.19999999291763765, 0.09999997742570446];
        for (a, b) in lin
            .weight
            .array()
            .iter()
            .flatten()
            .zip(want_w.iter().flatten())
        {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        for (a, b) in lin.bias.array().iter().zip(&want_b) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
    }

    #[test]
    fn saved_state_resumes_bit_for_bit() {
        let (mut straight, mut opt) = start();
        run(0..4, &mut straight, &mut opt);
        // 走两步、存盘、读回、再走两步
        let (mut lin, mut opt) = start();
        run(0..2, &mut lin, &mut opt);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("adamw.safetensors");
        opt.save(&path).unwrap();
        let mut back = AdamW::<f64>::load(opt.cfg, &path).unwrap();
        assert_eq!(back, opt);
        run(2..4, &mut lin, &mut back);
        assert_eq!(lin.weight.array(), straight.weight.array());
        assert_eq!(lin.bias.array(), straight.bias.array());
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let lrs: Vec<f64> = (0..6).map(|s| linear_schedule(s, 2, 6)).collect();
        assert_eq!(lrs, vec![0.5, 1.0, 1.0, 0.75, 0.5, 0.25]);
        assert_eq!(linear_schedule(6, 2, 6), 0.0);
    }
}
