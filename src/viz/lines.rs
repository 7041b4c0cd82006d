//! Line charts: one or more series of (x, y) points — a loss curve growing cell by cell.

use plotters::prelude::*;

use super::{colour, draw_error, Svg, DEFAULT_SIZE};
use crate::{Error, Result};

/// Draws `series` (name, points) as lines with a legend, x and y axes labelled. Errors: no
/// series, an empty series, or a non-finite value (naming the series and the point).
pub fn line_chart(
    title: &str,
    (x_label, y_label): (&str, &str),
    series: &[(&str, &[(f64, f64)])],
) -> Result<Svg> {
    let figure = format!("line chart `{title}`");
    if series.is_empty() {
        return Err(Error::Input(format!("{figure}: no series to draw")));
    }
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for (name, pts) in series {
        if pts.is_empty() {
            return Err(Error::Input(format!(
                "{figure}: series `{name}` has no points"
            )));
        }
        for (i, &(x, y)) in pts.iter().enumerate() {
            if !(x.is_finite() && y.is_finite()) {
                return Err(Error::Input(format!(
                    "{figure}: series `{name}` point {i} is ({x}, {y}); values must be finite"
                )));
            }
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = if y1 > y0 { 0.05 * (y1 - y0) } else { 0.5 };
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, DEFAULT_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_error(&figure, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(|e| draw_error(&figure, e))?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()
            .map_err(|e| draw_error(&figure, e))?;
        for (i, (name, pts)) in series.iter().enumerate() {
            chart
                .draw_series(LineSeries::new(
                    pts.iter().copied(),
                    colour(i).stroke_width(2),
                ))
                .map_err(|e| draw_error(&figure, e))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], colour(i).stroke_width(2))
                });
        }
        super::legend(&mut chart, SeriesLabelPosition::UpperRight, &figure)?;
        root.present().map_err(|e| draw_error(&figure, e))?;
    }
    Ok(Svg(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_curve_draws_with_legend() {
        let loss: Vec<(f64, f64)> = (0..20)
            .map(|i| (i as f64, 3.0 * (-0.1 * i as f64).exp()))
            .collect();
        let svg = line_chart("loss", ("step", "loss"), &[("train", &loss)])
            .unwrap()
            .0;
        let texts = crate::viz::texts(&svg);
        assert!(texts.iter().any(|t| t == "train") && texts.iter().any(|t| t == "step"));
        assert!(svg.contains("<polyline") || svg.contains("<path"));
        let e = line_chart("l", ("x", "y"), &[("bad", &[(0.0, f64::NAN)])])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`bad`") && e.contains("point 0"), "{e}");
        assert!(line_chart("l", ("x", "y"), &[]).is_err());
    }
}
