//! The web page's token: what a page listening beyond loopback asks of every request, since
//! whoever reaches it could otherwise bind, unbind, attach and detach devices. Kept in the
//! data directory (`web-token`, the owner's only), made on first use, 32 random bytes in hex.

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// File name of the token inside the data directory.
pub const TOKEN_FILE: &str = "web-token";

/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;

/// The page's token and where it is kept.
#[derive(Debug, Clone)]
pub struct WebToken {
    /// Hex digits.
    secret: String,
    /// The file it is kept in.
    pub path: PathBuf,
}

/// Why the token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Reading or writing it failed.
    #[error("web token {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Others may read it.
    #[error("web token {0}: readable by others; `chmod 600` it (or delete it for a new one)")]
    Exposed(PathBuf),
    /// It is not what this program writes.
    #[error("web token {0}: not {TOKEN_BYTES} bytes in hex; delete it for a new one")]
    Malformed(PathBuf),
}

impl WebToken {
    /// The token in `data_dir`, made (mode 0600) if there is none.
    pub fn load_or_create(data_dir: &Path) -> Result<WebToken, TokenError> {
        let path = data_dir.join(TOKEN_FILE);
        let io = |source| TokenError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        match created {
            Ok(mut f) => {
                let mut bytes = [0u8; TOKEN_BYTES];
                std::fs::File::open("/dev/urandom")
                    .and_then(|mut r| r.read_exact(&mut bytes))
                    .map_err(io)?;
                let fresh: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                f.write_all(format!("{fresh}\n").as_bytes()).map_err(io)?;
                return Ok(WebToken {
                    secret: fresh,
                    path,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        let mode = std::fs::metadata(&path).map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(TokenError::Exposed(path));
        }
        let text = std::fs::read_to_string(&path).map_err(io)?;
        let secret = text.trim().to_owned();
        let well_formed = secret.len() == 2 * TOKEN_BYTES
            && secret
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        if !well_formed {
            return Err(TokenError::Malformed(path));
        }
        Ok(WebToken { secret, path })
    }

    /// A token with this secret (tests).
    #[cfg(test)]
    pub fn with_secret(secret: &str) -> WebToken {
        WebToken {
            secret: secret.to_owned(),
            path: PathBuf::new(),
        }
    }

    /// Whether `presented` is the token, compared in time independent of where it differs.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.secret.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// The secret, for the cookie the page is given.
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_private_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let made = WebToken::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(&made.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(made.secret().len(), 64);
        let again = WebToken::load_or_create(dir.path()).unwrap();
        assert_eq!(made.secret(), again.secret());
        assert!(again.matches(made.secret()));
        assert!(!again.matches(&made.secret()[1..]));
        assert!(!again.matches(&"0".repeat(64)));
    }

    #[test]
    fn an_exposed_or_mangled_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let made = WebToken::load_or_create(dir.path()).unwrap();
        std::fs::set_permissions(&made.path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            WebToken::load_or_create(dir.path()),
            Err(TokenError::Exposed(_))
        ));
        std::fs::set_permissions(&made.path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&made.path, "short\n").unwrap();
        assert!(matches!(
            WebToken::load_or_create(dir.path()),
            Err(TokenError::Malformed(_))
        ));
    }
}
