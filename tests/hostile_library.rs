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
use ndarray::{Array1, Array2, Array3, Axis};
use safetensors::Dtype;
use serde_json::json;
use wgpu_rnn::gpu::GpuRnn;
use wgpu_rnn::train::{
    cross_entropy, load_checkpoint, save_checkpoint, Backend, Clip, DropoutKey, Embedding,
    GpuTrainer, Inputs, Linear, ModelInput, Optimizer, OptimizerConfig, Readout, SeqModel,
    SgdConfig, Targets, Trainer,
};
use wgpu_rnn::{cpu, CellKind, Nonlinearity, RnnConfig, RnnParams, Scalar, SequenceBatch};

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

/// Whether an allocation of `bytes` fails on this machine rather than being promised and
/// only failing when touched: Linux without "always overcommit" (vm.overcommit_memory = 1)
/// refuses one allocation larger than its memory plus swap.
fn allocation_fails(bytes: u64) -> bool {
    let (Ok(mode), Ok(meminfo)) = (
        std::fs::read_to_string("/proc/sys/vm/overcommit_memory"),
        std::fs::read_to_string("/proc/meminfo"),
    ) else {
        return false;
    };
    let kib = |key: &str| {
        meminfo.lines().find_map(|line| {
            let kib = line.strip_prefix(key)?.trim().strip_suffix("kB")?;
            kib.trim().parse::<u64>().ok()
        })
    };
    match (kib("MemTotal:"), kib("SwapTotal:")) {
        (Some(mem), Some(swap)) => mode.trim() != "1" && (mem + swap).saturating_mul(1024) < bytes,
        _ => false,
    }
}

#[test]
fn class1_train_layers_of_overflowing_or_huge_sizes_are_errors_naming_the_tensor() {
    assert_error(
        "V·E overflows",
        Embedding::<f32>::init(usize::MAX, 2, 1),
        &["embedding.weight", "overflows"],
    );
    // 2^40 × 2^12 f32: 16 PiB, beyond any address space.
    assert_error(
        "huge embedding",
        Embedding::<f32>::init(1 << 40, 1 << 12, 1),
        &[
            "embedding.weight",
            "[1099511627776, 4096]",
            "18014398509481984 bytes",
        ],
    );
    assert_error(
        "O·H overflows",
        Linear::<f32>::init(usize::MAX / 2, 3, 1),
        &["linear.weight", "overflows"],
    );
    assert_error(
        "huge linear",
        Linear::<f64>::init(1 << 40, 1 << 10, 1),
        &[
            "linear.weight",
            "[1024, 1099511627776]",
            "9007199254740992 bytes",
        ],
    );
    // An empty weight, but a bias of 2^60 f32.
    assert_error(
        "huge bias",
        Linear::<f32>::init(0, 1 << 60, 1),
        &["linear.bias", "4611686018427387904 bytes"],
    );
    assert_error(
        "O overflows",
        Linear::<f32>::init(0, usize::MAX, 1),
        &["linear.weight", "[18446744073709551615, 0]", "overflows"],
    );
    // The same through a model config that passes the size check (2^52 parameters).
    let mut config = checkpoint_config(true);
    config.input = ModelInput::Tokens {
        vocab: 1 << 40,
        dim: 1 << 12,
    };
    assert_error(
        "model",
        SeqModel::<f32>::init(&config, 1).map(|_| ()),
        &["embedding.weight", "bytes"],
    );
    // The output layer's gradient scattered into 2^44 steps: 512 TiB.
    assert_error(
        "huge scatter",
        Readout::LastStep.scatter(Array2::<f32>::ones((2, 4)), 1 << 44, 2),
        &[
            "grad_output",
            "[17592186044416, 2, 4]",
            "562949953421312 bytes",
        ],
    );
    // Small sizes still work, H = 0 included (torch: an empty weight and a zero bias).
    let linear = Linear::<f32>::init(0, 3, 1).unwrap();
    assert_eq!(linear.bias, Array1::<f32>::zeros(3));
    assert_eq!(
        Embedding::<f64>::init(5, 3, 1).unwrap().weight.dim(),
        (5, 3)
    );
}

#[test]
fn class1_params_of_a_valid_config_too_large_for_memory_are_an_error_naming_the_tensor() {
    // No overflow (about 2^53 parameters), but weight_hh_l0 alone is 2^22 × 2^20 f32: 16 TiB,
    // and all of them together far more: refused before anything is allocated.
    let config = RnnConfig::new(CellKind::Lstm, 1, 1 << 20).layers(1000);
    let total = wgpu_rnn::params::param_count(&config).unwrap();
    let shape = format!("[{total}]");
    let bytes = format!("{} bytes", total * 4);
    let words = ["parameters", shape.as_str(), bytes.as_str()];
    assert_error(
        "zeros",
        RnnParams::<f32>::zeros(&config).map(|_| ()),
        &words,
    );
    assert_error(
        "init",
        RnnParams::<f32>::init(&config, 1).map(|_| ()),
        &words,
    );
    // Many small layers (hidden 1, 2^30 layers: 16 f32 each, 64 GiB in all): each tensor would
    // fit, their sum does not.
    let config = RnnConfig::new(CellKind::Lstm, 1, 1).layers(1 << 30);
    let total = wgpu_rnn::params::param_count(&config).unwrap();
    if !allocation_fails(total as u64 * 4) {
        eprintln!(
            "skipped: an allocation of {} bytes may be promised here",
            total * 4
        );
        return;
    }
    assert_error(
        "zeros of many small layers",
        RnnParams::<f32>::zeros(&config).map(|_| ()),
        &["parameters", "bytes"],
    );
}

#[test]
fn class1_a_cpu_workload_too_large_for_memory_is_an_error_naming_the_tensor() {
    // Parameters of 67 MB and a cheap input (one value broadcast to T = 2^25 steps), but the
    // output (T·B, H) of 2^25 × 2^12 f32 is 512 GiB.
    let (t, h) = (1 << 25, 1 << 12);
    let bytes = (t * h * 4) as u64;
    if !allocation_fails(bytes) {
        eprintln!("skipped: an allocation of {bytes} bytes may be promised here and fail late");
        return;
    }
    let config = RnnConfig::new(CellKind::Rnn(Nonlinearity::Tanh), 1, h);
    let params = RnnParams::<f32>::init(&config, 1).unwrap();
    let one = Array3::from_elem((1, 1, 1), 0.5f32);
    let x = one.broadcast((t, 1, 1)).unwrap();
    let words = ["output", "[33554432, 4096]", "549755813888 bytes"];
    assert_error(
        "forward",
        cpu::forward(&params, &SequenceBatch::new(x)).map(|_| ()),
        &words,
    );
    assert_error(
        "forward_train",
        cpu::forward_train(&params, &SequenceBatch::new(x)).map(|_| ()),
        &words,
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

    let embedding = Embedding::<f32>::init(5, 3, 1).unwrap();
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

// ---- Class 6: model tensors in any memory layout; no layout panics ----

/// `model` with tensors stored in other layouts, values unchanged: column-major weights
/// (`w.reversed_axes()` of a transposed copy) and a bias with a negative stride.
fn relayout<F: Scalar>(model: &SeqModel<F>) -> SeqModel<F> {
    let column_major = |a: &Array2<F>| a.t().as_standard_layout().into_owned().reversed_axes();
    let mut odd = model.clone();
    if let Some(e) = odd.embedding.as_mut() {
        e.weight = column_major(&e.weight);
    }
    let l0 = &mut odd.rnn[0].layers[0];
    l0.w_hh = column_major(&l0.w_hh);
    let bias = odd.rnn[1].layers[0].b_ih.as_mut().unwrap();
    let mut reversed: Array1<F> = bias.iter().rev().copied().collect();
    reversed.invert_axis(Axis(0));
    *bias = reversed;
    odd.linear.weight = column_major(&odd.linear.weight);
    assert_eq!(&odd, model, "the values are unchanged");
    assert!(!odd.linear.weight.is_standard_layout() && !bias_layout_is_standard(&odd));
    odd
}

fn bias_layout_is_standard<F: Scalar>(model: &SeqModel<F>) -> bool {
    model.rnn[1].layers[0]
        .b_ih
        .as_ref()
        .unwrap()
        .is_standard_layout()
}

/// max |a − b| over all tensors.
fn max_diff<F: Scalar>(a: &SeqModel<F>, b: &SeqModel<F>) -> f64 {
    let (a, b) = (a.tensors().unwrap().concat(), b.tensors().unwrap().concat());
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(&x, &y)| (Scalar::to_f64(x) - Scalar::to_f64(y)).abs())
        .fold(0.0, f64::max)
}

#[test]
fn class6_a_model_in_non_standard_layout_is_named_by_tensors_and_trains_like_a_standard_one() {
    let model = SeqModel::<f64>::init(&checkpoint_config(true), 5).unwrap();
    let odd = relayout(&model);
    assert_error(
        "tensors",
        odd.tensors(),
        &["embedding.weight", "standard", "make_standard_layout"],
    );
    let mut partly = odd.clone();
    partly.embedding = model.embedding.clone();
    assert_error("tensors", partly.tensors(), &["weight_hh_l0", "standard"]);
    partly.rnn[0] = model.rnn[0].clone();
    assert_error("tensors", partly.tensors(), &["bias_ih_l1", "standard"]);
    // Lengths, names and counts need no layout.
    assert_eq!(odd.tensor_lens(), model.tensor_lens());
    assert_eq!(odd.num_parameters(), model.num_parameters());
    let names: Vec<String> = model.named().into_iter().map(|(name, _)| name).collect();
    assert_eq!(odd.tensor_names(), names);
    odd.validate().unwrap();

    // The same loss and gradients (with dropout) as the standard-layout model.
    let tokens = Array2::from_shape_fn((4, 2), |(t, b)| (t * 3 + b) % 5);
    let classes: Vec<usize> = (0..8).map(|i| i % 3).collect();
    let (inputs, targets) = (Inputs::Tokens(tokens.view()), Targets::Classes(&classes));
    let key = Some(DropoutKey { seed: 1, step: 2 });
    let (loss, grads) = model.loss_and_grads(&inputs, &targets, key).unwrap();
    let (odd_loss, odd_grads) = odd.loss_and_grads(&inputs, &targets, key).unwrap();
    assert!(
        (odd_loss - loss).abs() <= 1e-12 * loss.abs(),
        "{odd_loss} vs {loss}"
    );
    assert!(max_diff(&odd_grads, &grads) <= 1e-12);

    // tensors_mut stores every tensor in standard layout, values unchanged.
    let mut fixed = odd.clone();
    let lens: Vec<usize> = fixed.tensors_mut().iter().map(|t| t.len()).collect();
    assert_eq!(lens, model.tensor_lens());
    assert_eq!(fixed.tensors().unwrap(), model.tensors().unwrap());
    let mut fixed = odd.clone();
    fixed.make_standard_layout();
    assert_eq!(fixed.tensors().unwrap(), model.tensors().unwrap());

    // Training steps through the Trainer, and a checkpoint of the model as given.
    let (inputs, targets) = (Inputs::Tokens(tokens.view()), Targets::Classes(&classes));
    let model = SeqModel::<f32>::init(&checkpoint_config(true), 5).unwrap();
    let odd = relayout(&model);
    let train = |m: &SeqModel<f32>| {
        let optimizer = Optimizer::new(sgd(), &m.tensor_lens()).unwrap();
        let mut trainer = Trainer::new(Backend::Cpu, m.clone(), optimizer).unwrap();
        for step in 0..3 {
            let key = Some(DropoutKey { seed: 1, step });
            trainer
                .step(&inputs, &targets, Clip::Norm(1.0), key)
                .unwrap();
        }
        trainer.finish(None).unwrap()
    };
    let trained = train(&model);
    assert!(max_diff(&train(&odd), &trained) <= 1e-6);
    assert!(
        max_diff(&trained, &model) > 1e-3,
        "the steps changed the model"
    );
    let dir = TempDir::new("hostile");
    let optimizer = Optimizer::new(sgd(), &odd.tensor_lens()).unwrap();
    save_checkpoint(dir.path("c.safetensors"), &odd, &optimizer).unwrap();
    let (loaded, _) = load_checkpoint::<f32>(dir.path("c.safetensors")).unwrap();
    assert_eq!(loaded.tensors().unwrap(), model.tensors().unwrap());

    let Some(ctx) = common::gpu() else { return };
    let gpu_train = |m: &SeqModel<f32>| {
        let mut trainer = GpuTrainer::new(ctx.clone(), m, sgd()).unwrap();
        for step in 0..2 {
            let key = Some(DropoutKey { seed: 1, step });
            trainer
                .step(&inputs, &targets, Clip::Norm(1.0), key)
                .unwrap();
        }
        trainer.model().unwrap()
    };
    let on_gpu = gpu_train(&model);
    assert_eq!(max_diff(&gpu_train(&odd), &on_gpu), 0.0);
    assert!(
        max_diff(&on_gpu, &model) > 1e-3,
        "the GPU steps changed the model"
    );
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
