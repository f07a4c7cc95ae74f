//! Loss curves as SVG: training loss (line) and eval loss (line + points) against the step.
//!
//! Uses plotters' SVG backend with no font backend: the SVG backend writes text as `<text>`
//! elements that the viewer renders, so no font files or system libraries are needed.

use plotters::prelude::*;
use std::ops::Range;
use std::path::Path;

const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const EVAL_COLOR: RGBColor = RGBColor(214, 39, 40);

/// Maximal runs of consecutive finite points: a NaN or infinite loss breaks the line there.
fn segments(series: &[(u64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = vec![];
    let mut cur = vec![];
    for &(s, l) in series {
        if l.is_finite() {
            cur.push((s as f64, l));
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A range covering `vals` with some padding; a default or widened one when empty or flat.
fn span(vals: impl Iterator<Item = f64>, pad_frac: f64, flat_pad: f64) -> Range<f64> {
    let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return 0.0..1.0;
    }
    let w = hi - lo;
    let pad = if w > 0.0 {
        w * pad_frac
    } else {
        (lo.abs() * 0.1).max(flat_pad)
    };
    (lo - pad)..(hi + pad)
}

/// Writes an SVG plot of the training loss (line) and eval loss (line and points) against the
/// optimizer step to `path`. Non-finite losses are skipped (the line breaks there); empty
/// series are fine (an empty chart is drawn).
pub fn loss_svg(
    path: &Path,
    train: &[(u64, f64)],
    eval: &[(u64, f64)],
    title: &str,
) -> Result<(), String> {
    let train_seg = segments(train);
    let eval_seg = segments(eval);
    let all = || train_seg.iter().chain(&eval_seg).flatten();
    let xs = span(all().map(|p| p.0), 0.02, 1.0);
    let ys = span(all().map(|p| p.1), 0.05, 0.1);
    let x_range = xs.start.max(0.0).min(xs.end - 1.0)..xs.end;
    let (x_range_start, x_range_end) = (x_range.start, x_range.end);

    let err = |e: &dyn std::fmt::Display| format!("plotting {}: {e}", path.display());
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(x_range, ys)
        .map_err(|e| err(&e))?;
    // Steps are integers: at most one x label per step, printed without decimals.
    let x_labels = ((x_range_end - x_range_start).ceil() as usize + 1).clamp(2, 10);
    let step_label = |x: &f64| {
        if (x - x.round()).abs() < 1e-9 {
            format!("{}", x.round() as i64)
        } else {
            format!("{x:.1}")
        }
    };
    chart
        .configure_mesh()
        .light_line_style(WHITE.mix(0.0))
        .x_labels(x_labels)
        .x_label_formatter(&step_label)
        .x_desc("step")
        .y_desc("loss")
        .draw()
        .map_err(|e| err(&e))?;

    let mut labelled = false;
    for (i, seg) in train_seg.iter().enumerate() {
        let s = chart
            .draw_series(LineSeries::new(
                seg.iter().copied(),
                TRAIN_COLOR.stroke_width(2),
            ))
            .map_err(|e| err(&e))?;
        if i == 0 {
            s.label("train loss").legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], TRAIN_COLOR.stroke_width(2))
            });
            labelled = true;
        }
        if seg.len() == 1 {
            // A lone point draws no line: mark it.
            chart
                .draw_series(seg.iter().map(|&p| Circle::new(p, 2, TRAIN_COLOR.filled())))
                .map_err(|e| err(&e))?;
        }
    }
    for (i, seg) in eval_seg.iter().enumerate() {
        let s = chart
            .draw_series(LineSeries::new(
                seg.iter().copied(),
                EVAL_COLOR.stroke_width(2),
            ))
            .map_err(|e| err(&e))?;
        if i == 0 {
            // Parts of a composed element are placed relative to the anchor.
            s.label("eval loss").legend(|(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (20, 0)], EVAL_COLOR.stroke_width(2))
                    + Circle::new((10, 0), 3, EVAL_COLOR.filled())
            });
            labelled = true;
        }
        chart
            .draw_series(seg.iter().map(|&p| Circle::new(p, 3, EVAL_COLOR.filled())))
            .map_err(|e| err(&e))?;
    }
    if labelled {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("lorac-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn read(p: &Path) -> String {
        let s = std::fs::read_to_string(p).unwrap();
        assert!(!s.is_empty());
        assert!(s.contains("<svg"), "{s}");
        s
    }

    #[test]
    fn writes_train_and_eval_curves() {
        let p = tmp("curves.svg");
        let train: Vec<(u64, f64)> = (1..=50).map(|s| (s, 2.0 / (s as f64).sqrt())).collect();
        let eval = vec![(10, 0.9), (20, 0.7), (30, 0.6), (40, 0.58), (50, 0.57)];
        loss_svg(&p, &train, &eval, "demo run").unwrap();
        let s = read(&p);
        assert!(s.contains("<polyline") || s.contains("<path"), "{s}");
        assert!(s.contains("<circle"), "eval points drawn");
        for text in ["step", "loss", "train loss", "eval loss", "demo run"] {
            assert!(s.contains(text), "missing text {text}");
        }
        std::fs::remove_file(&p).ok();
    }

    #[test]
    fn handles_empty_single_flat_and_nan_series() {
        type Series = Vec<(u64, f64)>;
        let cases: Vec<(&str, Series, Series)> = vec![
            ("empty", vec![], vec![]),
            ("one", vec![(1, 0.5)], vec![]),
            ("one_eval", vec![], vec![(3, 0.5)]),
            ("flat", vec![(1, 1.0), (2, 1.0), (3, 1.0)], vec![(3, 1.0)]),
            ("zero", vec![(0, 0.0)], vec![(0, 0.0)]),
            (
                "nan",
                vec![
                    (1, 1.0),
                    (2, f64::NAN),
                    (3, 0.8),
                    (4, f64::INFINITY),
                    (5, 0.7),
                ],
                vec![(2, f64::NAN), (4, 0.75)],
            ),
            (
                "all_nan",
                vec![(1, f64::NAN), (2, f64::NAN)],
                vec![(1, f64::NAN)],
            ),
        ];
        for (name, train, eval) in cases {
            let p = tmp(&format!("{name}.svg"));
            loss_svg(&p, &train, &eval, name).unwrap_or_else(|e| panic!("{name}: {e}"));
            let s = read(&p);
            assert!(!s.contains("NaN"), "{name}: NaN coordinates in {s}");
            std::fs::remove_file(&p).ok();
        }
    }

    #[test]
    fn unwritable_path_is_an_error() {
        let p = Path::new("/nonexistent-lorac-dir/x/loss.svg");
        assert!(loss_svg(p, &[(1, 1.0)], &[], "t").is_err());
    }

    #[test]
    fn nan_breaks_the_line() {
        let segs = segments(&[(1, 1.0), (2, f64::NAN), (3, 0.5), (4, 0.4)]);
        assert_eq!(segs, vec![vec![(1.0, 1.0)], vec![(3.0, 0.5), (4.0, 0.4)]]);
    }
}
