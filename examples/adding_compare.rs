//! Trains an Elman RNN (tanh), an LSTM and a GRU on the adding problem with the same settings
//! (CPU, [`AddingOptions`]' defaults: H = 32, B = 64, Adam 1e-2, clip 1) and draws their
//! held-out MSE on one chart.
//!
//! `cargo run --release --example adding_compare -- [seq_len [steps [out_dir]]]`, defaults 100,
//! 3000 and `docs/img`: writes `adding_t{T}_{rnn,lstm,gru}.json` and `adding_t{T}.png`.

use wgpu_rnn::{CellKind, RnnError};
use wgpu_rnn_cli::{plot_many, train_adding, AddingOptions};

fn main() -> wgpu_rnn::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut opts = AddingOptions {
        seq_len: 100,
        steps: 3000,
        ..AddingOptions::default()
    };
    if let Some(t) = args.next() {
        opts.seq_len = parse(&t)?;
    }
    if let Some(steps) = args.next() {
        opts.steps = parse(&steps)?;
    }
    let out_dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "docs/img".into()));
    let t = opts.seq_len;
    let mut reports = Vec::new();
    for name in ["rnn", "lstm", "gru"] {
        let report = train_adding(&AddingOptions {
            cell: CellKind::parse(name)?,
            ..opts.clone()
        })?;
        println!(
            "{:9} T={t}: final MSE {:.5} (baseline 0.167) in {:.1} s",
            report.cell, report.final_value, report.seconds
        );
        report.write_json(out_dir.join(format!("adding_t{t}_{name}.json")))?;
        reports.push(report);
    }
    let png = out_dir.join(format!("adding_t{t}.png"));
    plot_many(&reports.iter().collect::<Vec<_>>(), &png)?;
    println!("wrote {}", png.display());
    Ok(())
}

fn parse(arg: &str) -> wgpu_rnn::Result<usize> {
    arg.parse()
        .map_err(|_| RnnError::Config(format!("cannot parse argument `{arg}` as a count")))
}
