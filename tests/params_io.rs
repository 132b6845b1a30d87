//! Parameters in torch's state_dict naming: a file PyTorch wrote loads unchanged, save/load
//! round-trips, and a missing, extra or misshaped tensor is an error naming it.

mod common;

use common::fixture::relative_error;
use ndarray::{Array3, ArrayD, Ix3};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use wgpu_rnn::{cpu, tensorfile, CellKind, RnnConfig, RnnError, RnnParams, SequenceBatch};

fn state_dict_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state_dict")
}

fn torch_lstm() -> RnnConfig {
    RnnConfig::new(CellKind::Lstm, 5, 7)
        .layers(2)
        .bidirectional(true)
}

fn read(path: &Path) -> HashMap<String, ArrayD<f32>> {
    let bytes = tensorfile::read_bytes(path).unwrap();
    tensorfile::all_arrays(&tensorfile::parse(path, &bytes).unwrap()).unwrap()
}

fn tensor3(map: &HashMap<String, ArrayD<f32>>, name: &str) -> Array3<f32> {
    map[name].clone().into_dimensionality::<Ix3>().unwrap()
}

/// scripts/make_state_dict_fixture.py: `save_file(model.state_dict())` of a 2-layer
/// bidirectional torch LSTM, and torch's float32 forward on one input.
#[test]
fn a_state_dict_saved_by_pytorch_loads_unchanged_and_reproduces_torch() {
    let dir = state_dict_dir();
    let params = RnnParams::<f32>::load_safetensors(
        &torch_lstm(),
        dir.join("lstm_2layer_bidir.safetensors"),
    )
    .unwrap();
    let io = read(&dir.join("lstm_2layer_bidir_io.safetensors"));
    let input = tensor3(&io, "input");
    let out = cpu::forward(&params, &SequenceBatch::new(input.view())).unwrap();
    for (name, got) in [
        ("output", &out.output),
        ("h_n", &out.h_n),
        ("c_n", out.c_n.as_ref().unwrap()),
    ] {
        let err = relative_error(got.view(), tensor3(&io, name).view());
        assert!(err < 1e-6, "{name}: ‖Δ‖/‖ref‖ = {err:e}");
    }
}

#[test]
fn save_then_load_round_trips_bitwise_in_f32_and_f64() {
    let dir = std::env::temp_dir().join(format!("wgpu-rnn-params-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, config) in [
        torch_lstm(),
        RnnConfig::new(CellKind::Gru, 3, 33).bias(false),
        RnnConfig::new(CellKind::parse("rnn_relu").unwrap(), 1, 1).layers(3),
    ]
    .into_iter()
    .enumerate()
    {
        let p32 = RnnParams::<f32>::init(&config, i as u64).unwrap();
        let path = dir.join(format!("p{i}.safetensors"));
        p32.save_safetensors(&path).unwrap();
        assert_eq!(
            RnnParams::<f32>::load_safetensors(&config, &path).unwrap(),
            p32
        );
        let p64 = RnnParams::<f64>::init(&config, i as u64).unwrap();
        p64.save_safetensors(&path).unwrap();
        assert_eq!(
            RnnParams::<f64>::load_safetensors(&config, &path).unwrap(),
            p64
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_extra_or_misshaped_tensor_is_an_error_naming_it() {
    let config = torch_lstm();
    let good: HashMap<String, ArrayD<f32>> = RnnParams::<f32>::init(&config, 1)
        .unwrap()
        .named()
        .into_iter()
        .collect();

    let mut missing = good.clone();
    missing.remove("bias_hh_l1_reverse");
    match RnnParams::from_named(&config, &missing) {
        Err(RnnError::MissingTensor(name)) => assert_eq!(name, "bias_hh_l1_reverse"),
        other => panic!("expected MissingTensor, got {other:?}"),
    }

    let mut extra = good.clone();
    extra.insert("weight_ih_l2".into(), ArrayD::zeros(vec![28, 14]));
    match RnnParams::from_named(&config, &extra) {
        Err(RnnError::UnexpectedTensor(name)) => assert_eq!(name, "weight_ih_l2"),
        other => panic!("expected UnexpectedTensor, got {other:?}"),
    }

    let mut misshaped = good.clone();
    misshaped.insert("weight_hh_l0".into(), ArrayD::zeros(vec![28, 8]));
    let err = RnnParams::from_named(&config, &misshaped).unwrap_err();
    match &err {
        RnnError::Shape {
            tensor,
            expected,
            got,
        } => {
            assert_eq!(tensor, "weight_hh_l0");
            assert_eq!(expected, &vec![28, 7]);
            assert_eq!(got, &vec![28, 8]);
        }
        other => panic!("expected Shape, got {other:?}"),
    }
    assert!(err.to_string().contains("weight_hh_l0"), "{err}");

    // A torch file loaded with the wrong config names the first tensor that does not fit.
    let wrong = RnnConfig::new(CellKind::Gru, 5, 7)
        .layers(2)
        .bidirectional(true);
    let err = RnnParams::<f32>::load_safetensors(
        &wrong,
        state_dict_dir().join("lstm_2layer_bidir.safetensors"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("weight_ih_l0"), "{err}");
}

#[test]
fn a_file_that_is_not_safetensors_is_an_error_naming_the_path() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let err = RnnParams::<f32>::load_safetensors(&torch_lstm(), &path).unwrap_err();
    assert!(err.to_string().contains("Cargo.toml"), "{err}");
}
