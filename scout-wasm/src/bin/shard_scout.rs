//! `shard-scout`: a native Scout, for machines without a browser. It loads the draft model,
//! dials the Oracle over libp2p (TCP or WebSocket) and drafts tokens for the jobs it gets.

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::PathBuf;

    use anyhow::Context;
    use clap::Parser;
    use libp2p::Multiaddr;
    use sha2::{Digest, Sha256};
    use tracing_subscriber::EnvFilter;

    use shard_scout::client::{self, ScoutConfig, ScoutEvent};
    use shard_scout::job::JobRunner;
    use shard_scout::{backend, DraftModel, Drafter};
    use shard_shared::wire::ModelRef;

    /// A native Shard Scout: drafts tokens for an Oracle's speculative decoder.
    #[derive(Debug, Parser)]
    #[command(
        version,
        about,
        after_help = "The Oracle's addresses are at its GET /api/p2p/addrs (use a `tcp` or `websocket` one).\n\n\
    Example: shard-scout --oracle /ip4/127.0.0.1/tcp/9090/p2p/12D3KooW... --model models/shard-draft-llama-f16.gguf"
    )]
    struct Args {
        /// The Oracle's multiaddr, ending in /p2p/<peer id>. Repeat to give fallbacks, tried in turn.
        #[arg(long, required = true)]
        oracle: Vec<Multiaddr>,

        /// The draft model (a `llama` GGUF): the one the Oracle names in /api/swarm.
        #[arg(long, default_value = "models/shard-draft-llama-f16.gguf")]
        model: PathBuf,

        /// Run the model on the GPU through burn's wgpu backend (built with `--features wgpu`).
        #[arg(long)]
        gpu: bool,

        /// Where the Scout keeps its key (`scout.key`): its peer id, which the credits it earns
        /// and its standing belong to, survives restarts and redials.
        #[arg(long, env = "SHARD_SCOUT_STATE_DIR", default_value = "shard-scout-state")]
        state_dir: PathBuf,

        /// Testing only: claim to hold this file (its name and sha256 in the hello) while
        /// drafting with --model, as a lying Scout would. The Oracle's golden tickets ban it.
        #[arg(long, hide = true)]
        claim_model: Option<PathBuf>,
    }

    #[tokio::main(flavor = "current_thread")]
    pub async fn main() -> anyhow::Result<()> {
        let args = Args::parse();
        let filter = EnvFilter::try_from_env("SHARD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
        tracing_subscriber::fmt().with_env_filter(filter).init();

        let bytes = std::fs::read(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
        let claimed = args.claim_model.as_ref().unwrap_or(&args.model);
        let claimed_bytes = if args.claim_model.is_some() {
            tracing::warn!(claims = %claimed.display(), drafts_with = %args.model.display(), "lying about the draft model (--claim-model)");
            std::fs::read(claimed).with_context(|| format!("reading {}", claimed.display()))?
        } else {
            bytes.clone()
        };
        let model_ref = ModelRef {
            id: claimed.file_stem().map_or("draft".into(), |s| s.to_string_lossy().into_owned()),
            sha256: Sha256::digest(&claimed_bytes).into(),
        };
        let backend = backend::select(args.gpu).await;
        if let Some(reason) = &backend.fallback_reason {
            tracing::warn!("drafting on the CPU: {reason}");
        }
        let model =
            DraftModel::from_gguf(&bytes, &backend.device).with_context(|| format!("loading {}", args.model.display()))?;
        tracing::info!(model = %model_ref.id, backend = %backend.kind, layers = model.config.n_layer, "draft model loaded");
        let runner = JobRunner::new(Drafter::new(model), model_ref);

        let key_path = args.state_dir.join("scout.key");
        let key =
            shard_shared::key_file::load_or_create(&key_path).with_context(|| format!("the Scout key {}", key_path.display()))?;
        tracing::info!(peer_id = %key.public().to_peer_id(), key = %key_path.display(), "scout identity");
        let config =
            ScoutConfig::new(args.oracle, backend.kind.to_string(), format!("shard-scout/{} native", env!("CARGO_PKG_VERSION")))
                .with_identity(key);
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        client::run(
            config,
            runner,
            |event| match event {
                ScoutEvent::Started { peer_id } => tracing::info!(%peer_id, "scout started"),
                ScoutEvent::Dialling { addr } => tracing::info!(%addr, "dialling the Oracle"),
                ScoutEvent::Connected { addr } => tracing::info!(%addr, "connected"),
                ScoutEvent::Welcomed => tracing::info!("the Oracle accepted this Scout"),
                ScoutEvent::Refused { reason } => tracing::warn!(%reason, "the Oracle refused this Scout"),
                ScoutEvent::Disconnected { retry_in } => tracing::warn!(?retry_in, "disconnected; redialling"),
                ScoutEvent::Drafted { stats } => {
                    tracing::debug!(jobs = stats.jobs, drafted = stats.tokens_drafted, "job answered")
                }
                ScoutEvent::Load(load) => tracing::debug!(queue = load.queue_depth, tok_s = load.tokens_per_s, "oracle load"),
            },
            stop,
        )
        .await?;
        Ok(())
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> anyhow::Result<()> {
    native::main()
}

/// In a browser the Scout is the web app; this binary is native only.
#[cfg(target_arch = "wasm32")]
fn main() {}
