//! periwire's USB/IP client side on Linux: import a device from a server and hand the
//! connection to the kernel's `vhci-hcd`, which then drives the device as if it were plugged
//! in here (what `usbip attach` does); list and detach vhci ports; and keep an attachment
//! alive across server restarts and network breaks.
//!
//! [`status`] is the sans-IO part (the kernel's status tables, the usbip tool's records);
//! [`Vhci`] reads and writes the sysfs attributes; [`attach`] and [`keep_attached`] add the
//! network. Over TLS ([`Transport::Tls`]) periwire keeps the TLS session itself and hands
//! the kernel one end of a Unix socketpair, relaying between the two: vhci-hcd takes any
//! connected stream socket, and never sees TLS.

pub mod status;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use periwire_server::client::{self, ClientError};
use periwire_server::secure::connect::{ConnectError, TlsClient};
use periwire_wire::usbip::{BusId, DeviceRecord};

pub use periwire_server::client::Remote;
pub use status::{Port, Record};

/// Why an attach, detach or listing failed.
#[derive(Debug, thiserror::Error)]
pub enum VhciError {
    /// The module is not loaded (or this is not Linux).
    #[error("vhci-hcd is not loaded (try `modprobe vhci-hcd`): {0} is missing")]
    NotLoaded(PathBuf),
    /// A sysfs attribute or record could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The kernel's status table did not parse.
    #[error(transparent)]
    Status(#[from] status::StatusError),
    /// Every port of the right speed is in use.
    #[error("no free vhci port for a {0}-speed device")]
    NoFreePort(&'static str),
    /// Detach of a port with nothing attached.
    #[error("port {0} has no device attached (see `periwire port`)")]
    NotAttached(u32),
    /// The TLS connection to the server was not made: its key is not trusted, or it does not
    /// trust ours, or the handshake failed.
    #[error("importing {busid} from {remote}: {source}")]
    Secure {
        /// The server.
        remote: Remote,
        /// The device.
        busid: String,
        /// Why (boxed: it carries two fingerprints).
        #[source]
        source: Box<ConnectError>,
    },
    /// The server could not be reached or refused the import.
    #[error("importing {busid} from {remote}: {source}")]
    Import {
        /// The server.
        remote: Remote,
        /// The device.
        busid: String,
        /// Why.
        #[source]
        source: ClientError,
    },
}

/// A vhci port in use, with where its device came from when that was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedPort {
    /// The port.
    pub port: Port,
    /// The record written at attach time, if any.
    pub record: Option<Record>,
}

/// The kernel's vhci-hcd, through sysfs, and the records beside it.
#[derive(Debug, Clone)]
pub struct Vhci {
    /// The first controller's directory, which carries every controller's attributes.
    sysfs: PathBuf,
    /// Where the records go (`/var/run/vhci_hcd`, shared with the usbip tool).
    records: PathBuf,
}

impl Vhci {
    /// This machine's vhci-hcd.
    pub fn system() -> Vhci {
        Vhci::at("/sys/devices/platform/vhci_hcd.0", "/var/run/vhci_hcd")
    }

    /// A vhci-hcd whose attributes are under `sysfs` and records under `records`.
    pub fn at(sysfs: impl Into<PathBuf>, records: impl Into<PathBuf>) -> Vhci {
        Vhci {
            sysfs: sysfs.into(),
            records: records.into(),
        }
    }

    fn check_loaded(&self) -> Result<(), VhciError> {
        let status = self.sysfs.join("status");
        if status.exists() {
            Ok(())
        } else {
            Err(VhciError::NotLoaded(status))
        }
    }

    /// Every port of every controller (`status`, `status.1`, ...).
    pub fn ports(&self) -> Result<Vec<Port>, VhciError> {
        self.check_loaded()?;
        let mut ports = Vec::new();
        for index in 0.. {
            let name = if index == 0 {
                "status".to_owned()
            } else {
                format!("status.{index}")
            };
            let path = self.sysfs.join(&name);
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && index > 0 => break,
                Err(source) => {
                    return Err(VhciError::Io {
                        what: format!("reading {}", path.display()),
                        source,
                    })
                }
            };
            ports.extend(status::parse_status(&text)?);
        }
        Ok(ports)
    }

    /// The ports in use, with their records.
    pub fn attached(&self) -> Result<Vec<AttachedPort>, VhciError> {
        Ok(self
            .ports()?
            .into_iter()
            .filter(|p| !p.is_free())
            .map(|port| {
                let record = std::fs::read_to_string(self.record_path(port.number))
                    .ok()
                    .and_then(|text| Record::parse(&text));
                AttachedPort { port, record }
            })
            .collect())
    }

    fn record_path(&self, port: u32) -> PathBuf {
        self.records.join(format!("port{port}"))
    }

    /// Hands the imported connection `socket` for `device` to a free port and records
    /// where it came from; returns the port. The kernel takes its own reference to the
    /// socket, so the caller may close it.
    pub fn attach(
        &self,
        socket: &impl AsRawFd,
        device: &DeviceRecord,
        record: &Record,
    ) -> Result<u32, VhciError> {
        let speed = device.speed.to_u32();
        let devid = (device.busnum << 16) | (device.devnum & 0xffff);
        let attach = self.sysfs.join("attach");
        // Another client may take the port between the look and the write: the kernel then
        // answers EBUSY, and the next free port is tried, as the usbip tool does.
        for _ in 0..8 {
            let port = status::free_port(&self.ports()?, speed)
                .ok_or(VhciError::NoFreePort(status::speed_name(speed)))?;
            let request = format!("{port} {} {devid} {speed}", socket.as_raw_fd());
            match write_attribute(&attach, &request) {
                Ok(()) => {
                    self.write_record(port, record)?;
                    return Ok(port);
                }
                Err(e) if e.raw_os_error() == Some(BUSY) => continue,
                Err(source) => {
                    return Err(VhciError::Io {
                        what: format!("attaching to vhci port {port}"),
                        source,
                    })
                }
            }
        }
        Err(VhciError::NoFreePort(status::speed_name(speed)))
    }

    fn write_record(&self, port: u32, record: &Record) -> Result<(), VhciError> {
        let io = |what: String| move |source| VhciError::Io { what, source };
        std::fs::create_dir_all(&self.records)
            .map_err(io(format!("creating {}", self.records.display())))?;
        let path = self.record_path(port);
        std::fs::write(&path, record.to_string()).map_err(io(format!("writing {}", path.display())))
    }

    /// Detaches `port`; the kernel closes its connection to the server.
    pub fn detach(&self, port: u32) -> Result<(), VhciError> {
        let in_use = self
            .ports()?
            .iter()
            .any(|p| p.number == port && !p.is_free());
        if !in_use {
            return Err(VhciError::NotAttached(port));
        }
        write_attribute(&self.sysfs.join("detach"), &port.to_string()).map_err(|source| {
            VhciError::Io {
                what: format!("detaching vhci port {port}"),
                source,
            }
        })?;
        // A missing record is fine: the port may have been attached by someone else.
        let _ = std::fs::remove_file(self.record_path(port));
        Ok(())
    }

    /// Whether `port` still holds the device with `devid`. Just after the attach write the
    /// port shows as not yet assigned, with no devid: that is still ours.
    fn holds(&self, port: u32, devid: u32) -> Result<bool, VhciError> {
        Ok(self.ports()?.iter().any(|p| {
            p.number == port && (p.devid == devid && !p.is_free() || p.is_being_assigned())
        }))
    }
}

/// Linux EBUSY.
const BUSY: i32 = 16;

/// Writes `value` to a sysfs attribute in one write, as the kernel expects.
fn write_attribute(path: &Path, value: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(value.as_bytes())
}

/// How long the server has to answer an import.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// A device attached to a vhci port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The vhci port.
    pub port: u32,
    /// The device's id on the server, which the port shows while it holds it.
    pub devid: u32,
}

/// How a client reaches the server.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Plain USB/IP: the kernel gets the TCP socket itself.
    Plain,
    /// USB/IP inside mutual TLS; periwire relays between the session and the kernel.
    Tls(TlsClient),
}

/// Imports `busid` from `remote` over plain USB/IP and attaches it to a free vhci port.
pub async fn attach(vhci: &Vhci, remote: &Remote, busid: &BusId) -> Result<Attachment, VhciError> {
    vhci.check_loaded()?;
    let import_error = |source| VhciError::Import {
        remote: remote.clone(),
        busid: busid.to_string(),
        source,
    };
    let (stream, device) = client::import(&remote.to_string(), busid, IMPORT_TIMEOUT)
        .await
        .map_err(import_error)?;
    let stream = stream
        .into_std()
        .map_err(|e| import_error(ClientError::Io(e)))?;
    // The kernel reads and writes the socket itself, blocking.
    let prepare = || -> std::io::Result<()> {
        stream.set_nonblocking(false)?;
        set_keepalive(&stream)
    };
    prepare().map_err(|e| import_error(ClientError::Io(e)))?;
    let port = vhci.attach(&stream, &device, &record_of(remote, busid))?;
    Ok(Attachment {
        port,
        devid: device.devid(),
    })
}

/// Keepalive lets a dead server be noticed, by the kernel on a plain connection, by the
/// relay over TLS, so that the attachment can be renewed.
fn set_keepalive(socket: &impl std::os::fd::AsFd) -> std::io::Result<()> {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    socket2::SockRef::from(socket).set_tcp_keepalive(&keepalive)
}

fn record_of(remote: &Remote, busid: &BusId) -> Record {
    Record {
        host: remote.host.clone(),
        service: remote.port.to_string(),
        busid: busid.to_string(),
    }
}

/// Buffer of each direction of the TLS relay: one read per large bulk transfer's worth.
const RELAY_BUFFER: usize = 256 * 1024;

/// Imports `busid` from `remote` over TLS and attaches it to a free vhci port through a
/// socketpair. The returned task relays between the TLS session and the kernel's end until
/// either closes (a detach, the server gone); it must keep running while the device is used.
pub async fn attach_tls(
    vhci: &Vhci,
    remote: &Remote,
    busid: &BusId,
    tls: &TlsClient,
) -> Result<(Attachment, tokio::task::JoinHandle<()>), VhciError> {
    vhci.check_loaded()?;
    let secure_error = |source| VhciError::Secure {
        remote: remote.clone(),
        busid: busid.to_string(),
        source: Box::new(source),
    };
    let import_error = |source| VhciError::Import {
        remote: remote.clone(),
        busid: busid.to_string(),
        source,
    };
    let mut connected = tls
        .connect(remote, IMPORT_TIMEOUT)
        .await
        .map_err(secure_error)?;
    set_keepalive(connected.stream.get_ref().0).map_err(|e| import_error(ClientError::Io(e)))?;
    let device = client::import_on(&mut connected.stream, busid, IMPORT_TIMEOUT)
        .await
        .map_err(import_error)?;
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| VhciError::Io { what, source }
    };
    let (kernel_end, relay_end) =
        std::os::unix::net::UnixStream::pair().map_err(io("creating a socketpair"))?;
    let port = vhci.attach(&kernel_end, &device, &record_of(remote, busid))?;
    // The kernel holds its own reference to its end.
    drop(kernel_end);
    relay_end
        .set_nonblocking(true)
        .map_err(io("preparing the relay socket"))?;
    let mut relay_end =
        tokio::net::UnixStream::from_std(relay_end).map_err(io("preparing the relay socket"))?;
    let mut session = connected.stream;
    let relay = tokio::spawn(async move {
        let copied = tokio::io::copy_bidirectional_with_sizes(
            &mut session,
            &mut relay_end,
            RELAY_BUFFER,
            RELAY_BUFFER,
        )
        .await;
        match copied {
            Ok((up, down)) => tracing::debug!(up, down, "TLS relay ended"),
            Err(e) => tracing::info!(error = %e, "TLS relay ended"),
        }
    });
    Ok((
        Attachment {
            port,
            devid: device.devid(),
        },
        relay,
    ))
}

/// Imports and attaches `busid` from `remote` over `transport`; over TLS the relay runs on
/// by itself until the connection ends.
pub async fn attach_via(
    vhci: &Vhci,
    remote: &Remote,
    busid: &BusId,
    transport: &Transport,
) -> Result<Attachment, VhciError> {
    match transport {
        Transport::Plain => attach(vhci, remote, busid).await,
        Transport::Tls(tls) => Ok(attach_tls(vhci, remote, busid, tls).await?.0),
    }
}

/// Idle time before the first keepalive probe.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Time between probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes before the connection is dropped.
const KEEPALIVE_RETRIES: u32 = 3;

/// How often an attachment is checked.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// First wait before re-importing after a loss; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(250);
/// Longest wait between re-import attempts.
const RETRY_MAX: Duration = Duration::from_secs(4);

/// What [`keep_attached`] reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// The device is attached again after a loss.
    Reattached(&'a Attachment),
    /// The port let go of the device: the connection broke or someone detached it.
    Lost(&'a Attachment),
    /// A re-import failed; another follows after `retry_in`.
    RetryFailed {
        /// Why.
        error: &'a VhciError,
        /// When the next try is.
        retry_in: Duration,
    },
}

/// Keeps `busid` from `remote` attached over `transport`, starting from `attachment`:
/// whenever its port lets go of it, imports it again, with a growing pause between failed
/// tries. Runs until dropped, or fails if the vhci status can no longer be read.
pub async fn keep_attached(
    vhci: &Vhci,
    remote: &Remote,
    busid: &BusId,
    transport: &Transport,
    mut attachment: Attachment,
    mut report: impl FnMut(Event<'_>),
) -> Result<(), VhciError> {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tick.tick().await;
        if vhci.holds(attachment.port, attachment.devid)? {
            continue;
        }
        report(Event::Lost(&attachment));
        let mut pause = RETRY_FIRST;
        attachment = loop {
            match attach_via(vhci, remote, busid, transport).await {
                Ok(a) => break a,
                Err(error) => {
                    report(Event::RetryFailed {
                        error: &error,
                        retry_in: pause,
                    });
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        };
        report(Event::Reattached(&attachment));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs directory with two controllers' status tables.
    fn fake(dir: &Path) -> Vhci {
        let sysfs = dir.join("vhci_hcd.0");
        std::fs::create_dir_all(&sysfs).unwrap();
        std::fs::write(
            sysfs.join("status"),
            "hub port sta spd dev      sockfd local_busid\n\
             hs  0000 006 003 00010003 000003 3-1\n\
             ss  0001 004 000 00000000 000000 0-0\n",
        )
        .unwrap();
        std::fs::write(
            sysfs.join("status.1"),
            "hub port sta spd dev      sockfd local_busid\n\
             hs  0002 004 000 00000000 000000 0-0\n\
             ss  0003 005 000 00000000 000000 0-0\n",
        )
        .unwrap();
        std::fs::write(sysfs.join("attach"), "").unwrap();
        std::fs::write(sysfs.join("detach"), "").unwrap();
        Vhci::at(sysfs, dir.join("records"))
    }

    #[test]
    fn reads_every_controller_and_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let vhci = fake(dir.path());
        assert_eq!(vhci.ports().unwrap().len(), 4);
        let record = Record {
            host: "h".into(),
            service: "3240".into(),
            busid: "1-3".into(),
        };
        vhci.write_record(0, &record).unwrap();
        let attached = vhci.attached().unwrap();
        let numbers: Vec<u32> = attached.iter().map(|a| a.port.number).collect();
        assert_eq!(numbers, [0, 3], "ports in use, the one being assigned too");
        assert_eq!(attached[0].record.as_ref(), Some(&record));
        assert!(vhci.holds(0, 0x0001_0003).unwrap());
        assert!(!vhci.holds(0, 0x0001_0004).unwrap());
        assert!(!vhci.holds(2, 0).unwrap());
        // Port 3 is being assigned: the kernel shows no devid yet.
        assert!(vhci.holds(3, 0x0001_0009).unwrap());
    }

    #[test]
    fn detach_checks_the_port_and_writes_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let vhci = fake(dir.path());
        assert!(matches!(vhci.detach(2), Err(VhciError::NotAttached(2))));
        vhci.detach(0).unwrap();
        let written = std::fs::read_to_string(dir.path().join("vhci_hcd.0/detach")).unwrap();
        assert_eq!(written, "0");
    }

    #[test]
    fn a_missing_module_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let vhci = Vhci::at(dir.path().join("nowhere"), dir.path());
        let e = vhci.ports().unwrap_err();
        assert!(e.to_string().contains("modprobe vhci-hcd"), "{e}");
    }
}
