//! Log lines to stderr in batches, written by a thread of their own.
//!
//! The agent logs one INFO line per lease change, as flanneld does. With
//! env_logger writing straight to stderr, each line is its own write(2) on
//! the main loop: removing 32,767 peers spent a fifth of its CPU writing
//! lines. Here a log call only appends the formatted line to a buffer and,
//! if the writer thread is idle, wakes it; the thread lets lines gather for
//! a moment ([`GATHER`]) and writes them with one write. Lines keep their
//! order; a line is on stderr a few milliseconds after it was logged.
//!
//! A WARN or ERROR line is written at once, with everything logged before
//! it ([`init`]): a problem is on stderr before anything it caused (a
//! /readyz condition, an exit) can be seen.
//!
//! What can be lost: INFO and DEBUG lines formatted but not yet written
//! when the process is killed (SIGKILL, abort), at most those of the last
//! few milliseconds. `flush_now` writes the rest synchronously; main calls
//! it before exiting and the panic hook before reporting a panic.
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

/// Past this many buffered bytes (stderr not keeping up), a log call
/// writes them itself: memory stays bounded and the logger slows down
/// instead.
const MAX_PENDING: usize = 1 << 20;
/// How long the writer thread lets lines gather after being woken: during
/// a burst (32,767 peers removed) it then writes hundreds of lines at once
/// instead of waking for every few.
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// The writer thread has been woken for these bytes (and has not yet
    /// taken them): no need to wake it again.
    woken: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Held while taking bytes and writing them, so two writers (the
    /// thread and a `flush_now`) cannot reorder lines.
    writing: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves nothing half-done that
    // matters for logging.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Takes what is pending and writes it (one write for all of it).
    fn write_pending(&self) {
        let _writing = lock(&self.writing);
        let bytes = {
            let mut p = lock(&self.pending);
            p.woken = false;
            std::mem::take(&mut p.bytes)
        };
        if !bytes.is_empty() {
            // Nowhere to report a failed log write to.
            let _ = io::stderr().lock().write_all(&bytes);
        }
    }
}

static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();

/// The writer handed to env_logger (`Target::Pipe`). The first one made
/// starts the writer thread; all of them share its buffer.
pub struct BatchedStderr {
    shared: Arc<Shared>,
}

impl BatchedStderr {
    pub fn new() -> io::Result<BatchedStderr> {
        if let Some(shared) = SHARED.get() {
            return Ok(BatchedStderr {
                shared: shared.clone(),
            });
        }
        let shared = Arc::new(Shared::default());
        if SHARED.set(shared.clone()).is_err() {
            // Another thread won the race: use its buffer and thread.
            return Ok(BatchedStderr {
                shared: SHARED.get().expect("set").clone(),
            });
        }
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || loop {
                {
                    let mut p = lock(&thread_shared.pending);
                    while p.bytes.is_empty() {
                        p = thread_shared
                            .wake
                            .wait(p)
                            .unwrap_or_else(|e| e.into_inner());
                    }
                }
                std::thread::sleep(GATHER);
                thread_shared.write_pending();
            })?;
        Ok(BatchedStderr { shared })
    }
}

impl Write for BatchedStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let full = {
            let mut p = lock(&self.shared.pending);
            p.bytes.extend_from_slice(buf);
            p.bytes.len() > MAX_PENDING
        };
        if full {
            self.shared.write_pending();
        }
        Ok(buf.len())
    }

    /// env_logger flushes after each record: wake the writer thread unless
    /// it is already woken for what is pending.
    fn flush(&mut self) -> io::Result<()> {
        let mut p = lock(&self.shared.pending);
        if !p.woken && !p.bytes.is_empty() {
            p.woken = true;
            self.shared.wake.notify_one();
        }
        Ok(())
    }
}

/// Installs `builder`'s logger with its lines going through a
/// [`BatchedStderr`], WARN and ERROR lines written at once, and a panic
/// hook that writes what is pending before the panic is reported.
pub fn init(builder: &mut env_logger::Builder) -> io::Result<()> {
    builder.target(env_logger::Target::Pipe(Box::new(BatchedStderr::new()?)));
    let logger = builder.build();
    let max_level = logger.filter();
    log::set_boxed_logger(Box::new(WarningsAtOnce(logger))).map_err(io::Error::other)?;
    log::set_max_level(max_level);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        flush_now();
        default_hook(info);
    }));
    Ok(())
}

/// env_logger's logger, writing a WARN or ERROR line (and what is pending
/// before it) synchronously.
struct WarningsAtOnce(env_logger::Logger);

impl log::Log for WarningsAtOnce {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        self.0.log(record);
        if record.level() <= log::Level::Warn && self.0.matches(record) {
            flush_now();
        }
    }

    fn flush(&self) {
        flush_now();
    }
}

/// Writes every line logged so far, now (before exiting, or reporting a
/// panic). Nothing to do when no [`BatchedStderr`] was made.
pub fn flush_now() {
    if let Some(shared) = SHARED.get() {
        shared.write_pending();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_gather_until_written_and_keep_their_order() {
        let mut w = BatchedStderr::new().unwrap();
        let shared = w.shared.clone();
        // Hold the writing lock: the thread cannot take anything meanwhile.
        let guard = lock(&shared.writing);
        for i in 0..100 {
            writeln!(w, "line {i}").unwrap();
            w.flush().unwrap();
        }
        {
            let p = lock(&shared.pending);
            let text = String::from_utf8(p.bytes.clone()).unwrap();
            let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
            assert!(text.ends_with(&expected), "{text}");
            assert!(p.woken, "the thread was woken once for the lot");
        }
        drop(guard);
        flush_now();
        assert!(lock(&shared.pending).bytes.is_empty());
    }
}
