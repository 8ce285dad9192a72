//! The trust store: one redb file in the Oracle's state directory.
//!
//! It holds the operator keys (their sha256, never the key), every peer's record (credits, the
//! credits held on probation, its [`Standing`] and ban), an append-only credit journal, and the
//! signed golden-ticket records. A balance and its journal entry change in one write
//! transaction, and redb commits are durable (fsync before the commit returns), so
//! `sum(journal) == balance` holds for every peer at every commit, and a `kill -9` at any
//! moment loses at most the transaction that had not returned.
//!
//! The file carries a schema version. A file written by a newer Shard, or one redb finds
//! damaged, is an error at start-up that says so; the store never resets a ledger it cannot
//! read. An older file is migrated in place, in one transaction, when it is opened.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::agreement::Agreement;
use super::standing::{Change, Observed, Standing, StandingRules, Verdict};
use super::ticket::SignedTicket;

/// This code's schema. Bump it, and migrate in [`TrustStore::open`], when a record changes.
/// 1: credits only. 2: standing, held credits and ticket records.
pub const SCHEMA_VERSION: u64 = 2;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Operator key name → [`OperatorKey`].
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("operator_keys");
/// sha256 of an operator key → its name.
const KEY_HASHES: TableDefinition<&[u8], &str> = TableDefinition::new("operator_key_hashes");
/// Peer id bytes → [`PeerRecord`].
const PEERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("peers");
/// (peer id bytes, entry number) → [`JournalEntry`].
const JOURNAL: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("credit_journal");
/// (peer id bytes, ticket number) → [`SignedTicket`].
const TICKETS: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("tickets");

/// Ticket records kept per peer; older ones are dropped (the counts in its standing stay).
pub const MAX_TICKETS_PER_PEER: u64 = 4096;

/// Key names: short, printable, no spaces.
const MAX_KEY_NAME: usize = 64;
/// Operator keys start with this, so they are told from Scout proofs at a glance.
pub const KEY_PREFIX: &str = "sk-shard-";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("trust store {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("trust store {path} has schema {found}, newer than this Shard's {SCHEMA_VERSION}; upgrade shard-oracle")]
    Newer { path: String, found: u64 },
    #[error("trust store: {0}")]
    Db(String),
    #[error("trust store record for {what} is damaged: {reason}")]
    Damaged { what: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorKey {
    pub sha256: [u8; 32],
    /// Unix seconds.
    pub created: u64,
    pub revoked: Option<u64>,
}

/// What the Oracle knows of a peer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// Spendable credits: the sum of the peer's journal.
    pub credits: i64,
    /// Credits earned and spent in all (for the dashboard).
    pub earned: u64,
    pub spent: u64,
    /// Entries in the peer's journal.
    pub journal_len: u64,
    /// Unix seconds of the first and latest record change.
    pub first_seen: u64,
    pub last_seen: u64,
    /// Unix seconds; a ban forfeits `held`.
    pub banned_until: Option<u64>,
    /// Credits earned on probation, not spendable and not in the journal until probation ends.
    pub held: i64,
    /// Ticket records written for the peer (the next one's number).
    pub tickets_recorded: u64,
    pub standing: Standing,
}

impl PeerRecord {
    pub fn banned_at(&self, now_secs: u64) -> bool {
        self.banned_until.is_some_and(|t| t > now_secs)
    }
}

/// Schema 1's record, read once to migrate.
#[derive(Serialize, Deserialize)]
struct PeerRecordV1 {
    credits: i64,
    earned: u64,
    spent: u64,
    journal_len: u64,
    first_seen: u64,
    last_seen: u64,
    _reputation: Option<f64>,
    _tickets_passed: u64,
    _tickets_failed: u64,
    banned_until: Option<u64>,
}

impl From<PeerRecordV1> for PeerRecord {
    /// Schema 1 had no tickets: a peer from then starts its standing now, on probation, and
    /// keeps its credits.
    fn from(v: PeerRecordV1) -> Self {
        PeerRecord {
            credits: v.credits,
            earned: v.earned,
            spent: v.spent,
            journal_len: v.journal_len,
            first_seen: v.first_seen,
            last_seen: v.last_seen,
            banned_until: v.banned_until,
            ..PeerRecord::default()
        }
    }
}

/// Why credits moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CreditReason {
    /// Drafted tokens the verifier accepted.
    AcceptedDrafts,
    /// Tokens generated for the peer's own Scout-tier request.
    ScoutRequest,
    /// Credits earned on probation, released when it ended.
    ProbationPassed,
    /// A ban takes every credit: a liar keeps nothing it earned.
    Forfeited,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub delta: i64,
    pub reason: CreditReason,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The balance after this entry.
    pub balance: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KeyInfo {
    pub name: String,
    pub created: u64,
    pub revoked: Option<u64>,
}

pub struct TrustStore {
    db: Database,
    path: PathBuf,
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: impl FnOnce() -> String) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Damaged { what: what(), reason: e.to_string() })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("records serialize")
}

impl TrustStore {
    /// Opens (or creates) the store at `path`, checking its integrity and schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let shown = path.display().to_string();
        let open_err = |reason: String| StoreError::Open { path: shown.clone(), reason };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(format!("cannot create its directory: {e}")))?;
        }
        // redb may panic on a file damaged outside it unless asked to check; the check plus a
        // caught panic make every damaged file an error.
        let opened = std::panic::catch_unwind(|| Database::builder().set_check_integrity_on_open(true).create(path));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(open_err(format!("{e} (the file is damaged or not a trust store; it was left as it is)"))),
            Err(_) => return Err(open_err("the file is damaged (it was left as it is)".into())),
        };
        let store = Self { db, path: path.to_path_buf() };
        let txn = store.db.begin_write().map_err(db_err)?;
        {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let found = meta.get("schema_version").map_err(db_err)?.map(|v| v.value());
            match found {
                None => {
                    let empty = txn.open_table(PEERS).map_err(db_err)?.is_empty().map_err(db_err)?
                        && txn.open_table(KEYS).map_err(db_err)?.is_empty().map_err(db_err)?;
                    if !empty {
                        return Err(open_err("it holds records but no schema version".into()));
                    }
                    meta.insert("schema_version", SCHEMA_VERSION).map_err(db_err)?;
                }
                Some(v) if v > SCHEMA_VERSION => return Err(StoreError::Newer { path: shown, found: v }),
                Some(1) => {
                    let mut peers = txn.open_table(PEERS).map_err(db_err)?;
                    let old: Vec<(Vec<u8>, Vec<u8>)> = peers
                        .iter()
                        .map_err(db_err)?
                        .map(|row| row.map(|(k, v)| (k.value().to_vec(), v.value().to_vec())))
                        .collect::<Result<_, _>>()
                        .map_err(db_err)?;
                    for (peer, bytes) in old {
                        let v1: PeerRecordV1 = decode(&bytes, || "a schema-1 peer".into())?;
                        peers.insert(peer.as_slice(), encode(&PeerRecord::from(v1)).as_slice()).map_err(db_err)?;
                    }
                    meta.insert("schema_version", SCHEMA_VERSION).map_err(db_err)?;
                    tracing::info!(path = %shown, "trust store migrated from schema 1 to {SCHEMA_VERSION}");
                }
                Some(_) => {}
            }
            // Create every table, so read transactions find them.
            txn.open_table(KEYS).map_err(db_err)?;
            txn.open_table(KEY_HASHES).map_err(db_err)?;
            txn.open_table(PEERS).map_err(db_err)?;
            txn.open_table(JOURNAL).map_err(db_err)?;
            txn.open_table(TICKETS).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates operator key `name` and returns the key; only its hash is stored.
    pub fn add_key(&self, name: &str) -> Result<String, StoreError> {
        if name.is_empty() || name.len() > MAX_KEY_NAME || !name.chars().all(|c| c.is_ascii_graphic()) {
            return Err(StoreError::Invalid(format!(
                "a key name is 1 to {MAX_KEY_NAME} printable characters without spaces, not {name:?}"
            )));
        }
        let secret: [u8; 32] = rand08::random();
        let key = format!("{KEY_PREFIX}{}", shard_shared::trust::hex(&secret));
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut keys = txn.open_table(KEYS).map_err(db_err)?;
            if keys.get(name).map_err(db_err)?.is_some() {
                return Err(StoreError::Invalid(format!("a key named {name:?} exists (revoke it first, or pick another name)")));
            }
            let record = OperatorKey { sha256: hash, created: unix_ms() / 1000, revoked: None };
            keys.insert(name, encode(&record).as_slice()).map_err(db_err)?;
            txn.open_table(KEY_HASHES).map_err(db_err)?.insert(hash.as_slice(), name).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(key)
    }

    pub fn list_keys(&self) -> Result<Vec<KeyInfo>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let keys = txn.open_table(KEYS).map_err(db_err)?;
        let mut out = vec![];
        for row in keys.iter().map_err(db_err)? {
            let (name, value) = row.map_err(db_err)?;
            let name = name.value().to_string();
            let k: OperatorKey = decode(value.value(), || format!("key {name}"))?;
            out.push(KeyInfo { name, created: k.created, revoked: k.revoked });
        }
        Ok(out)
    }

    /// Revokes key `name`; false if there is no such live key.
    pub fn revoke_key(&self, name: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let revoked = {
            let mut keys = txn.open_table(KEYS).map_err(db_err)?;
            let current = keys.get(name).map_err(db_err)?.map(|v| v.value().to_vec());
            match current {
                None => false,
                Some(bytes) => {
                    let mut k: OperatorKey = decode(&bytes, || format!("key {name}"))?;
                    if k.revoked.is_some() {
                        false
                    } else {
                        k.revoked = Some(unix_ms() / 1000);
                        keys.insert(name, encode(&k).as_slice()).map_err(db_err)?;
                        true
                    }
                }
            }
        };
        txn.commit().map_err(db_err)?;
        Ok(revoked)
    }

    /// Whether any operator key exists (revoked or not): once one does, every credential sent
    /// must be valid.
    pub fn has_keys(&self) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let keys = txn.open_table(KEYS).map_err(db_err)?;
        Ok(!keys.is_empty().map_err(db_err)?)
    }

    /// The name of the live operator key `key`, if it is one.
    pub fn check_key(&self, key: &str) -> Result<Option<String>, StoreError> {
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let txn = self.db.begin_read().map_err(db_err)?;
        let Some(name) =
            txn.open_table(KEY_HASHES).map_err(db_err)?.get(hash.as_slice()).map_err(db_err)?.map(|v| v.value().to_string())
        else {
            return Ok(None);
        };
        let keys = txn.open_table(KEYS).map_err(db_err)?;
        let Some(value) = keys.get(name.as_str()).map_err(db_err)? else { return Ok(None) };
        let k: OperatorKey = decode(value.value(), || format!("key {name}"))?;
        Ok((k.sha256 == hash && k.revoked.is_none()).then_some(name))
    }

    /// A peer's record, if the Oracle has one.
    pub fn peer(&self, peer: &[u8]) -> Result<Option<PeerRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let peers = txn.open_table(PEERS).map_err(db_err)?;
        match peers.get(peer).map_err(db_err)? {
            None => Ok(None),
            Some(v) => decode(v.value(), || "a peer".into()).map(Some),
        }
    }

    /// Applies credit changes, each with its journal entry, in one transaction; returns the
    /// balances after. A debit never takes a balance below zero (it is cut to what is there).
    /// Accepted drafts of a peer on probation are held, not credited; a banned peer earns none.
    pub fn apply(&self, changes: &[(Vec<u8>, i64, CreditReason)]) -> Result<Vec<i64>, StoreError> {
        let now = unix_ms();
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut balances = vec![];
        {
            let mut peers = txn.open_table(PEERS).map_err(db_err)?;
            let mut journal = txn.open_table(JOURNAL).map_err(db_err)?;
            for (peer, delta, reason) in changes {
                let current = peers.get(peer.as_slice()).map_err(db_err)?.map(|v| v.value().to_vec());
                let mut rec: PeerRecord = match current {
                    Some(bytes) => decode(&bytes, || "a peer".into())?,
                    None => PeerRecord { first_seen: now / 1000, ..PeerRecord::default() },
                };
                let mut delta = (*delta).max(-rec.credits);
                if *reason == CreditReason::AcceptedDrafts && delta > 0 {
                    if rec.banned_at(now / 1000) {
                        delta = 0;
                    } else if rec.standing.probation {
                        rec.held = rec.held.saturating_add(delta);
                        delta = 0;
                    }
                }
                if delta != 0 {
                    rec.credits += delta;
                    if delta > 0 {
                        rec.earned += delta as u64;
                    } else {
                        rec.spent += delta.unsigned_abs();
                    }
                    let entry = JournalEntry { delta, reason: *reason, at_ms: now, balance: rec.credits };
                    journal.insert((peer.as_slice(), rec.journal_len), encode(&entry).as_slice()).map_err(db_err)?;
                    rec.journal_len += 1;
                }
                rec.last_seen = now / 1000;
                peers.insert(peer.as_slice(), encode(&rec).as_slice()).map_err(db_err)?;
                balances.push(rec.credits);
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(balances)
    }

    /// Bans `peer` until `until` (unix seconds; `None` lifts a ban), creating its record if
    /// need be.
    pub fn set_ban(&self, peer: &[u8], until: Option<u64>) -> Result<(), StoreError> {
        self.update_peer(peer, |rec| rec.banned_until = until)
    }

    /// Changes `peer`'s record (created if need be) in one transaction. Not for credits: those
    /// move through [`TrustStore::apply`], with their journal.
    pub fn update_peer(&self, peer: &[u8], change: impl FnOnce(&mut PeerRecord)) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut peers = txn.open_table(PEERS).map_err(db_err)?;
            let current = peers.get(peer).map_err(db_err)?.map(|v| v.value().to_vec());
            let mut rec: PeerRecord = match current {
                Some(bytes) => decode(&bytes, || "a peer".into())?,
                None => PeerRecord { first_seen: unix_ms() / 1000, ..PeerRecord::default() },
            };
            let credits = rec.credits;
            change(&mut rec);
            rec.credits = credits;
            peers.insert(peer, encode(&rec).as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Stores a signed ticket for `peer` and takes its result into the peer's standing, in one
    /// transaction: probation's end releases the held credits (with a journal entry), a ban
    /// forfeits them and every credit left (with a journal entry). Returns the verdict, what
    /// changed, and the record after.
    pub fn record_ticket(
        &self,
        peer: &[u8],
        ticket: &SignedTicket,
        agreement: &Agreement,
        observed: &Observed,
        rules: &StandingRules,
    ) -> Result<(Verdict, Change, PeerRecord), StoreError> {
        let now_ms = unix_ms();
        let now = now_ms / 1000;
        let txn = self.db.begin_write().map_err(db_err)?;
        let out = {
            let mut peers = txn.open_table(PEERS).map_err(db_err)?;
            let current = peers.get(peer).map_err(db_err)?.map(|v| v.value().to_vec());
            let mut rec: PeerRecord = match current {
                Some(bytes) => decode(&bytes, || "a peer".into())?,
                None => PeerRecord { first_seen: now, ..PeerRecord::default() },
            };
            let (verdict, change) = rec.standing.record(agreement, observed, now, rules);
            match change {
                Change::None => {}
                Change::ProbationEnded => {
                    if rec.held > 0 {
                        let delta = std::mem::take(&mut rec.held);
                        rec.credits += delta;
                        rec.earned += delta as u64;
                        let entry =
                            JournalEntry { delta, reason: CreditReason::ProbationPassed, at_ms: now_ms, balance: rec.credits };
                        let mut journal = txn.open_table(JOURNAL).map_err(db_err)?;
                        journal.insert((peer, rec.journal_len), encode(&entry).as_slice()).map_err(db_err)?;
                        rec.journal_len += 1;
                    }
                }
                Change::Banned { until, .. } => {
                    rec.banned_until = Some(until);
                    rec.held = 0;
                    if rec.credits > 0 {
                        let delta = -rec.credits;
                        rec.credits = 0;
                        rec.spent += delta.unsigned_abs();
                        let entry = JournalEntry { delta, reason: CreditReason::Forfeited, at_ms: now_ms, balance: 0 };
                        let mut journal = txn.open_table(JOURNAL).map_err(db_err)?;
                        journal.insert((peer, rec.journal_len), encode(&entry).as_slice()).map_err(db_err)?;
                        rec.journal_len += 1;
                    }
                }
            }
            let mut tickets = txn.open_table(TICKETS).map_err(db_err)?;
            tickets.insert((peer, rec.tickets_recorded), encode(ticket).as_slice()).map_err(db_err)?;
            if rec.tickets_recorded >= MAX_TICKETS_PER_PEER {
                tickets.remove((peer, rec.tickets_recorded - MAX_TICKETS_PER_PEER)).map_err(db_err)?;
            }
            rec.tickets_recorded += 1;
            rec.last_seen = now;
            peers.insert(peer, encode(&rec).as_slice()).map_err(db_err)?;
            (verdict, change, rec)
        };
        txn.commit().map_err(db_err)?;
        Ok(out)
    }

    /// `peer`'s newest `limit` ticket records, oldest first.
    pub fn tickets(&self, peer: &[u8], limit: usize) -> Result<Vec<SignedTicket>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let tickets = txn.open_table(TICKETS).map_err(db_err)?;
        let mut out = vec![];
        for row in tickets.range((peer, 0u64)..=(peer, u64::MAX)).map_err(db_err)?.rev().take(limit) {
            let (_, v) = row.map_err(db_err)?;
            out.push(decode(v.value(), || "a ticket record".into())?);
        }
        out.reverse();
        Ok(out)
    }

    /// A peer's journal, oldest first.
    pub fn journal(&self, peer: &[u8]) -> Result<Vec<JournalEntry>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let journal = txn.open_table(JOURNAL).map_err(db_err)?;
        let mut out = vec![];
        for row in journal.range((peer, 0u64)..=(peer, u64::MAX)).map_err(db_err)? {
            let (_, v) = row.map_err(db_err)?;
            out.push(decode(v.value(), || "a journal entry".into())?);
        }
        Ok(out)
    }

    /// Every peer with its record.
    pub fn peers(&self) -> Result<Vec<(Vec<u8>, PeerRecord)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let peers = txn.open_table(PEERS).map_err(db_err)?;
        let mut out = vec![];
        for row in peers.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push((k.value().to_vec(), decode(v.value(), || "a peer".into())?));
        }
        Ok(out)
    }

    /// Checks the ledger: for every peer, its journal has `journal_len` entries summing to its
    /// balance. Returns the number of peers checked.
    pub fn check_ledger(&self) -> Result<usize, StoreError> {
        let peers = self.peers()?;
        for (peer, rec) in &peers {
            let journal = self.journal(peer)?;
            let sum: i64 = journal.iter().map(|e| e.delta).sum();
            if journal.len() as u64 != rec.journal_len || sum != rec.credits {
                return Err(StoreError::Damaged {
                    what: format!("peer {}", shard_shared::trust::hex(peer)),
                    reason: format!(
                        "balance {} but {} journal entries summing to {sum} (record says {})",
                        rec.credits,
                        journal.len(),
                        rec.journal_len
                    ),
                });
            }
        }
        Ok(peers.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shard-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("trust.redb")
    }

    #[test]
    fn keys_are_hashed_checked_and_revoked() {
        let s = TrustStore::open(&temp("keys")).unwrap();
        assert!(!s.has_keys().unwrap());
        let key = s.add_key("ci").unwrap();
        assert!(key.starts_with(KEY_PREFIX) && key.len() == KEY_PREFIX.len() + 64);
        assert!(s.add_key("ci").is_err(), "names are unique");
        assert!(s.add_key("has space").is_err());
        assert_eq!(s.check_key(&key).unwrap().as_deref(), Some("ci"));
        assert_eq!(s.check_key("sk-shard-wrong").unwrap(), None);
        let raw = std::fs::read(s.path()).unwrap();
        assert!(!raw.windows(key.len()).any(|w| w == key.as_bytes()), "the key itself is never stored");
        assert!(s.revoke_key("ci").unwrap());
        assert!(!s.revoke_key("ci").unwrap());
        assert_eq!(s.check_key(&key).unwrap(), None);
        assert!(s.has_keys().unwrap());
    }

    #[test]
    fn balances_follow_their_journal() {
        let s = TrustStore::open(&temp("ledger")).unwrap();
        let (a, b) = (b"peer-a".to_vec(), b"peer-b".to_vec());
        for p in [&a, &b] {
            s.update_peer(p, |r| r.standing.probation = false).unwrap();
        }
        assert_eq!(
            s.apply(&[(a.clone(), 5, CreditReason::AcceptedDrafts), (b.clone(), 3, CreditReason::AcceptedDrafts)]).unwrap(),
            [5, 3]
        );
        assert_eq!(s.apply(&[(a.clone(), -2, CreditReason::ScoutRequest)]).unwrap(), [3]);
        assert_eq!(s.apply(&[(b.clone(), -10, CreditReason::ScoutRequest)]).unwrap(), [0], "never below zero");
        let rec = s.peer(&a).unwrap().unwrap();
        assert_eq!((rec.credits, rec.earned, rec.spent, rec.journal_len), (3, 5, 2, 2));
        assert_eq!(s.journal(&b).unwrap().iter().map(|e| e.delta).collect::<Vec<_>>(), [3, -3]);
        assert_eq!(s.check_ledger().unwrap(), 2);
        drop(s);
        let again = TrustStore::open(&temp_keep("ledger")).unwrap();
        assert_eq!(again.peer(&a).unwrap().unwrap().credits, 3, "the ledger survives a reopen");
    }

    fn temp_keep(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("shard-store-{}-{name}", std::process::id())).join("trust.redb")
    }

    fn signed(n: u64) -> SignedTicket {
        SignedTicket { record: n.to_le_bytes().to_vec(), signature: vec![0; 64] }
    }

    /// Credits earned on probation are held until it ends, then released with a journal
    /// entry; a ban forfeits what is held, and a banned peer earns nothing.
    #[test]
    fn probation_holds_credits_and_a_ban_forfeits_them() {
        let s = TrustStore::open(&temp("probation")).unwrap();
        let rules = StandingRules::default();
        let (honest, liar) = (b"honest".to_vec(), b"liar".to_vec());
        let earn = |p: &Vec<u8>| s.apply(&[(p.clone(), 5, CreditReason::AcceptedDrafts)]).unwrap()[0];
        assert_eq!((earn(&honest), earn(&liar)), (0, 0));
        assert_eq!(s.peer(&honest).unwrap().unwrap().held, 5);
        let good = Agreement { positions: 8, counted: 8, agreed: 8, decisive: 0 };
        let bad = Agreement { positions: 8, counted: 8, agreed: 0, decisive: 8 };
        let obs = Observed::default();
        for n in 0..rules.probation_passes as u64 {
            let (v, c, rec) = s.record_ticket(&honest, &signed(n), &good, &obs, &rules).unwrap();
            assert_eq!(v, Verdict::Pass);
            if c == Change::ProbationEnded {
                assert_eq!((rec.credits, rec.held), (5, 0));
            }
        }
        assert_eq!(earn(&honest), 10, "trusted now: credits are spendable");
        assert_eq!(
            s.journal(&honest).unwrap().iter().map(|e| e.reason).collect::<Vec<_>>(),
            [CreditReason::ProbationPassed, CreditReason::AcceptedDrafts]
        );
        s.record_ticket(&liar, &signed(0), &bad, &obs, &rules).unwrap();
        // A liar that got past probation keeps nothing either.
        s.update_peer(&liar, |r| r.standing.probation = false).unwrap();
        assert_eq!(earn(&liar), 5);
        let (_, change, rec) = s.record_ticket(&liar, &signed(1), &bad, &obs, &rules).unwrap();
        assert!(matches!(change, Change::Banned { .. }), "{change:?}");
        assert_eq!((rec.held, rec.credits), (0, 0));
        assert_eq!(s.journal(&liar).unwrap().last().unwrap().reason, CreditReason::Forfeited);
        assert!(rec.banned_at(unix_ms() / 1000));
        assert_eq!(earn(&liar), 0);
        assert_eq!(s.peer(&liar).unwrap().unwrap().held, 0, "a banned peer earns nothing, held or not");
        assert_eq!(s.tickets(&liar, 10).unwrap(), [signed(0), signed(1)]);
        assert_eq!(s.tickets(&honest, 2).unwrap(), [signed(8), signed(9)], "the newest, oldest first");
        assert_eq!(s.check_ledger().unwrap(), 2);
    }

    /// A schema-1 file (credits only) is migrated when opened: balances and journals kept.
    #[test]
    fn schema_1_files_are_migrated() {
        let path = temp("v1");
        {
            let s = TrustStore::open(&path).unwrap();
            let txn = s.db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert("schema_version", 1).unwrap();
            let old = PeerRecordV1 {
                credits: 7,
                earned: 9,
                spent: 2,
                journal_len: 0,
                first_seen: 1,
                last_seen: 2,
                _reputation: None,
                _tickets_passed: 0,
                _tickets_failed: 0,
                banned_until: Some(5),
            };
            txn.open_table(PEERS).unwrap().insert(b"old".as_slice(), encode(&old).as_slice()).unwrap();
            txn.commit().unwrap();
        }
        let s = TrustStore::open(&path).unwrap();
        let rec = s.peer(b"old").unwrap().unwrap();
        assert_eq!((rec.credits, rec.earned, rec.spent, rec.banned_until, rec.held), (7, 9, 2, Some(5), 0));
        assert!(rec.standing.probation);
        let txn = s.db.begin_read().unwrap();
        assert_eq!(txn.open_table(META).unwrap().get("schema_version").unwrap().unwrap().value(), SCHEMA_VERSION);
    }

    #[test]
    fn newer_and_damaged_files_are_errors() {
        let path = temp("newer");
        {
            let s = TrustStore::open(&path).unwrap();
            let txn = s.db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert("schema_version", SCHEMA_VERSION + 1).unwrap();
            txn.commit().unwrap();
        }
        let e = TrustStore::open(&path).err().unwrap();
        assert!(matches!(e, StoreError::Newer { .. }), "{e}");
        let damaged = temp("damaged");
        std::fs::create_dir_all(damaged.parent().unwrap()).unwrap();
        let junk = b"this is not a redb file, just some bytes that happen to be here".repeat(100);
        std::fs::write(&damaged, &junk).unwrap();
        let e = TrustStore::open(&damaged).err().unwrap();
        assert!(e.to_string().contains("damaged"), "{e}");
        assert_eq!(std::fs::read(&damaged).unwrap(), junk, "a damaged file is left as it is");
    }
}
