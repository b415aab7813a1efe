//! The ring cache: the last published table contents, on disk, for starting without the
//! database.
//!
//! A writer task follows the ring's publishes and writes the rows of the newest snapshot to
//! `[database] cache_path` atomically (temporary file, fsync, rename), so a crash leaves the
//! old file or the new one, never half of one. The file carries a checksum; a file that does
//! not parse, fails the checksum or holds a bad row is reported and ignored, never trusted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ring::{Ring, Row, Snapshot};

/// Bumped when the layout changes; other formats are ignored.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct File {
    format: u32,
    /// FNV-1a (64-bit) of the `rows` JSON text, to catch truncation and corruption.
    checksum: String,
    rows: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct CachedRow {
    id: i64,
    address: String,
    weight: u32,
    pool: String,
    version: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0} is corrupt: {1}")]
    Corrupt(PathBuf, String),
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

/// Reads the cached rows. `Ok(None)`: there is no cache file yet.
pub fn load(path: &Path) -> Result<Option<Vec<Row>>, CacheError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CacheError::Read(path.to_path_buf(), e)),
    };
    let corrupt = |why: String| CacheError::Corrupt(path.to_path_buf(), why);
    let file: File = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    if file.format != FORMAT {
        return Err(corrupt(format!("unknown format {}", file.format)));
    }
    if file.checksum != checksum(&file.rows.to_string()) {
        return Err(corrupt("checksum mismatch".into()));
    }
    let rows: Vec<CachedRow> =
        serde_json::from_value(file.rows).map_err(|e| corrupt(e.to_string()))?;
    rows.into_iter()
        .map(|r| {
            // The same limits the table's CHECK constraints enforce.
            let valid = r.weight <= 10_000
                && !r.pool.is_empty()
                && r.address.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                });
            if !valid {
                return Err(corrupt(format!("bad row with id {}", r.id)));
            }
            Ok(Row {
                id: r.id,
                address: r.address,
                weight: r.weight,
                pool: r.pool,
                version: r.version,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Writes `snapshot`'s rows to `path` atomically.
pub fn store(path: &Path, snapshot: &Snapshot) -> Result<(), CacheError> {
    let rows: Vec<CachedRow> = snapshot
        .pools
        .iter()
        .flat_map(|p| p.workers.iter())
        .map(|w| CachedRow {
            id: w.id,
            address: w.address.text.to_string(),
            weight: w.weight,
            pool: w.pool.to_string(),
            version: w.version,
        })
        .collect();
    let rows = serde_json::to_value(rows).expect("plain data serializes");
    let file = File {
        format: FORMAT,
        checksum: checksum(&rows.to_string()),
        rows,
    };
    let text = serde_json::to_string(&file).expect("plain data serializes");
    let write = |e| CacheError::Write(path.to_path_buf(), e);
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(write)?;
        f.write_all(text.as_bytes()).map_err(write)?;
        f.sync_all().map_err(write)?;
    }
    std::fs::rename(&tmp, path).map_err(write)
}

/// Writes the cache after every publish until the ring's sender is gone or `stop` fires.
/// Publishes that come faster than the disk are coalesced: only the newest is written.
pub async fn writer(path: PathBuf, ring: Arc<Ring>, stop: tokio_util::sync::CancellationToken) {
    let mut published = ring.subscribe();
    // The ring published before the writer started (startup's sync) is written too; an
    // empty ring that never synced is not, so it cannot replace a useful cache.
    if ring.load().generation > 0 {
        published.mark_changed();
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = published.changed() => if changed.is_err() { return },
        }
        let snapshot = ring.load_full();
        let p = path.clone();
        match tokio::task::spawn_blocking(move || store(&p, &snapshot)).await {
            Ok(Ok(())) => tracing::debug!(path = %path.display(), "ring cache written"),
            Ok(Err(e)) => tracing::warn!(error = %e, "ring cache not written"),
            Err(e) => tracing::warn!(error = %e, "ring cache writer failed"),
        }
    }
}

fn checksum(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::Membership;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("lb-cache-{}-{name}.json", std::process::id()))
    }

    fn rows() -> Vec<Row> {
        vec![
            Row {
                id: 1,
                address: "127.0.0.1:8000".into(),
                weight: 3,
                pool: "default".into(),
                version: 4,
            },
            Row {
                id: 2,
                address: "[::1]:8001".into(),
                weight: 0,
                pool: "other".into(),
                version: 9,
            },
        ]
    }

    #[test]
    fn round_trips_through_the_file() {
        let ring = Ring::new(&["default".into()]);
        Membership::new(ring.clone()).reset(rows());
        let path = temp("roundtrip");
        store(&path, &ring.load()).unwrap();
        let mut back = load(&path).unwrap().unwrap();
        back.sort_by_key(|r| r.id);
        assert_eq!(back, rows());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn missing_file_is_no_cache() {
        assert!(load(&temp("missing")).unwrap().is_none());
    }

    #[test]
    fn corrupt_files_are_refused() {
        let ring = Ring::new(&["default".into()]);
        Membership::new(ring.clone()).reset(rows());
        let path = temp("corrupt");
        store(&path, &ring.load()).unwrap();
        let good = std::fs::read_to_string(&path).unwrap();
        for bad in [
            "".to_string(),
            "{not json".to_string(),
            good[..good.len() / 2].to_string(),
            good.replace("\"weight\":3", "\"weight\":4"),
            good.replace("\"format\":1", "\"format\":7"),
        ] {
            std::fs::write(&path, &bad).unwrap();
            assert!(
                matches!(load(&path), Err(CacheError::Corrupt(..))),
                "accepted: {bad}"
            );
        }
        std::fs::remove_file(&path).unwrap();
    }
}
