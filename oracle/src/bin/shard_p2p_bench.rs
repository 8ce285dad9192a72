//! `shard-p2p-bench`: the cost of one draft job on the wire, printed as a table.
//!
//! * Round-trip time of a `/shard/draft/2` job over loopback, TCP against webrtc-direct: an
//!   Oracle-side swarm sends jobs one after another to a Scout-side swarm that answers at once
//!   with 8 tokens (no model, so only the transport and codec are timed).
//! * Bytes per job with and without context deltas, for sequences that grow by a few tokens
//!   per job as they do under speculative decoding.

use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::Transport;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, StreamProtocol, Swarm};
use shard_shared::wire::{self, Context, DraftJob, DraftOutcome, DraftReply, ModelRef, WireSampling};
use shard_shared::wire_codec::{Checked, FrameCodec};

type DraftBehaviour = request_response::Behaviour<FrameCodec<DraftJob, DraftReply>>;

#[derive(Parser)]
#[command(about = "Round trip and size of Shard's draft jobs over libp2p")]
struct Args {
    /// Jobs timed per transport.
    #[arg(long, default_value_t = 300)]
    jobs: usize,
    /// Prompt tokens before the first job of a sequence.
    #[arg(long, default_value_t = 64)]
    prompt: usize,
    /// Tokens added to the context between jobs.
    #[arg(long, default_value_t = 5)]
    step: usize,
}

fn swarm(webrtc: bool) -> anyhow::Result<Swarm<DraftBehaviour>> {
    let behaviour = |_: &libp2p::identity::Keypair| {
        DraftBehaviour::new(
            [(StreamProtocol::new(wire::DRAFT_PROTOCOL), ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
        )
    };
    let config = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(60));
    Ok(if webrtc {
        libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_other_transport(|key| {
                let cert = libp2p_webrtc::tokio::Certificate::generate(&mut rand08::thread_rng())
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    libp2p_webrtc::tokio::Transport::new(key.clone(), cert).map(|(p, c), _| (p, StreamMuxerBox::new(c))),
                )
            })?
            .with_behaviour(behaviour)?
            .with_swarm_config(config)
            .build()
    } else {
        libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
            .with_behaviour(behaviour)?
            .with_swarm_config(config)
            .build()
    })
}

fn job(job_id: u64, context: Context) -> DraftJob {
    DraftJob {
        job_id,
        sequence: 1,
        context,
        k: 8,
        sampling: WireSampling { temperature: 0.0, top_k: 0, top_p: 1.0 },
        seed: 0,
        model: ModelRef { id: "shard-draft-llama-f16".into(), sha256: [7; 32] },
    }
}

/// Median and 90th percentile round trip of `n` jobs, oracle → scout → oracle.
async fn round_trips(webrtc: bool, n: usize, prompt: usize) -> anyhow::Result<(Duration, Duration)> {
    let mut oracle = swarm(webrtc)?;
    let mut scout = swarm(webrtc)?;
    let listen: Multiaddr =
        if webrtc { "/ip4/127.0.0.1/udp/0/webrtc-direct".parse()? } else { "/ip4/127.0.0.1/tcp/0".parse()? };
    oracle.listen_on(listen)?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = oracle.select_next_some().await {
            break address.with(Protocol::P2p(*oracle.local_peer_id()));
        }
    };
    if webrtc {
        // The native WebRTC transport dials from the UDP socket of one of its listeners.
        scout.listen_on("/ip4/127.0.0.1/udp/0/webrtc-direct".parse()?)?;
        while !matches!(scout.select_next_some().await, SwarmEvent::NewListenAddr { .. }) {}
    }
    tracing::debug!(%addr, "dialling");
    scout.dial(addr)?;
    // The Scout answers every job at once, from its own task.
    tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Request { request, channel, .. },
                ..
            }) = scout.select_next_some().await
            {
                let Checked::Valid(request) = request else { continue };
                let reply =
                    DraftReply { job_id: request.job_id, outcome: DraftOutcome::Drafted { tokens: vec![42; 8], probs: None } };
                let _ = scout.behaviour_mut().send_response(channel, reply);
            }
        }
    });
    let peer = loop {
        if let SwarmEvent::ConnectionEstablished { peer_id, .. } = oracle.select_next_some().await {
            break peer_id;
        }
    };
    tracing::debug!(%peer, "connected");
    let context: Vec<u32> = (0..prompt as u32).collect();
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let started = Instant::now();
        oracle.behaviour_mut().send_request(&peer, Checked::Valid(job(i as u64, Context::Full(context.clone()))));
        loop {
            match oracle.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { .. },
                    ..
                }) => break,
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                    anyhow::bail!("job failed: {error}")
                }
                _ => {}
            }
        }
        if i >= 20 {
            times.push(started.elapsed()); // after 20 warm-up jobs
        }
    }
    times.sort();
    Ok((times[times.len() / 2], times[times.len() * 9 / 10]))
}

/// Mean bytes per job over a sequence of `n` jobs, full contexts against deltas.
fn bytes_per_job(n: usize, prompt: usize, step: usize) -> (f64, f64) {
    let (mut full, mut delta) = (0usize, 0usize);
    for i in 0..n {
        let len = prompt + i * step;
        let context: Vec<u32> = (0..len as u32).map(|t| t * 7 % 6144).collect();
        full += wire::encode(&job(i as u64, Context::Full(context.clone()))).len();
        let c = if i == 0 {
            Context::Full(context)
        } else {
            let keep = len - step;
            Context::Delta { base_job: i as u64 - 1, keep: keep as u32, append: context[keep..].to_vec() }
        };
        delta += wire::encode(&job(i as u64, c)).len();
    }
    (full as f64 / n as f64, delta as f64 / n as f64)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_env("SHARD_LOG")).init();
    let args = Args::parse();
    let (tcp50, tcp90) = round_trips(false, args.jobs, args.prompt).await?;
    let (rtc50, rtc90) = round_trips(true, args.jobs, args.prompt).await?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("Draft job round trip over loopback ({} jobs each, {}-token context, 8 tokens back)\n", args.jobs, args.prompt);
    println!("| transport | median ms | p90 ms |\n|---|---|---|");
    println!("| tcp (noise, yamux) | {:.3} | {:.3} |", ms(tcp50), ms(tcp90));
    println!("| webrtc-direct | {:.3} | {:.3} |", ms(rtc50), ms(rtc90));
    println!("\nwebrtc-direct / tcp median: {:.2}x", ms(rtc50) / ms(tcp50));
    let (full, delta) = bytes_per_job(100, args.prompt, args.step);
    println!(
        "\nBytes per job over a sequence of 100 jobs ({}-token prompt, +{} tokens per job): full {:.0}, delta {:.0} ({:.1}x smaller)",
        args.prompt,
        args.step,
        full,
        delta,
        full / delta
    );
    Ok(())
}
