//! The allocator: what the process holds, and freed memory going back to the system.
//!
//! `botvisor` runs on jemalloc (`tikv-jemallocator`, set in `main.rs`) with its background
//! threads on ([`start_background_release`]): pages a sleeping bot's run freed (≈ 30 KB per
//! bot; docs/webhooks.md, "Dormant bots") go back to the system after jemalloc's decay time
//! (10 s) even when nothing else allocates. glibc's allocator, by contrast, keeps what a
//! program freed among what it still holds, so a process stays resident at its peak.
//! [`stats`] reads what jemalloc holds (logged by the control plane at debug level).

/// What jemalloc holds, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Allocated by the program.
    pub allocated: usize,
    /// In pages with an allocation (the difference is fragmentation within them).
    pub active: usize,
    /// Resident pages the allocator maps (active, dirty not yet returned, metadata).
    pub resident: usize,
    /// The allocator's own bookkeeping.
    pub metadata: usize,
}

/// Turns on jemalloc's background threads, which return freed pages to the system on time
/// (without them decay runs only while the program allocates). Returns whether they run (not
/// with another allocator).
pub fn start_background_release() -> bool {
    tikv_jemalloc_ctl::background_thread::write(true).is_ok()
        && tikv_jemalloc_ctl::background_thread::read().unwrap_or(false)
}

/// What jemalloc holds now (`None` when jemalloc is not the allocator).
pub fn stats() -> Option<Stats> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    let allocated = stats::allocated::read().ok()?;
    if allocated == 0 {
        return None;
    }
    Some(Stats {
        allocated,
        active: stats::active::read().ok()?,
        resident: stats::resident::read().ok()?,
        metadata: stats::metadata::read().ok()?,
    })
}
