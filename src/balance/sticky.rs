//! STUB (replaced by the real module from the wt-pure branch).
use crate::config::StickyConfig;
use crate::ring::{Pool, Slot, Worker};

pub struct Sticky {
    name: String,
}

impl Sticky {
    pub fn new(config: &StickyConfig) -> Sticky {
        Sticky {
            name: config.cookie.clone(),
        }
    }
    pub fn cookie_name(&self) -> &str {
        &self.name
    }
    pub fn stuck_to<'p>(&self, value: &[u8], pool: &'p Pool) -> Option<&'p Slot> {
        let id: i64 = std::str::from_utf8(value).ok()?.parse().ok()?;
        pool.slots.iter().find(|s| s.id == id)
    }
    pub fn set_cookie(&self, _pool: &str, worker: &Worker) -> String {
        format!("{}={}; Path=/", self.name, worker.id)
    }
}
