//! 书中每一张图的登记表。
//!
//! 每张图是一个 [`Figure`]：文件名加一个渲染函数。`cargo run --release -- figures`
//! 按这张表把所有图写进 `src/figures/`；测试 `tests/figures.rs` 重新渲染并与提交的文件
//! 逐字节比较，代码改了而图没更新就会失败。

use std::path::{Path, PathBuf};

use dfdx::prelude::*;

use crate::basics::autodiff::gelu_gradient_table;
use crate::plot::{Heatmap, LineChart, Series};
use crate::transformer::pe_numerics::{pe_dot, pe_numerics};
use crate::transformer::positional::{frequencies_exp_log, sinusoidal_table};

/// 一张图。
pub struct Figure {
    /// `src/figures/` 下的文件名。
    pub file: &'static str,
    /// 一句话说明（命令行里显示）。
    pub about: &'static str,
    /// 计算数据并渲染成 SVG。
    pub render: fn() -> anyhow::Result<String>,
}

/// 书中的全部插图。
pub fn all() -> Vec<Figure> {
    vec![
        Figure {
            file: "part0-gelu-grad.svg",
            about: "第 0 部分：GELU 的导数，dfdx accurate_gelu 的反向与精确值",
            render: gelu_grad_figure,
        },
        Figure {
            file: "part1-pe-heatmap.svg",
            about: "1.3 节：位置编码矩阵（64 个位置 × 64 维）",
            render: pe_heatmap_figure,
        },
        Figure {
            file: "part1-pe-similarity.svg",
            about: "1.3 节：位置编码向量的点积随距离的变化",
            render: pe_similarity_figure,
        },
        Figure {
            file: "part1-pe-numerics.svg",
            about: "1.3 节：exp(log) 与 pow 两种写法在 f32 下的误差",
            render: pe_numerics_figure,
        },
    ]
}

/// 提交在书里的插图目录：`<仓库>/src/figures`。
pub fn book_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("src")
        .join("figures")
}

/// GELU 梯度实验的取样点：[-4, 4]，步长 0.05。
pub fn gelu_grad_xs() -> Vec<f64> {
    (-80..=80).map(|i| i as f64 * 0.05).collect()
}

fn gelu_grad_figure() -> anyhow::Result<String> {
    let dev = Cpu::default();
    let table = gelu_gradient_table(&dev, &gelu_grad_xs());
    let series =
        |name: &str, dashed, y: fn(&crate::basics::autodiff::GeluGradPoint) -> f64| Series {
            name: name.into(),
            points: table.iter().map(|p| (p.x, y(p))).collect(),
            dashed,
        };
    LineChart {
        title: "GELU 的导数：dfdx 0.13 accurate_gelu 的反向传播与精确值".into(),
        x_label: "x".into(),
        y_label: "d GELU / dx".into(),
        series: vec![
            series("dfdx accurate_gelu 的反向（tape）", false, |p| {
                p.dfdx_backward
            }),
            series("精确值 Φ(x) + x·φ(x)", false, |p| p.exact),
            series("对前向做中心差分", true, |p| p.numeric),
        ],
    }
    .to_svg()
}

/// 位置编码热力图的尺寸：64 个位置 × 64 维。
pub const PE_HEATMAP: (usize, usize) = (64, 64);

fn pe_heatmap_figure() -> anyhow::Result<String> {
    let (len, d) = PE_HEATMAP;
    let table = sinusoidal_table(len, &frequencies_exp_log(d));
    Heatmap {
        title: "正弦位置编码 PE[pos, j]（蓝 −1，白 0，红 +1）".into(),
        x_label: "维度 j（偶数 sin，奇数 cos）".into(),
        y_label: "位置 pos".into(),
        values: table
            .chunks(d)
            .map(|row| row.iter().map(|&v| v as f64).collect())
            .collect(),
        range: (-1.0, 1.0),
        row_labels: vec![],
        col_labels: vec![],
    }
    .to_svg()
}

/// 点积图的设置：d_model = 128，参考位置 0、40、80，横轴 0..160。
pub const PE_SIMILARITY: (usize, [usize; 3], usize) = (128, [0, 40, 80], 160);

fn pe_similarity_figure() -> anyhow::Result<String> {
    let (d, refs, len) = PE_SIMILARITY;
    let table = sinusoidal_table(len, &frequencies_exp_log(d));
    let series = refs
        .iter()
        .map(|&p| Series {
            name: format!("PE({p})·PE(pos)"),
            points: (0..len)
                .map(|q| (q as f64, pe_dot(&table, d, p, q) as f64))
                .collect(),
            dashed: false,
        })
        .collect();
    LineChart {
        title: format!("位置编码的点积只依赖距离（d_model = {d}）"),
        x_label: "位置 pos".into(),
        y_label: "点积".into(),
        series,
    }
    .to_svg()
}

/// 数值实验的设置：d_model = 512，前 8192 个位置，每 128 个位置取一点。
pub const PE_NUMERICS: (usize, usize, usize) = (512, 8192, 128);

fn pe_numerics_figure() -> anyhow::Result<String> {
    let (d, len, stride) = PE_NUMERICS;
    let n = pe_numerics(d, len, stride);
    let curve = |pick: fn(&(usize, f64, f64, f64)) -> f64| {
        n.curve.iter().map(|c| (c.0 as f64, pick(c))).collect()
    };
    LineChart {
        title: format!("位置编码在 f32 下的误差随位置增长（d_model = {d}，与 f64 真值比较）"),
        x_label: "位置 pos".into(),
        y_label: "该行编码的最大绝对误差".into(),
        series: vec![
            Series {
                name: "频率用 exp(log) 算（角度在 f64 下）".into(),
                points: curve(|c| c.1),
                dashed: false,
            },
            Series {
                name: "频率用 pow 算（角度在 f64 下）".into(),
                points: curve(|c| c.2),
                dashed: false,
            },
            Series {
                name: "全程 f32（exp(log)，角度与 sin/cos 也在 f32）".into(),
                points: curve(|c| c.3),
                dashed: false,
            },
        ],
    }
    .to_svg()
}
