//! 3.1 节：大小在运行期才知道的模块。
//!
//! 决定计算形状的宽度（隐藏维度 M、头数 H、前馈宽度 F）在类型里，写错了编译不过；
//! 而词表大小、层数、位置个数、句子类型个数、类别数随检查点与任务而变，是运行期的数：
//! 一个编译好的程序要能读 12 层的 bert-base-chinese，也要能读 3 层的 hfl/rbt3，能做 2 类，也能做 10 类。
//! 这里是它们的三种容器：行数可变的嵌入表 [`Table`]、输出个数可变的线性层 [`Head`]、层数可变的 [`LayerStack`]。
//!
//! dfdx 0.13 的 [`TensorCollection`] 在一个静态函数里列出字段，看不到模块本身，所以列不出“有几层”。
//! 本书给 dfdx 打了一个只加不改的补丁（`code/vendor/README.md`）：访问者可以 `peek` 一眼正在访问的模块，
//! [`LayerStack`] 由此得知层数；形状在运行期的张量用补丁加的 `TensorOptions::runtime` 登记。

use dfdx::nn::modules::{Linear, Module, ModuleVisitor, TensorCollection, TensorOptions};
use dfdx::prelude::*;

use crate::basics::tensors::Real;

// ANCHOR: stack
/// 层数在运行期决定的一串模块（dfdx 的 `Repeated<T, N>` 把层数 N 写在类型里）。
/// 字段路径与 `Repeated` 相同：`0.…`、`1.…`……
#[derive(Clone, Debug, Default)]
pub struct LayerStack<T> {
    /// 各层。
    pub modules: Vec<T>,
}

impl<E: Dtype, D: Device<E>, T: TensorCollection<E, D>> TensorCollection<E, D> for LayerStack<T> {
    type To<E2: Dtype, D2: Device<E2>> = LayerStack<T::To<E2, D2>>;
    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        // 看得到模块时按实际层数列出字段；看不到时（dfdx 的 build）是 0 层：这样的模块由知道层数的构造函数建
        let n = visitor.peek(&mut |s: &Self| s.modules.len()).unwrap_or(0);
        let names: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        visitor.visit_fields(
            names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    Self::module(name, move |s| &s.modules[i], move |s| &mut s.modules[i])
                })
                .collect::<Vec<_>>(),
            |modules| LayerStack { modules },
        )
    }
}
// ANCHOR_END: stack

/// 运行期形状的张量在 dfdx 的 `reset_params` 里清零（真正的初始化见 [`super::model::bert_init`]）。
fn runtime_opts<S: Shape, E: Dtype, D: Device<E>>(shape: S) -> TensorOptions<S, E, D> {
    TensorOptions::runtime(shape, |t| t.try_fill_with_zeros())
}

// ANCHOR: table
/// 行数在运行期决定的嵌入表 `(rows, M)`：词嵌入（rows = vocab_size）、位置嵌入、句子类型嵌入。
#[derive(Clone, Debug)]
pub struct Table<const M: usize, E: Dtype, D: Device<E>> {
    /// 嵌入矩阵 `(rows, Const<M>)`。
    pub weight: Tensor<(usize, Const<M>), E, D>,
}

impl<const M: usize, E: Dtype, D: Device<E>> Table<M, E, D> {
    /// 全 0 的 `rows` 行（随后由初始化或检查点填入）。
    pub fn zeros(dev: &D, rows: usize) -> Self {
        Self {
            weight: dev.zeros_like(&(rows, Const)),
        }
    }

    /// 行数。
    pub fn rows(&self) -> usize {
        self.weight.shape().0
    }

    /// 按 id 取行。
    ///
    /// # 形状
    /// - `ids`: `(batch, seq)` 或 `(seq,)`；每个 id 须小于 [`rows`](Self::rows)（调用者先检查）
    /// - 返回：`Dst` = `ids` 的形状后面加一维 `Const<M>`
    pub fn forward<Idx: Shape, Dst: Shape, T: Tape<E, D>>(
        &self,
        ids: Tensor<Idx, usize, D, T>,
    ) -> Tensor<Dst, E, D, T>
    where
        (usize, Const<M>): ReplaceDimTo<Dst, Idx>,
    {
        let (ids, tape) = ids.split_tape();
        self.weight.clone().put_tape(tape).gather(ids)
    }
}

impl<const M: usize, E: Dtype, D: Device<E>> TensorCollection<E, D> for Table<M, E, D> {
    type To<E2: Dtype, D2: Device<E2>> = Table<M, E2, D2>;
    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            Self::tensor(
                "weight",
                |s| &s.weight,
                |s| &mut s.weight,
                runtime_opts((0, Const)),
            ),
            |weight| Table { weight },
        )
    }
}
// ANCHOR_END: table

// ANCHOR: head
/// 输出个数在运行期决定的线性层 `M → n`：分类头（n = 类别数）。
#[derive(Clone, Debug)]
pub struct Head<const M: usize, E: Dtype, D: Device<E>> {
    /// 权重 `(n, Const<M>)`（与 PyTorch 的 `nn.Linear` 相同，按 (out, in) 存）。
    pub weight: Tensor<(usize, Const<M>), E, D>,
    /// 偏置 `(n,)`。
    pub bias: Tensor<(usize,), E, D>,
}

impl<const M: usize, E: Real, D: Device<E>> Head<M, E, D> {
    /// 新的分类头（transformers 的初始化）：权重的标准差 0.02（这里取同标准差的均匀分布 U(±0.02·√3)），偏置 0。
    pub fn new(dev: &D, n: usize) -> Self {
        let bound = E::from_f64(0.02 * 3f64.sqrt()).unwrap();
        Self {
            weight: dev.sample_like(&(n, Const), rand_distr::Uniform::new(-bound, bound)),
            bias: dev.zeros_like(&(n,)),
        }
    }

    /// 输出个数。
    pub fn outputs(&self) -> usize {
        self.weight.shape().0
    }

    /// y = x·Wᵀ + b。
    ///
    /// # 形状
    /// - `x`: `(batch, Const<M>)`
    /// - 返回：`(batch, n)`
    pub fn forward<T: Tape<E, D>>(
        &self,
        x: Tensor<(usize, Const<M>), E, D, T>,
    ) -> Tensor<(usize, usize), E, D, T> {
        let batch = x.shape().0;
        let w = self.weight.retaped::<T>().permute::<(Const<M>, usize), _>();
        let y = x.matmul(w);
        let b = self.bias.retaped::<T>();
        y + b.broadcast_like::<_, Axis<0>>(&(batch, self.outputs()))
    }
}

impl<const M: usize, E: Dtype, D: Device<E>> TensorCollection<E, D> for Head<M, E, D> {
    type To<E2: Dtype, D2: Device<E2>> = Head<M, E2, D2>;
    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::tensor(
                    "weight",
                    |s| &s.weight,
                    |s| &mut s.weight,
                    runtime_opts((0, Const)),
                ),
                Self::tensor("bias", |s| &s.bias, |s| &mut s.bias, runtime_opts((0,))),
            ),
            |(weight, bias)| Head { weight, bias },
        )
    }
}
// ANCHOR_END: head

/// 副本只能从基座复制；dfdx 的 `reset_params` 走到这里时停下并说明。
const SAVED_RESET: &str =
    "训练的副本由基座复制而来（如 PeftBert::get_peft_model），不能用 reset_params";

/// 一个也许有的、整个训练的线性层 `M → M`：检查点里没有池化层时训练的池化层副本（线性探测；PEFT 的 `modules_to_save` 含 `pooler`）。
#[derive(Clone, Debug)]
pub struct SavedLinear<const M: usize, E: Dtype, D: Device<E>> {
    /// 训练的副本；没有时为 `None`。
    pub module: Option<Linear<M, M, E, D>>,
}

impl<const M: usize, E: Dtype, D: Device<E>> TensorCollection<E, D> for SavedLinear<M, E, D> {
    type To<E2: Dtype, D2: Device<E2>> = ();
    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(visitor: &mut V) -> Result<Option<()>, V::Err> {
        if !visitor
            .peek(&mut |s: &Self| s.module.is_some())
            .unwrap_or(false)
        {
            return visitor.visit_fields((), |()| ());
        }
        visitor.visit_fields(
            (
                Self::tensor(
                    "weight",
                    |s| &s.module.as_ref().expect("已核对存在").weight,
                    |s| &mut s.module.as_mut().expect("已核对存在").weight,
                    TensorOptions::reset_with(|_| panic!("{SAVED_RESET}")),
                ),
                Self::tensor(
                    "bias",
                    |s| &s.module.as_ref().expect("已核对存在").bias,
                    |s| &mut s.module.as_mut().expect("已核对存在").bias,
                    TensorOptions::reset_with(|_| panic!("{SAVED_RESET}")),
                ),
            ),
            |_| (),
        )
    }
}

impl<const M: usize, E: Real, D: Device<E>> crate::bert::model::PoolerHook<M, E, D>
    for SavedLinear<M, E, D>
{
    /// 有副本时用副本，否则用基座的 dense。
    fn pooler<T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        dense: &Linear<M, M, E, D>,
        x: Tensor<(usize, Const<M>), E, D, T>,
    ) -> Tensor<(usize, Const<M>), E, D, T> {
        match &self.module {
            Some(copy) => copy.forward(x),
            None => dense.forward(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfdx::nn::{NumParams, ZeroGrads};

    #[derive(Clone, Debug)]
    struct Net {
        table: Table<4, f64, Cpu>,
        layers: LayerStack<Head<4, f64, Cpu>>,
    }

    impl TensorCollection<f64, Cpu> for Net {
        type To<E2: Dtype, D2: Device<E2>> = ();
        fn iter_tensors<V: ModuleVisitor<Self, f64, Cpu>>(
            visitor: &mut V,
        ) -> Result<Option<()>, V::Err> {
            visitor.visit_fields(
                (
                    Self::module("table", |s| &s.table, |s| &mut s.table),
                    Self::module("layers", |s| &s.layers, |s| &mut s.layers),
                ),
                |_| (),
            )
        }
    }

    fn net(dev: &Cpu, rows: usize, layers: usize) -> Net {
        Net {
            table: Table::zeros(dev, rows),
            layers: LayerStack {
                modules: (0..layers).map(|i| Head::new(dev, i + 1)).collect(),
            },
        }
    }

    #[test]
    fn runtime_sizes_are_counted_saved_and_loaded() {
        let dev = Cpu::seed_from_u64(0);
        let tmp = tempfile::tempdir().unwrap();
        // 行数、层数、每层的输出个数都只在运行期知道
        for (rows, layers) in [(3, 1), (7, 3)] {
            let model = net(&dev, rows, layers);
            let heads: usize = (1..=layers).map(|n| n * 4 + n).sum();
            assert_eq!(model.num_trainable_params(), rows * 4 + heads);
            let path = tmp.path().join(format!("runtime-{rows}.safetensors"));
            crate::checkpoint::save_params(&model, &path).unwrap();
            let saved = crate::checkpoint::Checkpoint::read(&path).unwrap();
            assert_eq!(saved.get("table.weight").unwrap().shape, vec![rows, 4]);
            let last = format!("layers.{}.weight", layers - 1);
            assert_eq!(saved.get(&last).unwrap().shape, vec![layers, 4]);
            let mut other = net(&dev, rows, layers);
            saved.load_into(&mut other, "").unwrap();
            assert_eq!(
                other.layers.modules[0].weight.as_vec(),
                model.layers.modules[0].weight.as_vec()
            );
            // 层数不同：多出来的层的键“缺少”
            let mut bigger = net(&dev, rows, layers + 1);
            let err = saved.load_into(&mut bigger, "").unwrap_err().to_string();
            assert!(err.contains(&format!("layers.{layers}.weight")), "{err}");
        }
    }

    #[test]
    fn gradients_flow_through_table_and_head() {
        let dev = Cpu::seed_from_u64(1);
        let mut model = net(&dev, 5, 1);
        model.table.weight = dev.sample_normal_like(&(5, Const));
        let grads = model.alloc_grads();
        let ids: Tensor<(usize,), usize, Cpu> = dev.tensor_from_vec(vec![3, 1], (2,));
        let x = model.table.forward(ids.traced(grads));
        let y = model.layers.modules[0].forward(x).sum::<(), _>();
        let g = y.backward();
        let gt = g.get(&model.table.weight).as_vec();
        // 用到的行（1、3）有梯度，没用到的行（0、2、4）为 0
        let w = model.layers.modules[0].weight.as_vec();
        for row in 0..5 {
            let expected = if row == 1 || row == 3 {
                w.clone()
            } else {
                vec![0.0; 4]
            };
            assert_eq!(&gt[row * 4..row * 4 + 4], &expected[..], "第 {row} 行");
        }
        assert_eq!(g.get(&model.layers.modules[0].bias).as_vec(), vec![2.0]);
    }
}
