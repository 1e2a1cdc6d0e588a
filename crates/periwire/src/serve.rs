//! `periwire serve`: builds the configured devices and runs the server until a signal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use periwire_bt::host::{HostAdapter, HostMedium};
use periwire_bt::usb_dongle::UsbDongle;
use periwire_bt::{AdapterPlan, ControllerConfig, H4Server, Medium, SharedRadio};
use periwire_host::HostDevice;
use periwire_server::front_door::{AccessRules, FrontDoor};
use periwire_server::usbredir::UsbredirConfig;
use periwire_server::{Export, Registry, ServerConfig};
use periwire_usb::cdc_acm::CdcAcm;
use periwire_usb::hid::{Keyboard, Mouse};
use periwire_usb::storage::{create_demo_image, MassStorage, StorageConfig};
use periwire_usb::UsbDevice;
use periwire_wire::usbip::{BusId, USBIP_PORT};
use tokio::net::TcpListener;

use crate::config::{
    AdapterConfig, AdapterLink, AdapterTransport, ByteSize, Config, DeviceConfig, DeviceKind,
};
use crate::control::{ControlState, NamedInput};
use crate::devices::{busnum_of, Declared, DeviceManager, ExportKind};
use crate::state::StateFile;
use crate::web::WebToken;
use crate::AnyError;

/// File name of the control socket inside the data directory.
pub const CONTROL_SOCKET: &str = "control.sock";
/// Directory under the data directory that holds the proxy link keys of host-linked
/// Bluetooth adapters, one file per emulated controller.
pub const BT_KEYS_DIR: &str = "bt-keys";

/// Size of the demo disk image.
const DEMO_DISK_SIZE: u64 = 64 * 1024 * 1024;
/// Name of the demo disk image inside the data directory.
const DEMO_DISK_IMAGE: &str = "demo-disk.img";
/// Where the demo serial port's host side listens.
const DEMO_SERIAL_ADDR: &str = "127.0.0.1:3241";

/// Options of `periwire serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on. Defaults to loopback; anything else exposes your devices to that
    /// network.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Configuration file (TOML) declaring the devices.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Where the web page and its API listen, or `off`. Loopback by default; beyond it the
    /// page asks for the token in the data directory (`web-token`).
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:3280")]
    web: WebListen,
    /// Do not announce the server on the local network (DNS-SD `_usbip._tcp`). Only a server
    /// listening beyond loopback is announced at all.
    #[arg(long)]
    no_announce: bool,
    /// Export a demo set: keyboard, mouse, a 64 MiB FAT disk with a file on it, a serial port
    /// (host side on 127.0.0.1:3241). Added to the configured devices.
    #[arg(long)]
    demo: bool,
}

/// `--web`: an address, or `off` (`None`).
#[derive(Debug, Clone, Copy)]
pub struct WebListen(pub Option<SocketAddr>);

impl std::str::FromStr for WebListen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "off" {
            return Ok(Self(None));
        }
        s.parse()
            .map(|a| Self(Some(a)))
            .map_err(|e| format!("{s:?} is not HOST:PORT or off: {e}"))
    }
}

/// Binds the web listener at `addr`, with the token it asks for beyond loopback (kept in
/// `data_dir`). With `busy_default_ok`, a busy default port is not worth failing for
/// (another periwire may have it: the server then runs without its page); a port asked for
/// always is.
pub async fn bind_web(
    addr: SocketAddr,
    data_dir: &Path,
    busy_default_ok: bool,
) -> Result<Option<(TcpListener, Option<WebToken>)>, AnyError> {
    match TcpListener::bind(addr).await {
        Ok(l) => {
            let token = crate::web::token_for(addr, data_dir)?;
            println!("periwire: web page on http://{}/", l.local_addr()?);
            if let Some(t) = &token {
                println!(
                    "periwire: the web page listens beyond loopback: open it as /?token=TOKEN with the token in {}",
                    t.path.display()
                );
            }
            Ok(Some((l, token)))
        }
        Err(e)
            if busy_default_ok
                && addr == crate::web::DEFAULT_WEB
                && e.kind() == std::io::ErrorKind::AddrInUse =>
        {
            println!("periwire: web page off: {addr} is in use (pass --web ADDR)");
            Ok(None)
        }
        Err(e) => Err(format!("web page on {addr}: {e}").into()),
    }
}

/// The data directory: the one given, else `$XDG_DATA_HOME/periwire`, else
/// `~/.local/share/periwire`.
pub fn data_dir(given: Option<PathBuf>) -> Result<PathBuf, AnyError> {
    if let Some(d) = given {
        return Ok(d);
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("periwire"));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".local/share/periwire")),
        None => Err("no data directory: pass --data-dir or set HOME".into()),
    }
}

fn demo_devices() -> Result<Vec<DeviceConfig>, AnyError> {
    let device = |busid: &str, name: &str, kind| DeviceConfig {
        busid: busid.into(),
        name: Some(name.into()),
        kind,
        usbredir: None,
        usbredir_tls: false,
        allow: None,
    };
    Ok(vec![
        device("1-1", "keyboard", DeviceKind::Keyboard),
        device("1-2", "mouse", DeviceKind::Mouse),
        device(
            "1-3",
            "disk",
            DeviceKind::Storage {
                image: DEMO_DISK_IMAGE.into(),
                size: Some(ByteSize(DEMO_DISK_SIZE)),
                read_only: false,
            },
        ),
        device(
            "1-4",
            "serial",
            DeviceKind::Serial {
                tcp: DEMO_SERIAL_ADDR.parse()?,
            },
        ),
    ])
}

fn demo_adapters() -> Vec<AdapterConfig> {
    vec![AdapterConfig {
        name: "periwire-demo".into(),
        address: None,
        transport: AdapterTransport::Usb {
            busid: "1-5".into(),
        },
        link: AdapterLink::Simulated,
    }]
}

/// A stable address for an adapter that was given none: 00:50:57 ("PW") and three bytes of
/// a hash of its name (FNV-1a, fixed so the address survives upgrades).
fn address_for(name: &str) -> periwire_hci::BdAddr {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let [a, b, c, ..] = hash.to_le_bytes();
    periwire_hci::BdAddr([a, b, c, 0x57, 0x50, 0x00])
}

const DEMO_README: &[u8] = b"Hello from periwire!\n\
This disk is a 64 MiB image file on the machine running `periwire serve --demo`.\n\
Files you write here are kept in that image.\n";

pub async fn run(args: ServeArgs, data_dir_arg: Option<PathBuf>) -> Result<(), AnyError> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if args.demo {
        config.devices.extend(demo_devices()?);
        config.adapters.extend(demo_adapters());
        config.check()?;
    }
    let data_dir = data_dir(data_dir_arg.or(config.data_dir.clone()))?;
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| format!("creating data directory {}: {e}", data_dir.display()))?;
    if args.demo {
        let image = data_dir.join(DEMO_DISK_IMAGE);
        create_demo_image(&image, DEMO_DISK_SIZE, &[("README.TXT", DEMO_README)])
            .map_err(|e| format!("creating demo disk {}: {e}", image.display()))?;
    }

    let registry = Registry::new();
    let mut declared: Vec<Declared> = Vec::new();
    let mut keyboards = Vec::new();
    let mut mice = Vec::new();
    let mut bridges = Vec::new();
    for (index, d) in config.devices.iter().enumerate() {
        let name = d.name.clone().unwrap_or_else(|| d.busid.clone());
        let (device, kind): (Arc<dyn UsbDevice>, ExportKind) = match &d.kind {
            DeviceKind::Keyboard => {
                let (dev, handle) = Keyboard::new();
                keyboards.push(NamedInput {
                    name: name.clone(),
                    busid: d.busid.clone(),
                    handle,
                });
                (Arc::new(dev), ExportKind::Keyboard)
            }
            DeviceKind::Mouse => {
                let (dev, handle) = Mouse::new();
                mice.push(NamedInput {
                    name: name.clone(),
                    busid: d.busid.clone(),
                    handle,
                });
                (Arc::new(dev), ExportKind::Mouse)
            }
            DeviceKind::Storage {
                image,
                size,
                read_only,
            } => {
                let path = resolve(&data_dir, image);
                let dev = MassStorage::open(StorageConfig {
                    path: path.clone(),
                    size: size.map(|s| s.0),
                    read_only: *read_only,
                    serial: serial_for(&d.busid),
                    ..StorageConfig::default()
                })
                .map_err(|e| format!("device {}: image {}: {e}", d.busid, path.display()))?;
                (Arc::new(dev), ExportKind::Storage)
            }
            DeviceKind::Host => {
                let dev =
                    HostDevice::new(&d.busid).map_err(|e| format!("device {}: {e}", d.busid))?;
                if !dev.is_plugged() {
                    println!(
                        "periwire: host device {} is not plugged in; it is exported once it is",
                        d.busid
                    );
                }
                (Arc::new(dev), ExportKind::Host)
            }
            DeviceKind::Serial { tcp } => {
                let (dev, link) = CdcAcm::new(Default::default());
                let listener = TcpListener::bind(tcp)
                    .await
                    .map_err(|e| format!("device {}: serial listener {tcp}: {e}", d.busid))?;
                println!(
                    "periwire: serial {} host side on {}",
                    d.busid,
                    listener.local_addr()?
                );
                bridges.push(tokio::spawn(periwire_server::serial::bridge_tcp(
                    listener, link,
                )));
                (Arc::new(dev), ExportKind::Serial)
            }
        };
        let busid = BusId::new(&d.busid)?;
        declared.push(Declared {
            export: Export {
                busid,
                busnum: busnum_of(&d.busid),
                devnum: u32::try_from(index + 2).unwrap_or(u32::MAX),
                name,
                device,
            },
            kind,
        });
    }

    let simulated = config
        .adapters
        .iter()
        .any(|a| a.link == AdapterLink::Simulated)
        .then(SharedRadio::new);
    // One medium per host controller named, shared by the adapters on it.
    let mut host_media: Vec<(String, HostMedium)> = Vec::new();
    for a in &config.adapters {
        let medium = match &a.link {
            AdapterLink::Simulated => match &simulated {
                Some(radio) => Medium::Simulated(radio.clone()),
                None => continue,
            },
            AdapterLink::Host {
                adapter,
                accept_psms,
            } => {
                let host = HostAdapter::resolve(adapter)
                    .map_err(|e| format!("adapter {}: host adapter {adapter}: {e}", a.name))?;
                let medium = match host_media.iter().find(|(_, m)| m.host() == host) {
                    Some((_, m)) => m.clone(),
                    None => {
                        let m = HostMedium::new(host, data_dir.join(BT_KEYS_DIR));
                        host_media.push((adapter.clone(), m.clone()));
                        m
                    }
                };
                println!(
                    "periwire: adapter {} links through host adapter hci{} ({})",
                    a.name, host.index, host.address
                );
                Medium::Host(medium.accepting(accept_psms))
            }
        };
        let address = a.address.map_or_else(|| address_for(&a.name), |a| a.0);
        match &a.transport {
            AdapterTransport::Usb { busid } => {
                let mut controller = ControllerConfig::new(address);
                controller.name = a.name.clone();
                let dongle = UsbDongle::new(&medium, controller);
                declared.push(Declared {
                    export: Export {
                        busid: BusId::new(busid)?,
                        busnum: busnum_of(busid),
                        devnum: u32::try_from(declared.len() + 2).unwrap_or(u32::MAX),
                        name: a.name.clone(),
                        device: Arc::new(dongle),
                    },
                    kind: ExportKind::Bluetooth,
                });
            }
            AdapterTransport::Tcp { listen } => {
                let server =
                    H4Server::bind_tcp(*listen, medium, AdapterPlan::new(address, &a.name))
                        .await
                        .map_err(|e| format!("adapter {}: listening on {listen}: {e}", a.name))?;
                if let Some(addr) = server.local_addr() {
                    println!("periwire: adapter {} HCI H4 on tcp {addr}", a.name);
                }
                bridges.push(tokio::spawn(async move {
                    let _ = server.run().await;
                }));
            }
            AdapterTransport::Vhci { path } => {
                let mut controller = ControllerConfig::new(address);
                controller.name = a.name.clone();
                let vhci = periwire_bt::vhci::Vhci::open(path)
                    .map_err(|e| format!("adapter {}: {}: {e}", a.name, path.display()))?;
                let adapter = medium.attach(controller);
                let (name, path) = (a.name.clone(), path.clone());
                bridges.push(tokio::spawn(async move {
                    let registered =
                        |index| println!("periwire: adapter {name} is hci{index} (vhci)");
                    if let Err(e) = vhci.serve(&adapter, registered).await {
                        tracing::error!(adapter = %name, path = %path.display(), error = %e, "vhci adapter stopped");
                    }
                }));
            }
            AdapterTransport::Unix { path } => {
                let path = resolve(&data_dir, path);
                let server = H4Server::bind_unix(&path, medium, AdapterPlan::new(address, &a.name))
                    .map_err(|e| format!("adapter {}: socket {}: {e}", a.name, path.display()))?;
                println!(
                    "periwire: adapter {} HCI H4 on unix {}",
                    a.name,
                    path.display()
                );
                bridges.push(tokio::spawn(async move {
                    let _ = server.run().await;
                }));
            }
        }
    }
    let manager = DeviceManager::new(registry.clone(), StateFile::in_dir(&data_dir), declared)?;
    let watcher = tokio::spawn(Arc::clone(&manager).watch());
    let control = ControlState {
        manager,
        keyboards,
        mice,
        radio: simulated,
        host_media: host_media.into_iter().map(|(_, m)| m).collect(),
    };

    let socket = data_dir.join(CONTROL_SOCKET);
    let control_listener = crate::control::bind(&socket)
        .map_err(|e| format!("control socket {}: {e}", socket.display()))?;
    let control = Arc::new(control);
    let web_task = match args.web.0 {
        Some(addr) => bind_web(addr, &data_dir, true)
            .await?
            .map(|(listener, token)| {
                let mode = crate::web::Mode::Server(Arc::clone(&control));
                tokio::spawn(crate::web::serve(listener, mode, token))
            }),
        None => None,
    };
    let control_task = tokio::spawn(crate::control::serve(control_listener, control));

    // One set of access rules for every listener: plain (unauthenticated) USB/IP and usbredir
    // only from loopback and plain_allow, and per-device allow lists.
    let rules = Arc::new(AccessRules {
        plain_allow: config.plain_allow.iter().map(|n| n.0).collect(),
        allow: (config.devices.iter())
            .filter_map(|d| Some((BusId::new(&d.busid).ok()?, d.allow.clone()?)))
            .collect(),
    });
    let plain_networks = || {
        let networks: Vec<String> = rules.plain_allow.iter().map(|n| n.to_string()).collect();
        networks.join(", ")
    };

    let mut usbredir_listeners = Vec::new();
    for d in config.devices.iter() {
        let Some(addr) = d.usbredir else {
            continue;
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("device {}: usbredir listener {addr}: {e}", d.busid))?;
        let addr = listener.local_addr()?;
        let tls = if d.usbredir_tls {
            // A server certificate for the address QEMU dials, fresh at each start.
            let host = periwire_server::secure::identity::host_name();
            let config = (crate::secure::usbredir_ca(&data_dir)?)
                .server_config(addr.ip(), &host)
                .map_err(|e| format!("device {}: usbredir TLS: {e}", d.busid))?;
            tracing::info!(%addr, busid = %d.busid, "usbredir over TLS only: QEMU needs credentials from `periwire usbredir-creds`");
            Some(config)
        } else {
            if !addr.ip().is_loopback() {
                if rules.plain_allow.is_empty() {
                    tracing::warn!(%addr, busid = %d.busid, "usbredir beyond loopback, but plain_allow is empty: only guests on loopback are served");
                } else {
                    tracing::warn!(%addr, busid = %d.busid, networks = %plain_networks(), "usbredir, without authentication or encryption, is accepted from these networks");
                }
            }
            None
        };
        println!("periwire: device {} on usbredir {addr}", d.busid);
        usbredir_listeners.push((BusId::new(&d.busid)?, listener, tls));
    }

    let listen = args
        .listen
        .or(config.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], USBIP_PORT)));
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("listening on {listen}: {e}"))?;
    let identity = crate::secure::identity(&data_dir)?;
    let door = FrontDoor {
        identity,
        data_dir: data_dir.clone(),
        rules: Arc::clone(&rules),
    };
    if !listen.ip().is_loopback() && !rules.plain_allow.is_empty() {
        tracing::warn!(%listen, networks = %plain_networks(), "plain USB/IP, without authentication or encryption, is accepted from these networks");
    }
    println!(
        "periwire: identity {} {} (TLS clients pin this)",
        door.identity.name, door.identity.fingerprint
    );
    let announcement = if listen.ip().is_loopback() || args.no_announce {
        None
    } else {
        let fingerprint = door.identity.fingerprint.to_string();
        match crate::discovery::announce(listener.local_addr()?, &fingerprint) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!(error = %e, "not announced on the local network");
                None
            }
        }
    };
    // Tests and scripts wait for this line to know the server is ready.
    println!(
        "periwire: serving {} device(s) on {} (data directory {})",
        registry.exports().len(),
        listener.local_addr()?,
        data_dir.display()
    );
    // One signal stops every server; the usbredir ones first (each tells its guest the device
    // is gone), so the USB/IP server's final flush of the devices comes after them.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let usbredir_servers: Vec<_> = usbredir_listeners
        .into_iter()
        .map(|(busid, listener, tls)| {
            let mut stop = stop_rx.clone();
            let access = periwire_server::usbredir::UsbredirAccess {
                rules: Arc::clone(&rules),
                tls,
            };
            tokio::spawn(periwire_server::usbredir::serve(
                listener,
                registry.clone(),
                busid,
                access,
                UsbredirConfig::default(),
                async move {
                    let _ = stop.wait_for(|stopping| *stopping).await;
                },
            ))
        })
        .collect();
    let shutdown = async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
        for server in usbredir_servers {
            let _ = server.await;
        }
    };
    periwire_server::front_door::serve_front_door(
        listener,
        Arc::new(door),
        registry,
        ServerConfig::default(),
        shutdown,
    )
    .await?;
    drop(announcement);
    control_task.abort();
    watcher.abort();
    if let Some(w) = web_task {
        w.abort();
    }
    for b in bridges {
        b.abort();
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

fn resolve(data_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        data_dir.join(p)
    }
}

/// A serial number Linux accepts for a mass-storage device, stable per bus id.
fn serial_for(busid: &str) -> String {
    let hex: String = busid.bytes().map(|b| format!("{b:02X}")).collect();
    format!("{:0>12}", hex)
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
