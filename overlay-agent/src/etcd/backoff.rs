//! Exponential backoff with jitter, so that nothing here ever spins while etcd
//! is away (flannel #2171).

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max, next: min }
    }

    /// The delay to wait now (the nominal delay ±20 %, capped at `max`); the
    /// nominal delay doubles each call up to `max`.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let nominal = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = rand::rng().random_range(0.8..1.2);
        nominal.mul_f64(jitter).min(self.max).max(self.min / 2)
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
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
}
