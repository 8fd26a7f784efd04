//! plots.svg: send latency, throughput and unseen acknowledged messages
//! over time, with the fault windows shaded.

use std::collections::HashMap;
use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::history::Kind;
use crate::history::Op;
use crate::history::Outcome;

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

type Panel<'a, 'p> = ChartContext<'a, SVGBackend<'p>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One panel of the plot: `caption` over the run's `end` seconds, the y axis
/// a little above `y_max`, with the fault windows shaded.
fn panel<'a, 'p>(
    area: &'a DrawingArea<SVGBackend<'p>, Shift>,
    caption: &str,
    end: f64,
    y_max: f64,
    faults: &[(f64, f64, String)],
) -> anyhow::Result<Panel<'a, 'p>> {
    let top = y_max * 1.05;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(25)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end, 0f64..top)?;
    chart.configure_mesh().x_desc("s").draw()?;
    let shade = RGBColor(255, 200, 200).mix(0.5);
    chart.draw_series(
        faults
            .iter()
            .map(|(s, e, _)| Rectangle::new([(*s, 0.0), (*e, top)], shade.filled())),
    )?;
    Ok(chart)
}

pub fn draw(path: &Path, ops: &[Op]) -> anyhow::Result<()> {
    let faults: Vec<(f64, f64, String)> = ops
        .iter()
        .filter_map(|op| match &op.kind {
            Kind::Fault { name, .. } => Some((secs(op.start_us), secs(op.end_us), name.clone())),
            _ => None,
        })
        .collect();
    let sends: Vec<&Op> = ops
        .iter()
        .filter(|op| matches!(op.kind, Kind::Send { .. }))
        .collect();
    let end = ops
        .iter()
        .filter(|op| !matches!(op.kind, Kind::FinalRead { .. }))
        .map(|op| secs(op.end_us))
        .fold(1.0, f64::max);
    let seconds = end.ceil() as usize + 1;

    // Throughput per second, by outcome.
    let mut per_second = vec![[0u32; 3]; seconds];
    for op in &sends {
        let i = (secs(op.end_us) as usize).min(seconds - 1);
        let k = match op.outcome {
            Outcome::Ok => 0,
            Outcome::Info => 1,
            Outcome::Fail => 2,
        };
        per_second[i][k] += 1;
    }

    // Unseen: acknowledged by t but not yet read by any poll or final read.
    let mut first_seen: HashMap<&str, u64> = HashMap::new();
    for op in ops {
        let (Kind::Poll { messages, .. } | Kind::FinalRead { messages, .. }) = &op.kind else {
            continue;
        };
        for m in messages {
            let at = first_seen.entry(m.value.as_str()).or_insert(op.end_us);
            *at = (*at).min(op.end_us);
        }
    }
    let mut unseen = vec![0i64; seconds + 1];
    for op in sends.iter().filter(|op| op.outcome == Outcome::Ok) {
        let Kind::Send { value, .. } = &op.kind else {
            continue;
        };
        let from = (secs(op.end_us).ceil() as usize).min(seconds);
        let to = first_seen
            .get(value.as_str())
            .map_or(seconds + 1, |t| (secs(*t).ceil() as usize).min(seconds + 1));
        for u in unseen.iter_mut().take(to).skip(from) {
            *u += 1;
        }
    }

    let latency_max = sends
        .iter()
        .map(|op| (op.end_us - op.start_us) as f64 / 1000.0)
        .fold(10.0, f64::max);
    let throughput_max = per_second
        .iter()
        .map(|c| c.iter().copied().max().unwrap_or(0))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let unseen_max = unseen.iter().copied().max().unwrap_or(0).max(1) as f64;

    let root = SVGBackend::new(path, (1100, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((3, 1));

    let mut chart = panel(
        &panels[0],
        "send latency (ms); green ok, orange indeterminate, red failed",
        end,
        latency_max,
        &faults,
    )?;
    chart.draw_series(sends.iter().map(|op| {
        let color = match op.outcome {
            Outcome::Ok => GREEN.mix(0.6),
            Outcome::Info => RGBColor(230, 140, 0).mix(0.8),
            Outcome::Fail => RED.mix(0.8),
        };
        Circle::new(
            (secs(op.start_us), (op.end_us - op.start_us) as f64 / 1000.0),
            2,
            color.filled(),
        )
    }))?;

    let mut chart = panel(
        &panels[1],
        "sends per second: ok (green), indeterminate (orange), failed (red)",
        end,
        throughput_max,
        &faults,
    )?;
    for (k, color) in [(0, GREEN), (1, RGBColor(230, 140, 0)), (2, RED)] {
        chart.draw_series(LineSeries::new(
            per_second
                .iter()
                .enumerate()
                .map(|(i, c)| (i as f64 + 0.5, f64::from(c[k]))),
            color.stroke_width(2),
        ))?;
    }
    for (s, _, name) in &faults {
        chart.draw_series(std::iter::once(Text::new(
            name.clone(),
            (*s, throughput_max),
            ("sans-serif", 11),
        )))?;
    }

    let mut chart = panel(
        &panels[2],
        "acknowledged messages not yet read by any consumer",
        end,
        unseen_max,
        &faults,
    )?;
    chart.draw_series(LineSeries::new(
        unseen
            .iter()
            .enumerate()
            .take(seconds)
            .map(|(i, u)| (i as f64, *u as f64)),
        BLUE.stroke_width(2),
    ))?;
    root.present()?;
    Ok(())
}
