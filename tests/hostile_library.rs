//! Hostile input through the library API (issue 11), by class: every bad file or value is a
//! clear error naming the tensor or field, never a panic, an abort or a corrupted file. The bad
//! files are made by the builders in tests/bad_files/.

mod bad_files;
mod common;

use bad_files::{
    checkpoint_bytes, checkpoint_config, edit_tensors, f32_bytes, fixture_path, params_bytes,
    params_config, set_metadata, set_model_field, TempDir,
};
use common::fixture::Fixture;
use ndarray::{Array2, Array3};
use safetensors::Dtype;
use serde_json::json;
use wgpu_rnn::gpu::GpuRnn;
use wgpu_rnn::train::{
    cross_entropy, load_checkpoint, save_checkpoint, Embedding, Optimizer, OptimizerConfig,
    Readout, SeqModel, SgdConfig,
};
use wgpu_rnn::{cpu, CellKind, RnnParams, SequenceBatch};

/// Writes `bytes` into `dir` and returns the path.
fn file(dir: &TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.path(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Asserts that `result` is an error whose message contains every one of `words`.
fn assert_error<T: std::fmt::Debug>(case: &str, result: wgpu_rnn::Result<T>, words: &[&str]) {
    match result {
        Err(e) => {
            let message = e.to_string();
            for word in words {
                assert!(message.contains(word), "{case}: `{message}` lacks `{word}`");
            }
        }
        Ok(v) => panic!("{case}: expected an error naming {words:?}, got Ok({v:?})"),
    }
}

fn sgd() -> OptimizerConfig {
    OptimizerConfig::Sgd(SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        dampening: 0.0,
        weight_decay: 0.0,
    })
}

// ---- Class 1: sizes from a file are checked before anything of their size is allocated ----

#[test]
fn class1_fixture_claiming_huge_sizes_is_an_error_naming_the_tensor_or_key() {
    let dir = TempDir::new("hostile");
    let original = std::fs::read(fixture_path("lstm_2layer_bidir")).unwrap();
    for (key, value, words) in [
        (
            "hidden_size",
            "1048576",
            &["weight_ih_l0", "[4194304, 5]"][..],
        ),
        (
            "hidden_size",
            "1099511627776",
            &["hidden_size", "overflows"][..],
        ),
        (
            "hidden_size",
            "4611686018427387904",
            &["hidden_size", "overflows"][..],
        ),
        (
            "hidden_size",
            "18446744073709551615",
            &["hidden_size", "overflows"][..],
        ),
        ("num_layers", "1000000000000", &["weight_ih_l2"][..]),
        ("num_layers", "9223372036854775807", &["overflows"][..]),
        (
            "input_size",
            "1099511627776",
            &["weight_ih_l0", "1099511627776"][..],
        ),
        ("seq_len", "1099511627776", &["input", "1099511627776"][..]),
        ("batch", "18446744073709551615", &["input"][..]),
        (
            "hidden_size",
            "-4",
            &["hidden_size", "non-negative integer"][..],
        ),
        ("num_layers", "0", &["num_layers"][..]),
    ] {
        let path = file(&dir, "f.safetensors", &set_metadata(&original, key, value));
        assert_error(
            &format!("{key} = {value}"),
            Fixture::<f32>::load(&path),
            words,
        );
    }
}

#[test]
fn class1_checkpoint_claiming_huge_sizes_is_an_error_naming_the_tensor_or_field() {
    let dir = TempDir::new("hostile");
    for (tokens, path, key, value, words) in [
        (
            false,
            &[][..],
            "hidden",
            json!(1 << 20),
            &["weight_ih_l0", "[3145728, 2]"][..],
        ),
        (
            false,
            &[],
            "hidden",
            json!(1u64 << 40),
            &["hidden_size", "overflows"][..],
        ),
        (false, &[], "hidden", json!(u64::MAX), &["overflows"][..]),
        (
            false,
            &[],
            "layers",
            json!(1u64 << 40),
            &["weight_ih_l2"][..],
        ),
        (false, &[], "layers", json!(u64::MAX), &["overflows"][..]),
        (
            false,
            &[],
            "outputs",
            json!(1u64 << 50),
            &["linear.weight"][..],
        ),
        (
            false,
            &["input"],
            "features",
            json!(1u64 << 40),
            &["weight_ih_l0"][..],
        ),
        (
            true,
            &["input"],
            "vocab",
            json!(1u64 << 40),
            &["embedding.weight"][..],
        ),
        (
            true,
            &["input"],
            "vocab",
            json!(u64::MAX),
            &["overflows"][..],
        ),
        (true, &["input"], "dim", json!(-1), &["dim"][..]),
        (
            false,
            &[],
            "hidden",
            json!(2.5),
            &["checkpoint metadata", "hidden"][..],
        ),
    ] {
        let bytes = set_model_field(&checkpoint_bytes(tokens), path, key, value.clone());
        let file = file(&dir, "c.safetensors", &bytes);
        assert_error(
            &format!("{key} = {value}"),
            load_checkpoint::<f32>(&file),
            words,
        );
    }
}

#[test]
fn class1_params_for_a_huge_config_are_refused_before_allocating() {
    let dir = TempDir::new("hostile");
    let path = file(&dir, "p.safetensors", &params_bytes());
    let huge = params_config().layers(1 << 40);
    assert_error(
        "1<<40 layers",
        RnnParams::<f32>::load_safetensors(&huge, &path),
        &["weight_ih_l2"],
    );
    let mut overflowing = params_config();
    overflowing.hidden_size = usize::MAX / 2;
    assert_error(
        "H = usize::MAX/2",
        RnnParams::<f32>::load_safetensors(&overflowing, &path),
        &["hidden_size", "overflows"],
    );
    assert_error(
        "zeros",
        RnnParams::<f32>::zeros(&overflowing),
        &["overflows"],
    );
}

// ---- Class 2: saves go through a unique temporary and a rename ----

#[test]
fn class2_concurrent_saves_to_names_sharing_a_stem_keep_each_model() {
    let dir = TempDir::new("hostile");
    let config = params_config();
    let models: Vec<RnnParams<f32>> = (0..4)
        .map(|s| RnnParams::init(&config, s).unwrap())
        .collect();
    let names = ["a.safetensors", "a.other", "a", "a.safetensors.tmp"];
    for _ in 0..5 {
        std::thread::scope(|scope| {
            for (model, name) in models.iter().zip(names) {
                let path = dir.path(name);
                scope.spawn(move || model.save_safetensors(&path).unwrap());
            }
        });
        for (model, name) in models.iter().zip(names) {
            let loaded = RnnParams::<f32>::load_safetensors(&config, dir.path(name)).unwrap();
            assert_eq!(&loaded, model, "{name} holds another model");
        }
    }
    assert_eq!(
        dir.names(),
        {
            let mut n = names.map(String::from).to_vec();
            n.sort();
            n
        },
        "no temporary is left behind"
    );
}

#[test]
fn class2_a_failed_save_names_the_destination_and_leaves_no_temporary() {
    let dir = TempDir::new("hostile");
    let params = RnnParams::<f32>::init(&params_config(), 1).unwrap();
    // The destination is a directory: the rename fails after the temporary was written.
    std::fs::create_dir(dir.path("taken.safetensors")).unwrap();
    let dest = dir.path("taken.safetensors");
    assert_error(
        "directory",
        params.save_safetensors(&dest),
        &[&dest.display().to_string()],
    );
    // The destination's directory does not exist.
    let missing = dir.path("missing/p.safetensors");
    assert_error(
        "no directory",
        params.save_safetensors(&missing),
        &[&missing.display().to_string()],
    );
    // A checkpoint of an invalid model fails before writing: the old file stays.
    let model = SeqModel::<f32>::init(&checkpoint_config(false), 1).unwrap();
    let optimizer = Optimizer::new(sgd(), &model.tensor_lens()).unwrap();
    let ckpt = dir.path("c.safetensors");
    save_checkpoint(&ckpt, &model, &optimizer).unwrap();
    let before = std::fs::read(&ckpt).unwrap();
    let mut broken = model.clone();
    broken.linear.bias[0] = f32::NAN;
    assert_error(
        "NaN model",
        save_checkpoint(&ckpt, &broken, &optimizer),
        &["linear.bias"],
    );
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        before,
        "the old checkpoint is intact"
    );
    assert_eq!(
        dir.names(),
        ["c.safetensors", "taken.safetensors"],
        "no temporary is left behind"
    );
}

// ---- Class 4: non-finite weights are errors naming the tensor ----

#[test]
fn class4_non_finite_weights_in_files_are_errors_naming_the_tensor() {
    let dir = TempDir::new("hostile");
    for (bad, name) in [
        (f32::NAN, "weight_hh_l1_reverse"),
        (f32::INFINITY, "bias_ih_l0"),
    ] {
        let bytes = edit_tensors(&params_bytes(), |t| {
            let (_, shape, data) = t.get_mut(name).unwrap();
            let n: usize = shape.iter().product();
            *data = f32_bytes((0..n).map(|i| if i == n / 2 { bad } else { 0.1 }));
        });
        let path = file(&dir, "p.safetensors", &bytes);
        assert_error(
            name,
            RnnParams::<f32>::load_safetensors(&params_config(), &path),
            &[name, "non-finite"],
        );
    }
    let bytes = edit_tensors(&checkpoint_bytes(false), |t| {
        let (_, _, data) = t.get_mut("optim.exp_avg_sq.linear.weight").unwrap();
        data[..4].copy_from_slice(&f32::NEG_INFINITY.to_le_bytes());
    });
    let path = file(&dir, "c.safetensors", &bytes);
    assert_error(
        "optimizer state",
        load_checkpoint::<f32>(&path),
        &["optim.exp_avg_sq.linear.weight", "non-finite"],
    );
    let bytes = edit_tensors(&std::fs::read(fixture_path("gru_1layer")).unwrap(), |t| {
        let (_, _, data) = t.get_mut("output").unwrap();
        data[8..16].copy_from_slice(&f64::NAN.to_le_bytes());
    });
    let path = file(&dir, "f.safetensors", &bytes);
    assert_error(
        "fixture output",
        Fixture::<f64>::load(&path),
        &["`output`", "non-finite"],
    );
}

#[test]
fn class4_non_finite_weights_built_by_the_user_are_errors_naming_the_tensor() {
    let mut params = RnnParams::<f32>::init(&params_config(), 2).unwrap();
    params.layers[3].w_hh[[5, 1]] = f32::NAN;
    let x = Array3::from_shape_fn((4, 2, 3), |(t, b, i)| ((t * 7 + b * 3 + i) as f32).sin());
    assert_error(
        "cpu forward",
        cpu::forward(&params, &SequenceBatch::new(x.view())),
        &["weight_hh_l1_reverse", "non-finite"],
    );
    let named = params.named().into_iter().collect();
    assert_error(
        "from_named",
        RnnParams::<f32>::from_named(&params_config(), &named),
        &["weight_hh_l1_reverse"],
    );
    let mut model = SeqModel::<f32>::init(&checkpoint_config(true), 1).unwrap();
    model.embedding.as_mut().unwrap().weight[[4, 2]] = f32::INFINITY;
    assert_error(
        "model",
        model.validate(),
        &["embedding.weight", "non-finite"],
    );

    let Some(ctx) = common::gpu() else { return };
    assert_error(
        "GpuRnn::new",
        GpuRnn::new(ctx.clone(), &params),
        &["weight_hh_l1_reverse", "non-finite"],
    );
    let good = RnnParams::<f32>::init(&params_config(), 2).unwrap();
    let mut gpu = GpuRnn::new(ctx, &good).unwrap();
    assert_error(
        "update_params",
        gpu.update_params(&params),
        &["weight_hh_l1_reverse", "non-finite"],
    );
}

// ---- Class 6: lossy conversions are refused; no out-of-range index panics ----

#[test]
fn class6_lossy_dtype_conversions_are_refused_naming_tensor_and_dtype() {
    let dir = TempDir::new("hostile");
    let as_dtype = |dtype: Dtype, value: &dyn Fn(usize) -> Vec<u8>| {
        edit_tensors(&params_bytes(), |t| {
            let (d, shape, data) = t.get_mut("weight_ih_l0").unwrap();
            *d = dtype;
            *data = (0..shape.iter().product()).flat_map(value).collect();
        })
    };
    // i64 weights: exact small integers load, 2^24 + 1 does not fit an f32, 2^53 + 1 no f64.
    let small = file(
        &dir,
        "small.safetensors",
        &as_dtype(Dtype::I64, &|i| (i as i64 - 3).to_le_bytes().to_vec()),
    );
    let loaded = RnnParams::<f32>::load_safetensors(&params_config(), &small).unwrap();
    assert_eq!(loaded.layers[0].w_ih[[0, 1]], -2.0);
    let big = file(
        &dir,
        "big.safetensors",
        &as_dtype(Dtype::I64, &|i| {
            ((1i64 << 24) + 1 + i as i64).to_le_bytes().to_vec()
        }),
    );
    assert_error(
        "i64 → f32",
        RnnParams::<f32>::load_safetensors(&params_config(), &big),
        &["weight_ih_l0", "I64", "16777217", "F32"],
    );
    RnnParams::<f64>::load_safetensors(&params_config(), &big).unwrap();
    let huge = file(
        &dir,
        "huge.safetensors",
        &as_dtype(Dtype::I64, &|_| i64::MAX.to_le_bytes().to_vec()),
    );
    assert_error(
        "i64 → f64",
        RnnParams::<f64>::load_safetensors(&params_config(), &huge),
        &["weight_ih_l0", "I64", "F64"],
    );
    // f64 beyond f32's range.
    let wide = file(
        &dir,
        "wide.safetensors",
        &as_dtype(Dtype::F64, &|_| 1e300f64.to_le_bytes().to_vec()),
    );
    assert_error(
        "f64 → f32",
        RnnParams::<f32>::load_safetensors(&params_config(), &wide),
        &["weight_ih_l0", "F64", "F32"],
    );
    // Half floats and integers other than i64 are not weights.
    let half = file(
        &dir,
        "half.safetensors",
        &as_dtype(Dtype::F16, &|_| vec![0, 0x3c]),
    );
    assert_error(
        "f16",
        RnnParams::<f32>::load_safetensors(&params_config(), &half),
        &["weight_ih_l0", "F16"],
    );
    // Fixture lengths: negative.
    let bytes = edit_tensors(&std::fs::read(fixture_path("lstm_varlen")).unwrap(), |t| {
        let (_, _, data) = t.get_mut("lengths").unwrap();
        data[..8].copy_from_slice(&(-3i64).to_le_bytes());
    });
    let path = file(&dir, "f.safetensors", &bytes);
    assert_error("negative length", Fixture::<f32>::load(&path), &["-3"]);
}

#[test]
fn class6_out_of_range_indices_are_errors() {
    let params = RnnParams::<f32>::init(&params_config(), 3).unwrap();
    assert!(params.layer(1, 1).is_ok());
    assert_error("layer 2", params.layer(2, 0), &["layer 2"]);
    assert_error("direction 2", params.layer(0, 2), &["direction 2"]);
    let mut short = params.clone();
    short.layers.truncate(2);
    assert_error("missing layers", short.layer(1, 0), &["2 held"]);

    let embedding = Embedding::<f32>::init(5, 3, 1);
    let tokens = Array2::from_shape_vec((2, 2), vec![0, 4, 5, 1]).unwrap();
    assert_error("token", embedding.forward(tokens.view()), &["token id 5"]);
    let logits = Array2::<f32>::zeros((2, 3));
    assert_error(
        "target",
        cross_entropy(logits.view(), &[0, 3]),
        &["target 3"],
    );
    assert_error("targets", cross_entropy(logits.view(), &[0]), &["targets"]);

    let rows = Array2::<f32>::zeros((2, 4));
    assert_error(
        "T = 0",
        Readout::LastStep.scatter(rows.clone(), 0, 2),
        &["(0, 2)"],
    );
    assert_error(
        "T·B overflows",
        Readout::EveryStep.scatter(rows.clone(), usize::MAX, 2),
        &["scatter"],
    );
    assert_error(
        "huge T",
        Readout::LastStep.scatter(rows, usize::MAX / 2, 2),
        &["scatter"],
    );

    let mut model = SeqModel::<f32>::init(&checkpoint_config(false), 1).unwrap();
    model.config.cell = CellKind::Lstm;
    model.config.hidden = 40;
    assert_error("forget bias", model.set_forget_bias(1.0), &["hidden"]);
}

/// A valid file of each kind still loads (the hostile cases above are not vacuous).
#[test]
fn valid_files_load() {
    let dir = TempDir::new("hostile");
    let path = file(&dir, "p.safetensors", &params_bytes());
    RnnParams::<f64>::load_safetensors(&params_config(), &path).unwrap();
    for tokens in [false, true] {
        let path = file(&dir, "c.safetensors", &checkpoint_bytes(tokens));
        let (model, optimizer) = load_checkpoint::<f32>(&path).unwrap();
        assert_eq!(model.config, checkpoint_config(tokens));
        assert_eq!(optimizer.step, 11);
    }
    Fixture::<f32>::load(fixture_path("lstm_varlen")).unwrap();
}
