//! Sizes from the command line: checked products and the host-memory check, done before
//! anything is allocated.

use wgpu_rnn::error::{Result, RnnError};

/// The product of `factors`, or an error naming `what` when it overflows.
pub fn product(factors: &[usize], what: &str) -> Result<usize> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
        .ok_or_else(|| RnnError::Config(format!("{what}: {factors:?} overflows when multiplied")))
}

/// The sum of `terms`, or an error naming `what` when it overflows.
pub fn sum(terms: &[usize], what: &str) -> Result<usize> {
    terms
        .iter()
        .try_fold(0usize, |acc, &t| acc.checked_add(t))
        .ok_or_else(|| RnnError::Config(format!("{what}: {terms:?} overflows when added")))
}

/// `f32_elements` (a lower bound of what `what` allocates on the host) fit in the host's
/// available memory, where it is known; `options` names the command-line options to lower.
pub fn check_host_memory(f32_elements: usize, what: &str, options: &str) -> Result<()> {
    let bytes = product(&[f32_elements, 4], what)?;
    match host_memory_available() {
        Some(available) if bytes as u64 > available => Err(RnnError::Config(format!(
            "{what} needs at least {:.1} GB of host memory, {:.1} GB available ({options})",
            bytes as f64 / 1e9,
            available as f64 / 1e9
        ))),
        _ => Ok(()),
    }
}

/// The host's available memory in bytes (`MemAvailable` of /proc/meminfo), where known.
fn host_memory_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}
