//! Scout mode: this tab drafts tokens for the Oracle.
//!
//! 1. Pick the device: WebGPU through burn's wgpu backend when the browser has an adapter,
//!    else burn's ndarray backend in WebAssembly, with a notice saying so.
//! 2. Get the draft model (`/api/scout` names it): from the Cache API, or downloaded with
//!    progress; either way checked against the Oracle's sha256 ([`crate::model_store`]).
//! 3. Dial the Oracle over libp2p (webrtc-direct, then WebSocket) and answer draft jobs until
//!    stopped ([`shard_scout::client`], the same client the native Scout runs).
//!
//! A hidden or frozen tab stops drafting (its timers are throttled, so its drafts would only
//! arrive late) and disconnects; the Oracle hands its sequences to other Scouts. When the tab
//! is visible again the Scout reconnects with the model it already holds.

use std::time::Duration;

use futures::channel::oneshot;
use leptos::prelude::*;
use leptos::task::spawn_local;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;

use shard_scout::client::{self, ScoutConfig, ScoutEvent};
use shard_scout::job::{JobRunner, JobStats};
use shard_scout::{DraftModel, Drafter};
use shard_shared::wire::ModelRef;

use crate::format;
use crate::model_store::{self, Source};
use crate::oracle_api::{ScoutRow, ScoutSetup, TransportChoice};

/// Where the Scout is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    Off,
    Detecting,
    Downloading {
        done: u64,
        total: u64,
    },
    Loading,
    Running,
    /// The tab is hidden; drafting resumes when it is shown.
    Paused,
    Failed(String),
}

/// The Scout's live state, shared by the dashboard and the chat's offer.
#[derive(Clone, Copy)]
pub struct Scout {
    pub phase: RwSignal<Phase>,
    /// "WebGPU" or "CPU (WebAssembly)".
    pub backend: RwSignal<Option<String>>,
    /// Why the CPU is used, when WebGPU was wanted.
    pub fallback: RwSignal<Option<String>>,
    pub model_source: RwSignal<Option<Source>>,
    pub model_bytes: RwSignal<u64>,
    pub connection: RwSignal<String>,
    pub peer_id: RwSignal<Option<String>>,
    pub stats: RwSignal<JobStats>,
    /// This Scout as the Oracle sees it (accepted tokens), from `/api/swarm`.
    pub seen_by_oracle: RwSignal<Option<ScoutRow>>,
    /// The last in-page speed measurement, and its steady drafting rate.
    pub bench: RwSignal<Option<String>>,
    pub bench_tok_s: RwSignal<f64>,
    /// On WebGPU: the largest logprob difference from the CPU reference in that measurement.
    pub bench_delta: RwSignal<Option<f64>>,
    /// This browser's Scout key (shared with the chat, which proves it to the Oracle).
    identity: RwSignal<Option<libp2p::identity::Keypair>>,
    runtime: StoredValue<Runtime, LocalStorage>,
}

/// What lives between runs: the device, the model bytes, and how to stop the client.
#[derive(Default)]
struct Runtime {
    device: Option<(shard_scout::Device, &'static str)>,
    setup: Option<ScoutSetup>,
    model: Option<Vec<u8>>,
    stop: Option<oneshot::Sender<()>>,
    /// Set while the user wants the Scout on (a hidden tab pauses it without turning it off).
    wanted: bool,
}

impl Scout {
    pub fn new(identity: RwSignal<Option<libp2p::identity::Keypair>>) -> Self {
        let scout = Self {
            phase: RwSignal::new(Phase::Off),
            backend: RwSignal::new(None),
            fallback: RwSignal::new(None),
            model_source: RwSignal::new(None),
            model_bytes: RwSignal::new(0),
            connection: RwSignal::new("not connected".into()),
            peer_id: RwSignal::new(None),
            stats: RwSignal::new(JobStats::default()),
            seen_by_oracle: RwSignal::new(None),
            bench: RwSignal::new(None),
            bench_tok_s: RwSignal::new(0.0),
            bench_delta: RwSignal::new(None),
            identity,
            runtime: StoredValue::new_local(Runtime::default()),
        };
        scout.pause_with_the_page();
        scout
    }

    /// Whether Scout mode is on (tracked, for views).
    pub fn active(&self) -> bool {
        !matches!(self.phase.get(), Phase::Off | Phase::Failed(_))
    }

    fn is_on(&self) -> bool {
        self.runtime.with_value(|r| r.wanted)
    }

    /// Turns Scout mode on: device, model, connection.
    pub fn start(self) {
        if self.is_on() {
            return;
        }
        self.runtime.update_value(|r| r.wanted = true);
        spawn_local(async move {
            if let Err(e) = self.prepare().await {
                self.runtime.update_value(|r| r.wanted = false);
                self.phase.set(Phase::Failed(e));
                return;
            }
            if !self.is_on() {
                return; // turned off while the model downloaded
            }
            if page_hidden() {
                self.phase.set(Phase::Paused);
            } else {
                self.run();
            }
        });
    }

    /// Turns Scout mode off.
    pub fn stop(self) {
        self.runtime.update_value(|r| {
            r.wanted = false;
            if let Some(stop) = r.stop.take() {
                let _ = stop.send(());
            }
        });
        self.phase.set(Phase::Off);
        self.connection.set("not connected".into());
    }

    /// Device and model, once per page.
    async fn prepare(self) -> Result<(), String> {
        if self.runtime.with_value(|r| r.device.is_none()) {
            self.phase.set(Phase::Detecting);
            let (device, name) = match shard_scout::backend::gpu_device_async().await {
                Ok(d) => (d, "WebGPU"),
                Err(e) => {
                    self.fallback.set(Some(e));
                    (shard_scout::cpu_device(), "CPU (WebAssembly)")
                }
            };
            self.backend.set(Some(name.into()));
            self.runtime.update_value(|r| r.device = Some((device, name)));
        }
        if self.runtime.with_value(|r| r.model.is_none()) {
            let setup: ScoutSetup = crate::http::get_json("/api/scout").await?;
            self.model_bytes.set(setup.model.bytes);
            self.phase.set(Phase::Downloading { done: 0, total: setup.model.bytes });
            let phase = self.phase;
            let (bytes, source) = model_store::load(&setup.model, move |done, total| {
                phase.set(Phase::Downloading { done, total });
            })
            .await?;
            self.model_source.set(Some(source));
            self.runtime.update_value(|r| {
                r.model = Some(bytes);
                r.setup = Some(setup);
            });
        }
        Ok(())
    }

    /// Measures this device: drafts 48 tokens greedily after a short context and reports the
    /// first token's time (shader compilation, uploads) and the steady rate after it.
    pub fn measure(self) {
        self.bench.set(Some("measuring…".into()));
        spawn_local(async move {
            let report = async {
                self.prepare().await?;
                let (device, bytes) = self
                    .runtime
                    .with_value(|r| Some((r.device.clone()?.0, r.model.clone()?)))
                    .ok_or("the model is not loaded")?;
                let model = DraftModel::from_gguf(&bytes, &device).map_err(|e| e.to_string())?;
                let mut drafter = Drafter::new(model);
                let mut context: Vec<u32> = vec![0, 3, 200, 300, 400, 500, 600, 700];
                let mut times = vec![];
                for _ in 0..48 {
                    let started = crate::http::now_ms();
                    let logits = drafter.logits_after(&context).await.map_err(|e| e.to_string())?;
                    times.push(crate::http::now_ms() - started);
                    context.push(shard_shared::sampling::argmax(&logits));
                }
                let steady: f64 = times[8..].iter().sum::<f64>() / (times.len() - 8) as f64;
                web_sys::console::log_1(&format!("shard draft timings (ms per token): {times:?}").into());
                // On a GPU, hold its logits to the CPU reference (burn's ndarray) position by position.
                let distance = if self.backend.get_untracked().as_deref() == Some("WebGPU") {
                    let cpu = DraftModel::from_gguf(&bytes, &shard_scout::cpu_device()).map_err(|e| e.to_string())?;
                    let mut on_cpu = Drafter::new(cpu);
                    let mut on_gpu = Drafter::new(DraftModel::from_gguf(&bytes, &device).map_err(|e| e.to_string())?);
                    on_gpu.set_max_chunk(1);
                    let (mut max_delta, mut same_argmax) = (0.0f32, true);
                    for end in 8..context.len() {
                        let g = shard_shared::sampling::log_softmax(
                            &on_gpu.logits_after(&context[..end]).await.map_err(|e| e.to_string())?,
                        );
                        let c = shard_shared::sampling::log_softmax(
                            &on_cpu.logits_after(&context[..end]).await.map_err(|e| e.to_string())?,
                        );
                        let d = g.iter().zip(&c).filter(|(a, _)| **a > -30.0).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                        max_delta = max_delta.max(d);
                        same_argmax &= shard_shared::sampling::argmax(&g) == shard_shared::sampling::argmax(&c);
                    }
                    self.bench_delta.set(Some(max_delta as f64));
                    format!(
                        "; WebGPU vs CPU (ndarray) logprobs: max |Δ| {max_delta:.5} over {} positions, greedy tokens {}",
                        context.len() - 8,
                        if same_argmax { "identical" } else { "differ" }
                    )
                } else {
                    String::new()
                };
                Ok::<_, String>((times[0], 1000.0 / steady, distance))
            };
            self.bench.set(Some(match report.await {
                Ok((first, rate, distance)) => {
                    self.bench_tok_s.set(rate);
                    format!("first token {:.0} ms, then {} tok/s{distance}", first, format::rate(rate))
                }
                Err(e) => format!("failed: {e}"),
            }));
        });
    }

    /// Builds the draft model and serves jobs until stopped.
    fn run(self) {
        let Some((device, backend, bytes, setup)) =
            self.runtime.with_value(|r| Some((r.device.clone()?.0, r.device.as_ref()?.1, r.model.clone()?, r.setup.clone()?)))
        else {
            return;
        };
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        self.runtime.update_value(|r| r.stop = Some(stop_tx));
        self.phase.set(Phase::Loading);
        spawn_local(async move {
            // Let the page paint "loading" before the upload blocks the thread.
            futures_timer::Delay::new(Duration::from_millis(20)).await;
            let model = match DraftModel::from_gguf(&bytes, &device) {
                Ok(m) => m,
                Err(e) => {
                    self.phase.set(Phase::Failed(format!("the draft model did not load: {e}")));
                    return;
                }
            };
            let sha: Vec<u8> =
                (0..32).filter_map(|i| u8::from_str_radix(&setup.model.sha256[2 * i..2 * i + 2], 16).ok()).collect();
            let model_ref = ModelRef { id: setup.model.id.clone(), sha256: sha.try_into().unwrap_or([0; 32]) };
            let mut drafter = Drafter::new(model);
            if backend == "WebGPU" {
                drafter.set_max_chunk(1);
                if let Err(e) = drafter.warm_up().await {
                    self.phase.set(Phase::Failed(format!("the GPU could not run the draft model: {e}")));
                    return;
                }
            }
            // Turned off (or hidden) while the model loaded: do not connect.
            if !matches!(stop_rx.try_recv(), Ok(None)) {
                if !self.is_on() {
                    self.phase.set(Phase::Off);
                }
                return;
            }
            let runner = JobRunner::new(drafter, model_ref);
            let choice = TransportChoice::from_query(query_param("transport").as_deref());
            let addrs: Vec<libp2p::Multiaddr> = setup.addrs.dial_order(choice).iter().filter_map(|a| a.parse().ok()).collect();
            let backend_name = if backend == "WebGPU" { "gpu (webgpu)" } else { "cpu (wasm ndarray)" };
            // The same key every time (IndexedDB), so credits and standing follow this browser.
            let key = match crate::identity::load_or_create().await {
                Ok(k) => k,
                Err(e) => {
                    self.phase.set(Phase::Failed(format!("no place to keep this Scout's key: {e}")));
                    return;
                }
            };
            self.identity.set(Some(key.clone()));
            let config = ScoutConfig::new(addrs, backend_name.into(), "shard-web/0.1 (browser scout)".into()).with_identity(key);
            self.phase.set(Phase::Running);
            let result = client::run(config, runner, move |ev| self.on_event(ev), async {
                let _ = stop_rx.await;
            })
            .await;
            match result {
                Err(e) => self.phase.set(Phase::Failed(e.to_string())),
                // Stopped by the user (a hidden tab sets Paused itself and stays on).
                Ok(()) if !self.is_on() => {
                    self.phase.set(Phase::Off);
                    self.connection.set("not connected".into());
                }
                Ok(()) => {}
            }
        });
    }

    fn on_event(self, ev: ScoutEvent) {
        match ev {
            ScoutEvent::Started { peer_id } => self.peer_id.set(Some(peer_id.to_string())),
            ScoutEvent::Dialling { addr } => self.connection.set(format!("dialling {}", transport_of(&addr.to_string()))),
            ScoutEvent::Connected { addr } => self.connection.set(format!("connected over {}", transport_of(&addr.to_string()))),
            ScoutEvent::Welcomed => self.connection.update(|c| {
                if !c.ends_with("(accepted)") {
                    c.push_str(" (accepted)");
                }
            }),
            ScoutEvent::Refused { reason } => self.connection.set(format!("refused by the Oracle: {reason}")),
            ScoutEvent::Disconnected { retry_in } => {
                self.connection.set(format!("disconnected; retrying in {:.1} s", retry_in.as_secs_f64()))
            }
            ScoutEvent::Drafted { stats } => self.stats.set(stats),
            ScoutEvent::Load(_) => {}
        }
    }

    /// Hidden or frozen: stop drafting. Visible again: resume with the model in hand.
    fn pause_with_the_page(self) {
        let Some(document) = web_sys::window().and_then(|w| w.document()) else { return };
        let on_change = Closure::<dyn FnMut(web_sys::Event)>::new(move |ev: web_sys::Event| {
            let hidden = ev.type_() == "freeze" || (ev.type_() == "visibilitychange" && page_hidden());
            if !self.is_on() {
                return;
            }
            if hidden {
                if let Some(stop) = self.runtime.try_update_value(|r| r.stop.take()).flatten() {
                    let _ = stop.send(());
                }
                self.phase.set(Phase::Paused);
                self.connection.set("paused while the tab is hidden".into());
            } else if self.phase.get_untracked() == Phase::Paused {
                self.run();
            }
        });
        for event in ["visibilitychange", "freeze", "resume"] {
            let _ = document.add_event_listener_with_callback(event, on_change.as_ref().unchecked_ref());
        }
        on_change.forget(); // lives as long as the page
    }
}

fn page_hidden() -> bool {
    web_sys::window().and_then(|w| w.document()).is_some_and(|d| d.visibility_state() == web_sys::VisibilityState::Hidden)
}

/// A query parameter of the page's URL (`?transport=websocket` forces the fallback).
pub fn query_param(name: &str) -> Option<String> {
    let search = web_sys::window()?.location().search().ok()?;
    search.trim_start_matches('?').split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| v.to_string())
    })
}

fn transport_of(addr: &str) -> &'static str {
    if addr.contains("/webrtc-direct") {
        "webrtc-direct"
    } else if addr.contains("/ws") {
        "WebSocket"
    } else {
        "libp2p"
    }
}

/// The Scout dashboard.
#[component]
pub fn ScoutView() -> impl IntoView {
    let scout = expect_context::<Scout>();
    let ui = expect_context::<crate::app::UiState>();
    let me = move || ui.me.get();
    let phase_text = move || match scout.phase.get() {
        Phase::Off => "off".to_string(),
        Phase::Detecting => "looking for WebGPU…".into(),
        Phase::Downloading { .. } => "downloading the draft model".into(),
        Phase::Loading => "loading the draft model (a GPU compiles its kernels first)".into(),
        Phase::Running => "drafting".into(),
        Phase::Paused => "paused (tab hidden)".into(),
        Phase::Failed(e) => format!("stopped: {e}"),
    };
    let progress = move || match scout.phase.get() {
        Phase::Downloading { done, total } => Some((done, total.max(1))),
        _ => None,
    };
    let tok_s =
        move || scout.stats.with(|s| if s.drafting_ms > 0.0 { s.tokens_drafted as f64 * 1000.0 / s.drafting_ms } else { 0.0 });
    let oracle = move || scout.seen_by_oracle.get();
    let running = move || scout.active();
    view! {
        <section class="panel scout" aria-labelledby="scout-title">
            <h2 id="scout-title">"Scout mode"</h2>
            <p class="lede">
                "A Scout runs a small draft model ("
                {move || format::bytes(scout.model_bytes.get().max(6_105_856))}
                ", downloaded once) on your GPU through WebGPU, or on your CPU where WebGPU is missing. "
                "It guesses the next tokens of other people's answers; the Oracle checks every guess, "
                "so answers get faster and never change."
            </p>
            <div class="controls">
                <Show
                    when=running
                    fallback=move || view! {
                        <button class="primary" data-testid="scout-start" on:click=move |_| scout.start()>"Start scouting"</button>
                    }
                >
                    <button data-testid="scout-stop" on:click=move |_| scout.stop()>"Stop scouting"</button>
                </Show>
                " "
                <button data-testid="scout-measure" on:click=move |_| scout.measure()>"Measure drafting speed"</button>
                {move || scout.bench.get().map(|b| view! {
                    <span class="bench" role="status" data-testid="bench-result" data-tok-s=move || format!("{:.3}", scout.bench_tok_s.get())
                        data-delta=move || scout.bench_delta.get().map(|d| format!("{d:.6}")).unwrap_or_default()>" "{b}</span>
                })}
            </div>
            <p class="status" role="status" data-testid="scout-phase" data-phase=move || format!("{:?}", scout.phase.get()).split([' ', '{', '(']).next().unwrap_or_default().to_string()>
                {phase_text}
            </p>
            {move || progress().map(|(done, total)| view! {
                <div class="download">
                    <label for="model-progress">{format!("Draft model: {} of {} ({:.0}%)", format::bytes(done), format::bytes(total), done as f64 * 100.0 / total as f64)}</label>
                    <progress id="model-progress" data-testid="model-progress" max=total.to_string() value=done.to_string()></progress>
                </div>
            })}
            {move || scout.fallback.get().map(|why| view! {
                <div class="notice" role="alert" data-testid="cpu-fallback">
                    <p>"WebGPU is not available in this browser, so the draft model runs on the CPU in WebAssembly: slower, but it still helps."</p>
                    <details><summary>"Details"</summary><p>{why}</p></details>
                </div>
            })}
            <dl class="stats">
                <div><dt>"Backend"</dt><dd data-testid="scout-backend">{move || scout.backend.get().unwrap_or_else(|| "–".into())}</dd></div>
                <div><dt>"Model"</dt><dd data-testid="model-source">{move || match scout.model_source.get() {
                    Some(Source::Cache) => "from this browser's cache (checked)",
                    Some(Source::Network) => "downloaded (checked)",
                    None => "–",
                }}</dd></div>
                <div><dt>"Peer id"</dt><dd data-testid="scout-peer" data-peer=move || scout.peer_id.get().unwrap_or_default()
                    title=move || scout.peer_id.get().unwrap_or_default()>{move || scout.peer_id.get().map_or("–".into(), |p| format::short_peer(&p))}</dd></div>
                <div><dt>"Connection"</dt><dd data-testid="scout-connection">{move || scout.connection.get()}</dd></div>
                <div><dt>"Jobs answered"</dt><dd data-testid="scout-jobs">{move || scout.stats.with(|s| s.jobs)}</dd></div>
                <div><dt>"Tokens drafted"</dt><dd data-testid="scout-drafted">{move || scout.stats.with(|s| s.tokens_drafted)}</dd></div>
                <div><dt>"Drafting speed"</dt><dd data-testid="scout-tok-s" data-value=move || format!("{:.3}", tok_s())>{move || format!("{} tok/s", format::rate(tok_s()))}</dd></div>
                <div><dt>"Tokens accepted"</dt><dd data-testid="scout-accepted">{move || oracle().map_or("–".into(), |o| o.tokens_accepted.to_string())}</dd></div>
                <div><dt>"Acceptance rate"</dt><dd>{move || oracle().map_or("–".into(), |o| format::percent(o.acceptance_rate))}</dd></div>
                <div><dt>"Round trip"</dt><dd>{move || oracle().map_or("–".into(), |o| format!("{:.0} ms", o.latency_ms))}</dd></div>
                <div><dt>"Standing"</dt><dd>{move || oracle().map_or("–".into(), |o| if o.strikes == 0 { "good (no strikes)".into() } else { format!("{} strikes", o.strikes) })}</dd></div>
                <div><dt>"Credits"</dt><dd data-testid="scout-credits" data-value=move || me().map_or(0, |m| m.credits).to_string()
                    data-earned=move || me().map_or(0, |m| m.credits_earned).to_string()>
                    {move || me().filter(|m| m.peer_id.is_some()).map_or("–".into(), |m| format!("{} (earned {}, spent {})", m.credits, m.credits_earned, m.credits_spent))}
                </dd></div>
                <div><dt>"Your chats"</dt><dd data-testid="scout-tier" data-tier=move || me().map_or("leech", |m| m.tier.as_str())>
                    {move || me().map_or("–".into(), |m| match m.tier {
                        shard_shared::trust::Tier::Scout => "served in the Scout tier, ahead of anonymous chats".to_string(),
                        shard_shared::trust::Tier::Oracle => "served in the operator tier".to_string(),
                        shard_shared::trust::Tier::Leech => "served as a Leech until you have credits".to_string(),
                    })}
                </dd></div>
                <div><dt>"Reputation"</dt><dd data-testid="scout-reputation" data-value=move || me().and_then(|m| m.reputation).map_or(String::new(), |r| format!("{r:.3}"))>
                    {move || me().and_then(|m| m.reputation.map(|r| (r, m))).map_or("–".into(), |(r, m)| format!("{r:.2} (golden tickets: {} passed, {} failed)", m.tickets_passed, m.tickets_failed))}
                </dd></div>
                <div><dt>"Probation"</dt><dd data-testid="scout-probation" data-value=move || me().and_then(|m| m.probation).map_or(String::new(), |p| p.to_string())>
                    {move || me().and_then(|m| m.probation.map(|p| (p, m.held_credits))).map_or("–".into(), |(p, held)| if p {
                        format!("on probation: every job is checked, {held} credits held until you pass")
                    } else {
                        "passed".to_string()
                    })}
                </dd></div>
                <div><dt>"Ban"</dt><dd data-testid="scout-ban">{move || me().and_then(|m| m.banned_until).map_or("none".into(), |t| format!("banned until {}", format::unix_time(t)))}</dd></div>
            </dl>
            <p class="fineprint">"Every drafted token the Oracle accepts earns one credit, kept by the Oracle under this browser's Scout key; each token of your own answers spends one. Credits cannot be moved to anyone else. Some jobs are checked against the reference draft model (golden tickets); a new Scout is checked on every job until it has passed ten in a row."</p>
        </section>
    }
}
