//! Rate-limited logging for events a client can cause at will (refusals, kicks, limit hits):
//! they are logged at info or warn, but at most a few per second per kind, so abuse cannot flood
//! the log. What was held back is counted and reported with the next message let through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Messages of one kind let through per second.
const PER_SECOND: u64 = 10;

/// The kinds of events, each with its own allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogEvent {
    /// A socket or upgrade was refused (limits, origin, peer).
    Refused,
    /// A connection was closed by the server (lagging, idle, rate limits, protocol errors).
    Closed,
}

impl LogEvent {
    const COUNT: usize = 2;

    fn as_str(self) -> &'static str {
        match self {
            LogEvent::Refused => "refusal",
            LogEvent::Closed => "close",
        }
    }
}

#[derive(Debug, Default)]
struct Window {
    second: AtomicU64,
    count: AtomicU64,
    held_back: AtomicU64,
}

/// One allowance per [`LogEvent`].
#[derive(Debug, Default)]
pub(crate) struct LogGate {
    windows: [Window; LogEvent::COUNT],
}

impl LogGate {
    /// Whether a message about `event` may be logged now.
    pub(crate) fn allow(&self, event: LogEvent) -> bool {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.allow_at(event, now)
    }

    fn allow_at(&self, event: LogEvent, second: u64) -> bool {
        let window = &self.windows[event as usize];
        if window.second.swap(second, Ordering::AcqRel) != second {
            window.count.store(0, Ordering::Release);
            let held_back = window.held_back.swap(0, Ordering::AcqRel);
            if held_back > 0 {
                tracing::warn!(held_back, kind = event.as_str(), "similar log messages were held back");
            }
        }
        if window.count.fetch_add(1, Ordering::AcqRel) < PER_SECOND {
            true
        } else {
            window.held_back.fetch_add(1, Ordering::AcqRel);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_per_second_per_kind() {
        let gate = LogGate::default();
        let allowed = (0..100).filter(|_| gate.allow_at(LogEvent::Closed, 7)).count();
        assert_eq!(allowed, PER_SECOND as usize);
        assert!(gate.allow_at(LogEvent::Refused, 7), "kinds are independent");
        assert!(gate.allow_at(LogEvent::Closed, 8), "a new second, a new allowance");
        assert_eq!(gate.windows[LogEvent::Closed as usize].held_back.load(Ordering::Acquire), 0, "reported");
    }
}
