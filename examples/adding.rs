//! Trains an LSTM on the adding problem (T = 20) on the CPU and writes the loss curve.
//!
//! `cargo run --release --example adding [-- steps]`

use wgpu_rnn_cli::{train_adding, AddingOptions};

fn main() -> wgpu_rnn::Result<()> {
    let mut opts = AddingOptions::default();
    if let Some(steps) = std::env::args().nth(1).and_then(|s| s.parse().ok()) {
        opts.steps = steps;
    }
    let report = train_adding(&opts)?;
    for point in &report.history {
        println!("step {:5}  held-out MSE {:.5}", point.step, point.loss);
    }
    println!(
        "final MSE {:.5} (baseline 0.167) in {:.1} s",
        report.final_value, report.seconds
    );
    report.write_json("adding.json")?;
    report.plot("adding.png")?;
    println!("wrote adding.json, adding.png");
    Ok(())
}
