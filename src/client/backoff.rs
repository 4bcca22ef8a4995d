//! When to try again (issue 4): exponential backoff with jitter from --reconnect-min doubling
//! to --reconnect-max, started over by a connection that lived long enough, and a quick first
//! retry after a close the server announced.

use std::time::Duration;

/// A connection that lived at least this long starts the schedule over: the server was fine,
/// so its next failure is news, not more of the same outage.
pub const STABLE: Duration = Duration::from_secs(30);

/// The reconnection schedule; `jitter` arguments are uniform in [0, 1) (see [`jitter`]).
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max, step: min }
    }

    /// The wait before the next attempt after an unexpected end or a failed attempt: the
    /// current step less up to a fifth (so clients dropped together spread out, and no wait
    /// exceeds --reconnect-max); the step then doubles.
    pub fn next(&mut self, jitter: f64) -> Duration {
        let wait = self.step.mul_f64(1.0 - 0.2 * jitter);
        self.step = (self.step * 2).min(self.max);
        wait
    }

    /// The first wait after `* closing: upgrade|shutdown`: the server is coming back at once,
    /// so half the first step plus up to a tenth of it (still below the shortest [`Backoff::next`]).
    pub fn quick(&self, jitter: f64) -> Duration {
        self.min / 2 + self.min.mul_f64(0.1 * jitter)
    }

    /// Records how long the last connection lived; a stable one resets the schedule.
    pub fn connection_lived(&mut self, lived: Duration) {
        if lived >= STABLE {
            self.step = self.min;
        }
    }
}

/// A uniform number in [0, 1) from OpenSSL's generator (no extra dependency for this).
pub fn jitter() -> f64 {
    let mut bytes = [0u8; 4];
    match openssl::rand::rand_bytes(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn doubles_from_min_to_max() {
        let mut backoff = Backoff::new(secs(1.0), secs(30.0));
        let waits: Vec<f64> = (0..7).map(|_| backoff.next(0.0).as_secs_f64()).collect();
        assert_eq!(waits, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]);
    }

    #[test]
    fn jitter_only_shortens_by_up_to_a_fifth() {
        let mut backoff = Backoff::new(secs(1.0), secs(30.0));
        let wait = backoff.next(0.999_999).as_secs_f64();
        assert!((0.8..0.801).contains(&wait), "{wait}");
        for _ in 0..10 {
            let wait = backoff.next(jitter());
            assert!(wait <= secs(30.0));
        }
    }

    #[test]
    fn a_stable_connection_starts_the_schedule_over() {
        let mut backoff = Backoff::new(secs(1.0), secs(30.0));
        backoff.next(0.0);
        backoff.next(0.0);
        backoff.connection_lived(secs(29.0));
        assert_eq!(backoff.next(0.0), secs(4.0), "a short connection does not reset");
        backoff.connection_lived(STABLE);
        assert_eq!(backoff.next(0.0), secs(1.0));
    }

    #[test]
    fn the_quick_retry_is_shorter_than_any_normal_one() {
        let mut backoff = Backoff::new(secs(1.0), secs(30.0));
        assert_eq!(backoff.quick(0.0), secs(0.5));
        assert!(backoff.quick(0.999_999) < backoff.next(0.999_999));
    }

    #[test]
    fn jitter_is_in_the_unit_interval() {
        for _ in 0..100 {
            assert!((0.0..1.0).contains(&jitter()));
        }
    }
}
