//! Training reports: loss history as JSON and PNG line plots.

use plotters::prelude::*;
use serde_json::{json, Map, Value};
use std::path::Path;
use std::sync::OnceLock;
use wgpu_rnn::error::{Result, RnnError};

/// One evaluation during training.
#[derive(Clone, Debug, PartialEq)]
pub struct LossPoint {
    /// Training steps completed.
    pub step: usize,
    /// Epochs completed (training characters seen / training-split size) for the char-LM;
    /// `None` where the training data is unbounded (the adding problem draws fresh batches).
    pub epoch: Option<f64>,
    /// Held-out loss (MSE for the adding problem, bits per character for the char-LM).
    pub loss: f64,
    /// Mean training loss over the steps since the previous evaluation (NaN at step 0).
    pub train_loss: f64,
}

impl LossPoint {
    /// Held-out perplexity 2^bits-per-character for the char-LM (`None` for other tasks, whose
    /// loss is not in bits).
    pub fn perplexity(&self, task: &str) -> Option<f64> {
        (task == "charlm").then(|| self.loss.exp2())
    }
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
    /// Text sampled from the trained char-LM (prime included); `None` for other tasks.
    pub sample: Option<String>,
}

impl TrainReport {
    /// `{"task","cell","backend",<settings>,"seconds","history":[{"step","loss","train_loss"
    /// [,"epoch","perplexity"]}],"<final_metric>"[,"final_perplexity","sample"]}`; NaN values
    /// are written as null, the bracketed fields only where they exist.
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
            .map(|p| {
                let mut point = Map::new();
                point.insert("step".into(), json!(p.step));
                if let Some(epoch) = p.epoch {
                    point.insert("epoch".into(), finite(epoch));
                }
                point.insert("loss".into(), finite(p.loss));
                if let Some(ppl) = p.perplexity(&self.task) {
                    point.insert("perplexity".into(), finite(ppl));
                }
                point.insert("train_loss".into(), finite(p.train_loss));
                Value::Object(point)
            })
            .collect();
        map.insert("history".into(), Value::Array(history));
        map.insert(self.final_metric.into(), finite(self.final_value));
        if let Some(ppl) = self.final_perplexity() {
            map.insert("final_perplexity".into(), finite(ppl));
        }
        if let Some(sample) = &self.sample {
            map.insert("sample".into(), json!(sample));
        }
        Value::Object(map)
    }

    /// Held-out perplexity after the last step (char-LM only).
    pub fn final_perplexity(&self) -> Option<f64> {
        self.history.last().and_then(|p| p.perplexity(&self.task))
    }

    /// Name of the held-out metric: `bits/char` or `MSE`.
    pub fn metric_unit(&self) -> &'static str {
        if self.task == "charlm" {
            "bits/char"
        } else {
            "MSE"
        }
    }

    /// One printable line per evaluation: step, epoch (if counted), held-out metric,
    /// perplexity (char-LM) and the mean training loss since the previous evaluation.
    pub fn history_lines(&self) -> Vec<String> {
        let unit = self.metric_unit();
        self.history
            .iter()
            .map(|p| {
                let mut line = format!("step {:>6}", p.step);
                if let Some(epoch) = p.epoch {
                    line += &format!("  epoch {epoch:>6.2}");
                }
                line += &format!("  held-out {:.5} {unit}", p.loss);
                if let Some(ppl) = p.perplexity(&self.task) {
                    line += &format!("  perplexity {ppl:.3}");
                }
                if p.train_loss.is_finite() {
                    line += &format!("  train {:.5}", p.train_loss);
                }
                line
            })
            .collect()
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
        let metric = self.metric_unit();
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

/// PNG of the held-out loss of several runs on one chart (log10 y), one line per report,
/// labelled by cell and backend; e.g. the adding problem with rnn_tanh, lstm and gru.
pub fn plot_many(reports: &[&TrainReport], path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let first = reports
        .first()
        .ok_or_else(|| RnnError::Config(format!("no reports to plot in {}", path.display())))?;
    let series: Vec<(String, Vec<(f64, f64)>)> = reports
        .iter()
        .map(|r| {
            let points = r.history.iter().map(|p| (p.step as f64, p.loss)).collect();
            (format!("{} ({})", r.cell, r.backend), points)
        })
        .collect();
    let seq_len = first
        .settings
        .iter()
        .find(|(key, _)| key == "seq_len")
        .map_or(String::new(), |(_, v)| format!(", T={v}"));
    let metric = first.metric_unit();
    plot_lines(
        path,
        &format!("{}{seq_len}: held-out {metric}", first.task),
        "step",
        &format!("log10 {metric}"),
        &series,
        true,
    )
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
    wgpu_rnn::tensorfile::write_atomic(path, text.as_bytes())
}

/// The font family every plot uses: DejaVu Sans, compiled in once for all plots.
pub(crate) const FONT: &str = "sans-serif";

/// Registers the embedded DejaVu Sans once (plotters' ab_glyph backend has no system fonts).
pub(crate) fn register_font() -> std::result::Result<(), String> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = include_bytes!("assets/DejaVuSans.ttf");
            plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                .map_err(|_| "the embedded DejaVuSans.ttf is not a valid font".to_string())
        })
        .clone()
}

/// Draws named (x, y) series as lines into a PNG at `path`, saved atomically; with `log_y` the
/// y values are plotted as log10. Non-finite points are skipped.
pub(crate) fn plot_lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_y: bool,
) -> Result<()> {
    wgpu_rnn::tensorfile::save_atomic(path, |tmp| {
        draw_lines(path, tmp, title, x_label, y_label, series, log_y)
    })
}

/// [`plot_lines`] drawing into `target`; errors name `path`.
fn draw_lines(
    path: &Path,
    target: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_y: bool,
) -> Result<()> {
    let fail = |e: &dyn std::fmt::Display| RnnError::io(path, std::io::Error::other(e.to_string()));
    register_font().map_err(|e| fail(&e))?;
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
    let root = BitMapBackend::new(target, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
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
