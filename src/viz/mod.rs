//! Figures: plotters charts rendered to SVG.
//!
//! The library turns data into an [`Svg`] (a string holding one `<svg>` element); the notebook
//! prelude shows it inline, and [`Svg::save`] writes it to a file. Only plotters' SVG backend is
//! used, with no system fonts: plotters estimates text widths and the browser draws the
//! `<text>` elements with its own sans-serif font.
//!
//! | file | figure |
//! |---|---|
//! | `histogram.rs` | [`Histogram`] of a tensor's values, one or several overlaid ([`histogram_svg`]) |
//! | `lines.rs` | line charts ([`line_chart`]), e.g. a loss curve |
//! | `bars.rs` | stacked horizontal bars ([`StackedBars`]), e.g. memory budgets side by side ([`budget_chart`]) |

mod bars;
mod histogram;
mod lines;

pub use bars::{budget_chart, Bar, StackedBars};
pub use histogram::{histogram_svg, Histogram};
pub use lines::line_chart;

use std::path::Path;

use crate::{Error, Result};

/// Figure size in pixels used when a caller does not choose one.
pub const DEFAULT_SIZE: (u32, u32) = (720, 360);

/// A rendered figure: the text of one `<svg>` element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svg(pub String);

impl Svg {
    /// The SVG text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Writes the SVG to `path`, creating its directory (through a temporary file, so a failed
    /// write leaves nothing half-written).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        crate::fs::write_bytes_atomic(path, self.0.as_bytes())
    }
}

impl std::fmt::Display for Svg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The contents of an SVG's `<text>` elements, trimmed, in document order (for tests and for
/// checking a figure's labels without a browser).
pub fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|s| {
            let body = &s[s.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_string())
        })
        .collect()
}

/// A plotters drawing error, as the library's error, naming the figure.
pub(crate) fn draw_error(figure: &str, e: impl std::fmt::Display) -> Error {
    Error::Input(format!("drawing {figure}: {e}"))
}

/// A categorical palette (Tableau 10), so that series keep their colour across figures.
pub(crate) const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// Draws the series legend of `chart` at `position`.
pub(crate) fn legend<'a, DB, CT>(
    chart: &mut plotters::chart::ChartContext<'a, DB, CT>,
    position: plotters::chart::SeriesLabelPosition,
    figure: &str,
) -> Result<()>
where
    DB: plotters::backend::DrawingBackend + 'a,
    DB::ErrorType: 'static,
    CT: plotters::coord::CoordTranslate,
{
    use plotters::style::{Color, BLACK, WHITE};
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .position(position)
        .draw()
        .map_err(|e| draw_error(figure, e))
}

pub(crate) fn colour(i: usize) -> plotters::style::RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    plotters::style::RGBColor(r, g, b)
}
