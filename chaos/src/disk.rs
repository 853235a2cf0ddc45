//! The disk nemesis: flips bytes in a stopped member's data files (its RocksDB tables,
//! write-ahead log or manifest). The member must then refuse to start, or stop when it
//! finds the damage, and never serve corrupt data; the harness then wipes it and adds it
//! back, as an operator would.

use std::path::Path;

use rand::Rng;

use crate::ChaosError;

/// Flips `n` bytes in one data file under `data_dir`, chosen at random; returns what was
/// done.
pub fn corrupt(data_dir: &Path, n: usize, rng: &mut impl Rng) -> Result<String, ChaosError> {
    let db = data_dir.join("db");
    let err = |e: std::io::Error| ChaosError::Setup(format!("corrupting {}: {e}", db.display()));
    if !db.exists() {
        return Ok("no data files yet".into());
    }
    let mut files: Vec<_> = std::fs::read_dir(&db)
        .map_err(err)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.ends_with(".sst") || name.ends_with(".log") || name.starts_with("MANIFEST-")
        })
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        .collect();
    files.sort();
    if files.is_empty() {
        return Ok("no data files to damage".into());
    }
    let f = &files[rng.random_range(0..files.len())];
    let mut bytes = std::fs::read(f).map_err(err)?;
    let mut at = Vec::new();
    for _ in 0..n {
        let i = rng.random_range(0..bytes.len());
        bytes[i] ^= rng.random_range(1..=255u8);
        at.push(i);
    }
    std::fs::write(f, &bytes).map_err(err)?;
    Ok(format!(
        "flipped {n} bytes of {} ({} bytes) at {at:?}",
        f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        bytes.len()
    ))
}
