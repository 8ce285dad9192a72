//! Who may speak on the Oracle's libp2p node: only the Oracle authors gossip (forged load is
//! neither relayed by the Oracle nor believed by Scouts), one address cannot take every
//! connection, and a peer dropped for a violation cannot come straight back.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, identity, noise, tcp, yamux, Multiaddr, PeerId, Swarm};
use shard_shared::wire::{self, LoadAnnouncement};
use shard_tests::{default_pair, get_json, Oracle, Scout};

fn gossip_swarm(key: identity::Keypair) -> Swarm<gossipsub::Behaviour> {
    libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|key| {
            let config = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(300))
                .max_transmit_size(wire::MAX_FRAME_BYTES)
                .build()
                .unwrap();
            gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), config).unwrap()
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

fn forged_load() -> Vec<u8> {
    wire::encode(&LoadAnnouncement { queue_depth: 999, queue_capacity: 1, tokens_per_s: 0.0, scouts: 0, draft_model: None })
}

fn oracle_tcp(oracle: &Oracle) -> (Multiaddr, PeerId) {
    let addrs = get_json(&reqwest::blocking::Client::new(), &oracle.endpoint("/api/p2p/addrs"));
    let addr: Multiaddr = addrs["tcp"][0].as_str().unwrap().parse().unwrap();
    (addr, addrs["peer_id"].as_str().unwrap().parse().unwrap())
}

#[test]
fn gossip_not_written_by_the_oracle_is_not_relayed() {
    let oracle = Oracle::start(&default_pair().0, &[]);
    let (addr, oracle_id) = oracle_tcp(&oracle);
    let topic = gossipsub::IdentTopic::new(wire::LOAD_TOPIC);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (from_oracle, forged_seen) = rt.block_on(async {
        let mut observer = gossip_swarm(identity::Keypair::generate_ed25519());
        let mut forger = gossip_swarm(identity::Keypair::generate_ed25519());
        let forger_id = *forger.local_peer_id();
        for s in [&mut observer, &mut forger] {
            s.behaviour_mut().subscribe(&topic).unwrap();
            s.dial(addr.clone()).unwrap();
        }
        let (mut from_oracle, mut forged_seen) = (0, 0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
        let mut publish = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = publish.tick() => { let _ = forger.behaviour_mut().publish(topic.clone(), forged_load()); }
                _ = forger.select_next_some() => {}
                ev = observer.select_next_some() => {
                    if let SwarmEvent::Behaviour(gossipsub::Event::Message { message, .. }) = ev {
                        if message.source == Some(oracle_id) { from_oracle += 1 }
                        if message.source == Some(forger_id) { forged_seen += 1 }
                    }
                }
            }
        }
        (from_oracle, forged_seen)
    });
    eprintln!("observer: {from_oracle} announcements from the Oracle, {forged_seen} forged ones");
    assert!(from_oracle > 0, "the observer hears the Oracle's own load");
    assert_eq!(forged_seen, 0, "the Oracle relayed forged gossip");
    let swarm = get_json(&reqwest::blocking::Client::new(), &oracle.endpoint("/api/swarm"));
    assert!(swarm["oracle"]["dropped_peers"].as_u64().unwrap() >= 1, "the forger is dropped: {swarm}");
    assert!(oracle.log.lock().unwrap().iter().any(|l| l.contains("gossip not written by the Oracle")));
}

/// A stand-in Oracle that relays whatever it hears, so that forged gossip reaches a real Scout:
/// the Scout must believe only load written by the Oracle it dialled.
#[test]
fn scouts_believe_only_the_oracles_own_gossip() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter(); // the swarm's listener needs the runtime's reactor
    let oracle_key = identity::Keypair::generate_ed25519();
    let oracle_id = oracle_key.public().to_peer_id();
    let topic = gossipsub::IdentTopic::new(wire::LOAD_TOPIC);
    let mut fake = gossip_swarm(oracle_key);
    let listen: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
    fake.listen_on(listen).unwrap();
    fake.behaviour_mut().subscribe(&topic).unwrap();
    let addr = rt.block_on(async {
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = fake.select_next_some().await {
                return address.with(libp2p::multiaddr::Protocol::P2p(oracle_id));
            }
        }
    });
    // The real Scout client, on a thread of its own (its future is not Send).
    let loads: Arc<Mutex<Vec<u32>>> = Arc::default();
    let (loads2, scout_addr) = (loads.clone(), addr.clone());
    std::thread::spawn(move || {
        let bytes = std::fs::read(default_pair().1).unwrap();
        let model = shard_scout::DraftModel::from_gguf(&bytes, &shard_scout::flex_device()).unwrap();
        let model_ref = wire::ModelRef { id: "draft".into(), sha256: [0; 32] };
        let runner = shard_scout::job::JobRunner::new(shard_scout::Drafter::new(model), model_ref);
        let config = shard_scout::client::ScoutConfig::new(vec![scout_addr], "cpu (flex)".into(), "test".into());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let on_event = move |ev| {
            if let shard_scout::client::ScoutEvent::Load(l) = ev {
                loads2.lock().unwrap().push(l.queue_depth);
            }
        };
        let _ = rt.block_on(async move {
            shard_scout::client::run(config, runner, on_event, tokio::time::sleep(Duration::from_secs(12))).await
        });
    });
    rt.block_on(async {
        let mut forger = gossip_swarm(identity::Keypair::generate_ed25519());
        forger.behaviour_mut().subscribe(&topic).unwrap();
        forger.dial(addr).unwrap();
        let real = wire::encode(&LoadAnnouncement {
            queue_depth: 1,
            queue_capacity: 8,
            tokens_per_s: 5.0,
            scouts: 1,
            draft_model: None,
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut publish = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = publish.tick() => {
                    let _ = fake.behaviour_mut().publish(topic.clone(), real.clone());
                    let _ = forger.behaviour_mut().publish(topic.clone(), forged_load());
                }
                _ = forger.select_next_some() => {}
                _ = fake.select_next_some() => {}
            }
        }
    });
    let loads = loads.lock().unwrap().clone();
    eprintln!("the Scout believed {} load announcements: {:?}", loads.len(), &loads[..loads.len().min(8)]);
    assert!(!loads.is_empty(), "the Scout hears its Oracle's load");
    assert!(loads.iter().all(|&d| d == 1), "the Scout believed forged load: {loads:?}");
}

/// Whether the node closes a raw TCP connection at once (refused) or keeps it open, waiting
/// for the libp2p handshake (accepted).
fn closed_at_once(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(ip.parse().unwrap(), 0).into()).unwrap();
    socket.connect(&to.into()).unwrap();
    socket.into()
}

#[test]
fn one_address_cannot_take_every_connection() {
    let oracle = Oracle::start(&default_pair().0, &["--p2p-max-conns-per-ip", "3"]);
    let (addr, _) = oracle_tcp(&oracle);
    let port = addr.iter().find_map(|p| if let libp2p::multiaddr::Protocol::Tcp(p) = p { Some(p) } else { None }).unwrap();
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // A host at 127.0.0.2 opens connections and never finishes a handshake.
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect_from("127.0.0.2", to)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = connect_from("127.0.0.2", to);
    assert!(closed_at_once(&mut extra), "a fourth connection from one address was kept");
    assert!(!closed_at_once(&mut held[0]), "the first three wait for their handshake");
    // Another host's Scout still joins while 127.0.0.2 holds its share.
    let scout = Scout::start(&[addr.to_string()]);
    let client = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while get_json(&client, &oracle.endpoint("/api/swarm"))["scouts"].as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the Scout could not join: {}", scout.log.lock().unwrap().join("\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(held);
}

#[test]
fn a_dropped_peer_cannot_come_straight_back() {
    let oracle = Oracle::start(&default_pair().0, &[]);
    let (addr, _) = oracle_tcp(&oracle);
    let key = identity::Keypair::generate_ed25519();
    let topic = gossipsub::IdentTopic::new(wire::LOAD_TOPIC);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Connects with `key`, optionally publishes forged gossip, and reports how long the
    // connection lived (capped at `watch`).
    let session = |key: identity::Keypair, misbehave: bool, watch: Duration| {
        let (addr, topic) = (addr.clone(), topic.clone());
        rt.block_on(async move {
            let mut s = gossip_swarm(key);
            s.behaviour_mut().subscribe(&topic).unwrap();
            s.dial(addr).unwrap();
            let start = tokio::time::Instant::now();
            let mut publish = tokio::time::interval(Duration::from_millis(200));
            let mut connected = None;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(start + watch) => return (connected.is_some(), watch),
                    _ = publish.tick(), if misbehave => { let _ = s.behaviour_mut().publish(topic.clone(), forged_load()); }
                    ev = s.select_next_some() => match ev {
                        SwarmEvent::ConnectionEstablished { .. } => connected = Some(tokio::time::Instant::now()),
                        SwarmEvent::ConnectionClosed { num_established: 0, .. } => {
                            return (connected.is_some(), connected.map_or(Duration::ZERO, |c| c.elapsed()));
                        }
                        SwarmEvent::OutgoingConnectionError { .. } => return (false, Duration::ZERO),
                        _ => {}
                    },
                }
            }
        })
    };
    let (_, first) = session(key.clone(), true, Duration::from_secs(8));
    assert!(first < Duration::from_secs(8), "the misbehaving peer was not dropped");
    // The same identity again, behaving: refused within moments.
    let (_, again) = session(key, false, Duration::from_secs(3));
    assert!(again < Duration::from_secs(2), "the banned peer kept a connection for {again:?}");
    // A new identity on the same host is not banned (one strike does not ban an address).
    let (connected, fresh) = session(identity::Keypair::generate_ed25519(), false, Duration::from_secs(3));
    assert!(connected && fresh >= Duration::from_secs(3), "a fresh peer was refused too ({fresh:?})");
    assert!(oracle.log.lock().unwrap().iter().any(|l| l.contains("dropping peer")));
}
