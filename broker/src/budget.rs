//! One broker-wide memory budget in bytes that every buffer draws from:
//! connections' outbound queues and unacknowledged messages, queue buffers,
//! open transactions and the retained store.
//!
//! The account is one atomic counter. A message is charged once when it
//! enters a buffer and released when it leaves (written, acknowledged,
//! consumed, evicted), so the hot path costs one `fetch_add` and one
//! `fetch_sub` per message per buffer; connection tasks release a whole
//! write batch at once.
//!
//! Admission happens where new data enters the broker: a publish (SEND or
//! [`crate::BrokerCore::publish`]) or a transaction frame is refused while
//! the account is over the limit ([`MemoryBudget::admits`]). What an
//! admitted publish fans out to is then charged in full ([`MemoryBudget::charge`]),
//! already bounded per connection by `max_pending_bytes_per_connection`, so
//! the account can pass the limit by at most one publish's fan-out per
//! concurrent publisher — it never keeps growing.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The broker-wide byte account. Lives in [`crate::metrics::Metrics`], which
/// every component already shares; unlimited until
/// [`MemoryBudget::set_limit`] is called.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: AtomicUsize,
    used: AtomicUsize,
}

impl Default for MemoryBudget {
    fn default() -> Self {
        MemoryBudget {
            limit: AtomicUsize::new(usize::MAX),
            used: AtomicUsize::new(0),
        }
    }
}

impl MemoryBudget {
    /// Sets the limit in bytes (at start).
    pub fn set_limit(&self, bytes: usize) {
        self.limit.store(bytes, Relaxed);
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit.load(Relaxed)
    }

    /// Bytes currently charged.
    pub fn used(&self) -> usize {
        self.used.load(Relaxed)
    }

    /// Whether `bytes` more may enter the broker now. A check, not a
    /// reservation: the caller charges what it then buffers.
    pub fn admits(&self, bytes: usize) -> bool {
        self.used.load(Relaxed).saturating_add(bytes) <= self.limit.load(Relaxed)
    }

    /// Charges `bytes` if they fit under the limit; false (and nothing
    /// charged) if not.
    pub fn try_charge(&self, bytes: usize) -> bool {
        let before = self.used.fetch_add(bytes, Relaxed);
        if before.saturating_add(bytes) > self.limit.load(Relaxed) {
            self.used.fetch_sub(bytes, Relaxed);
            return false;
        }
        true
    }

    /// Charges `bytes` unconditionally (data already admitted moving into a
    /// buffer).
    pub fn charge(&self, bytes: usize) {
        self.used.fetch_add(bytes, Relaxed);
    }

    /// Gives back `bytes` charged before.
    pub fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Relaxed);
    }
}

/// The default budget: half of the memory this process may use — the
/// cgroup (v2 `memory.max`, v1 `memory.limit_in_bytes`) limit when one is
/// set, else the machine's `MemTotal`. Falls back to 1 GiB when neither can
/// be read.
pub fn default_limit() -> usize {
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .find_map(|s| parse_cgroup_limit(&s));
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| parse_meminfo_total(&s));
    let machine = match (cgroup, total) {
        (Some(c), Some(t)) => Some(c.min(t)),
        (c, t) => c.or(t),
    };
    machine.map_or(1 << 30, |m| m / 2)
}

/// A cgroup memory limit in bytes; `None` for `max` or an unset (huge) v1 limit.
fn parse_cgroup_limit(s: &str) -> Option<usize> {
    let v: u64 = s.trim().parse().ok()?;
    // cgroup v1 reports "no limit" as a page-rounded i64::MAX.
    (v < (1 << 62)).then(|| usize::try_from(v).unwrap_or(usize::MAX))
}

/// `MemTotal` from /proc/meminfo, in bytes.
fn parse_meminfo_total(s: &str) -> Option<usize> {
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_charge_refuses_over_the_limit_and_charges_nothing() {
        let b = MemoryBudget::default();
        b.set_limit(100);
        assert!(b.try_charge(60));
        assert!(!b.try_charge(50));
        assert_eq!(b.used(), 60);
        assert!(b.admits(40));
        assert!(!b.admits(41));
        b.charge(50);
        assert_eq!(b.used(), 110);
        b.release(110);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn limits_parse_from_cgroup_and_meminfo() {
        assert_eq!(parse_cgroup_limit("max\n"), None);
        assert_eq!(parse_cgroup_limit("536870912\n"), Some(536_870_912));
        assert_eq!(parse_cgroup_limit("9223372036854771712\n"), None);
        assert_eq!(
            parse_meminfo_total("MemTotal:        8048576 kB\nMemFree: 1 kB\n"),
            Some(8_048_576 * 1024)
        );
        assert!(default_limit() > 0);
    }
}
