//! Connection slots: the server-wide cap (`max_connections`) and the per-address cap
//! (`max_connections_per_ip`), taken when a socket is accepted and given back when it closes.
//!
//! A socket that finds no slot is not left waiting: it is answered at once (HTTP 503 or 429 with
//! `Retry-After`, see `http`), while `/healthz` and `/metrics` still answer on it. Those answers
//! have a small pool of their own, so a flood of refused sockets cannot hold descriptors either.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Sockets being answered without a slot at any one time; more are closed at once.
const REFUSAL_POOL: usize = 256;

/// Why a socket got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The server holds `max_connections` already.
    Full,
    /// The peer's address holds `max_connections_per_ip` already.
    PerIp,
}

impl Refusal {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::Full => "server_full",
            Refusal::PerIp => "per_ip",
        }
    }
}

/// The caps, shared by every listener of a server.
#[derive(Debug)]
pub(crate) struct Slots {
    max: usize,
    total: Arc<Semaphore>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    per_ip_max: usize,
    refusals: Arc<Semaphore>,
}

/// A held slot; dropping it gives the slot back.
#[derive(Debug)]
pub(crate) struct Slot {
    _total: OwnedSemaphorePermit,
    ip: IpAddr,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// What an accepted socket gets.
#[derive(Debug)]
pub(crate) enum Admission {
    /// A slot: served normally.
    Admitted(Slot),
    /// No slot, but room to tell the client so (the permit holds a place in the refusal pool).
    Refused(Refusal, OwnedSemaphorePermit),
    /// No slot and no room to answer: close the socket now.
    Dropped(Refusal),
}

impl Slots {
    pub(crate) fn new(max: usize, per_ip_max: usize) -> Slots {
        Slots {
            max,
            total: Arc::new(Semaphore::new(max)),
            per_ip: Arc::default(),
            per_ip_max,
            refusals: Arc::new(Semaphore::new(REFUSAL_POOL)),
        }
    }

    /// Takes a slot for a socket from `ip`, if both caps allow.
    pub(crate) fn admit(&self, ip: IpAddr) -> Admission {
        let refusal = match self.take(ip) {
            Ok(slot) => return Admission::Admitted(slot),
            Err(refusal) => refusal,
        };
        match self.refusals.clone().try_acquire_owned() {
            Ok(permit) => Admission::Refused(refusal, permit),
            Err(_) => Admission::Dropped(refusal),
        }
    }

    fn take(&self, ip: IpAddr) -> Result<Slot, Refusal> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let held = per_ip.get(&ip).copied().unwrap_or(0);
        if held >= self.per_ip_max {
            return Err(Refusal::PerIp);
        }
        let permit = self.total.clone().try_acquire_owned().map_err(|_| Refusal::Full)?;
        per_ip.insert(ip, held + 1);
        Ok(Slot { _total: permit, ip, per_ip: self.per_ip.clone() })
    }

    /// Slots held now.
    pub(crate) fn held(&self) -> usize {
        self.max - self.total.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn caps_refuse_then_free_slots_come_back() {
        let slots = Slots::new(3, 2);
        let a1 = slots.admit(ip(1));
        let a2 = slots.admit(ip(1));
        assert!(matches!(a1, Admission::Admitted(_)) && matches!(a2, Admission::Admitted(_)));
        assert!(matches!(slots.admit(ip(1)), Admission::Refused(Refusal::PerIp, _)), "third from one address");
        let b = slots.admit(ip(2));
        assert!(matches!(b, Admission::Admitted(_)));
        assert!(matches!(slots.admit(ip(3)), Admission::Refused(Refusal::Full, _)), "the server is full");
        assert_eq!(slots.held(), 3);
        drop(a1);
        assert!(matches!(slots.admit(ip(1)), Admission::Admitted(_)), "a freed slot is reusable");
        drop((a2, b));
        assert!(slots.per_ip.lock().unwrap().len() <= 1, "addresses with no socket are forgotten");
    }

    #[test]
    fn refusals_beyond_the_pool_are_dropped() {
        let slots = Slots::new(1, 1);
        let _held = slots.admit(ip(1));
        let refused: Vec<_> = (0..REFUSAL_POOL).map(|_| slots.admit(ip(2))).collect();
        assert!(refused.iter().all(|a| matches!(a, Admission::Refused(Refusal::Full, _))));
        assert!(matches!(slots.admit(ip(2)), Admission::Dropped(Refusal::Full)));
    }
}
