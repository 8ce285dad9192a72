//! The Scout's libp2p client: it dials the Oracle, introduces itself (`/shard/hello/1`),
//! answers draft jobs (`/shard/draft/2`) and follows the Oracle's load on gossipsub. When the
//! connection drops it redials with exponential backoff, rotating through the Oracle's
//! addresses (in a browser: webrtc-direct first, then WebSocket).
//!
//! Natively it runs over TCP or WebSocket on tokio; in wasm over `webrtc-websys` or
//! `websocket-websys`. Everything else is the same code.

use std::collections::VecDeque;
use std::time::Duration;

use futures::future::{Fuse, FusedFuture, LocalBoxFuture};
use futures::{FutureExt, StreamExt};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{gossipsub, identify, identity, ping, Multiaddr, PeerId, StreamProtocol, Swarm};

use shard_shared::wire::{self, DraftJob, DraftReply, Hello, LoadAnnouncement, Welcome};
use shard_shared::wire_codec::{Checked, FrameCodec};

use crate::job::{JobRunner, JobStats};

/// How a Scout reaches its Oracle and presents itself.
#[derive(Debug, Clone)]
pub struct ScoutConfig {
    /// The Oracle's addresses, each ending in `/p2p/<peer id>`, in order of preference.
    pub oracle: Vec<Multiaddr>,
    /// What the Scout drafts on, as the Oracle's `/api/swarm` shows it: "gpu (wgpu)",
    /// "cpu (flex)" natively, or the browser's own names.
    pub backend: String,
    pub agent: String,
    /// First and longest wait before redialling.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// The Scout's key (its peer id, which its credits and standing belong to); a fresh one
    /// for each run when `None`.
    pub identity: Option<identity::Keypair>,
}

impl ScoutConfig {
    pub fn new(oracle: Vec<Multiaddr>, backend: String, agent: String) -> Self {
        Self {
            oracle,
            backend,
            agent,
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
            identity: None,
        }
    }

    /// The same, as the Scout whose key is `key`.
    pub fn with_identity(mut self, key: identity::Keypair) -> Self {
        self.identity = Some(key);
        self
    }
}

/// What the client tells its host (the CLI's log, the browser's dashboard).
#[derive(Debug, Clone)]
pub enum ScoutEvent {
    /// The swarm is up with this peer id (how the Oracle's `/api/swarm` names this Scout).
    Started {
        peer_id: PeerId,
    },
    Dialling {
        addr: Multiaddr,
    },
    Connected {
        addr: Multiaddr,
    },
    Welcomed,
    Refused {
        reason: String,
    },
    Disconnected {
        retry_in: Duration,
    },
    /// A job answered; the running totals.
    Drafted {
        stats: JobStats,
    },
    Load(LoadAnnouncement),
}

#[derive(NetworkBehaviour)]
pub struct ScoutBehaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    gossipsub: gossipsub::Behaviour,
    draft: request_response::Behaviour<FrameCodec<DraftJob, DraftReply>>,
    hello: request_response::Behaviour<FrameCodec<Hello, Welcome>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no Oracle address given")]
    NoAddress,
    #[error("Oracle address {0} does not end in /p2p/<peer id>")]
    NoPeerId(String),
    #[error("building the libp2p swarm: {0}")]
    Build(String),
}

fn behaviour(key: &identity::Keypair, agent: &str) -> ScoutBehaviour {
    // Messages are validated before they are relayed: only the Oracle's are accepted.
    let gossip_config = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_secs(1))
        .max_transmit_size(wire::MAX_FRAME_BYTES)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .build()
        .expect("valid gossipsub config");
    let rr = request_response::Config::default().with_request_timeout(Duration::from_secs(10));
    ScoutBehaviour {
        identify: identify::Behaviour::new(
            identify::Config::new("/shard/id/1".into(), key.public()).with_agent_version(agent.to_string()),
        ),
        ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(10))),
        gossipsub: gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossip_config)
            .expect("gossipsub with a signing key"),
        draft: request_response::Behaviour::new(
            [(StreamProtocol::new(wire::DRAFT_PROTOCOL), ProtocolSupport::Inbound)],
            rr.clone(),
        ),
        hello: request_response::Behaviour::new([(StreamProtocol::new(wire::HELLO_PROTOCOL), ProtocolSupport::Outbound)], rr),
    }
}

/// TCP and WebSocket on tokio.
#[cfg(not(target_arch = "wasm32"))]
async fn new_swarm(agent: &str, key: identity::Keypair) -> Result<Swarm<ScoutBehaviour>, ClientError> {
    use libp2p::{noise, tcp, yamux};
    let err = |e: &dyn std::fmt::Display| ClientError::Build(e.to_string());
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| err(&e))?
        .with_dns()
        .map_err(|e| err(&e))?
        .with_websocket(noise::Config::new, yamux::Config::default)
        .await
        .map_err(|e| err(&e))?
        .with_behaviour(|key| behaviour(key, agent))
        .map_err(|e| err(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build())
}

/// webrtc-direct and WebSocket in the browser.
#[cfg(target_arch = "wasm32")]
async fn new_swarm(agent: &str, key: identity::Keypair) -> Result<Swarm<ScoutBehaviour>, ClientError> {
    use libp2p::core::muxing::StreamMuxerBox;
    use libp2p::core::upgrade::Version;
    use libp2p::core::Transport;
    use libp2p::{noise, yamux};
    let err = |e: &dyn std::fmt::Display| ClientError::Build(e.to_string());
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_wasm_bindgen()
        .with_other_transport(|key| {
            libp2p_webrtc_websys::Transport::new(libp2p_webrtc_websys::Config::new(key))
                .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)))
        })
        .map_err(|e| err(&e))?
        .with_other_transport(|key| {
            let noise = noise::Config::new(key).map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                libp2p_websocket_websys::Transport::default()
                    .upgrade(Version::V1)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default())
                    .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn))),
            )
        })
        .map_err(|e| err(&e))?
        .with_behaviour(|key| behaviour(key, agent))
        .map_err(|e| err(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build())
}

fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| if let Protocol::P2p(id) = p { Some(id) } else { None })
}

type Running = LocalBoxFuture<'static, (JobRunner, DraftReply, ResponseChannel<DraftReply>)>;

/// A millisecond clock that works natively and in browsers.
pub fn now_ms() -> f64 {
    #[cfg(target_arch = "wasm32")]
    {
        js_sys::Date::now()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::OnceLock;
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64() * 1e3
    }
}

/// Runs the Scout until `stop` resolves (never, for a long-lived Scout).
pub async fn run(
    config: ScoutConfig,
    runner: JobRunner,
    mut on_event: impl FnMut(ScoutEvent),
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ClientError> {
    if config.oracle.is_empty() {
        return Err(ClientError::NoAddress);
    }
    let oracle = peer_of(&config.oracle[0]).ok_or_else(|| ClientError::NoPeerId(config.oracle[0].to_string()))?;
    let key = config.identity.clone().unwrap_or_else(identity::Keypair::generate_ed25519);
    let mut swarm = new_swarm(&config.agent, key).await?;
    on_event(ScoutEvent::Started { peer_id: *swarm.local_peer_id() });
    for topic in [wire::LOAD_TOPIC, wire::TOPOLOGY_TOPIC] {
        let _ = swarm.behaviour_mut().gossipsub.subscribe(&gossipsub::IdentTopic::new(topic));
    }
    let hello = Hello { model: runner.model().clone(), backend: config.backend.clone(), agent: config.agent.clone() };

    let mut runner = Some(runner);
    let mut running: Fuse<Running> = Fuse::terminated();
    let mut waiting: VecDeque<(DraftJob, ResponseChannel<DraftReply>)> = VecDeque::new();
    let mut attempt = 0usize;
    let mut backoff = config.backoff_min;
    let mut redial = futures_timer::Delay::new(Duration::ZERO).fuse();
    let mut connected = false;
    let stop = stop.fuse();
    futures::pin_mut!(stop);

    loop {
        // Start the next job when the model is free.
        if running.is_terminated() {
            if let Some((job, channel)) = waiting.pop_front() {
                let mut r = runner.take().expect("the runner is home when nothing runs");
                let job: Running = async move {
                    let reply = r.run(job, now_ms).await;
                    (r, reply, channel)
                }
                .boxed_local();
                running = job.fuse();
            }
        }
        futures::select! {
            _ = stop => return Ok(()),
            _ = redial => {
                if !connected {
                    let addr = config.oracle[attempt % config.oracle.len()].clone();
                    attempt += 1;
                    on_event(ScoutEvent::Dialling { addr: addr.clone() });
                    if swarm.dial(addr).is_err() {
                        redial = futures_timer::Delay::new(backoff).fuse();
                        backoff = (backoff * 2).min(config.backoff_max);
                    }
                }
            }
            (r, reply, channel) = running => {
                runner = Some(r);
                let _ = swarm.behaviour_mut().draft.send_response(channel, reply);
                on_event(ScoutEvent::Drafted { stats: runner.as_ref().expect("just returned").stats.clone() });
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } if peer_id == oracle => {
                    if !connected {
                        connected = true;
                        on_event(ScoutEvent::Connected { addr: endpoint.get_remote_address().clone() });
                        swarm.behaviour_mut().hello.send_request(&oracle, Checked::Valid(hello.clone()));
                    }
                }
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } if peer_id == oracle => {
                    connected = false;
                    waiting.clear();
                    on_event(ScoutEvent::Disconnected { retry_in: backoff });
                    redial = futures_timer::Delay::new(backoff).fuse();
                    backoff = (backoff * 2).min(config.backoff_max);
                }
                SwarmEvent::OutgoingConnectionError { peer_id: Some(p), .. } if p == oracle && !connected => {
                    on_event(ScoutEvent::Disconnected { retry_in: backoff });
                    redial = futures_timer::Delay::new(backoff).fuse();
                    backoff = (backoff * 2).min(config.backoff_max);
                }
                SwarmEvent::Behaviour(ScoutBehaviourEvent::Hello(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. }, ..
                })) => match response {
                    Welcome::Accepted { .. } => {
                        backoff = config.backoff_min;
                        on_event(ScoutEvent::Welcomed);
                    }
                    Welcome::Refused { reason } => on_event(ScoutEvent::Refused { reason }),
                },
                SwarmEvent::Behaviour(ScoutBehaviourEvent::Draft(request_response::Event::Message {
                    peer, message: request_response::Message::Request { request, channel, .. }, ..
                })) => {
                    // Only the Oracle hands out work; a bounded queue keeps a flood harmless.
                    match request {
                        Checked::Valid(job) if peer == oracle && waiting.len() < 64 => waiting.push_back((job, channel)),
                        _ => {}
                    }
                }
                SwarmEvent::Behaviour(ScoutBehaviourEvent::Gossipsub(gossipsub::Event::Message {
                    propagation_source, message_id, message,
                })) => {
                    // Load and topology come from the Oracle alone; anyone else's is forged.
                    let from_oracle = message.source == Some(oracle);
                    let mut accepted = false;
                    if from_oracle && message.topic.as_str() == wire::LOAD_TOPIC {
                        if let Ok(load) = wire::decode::<LoadAnnouncement>(&message.data) {
                            accepted = true;
                            on_event(ScoutEvent::Load(load));
                        }
                    } else if from_oracle && message.topic.as_str() == wire::TOPOLOGY_TOPIC {
                        accepted = wire::decode::<wire::Topology>(&message.data).is_ok();
                    }
                    let verdict = if accepted { gossipsub::MessageAcceptance::Accept } else { gossipsub::MessageAcceptance::Reject };
                    let _ = swarm.behaviour_mut().gossipsub.report_message_validation_result(&message_id, &propagation_source, verdict);
                }
                _ => {}
            },
        }
    }
}
