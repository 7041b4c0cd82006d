//! Stacked horizontal bars: one bar per item, one coloured segment per part, with the total at
//! the end of each bar — memory budgets side by side (slide 52) is the first use.

use plotters::prelude::*;
use serde::Serialize;

use super::{colour, draw_error, Svg};
use crate::memory::{gb, MemoryBudget};
use crate::{Error, Result};

/// One bar: a label and its parts, in drawing order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bar {
    /// Shown left of the bar.
    pub label: String,
    /// `(part name, value)`; parts with the same name share a colour across bars.
    pub segments: Vec<(String, f64)>,
}

impl Bar {
    /// Sum of the segments.
    pub fn total(&self) -> f64 {
        self.segments.iter().map(|(_, v)| v).sum()
    }
}

/// A stacked horizontal bar chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StackedBars {
    /// Caption.
    pub title: String,
    /// Unit of the values ("GB"), shown on the axis and after each total.
    pub unit: String,
    /// The bars, top to bottom.
    pub bars: Vec<Bar>,
}

impl StackedBars {
    /// Part names in order of first appearance: the legend, and the colour index of each part.
    pub fn parts(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for b in &self.bars {
            for (n, _) in &b.segments {
                if !names.contains(&n.as_str()) {
                    names.push(n);
                }
            }
        }
        names
    }

    /// Renders the chart. Errors: no bars, or a negative or non-finite value (naming the bar and
    /// the part).
    pub fn to_svg(&self) -> Result<Svg> {
        let figure = format!("bar chart `{}`", self.title);
        if self.bars.is_empty() {
            return Err(Error::Input(format!("{figure}: no bars to draw")));
        }
        for b in &self.bars {
            for (n, v) in &b.segments {
                if !(v.is_finite() && *v >= 0.0) {
                    return Err(Error::Input(format!(
                        "{figure}: bar `{}` part `{n}` must be a finite value >= 0, got {v}",
                        b.label
                    )));
                }
            }
        }
        let n = self.bars.len();
        // `(0..top).into_segmented()` has the segments 0..=top, one per bar, the first bar in
        // the top one; a lone bar gets an empty segment below it (a range 0..0 does not draw).
        let top = n.max(2) - 1;
        let peak = self.bars.iter().map(Bar::total).fold(0.0, f64::max);
        let x_max = if peak > 0.0 { peak * 1.25 } else { 1.0 };
        let label_chars = self.bars.iter().map(|b| b.label.len()).max().unwrap_or(0);
        let label_px = (label_chars as u32 * 7 + 16).clamp(60, 360);
        let size = (
            720 + label_px.saturating_sub(160),
            110 + 44 * (top + 1) as u32,
        );
        let parts = self.parts();
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
            root.fill(&WHITE).map_err(|e| draw_error(&figure, e))?;
            let labels: Vec<String> = self.bars.iter().map(|b| b.label.clone()).collect();
            let mut chart = ChartBuilder::on(&root)
                .caption(&self.title, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(label_px)
                .build_cartesian_2d(0.0..x_max, (0..top).into_segmented())
                .map_err(|e| draw_error(&figure, e))?;
            chart
                .configure_mesh()
                .disable_y_mesh()
                .light_line_style(WHITE)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .x_desc(self.unit.as_str())
                .y_labels(n)
                .y_label_formatter(&|v| match v {
                    SegmentValue::CenterOf(j) | SegmentValue::Exact(j) => top
                        .checked_sub(*j)
                        .and_then(|k| labels.get(k))
                        .cloned()
                        .unwrap_or_default(),
                    SegmentValue::Last => String::new(),
                })
                .draw()
                .map_err(|e| draw_error(&figure, e))?;
            for (p, part) in parts.iter().enumerate() {
                let mut rects = Vec::new();
                for (i, bar) in self.bars.iter().enumerate() {
                    // Segment 0 is at the bottom; the first bar goes on top.
                    let row = top - i;
                    let mut left = 0.0;
                    for (name, v) in &bar.segments {
                        if name == part && *v > 0.0 {
                            let mut r = Rectangle::new(
                                [
                                    (left, SegmentValue::Exact(row)),
                                    (left + v, SegmentValue::Exact(row + 1)),
                                ],
                                colour(p).filled(),
                            );
                            r.set_margin(8, 8, 0, 0);
                            rects.push(r);
                        }
                        left += v;
                    }
                }
                chart
                    .draw_series(rects)
                    .map_err(|e| draw_error(&figure, e))?
                    .label(*part)
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour(p).filled())
                    });
            }
            let unit = self.unit.clone();
            chart
                .draw_series(self.bars.iter().enumerate().map(|(i, b)| {
                    Text::new(
                        format!("  {:.1} {unit}", b.total()),
                        (b.total(), SegmentValue::CenterOf(top - i)),
                        ("sans-serif", 13).into_font().color(&BLACK).pos(
                            plotters::style::text_anchor::Pos::new(
                                plotters::style::text_anchor::HPos::Left,
                                plotters::style::text_anchor::VPos::Center,
                            ),
                        ),
                    )
                }))
                .map_err(|e| draw_error(&figure, e))?;
            super::legend(&mut chart, SeriesLabelPosition::LowerRight, &figure)?;
            root.present().map_err(|e| draw_error(&figure, e))?;
        }
        Ok(Svg(out))
    }
}

/// Memory budgets side by side, in GB (10⁹ bytes): one bar per budget (its title), one segment
/// per budget line; lines with the same name share a colour.
pub fn budget_chart(title: &str, budgets: &[MemoryBudget]) -> Result<Svg> {
    StackedBars {
        title: title.to_string(),
        unit: "GB".into(),
        bars: budgets
            .iter()
            .map(|b| Bar {
                label: b.title.clone(),
                segments: b
                    .lines
                    .iter()
                    .map(|l| (l.name.clone(), gb(l.bytes)))
                    .collect(),
            })
            .collect(),
    }
    .to_svg()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> StackedBars {
        StackedBars {
            title: "memory".into(),
            unit: "GB".into(),
            bars: vec![
                Bar {
                    label: "full".into(),
                    segments: vec![("weights".into(), 32.0), ("optimizer".into(), 64.0)],
                },
                Bar {
                    label: "lora".into(),
                    segments: vec![("weights".into(), 16.0), ("adapters".into(), 0.5)],
                },
            ],
        }
    }

    #[test]
    fn parts_keep_first_appearance_order() {
        assert_eq!(chart().parts(), vec!["weights", "optimizer", "adapters"]);
        assert_eq!(chart().bars[0].total(), 96.0);
    }

    #[test]
    fn svg_has_labels_totals_and_legend() {
        let svg = chart().to_svg().unwrap().0;
        assert!(svg.starts_with("<svg"));
        let texts = crate::viz::texts(&svg);
        for text in ["memory", "full", "lora", "96.0 GB", "16.5 GB", "adapters"] {
            assert!(
                texts.iter().any(|t| t == text),
                "missing {text} in {texts:?}"
            );
        }
        // The first bar is drawn on top: its `weights` segment (32 GB, the wider one) has the
        // smaller y.
        let attr = |tag: &str, name: &str| -> f64 {
            let at = tag.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
            tag[at..at + tag[at..].find('"').unwrap()].parse().unwrap()
        };
        let mut blue: Vec<(f64, f64)> = svg
            .split("<rect")
            .filter(|t| t.contains("fill=\"#1F77B4\"") && !t.contains("height=\"10\""))
            .map(|t| (attr(t, "width"), attr(t, "y")))
            .collect();
        blue.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(blue.len(), 2);
        assert!(blue[1].1 < blue[0].1, "{blue:?}");
        // Four segments in the bars plus three legend swatches, in the palette's colours.
        let blue = "#1F77B4";
        assert_eq!(
            svg.matches(blue).count(),
            3,
            "2 weights bars + 1 legend swatch"
        );
    }

    #[test]
    fn bad_values_name_the_bar_and_part() {
        let mut c = chart();
        c.bars[1].segments[1].1 = f64::NAN;
        let e = c.to_svg().unwrap_err().to_string();
        assert!(e.contains("`lora`") && e.contains("`adapters`"), "{e}");
        c.bars.clear();
        assert!(c.to_svg().is_err());
    }

    #[test]
    fn budgets_in_gb() {
        let a = MemoryBudget::new("a").with_line("weights", 4_000_000_000, "4 B × 1e9");
        let svg = budget_chart("budgets", &[a]).unwrap().0;
        assert!(crate::viz::texts(&svg).contains(&"4.0 GB".to_string()));
    }
}
