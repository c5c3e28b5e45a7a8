//! Ctrl-C and friends. SIGINT, SIGTERM and SIGHUP are blocked in every
//! thread (set before any thread exists, and inherited by each) and taken by
//! one thread with sigwait(2), which only raises a flag. The scenario checks
//! the flag between steps and inside every wait, returns `Interrupted`, and
//! main then drops what it built: the harness's `Drop`s stop the agents,
//! unpin their programs, delete the namespaces and stop etcd. Processes the
//! demo starts get an empty signal mask (std resets it before exec).
use std::fmt;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

static STOP: AtomicI32 = AtomicI32::new(0);

/// The error a step returns when a signal asked the demo to stop.
#[derive(Debug)]
pub struct Interrupted(pub i32);

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "interrupted by {}", name(self.0))
    }
}

impl std::error::Error for Interrupted {}

pub fn name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT (Ctrl-C)",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// Must run before any other thread is started.
pub fn install() {
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || loop {
        let mut sig: libc::c_int = 0;
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        if STOP.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            // stderr: unbuffered, and seen even when stdout is piped away.
            eprintln!("\n{} received: stopping; everything the demo created will be removed", name(sig));
        }
        // Later signals (a second Ctrl-C, the same ^C forwarded by
        // `cargo xtask`) change nothing: cleanup is already under way and
        // takes a second or two.
    });
}

/// The signal that asked us to stop, if any.
pub fn received() -> Option<i32> {
    match STOP.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Err(Interrupted) once a signal came.
pub fn check() -> anyhow::Result<()> {
    match received() {
        Some(sig) => Err(Interrupted(sig).into()),
        None => Ok(()),
    }
}

/// Sleeps `d` in small slices, returning early with Err on a signal.
pub fn nap(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    loop {
        check()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Whether `e` (or what it wraps) is an `Interrupted`, or any error that
/// happened after a signal came (a child killed by the same Ctrl-C).
pub fn is_interrupt(e: &anyhow::Error) -> Option<i32> {
    e.chain()
        .find_map(|c| c.downcast_ref::<Interrupted>().map(|i| i.0))
        .or_else(received)
}
