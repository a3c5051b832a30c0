//! An SVG chart of a run: deliveries/s and p50/p99 latency per second.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::RunResult;

pub fn draw(r: &RunResult, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let (top, bottom) = root.split_vertically(350);
    let tl = &r.timeline;
    let t_max = tl.last().map_or(1.0, |p| p.t).max(1.0);
    let t_min = tl.first().map_or(0.0, |p| p.t - 1.0).max(0.0);
    let d_max = tl.iter().map(|p| p.deliveries_per_sec).fold(1.0, f64::max) * 1.1;
    let title = format!(
        "{:?} {:?} {}: {} subscribers",
        r.system, r.transport, r.scenario, r.ready
    );
    let mut c = ChartBuilder::on(&top)
        .caption(format!("{title} - deliveries/s"), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(t_min..t_max, 0.0..d_max)
        .map_err(|e| anyhow!("{e:?}"))?;
    c.configure_mesh()
        .x_desc("seconds")
        .y_desc("deliveries/s")
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    c.draw_series(LineSeries::new(
        tl.iter().map(|p| (p.t, p.deliveries_per_sec)),
        &BLUE,
    ))
    .map_err(|e| anyhow!("{e:?}"))?
    .label("deliveries/s")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    let l_max = tl.iter().map(|p| p.p99_ms).fold(1.0, f64::max) * 1.1;
    let mut c = ChartBuilder::on(&bottom)
        .caption("latency per second (ms)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(t_min..t_max, 0.0..l_max)
        .map_err(|e| anyhow!("{e:?}"))?;
    c.configure_mesh()
        .x_desc("seconds")
        .y_desc("ms")
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    c.draw_series(LineSeries::new(tl.iter().map(|p| (p.t, p.p50_ms)), &GREEN))
        .map_err(|e| anyhow!("{e:?}"))?
        .label("p50")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    c.draw_series(LineSeries::new(tl.iter().map(|p| (p.t, p.p99_ms)), &RED))
        .map_err(|e| anyhow!("{e:?}"))?
        .label("p99")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    c.configure_series_labels()
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}
