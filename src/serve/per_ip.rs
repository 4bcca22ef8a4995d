//! `--max-clients-per-ip`: connections counted per client address. A slot is taken by the
//! listener for a direct client, or by the worker once a balancer's PROXY header has named
//! the real client, and given back when its [`Slot`] drops.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts connections per client address.
pub struct PerIp {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in its address's count.
pub struct Slot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    pub fn new(limit: usize) -> Self {
        PerIp { limit, counts: Mutex::new(HashMap::new()) }
    }

    /// Takes a slot for `ip`; `None` when it already has `limit` connections.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Slot { per_ip: self.clone(), ip })
    }

    fn release(&self, ip: IpAddr) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&ip);
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.per_ip.release(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_cap_counts_each_address_apart() {
        let per_ip = Arc::new(PerIp::new(2));
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "::1".parse().unwrap());
        let first = per_ip.take(a).unwrap();
        let _second = per_ip.take(a).unwrap();
        assert!(per_ip.take(a).is_none(), "the third from one address is refused");
        assert!(per_ip.take(b).is_some(), "another address is still served");
        drop(first);
        assert!(per_ip.take(a).is_some(), "a slot comes back when a connection ends");
    }
}
