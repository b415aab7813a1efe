//! A TLS listener's certificates: picked by SNI on every handshake, re-read when their files
//! change.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::SignatureScheme;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{CertificateError, CertificateFiles, LoadedCertificate};

/// The certificates of one listener, in config order (the first is the default).
pub struct Certificates {
    /// What handshakes pick from: replaced whole when a file changes, so a handshake sees
    /// either the old set or the new one, never half of each, and reads it without a lock.
    current: ArcSwap<Set>,
    /// The entries as loaded, for the watcher: only it and SIGHUP take this lock, never a
    /// handshake.
    entries: Mutex<Vec<Entry>>,
    provider: Arc<CryptoProvider>,
}

/// One `{ cert, key }` entry as last loaded.
struct Entry {
    files: CertificateFiles,
    /// What is being served for it: the last version of the files that loaded.
    loaded: LoadedCertificate,
    /// The files as last looked at (loaded or refused), so a refused file is reported once
    /// per change, not at every check.
    seen: (Stamp, Stamp),
}

/// What tells a changed file from an unchanged one without reading it: a new file renamed
/// into place has a new inode, a file rewritten in place a new mtime (nanoseconds on every
/// file system that matters) or length.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(u64, u64, SystemTime)>);

impl Stamp {
    fn of(path: &Path) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp(std::fs::metadata(path).ok().map(|m| {
            (
                m.ino(),
                m.len(),
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            )
        }))
    }
}

/// The certificates by name, built once per change.
struct Set {
    /// Served when SNI is absent or names no certificate.
    default: Arc<CertifiedKey>,
    /// Exact names, lowercase; several certificates for one name (RSA and ECDSA) in config
    /// order, the first the client can verify is served.
    exact: HashMap<String, Vec<Arc<CertifiedKey>>>,
    /// `*.example.com` keyed by `example.com`: it matches one more label, as RFC 6125 says.
    wildcard: HashMap<String, Vec<Arc<CertifiedKey>>>,
}

impl Set {
    fn new(entries: &[Entry]) -> Set {
        let mut exact: HashMap<String, Vec<Arc<CertifiedKey>>> = HashMap::new();
        let mut wildcard: HashMap<String, Vec<Arc<CertifiedKey>>> = HashMap::new();
        for e in entries {
            for name in &e.loaded.names {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut wildcard, parent),
                    None => (&mut exact, name.as_str()),
                };
                map.entry(key.to_string())
                    .or_default()
                    .push(e.loaded.key.clone());
            }
        }
        Set {
            default: entries[0].loaded.key.clone(),
            exact,
            wildcard,
        }
    }

    fn pick(&self, name: Option<&str>, schemes: &[SignatureScheme]) -> &Arc<CertifiedKey> {
        let Some(name) = name else {
            return &self.default;
        };
        // rustls hands SNI over lowercased already; a copy is made only if it were not.
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        let candidates = self.exact.get(name).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        });
        match candidates {
            Some(keys) => keys
                .iter()
                .find(|k| k.key.choose_scheme(schemes).is_some())
                .unwrap_or(&keys[0]),
            None => &self.default,
        }
    }
}

impl Certificates {
    /// Loads every entry; the first failure is the error. `files` must not be empty.
    pub fn load(
        files: &[CertificateFiles],
        provider: Arc<CryptoProvider>,
    ) -> Result<Certificates, CertificateError> {
        assert!(!files.is_empty(), "validation requires a certificate");
        let mut entries = Vec::with_capacity(files.len());
        for f in files {
            // Stamped before reading: a change made while it is read is seen by the next check.
            let seen = (Stamp::of(&f.cert), Stamp::of(&f.key));
            let loaded = f.load_with(&provider)?;
            // Which names each certificate answers is what an operator checks first when a
            // client gets the wrong one.
            tracing::info!(cert = %f.cert.display(), names = ?loaded.names, "certificate loaded");
            entries.push(Entry {
                files: f.clone(),
                loaded,
                seen,
            });
        }
        Ok(Certificates {
            current: ArcSwap::from_pointee(Set::new(&entries)),
            entries: Mutex::new(entries),
            provider,
        })
    }

    /// Re-reads the entries whose files changed since they were last looked at (`all`:
    /// every entry, as on SIGHUP). A new version that loads replaces the old one for new
    /// handshakes; one that does not is logged, naming the file, and the old one stays.
    /// Returns how many entries were replaced.
    pub fn refresh(&self, all: bool) -> usize {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut replaced = 0;
        for e in entries.iter_mut() {
            let seen = (Stamp::of(&e.files.cert), Stamp::of(&e.files.key));
            if !all && seen == e.seen {
                continue;
            }
            e.seen = seen;
            match e.files.load_with(&self.provider) {
                Ok(loaded) => {
                    tracing::info!(cert = %e.files.cert.display(), key = %e.files.key.display(),
                        names = ?loaded.names, "certificate loaded: new handshakes get it");
                    e.loaded = loaded;
                    replaced += 1;
                }
                Err(error) => {
                    tracing::error!(%error, cert = %e.files.cert.display(),
                        key = %e.files.key.display(),
                        "certificate not reloaded: the previous one is still served");
                }
            }
        }
        if replaced > 0 {
            self.current.store(Arc::new(Set::new(&entries)));
        }
        replaced
    }

    /// The certificate a handshake naming `sni` gets (tests, diagnostics).
    pub fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let all = self.provider.signature_verification_algorithms.mapping;
        let schemes: Vec<SignatureScheme> = all.iter().map(|(s, _)| *s).collect();
        self.current.load().pick(sni, &schemes).clone()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.current.load();
        Some(
            set.pick(hello.server_name(), hello.signature_schemes())
                .clone(),
        )
    }
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates").finish_non_exhaustive()
    }
}

/// Checks the files of `certificates` every `interval` until they are dropped. The files
/// are read on the blocking pool: a slow disk must not stall the proxy's threads.
pub(super) async fn watch(certificates: Weak<Certificates>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(c) = certificates.upgrade() else {
            return;
        };
        let _ = tokio::task::spawn_blocking(move || c.refresh(false)).await;
    }
}
