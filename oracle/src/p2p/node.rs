//! The Oracle's libp2p node: transports, behaviours, and the event loop that connects them to
//! the [`ScoutDrafts`] scheduler.
//!
//! Browsers reach it over webrtc-direct (its certhash address is at `GET /api/p2p/addrs`) or
//! WebSocket; native Scouts over TCP. Every stream speaks the bounded wire frames of
//! `shard_shared::wire`; a peer that sends a malformed, oversized or out-of-place message is
//! logged, disconnected and banned for a while ([`admission`]), and the node goes on serving
//! the others. Only the Oracle publishes on gossipsub: a message whose author is anyone else
//! is rejected (so never relayed) and its sender dropped; peer scoring is on.
//!
//! [`admission`]: super::admission

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::Transport;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    connection_limits, gossipsub, identify, identity, noise, ping, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm,
};
use tokio::sync::mpsc;

use shard_shared::wire::{self, DraftJob, DraftReply, Hello, LoadAnnouncement, Topology, Welcome};
use shard_shared::wire_codec::{Checked, FrameCodec};

use super::admission::{self, AdmissionConfig};
use super::scheduler::{Outgoing, ScoutDrafts};
use crate::queue::QueueStats;

/// Where and how the node listens.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub listen_ip: IpAddr,
    /// 0 picks a free port; `None` turns the transport off.
    pub tcp_port: Option<u16>,
    pub ws_port: Option<u16>,
    pub webrtc_port: Option<u16>,
    /// Most draft-protocol messages a peer may start per second before it is dropped.
    pub max_requests_per_sec: u32,
    /// Per-address connection limits and bans.
    pub admission: AdmissionConfig,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    admission: admission::Behaviour,
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    gossipsub: gossipsub::Behaviour,
    draft: request_response::Behaviour<FrameCodec<DraftJob, DraftReply>>,
    hello: request_response::Behaviour<FrameCodec<Hello, Welcome>>,
}

/// What the HTTP side can read about the node.
#[derive(Debug, Default)]
pub struct NodeInfo {
    pub peer_id: String,
    /// Listen addresses with `/p2p/<peer id>`, webrtc-direct ones with their certhash.
    pub addrs: Vec<String>,
    /// Connected peers: transport and when they came.
    pub peers: HashMap<String, PeerEntry>,
    /// Peers dropped for protocol violations.
    pub dropped_peers: u64,
    /// Tokens generated per second over the last announcement interval.
    pub tokens_per_s: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerEntry {
    pub transport: String,
    /// The address it connected from (for bans), not shown.
    #[serde(skip)]
    pub ip: Option<IpAddr>,
}

/// A running node.
pub struct Node {
    pub info: Arc<Mutex<NodeInfo>>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Identity(#[from] shard_shared::key_file::IdentityError),
    #[error("webrtc certificate {path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("building the libp2p swarm: {0}")]
    Build(String),
    #[error("listening on {addr}: {reason}")]
    Listen { addr: String, reason: String },
}

/// The webrtc-direct certificate, kept beside the key so the certhash survives restarts too.
fn load_or_create_certificate(path: &Path) -> Result<libp2p_webrtc::tokio::Certificate, NodeError> {
    let err = |reason: String| NodeError::Certificate { path: path.display().to_string(), reason };
    match std::fs::read_to_string(path) {
        Ok(pem) => libp2p_webrtc::tokio::Certificate::from_pem(&pem).map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let cert = libp2p_webrtc::tokio::Certificate::generate(&mut rand08::thread_rng()).map_err(|e| err(e.to_string()))?;
            std::fs::write(path, cert.serialize_pem()).map_err(|e| err(e.to_string()))?;
            Ok(cert)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

fn transport_of(addr: &Multiaddr) -> &'static str {
    let mut kind = "unknown";
    for p in addr.iter() {
        kind = match p {
            Protocol::Tcp(_) if kind == "unknown" => "tcp",
            Protocol::Ws(_) | Protocol::Wss(_) => "websocket",
            Protocol::WebRTCDirect => "webrtc-direct",
            Protocol::QuicV1 => "quic",
            _ => kind,
        };
    }
    kind
}

/// Starts the node: binds its transports and spawns its event loop on the tokio runtime.
pub async fn start(
    config: NodeConfig,
    key_path: &Path,
    scouts: Arc<ScoutDrafts>,
    outbox: mpsc::UnboundedReceiver<Outgoing>,
    queue: Arc<QueueStats>,
    queue_capacity: usize,
) -> Result<Node, NodeError> {
    let key = shard_shared::key_file::load_or_create(key_path)?;
    let cert = load_or_create_certificate(&key_path.with_extension("webrtc.pem"))?;
    let build = |e: &dyn std::fmt::Display| NodeError::Build(e.to_string());
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| build(&e))?
        .with_other_transport(|key| {
            libp2p_webrtc::tokio::Transport::new(key.clone(), cert).map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)))
        })
        .map_err(|e| build(&e))?
        .with_dns()
        .map_err(|e| build(&e))?
        .with_websocket(noise::Config::new, yamux::Config::default)
        .await
        .map_err(|e| build(&e))?
        .with_behaviour(|key| behaviour(key, config.admission.clone()))
        .map_err(|e| build(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();

    let ip = match config.listen_ip {
        IpAddr::V4(a) => Protocol::Ip4(a),
        IpAddr::V6(a) => Protocol::Ip6(a),
    };
    let base = Multiaddr::empty().with(ip);
    let mut listen = vec![];
    if let Some(p) = config.tcp_port {
        listen.push(base.clone().with(Protocol::Tcp(p)));
    }
    if let Some(p) = config.ws_port {
        listen.push(base.clone().with(Protocol::Tcp(p)).with(Protocol::Ws("/".into())));
    }
    if let Some(p) = config.webrtc_port {
        listen.push(base.clone().with(Protocol::Udp(p)).with(Protocol::WebRTCDirect));
    }
    for addr in listen {
        swarm.listen_on(addr.clone()).map_err(|e| NodeError::Listen { addr: addr.to_string(), reason: e.to_string() })?;
    }
    for topic in [wire::LOAD_TOPIC, wire::TOPOLOGY_TOPIC] {
        let _ = swarm.behaviour_mut().gossipsub.subscribe(&gossipsub::IdentTopic::new(topic));
    }

    let info = Arc::new(Mutex::new(NodeInfo { peer_id: swarm.local_peer_id().to_string(), ..NodeInfo::default() }));
    let mut event_loop = EventLoop {
        swarm,
        scouts,
        outbox,
        queue,
        queue_capacity,
        info: info.clone(),
        pending: HashMap::new(),
        rate: HashMap::new(),
        max_rate: config.max_requests_per_sec,
        tokens_seen: (Instant::now(), 0),
    };
    // Wait until every transport reports its address, so `/api/p2p/addrs` is complete.
    event_loop
        .await_listeners(
            config.tcp_port.is_some() as usize + config.ws_port.is_some() as usize + config.webrtc_port.is_some() as usize,
        )
        .await;
    tokio::spawn(event_loop.run());
    Ok(Node { info })
}

fn behaviour(key: &identity::Keypair, admission: AdmissionConfig) -> Behaviour {
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established_per_peer(Some(4))
        .with_max_established(Some(1024))
        .with_max_pending_incoming(Some(128));
    let gossip_config = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_secs(1))
        .max_transmit_size(wire::MAX_FRAME_BYTES)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .build()
        .expect("valid gossipsub config");
    let mut gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossip_config)
        .expect("gossipsub with a signing key");
    gossipsub.with_peer_score(peer_score_params(), gossipsub::PeerScoreThresholds::default()).expect("valid peer score params");
    let rr = request_response::Config::default().with_request_timeout(Duration::from_secs(10));
    Behaviour {
        admission: admission::Behaviour::new(admission),
        limits: connection_limits::Behaviour::new(limits),
        identify: identify::Behaviour::new(
            identify::Config::new("/shard/id/1".into(), key.public())
                .with_agent_version(format!("shard-oracle/{}", env!("CARGO_PKG_VERSION"))),
        ),
        ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(10))),
        gossipsub,
        // The Oracle only sends draft jobs; a peer that sends it one is out of order.
        draft: request_response::Behaviour::new([(StreamProtocol::new(wire::DRAFT_PROTOCOL), ProtocolSupport::Full)], rr.clone()),
        hello: request_response::Behaviour::new([(StreamProtocol::new(wire::HELLO_PROTOCOL), ProtocolSupport::Inbound)], rr),
    }
}

/// gossipsub's peer scoring, with invalid messages on Shard's topics weighing heavily: a peer
/// that forwards forged or malformed gossip is soon graylisted by every honest node.
fn peer_score_params() -> gossipsub::PeerScoreParams {
    let mut params = gossipsub::PeerScoreParams::default();
    for topic in [wire::LOAD_TOPIC, wire::TOPOLOGY_TOPIC] {
        let t = gossipsub::TopicScoreParams {
            topic_weight: 1.0,
            invalid_message_deliveries_weight: -100.0,
            invalid_message_deliveries_decay: 0.9,
            ..gossipsub::TopicScoreParams::default()
        };
        params.topics.insert(gossipsub::IdentTopic::new(topic).hash(), t);
    }
    params
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    scouts: Arc<ScoutDrafts>,
    outbox: mpsc::UnboundedReceiver<Outgoing>,
    queue: Arc<QueueStats>,
    queue_capacity: usize,
    info: Arc<Mutex<NodeInfo>>,
    /// Draft requests in flight: which peer and job they carry.
    pending: HashMap<OutboundRequestId, (PeerId, u64)>,
    /// Inbound requests per peer in the current second.
    rate: HashMap<PeerId, (Instant, u32)>,
    max_rate: u32,
    /// When tokens were last counted, and the count then.
    tokens_seen: (Instant, u64),
}

impl EventLoop {
    async fn await_listeners(&mut self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut seen = std::collections::HashSet::new();
        while seen.len() < n {
            let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.swarm.next()).await else { break };
            if let SwarmEvent::NewListenAddr { listener_id, .. } = &event {
                seen.insert(*listener_id);
            }
            self.on_swarm_event(event);
        }
    }

    async fn run(mut self) {
        let mut announce = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(out) = self.outbox.recv() => {
                    if self.swarm.is_connected(&out.peer) {
                        let job_id = out.job.job_id;
                        let id = self.swarm.behaviour_mut().draft.send_request(&out.peer, Checked::Valid(out.job));
                        self.pending.insert(id, (out.peer, job_id));
                    } else {
                        self.scouts.on_failure(out.peer, out.job.job_id);
                    }
                }
                _ = announce.tick() => self.announce(),
            }
        }
    }

    /// Generated tokens per second since the last call.
    fn tokens_per_s(&mut self) -> f64 {
        let now = Instant::now();
        let total = self.queue.tokens_generated.load(std::sync::atomic::Ordering::Relaxed);
        let (then, before) = std::mem::replace(&mut self.tokens_seen, (now, total));
        let rate = (total - before) as f64 / now.duration_since(then).as_secs_f64().max(1e-3);
        self.info.lock().unwrap_or_else(|e| e.into_inner()).tokens_per_s = rate;
        rate
    }

    fn announce(&mut self) {
        let load = LoadAnnouncement {
            queue_depth: self.queue.depth.load(std::sync::atomic::Ordering::Relaxed) as u32,
            queue_capacity: self.queue_capacity as u32,
            tokens_per_s: self.tokens_per_s() as f32,
            scouts: self.scouts.snapshot().0.len() as u32,
            draft_model: Some(self.scouts.model().clone()),
        };
        let peers = {
            let info = self.info.lock().unwrap_or_else(|e| e.into_inner());
            info.peers
                .iter()
                .take(wire::MAX_PEERS)
                .map(|(id, p)| wire::PeerSummary {
                    peer_id: id.clone(),
                    // The map's keys are peer ids the swarm itself wrote; one that does not
                    // parse (it cannot happen) is simply not a Scout.
                    role: if id.parse().is_ok_and(|peer| self.scouts.is_scout(&peer)) { "scout" } else { "peer" }.into(),
                    transport: p.transport.clone(),
                })
                .collect()
        };
        let gs = &mut self.swarm.behaviour_mut().gossipsub;
        // Publishing fails harmlessly when no peer subscribes yet.
        let _ = gs.publish(gossipsub::IdentTopic::new(wire::LOAD_TOPIC), wire::encode(&load));
        let _ = gs.publish(gossipsub::IdentTopic::new(wire::TOPOLOGY_TOPIC), wire::encode(&Topology { peers }));
    }

    /// Logs, counts, drops and bans a misbehaving peer.
    fn drop_peer(&mut self, peer: PeerId, why: &str) {
        tracing::warn!(%peer, why, "dropping peer for a protocol violation");
        let ip = {
            let mut info = self.info.lock().unwrap_or_else(|e| e.into_inner());
            info.dropped_peers += 1;
            info.peers.get(&peer.to_string()).and_then(|p| p.ip)
        };
        self.swarm.behaviour_mut().admission.punish(peer, ip);
        self.scouts.remove_scout(&peer);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// Counts an inbound message; false (and the peer dropped) when it is over its rate.
    fn within_rate(&mut self, peer: PeerId) -> bool {
        let now = Instant::now();
        let entry = self.rate.entry(peer).or_insert((now, 0));
        if now.duration_since(entry.0) >= Duration::from_secs(1) {
            *entry = (now, 0);
        }
        entry.1 += 1;
        if entry.1 > self.max_rate {
            self.drop_peer(peer, "request rate over the limit");
            return false;
        }
        true
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = address.with(Protocol::P2p(*self.swarm.local_peer_id()));
                tracing::info!(address = %full, "p2p listening");
                self.info.lock().unwrap_or_else(|e| e.into_inner()).addrs.push(full.to_string());
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                let transport = transport_of(endpoint.get_remote_address()).to_string();
                let ip = admission::ip_of(endpoint.get_remote_address());
                tracing::debug!(%peer_id, %transport, "peer connected");
                self.info
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .peers
                    .insert(peer_id.to_string(), PeerEntry { transport, ip });
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                tracing::debug!(%peer_id, "peer gone");
                self.info.lock().unwrap_or_else(|e| e.into_inner()).peers.remove(&peer_id.to_string());
                self.scouts.remove_scout(&peer_id);
                self.rate.remove(&peer_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Hello(request_response::Event::Message { peer, message, .. })) => {
                if let request_response::Message::Request { request, channel, .. } = message {
                    if !self.within_rate(peer) {
                        return;
                    }
                    let request = match request {
                        Checked::Valid(r) => r,
                        Checked::Refused(why) => return self.drop_peer(peer, &format!("bad hello: {why}")),
                    };
                    let welcome = if &request.model == self.scouts.model() {
                        let transport = self
                            .info
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .peers
                            .get(&peer.to_string())
                            .map_or("unknown".to_string(), |p| p.transport.clone());
                        self.scouts.add_scout(peer, transport, request.backend, request.agent);
                        tracing::info!(%peer, "scout joined");
                        Welcome::Accepted { oracle_model: self.scouts.model().id.clone() }
                    } else {
                        Welcome::Refused { reason: format!("this Oracle drafts with {}", self.scouts.model().id) }
                    };
                    let _ = self.swarm.behaviour_mut().hello.send_response(channel, welcome);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Draft(event)) => self.on_draft_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Hello(request_response::Event::InboundFailure { peer, error, .. })) => {
                if error.is_violation() {
                    self.drop_peer(peer, &format!("bad hello: {error}"));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                // Only the Oracle speaks on these topics: a message by any other author is
                // forged (or at best noise) and is rejected, so it is never relayed.
                let from_us = message.source.as_ref() == Some(self.swarm.local_peer_id());
                let ok = from_us
                    && match message.topic.as_str() {
                        wire::LOAD_TOPIC => wire::decode::<LoadAnnouncement>(&message.data).is_ok(),
                        wire::TOPOLOGY_TOPIC => wire::decode::<Topology>(&message.data).is_ok(),
                        _ => false,
                    };
                let verdict = if ok { gossipsub::MessageAcceptance::Accept } else { gossipsub::MessageAcceptance::Reject };
                let _ = self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    verdict,
                );
                if !ok {
                    self.drop_peer(
                        propagation_source,
                        if from_us { "malformed gossip" } else { "gossip not written by the Oracle" },
                    );
                }
            }
            _ => {}
        }
    }

    fn on_draft_event(&mut self, event: request_response::Event<Checked<DraftJob>, DraftReply>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Response { request_id, response } => {
                    self.pending.remove(&request_id);
                    if self.within_rate(peer) {
                        self.scouts.on_reply(peer, response);
                    }
                }
                // Nobody sends the Oracle draft jobs.
                request_response::Message::Request { .. } => self.drop_peer(peer, "sent the Oracle a draft job"),
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                if let Some((_, job)) = self.pending.remove(&request_id) {
                    self.scouts.on_failure(peer, job);
                }
                if error.is_violation() {
                    self.drop_peer(peer, &format!("bad draft reply: {error}"));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                if error.is_violation() {
                    self.drop_peer(peer, &format!("bad inbound draft stream: {error}"));
                }
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}

/// Whether a failed stream is the peer's fault (bytes our codec refused), not a network hiccup.
trait Violation {
    fn is_violation(&self) -> bool;
}

impl Violation for request_response::InboundFailure {
    fn is_violation(&self) -> bool {
        matches!(self, request_response::InboundFailure::Io(e) if e.kind() == std::io::ErrorKind::InvalidData)
    }
}

impl Violation for request_response::OutboundFailure {
    fn is_violation(&self) -> bool {
        matches!(self, request_response::OutboundFailure::Io(e) if e.kind() == std::io::ErrorKind::InvalidData)
    }
}
