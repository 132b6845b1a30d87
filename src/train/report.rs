//! Training reports: loss history as JSON and PNG line plots.

use crate::error::{Result, RnnError};
use plotters::prelude::*;
use serde_json::{json, Map, Value};
use std::path::Path;
use std::sync::Once;

/// One evaluation during training.
#[derive(Clone, Debug, PartialEq)]
pub struct LossPoint {
    /// Training steps completed.
    pub step: usize,
    /// Held-out loss (MSE for the adding problem, bits per character for the char-LM).
    pub loss: f64,
    /// Mean training loss over the steps since the previous evaluation (NaN at step 0).
    pub train_loss: f64,
}

/// The outcome of a training run.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainReport {
    /// `adding` or `charlm`.
    pub task: String,
    /// Cell name (`lstm`, `gru`, `rnn_tanh`, …).
    pub cell: String,
    /// `cpu` or `gpu`.
    pub backend: String,
    /// The run's settings, written as top-level JSON fields.
    pub settings: Vec<(String, Value)>,
    pub history: Vec<LossPoint>,
    /// Name of the final metric: `final_mse` or `final_bpc`.
    pub final_metric: &'static str,
    /// Its value on the held-out data after the last step.
    pub final_value: f64,
    /// Wall time of the training loop.
    pub seconds: f64,
}

impl TrainReport {
    /// `{"task","cell","backend",<settings>,"seconds","history":[{"step","loss","train_loss"}],
    /// "<final_metric>"}`; NaN values are written as null.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("task".into(), json!(self.task));
        map.insert("cell".into(), json!(self.cell));
        map.insert("backend".into(), json!(self.backend));
        for (key, value) in &self.settings {
            map.insert(key.clone(), value.clone());
        }
        map.insert("seconds".into(), json!(self.seconds));
        let history: Vec<Value> = self
            .history
            .iter()
            .map(|p| json!({"step": p.step, "loss": finite(p.loss), "train_loss": finite(p.train_loss)}))
            .collect();
        map.insert("history".into(), Value::Array(history));
        map.insert(self.final_metric.into(), finite(self.final_value));
        Value::Object(map)
    }

    /// Writes [`TrainReport::to_json`] to `path`.
    pub fn write_json(&self, path: impl AsRef<Path>) -> Result<()> {
        write_json(path.as_ref(), &self.to_json())
    }

    /// PNG of held-out and training loss against the step.
    pub fn plot(&self, path: impl AsRef<Path>) -> Result<()> {
        let eval: Vec<(f64, f64)> = self
            .history
            .iter()
            .map(|p| (p.step as f64, p.loss))
            .collect();
        let train: Vec<(f64, f64)> = self
            .history
            .iter()
            .map(|p| (p.step as f64, p.train_loss))
            .collect();
        let metric = if self.task == "charlm" {
            "bits/char"
        } else {
            "MSE"
        };
        plot_lines(
            path.as_ref(),
            &format!("{} {} ({})", self.task, self.cell, self.backend),
            "step",
            &format!("log10 {metric}"),
            &[
                (format!("held-out {metric}"), eval),
                (format!("train {metric}"), train),
            ],
            true,
        )
    }
}

fn finite(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

pub(crate) fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| RnnError::io(path, std::io::Error::other(e)))?;
    std::fs::write(path, text).map_err(|e| RnnError::io(path, e))
}

static FONT: Once = Once::new();

/// Draws named (x, y) series as lines; with `log_y` the y values are plotted as log10.
/// Non-finite points are skipped.
pub(crate) fn plot_lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_y: bool,
) -> Result<()> {
    FONT.call_once(|| {
        // The font is compiled in and known to parse.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            include_bytes!("../../assets/DejaVuSans.ttf"),
        );
    });
    let fail = |e: &dyn std::fmt::Display| RnnError::io(path, std::io::Error::other(e.to_string()));
    let series: Vec<(&String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(name, points)| {
            let points = points
                .iter()
                .map(|&(x, y)| (x, if log_y { y.log10() } else { y }))
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            (name, points)
        })
        .collect();
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return Err(RnnError::Config(format!(
            "nothing to plot in {}",
            path.display()
        )));
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|e| fail(&e))?;
    for (i, (name, points)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| fail(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))
}
