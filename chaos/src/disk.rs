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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn corrupt_flips_bytes_in_exactly_one_data_file_and_leaves_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        std::fs::create_dir(&db).unwrap();
        let names = ["000004.log", "000007.sst", "MANIFEST-000005", "LOG", "CURRENT"];
        for n in names {
            std::fs::write(db.join(n), vec![0u8; 4096]).unwrap();
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let what = corrupt(dir.path(), 4, &mut rng).unwrap();
        let changed: Vec<(&str, usize)> = names
            .iter()
            .map(|n| (*n, std::fs::read(db.join(n)).unwrap().iter().filter(|b| **b != 0).count()))
            .filter(|(_, c)| *c > 0)
            .collect();
        assert_eq!(changed.len(), 1, "{changed:?}");
        let (name, flipped) = changed[0];
        assert!(["000004.log", "000007.sst", "MANIFEST-000005"].contains(&name), "{name} is not a data file");
        assert!((1..=4).contains(&flipped), "{flipped} bytes changed");
        assert!(what.contains(name), "{what}");
    }

    #[test]
    fn corrupt_before_the_member_wrote_anything_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        assert_eq!(corrupt(dir.path(), 4, &mut rng).unwrap(), "no data files yet");
    }
}
