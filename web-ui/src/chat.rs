//! The Leech view: chat with the Oracle, answers streamed as they are decoded.
//!
//! The conversation lives in localStorage ([`crate::history`]). While a request waits in the
//! Oracle's queue, the stream's `: queue {...}` comments give its place in line, the wait and
//! the tier, shown live until the first token arrives.

use leptos::html;
use leptos::prelude::*;
use leptos::task::spawn_local;
use web_sys::AbortController;

use crate::app::{Tab, UiState};
use crate::format;
use crate::history::{Conversation, Message, Role, STORAGE_KEY};
use crate::http;
use crate::oracle_api::{ChatChunk, QueueStatus};
use crate::scout::Scout;
use crate::sse::{SseItem, SseParser};
use shard_shared::trust::{TicketState, Tier};

/// Characters of history sent with a question (the default model's context is 512 tokens, at
/// about 3.9 characters a token, and the answer needs room too).
const HISTORY_CHARS: usize = 1200;
/// Turns of history sent: the default model was trained on conversations of up to five.
const HISTORY_TURNS: usize = 5;
const MAX_TOKENS: u32 = 160;

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok().flatten()
}

fn load_conversation() -> Conversation {
    Conversation::load(storage().and_then(|s| s.get_item(STORAGE_KEY).ok().flatten()).as_deref())
}

fn save_conversation(c: &Conversation) {
    if let Some(s) = storage() {
        let _ = s.set_item(STORAGE_KEY, &c.save());
    }
}

/// Why a stream ended early.
enum Interrupted {
    Stopped,
    Failed(String),
}

/// Streams one answer into the last (assistant) message.
async fn stream_answer(
    conversation: RwSignal<Conversation>,
    queue: RwSignal<Option<QueueStatus>>,
    served_as: RwSignal<Option<Tier>>,
    auth: Option<String>,
    signal: web_sys::AbortSignal,
) -> Result<(), Interrupted> {
    let messages = conversation.with_untracked(|c| {
        let mut c = c.clone();
        c.messages.pop(); // the empty answer being written
        c.request_messages(HISTORY_CHARS, HISTORY_TURNS)
    });
    let body = serde_json::json!({
        "messages": messages, "stream": true, "max_tokens": MAX_TOKENS, "temperature": 0.5, "top_p": 0.9,
    });
    let aborted = |e: String| if signal.aborted() { Interrupted::Stopped } else { Interrupted::Failed(e) };
    let mut reader = http::post_stream("/v1/chat/completions", &body, &signal, auth.as_deref()).await.map_err(aborted)?;
    let mut parser = SseParser::new();
    while let Some(chunk) = reader.next().await.map_err(aborted)? {
        let items = parser.push(&chunk).map_err(|_| Interrupted::Failed("the stream sent an endless line".into()))?;
        for item in items {
            match item {
                SseItem::Comment(c) => {
                    if let Some(status) = QueueStatus::from_comment(&c) {
                        served_as.set(Some(status.tier));
                        queue.set((status.state == TicketState::Waiting).then_some(status));
                    }
                }
                SseItem::Data(d) => match ChatChunk::parse(&d) {
                    Some(ChatChunk::Text(t)) => {
                        if !t.is_empty() {
                            queue.set(None);
                            conversation.update(|c| {
                                if let Some(m) = c.messages.last_mut() {
                                    m.content.push_str(&t);
                                }
                            });
                        }
                    }
                    Some(ChatChunk::Error(e)) => return Err(Interrupted::Failed(e)),
                    Some(ChatChunk::Done) => return Ok(()),
                    Some(ChatChunk::Finished { .. }) | None => {}
                },
            }
        }
    }
    Ok(())
}

#[component]
pub fn ChatView() -> impl IntoView {
    let ui = expect_context::<UiState>();
    let scout = expect_context::<Scout>();
    let conversation = RwSignal::new(load_conversation());
    let draft = RwSignal::new(String::new());
    let streaming = RwSignal::new(false);
    let queue = RwSignal::new(None::<QueueStatus>);
    // The tier the last answer was served in (from its queue updates).
    let served_as = RwSignal::new(None::<Tier>);
    let abort = StoredValue::new_local(None::<AbortController>);
    let log_ref = NodeRef::<html::Div>::new();

    // Keep the newest text in view.
    Effect::new(move |_| {
        conversation.track();
        if let Some(log) = log_ref.get() {
            log.set_scroll_top(log.scroll_height());
        }
    });

    // Asks for an answer to the conversation as it stands (ending with the user's turn).
    let ask = move || {
        conversation.update(|c| c.messages.push(Message { role: Role::Assistant, content: String::new(), note: None }));
        streaming.set(true);
        spawn_local(async move {
            let controller = AbortController::new().ok();
            abort.set_value(controller.clone());
            let Some(controller) = controller else { return };
            let result = stream_answer(conversation, queue, served_as, ui.proof(), controller.signal()).await;
            queue.set(None);
            conversation.update(|c| {
                if let Some(m) = c.messages.last_mut() {
                    m.note = match result {
                        Ok(()) => None,
                        Err(Interrupted::Stopped) => Some("stopped".into()),
                        Err(Interrupted::Failed(e)) => Some(format!("error: {e}")),
                    };
                }
            });
            streaming.set(false);
            abort.set_value(None);
            conversation.with_untracked(save_conversation);
        });
    };

    let send = move || {
        let text = draft.get_untracked().trim().to_string();
        if text.is_empty() || streaming.get_untracked() {
            return;
        }
        draft.set(String::new());
        conversation.update(|c| c.messages.push(Message { role: Role::User, content: text, note: None }));
        conversation.with_untracked(save_conversation);
        ask();
    };
    let stop = move || {
        abort.with_value(|a| {
            if let Some(a) = a {
                a.abort();
            }
        })
    };
    let regenerate = move || {
        if streaming.get_untracked() {
            return;
        }
        let mut dropped = false;
        conversation.update(|c| dropped = c.drop_last_answer());
        if dropped || conversation.with_untracked(|c| c.messages.last().is_some_and(|m| m.role == Role::User)) {
            ask();
        }
    };
    let clear = move || {
        if !streaming.get_untracked() {
            conversation.set(Conversation::default());
            conversation.with_untracked(save_conversation);
        }
    };

    let messages = move || {
        conversation.with(|c| {
            c.messages
                .iter()
                .map(|m| {
                    let (class, who) = match m.role {
                        Role::User => ("msg user", "You"),
                        Role::Assistant => ("msg assistant", "Shard"),
                    };
                    let note = m.note.clone();
                    view! {
                        <article class=class data-testid=if m.role == Role::User { "msg-user" } else { "msg-assistant" }>
                            <h3 class="who">{who}</h3>
                            <p class="text">{m.content.clone()}</p>
                            {note.map(|n| view! { <p class="note">{n}</p> })}
                        </article>
                    }
                })
                .collect_view()
        })
    };

    view! {
        <section class="panel chat" aria-labelledby="chat-title">
            <h2 id="chat-title" class="visually-hidden">"Chat"</h2>
            <div class="log" node_ref=log_ref role="log" aria-live="polite" aria-relevant="additions" data-testid="chat-log">
                <Show when=move || conversation.with(|c| c.messages.is_empty())>
                    <p class="empty">"Ask the Oracle anything. The default model is a tiny one trained on the Brown corpus and the King James Bible, so expect prose in that voice rather than facts."</p>
                    <p class="notice" data-testid="privacy-notice">"Before you write: to answer faster, the Oracle may send your conversation to volunteers' machines (Scouts), which read it to draft the next words. Do not share anything private here."</p>
                </Show>
                {messages}
            </div>
            {move || served_as.get().map(|t| view! {
                <p class="served" data-testid="served-tier" data-tier=t.as_str()>{format!("Served as: {}", tier_name(t))}</p>
            })}
            {move || queue.get().map(|q| view! {
                <p class="queue" role="status" data-testid="queue-status" data-ahead=q.ahead.to_string() data-wait-ms=q.est_wait_ms.to_string()>
                    {format!("In the queue: {} ahead of you · {} · tier: {}", q.ahead, format::wait(q.est_wait_ms), tier_name(q.tier))}
                </p>
            })}
            <form class="composer" on:submit=move |ev| { ev.prevent_default(); send(); }>
                <label for="prompt" class="visually-hidden">"Your message"</label>
                <textarea
                    id="prompt"
                    data-testid="chat-input"
                    rows="2"
                    placeholder="Type a message; Enter sends, Shift+Enter starts a new line"
                    prop:value=move || draft.get()
                    on:input=move |ev| draft.set(event_target_value(&ev))
                    on:keydown=move |ev: web_sys::KeyboardEvent| {
                        if ev.key() == "Enter" && !ev.shift_key() && !ev.is_composing() {
                            ev.prevent_default();
                            send();
                        }
                    }
                ></textarea>
                <div class="buttons">
                    <Show
                        when=move || streaming.get()
                        fallback=move || view! { <button type="submit" class="primary" data-testid="chat-send">"Send"</button> }
                    >
                        <button type="button" data-testid="chat-stop" on:click=move |_| stop()>"Stop"</button>
                    </Show>
                    <button type="button" data-testid="chat-regenerate" on:click=move |_| regenerate()
                        disabled=move || streaming.get() || conversation.with(|c| c.messages.is_empty())>"Regenerate"</button>
                    <button type="button" on:click=move |_| clear() disabled=move || streaming.get()>"Clear"</button>
                </div>
            </form>
            <Show when=move || !scout.active()>
                <aside class="offer" aria-labelledby="offer-title" data-testid="scout-offer">
                    <h3 id="offer-title">"Become a Scout"</h3>
                    <p>
                        "Lend this tab's GPU: Scout mode downloads a "
                        {move || format::bytes(scout.model_bytes.get().max(6_105_856))}
                        " draft model once, runs it on WebGPU (or on your CPU where WebGPU is missing), and drafts tokens that the Oracle checks. "
                        "Answers get faster for everyone, and every drafted token the Oracle accepts earns this browser a credit. "
                        "Credits put your own chats in the Scout tier, served ahead of anonymous ones (one credit per token of the answer)."
                    </p>
                    <button class="primary" data-testid="become-scout" on:click=move |_| { scout.start(); ui.tab.set(Tab::Scout); }>"Become a Scout"</button>
                </aside>
            </Show>
        </section>
    }
}

fn tier_name(tier: Tier) -> &'static str {
    match tier {
        Tier::Oracle => "Oracle (operator)",
        Tier::Scout => "Scout",
        Tier::Leech => "Leech (anonymous)",
    }
}
