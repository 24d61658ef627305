//! 带误差棒的折线图（附录 A 的学习曲线）：横轴可取对数，每个点画均值与 ± 标准差。

use plotters::prelude::*;

use super::{tick, FONT, PALETTE, SIZE};

/// 一条带误差棒的折线。
#[derive(Debug, Clone, Default)]
pub struct ErrorSeries {
    /// 图例中的名字。
    pub name: String,
    /// 数据点 (x, 均值, 标准差)。
    pub points: Vec<(f64, f64, f64)>,
    /// 调色板中的颜色序号。
    pub color: usize,
}

/// 一张带误差棒的折线图。
#[derive(Debug, Clone)]
pub struct ErrorBarChart {
    /// 标题。
    pub title: String,
    /// 横轴说明。
    pub x_label: String,
    /// 纵轴说明。
    pub y_label: String,
    /// 各条折线。
    pub series: Vec<ErrorSeries>,
    /// 横轴取对数（横坐标必须都大于 0）。
    pub log_x: bool,
}

impl ErrorBarChart {
    /// 渲染为 SVG 文本。
    pub fn to_svg(&self) -> anyhow::Result<String> {
        let points = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y, e) in points {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y - e);
            y1 = y1.max(y + e);
        }
        if x0 > x1 {
            anyhow::bail!("折线图“{}”没有数据点", self.title);
        }
        if self.log_x && x0 <= 0.0 {
            anyhow::bail!("折线图“{}”的横轴取对数，横坐标必须大于 0", self.title);
        }
        let pad = ((y1 - y0) * 0.06).max(1e-9);
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
            root.fill(&WHITE)?;
            let mut builder = ChartBuilder::on(&root);
            builder
                .caption(&self.title, (FONT, 22))
                .margin(16)
                .margin_right(32)
                .x_label_area_size(48)
                .y_label_area_size(64);
            if self.log_x {
                // 左右各留一点边，端点的误差棒不贴着坐标轴
                let range = (x0 / 1.25..x1 * 1.25).log_scale();
                self.draw(builder.build_cartesian_2d(range, y0 - pad..y1 + pad)?)?;
            } else {
                let px = ((x1 - x0) * 0.04).max(1e-9);
                self.draw(builder.build_cartesian_2d(x0 - px..x1 + px, y0 - pad..y1 + pad)?)?;
            }
            root.present()?;
        }
        Ok(svg)
    }

    fn draw<'a, X>(
        &self,
        mut chart: ChartContext<
            'a,
            SVGBackend<'a>,
            Cartesian2d<X, plotters::coord::types::RangedCoordf64>,
        >,
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
        for s in &self.series {
            let color = PALETTE[s.color % PALETTE.len()];
            let style = color.stroke_width(2);
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().map(|&(x, y, _)| (x, y)),
                    style,
                ))?
                .label(&s.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
            chart.draw_series(s.points.iter().filter(|p| p.2 > 0.0).map(|&(x, y, e)| {
                ErrorBar::new_vertical(x, y - e, y, y + e, color.stroke_width(1), 8)
            }))?;
            chart.draw_series(
                s.points
                    .iter()
                    .map(|&(x, y, _)| Circle::new((x, y), 4, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(180, 180, 180))
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
        Ok(())
    }
}
