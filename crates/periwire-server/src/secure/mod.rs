//! Secure transport: identities, pins, mutual TLS 1.3, and who may reach the server in the
//! clear.
//!
//! - [`identity`]: this periwire's key pair and self-signed certificate, and the
//!   [`Fingerprint`] (SHA-256 of the SPKI) peers pin it by.
//! - [`trust`]: the peers this periwire trusts, by name and fingerprint.
//! - [`tls`]: rustls configurations whose verifiers check the peer's key against the pins.
//! - [`ca`]: periwire's certificate authority for usbredir over TLS, which QEMU's x509
//!   credentials check against.
//! - [`network`]: CIDR networks, for the plain USB/IP allowed beside TLS.
//! - [`connect`]: a client's TLS connection to a server, with errors that say which key was
//!   refused and how to trust it.

pub mod ca;
pub mod connect;
pub mod identity;
pub mod network;
pub mod tls;
pub mod trust;

pub use identity::{Fingerprint, Identity};
pub use network::Network;
pub use trust::{TrustStore, TrustedPeer};

/// Writes `text` to `path`, readable by the owner only: into a file beside it, synced, then
/// renamed over it, so a reader sees the old file or the new one, never half of one.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
