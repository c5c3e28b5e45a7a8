//! What a program decided, and why (the counter it lands in).
use overlay_common::stats::Reason;

pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;

#[derive(Clone, Copy)]
pub struct Outcome {
    pub action: i32,
    pub reason: Reason,
}

impl Outcome {
    #[inline(always)]
    pub const fn pass(reason: Reason) -> Self {
        Outcome { action: TC_ACT_OK, reason }
    }
    #[inline(always)]
    pub const fn drop(reason: Reason) -> Self {
        Outcome { action: TC_ACT_SHOT, reason }
    }
    /// The result of a redirect helper: success lands in `reason`, failure
    /// (the helper said TC_ACT_SHOT) in DropError.
    #[inline(always)]
    pub fn redirected(helper_ret: i64, reason: Reason) -> Self {
        if helper_ret == TC_ACT_REDIRECT as i64 {
            Outcome { action: TC_ACT_REDIRECT, reason }
        } else {
            Outcome::drop(Reason::DropError)
        }
    }
}
