//! Exponential backoff with jitter for transient failures (`[retry]`).

use std::time::Duration;

use rand::Rng;

use crate::config::RetrySettings;

/// The backoff policy: waits grow from `initial` by doubling up to `max`, each drawn at
/// random from its upper half so that many clients do not retry in step; after
/// `max_elapsed` since the first failure, give up.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// How long transient failures may go on before the records are given up.
    pub max_elapsed: Duration,
}

impl Backoff {
    /// The policy of `[retry]`.
    pub fn new(settings: &RetrySettings) -> Self {
        Backoff {
            initial: Duration::from_millis(settings.initial_backoff_ms),
            max: Duration::from_millis(settings.max_backoff_ms),
            max_elapsed: Duration::from_secs(settings.max_elapsed_secs),
        }
    }

    /// The wait before retry number `attempt` (1 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let doubled = self.initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let ceiling = doubled.min(self.max);
        let floor = ceiling / 2;
        floor + rand::rng().random_range(Duration::ZERO..=ceiling - floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_maximum_with_jitter_in_the_upper_half() {
        let b = Backoff::new(&RetrySettings { initial_backoff_ms: 100, max_backoff_ms: 1000, max_elapsed_secs: 60 });
        for _ in 0..100 {
            let d1 = b.delay(1);
            assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&d1), "{d1:?}");
            let d3 = b.delay(3);
            assert!((Duration::from_millis(200)..=Duration::from_millis(400)).contains(&d3), "{d3:?}");
            let d30 = b.delay(30);
            assert!((Duration::from_millis(500)..=Duration::from_millis(1000)).contains(&d30), "{d30:?}");
        }
    }
}
