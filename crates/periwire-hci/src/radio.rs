//! The simulated radio: every controller of a process meets the others here.
//!
//! Like Bumble's `LocalLink`, the radio does not model the air interface. Controllers hand it
//! link-layer messages ([`LinkPdu`]) addressed to a [`Dest`]; the radio resolves the
//! destination and delivers them, in order, to the other controllers' `handle_link`. One FIFO
//! carries everything, so ACL data between two controllers arrives in the order it was sent.
//!
//! The radio owns the controllers and is itself sans-IO: a runtime feeds host packets in with
//! [`Radio::handle_command`] and [`Radio::handle_acl`], fires timers with
//! [`Radio::handle_timeout`], and drains each adapter's host-bound packets with
//! [`Radio::poll_to_host`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use crate::controller::{AclError, CommandError, Controller, ControllerConfig, ToHost};
use crate::medium::{Dest, LinkPdu, Transmit};

pub use crate::medium::AdapterId;

#[cfg(test)]
mod tests;

/// Why the radio could not take a host packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RadioError {
    /// No adapter has this id (it was removed).
    #[error("no adapter {0}")]
    NoSuchAdapter(AdapterId),
    /// The controller refused a command packet.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The controller refused an ACL packet.
    #[error(transparent)]
    Acl(#[from] AclError),
}

impl From<crate::host_link::HostLinkError> for RadioError {
    fn from(e: crate::host_link::HostLinkError) -> Self {
        match e {
            crate::host_link::HostLinkError::Command(c) => Self::Command(c),
            crate::host_link::HostLinkError::Acl(a) => Self::Acl(a),
        }
    }
}

/// The most PDUs routed in one call before the radio assumes a loop and drops the rest.
const MAX_ROUTED_PER_CALL: usize = 1 << 20;

/// All controllers of a process and the medium between them.
#[derive(Debug, Default)]
pub struct Radio {
    adapters: BTreeMap<AdapterId, Controller>,
    next_id: u64,
    queue: VecDeque<(AdapterId, Transmit)>,
    ready: BTreeSet<AdapterId>,
}

impl Radio {
    /// An empty radio.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a controller with `config` (its address should be unique on the radio).
    pub fn add_adapter(&mut self, config: ControllerConfig) -> AdapterId {
        let id = AdapterId(self.next_id);
        self.next_id += 1;
        self.adapters.insert(id, Controller::new(id, config));
        id
    }

    /// Removes an adapter; its peers see their links to it drop (Connection Timeout).
    pub fn remove_adapter(&mut self, id: AdapterId, now: Instant) -> Option<Controller> {
        let c = self.adapters.remove(&id)?;
        self.ready.remove(&id);
        self.queue.retain(|(from, _)| *from != id);
        self.queue.push_back((
            id,
            Transmit {
                dest: Dest::Broadcast,
                pdu: LinkPdu::PeerGone,
            },
        ));
        self.route(now);
        Some(c)
    }

    /// The controller of `id`.
    pub fn adapter(&self, id: AdapterId) -> Option<&Controller> {
        self.adapters.get(&id)
    }

    /// The controller of `id`, mutably (configuration changes between host sessions).
    pub fn adapter_mut(&mut self, id: AdapterId) -> Option<&mut Controller> {
        self.adapters.get_mut(&id)
    }

    /// Every adapter id, in creation order.
    pub fn adapter_ids(&self) -> impl Iterator<Item = AdapterId> + '_ {
        self.adapters.keys().copied()
    }

    /// Hands a command packet (no H4 indicator) from `id`'s host to its controller.
    pub fn handle_command(
        &mut self,
        id: AdapterId,
        now: Instant,
        packet: &[u8],
    ) -> Result<(), RadioError> {
        self.feed_from_host(id, now, |c| c.handle_command(now, packet))
    }

    /// Hands an ACL packet (no H4 indicator) from `id`'s host to its controller.
    pub fn handle_acl(
        &mut self,
        id: AdapterId,
        now: Instant,
        packet: &[u8],
    ) -> Result<(), RadioError> {
        self.feed_from_host(id, now, |c| c.handle_acl(now, packet))
    }

    /// Feeds `id`'s controller something from its host, then sends on what that produced.
    fn feed_from_host<E: Into<RadioError>>(
        &mut self,
        id: AdapterId,
        now: Instant,
        feed: impl FnOnce(&mut Controller) -> Result<(), E>,
    ) -> Result<(), RadioError> {
        let c = self
            .adapters
            .get_mut(&id)
            .ok_or(RadioError::NoSuchAdapter(id))?;
        let r = feed(c);
        self.collect(id);
        self.route(now);
        r.map_err(Into::into)
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let ids: Vec<AdapterId> = self.adapters.keys().copied().collect();
        for id in ids {
            if let Some(c) = self.adapters.get_mut(&id) {
                if c.poll_timeout().is_some_and(|t| t <= now) {
                    c.handle_timeout(now);
                    self.collect(id);
                }
            }
        }
        self.route(now);
    }

    /// The earliest timer of any controller.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.adapters
            .values()
            .filter_map(|c| c.poll_timeout())
            .min()
    }

    /// The next packet for `id`'s host.
    pub fn poll_to_host(&mut self, id: AdapterId, now: Instant) -> Option<ToHost> {
        let c = self.adapters.get_mut(&id)?;
        let p = c.poll_to_host();
        if c.has_transmit() {
            self.collect(id);
            self.route(now);
        }
        p
    }

    /// Adapters that got host-bound packets since the last call (to wake their transports).
    pub fn take_ready(&mut self) -> BTreeSet<AdapterId> {
        std::mem::take(&mut self.ready)
    }

    fn collect(&mut self, id: AdapterId) {
        if let Some(c) = self.adapters.get_mut(&id) {
            while let Some(t) = c.poll_transmit() {
                self.queue.push_back((id, t));
            }
            if c.has_to_host() {
                self.ready.insert(id);
            }
        }
    }

    fn deliver(&mut self, now: Instant, from: AdapterId, to: AdapterId, pdu: LinkPdu) {
        if let Some(c) = self.adapters.get_mut(&to) {
            c.handle_link(now, from, pdu);
            self.collect(to);
        }
    }

    fn route(&mut self, now: Instant) {
        let mut routed = 0usize;
        while let Some((from, t)) = self.queue.pop_front() {
            routed += 1;
            if routed > MAX_ROUTED_PER_CALL {
                tracing::error!(
                    "radio: routing loop, dropping {} PDUs",
                    self.queue.len() + 1
                );
                self.queue.clear();
                break;
            }
            match t.dest {
                Dest::Adapter(to) => self.deliver(now, from, to, t.pdu),
                Dest::BrEdr(addr) => {
                    let to = self
                        .adapters
                        .iter()
                        .find(|(id, c)| **id != from && c.bd_addr() == addr && c.bredr_enabled())
                        .map(|(id, _)| *id);
                    if let Some(to) = to {
                        self.deliver(now, from, to, t.pdu);
                    }
                }
                Dest::Broadcast => {
                    let ids: Vec<AdapterId> = self
                        .adapters
                        .keys()
                        .copied()
                        .filter(|i| *i != from)
                        .collect();
                    for to in ids {
                        self.deliver(now, from, to, t.pdu.clone());
                    }
                }
            }
        }
    }
}
