//! The trust store: one redb file in the Oracle's state directory.
//!
//! It holds the operator keys (their sha256, never the key), every peer's record (credits now;
//! reputation, tickets and bans have their fields reserved for the golden-ticket work) and an
//! append-only credit journal. A balance and its journal entry change in one write
//! transaction, and redb commits are durable (fsync before the commit returns), so
//! `sum(journal) == balance` holds for every peer at every commit, and a `kill -9` at any
//! moment loses at most the transaction that had not returned.
//!
//! The file carries a schema version. A file written by a newer Shard, or one redb finds
//! damaged, is an error at start-up that says so; the store never resets a ledger it cannot
//! read.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// This code's schema. Bump it, and migrate in [`TrustStore::open`], when a record changes.
pub const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Operator key name → [`OperatorKey`].
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("operator_keys");
/// sha256 of an operator key → its name.
const KEY_HASHES: TableDefinition<&[u8], &str> = TableDefinition::new("operator_key_hashes");
/// Peer id bytes → [`PeerRecord`].
const PEERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("peers");
/// (peer id bytes, entry number) → [`JournalEntry`].
const JOURNAL: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("credit_journal");

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
    /// Reserved for reputation, golden tickets and bans.
    pub reputation: Option<f64>,
    pub tickets_passed: u64,
    pub tickets_failed: u64,
    pub banned_until: Option<u64>,
}

/// Why credits moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CreditReason {
    /// Drafted tokens the verifier accepted.
    AcceptedDrafts,
    /// Tokens generated for the peer's own Scout-tier request.
    ScoutRequest,
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
                Some(_) => {}
            }
            // Create every table, so read transactions find them.
            txn.open_table(KEYS).map_err(db_err)?;
            txn.open_table(KEY_HASHES).map_err(db_err)?;
            txn.open_table(PEERS).map_err(db_err)?;
            txn.open_table(JOURNAL).map_err(db_err)?;
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
                let delta = (*delta).max(-rec.credits);
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
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut peers = txn.open_table(PEERS).map_err(db_err)?;
            let current = peers.get(peer).map_err(db_err)?.map(|v| v.value().to_vec());
            let mut rec: PeerRecord = match current {
                Some(bytes) => decode(&bytes, || "a peer".into())?,
                None => PeerRecord { first_seen: unix_ms() / 1000, ..PeerRecord::default() },
            };
            rec.banned_until = until;
            peers.insert(peer, encode(&rec).as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
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
