//! PNG plots of results people look at: quality against compute (log x axis), one panel per
//! metric, one series per method. Drawn with plotters into a memory buffer, encoded with `png`,
//! and written atomically (never over an existing file without `force`). Labels use DejaVu Sans,
//! embedded in the binary (assets/fonts), so plotting needs no system font.

use crate::error::{Error, Result};
use crate::output::write_atomic;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        // The embedded font is valid TrueType; registration only fails on a malformed font.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// One method's points: (x, y, label shown next to the point).
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64, String)>,
}

/// One chart.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The x axis of a plot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XScale {
    /// Logarithmic, decades labelled (x must be positive).
    Log,
    /// Linear.
    Linear,
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::format(path, format!("drawing the plot failed: {e}"))
}

/// Draws `panels` side by side (x on a log scale) and writes a PNG to `path`.
pub fn write_png(path: &Path, panels: &[Panel], force: bool) -> Result<()> {
    write_png_with(path, panels, XScale::Log, force)
}

/// [`write_png`] with a choice of x scale.
pub fn write_png_with(path: &Path, panels: &[Panel], scale: XScale, force: bool) -> Result<()> {
    crate::output::check_writable(path, force)?;
    if panels.is_empty() {
        return Err(Error::param("plot", "nothing to plot"));
    }
    for p in panels {
        for s in &p.series {
            if let Some((x, y, _)) = s.points.iter().find(|(x, y, _)| {
                !(x.is_finite() && (*x > 0.0 || scale == XScale::Linear) && y.is_finite())
            }) {
                return Err(Error::param(
                    "plot",
                    format!("series `{}` of `{}` has a point ({x}, {y}): x must be positive (log scale) and y finite", s.name, p.title),
                ));
            }
        }
    }
    register_font();
    let (w, h) = (560 * panels.len() as u32, 440u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        let areas = root.split_evenly((1, panels.len()));
        for (area, panel) in areas.iter().zip(panels) {
            let pts = panel.series.iter().flat_map(|s| s.points.iter());
            let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
            for (x, y, _) in pts {
                x0 = x0.min(*x);
                x1 = x1.max(*x);
                y0 = y0.min(*y);
                y1 = y1.max(*y);
            }
            if x0 > x1 {
                (x0, x1, y0, y1) = (1.0, 10.0, 0.0, 1.0);
            }
            let pad = ((y1 - y0) * 0.08).max(1e-3);
            let (y0, y1) = (y0 - pad, y1 + pad);
            let mut builder = ChartBuilder::on(area);
            builder
                .caption(&panel.title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(56);
            if scale == XScale::Linear {
                // Pad: 4% of the range on x.
                let px = ((x1 - x0) * 0.04).max(0.5);
                let mut chart = builder
                    .build_cartesian_2d((x0 - px)..(x1 + px), y0..y1)
                    .map_err(|e| plot_err(path, e))?;
                chart
                    .configure_mesh()
                    .x_desc(&panel.x_label)
                    .y_desc(&panel.y_label)
                    .label_style(("sans-serif", 13))
                    .draw()
                    .map_err(|e| plot_err(path, e))?;
                draw_series(&mut chart, panel, path)?;
                continue;
            }
            // Pad: a decade-fraction on x.
            let (x0, x1) = (x0 / 2.0, x1 * 2.0);
            let mut chart = builder
                .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
                .map_err(|e| plot_err(path, e))?;
            chart
                .configure_mesh()
                .x_desc(&panel.x_label)
                .y_desc(&panel.y_label)
                // Label the decades only: a log axis's in-between ticks crowd the axis.
                .x_label_formatter(&|v| {
                    let e = v.log10();
                    if (e - e.round()).abs() < 1e-6 {
                        format!("1e{}", e.round())
                    } else {
                        String::new()
                    }
                })
                .label_style(("sans-serif", 13))
                .draw()
                .map_err(|e| plot_err(path, e))?;
            draw_series(&mut chart, panel, path)?;
        }
        root.present().map_err(|e| plot_err(path, e))?;
    }
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().map_err(|e| plot_err(path, e))?;
        wr.write_image_data(&buf).map_err(|e| plot_err(path, e))?;
    }
    write_atomic(path, &png_bytes, force)
}

/// The lines, points, point labels and legend of `panel` on `chart`.
fn draw_series<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    panel: &Panel,
    path: &Path,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (i, s) in panel.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let line: Vec<(f64, f64)> = s.points.iter().map(|(x, y, _)| (*x, *y)).collect();
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
            .map_err(|e| plot_err(path, e))?
            .label(&s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(line.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| plot_err(path, e))?;
        chart
            .draw_series(s.points.iter().map(|(x, y, l)| {
                // Offset in pixels, so the label sits beside its point, not on it.
                EmptyElement::at((*x, *y))
                    + Text::new(
                        l.clone(),
                        (6, -16),
                        ("sans-serif", 11).into_font().color(&color),
                    )
            }))
            .map_err(|e| plot_err(path, e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| plot_err(path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_with_drawn_pixels_and_refuses_bad_points() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("q.png");
        let panel = Panel {
            title: "explained variance".into(),
            x_label: "FLOPs".into(),
            y_label: "EV".into(),
            series: vec![
                Series {
                    name: "EP".into(),
                    points: vec![(1e9, 0.5, "10k".into()), (1e10, 0.6, "100k".into())],
                },
                Series {
                    name: "SAE".into(),
                    points: vec![(1e11, 0.7, "10k".into()), (1e12, 0.8, "100k".into())],
                },
            ],
        };
        write_png(&p, &[panel.clone(), panel.clone()], false).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = dec.read_info().unwrap();
        let mut img = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut img).unwrap();
        assert_eq!((info.width, info.height), (1120, 440));
        // Both series colours appear (lines and points were drawn), and text (dark pixels).
        let has = |c: [u8; 3]| img.chunks(3).any(|p| p == c);
        assert!(has([31, 119, 180]) && has([214, 39, 40]));
        assert!(
            img.chunks(3)
                .filter(|p| p[0] < 60 && p[1] < 60 && p[2] < 60)
                .count()
                > 500
        );
        assert!(matches!(
            write_png(&p, std::slice::from_ref(&panel), false),
            Err(Error::OutputExists(_))
        ));
        let mut bad = panel;
        bad.series[0].points[0].0 = 0.0;
        let e = write_png(&dir.path().join("b.png"), &[bad], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("log scale"), "{e}");
        assert!(!dir.path().join("b.png").exists());
    }
}
