//! `attention` 命令（3.6 节）：一段文本在 BERT 每一层、每个头里的注意力权重，画成一组热力图。
//!
//! 给了 `--adapter` 时先把适配器合并进基座（[`PeftBert::merge_and_unload`]），看的是微调之后的模型。

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::bert::config::HfBertConfig;
use crate::bert::hf::{load_dir, BertDir};
use crate::bert::presets::{dispatch_dir, WidthTask};
use crate::data::batch::make_batch;
use crate::experiments::classify::resolve_max_len;
use crate::kernels::device::DeviceTask;
use crate::kernels::Kernels;
use crate::peft::model::PeftBert;
use crate::plot::{ColorMap, HeatmapGrid};
use dfdx::prelude::*;

/// 一段文本的注意力权重。
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttentionMaps {
    /// 模型目录。
    pub model: String,
    /// 合并进基座的适配器目录（没有时为 `None`）。
    pub adapter: Option<String>,
    /// 文本。
    pub text: String,
    /// 分词后的记号（含 `[CLS]`、`[SEP]`）。
    pub tokens: Vec<String>,
    /// `weights[l][h][i][j]`：第 l 层第 h 个头里，查询 i 对键 j 的权重（每行之和为 1）。
    pub weights: Vec<Vec<Vec<Vec<f64>>>>,
    /// 机器。
    pub machine: String,
}

impl AttentionMaps {
    /// 层数。
    pub fn layers(&self) -> usize {
        self.weights.len()
    }

    /// 每层的头数。
    pub fn heads(&self) -> usize {
        self.weights.first().map_or(0, Vec::len)
    }

    /// 选中的层（从 0 数；空表示全部），每层一行、每个头一张图。层号越界时报错并说出有几层。
    pub fn figure(&self, layers: &[usize]) -> anyhow::Result<String> {
        let all: Vec<usize> = (0..self.layers()).collect();
        let chosen = if layers.is_empty() { &all[..] } else { layers };
        if let Some(&bad) = chosen.iter().find(|&&l| l >= self.layers()) {
            bail!(
                "--layers 里的第 {bad} 层不存在：这个模型有 {} 层（从 0 数到 {}）",
                self.layers(),
                self.layers() - 1
            );
        }
        let panels = chosen
            .iter()
            .flat_map(|&l| {
                (self.weights[l].iter().enumerate())
                    .map(move |(h, w)| (format!("第 {l} 层 · 头 {h}"), w.clone()))
            })
            .collect();
        // 每个记号约 14 像素，刻度里的字才不挤在一起
        let cell = (14 * self.tokens.len() as u32).clamp(150, 360);
        HeatmapGrid {
            title: format!(
                "“{}”的注意力权重（行：查询，列：键；白 0，深蓝 1）",
                self.text
            ),
            panels,
            columns: self.heads().max(1),
            range: (0.0, 1.0),
            colormap: ColorMap::Sequential,
            row_labels: self.tokens.clone(),
            col_labels: self.tokens.clone(),
        }
        .to_svg(cell)
    }
}

/// `attention` 命令的参数。
pub struct AttentionJob {
    /// 模型目录。
    pub model_dir: PathBuf,
    /// 适配器目录（先合并进基座）。
    pub adapter: Option<PathBuf>,
    /// 文本。
    pub text: String,
    /// 最大长度（记号数）。
    pub max_len: Option<usize>,
}

impl DeviceTask for AttentionJob {
    type Output = anyhow::Result<AttentionMaps>;
    fn run<D: Kernels<f32> + Kernels<f64>>(self, dev: D) -> Self::Output {
        if self.text.trim().is_empty() {
            bail!("没有给出要看的文本");
        }
        let dir = self.model_dir.clone();
        dispatch_dir(
            &dir,
            AttentionOn {
                job: self,
                dev: &dev,
            },
        )?
    }
}

struct AttentionOn<'a, D> {
    job: AttentionJob,
    dev: &'a D,
}

impl<D: Kernels<f32>> WidthTask for AttentionOn<'_, D> {
    type Output = anyhow::Result<AttentionMaps>;
    fn run<const M: usize, const H: usize, const F: usize>(self) -> Self::Output {
        let job = self.job;
        let config_path = job.model_dir.join("config.json");
        let (_, dims) = HfBertConfig::read(&config_path)?.check(&config_path)?;
        let max_len = resolve_max_len(job.max_len, &dims, &job.model_dir)?;
        let model: BertDir<M, H, F, f32, D> = load_dir(self.dev, &job.model_dir)?;
        let params = match &job.adapter {
            Some(dir) => PeftBert::from_pretrained(model.params.clone(), model.config, dir)
                .with_context(|| format!("读适配器 {}", dir.display()))?
                .merge_and_unload(),
            None => model.params.clone(),
        };
        let ids = model.tokenizer.encode(&job.text, None, max_len)?.ids;
        let tokens = (ids.iter())
            .map(|&id| {
                model
                    .tokenizer
                    .token(id)
                    .unwrap_or_else(|| format!("#{id}"))
            })
            .collect();
        let batch = make_batch::<f32, D>(self.dev, &[(&ids[..], 0)]);
        let maps = params.attention_maps(&model.config, batch.tokens, None, &batch.mask)?;
        let weights = maps
            .iter()
            .map(|t| {
                let (_, heads, n, _) = *t.shape();
                let v = t.as_vec();
                (0..heads)
                    .map(|h| {
                        (0..n)
                            .map(|i| (0..n).map(|j| v[(h * n + i) * n + j] as f64).collect())
                            .collect()
                    })
                    .collect()
            })
            .collect();
        Ok(AttentionMaps {
            model: job.model_dir.display().to_string(),
            adapter: job.adapter.as_ref().map(|d| d.display().to_string()),
            text: job.text,
            tokens,
            weights,
            machine: super::machine_description(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bert::hf::fixtures_dir;

    fn run(adapter: Option<&str>) -> AttentionMaps {
        AttentionJob {
            model_dir: fixtures_dir().join("tiny-bert"),
            adapter: adapter.map(|a| fixtures_dir().join(a)),
            text: "书很好".into(),
            max_len: None,
        }
        .run(dfdx::tensor::Cpu::default())
        .unwrap()
    }

    /// 每层每个头一张 (S, S) 的图，每行是一个概率分布；合并进适配器之后注意力变了；层号越界是中文错误。
    #[test]
    fn attention_maps_are_distributions_per_layer_and_head() {
        let base = run(None);
        assert_eq!((base.layers(), base.heads()), (2, 4));
        let n = base.tokens.len();
        assert_eq!(base.tokens.first().map(String::as_str), Some("[CLS]"));
        assert_eq!(base.tokens.last().map(String::as_str), Some("[SEP]"));
        for layer in &base.weights {
            for head in layer {
                assert_eq!(head.len(), n);
                for row in head {
                    assert_eq!(row.len(), n);
                    assert!(row.iter().all(|&w| (0.0..=1.0).contains(&w)));
                    assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-5);
                }
            }
        }
        // 适配器改了 query、value：注意力（由 q·k 决定）随之改变
        let tuned = run(Some("tiny-bert-rust-adapter"));
        assert_eq!(tuned.tokens, base.tokens);
        assert_ne!(tuned.weights, base.weights);
        let svg = base.figure(&[1]).unwrap();
        assert!(svg.contains("第 1 层 · 头 3") && !svg.contains("第 0 层 · 头 0"));
        let err = base.figure(&[2]).unwrap_err().to_string();
        assert!(
            err.contains("第 2 层不存在") && err.contains("2 层"),
            "{err}"
        );
    }
}

/// `attention` 的参数。
#[derive(clap::Args, Debug)]
pub struct AttentionArgs {
    /// 模型：本地目录，或 Hub 上的名字
    #[arg(long, value_name = "目录或名字")]
    pub model: String,
    /// PEFT 格式的适配器目录：先合并进基座，看微调之后的注意力
    #[arg(long, value_name = "目录")]
    pub adapter: Option<PathBuf>,
    /// 只画这些层（从 0 数，逗号分隔；默认全部）
    #[arg(long, value_delimiter = ',', value_name = "层")]
    pub layers: Vec<usize>,
    /// 图写到哪里
    #[arg(long, default_value = "attention.svg", value_name = "文件")]
    pub out: PathBuf,
    #[command(flatten)]
    pub record: super::args::Record,
    /// 最大长度（记号数；默认 128，模型的位置更少时取 max_position_embeddings）
    #[arg(long, value_name = "长度")]
    pub max_len: Option<usize>,
    #[command(flatten)]
    pub device: super::args::OnDevice,
    /// 文本
    #[arg(value_name = "文本")]
    pub text: String,
}

/// `cargo run --release -- attention`：画热力图、打印每个头里 `[CLS]` 最关注的记号。
pub fn run(a: AttentionArgs) -> anyhow::Result<()> {
    let job = AttentionJob {
        model_dir: crate::bert::hub::resolve_model(&a.model)?,
        adapter: a.adapter,
        text: a.text,
        max_len: a.max_len,
    };
    let maps = a.device.run(0, job)??;
    // 先画图（层号不对时在这里报错），再写文件
    let svg = maps.figure(&a.layers)?;
    crate::io::write_atomic(&a.out, svg.as_bytes())?;
    println!("记号：{}", maps.tokens.join(" "));
    for (l, heads) in maps.weights.iter().enumerate() {
        let cls: Vec<String> = (heads.iter().enumerate())
            .map(|(h, w)| {
                let (j, p) = (w[0].iter().enumerate())
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .expect("至少一个记号");
                format!("头 {h} → {} {p:.2}", maps.tokens[j])
            })
            .collect();
        println!("第 {l} 层，[CLS] 最关注：{}", cls.join("，"));
    }
    println!("图写入 {}", a.out.display());
    a.record.save(&maps)
}
