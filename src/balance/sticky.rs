//! Sticky-session cookies: the value that ties a client to one worker of a pool, written
//! into `Set-Cookie` and checked when the client sends it back.
//!
//! The value names the worker opaquely and cannot be forged: base64url (no padding) of the
//! worker's id (8 bytes, big-endian) followed by the first 16 bytes of
//! HMAC-SHA256(secret, pool name ‖ 0x00 ‖ id ‖ 0x00 ‖ worker address). The client learns
//! an id, never an address; without the secret it cannot make a cookie for a worker of its
//! choice. The pool's name and the worker's address are under the tag, so a cookie of one
//! pool never selects in another, and a cookie for a worker whose row was re-addressed
//! (the same id now pointing elsewhere) is stale rather than silently followed.
//!
//! Pure: no I/O, no clock. Whether the named worker may take the request (health, drain,
//! limits) is the balancer's decision, not this module's.

use std::fmt;
use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

use crate::config::StickyConfig;
use crate::ring::{Pool, Slot, Worker};

/// Bytes of the worker id at the start of the decoded value.
const ID_LEN: usize = 8;
/// Bytes of the HMAC kept: 128 bits is out of reach of online guessing (each guess is a
/// request), and halves what every request carries compared with the full 32.
const TAG_LEN: usize = 16;
const RAW_LEN: usize = ID_LEN + TAG_LEN;
/// base64url without padding of `RAW_LEN` bytes (a multiple of 3: no partial group, so
/// every value of this length that decodes is the canonical encoding).
const ENCODED_LEN: usize = RAW_LEN / 3 * 4;

/// A pool's sticky-cookie settings, prepared once per configuration load.
#[derive(Clone)]
pub struct Sticky {
    /// HMAC-SHA256 already keyed with the secret: keying hashes the key's pads, so each
    /// cookie clones this state instead of paying for that again.
    keyed: Hmac<Sha256>,
    name: String,
    /// Everything after `NAME=VALUE` in `Set-Cookie` (`; Path=/; ...`): the same for every
    /// response, so built once.
    attributes: String,
}

impl Sticky {
    pub fn new(config: &StickyConfig) -> Sticky {
        let keyed = Hmac::<Sha256>::new_from_slice(&config.secret.bytes)
            .expect("HMAC accepts a key of any length");
        // `Path=/`: the worker holds the session for the whole site, not just the path the
        // cookie happened to be set on.
        let mut attributes = String::from("; Path=/");
        if let Some(max_age) = config.max_age {
            // Max-Age counts whole seconds (RFC 6265 §5.2.2); a fraction is dropped.
            write!(attributes, "; Max-Age={}", max_age.as_secs()).expect("writing to a String");
        }
        if config.secure {
            attributes.push_str("; Secure");
        }
        if config.http_only {
            attributes.push_str("; HttpOnly");
        }
        if let Some(same_site) = config.same_site {
            attributes.push_str("; SameSite=");
            attributes.push_str(same_site.name());
        }
        Sticky {
            keyed,
            name: config.cookie.clone(),
            attributes,
        }
    }

    /// The cookie's name (what the proxy looks for in the request's Cookie fields).
    pub fn cookie_name(&self) -> &str {
        &self.name
    }

    /// The slot of `pool` that `value` (the cookie's value as sent) names, if it is a
    /// well-formed, authentic cookie for a worker of this pool with the same address.
    /// A forged, truncated, stale (worker deleted/re-addressed) or foreign cookie: None.
    pub fn stuck_to<'p>(&self, value: &[u8], pool: &'p Pool) -> Option<&'p Slot> {
        // The length first: a value of any other length is not ours, and checking it before
        // decoding bounds the work an arbitrary (even megabyte-long) value can cost.
        if value.len() != ENCODED_LEN {
            return None;
        }
        let mut raw = [0u8; RAW_LEN];
        match URL_SAFE_NO_PAD.decode_slice(value, &mut raw) {
            Ok(RAW_LEN) => {}
            _ => return None,
        }
        let (id, tag) = raw.split_at(ID_LEN);
        let id = i64::from_be_bytes(id.try_into().expect("ID_LEN bytes"));
        // `slots` is sorted by id (see `Pool::new`).
        let i = pool.slots.binary_search_by_key(&id, |s| s.id).ok()?;
        let slot = &pool.slots[i];
        // Constant-time comparison: how long a rejection takes says nothing about how many
        // leading bytes of a guessed tag were right.
        self.tag(&pool.name, id, &slot.worker.address.text)
            .verify_truncated_left(tag)
            .ok()?;
        Some(slot)
    }

    /// The whole `Set-Cookie` field value naming `worker` of `pool`:
    /// `NAME=VALUE; Path=/[; Max-Age=N][; Secure][; HttpOnly][; SameSite=X]`.
    pub fn set_cookie(&self, pool: &str, worker: &Worker) -> String {
        let mut raw = [0u8; RAW_LEN];
        raw[..ID_LEN].copy_from_slice(&worker.id.to_be_bytes());
        let full = self
            .tag(pool, worker.id, &worker.address.text)
            .finalize()
            .into_bytes();
        raw[ID_LEN..].copy_from_slice(&full[..TAG_LEN]);
        let mut field =
            String::with_capacity(self.name.len() + 1 + ENCODED_LEN + self.attributes.len());
        field.push_str(&self.name);
        field.push('=');
        URL_SAFE_NO_PAD.encode_string(raw, &mut field);
        field.push_str(&self.attributes);
        field
    }

    /// The MAC over what a cookie vouches for, not yet finalized. The id has a fixed length
    /// and the separators keep the pool's name and the address from running into each other.
    fn tag(&self, pool: &str, id: i64, address: &str) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        mac.update(pool.as_bytes());
        mac.update(&[0]);
        mac.update(&id.to_be_bytes());
        mac.update(&[0]);
        mac.update(address.as_bytes());
        mac
    }
}

/// Written by hand so the keyed state (derived from the secret) is never printed.
impl fmt::Debug for Sticky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sticky")
            .field("name", &self.name)
            .field("attributes", &self.attributes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SameSite, SecretSource, StickySecret};
    use crate::ring::{Address, WorkerState};
    use std::sync::Arc;
    use std::time::Duration;

    fn config(secret: &[u8]) -> StickyConfig {
        StickyConfig {
            cookie: "lb_sticky".into(),
            max_age: None,
            secure: false,
            http_only: true,
            same_site: Some(SameSite::Lax),
            secret: StickySecret {
                bytes: secret.into(),
                source: SecretSource::File,
            },
        }
    }

    fn worker(pool: &str, id: i64, address: &str) -> Arc<Worker> {
        Arc::new(Worker {
            id,
            address: Address::new(address),
            pool_load: Default::default(),
            weight: 1,
            pool: pool.into(),
            version: 1,
            state: Arc::new(WorkerState::default()),
        })
    }

    /// Pool `name` with workers of ids 1, 5 and 9 at 10.0.0.ID:80.
    fn pool(name: &str) -> Pool {
        let workers = [1, 5, 9]
            .map(|id| worker(name, id, &format!("10.0.0.{id}:80")))
            .into();
        Pool::new(name.into(), 1, workers, Default::default())
    }

    /// The cookie's value out of a `Set-Cookie` field value.
    fn value(set_cookie: &str) -> &str {
        let (pair, _) = set_cookie.split_once(';').unwrap();
        pair.split_once('=').unwrap().1
    }

    fn stuck(sticky: &Sticky, value: &[u8], pool: &Pool) -> Option<i64> {
        sticky.stuck_to(value, pool).map(|s| s.id)
    }

    #[test]
    fn a_cookie_set_for_a_worker_leads_back_to_it() {
        let sticky = Sticky::new(&config(b"secret"));
        let p = pool("web");
        for w in &p.workers {
            let field = sticky.set_cookie("web", w);
            assert_eq!(stuck(&sticky, value(&field).as_bytes(), &p), Some(w.id));
        }
    }

    #[test]
    fn the_value_is_the_id_and_a_truncated_hmac_in_base64url() {
        let sticky = Sticky::new(&config(b"secret"));
        let field = sticky.set_cookie("web", &worker("web", 5, "10.0.0.5:80"));
        // Computed apart from this code (Python's hmac and base64 modules) over
        // b"web\0" + (5).to_bytes(8, "big") + b"\0" + b"10.0.0.5:80".
        assert_eq!(
            field,
            "lb_sticky=AAAAAAAAAAW7EiPx-en3Qp1Rmo2ngtU-; Path=/; HttpOnly; SameSite=Lax"
        );
        let raw = URL_SAFE_NO_PAD.decode(value(&field)).unwrap();
        assert_eq!(raw[..8], [0, 0, 0, 0, 0, 0, 0, 5]);
    }

    #[test]
    fn a_tampered_id_or_tag_is_refused() {
        let sticky = Sticky::new(&config(b"secret"));
        let p = pool("web");
        let field = sticky.set_cookie("web", &p.workers[0]);
        let raw = URL_SAFE_NO_PAD.decode(value(&field)).unwrap();
        // Id 1 → 5, a worker that exists: the tag was made for 1.
        let mut other_id = raw.clone();
        other_id[7] = 5;
        let forged = URL_SAFE_NO_PAD.encode(&other_id);
        assert_eq!(stuck(&sticky, forged.as_bytes(), &p), None);
        // Every bit of the tag matters.
        for byte in 8..24 {
            let mut bad = raw.clone();
            bad[byte] ^= 0x01;
            let forged = URL_SAFE_NO_PAD.encode(&bad);
            assert_eq!(stuck(&sticky, forged.as_bytes(), &p), None, "byte {byte}");
        }
    }

    #[test]
    fn another_secret_or_another_pool_does_not_honour_the_cookie() {
        let p = pool("web");
        let field = Sticky::new(&config(b"secret")).set_cookie("web", &p.workers[0]);
        let v = value(&field).as_bytes();
        assert_eq!(stuck(&Sticky::new(&config(b"other")), v, &p), None);
        // Pool "api" has a worker 1 at the very same address: the pool's name is under the tag.
        let sticky = Sticky::new(&config(b"secret"));
        assert_eq!(stuck(&sticky, v, &pool("api")), None);
        assert_eq!(stuck(&sticky, v, &p), Some(1));
    }

    #[test]
    fn a_readdressed_or_deleted_worker_makes_the_cookie_stale() {
        let sticky = Sticky::new(&config(b"secret"));
        let field = sticky.set_cookie("web", &worker("web", 5, "10.0.0.5:80"));
        let v = value(&field).as_bytes();
        let moved = Pool::new(
            "web".into(),
            2,
            vec![
                worker("web", 1, "10.0.0.1:80"),
                worker("web", 5, "10.0.0.6:80"),
            ],
            Default::default(),
        );
        assert_eq!(stuck(&sticky, v, &moved), None, "same id, new address");
        let deleted = Pool::new(
            "web".into(),
            3,
            vec![
                worker("web", 1, "10.0.0.1:80"),
                worker("web", 9, "10.0.0.9:80"),
            ],
            Default::default(),
        );
        assert_eq!(stuck(&sticky, v, &deleted), None, "no worker 5");
        assert_eq!(stuck(&sticky, v, &Pool::empty("web".into())), None);
    }

    #[test]
    fn malformed_values_are_refused_without_panicking() {
        let sticky = Sticky::new(&config(b"secret"));
        let p = pool("web");
        let field = sticky.set_cookie("web", &p.workers[0]);
        let good = value(&field).as_bytes();
        // Truncated, one character too many, padded, standard alphabet, quoted.
        assert_eq!(stuck(&sticky, &good[..31], &p), None);
        assert_eq!(stuck(&sticky, &[good, b"A"].concat(), &p), None);
        assert_eq!(stuck(&sticky, &[good, b"=="].concat(), &p), None);
        let std_alphabet: Vec<u8> = good
            .iter()
            .map(|&b| match b {
                b'-' => b'+',
                b'_' => b'/',
                b => b,
            })
            .collect();
        if std_alphabet != good {
            assert_eq!(stuck(&sticky, &std_alphabet, &p), None);
        }
        assert_eq!(stuck(&sticky, &[b"\"", good, b"\""].concat(), &p), None);
        let cases: [&[u8]; 6] = [
            b"",
            b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA!",
            b"\xff\xfe\x00\x01AAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            // Valid base64url, of 18 and of 27 bytes.
            b"AAAAAAAAAAAAAAAAAAAAAAAA",
            b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            // Well-formed and of the right length: id 1 and an all-zero tag.
            b"AAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAA",
        ];
        for case in cases {
            assert_eq!(stuck(&sticky, case, &p), None, "{case:?}");
        }
        assert_eq!(stuck(&sticky, &vec![b'A'; 1 << 20], &p), None);
        // Random bytes of every length around the right one, from a fixed-seed generator
        // (xorshift) so a failure reproduces.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..80 {
            for _ in 0..64 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                assert_eq!(stuck(&sticky, &bytes, &p), None, "{bytes:?}");
            }
        }
    }

    #[test]
    fn attributes_are_rendered_as_configured() {
        let w = worker("web", 1, "10.0.0.1:80");
        let v = value(&Sticky::new(&config(b"k")).set_cookie("web", &w)).to_owned();
        let render = |c: StickyConfig| {
            let field = Sticky::new(&c).set_cookie("web", &w);
            field.replacen(&v, "V", 1)
        };
        assert_eq!(
            render(config(b"k")),
            "lb_sticky=V; Path=/; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            render(StickyConfig {
                cookie: "srv".into(),
                max_age: Some(Duration::from_millis(3_600_900)),
                secure: true,
                same_site: Some(SameSite::None),
                ..config(b"k")
            }),
            "srv=V; Path=/; Max-Age=3600; Secure; HttpOnly; SameSite=None"
        );
        assert_eq!(
            render(StickyConfig {
                http_only: false,
                same_site: None,
                ..config(b"k")
            }),
            "lb_sticky=V; Path=/"
        );
        assert_eq!(
            render(StickyConfig {
                same_site: Some(SameSite::Strict),
                ..config(b"k")
            }),
            "lb_sticky=V; Path=/; HttpOnly; SameSite=Strict"
        );
        assert_eq!(Sticky::new(&config(b"k")).cookie_name(), "lb_sticky");
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let shown = format!("{:?}", Sticky::new(&config(b"hunter2")));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.starts_with("Sticky { name: \"lb_sticky\""), "{shown}");
    }
}
