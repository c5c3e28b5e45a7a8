//! Exponential backoff with jitter, so that nothing here ever spins while etcd
//! is away (flannel #2171), and the one retry loop built on it: every wait
//! between attempts against etcd is a step of a [`Backoff`].

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use rand::Rng;

/// Errors that know whether trying again later may help (etcd unreachable,
/// timeouts) or not (bad credentials, invalid data).
pub trait Transient {
    fn is_transient(&self) -> bool;
}

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max, next: min }
    }

    /// For waiting out an etcd outage: 200 ms, doubling up to 5 s, so a
    /// long outage costs a request every few seconds and its end is noticed
    /// within about 5 s.
    pub fn outage() -> Backoff {
        Backoff::new(Duration::from_millis(200), Duration::from_secs(5))
    }

    /// The delay to wait now (the nominal delay ±20 %, capped at `max`); the
    /// nominal delay doubles each call up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = rand::rng().random_range(0.8..1.2);
        nominal.mul_f64(jitter).min(self.max).max(self.min / 2)
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// Sleeps one step; returns how long.
    pub async fn wait(&mut self) -> Duration {
        let d = self.next_delay();
        tokio::time::sleep(d).await;
        d
    }

    /// Runs `attempt` until it succeeds. A transient error is logged (as a
    /// warning: someone is waiting on etcd) with the delay, and tried again
    /// after one step; any other error is returned at once. Resets the
    /// backoff on success.
    pub async fn retry<T, E, F, Fut>(&mut self, what: impl fmt::Display, attempt: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Transient + fmt::Display,
    {
        self.attempts(what, None, log::Level::Warn, E::is_transient, attempt).await
    }

    /// [`retry`](Self::retry) within `deadline`: gives up with the last
    /// error when the next wait would reach it. Waits are logged at debug
    /// level only, since the caller reports how it ended.
    pub async fn retry_until<T, E, F, Fut>(
        &mut self,
        deadline: Instant,
        what: impl fmt::Display,
        attempt: F,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Transient + fmt::Display,
    {
        self.attempts(what, Some(deadline), log::Level::Debug, E::is_transient, attempt)
            .await
    }

    /// [`retry`](Self::retry) for tasks that have no one to hand an error to
    /// and must not give up (the lease keeper): every error is waited out.
    pub async fn retry_all<T, E, F, Fut>(&mut self, what: impl fmt::Display, attempt: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: fmt::Display,
    {
        match self.attempts(what, None, log::Level::Warn, |_| true, attempt).await {
            Ok(v) => v,
            Err(_) => unreachable!("every error is retried and there is no deadline"),
        }
    }

    async fn attempts<T, E, F, Fut>(
        &mut self,
        what: impl fmt::Display,
        deadline: Option<Instant>,
        level: log::Level,
        retryable: impl Fn(&E) -> bool,
        mut attempt: F,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: fmt::Display,
    {
        loop {
            let e = match attempt().await {
                Ok(v) => {
                    self.reset();
                    return Ok(v);
                }
                Err(e) if retryable(&e) => e,
                Err(e) => return Err(e),
            };
            let d = self.next_delay();
            if deadline.is_some_and(|t| Instant::now() + d >= t) {
                return Err(e);
            }
            log::log!(level, "{what}: {e}; retrying in {d:?}");
            tokio::time::sleep(d).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let d: Vec<_> = (0..12).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(80) && d[0] <= Duration::from_millis(120));
        assert!(d[3] >= Duration::from_millis(640));
        assert!(d.iter().all(|x| *x <= Duration::from_secs(5)));
        assert!(d[11] >= Duration::from_secs(4));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }

    #[derive(Debug)]
    struct Failure(bool);

    impl Transient for Failure {
        fn is_transient(&self) -> bool {
            self.0
        }
    }

    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "transient: {}", self.0)
        }
    }

    #[tokio::test]
    async fn retries_transient_errors_with_growing_waits() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(5));
        let start = Instant::now();
        let mut calls = 0;
        let r: Result<u32, Failure> = b
            .retry("test", || {
                calls += 1;
                let n = calls;
                async move { if n < 4 { Err(Failure(true)) } else { Ok(n) } }
            })
            .await;
        assert_eq!(r.unwrap(), 4);
        // Three waits of nominally 10 + 20 + 40 ms, each -20 % at least.
        assert!(start.elapsed() >= Duration::from_millis(56), "{:?}", start.elapsed());
        // Success resets: the next first wait is short again.
        assert!(b.next_delay() <= Duration::from_millis(12));
    }

    #[tokio::test]
    async fn returns_other_errors_at_once() {
        let mut b = Backoff::outage();
        let start = Instant::now();
        let mut calls = 0;
        let r: Result<(), Failure> = b
            .retry("test", || {
                calls += 1;
                async { Err(Failure(false)) }
            })
            .await;
        assert!(!r.unwrap_err().0);
        assert_eq!(calls, 1);
        assert!(start.elapsed() < Duration::from_millis(150), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline_with_the_last_error() {
        let mut b = Backoff::new(Duration::from_millis(20), Duration::from_millis(20));
        let start = Instant::now();
        let mut calls = 0;
        let r: Result<(), Failure> = b
            .retry_until(start + Duration::from_millis(200), "test", || {
                calls += 1;
                async { Err(Failure(true)) }
            })
            .await;
        assert!(r.unwrap_err().0);
        // It stops only when the next wait (at most 24 ms) would reach the
        // deadline, and never sleeps past it.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(176), "{took:?}");
        assert!((2..=13).contains(&calls), "{calls}");
    }

    #[tokio::test]
    async fn retry_all_waits_out_any_error() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(10));
        let mut calls = 0;
        let v = b
            .retry_all("test", || {
                calls += 1;
                let n = calls;
                async move { if n < 3 { Err(Failure(false)) } else { Ok(n) } }
            })
            .await;
        assert_eq!(v, 3);
    }
}
