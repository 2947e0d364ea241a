//! Rate-limited logging for the data path.
//!
//! A guest can make every packet bad; logging each one would let it flood the host's logs and
//! burn the worker's time. Each call site owns one static [`RateLimiter`]: it lets a burst of
//! lines through per window and counts what it suppressed, reporting the count with the next
//! line that passes (the shape of firecracker's `rate_limited.rs`). The macros emit through
//! `tracing::event!`, so clippy's ban on plain `warn!`/`error!` (clippy.toml) only catches
//! call sites that bypass them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines allowed per call site and window.
pub const LINES_PER_WINDOW: u64 = 10;
/// Window length in seconds.
pub const WINDOW_SECS: u64 = 5;

/// Per-call-site state: the current window, lines logged in it, and lines suppressed so far.
#[derive(Debug)]
pub struct RateLimiter {
    window: AtomicU64,
    logged: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimiter {
    /// A limiter with nothing logged yet.
    pub const fn new() -> Self {
        RateLimiter {
            window: AtomicU64::new(0),
            logged: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Decides whether a line may go out now. `Some(n)` means log it and mention the `n` lines
    /// suppressed before it; `None` means drop it (it is counted).
    ///
    /// Only reached on the error path, so reading the clock here costs the good path nothing.
    pub fn check(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.check_at(now / WINDOW_SECS)
    }

    fn check_at(&self, window: u64) -> Option<u64> {
        if self.window.swap(window, Ordering::Relaxed) != window {
            self.logged.store(0, Ordering::Relaxed);
        }
        if self.logged.fetch_add(1, Ordering::Relaxed) < LINES_PER_WINDOW {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

/// `warn!` limited per call site; for code a guest or the wire can trigger at packet rate.
#[macro_export]
macro_rules! rl_warn {
    ($($arg:tt)+) => {{
        static LIMITER: $crate::ratelimit::RateLimiter = $crate::ratelimit::RateLimiter::new();
        if let Some(suppressed) = LIMITER.check() {
            ::tracing::event!(::tracing::Level::WARN, suppressed, $($arg)+);
        }
    }};
}

/// `warn!` without a limit, for host-only paths that cannot repeat at packet rate
/// (start-up, a front-end connecting, a device reset).
#[macro_export]
macro_rules! warn_unlimited {
    ($($arg:tt)+) => {
        ::tracing::event!(::tracing::Level::WARN, $($arg)+)
    };
}

/// `error!` without a limit, for failures of an action the user asked for.
#[macro_export]
macro_rules! error_unlimited {
    ($($arg:tt)+) => {
        ::tracing::event!(::tracing::Level::ERROR, $($arg)+)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_passes_a_window_then_counts_suppressed_lines() {
        let limiter = RateLimiter::new();
        for _ in 0..LINES_PER_WINDOW {
            assert_eq!(limiter.check_at(7), Some(0));
        }
        assert_eq!(limiter.check_at(7), None);
        assert_eq!(limiter.check_at(7), None);
        // A new window lets lines through again and reports what was dropped.
        assert_eq!(limiter.check_at(8), Some(2));
        assert_eq!(limiter.check_at(8), Some(0));
    }
}
