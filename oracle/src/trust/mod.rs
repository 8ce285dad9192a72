//! Trust: who a request is from, what tier it is served in, and the credits Scouts earn.
//!
//! * [`store`]: the redb file (operator keys, peer records, the credit journal).
//! * [`auth`]: operator keys and Scout proofs in `Authorization: Bearer`.
//!
//! [`Trust`] ties them together. Tiers are Oracle (a live operator key) > Scout (a proven peer
//! in good standing with credits) > Leech (anyone else). Accepted draft tokens earn their
//! Scout credits; a Scout-tier request spends them per generated token; a Scout with none
//! left is served as a Leech. Credits earned while drafting are gathered in memory and
//! committed a few times a second (one fsync for many verifications); everything the API
//! shows is what is committed.

pub mod auth;
pub mod store;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use libp2p::PeerId;
use shard_shared::trust::Tier;

use auth::{AuthError, Credential, ProofVerifier};
use store::{CreditReason, PeerRecord, StoreError, TrustStore};

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

pub struct Trust {
    pub store: TrustStore,
    verifier: ProofVerifier,
    pub config: TrustConfig,
    /// Credits earned and not yet committed, per peer.
    pending: Mutex<HashMap<PeerId, i64>>,
}

impl Trust {
    /// Opens the store in `state_dir` for the Oracle whose peer id is `oracle_peer_id`.
    pub fn open(state_dir: &Path, oracle_peer_id: String, config: TrustConfig) -> Result<Self, StoreError> {
        Ok(Self {
            store: TrustStore::open(&state_dir.join("trust.redb"))?,
            verifier: ProofVerifier::new(oracle_peer_id),
            config,
            pending: Mutex::new(HashMap::new()),
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
                let tier =
                    if record.as_ref().is_some_and(|r| self.in_good_standing(r) && r.credits >= self.config.spend_per_token) {
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

    /// Credits of `peer`, committed.
    pub fn credits(&self, peer: &PeerId) -> i64 {
        self.store.peer(&peer.to_bytes()).ok().flatten().map_or(0, |r| r.credits)
    }
}
