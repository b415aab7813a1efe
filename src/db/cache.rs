//! The ring cache: the last published table contents, on disk, for starting without the
//! database.
//!
//! A writer task follows the ring's publishes and writes the rows of the newest snapshot
//! (workers and routes) to `[database] cache_path` atomically (temporary file, fsync,
//! rename), so a crash leaves the old file or the new one, never half of one. The file
//! carries a checksum; a file that does not parse, fails the checksum or holds a bad row is
//! reported and ignored, never trusted.
//!
//! Formats: 1 (before routes) held the workers rows alone; it still loads, as those rows and
//! no route, which is what the version that wrote it served. 2 holds both tables. Others
//! are ignored.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ring::{Ring, RouteRow, Row, Snapshot, Tables};

/// Bumped when the layout changes.
const FORMAT: u32 = 2;
/// The format before routes, still read.
const FORMAT_WORKERS_ONLY: u32 = 1;

#[derive(Serialize, Deserialize)]
struct File {
    format: u32,
    /// FNV-1a (64-bit) of the `rows` JSON text, to catch truncation and corruption.
    checksum: String,
    /// Format 2: `{"workers": [CachedRow…], "routes": [CachedRoute…]}`; format 1: the
    /// workers rows alone.
    rows: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct CachedTables {
    workers: Vec<CachedRow>,
    routes: Vec<CachedRoute>,
}

#[derive(Serialize, Deserialize)]
struct CachedRow {
    id: i64,
    address: String,
    weight: u32,
    pool: String,
    version: i64,
}

#[derive(Serialize, Deserialize)]
struct CachedRoute {
    id: i64,
    version: i64,
    host: Option<String>,
    path_prefix: String,
    pool: String,
    priority: i32,
    listener: Option<String>,
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

/// Reads the cached workers rows (the routes are left out: see [`load_tables`]).
/// `Ok(None)`: there is no cache file yet.
pub fn load(path: &Path) -> Result<Option<Vec<Row>>, CacheError> {
    Ok(load_tables(path)?.map(|t| t.workers))
}

/// Reads the cached rows of both tables. `Ok(None)`: there is no cache file yet.
pub fn load_tables(path: &Path) -> Result<Option<Tables>, CacheError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CacheError::Read(path.to_path_buf(), e)),
    };
    let corrupt = |why: String| CacheError::Corrupt(path.to_path_buf(), why);
    let file: File = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    if file.format != FORMAT && file.format != FORMAT_WORKERS_ONLY {
        return Err(corrupt(format!("unknown format {}", file.format)));
    }
    if file.checksum != checksum(&file.rows.to_string()) {
        return Err(corrupt("checksum mismatch".into()));
    }
    let tables: CachedTables = if file.format == FORMAT_WORKERS_ONLY {
        CachedTables {
            workers: serde_json::from_value(file.rows).map_err(|e| corrupt(e.to_string()))?,
            routes: Vec::new(),
        }
    } else {
        serde_json::from_value(file.rows).map_err(|e| corrupt(e.to_string()))?
    };
    let workers = tables
        .workers
        .into_iter()
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
        .collect::<Result<Vec<_>, _>>()?;
    let routes = tables
        .routes
        .into_iter()
        .map(|r| {
            let row = RouteRow {
                id: r.id,
                version: r.version,
                host: r.host,
                path_prefix: r.path_prefix,
                pool: r.pool,
                priority: r.priority,
                listener: r.listener,
            };
            row.check()
                .map_err(|column| corrupt(format!("bad {column} in route with id {}", row.id)))?;
            Ok(row)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Tables { workers, routes }))
}

/// Writes `snapshot`'s rows (workers and routes) to `path` atomically.
pub fn store(path: &Path, snapshot: &Snapshot) -> Result<(), CacheError> {
    let workers: Vec<CachedRow> = snapshot
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
    let routes = snapshot
        .routes
        .rows()
        .iter()
        .map(|r| CachedRoute {
            id: r.id,
            version: r.version,
            host: r.host.clone(),
            path_prefix: r.path_prefix.clone(),
            pool: r.pool.clone(),
            priority: r.priority,
            listener: r.listener.clone(),
        })
        .collect();
    let rows =
        serde_json::to_value(CachedTables { workers, routes }).expect("plain data serializes");
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

    fn routes() -> Vec<RouteRow> {
        vec![
            RouteRow {
                id: 3,
                version: 7,
                host: Some("*.example.com".into()),
                path_prefix: "/api".into(),
                pool: "other".into(),
                priority: -2,
                listener: Some("web".into()),
            },
            RouteRow {
                id: 5,
                version: 8,
                host: None,
                path_prefix: "/".into(),
                pool: "routed".into(),
                priority: 0,
                listener: None,
            },
        ]
    }

    fn tables() -> Tables {
        Tables {
            workers: rows(),
            routes: routes(),
        }
    }

    #[test]
    fn round_trips_through_the_file() {
        let ring = Ring::new(&["default".into()]);
        Membership::new(ring.clone()).reset_tables(tables());
        let path = temp("roundtrip");
        store(&path, &ring.load()).unwrap();
        let mut back = load_tables(&path).unwrap().unwrap();
        back.workers.sort_by_key(|r| r.id);
        assert_eq!(back, tables());
        assert_eq!(load(&path).unwrap().unwrap().len(), 2, "load: the workers");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_file_from_before_routes_loads_its_workers_and_no_route() {
        let path = temp("format1");
        let workers = r#"[{"id":1,"address":"127.0.0.1:8000","weight":3,"pool":"default","version":4},{"id":2,"address":"[::1]:8001","weight":0,"pool":"other","version":9}]"#;
        let value: serde_json::Value = serde_json::from_str(workers).unwrap();
        let text = format!(
            r#"{{"format":1,"checksum":"{}","rows":{workers}}}"#,
            checksum(&value.to_string())
        );
        std::fs::write(&path, text).unwrap();
        let back = load_tables(&path).unwrap().unwrap();
        assert_eq!(back, Tables::from(rows()));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn missing_file_is_no_cache() {
        assert!(load(&temp("missing")).unwrap().is_none());
    }

    #[test]
    fn corrupt_files_are_refused() {
        let ring = Ring::new(&["default".into()]);
        Membership::new(ring.clone()).reset_tables(tables());
        let path = temp("corrupt");
        store(&path, &ring.load()).unwrap();
        let good = std::fs::read_to_string(&path).unwrap();
        // A changed row keeps the file's checksum valid: only the row check can refuse it.
        let rechecked = |from: &str, to: &str| {
            let mut file: serde_json::Value = serde_json::from_str(&good).unwrap();
            let rows = file["rows"].to_string().replace(from, to);
            assert_ne!(rows, file["rows"].to_string(), "{from} is in the file");
            file["checksum"] = checksum(&rows).into();
            file["rows"] = serde_json::from_str(&rows).unwrap();
            file.to_string()
        };
        for bad in [
            "".to_string(),
            "{not json".to_string(),
            good[..good.len() / 2].to_string(),
            good.replace("\"weight\":3", "\"weight\":4"),
            good.replace("\"format\":2", "\"format\":7"),
            rechecked("\"*.example.com\"", "\"*.Example.com\""),
            rechecked("\"/api\"", "\"api\""),
            rechecked("\"routed\"", "\"\""),
            rechecked("\"web\"", "\"w b\""),
            rechecked("\"weight\":3", "\"weight\":10001"),
        ] {
            std::fs::write(&path, &bad).unwrap();
            assert!(
                matches!(load_tables(&path), Err(CacheError::Corrupt(..))),
                "accepted: {bad}"
            );
        }
        std::fs::remove_file(&path).unwrap();
    }
}
