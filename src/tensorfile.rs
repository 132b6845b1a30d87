//! Reading and writing named tensors in safetensors files.

use crate::error::{Result, RnnError};
use crate::scalar::Scalar;
use ndarray::{ArrayD, IxDyn};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Reads a whole file, mapping the I/O error to one that names the path.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| RnnError::io(path, e))
}

/// Parses a safetensors file read from `path`.
pub fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes).map_err(|e| RnnError::safetensors(path, e))
}

/// The header's `__metadata__` of a safetensors file read from `path` (empty when absent).
pub fn metadata(path: &Path, bytes: &[u8]) -> Result<HashMap<String, String>> {
    let (_, header) =
        SafeTensors::read_metadata(bytes).map_err(|e| RnnError::safetensors(path, e))?;
    Ok(header.metadata().clone().unwrap_or_default())
}

/// Converts one stored tensor (f32, f64 or i64) to an array of `F`. Every value must be finite
/// and representable in `F`: an f64 beyond f32's range or an i64 that `F` cannot hold exactly is
/// an error naming the tensor and its dtype (rounding f64 to f32 precision is not).
pub fn view_to_array<F: Scalar>(name: &str, view: &TensorView<'_>) -> Result<ArrayD<F>> {
    let data = view.data();
    let values: Vec<F> = match view.dtype() {
        Dtype::F32 => convert(name, view, data, 4, |b| {
            f32::from_le_bytes(b.try_into().unwrap()) as f64
        })?,
        Dtype::F64 => convert(name, view, data, 8, |b| {
            f64::from_le_bytes(b.try_into().unwrap())
        })?,
        Dtype::I64 => data
            .chunks_exact(8)
            .enumerate()
            .map(|(index, b)| {
                let v = i64::from_le_bytes(b.try_into().unwrap());
                let x = F::from_f64(v as f64);
                // Through i128, so that 2^63 does not saturate back to i64::MAX.
                if x.to_f64() as i128 == v as i128 {
                    Ok(x)
                } else {
                    Err(conversion_error::<F>(name, view, index, v.to_string()))
                }
            })
            .collect::<Result<_>>()?,
        other => {
            return Err(RnnError::Dtype {
                tensor: name.to_string(),
                expected: "F32, F64 or I64".into(),
                got: format!("{other:?}"),
            })
        }
    };
    ArrayD::from_shape_vec(IxDyn(view.shape()), values)
        .map_err(|_| RnnError::Metadata(format!("tensor `{name}`: data does not match its shape")))
}

/// Converts the floats of `data` (`width` bytes each, read by `read`) to `F`, refusing NaN,
/// infinity and values beyond `F`'s range.
fn convert<F: Scalar>(
    name: &str,
    view: &TensorView<'_>,
    data: &[u8],
    width: usize,
    read: impl Fn(&[u8]) -> f64,
) -> Result<Vec<F>> {
    data.chunks_exact(width)
        .enumerate()
        .map(|(index, b)| {
            let v = read(b);
            if !v.is_finite() {
                return Err(RnnError::NonFinite {
                    tensor: name.to_string(),
                    index,
                });
            }
            let x = F::from_f64(v);
            if x.is_finite() {
                Ok(x)
            } else {
                Err(conversion_error::<F>(name, view, index, v.to_string()))
            }
        })
        .collect()
}

fn conversion_error<F: Scalar>(
    name: &str,
    view: &TensorView<'_>,
    index: usize,
    value: String,
) -> RnnError {
    RnnError::Conversion {
        tensor: name.to_string(),
        dtype: format!("{:?}", view.dtype()),
        target: format!("{:?}", F::DTYPE),
        index,
        value,
    }
}

/// All tensors of a parsed file as arrays of `F`, keyed by name.
pub fn all_arrays<F: Scalar>(file: &SafeTensors<'_>) -> Result<HashMap<String, ArrayD<F>>> {
    file.tensors()
        .into_iter()
        .map(|(name, view)| Ok((name.clone(), view_to_array(&name, &view)?)))
        .collect()
}

/// Writes named arrays (in `F`'s dtype) and optional metadata to `path`.
pub fn write_arrays<F: Scalar>(
    path: &Path,
    tensors: &[(String, ArrayD<F>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(name, a)| {
            let data = a.iter().flat_map(|v| v.to_le()).collect();
            (name.clone(), data, a.shape().to_vec())
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, data, shape)| {
            Ok((
                name.as_str(),
                TensorView::new(F::DTYPE, shape.clone(), data)
                    .map_err(|e| RnnError::safetensors(path, e))?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let out =
        safetensors::serialize(views, metadata).map_err(|e| RnnError::safetensors(path, e))?;
    write_atomic(path, &out)
}

/// Saves made by this process so far: makes every temporary name unique.
static SAVES: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically, see [`save_atomic`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    save_atomic(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| RnnError::io(path, e))
    })
}

/// Saves a file without ever exposing a partial one: `write` fills a temporary beside `path`,
/// named after it and unique per save (`.a.png.tmp-<pid>-<n>.png` for `a.png`: the extension
/// stays last for writers that pick a format from it), which is then synced to disk and renamed
/// over `path`. On failure the temporary is removed and `path` is left as it was; `write`'s
/// errors should name `path` (the temporary is an implementation detail), the others do.
pub fn save_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let file_name = path.file_name().ok_or_else(|| {
        RnnError::io(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
        )
    })?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        SAVES.fetch_add(1, Ordering::Relaxed)
    ));
    if let Some(extension) = path.extension() {
        tmp_name.push(".");
        tmp_name.push(extension);
    }
    let tmp = path.with_file_name(tmp_name);
    let saved = write(&tmp).and_then(|()| {
        OpenOptions::new()
            .write(true)
            .open(&tmp)
            .and_then(|file| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| RnnError::io(path, e))
    });
    if saved.is_err() {
        // The temporary may not exist (the write failed early): nothing else to undo.
        let _ = std::fs::remove_file(&tmp);
    }
    saved
}
