//! The peers this periwire trusts, by name and fingerprint: the servers a client connects
//! to and the clients a server accepts. One line per peer, `NAME FINGERPRINT`, in the data
//! directory, like ssh's `known_hosts`.

use std::path::{Path, PathBuf};

use super::identity::Fingerprint;

/// File name of the trust store inside the data directory.
pub const TRUST_FILE: &str = "trusted";

/// Why the trust store could not be read, changed or written.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line of the file is not `NAME FINGERPRINT`.
    #[error("{path} line {line}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Its 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A name that is not one word of printable characters.
    #[error("{0:?} is not a peer name (one word, printable, at most 64 characters)")]
    BadName(String),
    /// `add` of a name that is taken by another fingerprint.
    #[error("{name} is already trusted as {fingerprint}; `periwire trust remove {name}` first")]
    NameTaken {
        /// The name.
        name: String,
        /// Its fingerprint.
        fingerprint: Fingerprint,
    },
    /// `remove` of a name that is not there.
    #[error("no trusted peer named {0}")]
    NoSuchName(String),
}

/// One trusted peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedPeer {
    /// What the user calls it: the name in allow lists and logs, or the host a client
    /// reaches a server by.
    pub name: String,
    /// Its pinned key.
    pub fingerprint: Fingerprint,
}

/// The trusted peers, as read from the data directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustStore {
    /// In file order.
    pub peers: Vec<TrustedPeer>,
}

/// Whether `name` can be a peer name: one word of printable ASCII, so a line stays
/// `NAME FINGERPRINT`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_graphic())
}

impl TrustStore {
    /// The store's file in data directory `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(TRUST_FILE)
    }

    /// Reads the store in `dir`; a missing file is an empty store.
    pub fn load(dir: &Path) -> Result<TrustStore, TrustError> {
        let path = Self::path(dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text).map_err(|(line, reason)| TrustError::Invalid {
                path,
                line,
                reason,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TrustStore::default()),
            Err(source) => Err(TrustError::Io { path, source }),
        }
    }

    /// Parses the file's text; an error gives the 1-based line and what is wrong.
    pub fn parse(text: &str) -> Result<TrustStore, (usize, String)> {
        let mut peers = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(name), Some(fingerprint), None) = (words.next(), words.next(), words.next())
            else {
                return Err((n + 1, "expected NAME FINGERPRINT".into()));
            };
            if !valid_name(name) {
                return Err((n + 1, format!("{name:?} is not a peer name")));
            }
            let fingerprint = fingerprint.parse().map_err(|e| (n + 1, e))?;
            peers.push(TrustedPeer {
                name: name.to_owned(),
                fingerprint,
            });
        }
        Ok(TrustStore { peers })
    }

    /// Writes the store into `dir` (readable by the owner only), replacing the file whole.
    pub fn save(&self, dir: &Path) -> Result<(), TrustError> {
        let path = Self::path(dir);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| TrustError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut text = String::from("# periwire: trusted peers, NAME FINGERPRINT\n");
        for p in &self.peers {
            text.push_str(&format!("{} {}\n", p.name, p.fingerprint));
        }
        super::write_private(&path, &text).map_err(io(&path))
    }

    /// The peer with this fingerprint.
    pub fn by_fingerprint(&self, fingerprint: &Fingerprint) -> Option<&TrustedPeer> {
        self.peers.iter().find(|p| p.fingerprint == *fingerprint)
    }

    /// The peer with this name.
    pub fn by_name(&self, name: &str) -> Option<&TrustedPeer> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// Trusts `fingerprint` as `name`. Adding what is there already is fine; a name taken by
    /// another key is refused.
    pub fn add(&mut self, name: &str, fingerprint: Fingerprint) -> Result<(), TrustError> {
        if !valid_name(name) {
            return Err(TrustError::BadName(name.to_owned()));
        }
        match self.by_name(name) {
            Some(p) if p.fingerprint == fingerprint => Ok(()),
            Some(p) => Err(TrustError::NameTaken {
                name: name.to_owned(),
                fingerprint: p.fingerprint,
            }),
            None => {
                self.peers.push(TrustedPeer {
                    name: name.to_owned(),
                    fingerprint,
                });
                Ok(())
            }
        }
    }

    /// Stops trusting `name`.
    pub fn remove(&mut self, name: &str) -> Result<TrustedPeer, TrustError> {
        let at = (self.peers.iter().position(|p| p.name == name))
            .ok_or_else(|| TrustError::NoSuchName(name.to_owned()))?;
        Ok(self.peers.remove(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(b: u8) -> Fingerprint {
        Fingerprint([b; 32])
    }

    #[test]
    fn add_list_remove_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = TrustStore::load(dir.path()).unwrap();
        assert!(s.peers.is_empty(), "no file: nobody trusted");
        s.add("laptop", fp(1)).unwrap();
        s.add("server.lan:4000", fp(2)).unwrap();
        s.add("laptop", fp(1)).unwrap();
        assert!(matches!(
            s.add("laptop", fp(3)),
            Err(TrustError::NameTaken { .. })
        ));
        assert!(matches!(
            s.add("two words", fp(3)),
            Err(TrustError::BadName(_))
        ));
        s.save(dir.path()).unwrap();
        let read = TrustStore::load(dir.path()).unwrap();
        assert_eq!(read, s);
        assert_eq!(read.by_fingerprint(&fp(2)).unwrap().name, "server.lan:4000");
        let mut read = read;
        assert_eq!(read.remove("laptop").unwrap().fingerprint, fp(1));
        assert!(matches!(
            read.remove("laptop"),
            Err(TrustError::NoSuchName(_))
        ));
    }

    #[test]
    fn a_bad_line_is_named() {
        let good = format!("# c\n\nok {}\n", fp(4));
        assert_eq!(TrustStore::parse(&good).unwrap().peers.len(), 1);
        assert_eq!(TrustStore::parse("a b c\n").unwrap_err().0, 1);
        let e = TrustStore::parse(&format!("{good}x sha256:00\n")).unwrap_err();
        assert_eq!(e.0, 4);
    }
}
