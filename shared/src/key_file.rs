//! A libp2p identity kept in a file: an ed25519 key, so a node's peer id survives restarts.
//! The Oracle keeps its key this way (the addresses Scouts remember stay valid), and so does
//! the native Scout (its credits and standing are tied to its peer id).
//!
//! The one module of this crate that touches files: native builds with feature `p2p` only.

use std::path::Path;

use libp2p::identity::Keypair;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("writing {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{path} is not an ed25519 key file: {reason}")]
    Invalid { path: String, reason: String },
}

/// Loads the key at `path`, or creates it (readable by the owner only) on first run.
pub fn load_or_create(path: &Path) -> Result<Keypair, IdentityError> {
    let shown = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => {
            let key = Keypair::from_protobuf_encoding(&bytes)
                .map_err(|e| IdentityError::Invalid { path: shown.clone(), reason: e.to_string() })?;
            if key.key_type() != libp2p::identity::KeyType::Ed25519 {
                return Err(IdentityError::Invalid { path: shown, reason: format!("{:?} key", key.key_type()) });
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().expect("ed25519 keys encode");
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| IdentityError::Write { path: shown.clone(), source })?;
            }
            write_private(path, &bytes).map_err(|source| IdentityError::Write { path: shown, source })?;
            Ok(key)
        }
        Err(source) => Err(IdentityError::Read { path: shown, source }),
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_survives_a_restart_and_bad_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("shard-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("oracle.key");
        let a = load_or_create(&path).unwrap();
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        std::fs::write(&path, b"not a key").unwrap();
        assert!(matches!(load_or_create(&path), Err(IdentityError::Invalid { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
