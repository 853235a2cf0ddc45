//! Clock faults with libfaketime (Debian's `faketime` package): every member runs with
//! the library preloaded and reads its offset from a file the harness rewrites, so one
//! member's wall clock can be skewed, or strobed back and forth, while it runs.
//!
//! Only the wall clock (`CLOCK_REALTIME`) is faked; monotonic clocks are left alone, as
//! on a real machine whose clock is stepped by an operator or a misbehaving NTP. Leases
//! must not notice: their deadlines are kept on the leader's monotonic clock.

use std::path::{Path, PathBuf};

use crate::ChaosError;

/// Where Debian's package puts the multi-threaded build of the library.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// The environment that makes a process read its wall-clock offset from `file`
/// (re-read at most once a second).
pub fn env(file: &Path) -> Result<Vec<(String, String)>, ChaosError> {
    if !Path::new(LIBFAKETIME).exists() {
        return Err(ChaosError::Setup(format!(
            "{LIBFAKETIME} is missing: install Debian's faketime package (chaos/run does)"
        )));
    }
    set(file, 0)?;
    Ok(vec![
        ("LD_PRELOAD".into(), LIBFAKETIME.into()),
        ("FAKETIME_TIMESTAMP_FILE".into(), file.display().to_string()),
        ("FAKETIME_CACHE_DURATION".into(), "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ])
}

/// Sets the wall-clock offset in `file` (seconds; negative: behind).
pub fn set(file: &Path, offset_secs: i64) -> Result<(), ChaosError> {
    std::fs::write(file, format!("{offset_secs:+}\n"))
        .map_err(|e| ChaosError::Setup(format!("writing {}: {e}", file.display())))
}

/// The offset file of the member whose log is `log`.
pub fn file_for(log: &Path) -> PathBuf {
    log.with_extension("faketime")
}
