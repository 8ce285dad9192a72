//! The app's frame: a header with the three views (Chat, Scout, Network) as tabs, the state
//! they share, and the poll of `/api/swarm` that feeds the network view and the Scout's
//! dashboard.

use std::time::Duration;

use leptos::prelude::*;
use leptos::task::spawn_local;

use crate::chat::ChatView;
use crate::network::{NetworkView, HISTORY};
use crate::oracle_api::{Me, Swarm};
use crate::scout::{Scout, ScoutView};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Chat,
    Scout,
    Network,
}

impl Tab {
    fn label(self) -> &'static str {
        match self {
            Tab::Chat => "Chat",
            Tab::Scout => "Scout",
            Tab::Network => "Network",
        }
    }
}

/// State the views share.
#[derive(Clone, Copy)]
pub struct UiState {
    pub tab: RwSignal<Tab>,
    pub swarm: RwSignal<Option<Swarm>>,
    pub swarm_error: RwSignal<Option<String>>,
    pub tok_s_history: RwSignal<Vec<f64>>,
    /// This browser's Scout key, once it has been a Scout ([`crate::identity`]).
    pub identity: RwSignal<Option<libp2p::identity::Keypair>>,
    /// The Oracle's peer id, which proofs are bound to.
    pub oracle_peer_id: RwSignal<Option<String>>,
    /// What the Oracle makes of this browser's credentials (`/api/me`).
    pub me: RwSignal<Option<Me>>,
}

impl UiState {
    /// A fresh proof of this browser's Scout identity for `Authorization: Bearer`, if it has one.
    pub fn proof(&self) -> Option<String> {
        let key = self.identity.get_untracked()?;
        let oracle = self.oracle_peer_id.get_untracked()?;
        Some(crate::identity::proof(&key, &oracle))
    }
}

const SWARM_POLL: Duration = Duration::from_secs(2);

async fn poll_swarm(ui: UiState, scout: Scout) {
    match crate::http::get_json::<Swarm>("/api/swarm").await {
        Ok(s) => {
            ui.tok_s_history.update(|h| {
                h.push(s.oracle.tokens_per_s);
                if h.len() > HISTORY {
                    h.remove(0);
                }
            });
            let me = scout.peer_id.get_untracked();
            scout.seen_by_oracle.set(me.and_then(|id| s.scouts.iter().find(|r| r.peer_id == id).cloned()));
            ui.swarm.set(Some(s));
            ui.swarm_error.set(None);
        }
        Err(e) => ui.swarm_error.set(Some(format!("The swarm is not visible: {e}"))),
    }
    if let Ok(me) = crate::http::get_json_as::<Me>("/api/me", ui.proof().as_deref()).await {
        ui.me.set(Some(me));
    }
}

#[component]
pub fn App() -> impl IntoView {
    let ui = UiState {
        tab: RwSignal::new(match crate::scout::query_param("view").as_deref() {
            Some("scout") => Tab::Scout,
            Some("network") => Tab::Network,
            _ => Tab::Chat,
        }),
        swarm: RwSignal::new(None),
        swarm_error: RwSignal::new(None),
        tok_s_history: RwSignal::new(vec![]),
        identity: RwSignal::new(None),
        oracle_peer_id: RwSignal::new(None),
        me: RwSignal::new(None),
    };
    // Who the Oracle is, and whether this browser has a Scout identity already.
    spawn_local(async move {
        if let Ok(v) = crate::http::get_json::<serde_json::Value>("/api/p2p/addrs").await {
            ui.oracle_peer_id.set(v["peer_id"].as_str().map(str::to_string));
        }
        match crate::identity::load().await {
            Ok(key) => ui.identity.set(key),
            Err(e) => web_sys::console::warn_1(&format!("no Scout identity: {e}").into()),
        }
    });
    let scout = Scout::new(ui.identity);
    provide_context(ui);
    provide_context(scout);
    let model = RwSignal::new(String::new());
    spawn_local(async move {
        if let Ok(v) = crate::http::get_json::<serde_json::Value>("/v1/models").await {
            model.set(v["data"][0]["id"].as_str().unwrap_or_default().to_string());
        }
    });
    spawn_local(poll_swarm(ui, scout));
    set_interval(move || spawn_local(poll_swarm(ui, scout)), SWARM_POLL);
    if crate::scout::query_param("scout").as_deref() == Some("1") {
        scout.start();
    }

    let tab_button = move |t: Tab| {
        view! {
            <button
                role="tab"
                id=format!("tab-{}", t.label().to_lowercase())
                data-testid=format!("tab-{}", t.label().to_lowercase())
                aria-selected=move || (ui.tab.get() == t).to_string()
                class:active=move || ui.tab.get() == t
                on:click=move |_| ui.tab.set(t)
            >
                {t.label()}
                {(t == Tab::Scout).then(|| view! {
                    <span class="dot" aria-hidden="true" class:on=move || scout.active()></span>
                })}
            </button>
        }
    };

    view! {
        <header class="top">
            <h1><span class="logo" aria-hidden="true">"◆"</span>" Shard"</h1>
            <nav role="tablist" aria-label="Views">
                {tab_button(Tab::Chat)}
                {tab_button(Tab::Scout)}
                {tab_button(Tab::Network)}
            </nav>
        </header>
        <main data-testid="app-ready">
            // The views stay mounted so a running chat or Scout survives a tab switch.
            <div role="tabpanel" aria-labelledby="tab-chat" hidden=move || ui.tab.get() != Tab::Chat><ChatView/></div>
            <div role="tabpanel" aria-labelledby="tab-scout" hidden=move || ui.tab.get() != Tab::Scout><ScoutView/></div>
            <div role="tabpanel" aria-labelledby="tab-network" hidden=move || ui.tab.get() != Tab::Network><NetworkView/></div>
        </main>
        <footer class="bottom">
            <span>{move || format!("Oracle model: {}", model.get())}</span>
            " · "
            <a href="/v1/models">"API"</a>
        </footer>
    }
}

/// Mounts the app on the page.
pub fn start() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
}
