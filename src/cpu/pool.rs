//! Buffers of finished calls, kept for the next ones. A call of the CPU path writes tens of
//! megabytes of workspaces and tapes; taking them fresh from the system every time costs a page
//! fault per 4 KiB, about a third of a call's time at batch 16 (measured in
//! docs/PERFORMANCE.md). At most [`POOL_BYTES`] are kept.

use crate::error::{try_zeros, Result};
use crate::scalar::Scalar;
use ndarray::Array2;
use std::any::Any;
use std::sync::Mutex;

/// The most bytes the pool keeps.
const POOL_BYTES: usize = 128 << 20;

/// Kept buffers (each a `Vec<F>` of f32 or f64) and their bytes in all.
static POOL: Mutex<(Vec<Box<dyn Any + Send>>, usize)> = Mutex::new((Vec::new(), 0));

/// A (rows, cols) matrix for `tensor` whose elements are all to be written before they are
/// read: a kept buffer when one is large enough (stale values), else a new one of zeros; an
/// error naming `tensor` where the memory cannot be had.
pub(super) fn scratch<F: Scalar>(tensor: &str, rows: usize, cols: usize) -> Result<Array2<F>> {
    let kept = rows
        .checked_mul(cols)
        .and_then(|len| Some((len, take::<F>(len)?)));
    let Some((len, mut data)) = kept else {
        return try_zeros(tensor, (rows, cols));
    };
    // Within the kept buffer's capacity: nothing is allocated.
    data.resize(len, F::zero());
    Ok(Array2::from_shape_vec((rows, cols), data)
        .unwrap_or_else(|_| unreachable!("rows · cols elements")))
}

/// A (rows, cols) matrix of zeros for `tensor`, in a kept buffer when one is large enough.
pub(super) fn zeros<F: Scalar>(tensor: &str, rows: usize, cols: usize) -> Result<Array2<F>> {
    let mut a = scratch(tensor, rows, cols)?;
    a.fill(F::zero());
    Ok(a)
}

/// Keeps `a`'s buffer for a later call, if the pool has room for it.
pub(super) fn recycle<F: Scalar>(a: Array2<F>) {
    recycle_vec(a.into_raw_vec_and_offset().0);
}

/// Keeps `data` for a later call, if the pool has room for it.
pub(super) fn recycle_vec<F: Scalar>(data: Vec<F>) {
    let bytes = data.capacity() * size_of::<F>();
    let mut pool = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if bytes > 0 && pool.1 + bytes <= POOL_BYTES {
        pool.1 += bytes;
        pool.0.push(Box::new(data));
    }
}

/// The smallest kept `Vec<F>` of at least `len` elements, its length cut to `len` at most
/// (stale values).
pub(super) fn take<F: Scalar>(len: usize) -> Option<Vec<F>> {
    let mut pool = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (index, _) = pool
        .0
        .iter()
        .enumerate()
        .filter_map(|(i, b)| b.downcast_ref::<Vec<F>>().map(|v| (i, v.capacity())))
        .filter(|&(_, capacity)| capacity >= len)
        .min_by_key(|&(_, capacity)| capacity)?;
    let data = pool.0.swap_remove(index);
    let mut data = *data
        .downcast::<Vec<F>>()
        .unwrap_or_else(|_| unreachable!("found as a Vec<F>"));
    pool.1 -= data.capacity() * size_of::<F>();
    data.truncate(len);
    Some(data)
}

#[cfg(test)]
mod tests {
    use super::{recycle, scratch, zeros};
    use ndarray::Array2;

    /// A kept buffer is handed out again, in the shape asked for, and `zeros` clears its stale
    /// values.
    #[test]
    fn kept_buffers_are_reused_and_zeros_are_zero() {
        // Larger than any buffer the other tests of this process keep, so that no other
        // test takes it in between.
        let (rows, cols) = (7, 100_003);
        recycle(Array2::<f64>::from_elem((rows, cols), 1.5));
        let a = scratch::<f64>("a", rows, cols - 2).unwrap();
        assert_eq!(a.dim(), (rows, cols - 2));
        assert!(
            a.iter().all(|&v| v == 1.5),
            "the kept buffer, stale values and all"
        );
        recycle(a);
        let z = zeros::<f64>("z", rows, cols - 1).unwrap();
        assert_eq!(z.dim(), (rows, cols - 1));
        assert!(z.iter().all(|&v| v == 0.0));
    }
}
