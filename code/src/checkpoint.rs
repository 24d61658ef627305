//! 检查点：按名字在 safetensors 文件与模型参数之间搬运张量。
//!
//! 一个通用的机制服务全书：第 1 部分用它读 PyTorch 生成的参考数据，第 3 部分用它读
//! Hugging Face 的 `model.safetensors`。模型的字段名（经 dfdx 的 `TensorCollection` 遍历）
//! 拼成键，例如 `layers.0.attention.w_q.weight`；读入时检查每个键是否存在、形状是否一致，
//! 把缺失的、形状不符的、多余的键逐一列出。

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::safetensors::tensor::{Dtype as SafeDtype, SafeTensors};
use dfdx::nn::tensor_collection::{
    RecursiveWalker, ScalarOptions, TensorCollection, TensorOptions, TensorViewer, TensorVisitor,
    ViewTensorMut, ViewTensorName, ViewTensorRef,
};
use dfdx::prelude::*;

/// 从文件读出的一个张量：保持文件里的类型与字节（f32、f64、f16、bf16、i64、i32、u8、i8），
/// 读进模型时才逐个转换成模型的类型——bert-base 的 f32 检查点读进来只占文件本身的大小，不再先变成两倍大的 f64。
/// 文件的字节只在内存里放一份，各个张量记下自己的那一段。
#[derive(Clone)]
pub struct StoredTensor {
    /// 形状。
    pub shape: Vec<usize>,
    /// 文件里的类型。
    pub dtype: SafeDtype,
    /// 整个文件的字节（各张量共用）。
    file: Arc<Vec<u8>>,
    /// 这个张量的字节（行优先展平、小端）在文件里的位置。
    range: std::ops::Range<usize>,
}

impl fmt::Debug for StoredTensor {
    /// 不打印字节（整个文件）：形状、类型与元素个数。
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredTensor")
            .field("shape", &self.shape)
            .field("dtype", &self.dtype)
            .field("len", &self.len())
            .finish()
    }
}

impl PartialEq for StoredTensor {
    fn eq(&self, other: &Self) -> bool {
        self.shape == other.shape && self.dtype == other.dtype && self.bytes() == other.bytes()
    }
}

impl StoredTensor {
    /// 这个张量在文件里的字节。
    fn bytes(&self) -> &[u8] {
        &self.file[self.range.clone()]
    }

    /// 元素个数。
    pub fn len(&self) -> usize {
        self.range.len() / self.dtype.size()
    }

    /// 是否没有元素。
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// 全部元素转成 `E`（f32、f64、f16、bf16 与整数都在 f64 里精确，再转成 `E`）。
    pub fn to_vec<E: Dtype>(&self) -> Vec<E> {
        let mut out = Vec::with_capacity(self.len());
        decode(self.dtype, self.bytes(), |v| {
            out.push(E::from_f64(v).unwrap())
        });
        out
    }

    /// 全部元素转成 f64（参考数据的比较用）。
    pub fn values(&self) -> Vec<f64> {
        self.to_vec()
    }
}

/// 读进内存的 safetensors 文件。
#[derive(Clone, Debug, Default)]
pub struct Checkpoint {
    /// 文件路径（错误信息用）。
    pub path: PathBuf,
    /// 键 → 张量。
    pub tensors: BTreeMap<String, StoredTensor>,
}

impl Checkpoint {
    /// 读取 safetensors 文件。
    pub fn read(path: &Path) -> Result<Self, CheckpointError> {
        let bytes = std::fs::read(path).map_err(|e| CheckpointError::Io {
            path: path.to_path_buf(),
            error: e.to_string(),
        })?;
        Self::from_bytes(path, bytes)
    }

    /// 从内存中的字节解析（`path` 只用于错误信息）。字节不复制：各张量指向其中自己的一段。
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, CheckpointError> {
        let bytes = Arc::new(bytes);
        let file = SafeTensors::deserialize(&bytes).map_err(|e| CheckpointError::Format {
            path: path.to_path_buf(),
            error: format!("{e:?}"),
        })?;
        let mut tensors = BTreeMap::new();
        for (name, view) in file.tensors() {
            if !supported(view.dtype()) {
                return Err(CheckpointError::Dtype {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    dtype: format!("{:?}", view.dtype()),
                });
            }
            // safetensors 的视图就是文件字节里的一段：由指针的差得到位置
            let start = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
            tensors.insert(
                name,
                StoredTensor {
                    shape: view.shape().to_vec(),
                    dtype: view.dtype(),
                    file: Arc::clone(&bytes),
                    range: start..start + view.data().len(),
                },
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// 取一个张量；不存在时的错误给出键名。
    pub fn get(&self, name: &str) -> Result<&StoredTensor, CheckpointError> {
        self.tensors
            .get(name)
            .ok_or_else(|| CheckpointError::Missing {
                path: self.path.clone(),
                names: vec![name.into()],
            })
    }

    // ANCHOR: load_into
    /// 把 `prefix + 字段路径` 下的张量读进 `module` 的每个参数。
    ///
    /// 任何一个参数缺失或形状不符都返回错误并列出全部问题；`prefix` 之下没被用到的键也算错误
    /// （多余的键往往说明模型结构与检查点不一致）。
    pub fn load_into<E, D, M>(&self, module: &mut M, prefix: &str) -> Result<(), CheckpointError>
    where
        E: Dtype,
        D: Device<E>,
        M: TensorCollection<E, D>,
    {
        self.load_into_with(module, &|path| vec![format!("{prefix}{path}")], &|key| {
            key.starts_with(prefix)
        })
    }

    /// 通用的版本：`candidates(字段路径)` 给出文件中可能的键（依次尝试，第一个存在的生效），
    /// `owned(键)` 判断一个键是否应当被模型用到（用到的之外都算“多余”）。
    ///
    /// 第 3 部分读 Hugging Face 的检查点时，用它把本书的字段路径映射成 HF 的键名（并兼容旧的 `gamma`/`beta`）。
    pub fn load_into_with<E, D, M>(
        &self,
        module: &mut M,
        candidates: &dyn Fn(&str) -> Vec<String>,
        owned: &dyn Fn(&str) -> bool,
    ) -> Result<(), CheckpointError>
    where
        E: Dtype,
        D: Device<E>,
        M: TensorCollection<E, D>,
    {
        let mut loader = Loader {
            checkpoint: self,
            candidates,
            used: BTreeSet::new(),
            missing: Vec::new(),
            shape_mismatch: Vec::new(),
        };
        M::iter_tensors(&mut RecursiveWalker {
            m: (module, String::new()),
            f: &mut loader,
        })?;
        let unexpected: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| owned(k) && !loader.used.contains(*k))
            .cloned()
            .collect();
        if loader.missing.is_empty() && loader.shape_mismatch.is_empty() && unexpected.is_empty() {
            Ok(())
        } else {
            Err(CheckpointError::Mismatch {
                path: self.path.clone(),
                missing: loader.missing,
                shape_mismatch: loader.shape_mismatch,
                unexpected,
            })
        }
    }
    // ANCHOR_END: load_into

    /// 把一个张量转成 dfdx 张量（形状须与 `shape` 的元素个数一致）。
    pub fn tensor<S: Shape, E: Dtype, D: Device<E>>(
        &self,
        dev: &D,
        name: &str,
        shape: S,
    ) -> Result<Tensor<S, E, D>, CheckpointError> {
        let t = self.get(name)?;
        let want = shape.concrete().into_iter().collect::<Vec<_>>();
        if t.shape != want {
            return Err(CheckpointError::Mismatch {
                path: self.path.clone(),
                missing: vec![],
                shape_mismatch: vec![format!("{name}：文件中为 {:?}，期望 {want:?}", t.shape)],
                unexpected: vec![],
            });
        }
        Ok(dev.tensor_from_vec(t.to_vec(), shape))
    }
}

/// 把 `module` 的全部参数原子地存成 safetensors（键为字段路径，如 `encoder.layers.0.attention.w_q.weight`）。
pub fn save_params<E, D, M>(module: &M, path: &Path) -> Result<(), CheckpointError>
where
    E: Dtype + dfdx::tensor::safetensors::SafeDtype,
    D: Device<E>,
    M: TensorCollection<E, D>,
{
    save_params_with(module, path, &|p| Some(p.to_string()))
}

/// 通用的版本：键由 `key(字段路径)` 给出（第 3 部分用它写 Hugging Face 与 PEFT 的键名），返回 `None` 的参数不写
/// （如预训练时没有训练的分类头）。
/// 先写临时文件再改名：中途出错或被打断，不会留下写了一半的文件。
pub fn save_params_with<E, D, M>(
    module: &M,
    path: &Path,
    key: &dyn Fn(&str) -> Option<String>,
) -> Result<(), CheckpointError>
where
    E: Dtype + dfdx::tensor::safetensors::SafeDtype,
    D: Device<E>,
    M: TensorCollection<E, D>,
{
    let mut collector = Collector {
        key,
        tensors: Vec::new(),
    };
    M::iter_tensors(&mut RecursiveWalker {
        m: (module, String::new()),
        f: &mut collector,
    })?;
    let views = collector
        .tensors
        .iter()
        .map(|(name, shape, bytes)| {
            ::safetensors::tensor::TensorView::new(E::safe_dtype(), shape.clone(), bytes)
                .map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CheckpointError::Format {
            path: path.to_path_buf(),
            error: format!("{e:?}"),
        })?;
    let bytes = ::safetensors::serialize(views, &None).map_err(|e| CheckpointError::Format {
        path: path.to_path_buf(),
        error: format!("{e:?}"),
    })?;
    crate::io::write_atomic(path, &bytes).map_err(|e| CheckpointError::Io {
        path: path.to_path_buf(),
        error: e.to_string(),
    })
}

/// 把几个命名的张量原子地存成 safetensors（参考数据、优化器状态、给 Python 脚本核对的输出用）。
pub fn save_tensors<N, E>(
    path: &Path,
    tensors: &[(N, Vec<usize>, Vec<E>)],
) -> Result<(), CheckpointError>
where
    N: AsRef<str>,
    E: dfdx::tensor::safetensors::SafeDtype + Copy,
{
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let format_error = |e: ::safetensors::SafeTensorError| CheckpointError::Format {
        path: path.to_path_buf(),
        error: format!("{e:?}"),
    };
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            ::safetensors::tensor::TensorView::new(E::safe_dtype(), shape.clone(), b)
                .map(|v| (name.as_ref().to_string(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(format_error)?;
    let file = ::safetensors::serialize(views, &None).map_err(format_error)?;
    crate::io::write_atomic(path, &file).map_err(|e| CheckpointError::Io {
        path: path.to_path_buf(),
        error: e.to_string(),
    })
}

/// 存盘用的浮点类型：f32 原样；f16、bf16 占一半的字节（附录 A 提交进仓库的中文迷你 BERT 用 f16）。
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum StoreDtype {
    /// 32 位浮点（训练用的精度）。
    F32,
    /// IEEE 754 半精度：10 位尾数，最大 65504。
    F16,
    /// bfloat16：与 f32 同样的指数范围，7 位尾数。
    BF16,
}

/// 把 safetensors 文件里的浮点张量改存成 `dtype`（按最近偶数舍入；整数张量不动），原子地替换原文件。
/// 值超出 f16 的范围（|x| > 65504）时是错误，不写文件：舍入成无穷的权重不能用。
pub fn convert_floats(path: &Path, dtype: StoreDtype) -> Result<(), CheckpointError> {
    let checkpoint = Checkpoint::read(path)?;
    let bytes = std::fs::read(path).map_err(|e| CheckpointError::Io {
        path: path.to_path_buf(),
        error: e.to_string(),
    })?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| CheckpointError::Format {
        path: path.to_path_buf(),
        error: format!("{e:?}"),
    })?;
    let mut out: Vec<(String, SafeDtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in file.tensors() {
        let is_float = matches!(
            view.dtype(),
            SafeDtype::F64 | SafeDtype::F32 | SafeDtype::F16 | SafeDtype::BF16
        );
        if !is_float {
            out.push((
                name,
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            ));
            continue;
        }
        let data = &checkpoint.get(&name)?.values();
        let (safe, encoded): (SafeDtype, Vec<u8>) = match dtype {
            StoreDtype::F32 => (
                SafeDtype::F32,
                data.iter()
                    .flat_map(|&v| (v as f32).to_le_bytes())
                    .collect(),
            ),
            StoreDtype::F16 => {
                if let Some(v) = data.iter().find(|v| v.abs() > f64::from(half::f16::MAX)) {
                    return Err(CheckpointError::Overflow {
                        path: path.to_path_buf(),
                        name,
                        value: *v,
                    });
                }
                (
                    SafeDtype::F16,
                    data.iter()
                        .flat_map(|&v| half::f16::from_f64(v).to_le_bytes())
                        .collect(),
                )
            }
            StoreDtype::BF16 => (
                SafeDtype::BF16,
                data.iter()
                    .flat_map(|&v| half::bf16::from_f64(v).to_le_bytes())
                    .collect(),
            ),
        };
        out.push((name, safe, view.shape().to_vec(), encoded));
    }
    let format_error = |e: ::safetensors::SafeTensorError| CheckpointError::Format {
        path: path.to_path_buf(),
        error: format!("{e:?}"),
    };
    let views = out
        .iter()
        .map(|(name, dt, shape, b)| {
            ::safetensors::tensor::TensorView::new(*dt, shape.clone(), b).map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(format_error)?;
    let file = ::safetensors::serialize(views, &None).map_err(format_error)?;
    crate::io::write_atomic(path, &file).map_err(|e| CheckpointError::Io {
        path: path.to_path_buf(),
        error: e.to_string(),
    })
}

/// 收集每个参数的（键、形状、小端字节）。
struct Collector<'a> {
    key: &'a dyn Fn(&str) -> Option<String>,
    tensors: Vec<(String, Vec<usize>, Vec<u8>)>,
}

impl<E: Dtype + dfdx::tensor::safetensors::SafeDtype, D: Device<E>> TensorVisitor<E, D>
    for Collector<'_>
{
    type Viewer = (ViewTensorRef, ViewTensorName);
    type Err = CheckpointError;
    type E2 = E;
    type D2 = D;

    fn visit<S: Shape>(
        &mut self,
        _opts: TensorOptions<S, E, D>,
        (t, path): <Self::Viewer as TensorViewer>::View<'_, Tensor<S, E, D>>,
    ) -> Result<Option<Tensor<S, E, D>>, Self::Err> {
        if let Some(key) = (self.key)(&path) {
            // 没有元素的张量（AdaLoRA 里秩被剪到 0 的模块）：dfdx 的 as_vec 对它会越界，直接写空
            let bytes = match t.shape().num_elements() {
                0 => Vec::new(),
                _ => t
                    .as_vec()
                    .into_iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            };
            self.tensors
                .push((key, t.shape().concrete().into_iter().collect(), bytes));
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

/// [`decode`] 认得的类型。
fn supported(dtype: SafeDtype) -> bool {
    use SafeDtype::*;
    matches!(dtype, F32 | F64 | F16 | BF16 | I64 | I32 | U8 | I8)
}

/// 按 dtype 逐个解码小端字节，每个数（在 f64 里精确）交给 `f`。
fn decode(dtype: SafeDtype, bytes: &[u8], mut f: impl FnMut(f64)) {
    macro_rules! le {
        ($n:literal, $g:expr) => {
            for c in bytes.chunks_exact($n) {
                f($g(c.try_into().unwrap()))
            }
        };
    }
    match dtype {
        SafeDtype::F32 => le!(4, |b| f32::from_le_bytes(b) as f64),
        SafeDtype::F64 => le!(8, f64::from_le_bytes),
        SafeDtype::F16 => le!(2, |b| half::f16::from_le_bytes(b).to_f64()),
        SafeDtype::BF16 => le!(2, |b| half::bf16::from_le_bytes(b).to_f64()),
        SafeDtype::I64 => le!(8, |b| i64::from_le_bytes(b) as f64),
        SafeDtype::I32 => le!(4, |b| i32::from_le_bytes(b) as f64),
        // 量化的码（4.5 节的参考数据）：每个字节一个数
        SafeDtype::U8 => le!(1, |b: [u8; 1]| b[0] as f64),
        SafeDtype::I8 => le!(1, |b: [u8; 1]| b[0] as i8 as f64),
        other => unreachable!("读文件时已拒绝 {other:?}"),
    }
}

struct Loader<'a> {
    checkpoint: &'a Checkpoint,
    candidates: &'a dyn Fn(&str) -> Vec<String>,
    used: BTreeSet<String>,
    missing: Vec<String>,
    shape_mismatch: Vec<String>,
}

impl<E: Dtype, D: Device<E>> TensorVisitor<E, D> for Loader<'_> {
    type Viewer = (ViewTensorMut, ViewTensorName);
    type Err = CheckpointError;
    type E2 = E;
    type D2 = D;

    fn visit<S: Shape>(
        &mut self,
        _opts: TensorOptions<S, E, D>,
        (t, path): <Self::Viewer as TensorViewer>::View<'_, Tensor<S, E, D>>,
    ) -> Result<Option<Tensor<S, E, D>>, Self::Err> {
        let keys = (self.candidates)(&path);
        let key = keys
            .iter()
            .find(|k| self.checkpoint.tensors.contains_key(*k))
            .cloned()
            .unwrap_or_else(|| keys[0].clone());
        let want: Vec<usize> = t.shape().concrete().into_iter().collect();
        match self.checkpoint.tensors.get(&key) {
            None => self.missing.push(key),
            Some(stored) if stored.shape != want => {
                self.shape_mismatch.push(format!(
                    "{key}：文件中为 {:?}，模型要求 {want:?}",
                    stored.shape
                ));
                self.used.insert(key);
            }
            Some(stored) => {
                t.copy_from(&stored.to_vec::<E>());
                self.used.insert(key);
            }
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

/// 读检查点时的错误。
#[derive(Debug, Clone, PartialEq)]
pub enum CheckpointError {
    /// 文件读不了。
    Io {
        /// 文件。
        path: PathBuf,
        /// 系统给出的原因。
        error: String,
    },
    /// 不是合法的 safetensors（如文件被截断、头部损坏）。
    Format {
        /// 文件。
        path: PathBuf,
        /// 解析器给出的原因。
        error: String,
    },
    /// 不支持的元素类型。
    Dtype {
        /// 文件。
        path: PathBuf,
        /// 张量名。
        name: String,
        /// 元素类型。
        dtype: String,
    },
    /// 缺少张量。
    Missing {
        /// 文件。
        path: PathBuf,
        /// 缺少的键。
        names: Vec<String>,
    },
    /// 模型与检查点对不上。
    Mismatch {
        /// 文件。
        path: PathBuf,
        /// 模型需要、文件中没有的键。
        missing: Vec<String>,
        /// 形状不符的键。
        shape_mismatch: Vec<String>,
        /// 文件中有、模型不需要的键。
        unexpected: Vec<String>,
    },
    /// 改存成 f16 时，有值超出 f16 能表示的范围。
    Overflow {
        /// 文件。
        path: PathBuf,
        /// 张量的键。
        name: String,
        /// 超出范围的值。
        value: f64,
    },
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointError::Io { path, error } => {
                write!(f, "无法读取检查点 {}：{error}", path.display())
            }
            CheckpointError::Format { path, error } => {
                write!(
                    f,
                    "{} 不是有效的 safetensors 文件（可能被截断或损坏）：{error}",
                    path.display()
                )
            }
            CheckpointError::Dtype { path, name, dtype } => {
                write!(f, "{} 中的张量 {name} 的元素类型 {dtype} 不受支持（支持 F32、F64、F16、BF16、I64、I32）", path.display())
            }
            CheckpointError::Missing { path, names } => {
                write!(f, "{} 中缺少张量：{}", path.display(), names.join("、"))
            }
            CheckpointError::Mismatch {
                path,
                missing,
                shape_mismatch,
                unexpected,
            } => {
                write!(f, "模型与检查点 {} 不一致：", path.display())?;
                if !missing.is_empty() {
                    write!(f, "\n  缺少的张量：{}", missing.join("、"))?;
                }
                if !shape_mismatch.is_empty() {
                    write!(f, "\n  形状不符：{}", shape_mismatch.join("；"))?;
                }
                if !unexpected.is_empty() {
                    write!(f, "\n  多余的张量：{}", unexpected.join("、"))?;
                }
                Ok(())
            }
            CheckpointError::Overflow { path, name, value } => write!(
                f,
                "{} 中的张量 {name} 有值 {value}，超出 f16 的范围（±65504），不能存成 f16（可改用 bf16）",
                path.display()
            ),
        }
    }
}

impl std::error::Error for CheckpointError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transformer::norm::LayerNorm;
    use dfdx::nn::BuildModule;

    fn file(tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, _, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect())
            .collect();
        let views: Vec<(String, ::safetensors::tensor::TensorView)> = tensors
            .iter()
            .zip(&bytes)
            .map(|((n, s, _), b)| {
                (
                    n.to_string(),
                    ::safetensors::tensor::TensorView::new(SafeDtype::F32, s.clone(), b).unwrap(),
                )
            })
            .collect();
        ::safetensors::serialize(views, &None).unwrap()
    }

    #[test]
    fn loads_by_name_with_prefix() {
        let bytes = file(&[
            ("ln.weight", vec![3], vec![1.0, 2.0, 3.0]),
            ("ln.bias", vec![3], vec![0.5, 0.5, 0.5]),
        ]);
        let ckpt = Checkpoint::from_bytes(Path::new("t.safetensors"), bytes).unwrap();
        let dev: Cpu = Default::default();
        let mut ln = LayerNorm::<3, f32, Cpu>::build(&dev);
        ckpt.load_into(&mut ln, "ln.").unwrap();
        assert_eq!(ln.weight.array(), [1.0, 2.0, 3.0]);
        assert_eq!(ln.bias.array(), [0.5, 0.5, 0.5]);
    }

    #[test]
    fn lists_missing_mismatched_and_unexpected_keys() {
        let bytes = file(&[
            ("ln.weight", vec![4], vec![0.0; 4]),
            ("ln.gamma", vec![3], vec![0.0; 3]),
        ]);
        let ckpt = Checkpoint::from_bytes(Path::new("t.safetensors"), bytes).unwrap();
        let dev: Cpu = Default::default();
        let mut ln = LayerNorm::<3, f32, Cpu>::build(&dev);
        let err = ckpt.load_into(&mut ln, "ln.").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("缺少的张量：ln.bias"), "{msg}");
        assert!(
            msg.contains("ln.weight：文件中为 [4]，模型要求 [3]"),
            "{msg}"
        );
        assert!(msg.contains("多余的张量：ln.gamma"), "{msg}");
    }

    #[test]
    fn truncated_file_is_a_clear_error() {
        let bytes = file(&[("a", vec![2], vec![1.0, 2.0])]);
        let err = Checkpoint::from_bytes(
            Path::new("cut.safetensors"),
            bytes[..bytes.len() - 3].to_vec(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cut.safetensors 不是有效的 safetensors 文件"),
            "{err}"
        );
    }

    #[test]
    fn save_then_load_round_trips() {
        let dev: Cpu = Default::default();
        let mut ln = LayerNorm::<3, f32, Cpu>::build(&dev);
        ln.weight = dev.tensor([1.0, 2.0, 3.0]);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ckpt.safetensors");
        save_params(&ln, &path).unwrap();
        let mut back = LayerNorm::<3, f32, Cpu>::build(&dev);
        Checkpoint::read(&path)
            .unwrap()
            .load_into(&mut back, "")
            .unwrap();
        assert_eq!(back.weight.array(), [1.0, 2.0, 3.0]);
    }

    #[test]
    fn converts_floats_to_half_precision_and_refuses_overflow() {
        // 1/3 在 f16 里舍入成 0x3555（= 0.333251953125），在 bf16 里是 0x3eab（= 0.333984375）
        let values = vec![1.0, -2.0, 1.0 / 3.0, 6.0e-8];
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("convert.safetensors");
        for (dtype, third) in [
            (StoreDtype::F16, 0.333251953125),
            (StoreDtype::BF16, 0.333984375),
        ] {
            std::fs::write(&path, file(&[("w", vec![2, 2], values.clone())])).unwrap();
            convert_floats(&path, dtype).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            let view = SafeTensors::deserialize(&bytes).unwrap();
            let want = if dtype == StoreDtype::F16 {
                SafeDtype::F16
            } else {
                SafeDtype::BF16
            };
            assert_eq!(view.tensor("w").unwrap().dtype(), want);
            assert!(bytes.len() < file(&[("w", vec![2, 2], values.clone())]).len());
            let back = &Checkpoint::read(&path).unwrap().tensors["w"];
            assert_eq!(back.shape, [2, 2]);
            assert_eq!(&back.values()[..2], [1.0, -2.0]);
            assert_eq!(back.values()[2], third);
        }
        // 6e-8 在 f16 里是最小的次正规数 2^-24 ≈ 5.96e-8
        std::fs::write(&path, file(&[("w", vec![4], values.clone())])).unwrap();
        convert_floats(&path, StoreDtype::F16).unwrap();
        assert_eq!(
            Checkpoint::read(&path).unwrap().tensors["w"].values()[3],
            2f64.powi(-24)
        );
        // 超出 f16 的范围：错误指出张量与值，原文件不变
        let big = file(&[("big", vec![1], vec![70000.0])]);
        std::fs::write(&path, &big).unwrap();
        let err = convert_floats(&path, StoreDtype::F16)
            .unwrap_err()
            .to_string();
        assert!(err.contains("big") && err.contains("70000"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), big);
    }
}
