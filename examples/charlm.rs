//! Trains a 2-layer LSTM character model on the bundled public-domain text (CPU), reports
//! held-out bits per character and perplexity every epoch, and samples 200 characters.
//! `cargo run --release --example charlm [-- steps [text.txt]]`

use wgpu_rnn_cli::{train_charlm, CharLmOptions};

fn main() -> wgpu_rnn::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut opts = CharLmOptions::default();
    if let Some(steps) = args.next().and_then(|s| s.parse().ok()) {
        opts.steps = steps;
    }
    opts.text = args.next().map(Into::into);
    let report = train_charlm(&opts)?;
    for line in report.history_lines() {
        println!("{line}");
    }
    println!(
        "final {:.3} bits/char, perplexity {:.2}, in {:.1} s",
        report.final_value,
        report.final_perplexity().unwrap_or(f64::NAN),
        report.seconds
    );
    if let Some(sample) = &report.sample {
        println!("sample (temperature {}):\n{sample}", opts.temperature);
    }
    report.write_json("charlm.json")?;
    report.plot("charlm.png")?;
    println!("wrote charlm.json, charlm.png");
    Ok(())
}
