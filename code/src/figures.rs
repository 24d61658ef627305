//! 书中每一张图的登记表。
//!
//! 每张图是一个 [`Figure`]：文件名加一个渲染函数。`cargo run --release -- figures`
//! 按这张表把所有图写进 `src/figures/`；测试 `tests/figures.rs` 重新渲染并与提交的文件
//! 逐字节比较，代码改了而图没更新就会失败。

use std::path::{Path, PathBuf};

use dfdx::prelude::*;

use crate::basics::autodiff::gelu_gradient_table;
use crate::plot::{LineChart, Series};

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
    vec![Figure {
        file: "part0-gelu-grad.svg",
        about: "第 0 部分：GELU 的导数，dfdx accurate_gelu 的反向与精确值",
        render: gelu_grad_figure,
    }]
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
