//! Hostile sizes given to the demonstration tasks (issue 11, class 6): a product of sizes that
//! overflows is an error naming the request, never a wrapped size, a panic or an abort.

use wgpu_rnn_cli::{adding_batch, CharCorpus, Split};

#[test]
fn task_sizes_whose_product_overflows_are_errors() {
    let corpus = CharCorpus::from_text("abcdefghijklmnopqrstuvwxyz", 0.25).unwrap();
    let windows = corpus.random_batch(Split::Train, usize::MAX / 2, 4, 0, 0);
    assert!(
        matches!(&windows, Err(e) if e.to_string().contains("windows")),
        "{windows:?}"
    );
    let held_out = corpus.sequential_batches(Split::HeldOut, 3, usize::MAX);
    assert!(
        matches!(&held_out, Err(e) if e.to_string().contains("windows")),
        "{held_out:?}"
    );
    let adding = adding_batch::<f32>(usize::MAX / 4, 4, 0, 0);
    assert!(
        matches!(&adding, Err(e) if e.to_string().contains("overflow")),
        "{adding:?}"
    );
}
