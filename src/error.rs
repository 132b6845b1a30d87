//! The library's single error type.

use crate::scalar::Scalar;
use ndarray::{Array, Dimension, IntoDimension};
use thiserror::Error;

/// Every failure the library reports. Bad input is always one of these, never a panic.
#[derive(Debug, Error)]
pub enum RnnError {
    /// A tensor has the wrong shape.
    #[error("tensor `{tensor}` has shape {got:?}, expected {expected:?}")]
    Shape {
        tensor: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// A configuration value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Per-sequence lengths are out of range.
    #[error("invalid lengths: {0}")]
    Lengths(String),
    /// An input holds NaN or infinity.
    #[error("tensor `{tensor}` holds a non-finite value at flat index {index}")]
    NonFinite { tensor: String, index: usize },
    /// A tensor a model or fixture needs is absent.
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    /// A file holds a tensor the model does not have.
    #[error("unexpected tensor `{0}`")]
    UnexpectedTensor(String),
    /// A tensor has a dtype that cannot be used here.
    #[error("tensor `{tensor}` has dtype {got}, expected {expected}")]
    Dtype {
        tensor: String,
        expected: String,
        got: String,
    },
    /// A file's metadata (fixture keys, checkpoint configuration) is missing or invalid; the
    /// message names the file kind and the key.
    #[error("{0}")]
    Metadata(String),
    /// A stored value cannot be represented in the requested type (an integer beyond the
    /// float's exact range, a float beyond its range).
    #[error("tensor `{tensor}` of dtype {dtype}: value {value} at flat index {index} cannot be represented in {target}")]
    Conversion {
        tensor: String,
        dtype: String,
        target: String,
        index: usize,
        value: String,
    },
    /// A safetensors file could not be parsed or written.
    #[error("{path}: safetensors: {source}")]
    SafeTensors {
        path: String,
        source: safetensors::SafeTensorError,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// No GPU adapter matched the request.
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    /// The GPU device reported an error (validation, out of memory, lost device).
    #[error("GPU device error: {0}")]
    Device(String),
    /// A problem is too large for the adapter's limits and cannot be split.
    #[error("too large for this adapter: {0}")]
    TooLarge(String),
    /// A feature that this build or backend does not provide.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A tensor's memory could not be allocated: its size in bytes overflows (`bytes` is None)
    /// or the allocator refused it.
    #[error("{}", allocation_message(tensor, shape, *bytes))]
    Allocation {
        tensor: String,
        shape: Vec<usize>,
        bytes: Option<usize>,
    },
    /// A model tensor is not in standard (row-major, contiguous) layout where one is needed
    /// ([`SeqModel::tensors`](crate::train::SeqModel::tensors)).
    #[error(
        "tensor `{tensor}` is not in standard (row-major, contiguous) layout: store it as \
         `a.as_standard_layout().into_owned()`, or call `SeqModel::make_standard_layout` \
         (`SeqModel::tensors_mut` does) first"
    )]
    Layout { tensor: String },
}

fn allocation_message(tensor: &str, shape: &[usize], bytes: Option<usize>) -> String {
    match bytes {
        Some(bytes) => format!(
            "cannot allocate tensor `{tensor}` of shape {shape:?}: {bytes} bytes \
             ({:.1} GiB) are not available",
            bytes as f64 / (1u64 << 30) as f64
        ),
        None => format!(
            "cannot allocate tensor `{tensor}` of shape {shape:?}: its size in bytes \
             overflows the address space"
        ),
    }
}

/// Result with [`RnnError`].
pub type Result<T> = std::result::Result<T, RnnError>;

impl RnnError {
    /// Shape error helper.
    pub fn shape(tensor: impl Into<String>, expected: &[usize], got: &[usize]) -> Self {
        RnnError::Shape {
            tensor: tensor.into(),
            expected: expected.to_vec(),
            got: got.to_vec(),
        }
    }

    /// Safetensors error helper that keeps the path.
    pub fn safetensors(
        path: impl AsRef<std::path::Path>,
        source: safetensors::SafeTensorError,
    ) -> Self {
        RnnError::SafeTensors {
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    /// I/O error helper that keeps the path.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        RnnError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// Returns a shape error unless `got == expected`.
pub fn check_shape(tensor: &str, expected: &[usize], got: &[usize]) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(RnnError::shape(tensor, expected, got))
    }
}

/// A zero-filled array of `shape` for `tensor`, allocated fallibly: where `Array::zeros` would
/// panic (the size overflows) or abort the process (the allocator refuses), an
/// [`RnnError::Allocation`] naming the tensor, its shape and its size in bytes. The memory
/// comes zeroed from the allocator (calloc), so large arrays cost no extra pass.
pub(crate) fn try_zeros<F: Scalar, D: Dimension>(
    tensor: &str,
    shape: impl IntoDimension<Dim = D>,
) -> Result<Array<F, D>> {
    let dim = shape.into_dimension();
    let error = |bytes| RnnError::Allocation {
        tensor: tensor.to_string(),
        shape: dim.slice().to_vec(),
        bytes,
    };
    // As ndarray: the product of the non-zero axis lengths must fit in isize, even when
    // another axis is empty.
    let fits = |n: &usize| *n <= isize::MAX as usize;
    let nonzero = dim
        .slice()
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(fits);
    let elements = nonzero.map(|n| if dim.slice().contains(&0) { 0 } else { n });
    let bytes = elements
        .and_then(|n| n.checked_mul(std::mem::size_of::<F>()))
        .filter(fits);
    let (Some(elements), Some(bytes)) = (elements, bytes) else {
        return Err(error(None));
    };
    let data =
        bytemuck::allocation::try_zeroed_vec::<F>(elements).map_err(|()| error(Some(bytes)))?;
    Array::from_shape_vec(dim.clone(), data).map_err(|_| error(None))
}
