//! Routes: the rows of the `routes` table, compiled with each snapshot into what a request's
//! listener, host and path look up (no scan per request).
//!
//! Precedence: an exact host beats the longest matching `*.suffix`, which beats a route for
//! any host; within the most specific host with a matching route, the longest
//! `path_prefix` wins (compared byte for byte, so `/api` also matches `/apix`), then the
//! highest `priority`, then a route naming the listener over one for every listener, then
//! the lowest id. A host whose routes match none of the path falls through to the next,
//! less specific, host.
//!
//! Layout: one [`Table`] per listener name that some route names (its own routes and those
//! for every listener), and one for listeners without a name or named by no route. A table
//! holds exact hosts and wildcard suffixes in hash tables, each with its [`Paths`]: the
//! distinct prefix lengths and a hash table from prefix to the best route for it, so a
//! lookup is a few hash probes, longest prefix first.
//!
//! Hashing: FNV-1a (the algorithm of the `fnv` crate), computed here rather than through
//! `Hasher`, for two properties a lookup leans on. It runs byte by byte, so one pass over a
//! path yields the hash of its longest candidate prefix; and each step can be undone
//! (FNV's prime is odd, so it has an inverse modulo 2^64), so the shorter prefixes' hashes
//! come from that one by stepping back, without hashing the path again. Hosts are hashed
//! from their last byte to their first, in the pass that lowers their letters, so the hash
//! at each dot is that of the suffix after it: the wildcard candidates. The hash tables are
//! hashbrown's `HashTable`, which takes such precomputed hashes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use hashbrown::HashTable;

/// A row of `routes`, as read from the table or carried by a change event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRow {
    pub id: i64,
    pub version: i64,
    /// Lower-case DNS name or `*.suffix`; `None` for any host.
    pub host: Option<String>,
    /// Starts with `/`.
    pub path_prefix: String,
    pub pool: String,
    pub priority: i32,
    /// The `[[listeners]] name` it applies to; `None` for every listener.
    pub listener: Option<String>,
}

/// The longest DNS name (without a trailing dot); longer hosts match only any-host routes.
pub const MAX_HOST: usize = 253;
/// The longest `path_prefix` the table accepts (its CHECK constraint), in bytes.
pub const MAX_PATH_PREFIX: usize = 1024;
/// The longest pool or listener name the table accepts, in characters.
const MAX_NAME: usize = 200;

impl RouteRow {
    /// Whether the row keeps the limits of the table's CHECK constraints
    /// (`migrations/V4__routes.sql`): rows from elsewhere (the ring cache) are checked
    /// with it before they are trusted. `Err` names the column.
    pub fn check(&self) -> Result<(), &'static str> {
        if let Some(host) = &self.host {
            let name = host.strip_prefix("*.").unwrap_or(host);
            if name.len() > MAX_HOST || !is_dns_name(name) {
                return Err("host");
            }
        }
        let path = self.path_prefix.as_bytes();
        let path_ok = path.first() == Some(&b'/')
            && path.len() <= MAX_PATH_PREFIX
            && !path
                .iter()
                .any(|&b| b.is_ascii_control() || matches!(b, b' ' | b'?' | b'#'));
        if !path_ok {
            return Err("path_prefix");
        }
        if self.pool.is_empty() || self.pool.chars().count() > MAX_NAME {
            return Err("pool");
        }
        if let Some(l) = &self.listener {
            let ok = !l.is_empty()
                && l.len() <= MAX_NAME
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !ok {
                return Err("listener");
            }
        }
        Ok(())
    }

    /// Which host tier the row belongs to.
    fn tier(&self) -> Tier<'_> {
        match self.host.as_deref() {
            None => Tier::Any,
            Some(h) => match h.strip_prefix("*.") {
                Some(suffix) => Tier::Wildcard(suffix),
                None => Tier::Exact(h),
            },
        }
    }

    /// Orders rows that share a host and a prefix: the smallest key wins.
    fn tie_break(&self) -> (Reverse<i32>, bool, i64) {
        (Reverse(self.priority), self.listener.is_none(), self.id)
    }
}

/// Labels of `[a-z0-9]([a-z0-9-]*[a-z0-9])?` separated by single dots.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
            b.first().is_some_and(edge)
                && b.last().is_some_and(edge)
                && b.iter().all(|c| edge(c) || *c == b'-')
        })
}

/// A row's host, as the lookup tables key it.
#[derive(Debug, Clone, Copy)]
enum Tier<'a> {
    Exact(&'a str),
    Wildcard(&'a str),
    Any,
}

/// Where a matching request goes.
#[derive(Debug, Clone)]
pub struct Route {
    pub id: i64,
    /// The pool's fixed index in every snapshot (see `Ring::pool_index`).
    pub pool: usize,
    pub pool_name: Arc<str>,
}

/// Every route, compiled for lookup. Immutable once published with a snapshot.
#[derive(Debug, Default)]
pub struct Routes {
    /// The rows, by id.
    rows: Vec<RouteRow>,
    /// Where each row goes, indexed like `rows`; the tables hold indices into it.
    routes: Vec<Route>,
    /// Per listener name that some row names: its rows and those for every listener.
    named: ByteMap<Table>,
    /// The rows for every listener: what a listener without a table of its own uses.
    unnamed: Table,
}

impl Routes {
    /// Compiles `rows`. `pool_index` gives each pool a route names its fixed index in every
    /// snapshot (`Ring::register`); it is asked once per distinct pool name.
    pub fn compile(
        rows: impl IntoIterator<Item = RouteRow>,
        mut pool_index: impl FnMut(&str) -> usize,
    ) -> Routes {
        let mut rows: Vec<RouteRow> = rows.into_iter().collect();
        rows.sort_unstable_by_key(|r| r.id);
        let mut pools: HashMap<&str, (usize, Arc<str>)> = HashMap::new();
        let routes = rows
            .iter()
            .map(|r| {
                let (pool, pool_name) = pools
                    .entry(r.pool.as_str())
                    .or_insert_with(|| (pool_index(&r.pool), Arc::from(r.pool.as_str())))
                    .clone();
                Route {
                    id: r.id,
                    pool,
                    pool_name,
                }
            })
            .collect();
        let every: Vec<u32> = (0..rows.len() as u32)
            .filter(|&i| rows[i as usize].listener.is_none())
            .collect();
        let mut by_listener: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for (i, r) in rows.iter().enumerate() {
            if let Some(l) = &r.listener {
                by_listener.entry(l.as_str()).or_default().push(i as u32);
            }
        }
        let mut named = ByteMap::default();
        for (name, mut own) in by_listener {
            own.extend_from_slice(&every);
            named.insert(
                name.as_bytes(),
                fnv(name.as_bytes()),
                Table::build(&rows, &own),
            );
        }
        let unnamed = Table::build(&rows, &every);
        Routes {
            rows,
            routes,
            named,
            unnamed,
        }
    }

    /// Whether there is no route at all: the listeners' own pools serve everything.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows, by id.
    pub fn rows(&self) -> &[RouteRow] {
        &self.rows
    }

    /// The route for a request on the listener named `listener` (its `[[listeners]] name`)
    /// to `host` (as the client sent it: any case, with or without a port; `None` when it
    /// sent none) and `path` (the request-target's path, without the query).
    ///
    /// The host is normalised here, without allocating: a `:port` is dropped, one trailing
    /// dot too, and letters are lowered. An IPv6 literal (`[::1]:8080`), a host longer than
    /// [`MAX_HOST`], one with an empty label or one that is not a name with an optional
    /// numeric port matches only routes for any host.
    #[inline]
    pub fn lookup(
        &self,
        listener: Option<&str>,
        host: Option<&[u8]>,
        path: &[u8],
    ) -> Option<&Route> {
        if self.rows.is_empty() {
            return None;
        }
        let table = self.table(listener);
        let mut buf = [0u8; MAX_HOST];
        let host = match host {
            Some(h) if table.has_hosts() => Host::normalise(h, &mut buf),
            _ => None,
        };
        table
            .lookup(host.as_ref(), path, true)
            .map(|i| &self.routes[i as usize])
    }

    /// The route of a TLS connection to the listener named `listener` whose ClientHello
    /// names `server` (SNI passthrough): routes by host only, exact then wildcard. Paths do
    /// not apply (only a route whose `path_prefix` is `/` matches), nor do routes for any
    /// host: those are for HTTP requests, and a catch-all HTTP route must not take every TLS
    /// connection that happens to send a server name.
    pub fn lookup_server_name(&self, listener: Option<&str>, server: &[u8]) -> Option<&Route> {
        if self.rows.is_empty() {
            return None;
        }
        let table = self.table(listener);
        let mut buf = [0u8; MAX_HOST];
        let host = Host::normalise(server, &mut buf)?;
        table
            .lookup(Some(&host), b"/", false)
            .map(|i| &self.routes[i as usize])
    }

    /// The rows that apply on the listener named `listener`, in precedence order: exact
    /// hosts (by name), then wildcards (longest suffix first), then any host; within one
    /// host, longest prefix first, then the order that breaks ties. Of rows sharing a host
    /// and a prefix, only the first is ever chosen.
    pub fn in_precedence(&self, listener: Option<&str>) -> Vec<&RouteRow> {
        let mut rows: Vec<&RouteRow> = self
            .rows
            .iter()
            .filter(|r| r.listener.is_none() || r.listener.as_deref() == listener)
            .collect();
        rows.sort_by_key(|r| {
            let tier = match r.tier() {
                Tier::Exact(h) => (0, 0, h),
                Tier::Wildcard(s) => (1, usize::MAX - s.len(), s),
                Tier::Any => (2, 0, ""),
            };
            (
                tier,
                Reverse(r.path_prefix.len()),
                r.path_prefix.as_str(),
                r.tie_break(),
            )
        });
        rows
    }

    fn table(&self, listener: Option<&str>) -> &Table {
        match listener {
            Some(name) if !self.named.is_empty() => self
                .named
                .get(fnv(name.as_bytes()), name.as_bytes())
                .unwrap_or(&self.unnamed),
            _ => &self.unnamed,
        }
    }
}

/// The routes one listener sees, by host tier.
#[derive(Debug, Default)]
struct Table {
    /// Exact host → its paths; hashed with [`fnv_rev`].
    exact: ByteMap<Paths>,
    /// Wildcard suffix (`example.com` for `*.example.com`) → its paths; hashed with
    /// [`fnv_rev`].
    wildcard: ByteMap<Paths>,
    /// Routes for any host.
    any: Paths,
}

impl Table {
    /// The table of `rows[i]` for each `i` of `members`.
    fn build(rows: &[RouteRow], members: &[u32]) -> Table {
        let mut exact: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        let mut wildcard: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        let mut any = Vec::new();
        for &i in members {
            match rows[i as usize].tier() {
                Tier::Exact(h) => exact.entry(h).or_default().push(i),
                Tier::Wildcard(s) => wildcard.entry(s).or_default().push(i),
                Tier::Any => any.push(i),
            }
        }
        let hosts = |tier: BTreeMap<&str, Vec<u32>>| {
            let mut map = ByteMap::with_capacity(tier.len());
            for (host, members) in tier {
                let key = host.as_bytes();
                map.insert(key, fnv_rev(key), Paths::build(rows, &members));
            }
            map
        };
        Table {
            exact: hosts(exact),
            wildcard: hosts(wildcard),
            any: Paths::build(rows, &any),
        }
    }

    fn has_hosts(&self) -> bool {
        !self.exact.is_empty() || !self.wildcard.is_empty()
    }

    /// The index of the route for `host` and `path`.
    #[inline]
    /// `any`: whether routes for any host apply when no host route does.
    fn lookup(&self, host: Option<&Host>, path: &[u8], any: bool) -> Option<u32> {
        if let Some(host) = host {
            let name = host.name;
            if let Some(found) = self
                .exact
                .get(host.hash, name)
                .and_then(|paths| paths.lookup(path))
            {
                return Some(found);
            }
            if !self.wildcard.is_empty() {
                let wildcard = |suffix_hash, dot: usize| {
                    self.wildcard
                        .get(suffix_hash, &name[dot + 1..])
                        .and_then(|paths| paths.lookup(path))
                };
                // Dots before those the normalisation recorded (a host of many labels):
                // step back over the host's bytes from the first; after each dot the hash
                // is that of the suffix behind it, the longest suffix first.
                if host.more_dots {
                    let first_recorded = host.dots[RECORDED_DOTS - 1].0 as usize;
                    let mut h = host.hash;
                    for (i, &b) in name[..first_recorded].iter().enumerate() {
                        h = fnv_unstep(h, b);
                        if b == b'.'
                            && let Some(found) = wildcard(h, i)
                        {
                            return Some(found);
                        }
                    }
                }
                for &(dot, h) in host.dots[..host.recorded].iter().rev() {
                    if let Some(found) = wildcard(h, dot as usize) {
                        return Some(found);
                    }
                }
            }
        }
        if any { self.any.lookup(path) } else { None }
    }
}

/// The routes of one host (or of any host), by path prefix.
#[derive(Debug, Default)]
struct Paths {
    /// The distinct prefix lengths, ascending.
    lengths: Box<[u32]>,
    /// Prefix → index of its best route (see [`RouteRow::tie_break`]); hashed with [`fnv`].
    best: ByteMap<u32>,
}

impl Paths {
    fn build(rows: &[RouteRow], members: &[u32]) -> Paths {
        let mut best: BTreeMap<&str, u32> = BTreeMap::new();
        for &i in members {
            let row = &rows[i as usize];
            best.entry(&row.path_prefix)
                .and_modify(|b| {
                    if row.tie_break() < rows[*b as usize].tie_break() {
                        *b = i;
                    }
                })
                .or_insert(i);
        }
        let mut lengths: Vec<u32> = best.keys().map(|p| p.len() as u32).collect();
        lengths.sort_unstable();
        lengths.dedup();
        let mut map = ByteMap::with_capacity(best.len());
        for (prefix, i) in best {
            map.insert(prefix.as_bytes(), fnv(prefix.as_bytes()), i);
        }
        Paths {
            lengths: lengths.into(),
            best: map,
        }
    }

    /// The index of the route with the longest prefix of `path`.
    #[inline]
    fn lookup(&self, path: &[u8]) -> Option<u32> {
        let fitting = self.lengths.partition_point(|&l| l as usize <= path.len());
        let (&longest, shorter) = self.lengths[..fitting].split_last()?;
        let mut len = longest as usize;
        let mut h = fnv(&path[..len]);
        if let Some(&i) = self.best.get(h, &path[..len]) {
            return Some(i);
        }
        for &next in shorter.iter().rev() {
            let next = next as usize;
            for &b in path[next..len].iter().rev() {
                h = fnv_unstep(h, b);
            }
            len = next;
            if let Some(&i) = self.best.get(h, &path[..len]) {
                return Some(i);
            }
        }
        None
    }
}

/// How many dots of a host (counted from its end) [`Host::normalise`] records with their
/// suffix's hash: hosts of up to this many + 1 labels, nearly all, need no second pass.
const RECORDED_DOTS: usize = 8;

/// A request's host, normalised, with the hashes its lookup probes.
struct Host<'b> {
    /// Without port or trailing dot, lower-case.
    name: &'b [u8],
    /// [`fnv_rev`] of `name`: an exact host's hash.
    hash: u64,
    /// The last dots of `name` (nearest its end first): each one's position and the
    /// [`fnv_rev`] of the suffix after it, a wildcard's candidate.
    dots: [(u8, u64); RECORDED_DOTS],
    /// How many of `dots` are set.
    recorded: usize,
    /// Whether `name` has dots before the recorded ones.
    more_dots: bool,
}

impl<'b> Host<'b> {
    /// Strips a port and a trailing dot and lowers letters into `buf`, hashing as it goes
    /// (from the last byte to the first); `None` for a host no DNS-named route can match
    /// (see [`Routes::lookup`]).
    #[inline]
    fn normalise(host: &[u8], buf: &'b mut [u8; MAX_HOST]) -> Option<Host<'b>> {
        // An IPv6 literal: its colons are not a port, and no route names an address.
        if host.first() == Some(&b'[') {
            return None;
        }
        let name = match host.iter().rposition(|&b| b == b':') {
            Some(colon) => {
                let (name, port) = (&host[..colon], &host[colon + 1..]);
                if !port.iter().all(u8::is_ascii_digit) || name.contains(&b':') {
                    return None;
                }
                name
            }
            None => host,
        };
        let name = name.strip_suffix(b".").unwrap_or(name);
        if name.is_empty() || name.len() > MAX_HOST {
            return None;
        }
        let out = &mut buf[..name.len()];
        let mut hash = FNV_OFFSET;
        let mut dots = [(0u8, 0u64); RECORDED_DOTS];
        let (mut recorded, mut more_dots) = (0, false);
        // The byte after the current one; the end counts as a dot, so a name ending in one
        // (its trailing dot already gone) has an empty label.
        let mut next = b'.';
        for (i, (o, &b)) in out.iter_mut().zip(name).enumerate().rev() {
            let b = b.to_ascii_lowercase();
            if b == b'.' {
                // An empty label ("a..b", ".a") is no DNS name: it must not reach a
                // wildcard's suffix.
                if next == b'.' {
                    return None;
                }
                if recorded < RECORDED_DOTS {
                    // `hash` is now that of the suffix after this dot.
                    dots[recorded] = (i as u8, hash);
                    recorded += 1;
                } else {
                    more_dots = true;
                }
            }
            *o = b;
            hash = fnv_step(hash, b);
            next = b;
        }
        if next == b'.' {
            return None;
        }
        Some(Host {
            name: out,
            hash,
            dots,
            recorded,
            more_dots,
        })
    }
}

/// A hash table from byte strings to `T`, whose hashes the caller computes.
#[derive(Debug)]
struct ByteMap<T> {
    table: HashTable<Entry<T>>,
}

#[derive(Debug)]
struct Entry<T> {
    key: Box<[u8]>,
    /// Kept for the table's growth, which must rehash every entry.
    hash: u64,
    value: T,
}

impl<T> Default for ByteMap<T> {
    fn default() -> Self {
        ByteMap {
            table: HashTable::new(),
        }
    }
}

impl<T> ByteMap<T> {
    fn with_capacity(n: usize) -> Self {
        ByteMap {
            table: HashTable::with_capacity(n),
        }
    }

    fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Adds `key`, which must not be there yet (callers insert the keys of a map).
    fn insert(&mut self, key: &[u8], hash: u64, value: T) {
        self.table.insert_unique(
            hash,
            Entry {
                key: key.into(),
                hash,
                value,
            },
            |e| e.hash,
        );
    }

    #[inline]
    fn get(&self, hash: u64, key: &[u8]) -> Option<&T> {
        self.table
            .find(hash, |e| e.hash == hash && *e.key == *key)
            .map(|e| &e.value)
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// `FNV_PRIME`'s inverse modulo 2^64: multiplying by it undoes a multiplication by the prime.
const FNV_PRIME_INVERSE: u64 = inverse(FNV_PRIME);

/// The inverse of odd `p` modulo 2^64, by Newton's iteration (each round doubles the
/// number of correct low bits: 3 from the start, 96 after five rounds).
const fn inverse(p: u64) -> u64 {
    let mut x = p;
    let mut round = 0;
    while round < 5 {
        x = x.wrapping_mul(2u64.wrapping_sub(p.wrapping_mul(x)));
        round += 1;
    }
    x
}

/// FNV-1a of `bytes`.
#[inline]
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| fnv_step(h, b))
}

/// FNV-1a of `bytes` read from the last to the first.
#[inline]
fn fnv_rev(bytes: &[u8]) -> u64 {
    bytes.iter().rev().fold(FNV_OFFSET, |h, &b| fnv_step(h, b))
}

#[inline]
fn fnv_step(h: u64, b: u8) -> u64 {
    (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
}

/// Undoes `fnv_step(_, b)`.
#[inline]
fn fnv_unstep(h: u64, b: u8) -> u64 {
    h.wrapping_mul(FNV_PRIME_INVERSE) ^ u64::from(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, host: Option<&str>, path: &str, pool: &str) -> RouteRow {
        RouteRow {
            id,
            version: id,
            host: host.map(str::to_string),
            path_prefix: path.to_string(),
            pool: pool.to_string(),
            priority: 0,
            listener: None,
        }
    }

    /// Compiles `rows`, giving pools indices in order of first appearance.
    fn compile(rows: Vec<RouteRow>) -> Routes {
        let mut names: Vec<String> = Vec::new();
        Routes::compile(rows, |p| {
            names.push(p.to_string());
            names.len() - 1
        })
    }

    /// The id of the route chosen, on the unnamed listener unless given.
    fn pick(routes: &Routes, listener: Option<&str>, host: &str, path: &str) -> Option<i64> {
        let host = (!host.is_empty()).then_some(host.as_bytes());
        routes.lookup(listener, host, path.as_bytes()).map(|r| r.id)
    }

    fn on(routes: &Routes, host: &str, path: &str) -> Option<i64> {
        pick(routes, None, host, path)
    }

    #[test]
    fn fnv_steps_undo_and_reverse() {
        assert_eq!(FNV_PRIME.wrapping_mul(FNV_PRIME_INVERSE), 1);
        let path = b"/api/v1/users";
        let mut h = fnv(path);
        for (len, &b) in path.iter().enumerate().rev() {
            h = fnv_unstep(h, b);
            assert_eq!(h, fnv(&path[..len]), "prefix of {len}");
        }
        assert_eq!(h, FNV_OFFSET);
        assert_eq!(fnv_rev(b"abc"), fnv(b"cba"));
        // The published FNV-1a 64 test vector.
        assert_eq!(fnv(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn no_routes_match_nothing() {
        let routes = Routes::default();
        assert!(routes.is_empty());
        assert!(on(&routes, "example.com", "/").is_none());
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any_host() {
        let routes = compile(vec![
            row(1, None, "/", "any"),
            row(2, Some("*.example.com"), "/", "wild"),
            row(3, Some("www.example.com"), "/", "exact"),
        ]);
        assert_eq!(on(&routes, "www.example.com", "/x"), Some(3));
        assert_eq!(on(&routes, "api.example.com", "/x"), Some(2));
        assert_eq!(on(&routes, "other.org", "/x"), Some(1));
        assert_eq!(on(&routes, "", "/x"), Some(1), "no Host: any-host routes");
        let r = routes.lookup(None, Some(b"www.example.com"), b"/").unwrap();
        assert_eq!((r.pool, &*r.pool_name), (2, "exact"));
    }

    #[test]
    fn a_wildcard_matches_any_depth_below_its_suffix_but_not_the_suffix() {
        let routes = compile(vec![row(1, Some("*.example.com"), "/", "p")]);
        assert_eq!(on(&routes, "a.example.com", "/"), Some(1));
        assert_eq!(on(&routes, "a.b.c.example.com", "/"), Some(1));
        assert_eq!(on(&routes, "example.com", "/"), None);
        assert_eq!(on(&routes, "aexample.com", "/"), None, "a label boundary");
        assert_eq!(on(&routes, "a.example.co", "/"), None);
    }

    #[test]
    fn the_longest_wildcard_suffix_wins() {
        let routes = compile(vec![
            row(1, Some("*.com"), "/", "p"),
            row(2, Some("*.example.com"), "/", "p"),
            row(3, Some("*.b.example.com"), "/", "p"),
        ]);
        assert_eq!(on(&routes, "a.b.example.com", "/"), Some(3));
        assert_eq!(on(&routes, "x.a.b.example.com", "/"), Some(3));
        assert_eq!(on(&routes, "b.example.com", "/"), Some(2));
        assert_eq!(on(&routes, "example.com", "/"), Some(1));
        assert_eq!(on(&routes, "other.com", "/"), Some(1));
        assert_eq!(on(&routes, "other.org", "/"), None);
    }

    #[test]
    fn wildcards_match_in_hosts_of_many_labels() {
        // 12 labels: the normalisation records the last 8 dots; the 3 before are found by
        // stepping back.
        let host = "l1.l2.l3.l4.l5.l6.l7.l8.l9.l10.l11.com";
        let routes = compile(vec![
            row(1, Some("*.com"), "/", "p"),
            row(2, Some("*.l8.l9.l10.l11.com"), "/", "p"),
            row(3, Some("*.l3.l4.l5.l6.l7.l8.l9.l10.l11.com"), "/a", "p"),
            row(4, Some("*.l2.l3.l4.l5.l6.l7.l8.l9.l10.l11.com"), "/b", "p"),
            row(5, Some("*.l4.l5.l6.l7.l8.l9.l10.l11.com"), "/c", "p"),
        ]);
        assert_eq!(on(&routes, host, "/b"), Some(4), "the longest suffix");
        assert_eq!(on(&routes, host, "/a"), Some(3));
        assert_eq!(on(&routes, host, "/c"), Some(5), "across the recorded dots");
        assert_eq!(on(&routes, host, "/d"), Some(2));
        assert_eq!(on(&routes, "x.com", "/d"), Some(1));
        assert_eq!(on(&routes, &host.to_uppercase(), "/b"), Some(4));
    }

    #[test]
    fn the_longest_prefix_wins_byte_wise() {
        let routes = compile(vec![
            row(1, None, "/", "p"),
            row(2, None, "/api", "p"),
            row(3, None, "/api/v1/", "p"),
        ]);
        assert_eq!(on(&routes, "h", "/api/v1/users"), Some(3));
        assert_eq!(on(&routes, "h", "/api/v1"), Some(2));
        assert_eq!(
            on(&routes, "h", "/apix"),
            Some(2),
            "byte-wise, not by segment"
        );
        assert_eq!(on(&routes, "h", "/ap"), Some(1));
        assert_eq!(on(&routes, "h", "/"), Some(1));
        assert_eq!(on(&routes, "h", "/API"), Some(1), "paths keep their case");
        assert_eq!(on(&routes, "h", ""), None, "no prefix of an empty path");
        assert_eq!(on(&routes, "h", "*"), None);
    }

    #[test]
    fn ties_go_to_priority_then_the_named_listener_then_the_lowest_id() {
        let mut high = row(5, None, "/a", "p");
        high.priority = 2;
        let mut named = row(3, None, "/a", "p");
        named.listener = Some("web".into());
        let routes = compile(vec![row(4, None, "/a", "p"), row(2, None, "/a", "p")]);
        assert_eq!(on(&routes, "h", "/a"), Some(2), "the lowest id");

        let routes = compile(vec![
            row(4, None, "/a", "p"),
            row(2, None, "/a", "p"),
            named.clone(),
        ]);
        assert_eq!(pick(&routes, Some("web"), "h", "/a"), Some(3), "named");
        assert_eq!(pick(&routes, Some("api"), "h", "/a"), Some(2));
        assert_eq!(pick(&routes, None, "h", "/a"), Some(2));

        let routes = compile(vec![row(2, None, "/a", "p"), named, high]);
        assert_eq!(pick(&routes, Some("web"), "h", "/a"), Some(5), "priority");
        // Priority never beats a longer prefix.
        let routes = compile(vec![row(6, None, "/a/b", "p"), {
            let mut r = row(7, None, "/a", "p");
            r.priority = 100;
            r
        }]);
        assert_eq!(on(&routes, "h", "/a/b/c"), Some(6));
    }

    #[test]
    fn a_more_specific_host_without_a_matching_path_falls_through() {
        let routes = compile(vec![
            row(1, Some("www.example.com"), "/admin", "p"),
            row(2, Some("*.example.com"), "/api", "p"),
            row(3, Some("*.com"), "/static", "p"),
            row(4, None, "/", "p"),
        ]);
        assert_eq!(on(&routes, "www.example.com", "/admin/x"), Some(1));
        assert_eq!(on(&routes, "www.example.com", "/api/x"), Some(2));
        assert_eq!(on(&routes, "www.example.com", "/static/x"), Some(3));
        assert_eq!(on(&routes, "www.example.com", "/other"), Some(4));
        // The exact host's longer prefix does not beat the wildcard's match by length:
        // tiers are tried in order, and the first with a match wins.
        let routes = compile(vec![
            row(1, Some("www.example.com"), "/", "p"),
            row(2, Some("*.example.com"), "/api/v1", "p"),
        ]);
        assert_eq!(on(&routes, "www.example.com", "/api/v1/x"), Some(1));
    }

    #[test]
    fn listeners_see_their_own_routes_and_those_for_every_listener() {
        let mut web = row(1, None, "/", "web-pool");
        web.listener = Some("web".into());
        let mut admin = row(2, None, "/admin", "admin-pool");
        admin.listener = Some("admin".into());
        let every = row(3, None, "/shared", "shared");
        let routes = compile(vec![web, admin, every]);
        assert_eq!(pick(&routes, Some("web"), "", "/admin"), Some(1));
        assert_eq!(pick(&routes, Some("web"), "", "/shared/x"), Some(3));
        assert_eq!(pick(&routes, Some("admin"), "", "/admin/x"), Some(2));
        assert_eq!(pick(&routes, Some("admin"), "", "/"), None);
        assert_eq!(pick(&routes, Some("other"), "", "/shared"), Some(3));
        assert_eq!(pick(&routes, None, "", "/"), None);
        assert_eq!(pick(&routes, None, "", "/shared"), Some(3));
        assert_eq!(
            pick(&routes, Some("Web"), "", "/"),
            None,
            "names keep their case"
        );
    }

    #[test]
    fn hosts_are_normalised_before_lookup() {
        let routes = compile(vec![
            row(1, Some("www.example.com"), "/", "p"),
            row(2, Some("*.example.org"), "/", "p"),
            row(3, Some("10.0.0.1"), "/", "p"),
            row(4, None, "/", "p"),
        ]);
        for (host, want) in [
            ("www.example.com", 1),
            ("WWW.Example.COM", 1),
            ("www.example.com:8080", 1),
            ("www.example.com:", 1),
            ("www.example.com.", 1),
            ("WWW.EXAMPLE.COM.:443", 1),
            ("A.B.Example.Org:80", 2),
            ("a.example.org.", 2),
            ("10.0.0.1:80", 3),
            ("[::1]:8080", 4),
            ("[::1]", 4),
            ("www.example.com:80:80", 4),
            ("www.example.com:http", 4),
            ("www.example.com..", 4),
            (":80", 4),
            (".", 4),
            ("www.example.com ", 4),
            (".a.example.org", 4),
            ("a..example.org", 4),
        ] {
            assert_eq!(on(&routes, host, "/"), Some(want), "{host:?}");
        }
    }

    #[test]
    fn hosts_beyond_253_bytes_match_only_any_host_routes() {
        let label = "a".repeat(63);
        let long = format!("{label}.{label}.{label}.{}", "b".repeat(61)); // 253
        assert_eq!(long.len(), 253);
        let routes = compile(vec![
            row(1, Some(&long), "/", "p"),
            row(2, Some("*.com"), "/", "p"),
            row(3, None, "/", "p"),
        ]);
        assert_eq!(on(&routes, &long, "/"), Some(1));
        assert_eq!(on(&routes, &format!("{long}."), "/"), Some(1));
        assert_eq!(on(&routes, &format!("{long}:8080"), "/"), Some(1));
        assert_eq!(on(&routes, &format!("x{long}"), "/"), Some(3));
        let long_com = format!("{}.com", "c".repeat(250));
        assert_eq!(on(&routes, &long_com, "/"), Some(3));
    }

    #[test]
    fn every_pool_is_asked_for_once_and_routes_carry_its_index() {
        let mut asked = Vec::new();
        let routes = Routes::compile(
            vec![
                row(3, None, "/b", "blue"),
                row(1, None, "/a", "green"),
                row(2, None, "/c", "green"),
            ],
            |p| {
                asked.push(p.to_string());
                10 + asked.len()
            },
        );
        assert_eq!(asked, ["green", "blue"], "in id order, once each");
        let ids: Vec<i64> = routes.rows().iter().map(|r| r.id).collect();
        assert_eq!(ids, [1, 2, 3]);
        let r = routes.lookup(None, None, b"/b").unwrap();
        assert_eq!((r.id, r.pool, &*r.pool_name), (3, 12, "blue"));
    }

    #[test]
    fn precedence_order_lists_what_a_listener_sees() {
        let mut named = row(7, None, "/", "p");
        named.listener = Some("web".into());
        let mut other = row(8, None, "/", "p");
        other.listener = Some("api".into());
        let mut high = row(9, None, "/", "p");
        high.priority = 1;
        let routes = compile(vec![
            row(1, None, "/", "p"),
            row(2, Some("*.example.com"), "/", "p"),
            row(3, Some("*.a.example.com"), "/", "p"),
            row(4, Some("b.example.com"), "/", "p"),
            row(5, Some("a.example.com"), "/x", "p"),
            row(6, Some("a.example.com"), "/xy", "p"),
            named,
            other,
            high,
        ]);
        let ids = |l| -> Vec<i64> { routes.in_precedence(l).iter().map(|r| r.id).collect() };
        assert_eq!(ids(Some("web")), [6, 5, 4, 3, 2, 9, 7, 1]);
        assert_eq!(ids(None), [6, 5, 4, 3, 2, 9, 1]);
    }

    #[test]
    fn rows_are_checked_like_the_table_does() {
        let ok = row(1, Some("*.example.com"), "/api", "p");
        assert_eq!(ok.check(), Ok(()));
        let with = |f: &dyn Fn(&mut RouteRow)| {
            let mut r = ok.clone();
            f(&mut r);
            r.check()
        };
        assert_eq!(with(&|r| r.host = Some("Example.com".into())), Err("host"));
        assert_eq!(with(&|r| r.host = Some("*.".into())), Err("host"));
        assert_eq!(with(&|r| r.host = Some("a..b".into())), Err("host"));
        assert_eq!(with(&|r| r.host = Some("-a.b".into())), Err("host"));
        assert_eq!(with(&|r| r.host = Some("a.b.".into())), Err("host"));
        assert_eq!(with(&|r| r.host = Some("*.*.b".into())), Err("host"));
        assert_eq!(with(&|r| r.host = None), Ok(()));
        assert_eq!(with(&|r| r.path_prefix = "api".into()), Err("path_prefix"));
        assert_eq!(with(&|r| r.path_prefix = "/a b".into()), Err("path_prefix"));
        assert_eq!(with(&|r| r.path_prefix = "/a?b".into()), Err("path_prefix"));
        assert_eq!(
            with(&|r| r.path_prefix = "/a\tb".into()),
            Err("path_prefix")
        );
        assert_eq!(
            with(&|r| r.path_prefix = format!("/{}", "a".repeat(1024))),
            Err("path_prefix")
        );
        assert_eq!(with(&|r| r.pool = String::new()), Err("pool"));
        assert_eq!(with(&|r| r.pool = "é".repeat(200)), Ok(()));
        assert_eq!(with(&|r| r.listener = Some("a b".into())), Err("listener"));
        assert_eq!(with(&|r| r.listener = Some(String::new())), Err("listener"));
        assert_eq!(with(&|r| r.listener = Some("web-1.a_b".into())), Ok(()));
    }
}
