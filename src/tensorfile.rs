//! Reading and writing named tensors in safetensors files.

use crate::error::{Result, RnnError};
use crate::scalar::Scalar;
use ndarray::{ArrayD, IxDyn};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

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

/// Converts one stored tensor (f32, f64 or i64) to an array of `F`.
pub fn view_to_array<F: Scalar>(name: &str, view: &TensorView<'_>) -> Result<ArrayD<F>> {
    let data = view.data();
    let values: Vec<F> = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| F::from_f64(f32::from_le_bytes(b.try_into().unwrap()) as f64))
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| F::from_f64(f64::from_le_bytes(b.try_into().unwrap())))
            .collect(),
        Dtype::I64 => data
            .chunks_exact(8)
            .map(|b| F::from_f64(i64::from_le_bytes(b.try_into().unwrap()) as f64))
            .collect(),
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
    // Write to a temporary file first so that a failure never truncates an existing file.
    let tmp = path.with_extension("safetensors.tmp");
    std::fs::write(&tmp, out).map_err(|e| RnnError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| RnnError::io(path, e))
}
