//! DNS-SD over multicast DNS: a server announces itself as `_usbip._tcp` on the local
//! network, and `periwire list --discover` finds the servers there (mdns-sd, which runs its
//! own thread and sockets).
//!
//! Only a server listening beyond loopback is announced: nobody else could reach one on
//! loopback. The TXT record carries `version` and `fingerprint`, the server's TLS key as
//! `periwire id` prints it, so a user can check what `--trust-new` would pin. Beyond
//! loopback a server lists its devices over TLS only (or to its `plain_allow` networks), so
//! `list --discover --tls` asks each server found over mutual TLS.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use periwire_server::secure::connect::TlsClient;
use serde::{Deserialize, Serialize};

use crate::listing::RemoteDevice;
use crate::AnyError;

/// The DNS-SD service type of a USB/IP server.
pub const SERVICE_TYPE: &str = "_usbip._tcp.local.";

/// A running announcement; withdrawn (a goodbye packet) when dropped.
pub struct Announcement {
    daemon: ServiceDaemon,
    fullname: String,
}

impl Drop for Announcement {
    fn drop(&mut self) {
        if let Ok(done) = self.daemon.unregister(&self.fullname) {
            // The goodbye goes out before the daemon stops; a short wait, not a hang.
            let _ = done.recv_timeout(Duration::from_millis(500));
        }
        let _ = self.daemon.shutdown();
    }
}

/// This machine's host name, for the announcement.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .unwrap_or_else(|| "periwire".to_owned())
}

/// Announces the server listening at `listen` (unspecified: on every interface's address)
/// whose TLS key has `fingerprint`.
pub fn announce(listen: SocketAddr, fingerprint: &str) -> Result<Announcement, AnyError> {
    let daemon = ServiceDaemon::new().map_err(|e| format!("mDNS: {e}"))?;
    let host = host_name();
    let instance = format!("periwire on {host} port {}", listen.port());
    let properties = [
        ("version", env!("CARGO_PKG_VERSION")),
        ("fingerprint", fingerprint),
    ];
    let host_fqdn = format!("{host}.local.");
    let info = if listen.ip().is_unspecified() {
        ServiceInfo::new(
            SERVICE_TYPE,
            &instance,
            &host_fqdn,
            "",
            listen.port(),
            &properties[..],
        )
        .map(ServiceInfo::enable_addr_auto)
    } else {
        ServiceInfo::new(
            SERVICE_TYPE,
            &instance,
            &host_fqdn,
            listen.ip(),
            listen.port(),
            &properties[..],
        )
    }
    .map_err(|e| format!("mDNS announcement: {e}"))?;
    let fullname = info.get_fullname().to_owned();
    daemon
        .register(info)
        .map_err(|e| format!("mDNS announcement: {e}"))?;
    Ok(Announcement { daemon, fullname })
}

/// A server found on the network, and what it offers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FoundServer {
    /// Its DNS-SD instance name.
    pub name: String,
    /// Its host name (`host.local.`).
    pub host: String,
    /// The address the list was asked at, `IP:PORT`.
    pub address: String,
    /// Every address it announced.
    pub addresses: Vec<String>,
    /// Its TXT record.
    pub txt: BTreeMap<String, String>,
    /// Its devices.
    pub devices: Vec<RemoteDevice>,
    /// Why its devices could not be listed, if they could not.
    pub error: Option<String>,
}

/// Browses for `wait` and lists the devices of every server found (over mutual TLS with
/// `tls`).
pub async fn discover(
    wait: Duration,
    tls: Option<&TlsClient>,
) -> Result<Vec<FoundServer>, AnyError> {
    let daemon = ServiceDaemon::new().map_err(|e| format!("mDNS: {e}"))?;
    let events = daemon
        .browse(SERVICE_TYPE)
        .map_err(|e| format!("mDNS browse: {e}"))?;
    /// What a resolved announcement says.
    struct Resolved {
        host: String,
        addresses: Vec<IpAddr>,
        port: u16,
        txt: BTreeMap<String, String>,
    }
    let mut found: BTreeMap<String, Resolved> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, events.recv_async()).await {
        if let ServiceEvent::ServiceResolved(s) = event {
            let mut addresses: Vec<IpAddr> = s.addresses.iter().map(|a| a.to_ip_addr()).collect();
            // IPv4 first: link-local IPv6 needs a scope the list cannot carry.
            addresses.sort_by_key(|a| (a.is_ipv6(), *a));
            let txt = (s.txt_properties.iter())
                .map(|p| (p.key().to_owned(), p.val_str().to_owned()))
                .collect();
            let resolved = Resolved {
                host: s.host.clone(),
                addresses,
                port: s.port,
                txt,
            };
            found.insert(s.fullname.clone(), resolved);
        }
    }
    let _ = daemon.shutdown();
    let mut servers = Vec::new();
    for (fullname, r) in found {
        let Resolved {
            host,
            addresses,
            port,
            txt,
        } = r;
        let name = fullname
            .strip_suffix(&format!(".{SERVICE_TYPE}"))
            .unwrap_or(&fullname)
            .replace("\\032", " ")
            .replace("\\ ", " ");
        let Some(ip) = addresses.first() else {
            continue;
        };
        let address = SocketAddr::new(*ip, port).to_string();
        let (devices, error) = match crate::listing::remote_devices(&address, tls).await {
            Ok((_, d)) => (d, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        servers.push(FoundServer {
            name,
            host,
            address,
            addresses: addresses.iter().map(IpAddr::to_string).collect(),
            txt,
            devices,
            error,
        });
    }
    Ok(servers)
}
