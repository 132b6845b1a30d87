//! Trains a 2-layer LSTM character model on the bundled public-domain text (CPU) and reports
//! held-out bits per character. `cargo run --release --example charlm [-- steps [text.txt]]`

use wgpu_rnn::train::{train_charlm, CharLmOptions};

fn main() -> wgpu_rnn::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut opts = CharLmOptions::default();
    if let Some(steps) = args.next().and_then(|s| s.parse().ok()) {
        opts.steps = steps;
    }
    opts.text = args.next().map(Into::into);
    let report = train_charlm(&opts)?;
    for p in &report.history {
        println!("step {:5}  held-out {:.3} bits/char", p.step, p.loss);
    }
    println!(
        "final {:.3} bits/char in {:.1} s",
        report.final_value, report.seconds
    );
    report.write_json("charlm.json")?;
    report.plot("charlm.png")?;
    println!("wrote charlm.json, charlm.png");
    Ok(())
}
