//! Trust: who a request is from, what tier it is served in, and the credits Scouts earn.
//!
//! * [`store`]: the redb file (operator keys, peer records, the credit journal, tickets).
//! * [`auth`]: operator keys and Scout proofs in `Authorization: Bearer`.
//! * Golden tickets: [`checker`] re-drafts a random share of answered jobs with the reference
//!   draft model, [`agreement`] scores the Scout's answer against it, [`ticket`] signs the
//!   record, and [`standing`] turns results into probation, reputation and bans.
//!
//! [`Trust`] ties them together. Tiers are Oracle (a live operator key) > Scout (a proven peer
//! in good standing with credits) > Leech (anyone else). Accepted draft tokens earn their
//! Scout credits; a Scout-tier request spends them per generated token; a Scout with none
//! left is served as a Leech. Credits earned while drafting are gathered in memory and
//! committed a few times a second (one fsync for many verifications); everything the API
//! shows is what is committed.

pub mod agreement;
pub mod auth;
pub mod checker;
pub mod standing;
pub mod store;
pub mod ticket;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Mutex;

use libp2p::identity::Keypair;
use libp2p::PeerId;
use serde::Serialize;
use shard_shared::trust::Tier;

use agreement::Agreement;
use auth::{AuthError, Credential, ProofVerifier};
use checker::TicketJob;
use standing::{Change, StandingRules, Verdict};
use store::{CreditReason, PeerRecord, StoreError, TrustStore};
use ticket::{SignedTicket, TicketRecord};

/// Which requests' text may go to Scouts (they read the context they draft for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScoutText {
    /// No request is sent to Scouts.
    None,
    /// Scouts with a record in good standing that have earned credits before.
    Trusted,
    /// Any Scout holding the right draft model.
    Any,
}

#[derive(Debug, Clone)]
pub struct TrustConfig {
    /// Credits per drafted token the verifier accepts.
    pub earn_per_token: i64,
    /// Credits per token generated for a Scout-tier request.
    pub spend_per_token: i64,
    pub scout_text: ScoutText,
    /// Whether operator-key (Oracle tier) requests may be drafted by Scouts.
    pub oracle_requests_to_scouts: bool,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self { earn_per_token: 1, spend_per_token: 1, scout_text: ScoutText::Any, oracle_requests_to_scouts: false }
    }
}

/// A request's proven origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub tier: Tier,
    /// The proven Scout identity, whatever tier it earned.
    pub peer: Option<PeerId>,
    /// The operator key's name.
    pub key_name: Option<String>,
    /// The peer's record when it has one.
    pub record: Option<PeerRecord>,
}

impl Caller {
    pub fn anonymous() -> Self {
        Self { tier: Tier::Leech, peer: None, key_name: None, record: None }
    }
}

/// A peer's standing as the API shows it (`/api/trust/peers/{peer_id}`, `/api/swarm`, `/api/me`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PeerStanding {
    /// In [0, 1]; new identities start at the prior (0.5).
    pub reputation: f64,
    pub credits: i64,
    /// Earned on probation, released when it ends (forfeited by a ban).
    pub held_credits: i64,
    pub tickets_passed: u64,
    pub tickets_failed: u64,
    pub tickets_void: u64,
    /// Unix seconds; null when not banned.
    pub banned_until: Option<u64>,
    pub probation: bool,
    pub offences: u32,
    /// Share of this peer's answered jobs checked as tickets.
    pub ticket_rate: f64,
}

/// Counts of the golden-ticket machinery, for `/metrics`.
#[derive(Debug, Default)]
pub struct TicketStats {
    /// Answered jobs picked as tickets and queued for the checker.
    pub picked: AtomicU64,
    /// Picked while the checker's queue was full (not checked).
    pub dropped: AtomicU64,
    pub passed: AtomicU64,
    pub failed: AtomicU64,
    pub void: AtomicU64,
    pub bans: AtomicU64,
    /// Time spent in the reference model, in microseconds.
    pub check_micros: AtomicU64,
}

pub struct Trust {
    pub store: TrustStore,
    verifier: ProofVerifier,
    pub config: TrustConfig,
    pub rules: StandingRules,
    /// Signs ticket records: the Oracle's own key.
    key: Keypair,
    /// Credits earned and not yet committed, per peer.
    pending: Mutex<HashMap<PeerId, i64>>,
    /// The checker's queue, once it runs.
    checker: Mutex<Option<SyncSender<TicketJob>>>,
    pub tickets: TicketStats,
}

impl Trust {
    /// Opens the store in `state_dir` for the Oracle whose key is `key`.
    pub fn open(state_dir: &Path, key: Keypair, config: TrustConfig) -> Result<Self, StoreError> {
        Ok(Self {
            store: TrustStore::open(&state_dir.join("trust.redb"))?,
            verifier: ProofVerifier::new(key.public().to_peer_id().to_string()),
            config,
            rules: StandingRules::default(),
            key,
            pending: Mutex::new(HashMap::new()),
            checker: Mutex::new(None),
            tickets: TicketStats::default(),
        })
    }

    pub fn oracle_peer_id(&self) -> &str {
        self.verifier.oracle_peer_id()
    }

    /// Proves who sent a request from its `Authorization` header value.
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<Caller, AuthError> {
        let store_err = |e: StoreError| AuthError::Store(e.to_string());
        match auth::parse_header(header)? {
            Credential::None => Ok(Caller::anonymous()),
            Credential::Other => {
                if self.store.has_keys().map_err(store_err)? {
                    Err(AuthError::BadKey)
                } else {
                    Ok(Caller::anonymous())
                }
            }
            Credential::OperatorKey(key) => match self.store.check_key(&key).map_err(store_err)? {
                Some(name) => Ok(Caller { tier: Tier::Oracle, peer: None, key_name: Some(name), record: None }),
                None => Err(AuthError::BadKey),
            },
            Credential::Scout(proof) => {
                let peer = self.verifier.verify(&proof, store::unix_ms())?;
                let record = self.store.peer(&peer.to_bytes()).map_err(store_err)?;
                // Probation, a ban, low reputation or no credits: the Leech tier.
                let now = store::unix_ms() / 1000;
                let tier = if record.as_ref().is_some_and(|r| {
                    self.in_good_standing(r)
                        && !r.standing.probation
                        && r.standing.reputation(now, &self.rules) >= self.rules.tier_reputation
                        && r.credits >= self.config.spend_per_token
                }) {
                    Tier::Scout
                } else {
                    Tier::Leech
                };
                Ok(Caller { tier, peer: Some(peer), key_name: None, record })
            }
        }
    }

    /// Not banned now.
    pub fn in_good_standing(&self, record: &PeerRecord) -> bool {
        record.banned_until.is_none_or(|t| t <= store::unix_ms() / 1000)
    }

    /// Whether a Scout may be sent jobs: not banned, and allowed the text under `--scout-text`.
    pub fn may_draft(&self, peer: &PeerId) -> bool {
        let record = self.store.peer(&peer.to_bytes()).ok().flatten();
        record.as_ref().is_none_or(|r| self.in_good_standing(r)) && self.may_read_text(peer)
    }

    /// A peer's standing, as the API shows it.
    pub fn standing(&self, peer: &PeerId) -> PeerStanding {
        let r = self.store.peer(&peer.to_bytes()).ok().flatten().unwrap_or_default();
        self.standing_of(&r, None)
    }

    /// The API's view of a record (`acceptance`, when known, adjusts the ticket rate).
    pub fn standing_of(&self, r: &PeerRecord, acceptance: Option<f64>) -> PeerStanding {
        let now = store::unix_ms() / 1000;
        let st = &r.standing;
        PeerStanding {
            reputation: st.reputation(now, &self.rules),
            credits: r.credits,
            held_credits: r.held,
            tickets_passed: st.tickets_passed,
            tickets_failed: st.tickets_failed,
            tickets_void: st.tickets_void,
            banned_until: r.banned_until.filter(|&t| t > now),
            probation: st.probation,
            offences: st.offences,
            ticket_rate: if r.banned_at(now) { 0.0 } else { st.ticket_rate(acceptance, &self.rules) },
        }
    }

    /// Connects the ticket checker's queue (see [`checker::start`]).
    pub fn attach_checker(&self, queue: SyncSender<TicketJob>) {
        *self.checker.lock().unwrap_or_else(|e| e.into_inner()) = Some(queue);
    }

    /// Offers an answered job as a golden ticket. The choice is made now, after the answer,
    /// with a probability from the Scout's standing: nothing the Scout saw could tell it.
    pub fn offer_ticket(&self, job: TicketJob) {
        let Some(queue) = self.checker.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return };
        let record = self.store.peer(&job.peer.to_bytes()).ok().flatten().unwrap_or_default();
        if record.banned_at(store::unix_ms() / 1000) {
            return;
        }
        let rate = record.standing.ticket_rate(job.observed.acceptance, &self.rules);
        if rand08::random::<f64>() >= rate {
            return;
        }
        match queue.try_send(job) {
            Ok(()) => self.tickets.picked.fetch_add(1, Ordering::Relaxed),
            Err(TrySendError::Full(_)) => self.tickets.dropped.fetch_add(1, Ordering::Relaxed),
            Err(TrySendError::Disconnected(_)) => 0,
        };
    }

    /// Signs and stores a checked ticket, and applies its result to the Scout's standing.
    pub fn record_ticket(
        &self,
        job: &TicketJob,
        job_sha256: [u8; 32],
        reference: &[u32],
        agreement: Agreement,
    ) -> Result<(Verdict, Change), StoreError> {
        let record = TicketRecord {
            version: ticket::RECORD_VERSION,
            oracle: self.oracle_peer_id().to_string(),
            peer: job.peer.to_string(),
            job_id: job.job_id,
            job_sha256,
            answer_sha256: ticket::tokens_hash(&job.answer),
            reference_sha256: ticket::tokens_hash(reference),
            agreement,
            verdict: self.rules.verdict(&agreement),
            at_ms: store::unix_ms(),
        };
        let signed = SignedTicket::sign(&record, &self.key);
        let (verdict, change, _) =
            self.store.record_ticket(&job.peer.to_bytes(), &signed, &agreement, &job.observed, &self.rules)?;
        let counter = match verdict {
            Verdict::Pass => &self.tickets.passed,
            Verdict::Fail => &self.tickets.failed,
            Verdict::Void => &self.tickets.void,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        match change {
            Change::Banned { until, offence } => {
                self.tickets.bans.fetch_add(1, Ordering::Relaxed);
                self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&job.peer);
                tracing::warn!(peer = %job.peer, until, offence, "Scout banned: its golden tickets disagree with the reference draft model");
            }
            Change::ProbationEnded => tracing::info!(peer = %job.peer, "Scout passed probation"),
            Change::None => {}
        }
        Ok((verdict, change))
    }

    /// Whether a Scout may be sent request text, under `--scout-text`.
    pub fn may_read_text(&self, peer: &PeerId) -> bool {
        match self.config.scout_text {
            ScoutText::None => false,
            ScoutText::Any => true,
            ScoutText::Trusted => {
                self.store.peer(&peer.to_bytes()).ok().flatten().is_some_and(|r| self.in_good_standing(&r) && r.earned > 0)
            }
        }
    }

    /// Notes drafted tokens the verifier accepted from `peer` (committed by [`Trust::flush`]).
    pub fn earn(&self, peer: PeerId, accepted: usize) {
        if accepted == 0 || self.config.earn_per_token <= 0 {
            return;
        }
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()).entry(peer).or_default() +=
            accepted as i64 * self.config.earn_per_token;
    }

    /// Commits the credits earned since the last flush, in one transaction.
    pub fn flush(&self) -> Result<usize, StoreError> {
        let pending: Vec<(PeerId, i64)> =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner())).into_iter().collect();
        if pending.is_empty() {
            return Ok(0);
        }
        let changes: Vec<_> = pending.iter().map(|(p, d)| (p.to_bytes(), *d, CreditReason::AcceptedDrafts)).collect();
        if let Err(e) = self.store.apply(&changes) {
            // Put them back, to try again at the next flush.
            let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for (p, d) in pending {
                *map.entry(p).or_default() += d;
            }
            return Err(e);
        }
        Ok(changes.len())
    }

    /// Charges `peer` for `tokens` generated for its Scout-tier request; the new balance.
    pub fn spend(&self, peer: &PeerId, tokens: usize) -> Result<i64, StoreError> {
        let cost = (tokens as i64).saturating_mul(self.config.spend_per_token);
        Ok(self.store.apply(&[(peer.to_bytes(), -cost, CreditReason::ScoutRequest)])?[0])
    }
}
