//! Who may connect to the Oracle's node: a bound per IP address and a timed ban list.
//!
//! libp2p's `connection_limits` counts per peer id and in total. A hostile host makes peer ids
//! for free, so that alone lets one host take every slot. This behaviour also counts
//! connections (pending and established) per remote IP address, and refuses new ones from
//! banned peers and addresses:
//!
//! * a peer dropped for a protocol violation is banned by peer id at once, for
//!   [`AdmissionConfig::ban`], doubled for each repeat up to [`MAX_BAN`];
//! * an address whose peers were dropped [`AdmissionConfig::strikes_per_ip`] times within
//!   [`STRIKE_WINDOW`] is banned as a whole for the same time, so fresh keys do not help.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    dummy, ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, ListenFailure, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::PeerId;

/// Longest ban.
pub const MAX_BAN: Duration = Duration::from_secs(3600);
/// Strikes against an address count within this window.
pub const STRIKE_WINDOW: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Connections (pending or established) one IP address may hold.
    pub max_per_ip: usize,
    /// First ban of a peer or address.
    pub ban: Duration,
    /// Drops within [`STRIKE_WINDOW`] after which an address is banned.
    pub strikes_per_ip: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self { max_per_ip: 16, ban: Duration::from_secs(60), strikes_per_ip: 5 }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(String);

/// A ban and how many came before it.
#[derive(Debug, Clone, Copy)]
struct Ban {
    until: Instant,
    count: u32,
}

pub struct Behaviour {
    config: AdmissionConfig,
    per_ip: HashMap<IpAddr, usize>,
    ip_of: HashMap<ConnectionId, IpAddr>,
    peer_bans: HashMap<PeerId, Ban>,
    ip_bans: HashMap<IpAddr, Ban>,
    strikes: HashMap<IpAddr, Vec<Instant>>,
}

/// The IP address in a multiaddr, if it has one.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(a) => Some(IpAddr::V4(a)),
        Protocol::Ip6(a) => Some(IpAddr::V6(a)),
        _ => None,
    })
}

impl Behaviour {
    pub fn new(config: AdmissionConfig) -> Self {
        Self {
            config,
            per_ip: HashMap::new(),
            ip_of: HashMap::new(),
            peer_bans: HashMap::new(),
            ip_bans: HashMap::new(),
            strikes: HashMap::new(),
        }
    }

    /// Bans `peer` (and counts a strike against `ip`) after a protocol violation.
    pub fn punish(&mut self, peer: PeerId, ip: Option<IpAddr>) {
        let now = Instant::now();
        let ban = self.config.ban;
        let next = |old: Option<&Ban>| {
            let count = old.map_or(0, |b| b.count + 1);
            Ban { until: now + (ban * 2u32.saturating_pow(count)).min(MAX_BAN), count }
        };
        let b = next(self.peer_bans.get(&peer));
        self.peer_bans.insert(peer, b);
        if let Some(ip) = ip {
            let strikes = self.strikes.entry(ip).or_default();
            strikes.retain(|t| now.duration_since(*t) < STRIKE_WINDOW);
            strikes.push(now);
            if strikes.len() as u32 >= self.config.strikes_per_ip {
                strikes.clear();
                let b = next(self.ip_bans.get(&ip));
                tracing::warn!(%ip, secs = b.until.duration_since(now).as_secs(), "banning an address whose peers keep misbehaving");
                self.ip_bans.insert(ip, b);
            }
        }
        // Forget bans that ran out long ago, so the tables stay small.
        self.peer_bans.retain(|_, b| b.until + MAX_BAN > now);
        self.ip_bans.retain(|_, b| b.until + MAX_BAN > now);
    }

    /// Whether `peer` is banned now.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.peer_bans.get(peer).is_some_and(|b| b.until > Instant::now())
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), ConnectionDenied> {
        if self.ip_bans.get(&ip).is_some_and(|b| b.until > Instant::now()) {
            return Err(ConnectionDenied::new(Refused(format!("{ip} is banned for a while"))));
        }
        let n = self.per_ip.get(&ip).copied().unwrap_or(0);
        if n >= self.config.max_per_ip {
            return Err(ConnectionDenied::new(Refused(format!("{ip} already holds {n} connections"))));
        }
        Ok(())
    }

    fn release(&mut self, id: ConnectionId) {
        if let Some(ip) = self.ip_of.remove(&id) {
            if let Some(n) = self.per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_ip.remove(&ip);
                }
            }
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        if let Some(ip) = ip_of(remote) {
            self.check_ip(ip)?;
            *self.per_ip.entry(ip).or_insert(0) += 1;
            self.ip_of.insert(id, ip);
        }
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        _local: &Multiaddr,
        _remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if self.is_banned(&peer) {
            // The swarm reports the refusal as a listen failure, which releases the count.
            return Err(ConnectionDenied::new(Refused(format!("peer {peer} is banned for a while"))));
        }
        let _ = id;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => self.release(connection_id),
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => self.release(connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, _peer: PeerId, _id: ConnectionId, event: THandlerOutEvent<Self>) {
        libp2p::core::util::unreachable(event)
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: &str) -> Multiaddr {
        format!("/ip4/{ip}/tcp/1").parse().unwrap()
    }

    #[test]
    fn counts_per_address() {
        let mut b = Behaviour::new(AdmissionConfig { max_per_ip: 2, ..AdmissionConfig::default() });
        let (a1, a2, a3) = (ConnectionId::new_unchecked(1), ConnectionId::new_unchecked(2), ConnectionId::new_unchecked(3));
        let local = addr("127.0.0.1");
        assert!(b.handle_pending_inbound_connection(a1, &local, &addr("10.0.0.1")).is_ok());
        assert!(b.handle_pending_inbound_connection(a2, &local, &addr("10.0.0.1")).is_ok());
        assert!(b.handle_pending_inbound_connection(a3, &local, &addr("10.0.0.1")).is_err(), "a third is refused");
        assert!(b.handle_pending_inbound_connection(a3, &local, &addr("10.0.0.2")).is_ok(), "another host is not");
        b.release(a1);
        assert!(b.handle_pending_inbound_connection(ConnectionId::new_unchecked(4), &local, &addr("10.0.0.1")).is_ok());
    }

    #[test]
    fn bans_peers_at_once_and_addresses_after_strikes() {
        let mut b = Behaviour::new(AdmissionConfig { strikes_per_ip: 3, ..AdmissionConfig::default() });
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let peer = PeerId::random();
        b.punish(peer, Some(ip));
        assert!(b.is_banned(&peer));
        assert!(b.check_ip(ip).is_ok(), "one strike does not ban an address");
        b.punish(PeerId::random(), Some(ip));
        b.punish(PeerId::random(), Some(ip));
        assert!(b.check_ip(ip).is_err(), "the third strike does");
        assert!(!b.is_banned(&PeerId::random()));
    }
}
