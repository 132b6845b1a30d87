//! Builders of valid and deliberately broken safetensors files (parameters, torch fixtures,
//! checkpoints) for tests/hostile_library.rs and tests/loader_mutation.rs.
#![allow(dead_code)] // each test binary uses its own subset

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use wgpu_rnn::train::{
    save_checkpoint, AdamConfig, ModelInput, Optimizer, OptimizerConfig, Readout, SeqModel,
    SeqModelConfig,
};
use wgpu_rnn::{CellKind, RnnConfig, RnnParams};

/// A temporary directory (in /dev/shm where it exists: thousands of small writes to a disk
/// are slow), removed with everything in it on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let shm = Path::new("/dev/shm");
        let root = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = root.join(format!(
            "wgpu_rnn_{label}_{}_{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The names of the files in the directory, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A checked-in torch fixture, e.g. `lstm_varlen`.
pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torch")
        .join(format!("{name}.safetensors"))
}

/// The config of [`params_bytes`]: a 2-layer bidirectional LSTM, 3 features, 4 hidden.
pub fn params_config() -> RnnConfig {
    RnnConfig::new(CellKind::Lstm, 3, 4)
        .layers(2)
        .bidirectional(true)
}

/// A valid f32 parameter file of [`params_config`], seeded.
pub fn params_bytes() -> Vec<u8> {
    let dir = TempDir::new("params");
    let path = dir.path("p.safetensors");
    RnnParams::<f32>::init(&params_config(), 7)
        .unwrap()
        .save_safetensors(&path)
        .unwrap();
    std::fs::read(&path).unwrap()
}

/// The config of [`checkpoint_bytes`]: a 2-layer GRU on tokens (`tokens`) or features.
pub fn checkpoint_config(tokens: bool) -> SeqModelConfig {
    SeqModelConfig {
        cell: CellKind::Gru,
        input: if tokens {
            ModelInput::Tokens { vocab: 5, dim: 3 }
        } else {
            ModelInput::Features(2)
        },
        hidden: 4,
        layers: 2,
        outputs: 3,
        dropout: 0.1,
        readout: Readout::EveryStep,
    }
}

/// A valid f32 checkpoint of a seeded [`checkpoint_config`] model with Adam state.
pub fn checkpoint_bytes(tokens: bool) -> Vec<u8> {
    let dir = TempDir::new("checkpoint");
    let path = dir.path("c.safetensors");
    let model = SeqModel::<f32>::init(&checkpoint_config(tokens), 3).unwrap();
    let mut optimizer = Optimizer::new(
        OptimizerConfig::Adam(AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }),
        &model.tensor_lens(),
    )
    .unwrap();
    optimizer.step = 11;
    for state in optimizer.state.iter_mut().flatten() {
        for (i, v) in state.iter_mut().enumerate() {
            *v = (i as f32 * 0.37).sin().abs();
        }
    }
    save_checkpoint(&path, &model, &optimizer).unwrap();
    std::fs::read(&path).unwrap()
}

/// The JSON header and the data section of a safetensors file.
pub fn split(bytes: &[u8]) -> (Map<String, Value>, &[u8]) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, &bytes[8 + n..])
}

/// A safetensors file from a header and a data section (the length field recomputed).
pub fn join(header: &Map<String, Value>, data: &[u8]) -> Vec<u8> {
    let text = serde_json::to_vec(header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(data);
    out
}

/// The file with its header edited by `edit`.
pub fn edit_header(bytes: &[u8], edit: impl FnOnce(&mut Map<String, Value>)) -> Vec<u8> {
    let (mut header, data) = split(bytes);
    edit(&mut header);
    join(&header, data)
}

/// The file with `__metadata__[key]` set to the JSON text `value`.
pub fn set_metadata(bytes: &[u8], key: &str, value: &str) -> Vec<u8> {
    edit_header(bytes, |h| {
        h["__metadata__"][key] = Value::String(value.to_string());
    })
}

/// A checkpoint with field `key` of its `model` metadata set to `value` (`path` picks a nested
/// object, e.g. `["input"]`).
pub fn set_model_field(bytes: &[u8], path: &[&str], key: &str, value: Value) -> Vec<u8> {
    let (header, _) = split(bytes);
    let mut model: Value =
        serde_json::from_str(header["__metadata__"]["model"].as_str().unwrap()).unwrap();
    let mut target = &mut model;
    for p in path {
        target = &mut target[*p];
    }
    target[key] = value;
    set_metadata(bytes, "model", &model.to_string())
}

/// One tensor of a file, owned: (dtype, shape, little-endian data).
pub type Tensor = (Dtype, Vec<usize>, Vec<u8>);

/// The file rebuilt after `edit` changed its tensors (metadata kept).
pub fn edit_tensors(bytes: &[u8], edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> Vec<u8> {
    let file = SafeTensors::deserialize(bytes).unwrap();
    let mut tensors: HashMap<String, Tensor> = file
        .tensors()
        .into_iter()
        .map(|(name, v)| (name, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    edit(&mut tensors);
    let (_, metadata) = SafeTensors::read_metadata(bytes).unwrap();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, (dtype, shape, data))| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, metadata.metadata().clone()).unwrap()
}

/// Little-endian bytes of f32 values.
pub fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}
