//! Histograms of weight values (slide 27: a weight before and after quantization).
//!
//! [`Histogram`] holds the counts; [`histogram_svg`] overlays one or more histograms that share a
//! range, as translucent bars, so a 16-level NF4 weight can be laid over its fp32 original.

use candle_core::{DType, Tensor};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde::Serialize;

use super::{colour, draw_error, Svg, DEFAULT_SIZE};
use crate::{Error, Result};

/// Counts of values in `bins` equal-width bins over `[min, max]`.
///
/// Bin `i` covers `[min + i·w, min + (i+1)·w)` with `w = (max − min)/bins`; the last bin also
/// holds `max`. Values outside the range are counted in `below`/`above`, NaNs in `nan`, so that
/// `counts.sum() + below + above + nan` is the number of values seen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Histogram {
    /// What the values are ("q_proj fp32", "q_proj nf4").
    pub label: String,
    /// Lower edge of the first bin.
    pub min: f64,
    /// Upper edge of the last bin.
    pub max: f64,
    /// Count per bin.
    pub counts: Vec<u64>,
    /// Values below `min`.
    pub below: u64,
    /// Values above `max`.
    pub above: u64,
    /// NaN values.
    pub nan: u64,
}

impl Histogram {
    /// A histogram of `values` over their own range (min to max of the finite values).
    ///
    /// Errors: `bins` = 0, or no finite value to take a range from.
    pub fn of_values(label: impl Into<String>, values: &[f32], bins: usize) -> Result<Self> {
        let label = label.into();
        let (lo, hi) = values
            .iter()
            .filter(|v| v.is_finite())
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        if lo > hi {
            return Err(Error::Input(format!(
                "histogram `{label}`: no finite values among {} to take a range from",
                values.len()
            )));
        }
        Self::of_values_in(label, values, bins, (lo as f64, hi as f64))
    }

    /// A histogram of `values` over a given `range` (to compare several tensors bin by bin).
    ///
    /// Errors: `bins` = 0, or a range that is not finite or has `min > max`.
    pub fn of_values_in(
        label: impl Into<String>,
        values: &[f32],
        bins: usize,
        range: (f64, f64),
    ) -> Result<Self> {
        let label = label.into();
        let (min, max) = range;
        if bins == 0 {
            return Err(Error::Input(format!(
                "histogram `{label}`: bins must be at least 1, got 0"
            )));
        }
        if !(min.is_finite() && max.is_finite() && min <= max) {
            return Err(Error::Input(format!(
                "histogram `{label}`: range must be finite with min <= max, got ({min}, {max})"
            )));
        }
        let mut h = Self {
            label,
            min,
            max,
            counts: vec![0; bins],
            below: 0,
            above: 0,
            nan: 0,
        };
        // A single-valued range still gets a bin of positive width around the value.
        let width = if max > min {
            (max - min) / bins as f64
        } else {
            1.0
        };
        for &v in values {
            let v = v as f64;
            if v.is_nan() {
                h.nan += 1;
            } else if v < min {
                h.below += 1;
            } else if v > max {
                h.above += 1;
            } else {
                let i = (((v - min) / width) as usize).min(bins - 1);
                h.counts[i] += 1;
            }
        }
        Ok(h)
    }

    /// A histogram of every element of `tensor` (any shape, any float dtype, any device; the
    /// values are copied to the host as f32).
    pub fn of_tensor(label: impl Into<String>, tensor: &Tensor, bins: usize) -> Result<Self> {
        Self::of_values(label, &host_values(tensor)?, bins)
    }

    /// Like [`Histogram::of_tensor`], over a given range.
    pub fn of_tensor_in(
        label: impl Into<String>,
        tensor: &Tensor,
        bins: usize,
        range: (f64, f64),
    ) -> Result<Self> {
        Self::of_values_in(label, &host_values(tensor)?, bins, range)
    }

    /// Width of one bin.
    pub fn bin_width(&self) -> f64 {
        (self.max - self.min) / self.counts.len() as f64
    }

    /// The `bins + 1` bin edges.
    pub fn edges(&self) -> Vec<f64> {
        let w = self.bin_width();
        (0..=self.counts.len())
            .map(|i| self.min + i as f64 * w)
            .collect()
    }

    /// Values counted (in range, out of range and NaN).
    pub fn total(&self) -> u64 {
        self.counts.iter().sum::<u64>() + self.below + self.above + self.nan
    }

    /// Number of bins holding at least one value: a weight on a grid of 16 levels fills at most
    /// 16 bins when the bins are finer than the grid's steps.
    pub fn occupied_bins(&self) -> usize {
        self.counts.iter().filter(|&&c| c > 0).count()
    }

    /// The histogram alone as a figure; see [`histogram_svg`].
    pub fn to_svg(&self) -> Result<Svg> {
        histogram_svg(&self.label, &[self], false)
    }
}

fn host_values(tensor: &Tensor) -> Result<Vec<f32>> {
    Ok(tensor
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?)
}

/// Overlays histograms as translucent bars, one colour each, with a legend. The x range spans
/// all of them (give them one range with [`Histogram::of_values_in`] to compare bin by bin);
/// `log_y` draws counts on a log scale (outliers of a weight show only there).
pub fn histogram_svg(title: &str, histograms: &[&Histogram], log_y: bool) -> Result<Svg> {
    let figure = format!("histogram `{title}`");
    if histograms.is_empty() {
        return Err(Error::Input(format!("{figure}: no histograms to draw")));
    }
    let x0 = histograms
        .iter()
        .map(|h| h.min)
        .fold(f64::INFINITY, f64::min);
    let mut x1 = histograms
        .iter()
        .map(|h| h.max)
        .fold(f64::NEG_INFINITY, f64::max);
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let peak = histograms
        .iter()
        .flat_map(|h| h.counts.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, DEFAULT_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_error(&figure, e))?;
        let mut chart = ChartBuilder::on(&root);
        chart
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(64);
        if log_y {
            let c = chart
                .build_cartesian_2d(x0..x1, (0.5..peak * 2.0).log_scale())
                .map_err(|e| draw_error(&figure, e))?;
            draw_bars(c, histograms, 0.5, "count (log)", &figure)?;
        } else {
            let c = chart
                .build_cartesian_2d(x0..x1, 0.0..peak * 1.05)
                .map_err(|e| draw_error(&figure, e))?;
            draw_bars(c, histograms, 0.0, "count", &figure)?;
        }
        root.present().map_err(|e| draw_error(&figure, e))?;
    }
    Ok(Svg(out))
}

/// The mesh, one translucent bar per occupied bin of each histogram (from `floor` up), and the
/// legend, on a chart whose y axis is linear or logarithmic.
fn draw_bars<'a, DB, Y>(
    mut chart: ChartContext<'a, DB, Cartesian2d<RangedCoordf64, Y>>,
    histograms: &[&Histogram],
    floor: f64,
    y_desc: &str,
    figure: &str,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_desc("value")
        .y_desc(y_desc)
        .draw()
        .map_err(|e| draw_error(figure, e))?;
    for (i, h) in histograms.iter().enumerate() {
        let style = colour(i).mix(0.45).filled();
        let w = if h.max > h.min { h.bin_width() } else { 1.0 };
        let bars = h
            .counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(move |(j, &c)| {
                let left = h.min + j as f64 * w;
                Rectangle::new([(left, floor), (left + w, c as f64)], style)
            });
        chart
            .draw_series(bars)
            .map_err(|e| draw_error(figure, e))?
            .label(h.label.as_str())
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour(i).filled())
            });
    }
    super::legend(&mut chart, SeriesLabelPosition::UpperRight, figure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn counts_every_value_once() {
        let v = [0.0f32, 0.25, 0.5, 0.75, 1.0, -1.0, 2.0, f32::NAN];
        let h = Histogram::of_values_in("v", &v, 4, (0.0, 1.0)).unwrap();
        // Bins [0,.25) [.25,.5) [.5,.75) [.75,1]: 1.0 falls in the last bin.
        assert_eq!(h.counts, vec![1, 1, 1, 2]);
        assert_eq!((h.below, h.above, h.nan), (1, 1, 1));
        assert_eq!(h.total(), v.len() as u64);
        assert_eq!(h.edges(), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    }

    #[test]
    fn sixteen_levels_fill_sixteen_bins() {
        // A weight on a 16-level grid, as NF4 leaves it within one block.
        let levels: Vec<f32> = (0..16).map(|i| -1.0 + i as f32 * (2.0 / 15.0)).collect();
        let v: Vec<f32> = (0..1600).map(|i| levels[i % 16]).collect();
        let h = Histogram::of_values("grid", &v, 200).unwrap();
        assert_eq!(h.occupied_bins(), 16);
        assert_eq!(h.counts.iter().sum::<u64>(), 1600);
    }

    #[test]
    fn of_tensor_matches_of_values() {
        let data: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let t = Tensor::from_vec(data.clone(), (8, 8), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let back: Vec<f32> = t
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(
            Histogram::of_tensor("t", &t, 10).unwrap(),
            Histogram::of_values("t", &back, 10).unwrap()
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        let e = Histogram::of_values("w", &[1.0], 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`w`") && e.contains("bins"), "{e}");
        let e = Histogram::of_values("w", &[f32::NAN], 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no finite values"), "{e}");
        let e = Histogram::of_values_in("w", &[1.0], 4, (1.0, 0.0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("min <= max"), "{e}");
        assert!(histogram_svg("empty", &[], false).is_err());
    }

    #[test]
    fn svg_has_one_bar_per_occupied_bin_and_the_legend() {
        let a = Histogram::of_values_in("fp32", &[0.1, 0.2, 0.2, 0.9], 10, (0.0, 1.0)).unwrap();
        let b = Histogram::of_values_in("nf4", &[0.0, 1.0], 10, (0.0, 1.0)).unwrap();
        for log_y in [false, true] {
            let svg = histogram_svg("q_proj", &[&a, &b], log_y).unwrap().0;
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
            let texts = crate::viz::texts(&svg);
            for t in ["q_proj", "fp32", "nf4"] {
                assert!(texts.iter().any(|x| x == t), "missing {t} in {texts:?}");
            }
            // 3 occupied bins of `a` + 2 of `b`, drawn with the 45% fill.
            assert_eq!(svg.matches("opacity=\"0.45\"").count(), 5, "{svg}");
        }
        // A single-valued tensor still draws.
        let c = Histogram::of_values("const", &[2.0, 2.0], 4).unwrap();
        assert!(crate::viz::texts(&c.to_svg().unwrap().0).contains(&"const".to_string()));
    }
}
