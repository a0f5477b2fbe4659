//! The pictures of `swimlock bench --plot`, drawn with plotters: latency by
//! percentile (one line per measurement) and the failover times of the
//! runs, each as SVG and PNG. Text is laid out with a bundled font
//! (DejaVu Sans), so a PNG renders the same on a host without fontconfig.

use std::path::{Path, PathBuf};
use std::sync::Once;

use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::Measurement;

/// DejaVu Sans (Bitstream Vera license, `assets/DejaVuSans-LICENSE.txt`).
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";
const SIZE: (u32, u32) = (960, 540);

type Error = Box<dyn std::error::Error>;

/// Registers the bundled font once.
fn font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            // The font is a fixed, valid file: a failure would be a broken build.
            let _ = plotters::style::register_font(FAMILY, style, FONT);
        }
    });
}

/// The files written for `--plot PATH`: PATH (SVG) and its PNG, then the
/// failover picture beside it (`NAME-failover.svg`, `.png`).
pub fn paths(svg: &Path) -> [PathBuf; 4] {
    let stem = svg.file_stem().map_or_else(|| "bench".into(), |s| s.to_string_lossy().into_owned());
    let at = |name: String| svg.with_file_name(name);
    [
        svg.to_path_buf(),
        svg.with_extension("png"),
        at(format!("{stem}-failover.svg")),
        at(format!("{stem}-failover.png")),
    ]
}

/// Draws both pictures into the files of [`paths`].
pub fn write(svg: &Path, results: &[Measurement]) -> Result<[PathBuf; 4], Error> {
    font();
    let files = paths(svg);
    let failover = results.iter().find(|m| m.name.starts_with("failover"));
    let mut text = String::new();
    latency(SVGBackend::with_string(&mut text, SIZE).into_drawing_area(), results)?;
    std::fs::write(&files[0], text)?;
    latency(BitMapBackend::new(&files[1], SIZE).into_drawing_area(), results)?;
    let mut text = String::new();
    failovers(SVGBackend::with_string(&mut text, SIZE).into_drawing_area(), failover)?;
    std::fs::write(&files[2], text)?;
    failovers(BitMapBackend::new(&files[3], SIZE).into_drawing_area(), failover)?;
    Ok(files)
}

/// x: 0 (p0) .. 5 (p99.999), as -log10(1 - p).
fn percentile_points(hist: &Histogram<u64>) -> Vec<(f64, f64)> {
    (0..=100)
        .map(|i| {
            let x = f64::from(i) * 0.05;
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            (x, (hist.value_at_percentile(p) as f64 / 1e3).max(0.1))
        })
        .collect()
}

fn latency<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, results: &[Measurement]) -> Result<(), Error>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let lines: Vec<(&str, Vec<(f64, f64)>)> =
        results.iter().map(|m| (m.name.as_str(), percentile_points(&m.hist))).collect();
    let ys = lines.iter().flat_map(|(_, p)| p.iter().map(|p| p.1));
    let (lo, hi) = ys.fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (1.0, 10.0) };
    // A decade of headroom above the highest line, for the legend.
    let (lo, hi) =
        (10f64.powf(lo.log10().floor()), 10f64.powf(hi.log10().ceil().max(lo.log10().floor() + 1.0) + 1.0));
    let mut chart = ChartBuilder::on(&root)
        .caption("swimlock bench: latency by percentile", (FAMILY, 22))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..5f64, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("µs (log scale)")
        .x_labels(11)
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            let digits = (x.ceil() as usize).saturating_sub(2);
            format!("{p:.digits$}")
        })
        .y_label_formatter(&|y| format!("{y}"))
        .label_style((FAMILY, 13))
        .draw()?;
    for (i, (name, points)) in lines.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let style = ShapeStyle::from(&color).stroke_width(2);
        chart
            .draw_series(LineSeries::new(points, style))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FAMILY, 12))
        .draw()?;
    root.present()?;
    Ok(())
}

/// Every run's failover time (kill of the coordinator to the first grant
/// elsewhere) as a point, with the median marked.
fn failovers<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, m: Option<&Measurement>) -> Result<(), Error>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let mut runs: Vec<f64> = Vec::new();
    if let Some(m) = m {
        for v in m.hist.iter_recorded() {
            for _ in 0..v.count_at_value() {
                runs.push(v.value_iterated_to() as f64 / 1e9);
            }
        }
    }
    runs.sort_by(f64::total_cmp);
    let top = runs.last().copied().unwrap_or(1.0).max(0.1) * 1.2;
    let n = runs.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("swimlock bench: failover, coordinator killed to first grant elsewhere ({n} runs)"),
            (FAMILY, 20),
        )
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..top, 0f64..1.05f64)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("fraction of runs done")
        .label_style((FAMILY, 13))
        .draw()?;
    let steps: Vec<(f64, f64)> = std::iter::once((0.0, 0.0))
        .chain(
            runs.iter()
                .enumerate()
                .flat_map(|(i, &t)| [(t, i as f64 / n as f64), (t, (i + 1) as f64 / n as f64)]),
        )
        .chain(std::iter::once((top, 1.0)))
        .collect();
    let blue = ShapeStyle::from(&BLUE).stroke_width(2);
    chart
        .draw_series(LineSeries::new(steps, blue))?
        .label("share of runs with a grant by then")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue));
    chart.draw_series(runs.iter().map(|&t| Circle::new((t, 0.02), 4, RED.filled())))?;
    if let Some(&median) = runs.get(runs.len() / 2) {
        let style = ShapeStyle::from(&BLACK.mix(0.6)).stroke_width(1);
        chart
            .draw_series(LineSeries::new([(median, 0.0), (median, 1.05)], style))?
            .label(format!("median {median:.2} s"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FAMILY, 12))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurement(name: &str, values_ns: &[u64]) -> Measurement {
        let mut hist = super::super::new_hist();
        for v in values_ns {
            hist.record(*v).unwrap();
        }
        Measurement { name: name.into(), what: "test", hist, floor: None, rate: None }
    }

    /// Both pictures, SVG and PNG, with axes and legends in text.
    #[test]
    fn writes_svg_and_png_with_legends() {
        let dir = std::env::temp_dir().join(format!("swimlock-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let results = [
            measurement("udp_floor", &[4_000, 5_000, 60_000]),
            measurement("uncontended", &[20_000, 25_000, 90_000]),
            measurement("failover_kill_coordinator", &[780_000_000, 810_000_000, 920_000_000]),
        ];
        let files = write(&dir.join("bench.svg"), &results).unwrap();
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        assert!(svg.contains("uncontended") && svg.contains("percentile"), "legend and axis");
        let failover = std::fs::read_to_string(&files[2]).unwrap();
        assert!(failover.contains("median 0.81 s"), "median marked");
        for png in [&files[1], &files[3]] {
            let bytes = std::fs::read(png).unwrap();
            assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000, "{}", png.display());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
