//! 书中插图的绘制：plotters 的 SVG 后端，一个通用的折线图。
//!
//! 图是确定性的：同样的数据总是产生逐字节相同的 SVG（测试 `tests/figures.rs` 检查
//! 提交到 `src/figures/` 的图与代码重新生成的一致）。
//! 文字交给浏览器渲染，字体栈 [`FONT`] 在常见系统上都能找到中文字体。

mod errorbars;
pub use errorbars::{ErrorBarChart, ErrorSeries};

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// SVG 中的字体栈：依次尝试常见的中文无衬线字体，最后退回浏览器默认的 sans-serif。
pub const FONT: &str =
    "Noto Sans CJK SC, Source Han Sans SC, PingFang SC, Microsoft YaHei, sans-serif";

/// 图的默认尺寸（像素）。
pub const SIZE: (u32, u32) = (760, 460);

/// 色盲友好的调色板（Okabe–Ito），深浅主题下都清晰。
pub const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
];

/// 一条折线。
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// 图例中的名字。
    pub name: String,
    /// 数据点 (x, y)。
    pub points: Vec<(f64, f64)>,
    /// 是否画成虚线（用于“参考值”一类的线）。
    pub dashed: bool,
    /// 调色板中的颜色序号；为 `None` 时按折线的顺序取色。
    pub color: Option<usize>,
}

/// 一张折线图。
#[derive(Debug, Clone)]
pub struct LineChart {
    /// 标题。
    pub title: String,
    /// 横轴说明。
    pub x_label: String,
    /// 纵轴说明。
    pub y_label: String,
    /// 各条折线，颜色按顺序取自 [`PALETTE`]。
    pub series: Vec<Series>,
}

impl LineChart {
    /// 渲染为 SVG 文本。
    pub fn to_svg(&self) -> anyhow::Result<String> {
        let (x_range, y_range) = self.ranges();
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(&self.title, (FONT, 22))
                .margin(16)
                .x_label_area_size(48)
                .y_label_area_size(64)
                .build_cartesian_2d(x_range, y_range)?;
            chart
                .configure_mesh()
                .x_desc(&self.x_label)
                .y_desc(&self.y_label)
                .label_style((FONT, 15))
                .axis_desc_style((FONT, 16))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()?;
            for (i, s) in self.series.iter().enumerate() {
                let style = PALETTE[s.color.unwrap_or(i) % PALETTE.len()].stroke_width(2);
                let points = s.points.iter().copied();
                let drawn = if s.dashed {
                    chart.draw_series(DashedLineSeries::new(points, 8, 5, style))?
                } else {
                    chart.draw_series(LineSeries::new(points, style))?
                };
                drawn
                    .label(&s.name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
            }
            chart
                .configure_series_labels()
                .label_font((FONT, 15))
                .background_style(WHITE.mix(0.9))
                .border_style(RGBColor(180, 180, 180))
                .position(SeriesLabelPosition::UpperLeft)
                .draw()?;
            root.present()?;
        }
        Ok(svg)
    }

    /// 坐标范围：包住所有点，纵向留 5% 的边。
    fn ranges(&self) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
        let points = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in points {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if x0 > x1 {
            return (0.0..1.0, 0.0..1.0);
        }
        let pad = ((y1 - y0) * 0.05).max(1e-9);
        (x0..x1, (y0 - pad)..(y1 + pad))
    }
}

/// 一张热力图：`values[row][col]`，行自上而下、列自左而右。
#[derive(Debug, Clone)]
pub struct Heatmap {
    /// 标题。
    pub title: String,
    /// 横轴（列）说明。
    pub x_label: String,
    /// 纵轴（行）说明。
    pub y_label: String,
    /// 数据，每行长度相同。
    pub values: Vec<Vec<f64>>,
    /// 颜色映射的范围 (最小, 最大)。
    pub range: (f64, f64),
    /// 色标。
    pub colormap: ColorMap,
    /// 行、列的刻度文字（为空时用下标）。
    pub row_labels: Vec<String>,
    /// 列的刻度文字。
    pub col_labels: Vec<String>,
    /// 在每格中央写出数值，保留几位小数（`None`：不写；格子少时才用）。
    pub annotate: Option<usize>,
}

/// 热力图的色标。
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorMap {
    /// 蓝—白—红，适合有正有负的数据。
    Diverging,
    /// 白—深蓝，适合非负的数据（如注意力权重）。
    Sequential,
}

impl ColorMap {
    /// 位置 `t`（0 到 1，超出的截到两端）上的颜色。
    pub fn color(self, t: f64) -> RGBColor {
        match self {
            ColorMap::Diverging => diverging(t),
            ColorMap::Sequential => sequential(t),
        }
    }
}

/// 顺序色标：0 为白，1 为深蓝。
pub fn sequential(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let mix = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0))
}

/// 发散色标：最小值为蓝、中点为白、最大值为红。
pub fn diverging(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let (lo, mid, hi) = (
        (33.0, 102.0, 172.0),
        (247.0, 247.0, 247.0),
        (178.0, 24.0, 43.0),
    );
    let mix = |a: f64, b: f64, u: f64| (a + (b - a) * u).round() as u8;
    if t < 0.5 {
        let u = t * 2.0;
        RGBColor(
            mix(lo.0, mid.0, u),
            mix(lo.1, mid.1, u),
            mix(lo.2, mid.2, u),
        )
    } else {
        let u = (t - 0.5) * 2.0;
        RGBColor(
            mix(mid.0, hi.0, u),
            mix(mid.1, hi.1, u),
            mix(mid.2, hi.2, u),
        )
    }
}

impl Heatmap {
    /// 渲染为 SVG 文本。格子 (r, c) 占 [c − ½, c + ½] × [r − ½, r + ½]，整数坐标落在格子中央。
    pub fn to_svg(&self) -> anyhow::Result<String> {
        let rows = self.values.len();
        let cols = self.values.first().map_or(0, Vec::len);
        let labelled = !self.row_labels.is_empty() || !self.col_labels.is_empty();
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(&self.title, (FONT, 20))
                .margin(16)
                .x_label_area_size(56)
                .y_label_area_size(64)
                .build_cartesian_2d(-0.5..cols as f64 - 0.5, rows as f64 - 0.5..-0.5)?;
            let mut mesh = chart.configure_mesh();
            mesh.disable_mesh()
                .x_desc(&self.x_label)
                .y_desc(&self.y_label)
                .label_style((FONT, 14))
                .axis_desc_style((FONT, 15))
                .x_label_formatter(&|v| format!("{}", v.round() as i64))
                .y_label_formatter(&|v| format!("{}", v.round() as i64));
            if labelled {
                // 有文字标签时不用 plotters 的数值刻度，下面逐格写在格子中央
                mesh.x_labels(0).y_labels(0);
            } else {
                mesh.x_labels(cols.min(16)).y_labels(rows.min(16));
            }
            mesh.draw()?;
            let (lo, hi) = self.range;
            let colormap = self.colormap;
            chart.draw_series(self.values.iter().enumerate().flat_map(|(r, row)| {
                row.iter().enumerate().map(move |(c, &v)| {
                    let t = (v - lo) / (hi - lo);
                    let color = colormap.color(t);
                    let (x, y) = (c as f64, r as f64);
                    Rectangle::new([(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)], color.filled())
                })
            }))?;
            let style = |pos| TextStyle::from((FONT, 14).into_font()).pos(pos);
            for (c, text) in self.col_labels.iter().enumerate() {
                let (px, py) = chart.backend_coord(&(c as f64, rows as f64 - 0.5));
                let pos = Pos::new(HPos::Center, VPos::Top);
                root.draw(&Text::new(text.clone(), (px, py + 6), style(pos)))?;
            }
            for (r, text) in self.row_labels.iter().enumerate() {
                let (px, py) = chart.backend_coord(&(-0.5, r as f64));
                let pos = Pos::new(HPos::Right, VPos::Center);
                root.draw(&Text::new(text.clone(), (px - 6, py), style(pos)))?;
            }
            if let Some(decimals) = self.annotate {
                for (r, row) in self.values.iter().enumerate() {
                    for (c, &v) in row.iter().enumerate() {
                        // 深色的格子上用白字
                        let color = if (v - lo) / (hi - lo) > 0.55 {
                            WHITE
                        } else {
                            BLACK
                        };
                        let pos = Pos::new(HPos::Center, VPos::Center);
                        let text = format!("{v:.decimals$}");
                        chart.draw_series(std::iter::once(Text::new(
                            text,
                            (c as f64, r as f64),
                            style(pos).color(&color),
                        )))?;
                    }
                }
            }
            root.present()?;
        }
        Ok(svg)
    }
}

/// 一组同样大小的热力图排成网格（如每层、每个头的注意力图）：共用一个色标与一组行、列的刻度文字，
/// 刻度只写在最左一列与最下一行。
#[derive(Debug, Clone)]
pub struct HeatmapGrid {
    /// 总标题。
    pub title: String,
    /// 每格一张图：(小标题, 数据)，按行优先排；数据每行长度相同。
    pub panels: Vec<(String, Vec<Vec<f64>>)>,
    /// 每行几张。
    pub columns: usize,
    /// 颜色映射的范围 (最小, 最大)。
    pub range: (f64, f64),
    /// 色标。
    pub colormap: ColorMap,
    /// 每张图的行刻度（最左一列写出）。
    pub row_labels: Vec<String>,
    /// 每张图的列刻度（最下一行写出）。
    pub col_labels: Vec<String>,
}

impl HeatmapGrid {
    /// 渲染为 SVG：每张图 `cell` 像素见方（不含刻度）。
    pub fn to_svg(&self, cell: u32) -> anyhow::Result<String> {
        anyhow::ensure!(
            !self.panels.is_empty() && self.columns > 0,
            "热力图网格是空的"
        );
        let rows = self.panels.len().div_ceil(self.columns) as u32;
        let cols = self.columns as u32;
        let (left, bottom, top, gap) = (56u32, 48u32, 44u32, 22u32);
        let width = left + cols * (cell + 8) + 16;
        let height = top + rows * (cell + gap) + bottom;
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
            root.fill(&WHITE)?;
            root.draw(&Text::new(
                self.title.clone(),
                (width as i32 / 2, 12),
                TextStyle::from((FONT, 18).into_font()).pos(Pos::new(HPos::Center, VPos::Top)),
            ))?;
            let (lo, hi) = self.range;
            let small = |pos| TextStyle::from((FONT, 11).into_font()).pos(pos);
            for (k, (name, values)) in self.panels.iter().enumerate() {
                let (r, c) = ((k as u32) / cols, (k as u32) % cols);
                let x0 = (left + c * (cell + 8)) as i32;
                let y0 = (top + r * (cell + gap) + gap) as i32;
                let n = values.len().max(1) as f64;
                let m = values.first().map_or(1, Vec::len).max(1) as f64;
                let (w, h) = (cell as f64 / m, cell as f64 / n);
                root.draw(&Text::new(
                    name.clone(),
                    (x0 + cell as i32 / 2, y0 - 4),
                    TextStyle::from((FONT, 12).into_font())
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                ))?;
                for (i, row) in values.iter().enumerate() {
                    for (j, &v) in row.iter().enumerate() {
                        let t = (v - lo) / (hi - lo);
                        let color = self.colormap.color(t);
                        let (px, py) = (x0 + (j as f64 * w) as i32, y0 + (i as f64 * h) as i32);
                        let (qx, qy) = (
                            x0 + ((j + 1) as f64 * w) as i32,
                            y0 + ((i + 1) as f64 * h) as i32,
                        );
                        root.draw(&Rectangle::new([(px, py), (qx, qy)], color.filled()))?;
                    }
                }
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell as i32, y0 + cell as i32)],
                    BLACK.mix(0.4).stroke_width(1),
                ))?;
                if c == 0 {
                    for (i, text) in self.row_labels.iter().enumerate() {
                        let y = y0 + ((i as f64 + 0.5) * h) as i32;
                        root.draw(&Text::new(
                            text.clone(),
                            (x0 - 4, y),
                            small(Pos::new(HPos::Right, VPos::Center)),
                        ))?;
                    }
                }
                let last_row = r == rows - 1 || k + (cols as usize) >= self.panels.len();
                if last_row {
                    for (j, text) in self.col_labels.iter().enumerate() {
                        let x = x0 + ((j as f64 + 0.5) * w) as i32;
                        root.draw(&Text::new(
                            text.clone(),
                            (x, y0 + cell as i32 + 4),
                            small(Pos::new(HPos::Center, VPos::Top)),
                        ))?;
                    }
                }
            }
            root.present()?;
        }
        Ok(svg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> LineChart {
        LineChart {
            title: "测试图".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![
                Series {
                    name: "平方".into(),
                    points: (0..5).map(|i| (i as f64, (i * i) as f64)).collect(),
                    ..Default::default()
                },
                Series {
                    name: "参考".into(),
                    points: vec![(0.0, 0.0), (4.0, 16.0)],
                    dashed: true,
                    color: None,
                },
            ],
        }
    }

    #[test]
    fn renders_deterministic_svg_with_chinese_text() {
        let a = chart().to_svg().unwrap();
        let b = chart().to_svg().unwrap();
        assert_eq!(a, b);
        assert!(a.starts_with("<svg"));
        assert!(a.contains("测试图") && a.contains("平方") && a.contains("参考"));
        assert!(a.contains("PingFang SC"));
    }

    #[test]
    fn heatmap_colors_span_the_range() {
        assert_eq!(diverging(0.0), RGBColor(33, 102, 172));
        assert_eq!(diverging(0.5), RGBColor(247, 247, 247));
        assert_eq!(diverging(1.0), RGBColor(178, 24, 43));
        let h = Heatmap {
            title: "热力图".into(),
            x_label: "列".into(),
            y_label: "行".into(),
            values: vec![vec![-1.0, 0.0], vec![0.0, 1.0]],
            range: (-1.0, 1.0),
            colormap: ColorMap::Diverging,
            row_labels: vec![],
            col_labels: vec![],
            annotate: None,
        };
        let svg = h.to_svg().unwrap();
        assert!(
            svg.contains("#2166AC") && svg.contains("#B2182B"),
            "两端的颜色都应出现"
        );
        // plotters 把文字单独写一行：<text …>\n-1.0\n</text>
        let cell = |svg: &str, v: &str| svg.contains(&format!("\n{v}\n</text>"));
        assert!(!cell(&svg, "-1.0"), "不要求时不写数值");
        let annotated = Heatmap {
            annotate: Some(1),
            ..h
        }
        .to_svg()
        .unwrap();
        assert!(cell(&annotated, "-1.0") && cell(&annotated, "1.0") && cell(&annotated, "0.0"));
    }
}

/// 散点图中的一个点：均值与上下的误差（例如几个种子的标准差）。
#[derive(Debug, Clone)]
pub struct Point {
    /// 点旁边写的文字。
    pub label: String,
    /// 横坐标。
    pub x: f64,
    /// 纵坐标（均值）。
    pub y: f64,
    /// 误差棒的半长（0 则不画）。
    pub err: f64,
    /// 调色板中的颜色序号（同一类的点用同一种颜色）。
    pub color: usize,
}

/// 带误差棒、可取对数横轴的散点图（每个点旁写上名字）。
#[derive(Debug, Clone)]
pub struct ScatterChart {
    /// 标题。
    pub title: String,
    /// 横轴说明。
    pub x_label: String,
    /// 纵轴说明。
    pub y_label: String,
    /// 数据点。
    pub points: Vec<Point>,
    /// 横轴取对数（横坐标必须都大于 0）。
    pub log_x: bool,
}

impl ScatterChart {
    /// 渲染为 SVG 文本。
    pub fn to_svg(&self) -> anyhow::Result<String> {
        if self.points.is_empty() {
            anyhow::bail!("散点图“{}”没有数据点", self.title);
        }
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for p in &self.points {
            x0 = x0.min(p.x);
            x1 = x1.max(p.x);
            y0 = y0.min(p.y - p.err);
            y1 = y1.max(p.y + p.err);
        }
        let pad_y = ((y1 - y0) * 0.08).max(1e-9);
        let (y0, y1) = (y0 - pad_y, y1 + pad_y);
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
            root.fill(&WHITE)?;
            let mut builder = ChartBuilder::on(&root);
            builder
                .caption(&self.title, (FONT, 22))
                .margin(16)
                .margin_right(48)
                .x_label_area_size(48)
                .y_label_area_size(64);
            if self.log_x {
                if x0 <= 0.0 {
                    anyhow::bail!("散点图“{}”的横轴取对数，横坐标必须大于 0", self.title);
                }
                // 左右各留半个数量级的边
                let chart = builder.build_cartesian_2d((x0 / 3.0..x1 * 3.0).log_scale(), y0..y1)?;
                self.draw_points(chart, &root)?;
            } else {
                let pad_x = ((x1 - x0) * 0.08).max(1e-9);
                let chart = builder.build_cartesian_2d(x0 - pad_x..x1 + pad_x, y0..y1)?;
                self.draw_points(chart, &root)?;
            }
            root.present()?;
        }
        Ok(svg)
    }

    fn draw_points<'a, X>(
        &self,
        mut chart: ChartContext<
            'a,
            SVGBackend<'a>,
            Cartesian2d<X, plotters::coord::types::RangedCoordf64>,
        >,
        root: &DrawingArea<SVGBackend<'a>, plotters::coord::Shift>,
    ) -> anyhow::Result<()>
    where
        X: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
    {
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .x_label_formatter(&|v| tick(*v))
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 16))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        // 先画点与误差棒，记下它们占的像素框；再给每个标签挑一个不压住别的点、误差棒和标签的位置
        let mut taken: Vec<[i32; 4]> = Vec::new();
        for p in &self.points {
            let (px, py) = chart.backend_coord(&(p.x, p.y));
            let (_, top) = chart.backend_coord(&(p.x, p.y + p.err));
            let (_, bottom) = chart.backend_coord(&(p.x, p.y - p.err));
            taken.push([px - 6, top.min(py - 6), px + 6, bottom.max(py + 6)]);
        }
        for p in &self.points {
            let color = PALETTE[p.color % PALETTE.len()];
            if p.err > 0.0 {
                chart.draw_series(std::iter::once(ErrorBar::new_vertical(
                    p.x,
                    p.y - p.err,
                    p.y,
                    p.y + p.err,
                    color.stroke_width(2),
                    10,
                )))?;
            }
            chart.draw_series(std::iter::once(Circle::new((p.x, p.y), 5, color.filled())))?;
        }
        for p in &self.points {
            let (px, py) = chart.backend_coord(&(p.x, p.y));
            let (w, h) = (text_width(&p.label, 14), 16);
            // 候选：右、右上、右下、左、左上、左下
            let candidates = [
                (px + 9, py, HPos::Left),
                (px + 9, py - 13, HPos::Left),
                (px + 9, py + 13, HPos::Left),
                (px - 9, py, HPos::Right),
                (px - 9, py - 13, HPos::Right),
                (px - 9, py + 13, HPos::Right),
            ];
            let boxed = |(x, y, hpos): (i32, i32, HPos)| {
                let left = if matches!(hpos, HPos::Left) { x } else { x - w };
                [left, y - h / 2, left + w, y + h / 2]
            };
            let overlaps = |b: [i32; 4]| {
                taken
                    .iter()
                    .any(|t| b[0] < t[2] && t[0] < b[2] && b[1] < t[3] && t[1] < b[3])
            };
            let chosen = candidates
                .iter()
                .copied()
                .find(|&c| !overlaps(boxed(c)))
                .unwrap_or(candidates[0]);
            taken.push(boxed(chosen));
            let style =
                TextStyle::from((FONT, 14).into_font()).pos(Pos::new(chosen.2, VPos::Center));
            root.draw(&Text::new(p.label.clone(), (chosen.0, chosen.1), style))?;
        }
        Ok(())
    }
}

/// 估计一段文字的像素宽度：中文等宽字符约一个字号宽，ASCII 约 0.55 个字号。
fn text_width(text: &str, size: i32) -> i32 {
    text.chars()
        .map(|c| if c.is_ascii() { size * 55 / 100 } else { size })
        .sum()
}

/// 刻度文字：整数按千位加逗号（100,000），其余保留有效的小数位。
fn tick(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        let digits = format!("{}", v.abs() as u64);
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 {
            out.insert(0, '-');
        }
        out
    } else {
        format!("{v}")
    }
}
