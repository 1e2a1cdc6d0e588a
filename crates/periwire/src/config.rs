//! The TOML configuration file.
//!
//! ```toml
//! listen = "127.0.0.1:3240"          # optional; loopback unless you say otherwise
//! plain_allow = ["192.0.2.0/24"]      # networks besides loopback that may skip TLS (and usbredir)
//!
//! [[device]]
//! kind = "keyboard"                   # keyboard | mouse | storage | serial | host
//! busid = "1-1"
//!
//! [[device]]
//! kind = "host"                       # a USB device of this machine, passed through
//! busid = "3-2"                       # its bus id (`periwire list --local`), also exported by
//!
//! [[device]]
//! kind = "storage"
//! busid = "1-3"
//! allow = ["laptop"]                  # trusted clients that may import it (default: all)
//! image = "disk.img"                  # relative to the data directory
//! size = "64MiB"                      # created sparse at this size when missing
//! read_only = false
//!
//! [[device]]
//! kind = "serial"
//! busid = "1-4"
//! tcp = "127.0.0.1:3241"              # host side of the serial line
//! usbredir = "127.0.0.1:4000"         # any device: also offered to QEMU's usb-redir here
//! usbredir_tls = true                 # that listener: TLS only, QEMU with periwire's certificates
//!
//! [[adapter]]                         # a virtual Bluetooth adapter on the simulated radio
//! name = "vm1-bt"
//! transport = "usb"                   # usb (a dongle over USB/IP) | tcp | unix (HCI H4) | vhci
//! busid = "1-5"
//! address = "00:50:57:00:00:01"       # optional; derived from the name otherwise
//!
//! [[adapter]]                         # a virtual adapter whose remotes are the host's
//! name = "vm2-bt"
//! transport = "vhci"
//! link = "host"                       # simulated (the default) | host
//! host_adapter = "hci0"               # hciN or the host controller's BD_ADDR
//! accept_psms = [0x1001]              # optional: remotes' connections to these PSMs reach it
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The error, with line and column.
        source: toml::de::Error,
    },
    /// A value is out of range or inconsistent.
    #[error("{0}")]
    Invalid(String),
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the USB/IP server listens on.
    pub listen: Option<SocketAddr>,
    /// Directory for images and the control socket.
    pub data_dir: Option<PathBuf>,
    /// Networks besides loopback from which plain (not TLS) USB/IP is accepted.
    #[serde(default)]
    pub plain_allow: Vec<PlainNetwork>,
    /// Exported devices.
    #[serde(default, rename = "device")]
    pub devices: Vec<DeviceConfig>,
    /// Virtual Bluetooth adapters on the simulated radio.
    #[serde(default, rename = "adapter")]
    pub adapters: Vec<AdapterConfig>,
}

/// A virtual Bluetooth adapter: an emulated controller on one medium (periwire's simulated
/// radio or the host's Bluetooth stack), reached through one transport.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawAdapter")]
pub struct AdapterConfig {
    /// Name, also the controller's local name until the host sets one.
    pub name: String,
    /// BD_ADDR; derived from the name when not given. For H4 listeners, the address of the
    /// first client (the next ones count up).
    pub address: Option<BdAddr>,
    /// How hosts reach it.
    pub transport: AdapterTransport,
    /// Where its remote devices are.
    pub link: AdapterLink,
}

/// The medium of a virtual Bluetooth adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdapterLink {
    /// periwire's simulated radio, shared with the other simulated adapters.
    Simulated,
    /// The host's Bluetooth stack: each channel is one socket on this host controller.
    Host {
        /// `hciN` or the controller's BD_ADDR.
        adapter: String,
        /// PSMs the host listens on for this adapter: a remote's connection to one is offered
        /// to the adapter's guest.
        accept_psms: Vec<u16>,
    },
}

/// How a host reaches a virtual Bluetooth adapter.
#[derive(Debug, Clone)]
pub enum AdapterTransport {
    /// A USB Bluetooth dongle exported over USB/IP at this bus id (for `btusb` in a VM).
    Usb {
        /// Bus id of the dongle.
        busid: String,
    },
    /// HCI H4 over TCP (Bumble's `tcp-client:`); one adapter per connected client.
    Tcp {
        /// Loopback address to listen on.
        listen: SocketAddr,
    },
    /// HCI H4 over a Unix socket; one adapter per connected client.
    Unix {
        /// Socket path; relative paths are under the data directory.
        path: PathBuf,
    },
    /// The local Linux kernel through `/dev/vhci`: the adapter appears as a local `hciN`.
    Vhci {
        /// The vhci device (`/dev/vhci` unless given).
        path: PathBuf,
    },
}

/// A network of `plain_allow`, written as CIDR (`192.0.2.0/24`) or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlainNetwork(pub periwire_server::secure::Network);

impl<'de> Deserialize<'de> for PlainNetwork {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map(PlainNetwork)
            .map_err(|e: String| serde::de::Error::custom(format!("plain_allow: {e}")))
    }
}

/// A BD_ADDR written `XX:XX:XX:XX:XX:XX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BdAddr(pub periwire_hci::BdAddr);

impl<'de> Deserialize<'de> for BdAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        periwire_hci::BdAddr::parse_str(&text)
            .map(BdAddr)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid Bluetooth address {text:?}: expected XX:XX:XX:XX:XX:XX"
                ))
            })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdapter {
    name: String,
    transport: String,
    address: Option<BdAddr>,
    busid: Option<String>,
    listen: Option<SocketAddr>,
    path: Option<PathBuf>,
    link: Option<String>,
    host_adapter: Option<String>,
    accept_psms: Option<Vec<u16>>,
}

impl TryFrom<RawAdapter> for AdapterConfig {
    type Error = String;

    fn try_from(raw: RawAdapter) -> Result<Self, String> {
        let name = raw.name;
        let need =
            |what: &str| format!("adapter {name}: transport {} needs `{what}`", raw.transport);
        let present = [
            ("busid", raw.busid.is_some()),
            ("listen", raw.listen.is_some()),
            ("path", raw.path.is_some()),
        ];
        let allowed: &[&str] = match raw.transport.as_str() {
            "usb" => &["busid"],
            "tcp" => &["listen"],
            "unix" | "vhci" => &["path"],
            other => {
                return Err(format!(
                    "adapter {name}: unknown transport {other:?} (usb, tcp, unix, vhci)"
                ))
            }
        };
        reject_stray(&present, allowed, |key| {
            format!(
                "adapter {name}: `{key}` does not apply to transport {}",
                raw.transport
            )
        })?;
        let transport = match raw.transport.as_str() {
            "usb" => AdapterTransport::Usb {
                busid: raw.busid.clone().ok_or_else(|| need("busid"))?,
            },
            "tcp" => AdapterTransport::Tcp {
                listen: raw.listen.ok_or_else(|| need("listen"))?,
            },
            "unix" => AdapterTransport::Unix {
                path: raw.path.clone().ok_or_else(|| need("path"))?,
            },
            _ => AdapterTransport::Vhci {
                path: raw
                    .path
                    .clone()
                    .unwrap_or_else(|| periwire_bt::vhci::DEFAULT_PATH.into()),
            },
        };
        let link = match (raw.link.as_deref().unwrap_or("simulated"), raw.host_adapter) {
            ("simulated", None) if raw.accept_psms.is_some() => {
                return Err(format!(
                    "adapter {name}: `accept_psms` only applies to link \"host\""
                ))
            }
            ("simulated", None) => AdapterLink::Simulated,
            ("host", Some(adapter)) => {
                let accept_psms = raw.accept_psms.unwrap_or_default();
                for &psm in &accept_psms {
                    check_accept_psm(psm).map_err(|e| format!("adapter {name}: {e}"))?;
                }
                AdapterLink::Host {
                    adapter,
                    accept_psms,
                }
            }
            ("host", None) => {
                return Err(format!(
                    "adapter {name}: link \"host\" needs `host_adapter` (hciN or a BD_ADDR)"
                ))
            }
            ("simulated", Some(_)) => {
                return Err(format!(
                    "adapter {name}: `host_adapter` only applies to link \"host\""
                ))
            }

            (other, _) => {
                return Err(format!(
                    "adapter {name}: unknown link {other:?} (simulated, host)"
                ))
            }
        };
        Ok(AdapterConfig {
            name,
            address: raw.address,
            transport,
            link,
        })
    }
}

/// Whether remotes' connections to `psm` can be offered to a guest: a valid PSM (odd, the
/// least significant bit of its upper octet clear; Vol 3, Part A, 4.2) that the host's own
/// stack does not keep.
fn check_accept_psm(psm: u16) -> Result<(), String> {
    match psm {
        0x0001 => Err("PSM 0x0001 (SDP) belongs to the host's SDP server".to_owned()),
        0x0003 => Err("PSM 0x0003 (RFCOMM) belongs to the host kernel's RFCOMM".to_owned()),
        p if p & 0x0001 == 0 || p & 0x0100 != 0 => {
            Err(format!("{p:#06x} is not a valid PSM (odd, bit 8 clear)"))
        }
        _ => Ok(()),
    }
}

/// Fails, with the message `error` builds for it, on the first key that is present but not
/// among `allowed` for the kind of table at hand.
fn reject_stray(
    present: &[(&str, bool)],
    allowed: &[&str],
    error: impl FnOnce(&str) -> String,
) -> Result<(), String> {
    match present.iter().find(|(k, p)| *p && !allowed.contains(k)) {
        Some((k, _)) => Err(error(k)),
        None => Ok(()),
    }
}

/// One exported virtual device.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawDevice")]
pub struct DeviceConfig {
    /// Bus id the client imports it by, such as `1-1`.
    pub busid: String,
    /// Name used by `periwire input --device` and in logs; defaults to the bus id.
    pub name: Option<String>,
    /// What the device is.
    pub kind: DeviceKind,
    /// Where the device is also offered over usbredir (QEMU's `usb-redir` dials it), one
    /// device per address.
    pub usbredir: Option<SocketAddr>,
    /// The usbredir listener speaks TLS only and admits QEMU, from any address, by a client
    /// certificate from periwire's usbredir CA (`periwire usbredir-creds`).
    pub usbredir_tls: bool,
    /// Names of the trusted clients (`periwire trust list`) that may import it over TLS, and
    /// of the certificates (`periwire usbredir-creds --name`) its TLS usbredir listener
    /// admits; `None` lets every trusted client. A listed device is refused to plain clients beyond
    /// loopback (USB/IP from `plain_allow`, and usbredir from there).
    pub allow: Option<Vec<String>>,
}

/// The kinds of virtual device.
#[derive(Debug, Clone)]
pub enum DeviceKind {
    /// HID boot keyboard.
    Keyboard,
    /// HID boot mouse.
    Mouse,
    /// Mass storage backed by a raw image file.
    Storage {
        /// Image file; relative paths are under the data directory.
        image: PathBuf,
        /// Size to create the image at when it is missing ("64MiB", "1G", or bytes).
        size: Option<ByteSize>,
        /// Refuse writes.
        read_only: bool,
    },
    /// CDC-ACM serial port bridged to a host TCP listener.
    Serial {
        /// Loopback address the host side of the line listens on.
        tcp: SocketAddr,
    },
    /// A USB device of this machine, passed through; the bus id names it.
    Host,
}

/// A `[[device]]` table as written; every key of every kind, checked against `kind` when
/// converted, so a misplaced key is an error that names it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    kind: String,
    busid: String,
    name: Option<String>,
    image: Option<PathBuf>,
    size: Option<ByteSize>,
    read_only: Option<bool>,
    tcp: Option<SocketAddr>,
    usbredir: Option<SocketAddr>,
    usbredir_tls: Option<bool>,
    allow: Option<Vec<String>>,
}

impl TryFrom<RawDevice> for DeviceConfig {
    type Error = String;

    fn try_from(raw: RawDevice) -> Result<Self, String> {
        let busid = raw.busid;
        let only = |allowed: &[&str]| -> Result<(), String> {
            let present = [
                ("image", raw.image.is_some()),
                ("size", raw.size.is_some()),
                ("read_only", raw.read_only.is_some()),
                ("tcp", raw.tcp.is_some()),
            ];
            reject_stray(&present, allowed, |key| {
                format!(
                    "device {busid}: `{key}` does not apply to a {} device",
                    raw.kind
                )
            })
        };
        let kind = match raw.kind.as_str() {
            "keyboard" => only(&[]).map(|()| DeviceKind::Keyboard)?,
            "mouse" => only(&[]).map(|()| DeviceKind::Mouse)?,
            "host" => only(&[]).map(|()| DeviceKind::Host)?,
            "storage" => {
                only(&["image", "size", "read_only"])?;
                DeviceKind::Storage {
                    image: raw
                        .image
                        .clone()
                        .ok_or_else(|| format!("device {busid}: storage needs `image`"))?,
                    size: raw.size,
                    read_only: raw.read_only.unwrap_or(false),
                }
            }
            "serial" => {
                only(&["tcp"])?;
                DeviceKind::Serial {
                    tcp: raw.tcp.ok_or_else(|| {
                        format!("device {busid}: serial needs `tcp` (e.g. \"127.0.0.1:3241\")")
                    })?,
                }
            }
            other => {
                return Err(format!(
                "device {busid}: unknown kind {other:?} (keyboard, mouse, storage, serial, host)"
            ))
            }
        };
        if let Some(bad) =
            (raw.allow.iter().flatten()).find(|n| !periwire_server::secure::trust::valid_name(n))
        {
            return Err(format!(
                "device {busid}: allow: {bad:?} is not a peer name (one word, as `periwire trust \
                 list` shows them)"
            ));
        }
        if raw.usbredir_tls.is_some() && raw.usbredir.is_none() {
            return Err(format!(
                "device {busid}: `usbredir_tls` needs `usbredir` (the listener's address)"
            ));
        }
        Ok(DeviceConfig {
            busid,
            name: raw.name,
            kind,
            usbredir: raw.usbredir,
            usbredir_tls: raw.usbredir_tls.unwrap_or(false),
            allow: raw.allow,
        })
    }
}

/// A size in bytes, written as a number or with a unit (K, M, G, KiB, MiB, GiB; all binary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("invalid size {s:?}: expected a number with an optional unit"))?;
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kib" | "kb" => 10,
            "m" | "mib" | "mb" => 20,
            "g" | "gib" | "gb" => 30,
            "t" | "tib" | "tb" => 40,
            other => return Err(format!("invalid size unit {other:?} in {s:?}")),
        };
        n.checked_mul(1u64 << shift)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(ByteSize(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.check()?;
        Ok(config)
    }

    /// Bus ids of every exported USB device: the `[[device]]` ones and the Bluetooth dongles.
    fn busids(&self) -> impl Iterator<Item = &str> {
        let dongles = self.adapters.iter().filter_map(|a| match &a.transport {
            AdapterTransport::Usb { busid } => Some(busid.as_str()),
            _ => None,
        });
        self.devices.iter().map(|d| d.busid.as_str()).chain(dongles)
    }

    /// Checks what the schema cannot: unique bus ids and names, sane sizes.
    pub fn check(&self) -> Result<(), ConfigError> {
        let mut busids = std::collections::HashSet::new();
        for b in self.busids() {
            periwire_wire::usbip::BusId::new(b).map_err(|_| {
                ConfigError::Invalid(format!(
                    "bus id {b:?} must be 1 to 31 printable ASCII characters"
                ))
            })?;
            if !busids.insert(b) {
                return Err(ConfigError::Invalid(format!("bus id {b} is used twice")));
            }
        }
        let mut adapters = std::collections::HashSet::new();
        // A PSM has one listener per host controller.
        let mut accepted = std::collections::HashMap::new();
        for a in &self.adapters {
            if !adapters.insert(a.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "adapter name {} is used twice",
                    a.name
                )));
            }
            if let AdapterLink::Host {
                adapter,
                accept_psms,
            } = &a.link
            {
                for psm in accept_psms {
                    if let Some(other) = accepted.insert((adapter.as_str(), *psm), &a.name) {
                        return Err(ConfigError::Invalid(format!(
                            "adapters {other} and {} both accept PSM {psm:#06x} on {adapter}: \
                             the host can offer a remote's connection to one of them only",
                            a.name
                        )));
                    }
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        let mut usbredir = std::collections::HashSet::new();
        for d in &self.devices {
            if let Some(addr) = d.usbredir {
                // Port 0 asks the system for a free port each time, so it never collides.
                if addr.port() != 0 && !usbredir.insert(addr) {
                    return Err(ConfigError::Invalid(format!(
                        "usbredir address {addr} is used twice (one device per address)"
                    )));
                }
            }
            if let Some(name) = &d.name {
                if !names.insert(name.as_str()) {
                    return Err(ConfigError::Invalid(format!("name {name} is used twice")));
                }
            }
            if let DeviceKind::Storage {
                size: Some(ByteSize(n)),
                ..
            } = d.kind
            {
                if n == 0 || n % 512 != 0 {
                    return Err(ConfigError::Invalid(format!(
                        "device {}: size {n} must be a positive multiple of 512 bytes",
                        d.busid
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_allow_and_allow_lists() {
        let c: Config = toml::from_str(
            r#"
            plain_allow = ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]
            [[device]]
            kind = "keyboard"
            busid = "1-1"
            allow = ["laptop", "tablet"]
            [[device]]
            kind = "mouse"
            busid = "1-2"
            "#,
        )
        .unwrap();
        let nets: Vec<String> = c.plain_allow.iter().map(|n| n.0.to_string()).collect();
        assert_eq!(nets, ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7/32"]);
        assert_eq!(
            c.devices[0].allow.as_deref(),
            Some(&["laptop".to_owned(), "tablet".to_owned()][..])
        );
        assert_eq!(c.devices[1].allow, None);
        for (bad, says) in [
            ("plain_allow = [\"192.0.2.1/24\"]", "beyond the prefix"),
            ("plain_allow = [\"lan\"]", "not a network"),
            (
                "[[device]]\nkind = \"mouse\"\nbusid = \"1-1\"\nallow = [\"two words\"]",
                "not a peer name",
            ),
        ] {
            let e = toml::from_str::<Config>(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn usbredir_tls_goes_with_a_usbredir_listener() {
        let c: Config = toml::from_str(
            r#"
            [[device]]
            kind = "keyboard"
            busid = "1-1"
            usbredir = "0.0.0.0:4000"
            usbredir_tls = true
            [[device]]
            kind = "mouse"
            busid = "1-2"
            usbredir = "127.0.0.1:4001"
            "#,
        )
        .unwrap();
        assert!(c.devices[0].usbredir_tls);
        assert!(!c.devices[1].usbredir_tls, "plain unless asked");
        let e = toml::from_str::<Config>(
            "[[device]]\nkind = \"mouse\"\nbusid = \"1-1\"\nusbredir_tls = true",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`usbredir_tls` needs `usbredir`"), "{e}");
    }

    #[test]
    fn parses_every_kind() {
        let c: Config = toml::from_str(
            r#"
            listen = "127.0.0.1:4000"
            [[device]]
            kind = "keyboard"
            busid = "1-1"
            [[device]]
            kind = "storage"
            busid = "1-2"
            image = "a.img"
            size = "64MiB"
            read_only = true
            [[device]]
            kind = "serial"
            busid = "1-3"
            tcp = "127.0.0.1:5000"
            [[device]]
            kind = "host"
            busid = "3-2.1"
            "#,
        )
        .unwrap();
        c.check().unwrap();
        assert_eq!(c.devices.len(), 4);
        assert!(matches!(c.devices[3].kind, DeviceKind::Host));
        let stray = toml::from_str::<Config>(
            "[[device]]\nkind = \"host\"\nbusid = \"1-1\"\nread_only = true",
        );
        assert!(stray
            .unwrap_err()
            .to_string()
            .contains("`read_only` does not apply to a host device"));
        assert!(matches!(
            c.devices[1].kind,
            DeviceKind::Storage {
                size: Some(ByteSize(0x400_0000)),
                read_only: true,
                ..
            }
        ));
    }

    #[test]
    fn parses_adapters_and_refuses_misplaced_keys() {
        let c: Config = toml::from_str(
            r#"
            [[device]]
            kind = "mouse"
            busid = "1-1"
            [[adapter]]
            name = "a"
            transport = "usb"
            busid = "1-2"
            address = "00:50:57:00:00:01"
            [[adapter]]
            name = "b"
            transport = "tcp"
            listen = "127.0.0.1:9000"
            "#,
        )
        .unwrap();
        c.check().unwrap();
        assert_eq!(
            c.adapters[0].address.map(|a| a.0.to_string()),
            Some("00:50:57:00:00:01".to_owned())
        );
        let clash: Config = toml::from_str(
            "[[device]]\nkind = \"mouse\"\nbusid = \"1-1\"\n[[adapter]]\nname = \"a\"\ntransport = \"usb\"\nbusid = \"1-1\"",
        )
        .unwrap();
        assert!(clash
            .check()
            .unwrap_err()
            .to_string()
            .contains("used twice"));
        let stray = toml::from_str::<Config>(
            "[[adapter]]\nname = \"a\"\ntransport = \"tcp\"\nlisten = \"127.0.0.1:1\"\nbusid = \"1-1\"",
        );
        assert!(stray
            .unwrap_err()
            .to_string()
            .contains("`busid` does not apply"));
        let vhci: Config =
            toml::from_str("[[adapter]]\nname = \"v\"\ntransport = \"vhci\"").unwrap();
        assert!(matches!(
            &vhci.adapters[0].transport,
            AdapterTransport::Vhci { path } if path.as_os_str() == "/dev/vhci"
        ));
        let bad = toml::from_str::<Config>(
            "[[adapter]]\nname = \"a\"\ntransport = \"usb\"\nbusid = \"1-1\"\naddress = \"zz\"",
        );
        assert!(bad
            .unwrap_err()
            .to_string()
            .contains("invalid Bluetooth address"));
        let host: Config = toml::from_str(
            "[[adapter]]\nname = \"h\"\ntransport = \"vhci\"\nlink = \"host\"\nhost_adapter = \"hci0\"",
        )
        .unwrap();
        assert_eq!(
            host.adapters[0].link,
            AdapterLink::Host {
                adapter: "hci0".to_owned(),
                accept_psms: Vec::new(),
            }
        );
        let accepting: Config = toml::from_str(
            "[[adapter]]\nname = \"h\"\ntransport = \"vhci\"\nlink = \"host\"\nhost_adapter = \"hci0\"\naccept_psms = [0x1001, 0x0019]",
        )
        .unwrap();
        assert!(matches!(
            &accepting.adapters[0].link,
            AdapterLink::Host { accept_psms, .. } if accept_psms == &[0x1001, 0x0019]
        ));
        let twice: Config = toml::from_str(
            "[[adapter]]\nname = \"a\"\ntransport = \"vhci\"\nlink = \"host\"\nhost_adapter = \"hci0\"\naccept_psms = [0x1001]\n\
             [[adapter]]\nname = \"b\"\ntransport = \"vhci\"\nlink = \"host\"\nhost_adapter = \"hci0\"\naccept_psms = [0x1001]",
        )
        .unwrap();
        assert!(twice
            .check()
            .unwrap_err()
            .to_string()
            .contains("both accept PSM 0x1001"));
        for (text, error) in [
            ("link = \"host\"", "needs `host_adapter`"),
            ("host_adapter = \"hci0\"", "only applies to link"),
            ("accept_psms = [0x1001]", "only applies to link"),
            (
                "link = \"host\"\nhost_adapter = \"hci0\"\naccept_psms = [3]",
                "kernel's RFCOMM",
            ),
            (
                "link = \"host\"\nhost_adapter = \"hci0\"\naccept_psms = [1]",
                "SDP",
            ),
            (
                "link = \"host\"\nhost_adapter = \"hci0\"\naccept_psms = [0x1002]",
                "not a valid PSM",
            ),
            (
                "link = \"host\"\nhost_adapter = \"hci0\"\naccept_psms = [0x1101]",
                "not a valid PSM",
            ),
            ("link = \"radio\"", "unknown link"),
        ] {
            let e = toml::from_str::<Config>(&format!(
                "[[adapter]]\nname = \"h\"\ntransport = \"vhci\"\n{text}"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains(error), "{text}: {e}");
        }
    }

    #[test]
    fn refuses_bad_input_with_a_reason() {
        let dup = r#"
            [[device]]
            kind = "mouse"
            busid = "1-1"
            [[device]]
            kind = "keyboard"
            busid = "1-1"
        "#;
        let c: Config = toml::from_str(dup).unwrap();
        assert!(c.check().unwrap_err().to_string().contains("used twice"));
        let toaster = toml::from_str::<Config>("[[device]]\nkind = \"toaster\"\nbusid = \"1-1\"");
        assert!(toaster.unwrap_err().to_string().contains("unknown kind"));
        let misplaced = toml::from_str::<Config>(
            "[[device]]\nkind = \"mouse\"\nbusid = \"1-1\"\nimage = \"x\"",
        );
        assert!(misplaced
            .unwrap_err()
            .to_string()
            .contains("`image` does not apply"));
        assert!("12XB".parse::<ByteSize>().is_err());
        assert_eq!("2k".parse::<ByteSize>(), Ok(ByteSize(2048)));
        let odd: Config = toml::from_str(
            "[[device]]\nkind = \"storage\"\nbusid = \"1-1\"\nimage = \"x\"\nsize = 1000",
        )
        .unwrap();
        assert!(odd.check().is_err());
    }
}
