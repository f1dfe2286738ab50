//! An SVG plot of a run: throughput on top, latency percentiles below, both
//! over seconds of the run (plotters, SVG backend only).

use plotters::prelude::*;

use crate::record::Second;

/// Renders the timeline of one workload as an SVG document.
pub fn render(title: &str, unit: &str, timeline: &[Second]) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 640)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 20))?;
        let (top, bottom) = root.split_vertically(300);
        let seconds = timeline.len().max(1) as u64;
        let max_rate = timeline.iter().map(|s| s.events).max().unwrap_or(0).max(1) as f64 * 1.1;
        let mut chart = ChartBuilder::on(&top)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .caption(format!("throughput ({unit}/s, per second completed)"), ("sans-serif", 15))
            .build_cartesian_2d(0u64..seconds, 0f64..max_rate)?;
        chart.configure_mesh().x_desc("s").draw()?;
        chart
            .draw_series(LineSeries::new(timeline.iter().map(|s| (s.t, s.events as f64)), &BLUE))?
            .label(format!("{unit}/s"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;

        let max_ms = timeline.iter().map(|s| s.max_ms).fold(0.0, f64::max).max(0.001) * 1.1;
        let mut chart = ChartBuilder::on(&bottom)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .caption("latency (ms) of the requests completed in each second", ("sans-serif", 15))
            .build_cartesian_2d(0u64..seconds, (0.001f64..max_ms).log_scale())?;
        chart.configure_mesh().x_desc("s").y_desc("ms").draw()?;
        let busy = || timeline.iter().filter(|s| s.requests > 0);
        for (name, color, value) in [
            ("p50", GREEN, (|s: &Second| s.p50_ms) as fn(&Second) -> f64),
            ("p99", RED, |s: &Second| s.p99_ms),
            ("max", BLACK, |s: &Second| s.max_ms),
        ] {
            chart
                .draw_series(LineSeries::new(busy().map(|s| (s.t, value(s).max(0.001))), &color))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
        root.present()?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(t: u64, events: u64, p50: f64, p99: f64) -> Second {
        Second { t, requests: events / 10, events, p50_ms: p50, p99_ms: p99, max_ms: p99 * 2.0 }
    }

    /// `(stroke, points)` of every polyline with more than two points (the data lines).
    fn data_lines(svg: &str) -> Vec<(String, Vec<(i32, i32)>)> {
        svg.lines()
            .filter(|l| l.starts_with("<polyline"))
            .map(|l| {
                let attr =
                    |name: &str| l.split(&format!("{name}=\"")).nth(1).unwrap().split('"').next().unwrap().to_owned();
                let points = attr("points")
                    .split_whitespace()
                    .map(|p| {
                        let (x, y) = p.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect::<Vec<(i32, i32)>>();
                (attr("stroke"), points)
            })
            .filter(|(_, points)| points.len() > 2)
            .collect()
    }

    #[test]
    fn the_plot_has_one_line_per_series_with_a_point_per_busy_second() {
        let timeline = vec![
            second(0, 1_000, 1.0, 5.0),
            second(1, 2_000, 2.0, 8.0),
            second(2, 0, 0.0, 0.0),
            second(3, 1_500, 1.5, 6.0),
        ];
        let svg = render("ingest run 42", "events", &timeline).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        for text in ["ingest run 42", "events/s", "p50", "p99", "max"] {
            assert!(svg.contains(text), "{text} missing");
        }
        let lines = data_lines(&svg);
        let by = |stroke: &str| -> Vec<Vec<(i32, i32)>> {
            lines.iter().filter(|(s, _)| s == stroke).map(|(_, p)| p.clone()).collect()
        };
        // Throughput: every second, the idle one at zero (the lowest point; SVG y grows downwards).
        let throughput = by("#0000FF");
        assert_eq!(throughput.len(), 1, "{lines:?}");
        let y: Vec<i32> = throughput[0].iter().map(|p| p.1).collect();
        assert_eq!(y.len(), 4);
        assert!(y[1] < y[3] && y[3] < y[0] && y[0] < y[2], "2,000 > 1,500 > 1,000 > 0 events: {y:?}");
        // Latency: busy seconds only, and p99 above p50 at each of them.
        let (p50, p99) = (by("#00FF00"), by("#FF0000"));
        assert_eq!((p50.len(), p99.len()), (1, 1), "{lines:?}");
        assert_eq!(p50[0].len(), 3, "the idle second has no latency point");
        assert_eq!(
            p50[0].iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![throughput[0][0].0, throughput[0][1].0, throughput[0][3].0]
        );
        assert!(p50[0].iter().zip(&p99[0]).all(|(a, b)| b.1 < a.1), "p99 {:?} above p50 {:?}", p99[0], p50[0]);
    }

    #[test]
    fn an_empty_run_still_renders() {
        let svg = render("nothing", "requests", &[]).unwrap();
        assert!(svg.contains("</svg>"));
    }
}
