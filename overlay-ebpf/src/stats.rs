//! Per-CPU counters: one reason per packet.
use overlay_common::stats::Reason;

use crate::maps::STATS;

#[inline(always)]
pub fn count(reason: Reason, bytes: u32) {
    if let Some(c) = STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this program invocation touches it.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes as u64;
        }
    }
}
