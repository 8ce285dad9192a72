//! The network view: the Oracle's load and every peer, from `/api/swarm`, with a small chart
//! of the swarm's decoding speed over the last minutes.

use leptos::prelude::*;

use crate::app::UiState;
use crate::format;

/// Samples kept for the chart (one per poll).
pub const HISTORY: usize = 90;

/// An SVG polyline of `values`, scaled to the box.
fn sparkline(values: &[f64], w: f64, h: f64) -> String {
    let max = values.iter().copied().fold(1.0, f64::max);
    let step = w / (HISTORY.max(2) - 1) as f64;
    let offset = (HISTORY - values.len().min(HISTORY)) as f64 * step;
    values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", offset + i as f64 * step, h - v / max * (h - 2.0) - 1.0))
        .collect::<Vec<_>>()
        .join(" ")
}

#[component]
pub fn NetworkView() -> impl IntoView {
    let ui = expect_context::<UiState>();
    let swarm = ui.swarm;
    let oracle = move || swarm.with(|s| s.as_ref().map(|s| s.oracle.clone()));
    view! {
        <section class="panel network" aria-labelledby="net-title">
            <h2 id="net-title">"Network"</h2>
            {move || ui.swarm_error.get().map(|e| view! { <p class="notice" role="alert">{e}</p> })}
            {move || oracle().map(|o| view! {
                <dl class="stats">
                    <div><dt>"Oracle"</dt><dd title=o.peer_id.clone()>{format::short_peer(&o.peer_id)}</dd></div>
                    <div><dt>"Model"</dt><dd>{o.model.clone()}</dd></div>
                    <div><dt>"Queue"</dt><dd data-testid="net-queue">{format!("{} / {}", o.queue_depth, o.queue_capacity)}</dd></div>
                    <div><dt>"Swarm speed"</dt><dd>{format!("{} tok/s", format::rate(o.tokens_per_s))}</dd></div>
                    <div><dt>"Tokens served"</dt><dd>{o.tokens_generated}</dd></div>
                </dl>
            })}
            <figure class="chart">
                <svg viewBox="0 0 300 60" role="img" aria-label="Tokens per second over the last minutes" preserveAspectRatio="none">
                    <polyline fill="none" stroke="currentColor" stroke-width="1.5"
                        points=move || ui.tok_s_history.with(|h| sparkline(h, 300.0, 60.0))></polyline>
                </svg>
                <figcaption>"Oracle tokens per second, last "{HISTORY * 2}" s"</figcaption>
            </figure>
            <div class="table-wrap">
                <table data-testid="peer-table">
                    <caption>"Peers"</caption>
                    <thead><tr>
                        <th scope="col">"Peer"</th><th scope="col">"Role"</th><th scope="col">"Transport"</th>
                        <th scope="col">"Backend"</th><th scope="col">"Jobs"</th><th scope="col">"Accepted"</th>
                        <th scope="col">"Acceptance"</th><th scope="col">"Round trip"</th>
                    </tr></thead>
                    <tbody>
                        {move || swarm.with(|s| {
                            let Some(s) = s else { return Vec::<AnyView>::new() };
                            let scouts = s.scouts.iter().map(|p| view! {
                                <tr data-testid="peer-row">
                                    <td title=p.peer_id.clone()>{format::short_peer(&p.peer_id)}</td>
                                    <td>{p.role.clone()}</td><td>{p.transport.clone()}</td><td>{p.backend.clone()}</td>
                                    <td>{p.jobs_answered}</td><td>{p.tokens_accepted}</td>
                                    <td>{format::percent(p.acceptance_rate)}</td><td>{format!("{:.0} ms", p.latency_ms)}</td>
                                </tr>
                            }.into_any());
                            let others = s.peers.iter().map(|p| view! {
                                <tr data-testid="peer-row">
                                    <td title=p.peer_id.clone()>{format::short_peer(&p.peer_id)}</td>
                                    <td>{p.role.clone()}</td><td>{p.transport.clone()}</td>
                                    <td>"–"</td><td>"–"</td><td>"–"</td><td>"–"</td><td>"–"</td>
                                </tr>
                            }.into_any());
                            scouts.chain(others).collect::<Vec<_>>()
                        })}
                    </tbody>
                </table>
            </div>
        </section>
    }
}
