//! ‖∂L/∂h_t‖ against t for RNN, LSTM and GRU on the adding problem (T = 100), at init or after
//! training each cell. `cargo run --release --example gradflow -- [train_steps [forget_bias|none
//! [out_stem]]]`: defaults 0, 1.0 and `gradflow` (writes gradflow.json and gradflow.png).

use wgpu_rnn_cli::{gradflow_with, GradFlowOptions, GradFlowWeights};

fn main() -> wgpu_rnn::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut weights = GradFlowWeights::default();
    if let Some(steps) = args.next() {
        weights.train_steps = parse(&steps)?;
    }
    if let Some(bias) = args.next() {
        weights.forget_bias = (bias != "none").then(|| parse(&bias)).transpose()?;
    }
    let stem = args.next().unwrap_or_else(|| "gradflow".into());
    let report = gradflow_with(&GradFlowOptions::default(), &weights)?;
    for c in &report.curves {
        let trained = c
            .trained_mse
            .map_or(String::new(), |mse| format!("  (trained: MSE {mse:.5})"));
        println!(
            "{:9} ||dL/dh_0|| / ||dL/dh_T-1|| = {:.3e}{trained}",
            c.cell, c.first_last_ratio
        );
    }
    report.write_json(format!("{stem}.json"))?;
    report.plot(format!("{stem}.png"))?;
    println!("wrote {stem}.json, {stem}.png");
    Ok(())
}

fn parse<T: std::str::FromStr>(arg: &str) -> wgpu_rnn::Result<T> {
    arg.parse()
        .map_err(|_| wgpu_rnn::RnnError::Config(format!("cannot parse argument `{arg}`")))
}
