//! `periwire id` and `periwire trust`: this periwire's identity and the peers it trusts.

use std::path::{Path, PathBuf};

use periwire_server::secure::ca::{self, CertAuthority};
use periwire_server::secure::connect::TlsClient;
use periwire_server::secure::identity::host_name;
use periwire_server::secure::{Fingerprint, Identity, TrustStore};

use crate::AnyError;

/// What `periwire trust` does.
#[derive(Debug, clap::Subcommand)]
pub enum TrustAction {
    /// Trust a peer's key under a name: a server this client connects to (named as you
    /// reach it, HOST or HOST:PORT), or a client this server accepts (the name allow lists
    /// use).
    Add {
        /// The peer's name.
        name: String,
        /// Its fingerprint, `sha256:` and 64 hex digits, as `periwire id` prints it there.
        fingerprint: String,
    },
    /// List the trusted peers.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop trusting a peer.
    Remove {
        /// The peer's name.
        name: String,
    },
}

/// This periwire's identity in `data_dir`, made on first use.
pub fn identity(data_dir: &Path) -> Result<Identity, AnyError> {
    Ok(Identity::load_or_create(data_dir, &host_name())?)
}

/// periwire's usbredir CA in `data_dir`, made on first use.
pub fn usbredir_ca(data_dir: &Path) -> Result<CertAuthority, AnyError> {
    Ok(CertAuthority::load_or_create(data_dir, &host_name())?)
}

/// `periwire usbredir-creds`: a client certificate named `name` from periwire's usbredir CA,
/// written into `out` as QEMU's `tls-creds-x509` (endpoint=client) reads it.
pub fn usbredir_creds(data_dir: &Path, name: &str, out: &Path) -> Result<(), AnyError> {
    let creds = usbredir_ca(data_dir)?.issue_client(name)?;
    std::fs::create_dir_all(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    for (file, text, mode) in [
        (ca::qemu_files::CA_CERT, &creds.ca_cert, 0o644),
        (ca::qemu_files::CLIENT_CERT, &creds.cert, 0o644),
        (ca::qemu_files::CLIENT_KEY, &creds.key, 0o600),
    ] {
        let path = out.join(file);
        write_mode(&path, text, mode).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    println!(
        "periwire: usbredir credentials for {name} in {} (QEMU: -object \
         tls-creds-x509,id=tls0,dir={},endpoint=client)",
        out.display(),
        out.display()
    );
    Ok(())
}

/// Writes `text` to a new `path` with permissions `mode` (replacing what was there).
fn write_mode(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// A TLS client with this periwire's identity and pins.
pub fn tls_client(data_dir: PathBuf, trust_new: bool) -> Result<TlsClient, AnyError> {
    Ok(TlsClient {
        identity: identity(&data_dir)?,
        data_dir,
        trust_new,
    })
}

/// `periwire id`: prints the name and fingerprint, making the identity if there is none.
pub fn id(data_dir: &Path, json: bool) -> Result<(), AnyError> {
    let id = identity(data_dir)?;
    if json {
        let value = serde_json::json!({
            "name": id.name,
            "fingerprint": id.fingerprint.to_string(),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{} {}", id.name, id.fingerprint);
    }
    Ok(())
}

/// `periwire trust ...`.
pub fn trust(data_dir: &Path, action: TrustAction) -> Result<(), AnyError> {
    let mut store = TrustStore::load(data_dir)?;
    match action {
        TrustAction::Add { name, fingerprint } => {
            let fingerprint: Fingerprint = fingerprint.parse()?;
            store.add(&name, fingerprint)?;
            store.save(data_dir)?;
            println!("periwire: trusting {name} as {fingerprint}");
        }
        TrustAction::List { json } => {
            if json {
                let rows: Vec<_> = (store.peers.iter())
                    .map(|p| {
                        serde_json::json!({
                            "name": p.name,
                            "fingerprint": p.fingerprint.to_string(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if store.peers.is_empty() {
                println!("no trusted peers");
            } else {
                for p in &store.peers {
                    println!("{:<24} {}", p.name, p.fingerprint);
                }
            }
        }
        TrustAction::Remove { name } => {
            let removed = store.remove(&name)?;
            store.save(data_dir)?;
            println!(
                "periwire: no longer trusting {name} ({})",
                removed.fingerprint
            );
        }
    }
    Ok(())
}
