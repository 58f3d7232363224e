//! Secrets at rest: the master key file, sealing and opening values with XChaCha20-Poly1305,
//! and the keyed hash that keeps bot tokens unique without storing them in clear.
//!
//! A leaf: the panel store, the control plane and the operators' service use it; it uses
//! only the other leaves.
//!
//! **The key file** (`BOTVISOR_MASTER_KEY_FILE`, settings `secrets.master_key_file`, default
//! [`DEFAULT_KEY_FILE`]) holds one key per line as 64 hex digits; `#` lines are comments. The
//! first key is the *current* one (everything is sealed with it); any further key is an older
//! one still accepted for opening — that is how `botvisor keys rotate` keeps a rotation that
//! crashed half-way readable until it is finished. The file must not be readable by group or
//! others (mode 0600); [`Keyring::load`] refuses it otherwise.
//!
//! **A sealed value** is `[1, key id (4 bytes), nonce (24 bytes), ciphertext + tag]`. The key
//! id says which key sealed it; the associated data binds it to where it belongs (a bot's
//! token to the bot id, a secret to the bot id and its name: [`token_aad`], [`secret_aad`]),
//! so a sealed value copied to another row does not open. Encryption and hashing use two
//! different keys derived from the master key (HMAC-SHA256 with fixed labels).
//!
//! Proved by `crypto::tests` (round trip, wrong key, tampering, moved rows, file rules).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretBox, SecretString};

/// Where the master key lives unless the environment or the settings say otherwise.
pub const DEFAULT_KEY_FILE: &str = "/etc/botvisor/master.key";
/// The environment variable naming the master key file.
pub const KEY_FILE_ENV: &str = "BOTVISOR_MASTER_KEY_FILE";
/// Length of a master key in bytes.
pub const KEY_LEN: usize = 32;
/// Format version of a sealed value (its first byte).
const FORMAT: u8 = 1;
/// Length of an XChaCha20 nonce: random nonces of this size never collide in practice.
const NONCE_LEN: usize = 24;
/// Bytes before the ciphertext: format, key id, nonce.
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
/// Length of the Poly1305 tag.
const TAG_LEN: usize = 16;

/// Why a key could not be loaded or created, or a value could not be opened. Messages never
/// contain key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The key file does not exist.
    #[error(
        "master key file {} does not exist: create it with `botvisor keys init` (or point \
         BOTVISOR_MASTER_KEY_FILE / secrets.master_key_file at yours)",
        path.display()
    )]
    Missing {
        /// The file looked for.
        path: PathBuf,
    },
    /// The key file could not be read.
    #[error("cannot read the master key file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key file is readable by other users.
    #[error(
        "master key file {} has mode {mode:04o}; it must be readable by its owner only \
         (chmod 600 {})",
        path.display(), path.display()
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file's content is not a key.
    #[error("master key file {} is not a botvisor master key: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the content).
        reason: String,
    },
    /// `keys init` found a key already there.
    #[error(
        "master key file {} already exists; botvisor never overwrites a key (everything sealed \
         with it would be lost) — use `botvisor keys rotate` to change it",
        path.display()
    )]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The key file could not be written.
    #[error("cannot write the master key file {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A value was sealed with a key the key file does not hold.
    #[error(
        "a secret in the panel was sealed with master key {key_id}, which is not in {}: this \
         is not the key the panel's secrets were sealed with",
        path.display()
    )]
    UnknownKey {
        /// The id of the key that sealed it (not secret).
        key_id: String,
        /// The key file.
        path: PathBuf,
    },
    /// The value is not a sealed value of this format.
    #[error("a sealed value is malformed ({0})")]
    Format(&'static str),
    /// Authentication failed: the value was altered, or belongs to another row.
    #[error("a sealed value failed authentication: it was altered or belongs to another row")]
    Tampered,
    /// The system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// The id of a key: the first 4 bytes of a keyed hash of it (reveals nothing about the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 4]);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// One master key with the keys derived from it. `Debug` shows only its id.
pub struct MasterKey {
    id: KeyId,
    raw: SecretBox<[u8; KEY_LEN]>,
    cipher: XChaCha20Poly1305,
    hash: hmac::Key,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

fn derive(master: &[u8; KEY_LEN], label: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, master), label)
}

impl MasterKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let seal = derive(&bytes, b"botvisor seal key v1");
        let hash = derive(&bytes, b"botvisor token hash key v1");
        let id = derive(&bytes, b"botvisor key id v1");
        let mut key_id = [0u8; 4];
        key_id.copy_from_slice(&id.as_ref()[..4]);
        Self {
            id: KeyId(key_id),
            cipher: XChaCha20Poly1305::new(&Key::from(
                <[u8; KEY_LEN]>::try_from(seal.as_ref()).expect("HMAC-SHA256 gives 32 bytes"),
            )),
            hash: hmac::Key::new(hmac::HMAC_SHA256, hash.as_ref()),
            raw: SecretBox::new(Box::new(bytes)),
        }
    }

    /// A new random key.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| CryptoError::Random)?;
        Ok(Self::from_bytes(bytes))
    }

    /// Reads one key from its 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, &'static str> {
        let text = text.trim();
        if text.len() != KEY_LEN * 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("a key line must be 64 hex digits");
        }
        let mut bytes = [0u8; KEY_LEN];
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).map_err(|_| "a key line must be hex digits")?;
            bytes[i] = u8::from_str_radix(hex, 16).map_err(|_| "a key line must be hex digits")?;
        }
        Ok(Self::from_bytes(bytes))
    }

    fn to_hex(&self) -> String {
        self.raw
            .expose_secret()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Seals `plaintext` bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| CryptoError::Random)?;
        let body = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::Format("plaintext too long"))?;
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.push(FORMAT);
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens a value this key sealed with the same `aad`.
    fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce: [u8; NONCE_LEN] = sealed[5..HEADER_LEN]
            .try_into()
            .map_err(|_| CryptoError::Format("too short"))?;
        self.cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &sealed[HEADER_LEN..],
                    aad,
                },
            )
            .map_err(|_| CryptoError::Tampered)
    }

    /// The keyed hash of a token (HMAC-SHA256 under a key derived from this master key): equal
    /// tokens give equal hashes, so a unique index on it keeps tokens unique.
    pub fn token_hash(&self, token: &str) -> Vec<u8> {
        hmac::sign(&self.hash, token.as_bytes()).as_ref().to_vec()
    }
}

/// The id of the key that sealed `sealed`, if it has the sealed format.
pub fn sealed_key_id(sealed: &[u8]) -> Result<KeyId, CryptoError> {
    if sealed.len() < HEADER_LEN + TAG_LEN {
        return Err(CryptoError::Format("too short"));
    }
    if sealed[0] != FORMAT {
        return Err(CryptoError::Format("unknown format version"));
    }
    let mut id = [0u8; 4];
    id.copy_from_slice(&sealed[1..5]);
    Ok(KeyId(id))
}

/// Associated data of a bot's sealed token: the bot id.
pub fn token_aad(bot_id: i64) -> Vec<u8> {
    format!("botvisor token\0{bot_id}").into_bytes()
}

/// Associated data of a bot's sealed secret: the bot id and the secret's name.
pub fn secret_aad(bot_id: i64, name: &str) -> Vec<u8> {
    format!("botvisor secret\0{bot_id}\0{name}").into_bytes()
}

/// The keys of the key file: the current one first, then older ones still accepted.
#[derive(Debug)]
struct Keys {
    keys: Vec<Arc<MasterKey>>,
}

/// The master keys from the key file, shared by everything that seals or opens.
///
/// A value sealed with a key the ring does not hold makes it re-read the file once (a
/// `keys rotate` run by another process may have added it), so a running daemon follows a
/// rotation without a restart.
#[derive(Debug)]
pub struct Keyring {
    path: PathBuf,
    keys: RwLock<Keys>,
}

impl Keyring {
    /// Loads the key file at `path` (checked: exists, mode 0600 or stricter, one key or more).
    pub fn load(path: &Path) -> Result<Self, CryptoError> {
        Ok(Self {
            path: path.to_owned(),
            keys: RwLock::new(read_key_file(path)?),
        })
    }

    /// A ring over keys held in memory only (tests); `path` is reported in errors.
    pub fn from_keys(path: &Path, keys: Vec<MasterKey>) -> Self {
        assert!(!keys.is_empty(), "a keyring needs at least one key");
        Self {
            path: path.to_owned(),
            keys: RwLock::new(Keys {
                keys: keys.into_iter().map(Arc::new).collect(),
            }),
        }
    }

    /// The key file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current key (the one everything is sealed with).
    pub fn current(&self) -> Arc<MasterKey> {
        Arc::clone(&self.read().keys[0])
    }

    /// The ids of every key held, the current one first.
    pub fn key_ids(&self) -> Vec<KeyId> {
        self.read().keys.iter().map(|k| k.id).collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    fn find(&self, id: KeyId) -> Option<Arc<MasterKey>> {
        self.read().keys.iter().find(|k| k.id == id).cloned()
    }

    /// Re-reads the key file (after a rotation by another process).
    pub fn reload(&self) -> Result<(), CryptoError> {
        let keys = read_key_file(&self.path)?;
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
        Ok(())
    }

    /// The key with `id`, re-reading the file once if it is not held.
    pub fn key(&self, id: KeyId) -> Result<Arc<MasterKey>, CryptoError> {
        if let Some(k) = self.find(id) {
            return Ok(k);
        }
        // A rotation by another process may have written a key we do not hold yet; a file
        // that cannot be read now keeps the keys we have.
        let _ = self.reload();
        self.find(id).ok_or_else(|| CryptoError::UnknownKey {
            key_id: id.to_string(),
            path: self.path.clone(),
        })
    }

    /// Seals `plaintext` with the current key, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.current().seal(aad, plaintext)
    }

    /// Opens a sealed value with whichever held key sealed it.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let id = sealed_key_id(sealed)?;
        self.key(id)?.open(aad, sealed)
    }

    /// Opens a sealed UTF-8 string (a token or a secret) into a [`SecretString`].
    pub fn open_string(&self, aad: &[u8], sealed: &[u8]) -> Result<SecretString, CryptoError> {
        let bytes = self.open(aad, sealed)?;
        String::from_utf8(bytes)
            .map(SecretString::from)
            .map_err(|_| CryptoError::Format("not UTF-8"))
    }

    /// The token's keyed hash under every held key, the current key's first (a token is
    /// registered if any of them is stored, even mid-rotation).
    pub fn token_hashes(&self, token: &str) -> Vec<Vec<u8>> {
        self.read()
            .keys
            .iter()
            .map(|k| k.token_hash(token))
            .collect()
    }
}

fn read_key_file(path: &Path) -> Result<Keys, CryptoError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CryptoError::Missing { path: path.into() });
        }
        Err(source) => {
            return Err(CryptoError::Read {
                path: path.into(),
                source,
            });
        }
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CryptoError::Permissions {
            path: path.into(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| CryptoError::Read {
        path: path.into(),
        source,
    })?;
    let malformed = |reason: String| CryptoError::Malformed {
        path: path.into(),
        reason,
    };
    let mut keys: Vec<Arc<MasterKey>> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key =
            MasterKey::from_hex(line).map_err(|r| malformed(format!("line {}: {r}", n + 1)))?;
        if keys.iter().all(|k| k.id != key.id) {
            keys.push(Arc::new(key));
        }
    }
    if keys.is_empty() {
        return Err(malformed("it holds no key".into()));
    }
    Ok(Keys { keys })
}

/// Writes `keys` (the current one first) to `path` with mode 0600, atomically: a temporary
/// file next to it is written, synced and renamed over it, so a crash leaves the old file or
/// the new one, never half of one.
pub fn write_key_file(path: &Path, keys: &[&MasterKey]) -> Result<(), CryptoError> {
    let fail = |source| CryptoError::Write {
        path: path.into(),
        source,
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let tmp = path.with_extension("key.tmp");
    let mut text = String::from(
        "# botvisor master key: the first key seals everything; any further key is an older one,\n\
         # accepted until `botvisor keys rotate` finishes. Keep this file secret (mode 0600) and\n\
         # back it up apart from the database backups.\n",
    );
    for k in keys {
        text.push_str(&k.to_hex());
        text.push('\n');
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(fail)?;
    file.write_all(text.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(fail)?;
    if let Some(dir) = dir
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Creates a new key file at `path` (its directory too); refuses to overwrite one. Returns the
/// new key's id.
pub fn init_key_file(path: &Path) -> Result<KeyId, CryptoError> {
    if path.exists() {
        return Err(CryptoError::Exists { path: path.into() });
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| CryptoError::Write {
            path: path.into(),
            source,
        })?;
    }
    let key = MasterKey::generate()?;
    write_key_file(path, &[&key])?;
    Ok(key.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> MasterKey {
        MasterKey::from_bytes([n; KEY_LEN])
    }

    #[test]
    fn sealed_values_open_only_with_their_key_and_place() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::from_keys(&dir.path().join("k"), vec![key(1)]);
        let sealed = ring.seal(&token_aad(7), b"123:secret").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(ring.open(&token_aad(7), &sealed).unwrap(), b"123:secret");
        // Moved to another bot or another secret name: refused.
        assert!(matches!(
            ring.open(&token_aad(8), &sealed),
            Err(CryptoError::Tampered)
        ));
        let s = ring.seal(&secret_aad(7, "openai"), b"sk").unwrap();
        assert!(ring.open(&secret_aad(7, "other"), &s).is_err());
        assert!(ring.open(&secret_aad(8, "openai"), &s).is_err());
        // Every byte flipped is noticed.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(ring.open(&token_aad(7), &bad).is_err(), "byte {i}");
        }
        assert!(ring.open(&token_aad(7), &sealed[..20]).is_err());
        // Another key does not open it and names the key it needs.
        let other = Keyring::from_keys(&dir.path().join("k"), vec![key(2)]);
        let err = other.open(&token_aad(7), &sealed).unwrap_err();
        assert!(matches!(err, CryptoError::UnknownKey { .. }), "{err}");
        // Two seals of one value differ (random nonces).
        assert_ne!(sealed, ring.seal(&token_aad(7), b"123:secret").unwrap());
    }

    #[test]
    fn token_hashes_are_keyed() {
        assert_eq!(key(1).token_hash("a"), key(1).token_hash("a"));
        assert_ne!(key(1).token_hash("a"), key(1).token_hash("b"));
        assert_ne!(key(1).token_hash("a"), key(2).token_hash("a"));
    }

    #[test]
    fn key_files_are_created_once_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/master.key");
        let id = init_key_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            init_key_file(&path),
            Err(CryptoError::Exists { .. })
        ));
        let ring = Keyring::load(&path).unwrap();
        assert_eq!(ring.key_ids(), [id]);
        let sealed = ring.seal(b"x", b"v").unwrap();
        // A rotation written by another process is picked up when a value needs it.
        let new = MasterKey::generate().unwrap();
        let new_id = new.id();
        let old = Keyring::load(&path).unwrap().current();
        write_key_file(&path, &[&new, &old]).unwrap();
        let by_new = Keyring::load(&path).unwrap().seal(b"x", b"w").unwrap();
        assert_eq!(ring.open(b"x", &by_new).unwrap(), b"w");
        assert_eq!(ring.key_ids(), [new_id, id]);
        assert_eq!(ring.open(b"x", &sealed).unwrap(), b"v");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Keyring::load(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert!(matches!(
            Keyring::load(&dir.path().join("none")),
            Err(CryptoError::Missing { .. })
        ));
        for bad in ["", "# only a comment\n", "abc\n", &"zz".repeat(32)] {
            let p = dir.path().join("bad.key");
            std::fs::write(&p, bad).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            let err = Keyring::load(&p).unwrap_err();
            assert!(
                matches!(err, CryptoError::Malformed { .. }),
                "{bad:?}: {err}"
            );
        }
    }
}
