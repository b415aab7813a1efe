//! HPACK's two tables (RFC 7541 §2.3): the static one every peer knows, and the dynamic
//! one a peer's encoder fills and this side's decoder mirrors.

use std::collections::VecDeque;

use super::DecodeError;

/// RFC 7541 Appendix A: index 1 is `STATIC[0]`.
pub const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// The static index of the first entry named `name` (lowercase, as HTTP/2 sends names),
/// and how many entries have that name (adjacent, each with its own value).
pub fn static_name(name: &[u8]) -> Option<(usize, usize)> {
    Some(match name {
        b":authority" => (1, 1),
        b":method" => (2, 2),
        b":path" => (4, 2),
        b":scheme" => (6, 2),
        b":status" => (8, 7),
        b"accept-charset" => (15, 1),
        b"accept-encoding" => (16, 1),
        b"accept-language" => (17, 1),
        b"accept-ranges" => (18, 1),
        b"accept" => (19, 1),
        b"access-control-allow-origin" => (20, 1),
        b"age" => (21, 1),
        b"allow" => (22, 1),
        b"authorization" => (23, 1),
        b"cache-control" => (24, 1),
        b"content-disposition" => (25, 1),
        b"content-encoding" => (26, 1),
        b"content-language" => (27, 1),
        b"content-length" => (28, 1),
        b"content-location" => (29, 1),
        b"content-range" => (30, 1),
        b"content-type" => (31, 1),
        b"cookie" => (32, 1),
        b"date" => (33, 1),
        b"etag" => (34, 1),
        b"expect" => (35, 1),
        b"expires" => (36, 1),
        b"from" => (37, 1),
        b"host" => (38, 1),
        b"if-match" => (39, 1),
        b"if-modified-since" => (40, 1),
        b"if-none-match" => (41, 1),
        b"if-range" => (42, 1),
        b"if-unmodified-since" => (43, 1),
        b"last-modified" => (44, 1),
        b"link" => (45, 1),
        b"location" => (46, 1),
        b"max-forwards" => (47, 1),
        b"proxy-authenticate" => (48, 1),
        b"proxy-authorization" => (49, 1),
        b"range" => (50, 1),
        b"referer" => (51, 1),
        b"refresh" => (52, 1),
        b"retry-after" => (53, 1),
        b"server" => (54, 1),
        b"set-cookie" => (55, 1),
        b"strict-transport-security" => (56, 1),
        b"transfer-encoding" => (57, 1),
        b"user-agent" => (58, 1),
        b"vary" => (59, 1),
        b"via" => (60, 1),
        b"www-authenticate" => (61, 1),
        _ => return None,
    })
}

/// What an entry costs in the table besides its bytes (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// The dynamic table as the peer's encoder has filled it: newest first, within `max_size`
/// (name and value lengths plus 32 per entry).
#[derive(Debug)]
pub struct Dynamic {
    /// Each entry's name and value in one buffer: `bytes[..name_len]` is the name.
    entries: VecDeque<(Vec<u8>, usize)>,
    /// Buffers of evicted entries, for the next inserts: a peer that indexes a field per
    /// message (a `date`, say) fills the table at the rate it empties, so in the steady
    /// state an insert allocates nothing.
    spare: Vec<Vec<u8>>,
    size: usize,
    /// The size the peer's last update set.
    max_size: usize,
    /// The most the peer may set: this side's SETTINGS_HEADER_TABLE_SIZE.
    limit: usize,
}

/// Evicted buffers kept for reuse, at most: each is under `max_size`, so they hold no more
/// than a few tables' worth.
const SPARE: usize = 8;

impl Dynamic {
    pub fn new(limit: usize) -> Dynamic {
        Dynamic {
            entries: VecDeque::new(),
            spare: Vec::new(),
            size: 0,
            max_size: limit,
            limit,
        }
    }

    /// The (name, value) at `index` in the combined index space (1 is the static table's
    /// first entry); 0 or past the end is the peer's error.
    pub fn get(&self, index: usize) -> Result<(&[u8], &[u8]), DecodeError> {
        if index == 0 {
            return Err(DecodeError::Index);
        }
        if let Some(&(name, value)) = STATIC.get(index - 1) {
            return Ok((name, value));
        }
        let (bytes, name_len) = self
            .entries
            .get(index - 1 - STATIC.len())
            .ok_or(DecodeError::Index)?;
        Ok(bytes.split_at(*name_len))
    }

    /// Adds an entry, evicting the oldest as needed; one larger than the whole table
    /// empties it and is not kept (RFC 7541 §4.4).
    pub fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        self.evict_to(self.max_size.saturating_sub(size));
        if size > self.max_size {
            return;
        }
        let mut bytes = self.spare.pop().unwrap_or_default();
        bytes.clear();
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(value);
        self.entries.push_front((bytes, name.len()));
        self.size += size;
    }

    /// A dynamic table size update from the peer: at most this side's limit.
    pub fn resize(&mut self, max_size: usize) -> Result<(), DecodeError> {
        if max_size > self.limit {
            return Err(DecodeError::TableSize);
        }
        self.max_size = max_size;
        self.evict_to(max_size);
        Ok(())
    }

    fn evict_to(&mut self, size: usize) {
        while self.size > size {
            let (bytes, _) = self
                .entries
                .pop_back()
                .expect("size counts only entries held");
            self.size -= bytes.len() + ENTRY_OVERHEAD;
            if self.spare.len() < SPARE {
                self.spare.push(bytes);
            }
        }
    }

    /// Entries held (for tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The table's size as RFC 7541 §4.1 counts it (for tests).
    #[cfg(test)]
    pub fn size(&self) -> usize {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_names_find_their_entries() {
        for (name, _) in STATIC {
            let first = STATIC.iter().position(|(n, _)| *n == name).unwrap() + 1;
            let count = STATIC.iter().filter(|(n, _)| *n == name).count();
            let at = static_name(name);
            assert_eq!(
                at,
                Some((first, count)),
                "{}",
                String::from_utf8_lossy(name)
            );
            // Adjacent: the `count` entries from `first` all have that name.
            assert!(
                STATIC[first - 1..first - 1 + count]
                    .iter()
                    .all(|(n, _)| *n == name)
            );
        }
        assert_eq!(static_name(b"x-forwarded-for"), None);
        assert_eq!(
            static_name(b"Host"),
            None,
            "names are matched as HTTP/2 sends them"
        );
    }

    #[test]
    fn inserts_evict_the_oldest_and_oversized_entries_empty_the_table() {
        let mut t = Dynamic::new(100);
        t.insert(b"a", b"1234567890"); // 43
        t.insert(b"b", b"1234567890"); // 86
        assert_eq!((t.len(), t.size()), (2, 86));
        assert_eq!(t.get(62).unwrap(), (&b"b"[..], &b"1234567890"[..]));
        t.insert(b"c", b"x"); // 34: evicts "a"
        assert_eq!((t.len(), t.size()), (2, 77));
        assert_eq!(t.get(63).unwrap().0, b"b");
        assert_eq!(t.get(64), Err(DecodeError::Index));
        t.insert(b"d", &[b'y'; 100]);
        assert_eq!((t.len(), t.size()), (0, 0));
        assert_eq!(t.get(0), Err(DecodeError::Index));
        assert_eq!(t.get(2).unwrap(), (&b":method"[..], &b"GET"[..]));
    }

    #[test]
    fn an_evicted_entrys_buffer_holds_only_the_next_entry() {
        let mut t = Dynamic::new(100);
        t.insert(b"date", b"Wed, 02 Dec 2026 10:00:00 GMT"); // 65
        // Evicts the first, whose buffer (longer) takes this one.
        t.insert(b"date", b"Wed, 02 Dec 2026 10:00:01 GMT");
        assert_eq!(t.len(), 1);
        t.insert(b"x", b"1"); // 34: both fit
        assert_eq!(t.get(62).unwrap(), (&b"x"[..], &b"1"[..]));
        assert_eq!(
            t.get(63).unwrap(),
            (&b"date"[..], &b"Wed, 02 Dec 2026 10:00:01 GMT"[..])
        );
        // The short entry's buffer goes to a longer one: it grows.
        t.insert(b"server", &[b's'; 60]);
        assert_eq!(t.get(62).unwrap(), (&b"server"[..], &[b's'; 60][..]));
        assert_eq!(t.size(), 6 + 60 + 32);
    }

    #[test]
    fn resizing_evicts_and_is_bounded_by_the_limit() {
        let mut t = Dynamic::new(100);
        t.insert(b"a", b"1"); // 34
        t.insert(b"b", b"2"); // 68
        t.resize(40).unwrap();
        assert_eq!((t.len(), t.get(62).unwrap().0), (1, &b"b"[..]));
        assert_eq!(t.resize(101), Err(DecodeError::TableSize));
        t.resize(0).unwrap();
        assert_eq!(t.len(), 0);
        t.insert(b"c", b"3");
        assert_eq!(t.len(), 0, "a table of size 0 keeps nothing");
    }
}
