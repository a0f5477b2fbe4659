//! The agent's keys: new keys and salts from the OS CSPRNG, key files, and
//! `<state_dir>/keyring`, the persisted source of truth of a member's
//! keyring (seeded from the configured key on the first start, rewritten by
//! every keyring command, so a restarted member keeps a rotated key).
//!
//! The file is text, one key per line, the primary first:
//!
//! ```text
//! # swimlock keyring: written by the agent, changed with `swimlock keyring`.
//! primary BASE64
//! key BASE64
//! ```
//! It is created with mode 0600, and the agent refuses to start when it (or
//! a `--key-file`) can be read by the group or others. Error messages name
//! lines, never their contents.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::node::seal::{KEY_LEN, Key, Keyring};

/// Name of the keyring file in the state directory.
pub const FILE: &str = "keyring";

/// A new random key from the OS CSPRNG.
pub fn generate_key() -> io::Result<Key> {
    let mut bytes = [0u8; KEY_LEN];
    getrandom::fill(&mut bytes).map_err(io::Error::other)?;
    Ok(Key::from_bytes(bytes))
}

/// A new random nonce salt for this process, from the OS CSPRNG.
pub fn fresh_salt() -> io::Result<[u8; 16]> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(io::Error::other)?;
    Ok(salt)
}

fn invalid(path: &Path, what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", path.display()))
}

/// Refuses a secret file that the group or others can read.
fn check_private(path: &Path) -> io::Result<()> {
    let mode = fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} holds cluster keys but its mode is {:04o}: readable by group or others; \
                 run `chmod 600 {}`",
                path.display(),
                mode & 0o7777,
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Reads a key file (`--key-file`): one base64 key, mode 0600 or stricter.
pub fn read_key_file(path: &Path) -> io::Result<Key> {
    check_private(path)?;
    let text = fs::read_to_string(path)?;
    Key::from_base64(&text).map_err(|e| invalid(path, e.to_string()))
}

/// `<state_dir>/keyring`.
#[derive(Debug)]
pub struct KeyringStore {
    path: PathBuf,
}

impl KeyringStore {
    /// The keyring of the state directory `dir` (created if missing): the
    /// file's keys if it exists, else a ring of `configured` written to a
    /// new file, else `None` (no key anywhere).
    pub fn open(dir: &Path, configured: Option<&Key>) -> io::Result<(KeyringStore, Option<Keyring>)> {
        fs::create_dir_all(dir)?;
        let store = KeyringStore { path: dir.join(FILE) };
        match fs::symlink_metadata(&store.path) {
            Ok(_) => {
                let ring = store.read()?;
                Ok((store, Some(ring)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => match configured {
                Some(key) => {
                    let ring = Keyring::new(key.clone());
                    store.save(&ring)?;
                    Ok((store, Some(ring)))
                }
                None => Ok((store, None)),
            },
            Err(e) => Err(e),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> io::Result<Keyring> {
        check_private(&self.path)?;
        let text = fs::read_to_string(&self.path)?;
        let mut primary = None;
        let mut others = Vec::new();
        for (n, line) in text.lines().enumerate().map(|(n, l)| (n + 1, l.trim())) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (role, key) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let key = Key::from_base64(key).map_err(|e| invalid(&self.path, format!("line {n}: {e}")))?;
            match role {
                "primary" if primary.is_none() => primary = Some(key),
                "primary" => return Err(invalid(&self.path, format!("line {n}: a second primary key"))),
                "key" => others.push(key),
                _ => {
                    return Err(invalid(
                        &self.path,
                        format!("line {n}: expected `primary KEY` or `key KEY`"),
                    ));
                }
            }
        }
        let primary = primary.ok_or_else(|| invalid(&self.path, "no `primary KEY` line".to_string()))?;
        let mut ring = Keyring::new(primary);
        for key in others {
            ring.install(key).map_err(|e| invalid(&self.path, e.to_string()))?;
        }
        Ok(ring)
    }

    /// Saves `ring` durably: a temporary file created 0600, fsync, rename
    /// over the old one, fsync the directory. A crash leaves the old or the
    /// new keyring.
    pub fn save(&self, ring: &Keyring) -> io::Result<()> {
        let mut text =
            String::from("# swimlock keyring: written by the agent, changed with `swimlock keyring`.\n");
        for (i, key) in ring.keys().enumerate() {
            text.push_str(if i == 0 { "primary " } else { "key " });
            text.push_str(&key.to_base64());
            text.push('\n');
        }
        let tmp = self.path.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        match self.path.parent() {
            Some(dir) => File::open(dir)?.sync_all(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("swimlock-keyring-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn seeded_from_the_configured_key_then_the_file_wins() {
        let dir = scratch("seed");
        let first = generate_key().unwrap();
        let (_, none) = KeyringStore::open(&dir, None).unwrap();
        assert!(none.is_none(), "no file and no key: no keyring");
        let (store, ring) = KeyringStore::open(&dir, Some(&first)).unwrap();
        let mut ring = ring.unwrap();
        assert_eq!(fs::metadata(store.path()).unwrap().permissions().mode() & 0o777, 0o600);
        // A rotation is saved; a restart with the old configured key keeps it.
        let second = generate_key().unwrap();
        ring.install(second.clone()).unwrap();
        ring.use_key(second.id()).unwrap();
        store.save(&ring).unwrap();
        let (_, back) = KeyringStore::open(&dir, Some(&first)).unwrap();
        assert_eq!(back.unwrap(), ring);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn readable_or_broken_files_are_refused_without_showing_keys() {
        let dir = scratch("perm");
        let key = generate_key().unwrap();
        let (store, _) = KeyringStore::open(&dir, Some(&key)).unwrap();
        fs::set_permissions(store.path(), fs::Permissions::from_mode(0o644)).unwrap();
        let e = KeyringStore::open(&dir, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("chmod 600"), "{e}");
        fs::set_permissions(store.path(), fs::Permissions::from_mode(0o600)).unwrap();
        let b64 = key.to_base64();
        for text in [format!("primary {b64}\nprimary {b64}\n"), "key AAAA\n".into(), format!("key {b64}\n")] {
            fs::write(store.path(), &text).unwrap();
            let e = KeyringStore::open(&dir, None).unwrap_err();
            assert!(!e.to_string().contains(&b64[..20]), "{e}");
        }
        let file = dir.join("key");
        fs::write(&file, format!("{b64}\n")).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_key_file(&file).is_err());
        fs::set_permissions(&file, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read_key_file(&file).unwrap(), key);
        fs::remove_dir_all(&dir).unwrap();
    }
}
