//! The library's single error type.

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
    /// A fixture's or checkpoint's metadata is missing or invalid.
    #[error("metadata: {0}")]
    Metadata(String),
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
