//! `shard-oracle`: load a BitNet GGUF model and serve it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use tracing_subscriber::EnvFilter;

use sha2::{Digest, Sha256};
use shard_oracle::api::{self, AppState, P2pState};
use shard_oracle::engine::kernels::{self, KernelChoice};
use shard_oracle::engine::{Engine, LoadOptions, WeightMemory};
use shard_oracle::p2p::node::{self, NodeConfig};
use shard_oracle::p2p::scheduler::{SchedulerConfig, ScoutDrafts};
use shard_oracle::queue::{InferenceQueue, SpecConfig};
use shard_oracle::spec::local::LocalDraft;
use shard_oracle::trust::agreement::AgreementRule;
use shard_oracle::trust::checker;
use shard_oracle::trust::store::TrustStore;
use shard_oracle::trust::{ScoutText, Trust, TrustConfig};
use shard_shared::wire::ModelRef;

/// The Shard Oracle: serves a ternary BitNet b1.58 model over an OpenAI-compatible API.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    long_about = None,
    after_help = "Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions, POST /tokenize, \
POST /detokenize, GET /health, GET /metrics, GET /api/swarm, GET /api/p2p/addrs, GET /api/scout, GET /api/queue[/{ticket}], GET /api/me, GET /api/trust/peers/{peer_id}, GET /api/trust/tickets?peer=ID, GET /models/{file}; the web app at /.\nLogging: SHARD_LOG=debug (or any tracing filter, e.g. shard_oracle=debug,tower_http=warn).\n\n\
Example: shard-oracle --model models/shard-target-bitnet-tq2_0.gguf --port 8080 --threads 4"
)]
struct Args {
    /// BitNet b1.58 GGUF model (arch `bitnet` or `bitnet-b1.58`; TQ2_0, TQ1_0 or I2_S weights).
    #[arg(short, long, env = "SHARD_MODEL", default_value = "models/shard-target-bitnet-tq2_0.gguf")]
    model: PathBuf,

    /// Address to listen on.
    #[arg(long, env = "SHARD_HOST", default_value = "127.0.0.1", global = true)]
    host: String,

    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "SHARD_PORT", default_value_t = 8080, global = true)]
    port: u16,

    /// Threads for the kernels (default: all cores).
    #[arg(short, long, env = "SHARD_THREADS")]
    threads: Option<usize>,

    /// Context length in tokens (0: the model's training context).
    #[arg(short = 'c', long, default_value_t = 0)]
    ctx_size: usize,

    /// Ternary kernel: auto picks the fastest this CPU supports.
    #[arg(long, value_enum, default_value_t = KernelChoice::Auto)]
    kernel: KernelChoice,

    /// Model id reported by the API (default: the file name).
    #[arg(long)]
    alias: Option<String>,

    /// Run the FFN with this activation instead of the architecture's (bitnet and llama: silu;
    /// bitnet-b1.58: relu2). llama.cpp has no such switch, so logits then differ from its.
    /// The file's `{arch}.hidden_act` key is ignored, as llama.cpp ignores it.
    #[arg(long, value_enum)]
    ffn_activation: Option<shard_oracle::engine::config::Activation>,

    /// The output layer's product: `exact` as stored (llama.cpp's logits), or `int8`, a copy
    /// made at load that reads half the bytes of an F16 layer per token (faster decoding on a
    /// big vocabulary; logits move a little, see docs/performance.md).
    #[arg(long, value_enum, default_value_t = shard_oracle::engine::Head::Exact, env = "SHARD_HEAD")]
    head: shard_oracle::engine::Head,

    /// How activations are scaled to int8 before each ternary product: `block`, one scale per
    /// 256 values as llama.cpp's Q8_K (its logits), or `token`, one scale per token as
    /// BitNet b1.58 was trained and as bitnet.cpp runs it (a whole row is then one integer
    /// sum; logits move a little, see docs/performance.md).
    #[arg(long, value_enum, default_value_t = shard_oracle::engine::ActScales::Block, env = "SHARD_ACT_SCALES")]
    act_scales: shard_oracle::engine::ActScales,

    /// Serve the weights from the memory-mapped file (instant load, pages shared with other
    /// processes) instead of copying them at load into memory backed by 2 MiB pages, which
    /// decodes faster (see docs/performance.md). Like llama.cpp's default; Linux only copies.
    #[arg(long, env = "SHARD_MMAP")]
    mmap: bool,

    /// A small draft model with the same vocabulary, run in-process for speculative decoding
    /// (like llama.cpp's -md). Float `llama` or BitNet GGUF.
    #[arg(long = "draft-model", visible_alias = "md", env = "SHARD_DRAFT_MODEL")]
    draft_model: Option<PathBuf>,

    /// Most tokens to draft per verification (the draft length adapts below it).
    #[arg(long, default_value_t = 8)]
    draft_max: usize,

    /// Make every forward pass of the target take at least this many milliseconds (0: off).
    /// The tiny default target decodes faster than any browser can draft; this lets it stand
    /// in for a large target (a 2B BitNet takes ~80 ms a step on two cores) in demos and tests.
    #[arg(long, default_value_t = 0)]
    min_step_ms: u64,

    /// With --min-step-ms: what each token of a pass past the first adds to it, so that
    /// verifying k drafted tokens costs what it would on a large target (2B-4T on two cores:
    /// about 37 ms plus 14 ms a token) instead of nothing.
    #[arg(long, default_value_t = 0.0)]
    min_step_token_ms: f64,

    /// Requests that may wait for the engine, per tier; more get 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    queue_capacity: usize,

    /// Requests decoded together in shared forward passes (continuous batching), each in a
    /// slot with its own KV cache (llama.cpp's `--parallel`).
    #[arg(long, short = 'n', env = "SHARD_PARALLEL", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    parallel: u16,

    /// Tokens one forward pass takes at most: every decoding request's tokens first, then
    /// chunks of new prompts, so a long prompt does not stall the others (llama.cpp's
    /// `--ubatch-size`).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=8192))]
    step_tokens: u32,

    /// Positions of keys and values that all requests hold together, in pages of 32 taken as
    /// sequences grow and given back as they end (0: `--parallel` full contexts, never
    /// full). Lower, it bounds memory: a request that finds it full waits for pages, idle
    /// slots' cached prefixes go first, and if no request can go on the newest gets a 503.
    #[arg(long, default_value_t = 0, env = "SHARD_KV_CACHE_TOKENS")]
    kv_cache_tokens: usize,

    /// Largest accepted request body, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,

    /// Prompt plus generated tokens one request may cost over all its runs (prompts × n);
    /// more get 400 naming the budget. 0: sixteen contexts' worth.
    #[arg(long, default_value_t = 0)]
    max_request_tokens: usize,

    /// Generation requests one client address may have queued or running at once; more get 429.
    #[arg(long, default_value_t = 16)]
    max_requests_per_client: usize,

    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,

    /// Where the Oracle keeps its state: the libp2p key (its peer id), the webrtc certificate
    /// and the trust store (operator keys, Scout credits).
    #[arg(long, env = "SHARD_STATE_DIR", default_value = "shard-state", global = true)]
    state_dir: PathBuf,

    /// Credits a Scout earns per drafted token the Oracle accepts.
    #[arg(long, default_value_t = 1)]
    credits_per_accepted_token: i64,

    /// Credits a Scout-tier request spends per generated token (a Scout with fewer is served
    /// as a Leech).
    #[arg(long, default_value_t = 1)]
    credits_per_generated_token: i64,

    /// Which requests' text may go to Scouts, who read what they draft: none, trusted (Scouts
    /// in good standing that have earned credits) or any Scout.
    #[arg(long, value_enum, default_value_t = ScoutText::Any)]
    scout_text: ScoutText,

    /// Let Scouts draft operator-key (Oracle tier) requests too.
    #[arg(long)]
    scout_oracle_requests: bool,

    #[command(subcommand)]
    command: Option<Command>,

    /// Run without the libp2p node (no Scouts).
    #[arg(long)]
    no_p2p: bool,

    /// Address the libp2p transports bind (default: --host).
    #[arg(long)]
    p2p_ip: Option<std::net::IpAddr>,

    /// TCP port for native Scouts (0 picks a free one).
    #[arg(long, default_value_t = 9090)]
    p2p_tcp_port: u16,

    /// WebSocket port, the browsers' fallback transport.
    #[arg(long, default_value_t = 9091)]
    p2p_ws_port: u16,

    /// UDP port for webrtc-direct, the browsers' transport.
    #[arg(long, default_value_t = 9092)]
    p2p_webrtc_port: u16,

    /// Connections (pending or established) one IP address may hold on the libp2p node.
    #[arg(long, default_value_t = 16)]
    p2p_max_conns_per_ip: usize,

    /// Seconds a peer dropped for a protocol violation is banned (doubling for repeats, up to
    /// an hour).
    #[arg(long, default_value_t = 60)]
    p2p_ban_secs: u64,

    /// Dropped peers from one address, within ten minutes, after which the address is banned.
    #[arg(long, default_value_t = 5)]
    p2p_strikes_per_ip: u32,

    /// The draft model Scouts must hold (its sha256 is checked in their hello).
    #[arg(long, env = "SHARD_SCOUT_MODEL", default_value = "models/shard-draft-llama-f16.gguf")]
    scout_model: PathBuf,

    /// The web app to serve at `/` (trunk's output; `scripts/run.sh` builds it).
    #[arg(long, env = "SHARD_WEB_DIR", default_value = "dist")]
    web_dir: PathBuf,

    /// Tokens to ask each Scout job for.
    #[arg(long, default_value_t = 16)]
    scout_k: usize,

    /// Golden tickets a new Scout must pass in a row to leave probation (until then every job
    /// it answers is checked, its credits are held, and its requests get no Scout tier).
    #[arg(long, default_value_t = 10)]
    probation_tickets: u32,

    /// Least share of a trusted Scout's answered jobs checked as golden tickets.
    #[arg(long, default_value_t = 0.02)]
    min_ticket_rate: f64,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Operator API keys: `Authorization: Bearer <key>` puts a request in the Oracle tier. They
    /// are kept hashed in the trust store in --state-dir; manage them while the Oracle is
    /// stopped (the store is one process's at a time).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Prints the API's OpenAPI description (what `GET /openapi.json` serves; committed as
    /// docs/openapi.json).
    Openapi,
    /// Exits 0 when the Oracle at --host/--port answers `GET /health` with "ok" (for container
    /// health checks: it needs no shell, curl or network tools in the image).
    Healthcheck {
        /// Print the Oracle's libp2p peer id (from `/api/p2p/addrs`) too, for a Scout's dial.
        #[arg(long)]
        print_peer_id: bool,
    },
    /// Golden-ticket records.
    Tickets {
        #[command(subcommand)]
        action: TicketsAction,
    },
}

#[derive(Debug, clap::Subcommand)]
enum TicketsAction {
    /// Checks, offline, the signatures of the records in a `GET /api/trust/tickets` answer
    /// (a file, or - for stdin) against the Oracle's peer id; exits 1 if any fails.
    Verify {
        file: PathBuf,
        /// The Oracle that must have signed them (default: the one the answer names).
        #[arg(long)]
        oracle: Option<String>,
    },
}

#[derive(Debug, clap::Subcommand)]
enum KeysAction {
    /// Creates a key and prints it, alone, on stdout (it is not shown again).
    Add { name: String },
    /// Lists the keys: name, created, revoked.
    List,
    /// Revokes a key: requests bearing it get 401.
    Revoke { name: String },
}

/// A plain HTTP/1.0 GET on the Oracle's own port: (status, body).
fn http_get(host: &str, port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    // A server bound to every address is reached on loopback.
    let host = if host == "0.0.0.0" || host == "::" { "127.0.0.1" } else { host };
    let addr = (host, port).to_socket_addrs()?.next().with_context(|| format!("{host} does not resolve"))?;
    let timeout = std::time::Duration::from_secs(4);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut response = String::new();
    stream.take(1 << 20).read_to_string(&mut response)?;
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).context("not an HTTP answer")?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Ok((status, body))
}

/// `shard-oracle healthcheck`.
fn healthcheck(host: &str, port: u16, print_peer_id: bool) -> anyhow::Result<()> {
    let (status, body) = http_get(host, port, "/health")?;
    let health: serde_json::Value = serde_json::from_str(&body).context("/health did not answer JSON")?;
    anyhow::ensure!(status == 200 && health["status"] == "ok", "/health answered {status}: {body}");
    if print_peer_id {
        let (_, body) = http_get(host, port, "/api/p2p/addrs")?;
        let addrs: serde_json::Value = serde_json::from_str(&body).context("/api/p2p/addrs did not answer JSON")?;
        println!("{}", addrs["peer_id"].as_str().context("the Oracle runs without its p2p node")?);
    }
    Ok(())
}

/// `shard-oracle tickets verify`.
fn verify_tickets(file: &std::path::Path, oracle: Option<String>) -> anyhow::Result<()> {
    use std::io::Read;
    let mut text = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin().take(256 << 20).read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    }
    let list: shard_oracle::api::trust::TicketList = serde_json::from_str(&text).context("not a /api/trust/tickets answer")?;
    let oracle = oracle.unwrap_or(list.oracle_peer_id.clone());
    let mut bad = 0;
    for t in &list.tickets {
        if let Err(e) = t.verify(&oracle).and_then(|r| {
            (r.peer == list.peer_id).then_some(()).ok_or_else(|| format!("the record is for {}, not {}", r.peer, list.peer_id))
        }) {
            bad += 1;
            eprintln!("job {}: {e}", t.job_id);
        }
    }
    println!("{} of {} ticket records verify against Oracle {oracle}", list.tickets.len() - bad, list.tickets.len());
    anyhow::ensure!(bad == 0, "{bad} records do not verify");
    Ok(())
}

/// `shard-oracle keys …`.
fn keys(state_dir: &std::path::Path, action: KeysAction) -> anyhow::Result<()> {
    let store = TrustStore::open(&state_dir.join("trust.redb"))?;
    match action {
        KeysAction::Add { name } => println!("{}", store.add_key(&name)?),
        KeysAction::List => {
            for k in store.list_keys()? {
                let revoked = k.revoked.map_or(String::new(), |t| format!("\trevoked {t}"));
                println!("{}\tcreated {}{revoked}", k.name, k.created);
            }
        }
        KeysAction::Revoke { name } => {
            anyhow::ensure!(store.revoke_key(&name)?, "no live key named {name:?}");
            eprintln!("revoked {name}");
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Some(Command::Keys { action }) => return keys(&args.state_dir, action),
        Some(Command::Healthcheck { print_peer_id }) => return healthcheck(&args.host, args.port, print_peer_id),
        Some(Command::Tickets { action: TicketsAction::Verify { file, oracle } }) => return verify_tickets(&file, oracle),
        Some(Command::Openapi) => {
            println!("{}", api::openapi::json());
            return Ok(());
        }
        None => {}
    }
    // WebRTC's DTLS needs a process-wide rustls crypto provider before the first handshake.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = EnvFilter::try_from_env("SHARD_LOG").unwrap_or_else(|_| EnvFilter::new("info,tower_http=info"));
    if args.log_json {
        tracing_subscriber::fmt().with_env_filter(filter).json().init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }

    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().context("building the thread pool")?;
    let kernel = kernels::select(args.kernel).map_err(anyhow::Error::msg)?;
    tracing::info!(threads, kernel = kernel.name(), model = %args.model.display(), "loading model");

    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message("loading");
    // The target, the tickets' reference and an in-process draft live in the same kind of memory.
    let weights = if args.mmap { WeightMemory::Mapped } else { WeightMemory::default() };
    let opts = LoadOptions {
        n_ctx: args.ctx_size,
        alias: args.alias.clone(),
        activation: args.ffn_activation,
        head: args.head,
        act_scales: args.act_scales,
        weights,
        ..LoadOptions::new(kernel)
    };
    let model_path = args.model.clone();
    let bar2 = bar.clone();
    let mut engine = tokio::task::spawn_blocking(move || {
        Engine::load(&model_path, &opts, |done, total| {
            bar2.set_length(total);
            bar2.set_position(done);
        })
    })
    .await?
    .with_context(|| format!("loading {}", args.model.display()))?;
    bar.finish_and_clear();
    engine.min_step = std::time::Duration::from_millis(args.min_step_ms);
    engine.min_step_per_token = std::time::Duration::from_secs_f64(args.min_step_token_ms.max(0.0) / 1e3);
    if args.min_step_ms > 0 {
        tracing::warn!(ms = args.min_step_ms, "every forward pass is held to a minimum time (--min-step-ms)");
    }
    for w in &engine.tokenizer.warnings {
        tracing::warn!("{w}");
    }
    let c = &engine.model.config;
    tracing::info!(
        model = %engine.model_id, arch = %c.arch, layers = c.n_layer, embd = c.n_embd, vocab = c.n_vocab, n_ctx = engine.n_ctx,
        activation = ?c.activation, "model loaded"
    );

    // Who the Oracle is (its peer id, which Scouts' proofs are bound to) and what it trusts.
    let oracle_key = shard_shared::key_file::load_or_create(&args.state_dir.join("oracle.key"))?;
    let trust_config = TrustConfig {
        earn_per_token: args.credits_per_accepted_token.max(0),
        spend_per_token: args.credits_per_generated_token.max(0),
        scout_text: args.scout_text,
        oracle_requests_to_scouts: args.scout_oracle_requests,
    };
    let mut trust = Trust::open(&args.state_dir, oracle_key.clone(), trust_config).context("opening the trust store")?;
    trust.rules.probation_passes = args.probation_tickets;
    trust.rules.min_rate = args.min_ticket_rate.clamp(0.0, 1.0);
    let trust = Arc::new(trust);
    tracing::info!(store = %trust.store.path().display(), peers = trust.store.peers()?.len(), "trust store open");
    {
        // Credits earned while drafting are committed a few times a second.
        let trust = trust.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
            loop {
                tick.tick().await;
                let t = trust.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || t.flush()).await {
                    tracing::error!("committing credits failed (kept for the next try): {e}");
                }
            }
        });
    }

    // The Scouts' draft source, when the node runs and no in-process draft is chosen.
    let scouts = if args.no_p2p {
        None
    } else {
        match scout_model(&args.scout_model, &engine) {
            Ok((model, file)) => {
                // Golden tickets: the Oracle runs the Scouts' own draft model file to check them.
                let opts = LoadOptions { weights, ..LoadOptions::new(kernel) };
                let reference = Engine::load(&args.scout_model, &opts, |_, _| {})
                    .with_context(|| format!("loading {} to check golden tickets", args.scout_model.display()))?;
                let reference = checker::Reference::new(reference, model.sha256, AgreementRule::default());
                let job_k = args.scout_k.clamp(1, shard_shared::wire::MAX_DRAFT_TOKENS);
                let config = SchedulerConfig { job_k, max_context: reference.max_context(job_k), ..SchedulerConfig::default() };
                checker::start(reference, trust.clone());
                let (scouts, outbox) = ScoutDrafts::new(model, engine.model.config.n_vocab, config, Some(trust.clone()));
                Some((Arc::new(scouts), outbox, file))
            }
            Err(e) => {
                tracing::warn!("no Scouts: {e:#} (pass --scout-model, or --no-p2p to silence this)");
                None
            }
        }
    };
    let spec = match &args.draft_model {
        None => scouts.as_ref().map(|(s, _, _)| SpecConfig {
            source: s.clone() as Arc<dyn shard_oracle::spec::draft::DraftSource>,
            k_max: args.draft_max.max(1),
            paced: false,
            reads_text: true,
        }),
        Some(path) => {
            let opts = LoadOptions { n_ctx: engine.n_ctx, weights, ..LoadOptions::new(kernel) };
            let draft =
                Engine::load(path, &opts, |_, _| {}).with_context(|| format!("loading the draft model {}", path.display()))?;
            let local = LocalDraft::new(draft, &engine)?;
            tracing::info!(draft = local.model_id(), k_max = args.draft_max, "speculative decoding with an in-process draft");
            Some(SpecConfig {
                source: Arc::new(local) as Arc<dyn shard_oracle::spec::draft::DraftSource>,
                k_max: args.draft_max.max(1),
                paced: true,
                reads_text: false,
            })
        }
    };
    let single_step = engine.time_single_step();
    let engine = Arc::new(engine);
    let queue_config = shard_oracle::queue::QueueConfig {
        capacity: args.queue_capacity,
        parallel: args.parallel as usize,
        step_tokens: args.step_tokens as usize,
        kv_cache_tokens: args.kv_cache_tokens,
    };
    let queue = InferenceQueue::start_with(engine.clone(), queue_config, spec, Some(trust.clone()));
    queue.stats.spec.single_step_micros.store(single_step.as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
    let p2p = match scouts {
        None => None,
        Some((scouts, outbox, scout_model)) => {
            let config = NodeConfig {
                listen_ip: args.p2p_ip.unwrap_or(args.host.parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST.into())),
                tcp_port: Some(args.p2p_tcp_port),
                ws_port: Some(args.p2p_ws_port),
                webrtc_port: Some(args.p2p_webrtc_port),
                max_requests_per_sec: 2000,
                admission: shard_oracle::p2p::admission::AdmissionConfig {
                    max_per_ip: args.p2p_max_conns_per_ip.max(1),
                    ban: std::time::Duration::from_secs(args.p2p_ban_secs),
                    strikes_per_ip: args.p2p_strikes_per_ip.max(1),
                },
            };
            let key = args.state_dir.join("oracle.key");
            let node = node::start(config, &key, scouts.clone(), outbox, queue.stats.clone(), queue.capacity)
                .await
                .context("starting the libp2p node")?;
            tracing::info!(peer_id = %node.info.lock().map(|i| i.peer_id.clone()).unwrap_or_default(), "p2p node up");
            Some(P2pState { node, scouts, scout_model })
        }
    };
    let web_dir = if args.web_dir.join("index.html").is_file() {
        tracing::info!(dir = %args.web_dir.display(), "serving the web app");
        Some(args.web_dir.clone())
    } else {
        tracing::warn!(dir = %args.web_dir.display(), "no web app to serve (build it with `trunk build --release`, or run scripts/run.sh)");
        None
    };
    let longest_piece = (0..engine.tokenizer.n_vocab() as u32).filter_map(|i| engine.tokenizer.piece(i)).map(<[u8]>::len).max();
    let request_tokens = if args.max_request_tokens == 0 { 16 * engine.n_ctx } else { args.max_request_tokens };
    let limits = Arc::new(api::limits::Limits::new(
        engine.n_ctx,
        longest_piece.unwrap_or(1),
        request_tokens,
        args.max_requests_per_client.max(1),
    ));
    let state = Arc::new(AppState { engine, queue, started: api::types::unix_now(), p2p, web_dir, limits, trust });
    let app = api::router(state, args.max_body_bytes);

    let addr: SocketAddr = format!("{}:{}", args.host, args.port).parse().context("parsing --host/--port")?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!("listening on http://{local}");
    // A line for scripts that start the server and need its port.
    println!("shard-oracle listening on http://{local}");
    // Each connection's kernel send buffer is kept small, so a client that stops reading
    // backs up into its request's bounded event channel within a few events (and is
    // cancelled there) instead of into megabytes of socket memory.
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
        let _ = socket2::SockRef::from(&*tcp).set_send_buffer_size(SEND_BUFFER_BYTES);
    });
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).with_graceful_shutdown(shutdown()).await?;
    Ok(())
}

/// Kernel send buffer per HTTP connection (Linux doubles it): room for well over a second of
/// streamed tokens, but not for a whole context of them.
const SEND_BUFFER_BYTES: usize = 64 << 10;

/// The draft model Scouts must hold: it must exist and share the target's vocabulary.
fn scout_model(path: &std::path::Path, engine: &Engine) -> anyhow::Result<(ModelRef, api::web::HashedFile)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading the Scout model {}", path.display()))?;
    let g = shard_shared::gguf::Gguf::parse(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    let tokens = g.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()).map_or(0, |a| a.len());
    anyhow::ensure!(
        tokens == engine.model.config.n_vocab,
        "{} has {tokens} tokens, the target {}",
        path.display(),
        engine.model.config.n_vocab
    );
    let sha256: [u8; 32] = Sha256::digest(&bytes).into();
    let file = api::web::HashedFile { path: path.to_path_buf(), sha256: api::swarm::hex(&sha256), bytes: bytes.len() as u64 };
    Ok((ModelRef { id: path.file_stem().map_or("draft".into(), |s| s.to_string_lossy().into_owned()), sha256 }, file))
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}
