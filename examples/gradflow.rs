//! ‖∂L/∂h_t‖ against t for RNN, LSTM and GRU at initialisation on the adding problem (T = 100).
//! `cargo run --release --example gradflow`

use wgpu_rnn::train::{gradflow, GradFlowOptions};

fn main() -> wgpu_rnn::Result<()> {
    let report = gradflow(&GradFlowOptions::default())?;
    for c in &report.curves {
        println!(
            "{:9} ||dL/dh_0|| / ||dL/dh_T-1|| = {:.3e}",
            c.cell, c.first_last_ratio
        );
    }
    report.write_json("gradflow.json")?;
    report.plot("gradflow.png")?;
    println!("wrote gradflow.json, gradflow.png");
    Ok(())
}
