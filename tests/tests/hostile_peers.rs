//! Hostile peers: a libp2p peer that speaks Shard's protocols with bad bytes (garbage, a
//! frame over the size bound, a wrong version) or out of turn (sending the Oracle a draft
//! job) is disconnected and logged, while the Oracle keeps serving its API and its Scouts.

use std::io;
use std::time::Duration;

use async_trait::async_trait;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, Codec, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, StreamProtocol};
use serde_json::json;
use shard_shared::wire::{self, Context, DraftJob, ModelRef, WireSampling};
use shard_tests::{default_pair, get_json, post_json, Oracle, Scout};

/// Writes request bytes verbatim; reads whatever comes back (bounded).
#[derive(Clone, Default)]
struct RawCodec;

#[async_trait]
impl Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>> {
        let mut v = vec![];
        io.take(1 << 20).read_to_end(&mut v).await?;
        Ok(v)
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>> {
        let mut v = vec![];
        io.take(1 << 20).read_to_end(&mut v).await?;
        Ok(v)
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&req).await?;
        io.close().await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&r).await?;
        io.close().await
    }
}

/// A length-prefixed stream body, as the real codec frames it.
fn framed(frame: &[u8]) -> Vec<u8> {
    let mut v = (frame.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(frame);
    v
}

/// Dials the Oracle, sends `body` on `protocol`, and reports whether the Oracle closed the
/// connection within a few seconds.
async fn send_and_expect_disconnect(oracle: Multiaddr, protocol: &'static str, body: Vec<u8>) -> bool {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::<RawCodec>::new(
                [(StreamProtocol::new(protocol), ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
            )
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build();
    swarm.dial(oracle).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let mut sent = false;
    loop {
        let Ok(event) = tokio::time::timeout_at(deadline, swarm.select_next_some()).await else { return false };
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, .. } if !sent => {
                swarm.behaviour_mut().send_request(&peer_id, body.clone());
                sent = true;
            }
            SwarmEvent::ConnectionClosed { num_established: 0, .. } => return true,
            _ => {}
        }
    }
}

fn job_frame() -> Vec<u8> {
    wire::encode(&DraftJob {
        job_id: 1,
        sequence: 1,
        context: Context::Full(vec![1, 2, 3]),
        k: 4,
        sampling: WireSampling { temperature: 0.0, top_k: 0, top_p: 1.0 },
        seed: 0,
        model: ModelRef { id: "x".into(), sha256: [0; 32] },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_out_of_order_peers_are_dropped() {
    let (target, _) = default_pair();
    let oracle = Oracle::start(&target, &[]);
    let url = oracle.url.clone();
    let (addrs, scout) = tokio::task::spawn_blocking(move || {
        let client = reqwest::blocking::Client::new();
        let addrs = get_json(&client, &format!("{url}/api/p2p/addrs"));
        let tcp: Vec<String> = addrs["tcp"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
        let scout = Scout::start(&tcp);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while get_json(&client, &format!("{url}/api/swarm"))["scouts"].as_array().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the honest Scout did not join");
            std::thread::sleep(Duration::from_millis(100));
        }
        (tcp, scout)
    })
    .await
    .unwrap();
    let addr: Multiaddr = addrs[0].parse().unwrap();

    let mut bad_version = job_frame();
    bad_version[0] = 99;
    let cases: Vec<(&str, &'static str, Vec<u8>)> = vec![
        ("garbage hello", wire::HELLO_PROTOCOL, framed(b"\x01\x00this is not postcard at all \xff\xff\xff")),
        ("oversized frame", wire::HELLO_PROTOCOL, ((wire::MAX_FRAME_BYTES as u32) * 4).to_le_bytes().to_vec()),
        ("wrong version", wire::HELLO_PROTOCOL, framed(&bad_version)),
        ("a draft job sent to the Oracle", wire::DRAFT_PROTOCOL, framed(&job_frame())),
    ];
    for (name, protocol, body) in cases {
        let dropped = send_and_expect_disconnect(addr.clone(), protocol, body).await;
        assert!(dropped, "{name}: the Oracle kept the peer; its log:\n{}", oracle.log.lock().unwrap().join("\n"));
        eprintln!("{name}: dropped");
    }

    let url = oracle.url.clone();
    let log = oracle.log.clone();
    tokio::task::spawn_blocking(move || {
        let client = reqwest::blocking::Client::new();
        let swarm = get_json(&client, &format!("{url}/api/swarm"));
        assert!(swarm["oracle"]["dropped_peers"].as_u64().unwrap() >= 4, "{swarm}");
        // The honest Scout is still there, and the API still answers.
        assert_eq!(swarm["scouts"].as_array().unwrap().len(), 1, "{swarm}");
        let r = post_json(
            &client,
            &format!("{url}/v1/completions"),
            json!({"prompt": "In the beginning", "max_tokens": 8, "temperature": 0}),
        );
        assert_eq!(r["usage"]["completion_tokens"], 8);
        let log = log.lock().unwrap().join("\n");
        assert!(log.contains("dropping peer"), "violations are logged: {log}");
    })
    .await
    .unwrap();
    drop(scout);
}
