//! Mutation test over the loaders: thousands of seeded random corruptions of valid parameter,
//! fixture and checkpoint files (bit flips, byte overwrites in the JSON header, length fields,
//! truncation, extension, hostile sizes in the metadata and the tensor table). Every load must
//! return `Ok` or `Err`: a panic fails the test, an abort kills it. A counting global allocator
//! checks that no load holds more than a few times the file's size in memory.
//!
//! `WGPU_RNN_MUTATIONS=n` sets the mutations per file (default 2000); with
//! `WGPU_RNN_MUTATION_VERBOSE=1` each case is printed before it runs (to find one that aborts).

mod bad_files;
mod common;

use bad_files::{checkpoint_bytes, fixture_path, params_bytes, params_config, TempDir};
use common::fixture::Fixture;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::Value;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::time::Instant;
use wgpu_rnn::train::load_checkpoint;
use wgpu_rnn::{Result, RnnParams};

/// Counts the bytes live on this thread and their peak.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn record(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the most bytes it held at once on this thread.
fn peak_bytes<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, (PEAK.with(Cell::get) - base).max(0) as usize)
}

/// What a load may hold: the file read whole, its tensors converted (f32 → f64 doubles them),
/// the model built from them, plus a constant for headers, names and small vectors.
fn allowed_bytes(file_len: usize) -> usize {
    8 * file_len + (256 << 10)
}

/// Hostile numbers for sizes and counts.
const HOSTILE_NUMBERS: [&str; 12] = [
    "0",
    "-1",
    "1.5",
    "1e30",
    "4294967296",
    "1099511627776",
    "4611686018427387904",
    "9223372036854775807",
    "18446744073709551615",
    "null",
    "\"7\"",
    "[3]",
];

/// One random corruption of a valid safetensors file.
fn mutate(rng: &mut StdRng, original: &[u8]) -> (String, Vec<u8>) {
    let mut bytes = original.to_vec();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    match rng.random_range(0..8) {
        0 => {
            let flips = rng.random_range(1..=8);
            for _ in 0..flips {
                let i = rng.random_range(0..bytes.len());
                bytes[i] ^= 1 << rng.random_range(0..8);
            }
            (format!("{flips} bit flips"), bytes)
        }
        1 => {
            let i = rng.random_range(8..8 + header_len);
            let b = if rng.random() {
                rng.random()
            } else {
                b"0123456789-.e,:[]{}\""[rng.random_range(0..20)]
            };
            bytes[i] = b;
            (format!("header byte {i} = {b}"), bytes)
        }
        2 => {
            let n = match rng.random_range(0..6) {
                0 => 0,
                1 => header_len as u64 - 1,
                2 => header_len as u64 + 1,
                3 => original.len() as u64,
                4 => u64::MAX,
                _ => rng.random(),
            };
            bytes[..8].copy_from_slice(&n.to_le_bytes());
            (format!("header length {n}"), bytes)
        }
        3 => {
            let len = rng.random_range(0..bytes.len());
            bytes.truncate(len);
            (format!("truncated to {len}"), bytes)
        }
        4 => {
            let extra = rng.random_range(1..64);
            bytes.extend((0..extra).map(|_| rng.random::<u8>()));
            (format!("{extra} bytes appended"), bytes)
        }
        5 => metadata_mutation(rng, original),
        _ => table_mutation(rng, original),
    }
}

/// A hostile value in the metadata, also inside its JSON objects (checkpoint configs).
fn metadata_mutation(rng: &mut StdRng, original: &[u8]) -> (String, Vec<u8>) {
    let (mut header, data) = bad_files::split(original);
    if !header.contains_key("__metadata__") {
        return table_mutation(rng, original);
    }
    let metadata = header["__metadata__"].as_object_mut().unwrap();
    let keys: Vec<String> = metadata.keys().cloned().collect();
    let key = &keys[rng.random_range(0..keys.len())];
    let hostile = HOSTILE_NUMBERS[rng.random_range(0..HOSTILE_NUMBERS.len())];
    let text = metadata[key].as_str().unwrap().to_string();
    let mut value: Value = serde_json::from_str(&text).unwrap();
    let description = match value.as_object_mut() {
        Some(object) if rng.random_range(0..4) > 0 => {
            let mut inner = object;
            let mut inner_keys: Vec<String> = inner.keys().cloned().collect();
            let mut field = inner_keys[rng.random_range(0..inner_keys.len())].clone();
            if inner[&field].is_object() {
                inner = inner[&field].as_object_mut().unwrap();
                inner_keys = inner.keys().cloned().collect();
                field = inner_keys[rng.random_range(0..inner_keys.len())].clone();
            }
            inner[&field] = serde_json::from_str(hostile).unwrap();
            format!("metadata {key}.{field} = {hostile}")
        }
        _ => {
            value = serde_json::from_str(hostile).unwrap();
            format!("metadata {key} = {hostile}")
        }
    };
    metadata[key] = Value::String(value.to_string());
    (description, bad_files::join(&header, data))
}

/// A change to one tensor's entry: shape, dtype, offsets, name, or its removal.
fn table_mutation(rng: &mut StdRng, original: &[u8]) -> (String, Vec<u8>) {
    let (mut header, data) = bad_files::split(original);
    let names: Vec<String> = header
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    let name = names[rng.random_range(0..names.len())].clone();
    let entry = header[&name].as_object_mut().unwrap();
    let shape: Vec<u64> = entry["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let description = match rng.random_range(0..6) {
        0 => {
            // Same element count, other layout: [a, b] → [b, a], [a·b], [1, a, b].
            let count: u64 = shape.iter().product();
            let new: Vec<u64> = match rng.random_range(0..3) {
                0 => shape.iter().rev().copied().collect(),
                1 => vec![count],
                _ => [1].into_iter().chain(shape.iter().copied()).collect(),
            };
            entry["shape"] = new.clone().into();
            format!("{name}: shape {shape:?} → {new:?}")
        }
        1 => {
            let mut new = shape.clone();
            let dim = rng.random_range(0..new.len().max(1));
            let v: u64 = [0, 1, 1 << 32, 1 << 62, u64::MAX, rng.random()][rng.random_range(0..6)];
            match new.get_mut(dim) {
                Some(d) => *d = v,
                None => new.push(v),
            }
            entry["shape"] = new.clone().into();
            format!("{name}: shape {shape:?} → {new:?}")
        }
        2 => {
            let dtype =
                ["F16", "BF16", "F32", "F64", "I64", "I32", "U8", "BOOL"][rng.random_range(0..8)];
            entry["dtype"] = dtype.into();
            format!("{name}: dtype {dtype}")
        }
        3 => {
            let offsets = entry["data_offsets"].as_array_mut().unwrap();
            let i = rng.random_range(0..2);
            let v = offsets[i].as_u64().unwrap();
            let new = [0, v.wrapping_sub(1), v + 1, data.len() as u64 + 8, u64::MAX]
                [rng.random_range(0..5)];
            offsets[i] = new.into();
            format!("{name}: data_offsets[{i}] {v} → {new}")
        }
        4 => {
            let value = header.remove(&name).unwrap();
            let new = format!("{name}x");
            header.insert(new.clone(), value);
            format!("{name} renamed {new}")
        }
        _ => {
            header.remove(&name);
            format!("{name} removed")
        }
    };
    (description, bad_files::join(&header, data))
}

/// Mutates `original` `count` times under `seed` and loads each through `load` (its flag:
/// load as f64), checking the memory it held.
fn run(label: &str, original: &[u8], seed: u64, load: impl Fn(&Path, bool) -> Result<()>) {
    let count: usize = std::env::var("WGPU_RNN_MUTATIONS")
        .map(|v| v.parse().expect("WGPU_RNN_MUTATIONS: a count"))
        .unwrap_or(2000);
    let verbose = std::env::var_os("WGPU_RNN_MUTATION_VERBOSE").is_some();
    let dir = TempDir::new("mutation");
    let path = dir.path("m.safetensors");
    std::fs::write(&path, original).unwrap();
    load(&path, false).unwrap_or_else(|e| panic!("{label}: the valid file fails: {e}"));
    let start = Instant::now();
    let (mut ok, mut worst) = (0, 0.0f64);
    for i in 0..count {
        let mut rng = StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9));
        let (what, bytes) = mutate(&mut rng, original);
        if verbose {
            eprintln!("{label} #{i}: {what}");
        }
        std::fs::write(&path, &bytes).unwrap();
        let started = Instant::now();
        let (result, peak) = peak_bytes(|| load(&path, i % 2 == 1));
        if verbose {
            eprintln!(
                "  {:?} in {:?}",
                result.as_ref().err().map(ToString::to_string),
                started.elapsed()
            );
        }
        ok += usize::from(result.is_ok());
        let limit = allowed_bytes(bytes.len());
        assert!(
            peak <= limit,
            "{label} #{i} ({what}): a load of a {} B file held {peak} B (limit {limit})",
            bytes.len()
        );
        worst = worst.max(peak as f64 / bytes.len() as f64);
    }
    println!(
        "{label}: {count} mutations in {:.2} s, {ok} loaded, {} refused; peak ≤ {worst:.1}× the \
         file size",
        start.elapsed().as_secs_f64(),
        count - ok
    );
}

#[test]
fn corrupted_parameter_files_and_checkpoints_load_or_fail_cleanly_within_bounded_memory() {
    let config = params_config();
    run("params", &params_bytes(), 1, |path, f64| {
        if f64 {
            RnnParams::<f64>::load_safetensors(&config, path).map(drop)
        } else {
            RnnParams::<f32>::load_safetensors(&config, path).map(drop)
        }
    });
    for tokens in [false, true] {
        let label = if tokens {
            "checkpoint (tokens)"
        } else {
            "checkpoint (features)"
        };
        run(
            label,
            &checkpoint_bytes(tokens),
            20 + tokens as u64,
            |path, f64| {
                if f64 {
                    load_checkpoint::<f64>(path).map(drop)
                } else {
                    load_checkpoint::<f32>(path).map(drop)
                }
            },
        );
    }
}

/// Torch fixtures, read by tests/common/fixture.rs (which the CLI's `verify` includes).
#[test]
fn corrupted_fixtures_load_or_fail_cleanly_within_bounded_memory() {
    for (k, name) in ["lstm_varlen", "gru_2layer_bidir", "rnn_relu_2layer_bidir"]
        .into_iter()
        .enumerate()
    {
        let bytes = std::fs::read(fixture_path(name)).unwrap();
        run(name, &bytes, 10 + k as u64, |path, f64| {
            if f64 {
                Fixture::<f64>::load(path).map(drop)
            } else {
                Fixture::<f32>::load(path).map(drop)
            }
        });
    }
}
