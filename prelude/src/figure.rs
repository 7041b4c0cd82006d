//! Figures in evcxr: an [`Svg`] (and the chart values that render to one) is shown inline as
//! `text/html` holding the `<svg>` element, as plotters' own `evcxr_figure` does.

use tunelab::viz::{Histogram, StackedBars, Svg};

use crate::display::Html;
use crate::html::escape;

impl Html for Svg {
    fn to_html(&self) -> String {
        format!("<div class=\"tunelab-figure\">{}</div>", self.as_str())
    }
}

/// A chart that could not be drawn shows why, instead of nothing.
fn figure_or_error(figure: tunelab::Result<Svg>) -> String {
    match figure {
        Ok(svg) => svg.to_html(),
        Err(e) => format!(
            "<pre style=\"color:#b00\">figure not drawn: {}</pre>",
            escape(&e.to_string())
        ),
    }
}

impl Html for Histogram {
    fn to_html(&self) -> String {
        figure_or_error(self.to_svg())
    }
}

impl Html for StackedBars {
    fn to_html(&self) -> String {
        figure_or_error(self.to_svg())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunelab::viz::Bar;

    #[test]
    fn histogram_shows_as_inline_svg() {
        let h = Histogram::of_values("w", &[0.0, 0.5, 1.0], 4).unwrap();
        let html = h.to_html();
        assert!(html.starts_with("<div") && html.contains("<svg") && html.contains("</svg>"));
    }

    #[test]
    fn a_bad_chart_shows_its_error() {
        let bars = StackedBars {
            title: "t".into(),
            unit: "GB".into(),
            bars: vec![Bar {
                label: "a".into(),
                segments: vec![("x".into(), -1.0)],
            }],
        };
        let html = bars.to_html();
        assert!(
            html.contains("figure not drawn") && html.contains("`a`"),
            "{html}"
        );
        assert!(!html.contains("<svg"));
    }
}
