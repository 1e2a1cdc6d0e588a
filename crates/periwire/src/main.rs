//! `periwire`: share the peripherals in front of the user with virtual machines over USB/IP.

mod attach;
mod config;
mod redirect;
mod secure;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use periwire_server::control::{ControlRequest, ControlResponse, MouseButton};
use periwire_server::usbip_map;
use periwire_usb::InterfaceClass;

/// Share USB devices with virtual machines over USB/IP.
#[derive(Debug, Parser)]
#[command(name = "periwire", version, about)]
struct Cli {
    /// More logging (-v info, -vv debug, -vvv trace). RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Data directory: disk images and the control socket of the server
    /// [default: $XDG_DATA_HOME/periwire or ~/.local/share/periwire].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the USB/IP server exporting the configured devices (virtual and host).
    Serve(serve::ServeArgs),
    /// List the devices a USB/IP server exports, or (--local) this machine's USB devices.
    List {
        /// Server to ask, HOST or HOST:PORT.
        #[arg(long, short, default_value = "127.0.0.1")]
        remote: String,
        /// List this machine's USB devices, which a `kind = "host"` device can export.
        #[arg(long, short, conflicts_with = "remote")]
        local: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Ask over mutual TLS, the server's key checked against the pins.
        #[arg(long, conflicts_with = "local")]
        tls: bool,
        /// With --tls: pin a server seen for the first time (printing its fingerprint).
        #[arg(long, requires = "tls")]
        trust_new: bool,
    },
    /// Import a device from a USB/IP server and attach it to this machine (vhci-hcd).
    Attach {
        /// Server, HOST or HOST:PORT.
        #[arg(long, short)]
        remote: String,
        /// The device's bus id on the server.
        #[arg(long, short)]
        busid: String,
        /// Stay, and attach the device again whenever it is lost (server restart, network
        /// break), until interrupted.
        #[arg(long)]
        persist: bool,
        /// Import over mutual TLS. periwire keeps the TLS session and relays it to vhci-hcd,
        /// so it stays running while the device is attached.
        #[arg(long)]
        tls: bool,
        /// With --tls: pin a server seen for the first time (printing its fingerprint).
        #[arg(long, requires = "tls")]
        trust_new: bool,
    },
    /// Print this periwire's name and key fingerprint (made on first use), for peers to
    /// `periwire trust add`.
    Id {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage the peers this periwire trusts over TLS.
    Trust {
        #[command(subcommand)]
        action: secure::TrustAction,
    },
    /// Detach a device attached to this machine.
    Detach {
        /// The vhci port, as `periwire port` shows it.
        #[arg(long, short)]
        port: u32,
    },
    /// List the devices attached to this machine through vhci-hcd.
    Port {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Offer one USB device of this machine over usbredir (QEMU's usb-redir), as
    /// `usbredirect` does: `--device VID:PID|BUS-DEV|BUSID --to HOST:PORT | --as HOST:PORT`.
    Redirect(redirect::RedirectArgs),
    /// Send input to a running server's virtual keyboard or mouse.
    Input {
        /// Device name or bus id; defaults to the first device of the right kind.
        #[arg(long, short)]
        device: Option<String>,
        #[command(subcommand)]
        action: InputAction,
    },
    /// Show the virtual Bluetooth adapters of a running server and their links.
    Adapters {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the devices of a running server and which are imported.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Instead, wait until no client holds this device (e.g. a VM let go of a disk).
        #[arg(long, value_name = "BUSID")]
        wait_released: Option<String>,
        /// Longest wait for --wait-released, in seconds.
        #[arg(long, default_value_t = 30, requires = "wait_released")]
        timeout: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn unescapes_what_shells_pass_through() {
        assert_eq!(unescape(r"hi\n"), "hi\n");
        assert_eq!(unescape(r"a\tb\\c\q"), "a\tb\\c\\q");
        assert_eq!(unescape("trailing\\"), "trailing\\");
    }
}

/// Prints the adapters reply as a table or JSON.
fn print_adapters(
    adapters: &[periwire_server::control::AdapterStatus],
    json: bool,
) -> Result<(), AnyError> {
    if json {
        println!("{}", serde_json::to_string_pretty(adapters)?);
        return Ok(());
    }
    if adapters.is_empty() {
        println!("no Bluetooth adapters");
    }
    for a in adapters {
        println!("{}  {}  ({})", a.address, a.name, a.link);
        for l in &a.links {
            let encrypted = if l.encrypted { ", encrypted" } else { "" };
            println!(
                "    handle {:#06x}  {} {} as {}{}",
                l.handle, l.transport, l.peer, l.role, encrypted
            );
        }
        for c in &a.channels {
            let state = if c.open { "open" } else { "opening" };
            let (way, direction) = if c.incoming {
                ("from", ", incoming")
            } else {
                ("to", "")
            };
            println!(
                "    channel psm {:#06x} {way} {}  {}{direction}  {} B sent, {} B received",
                c.psm, c.remote, state, c.bytes_to_remote, c.bytes_to_guest
            );
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
enum InputAction {
    /// Type text on the keyboard (US layout).
    Type {
        /// The text; a newline or the two characters `\n` press Enter, `\t` presses Tab.
        text: String,
    },
    /// Move the mouse by a relative amount.
    Move {
        /// Horizontal movement (positive is right).
        #[arg(allow_negative_numbers = true)]
        dx: i32,
        /// Vertical movement (positive is down).
        #[arg(allow_negative_numbers = true)]
        dy: i32,
    },
    /// Click a mouse button.
    Click {
        /// left, right or middle.
        #[arg(default_value = "left")]
        button: MouseButton,
    },
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("periwire: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, cli.data_dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("periwire: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Any failure of a command, printed as one line.
type AnyError = Box<dyn std::error::Error + Send + Sync>;

async fn run(command: Command, data_dir: Option<PathBuf>) -> Result<(), AnyError> {
    match command {
        Command::Serve(args) => serve::run(args, data_dir).await,
        Command::Redirect(args) => redirect::run(args).await,
        Command::List {
            local: true, json, ..
        } => list_local(json),
        Command::List {
            remote,
            json,
            tls,
            trust_new,
            ..
        } => {
            let tls = match tls {
                true => Some(secure::tls_client(serve::data_dir(data_dir)?, trust_new)?),
                false => None,
            };
            list(&remote, json, tls.as_ref()).await
        }
        Command::Attach {
            remote,
            busid,
            persist,
            tls,
            trust_new,
        } => {
            let transport = match tls {
                true => periwire_vhci::Transport::Tls(secure::tls_client(
                    serve::data_dir(data_dir)?,
                    trust_new,
                )?),
                false => periwire_vhci::Transport::Plain,
            };
            attach::attach(&remote, &busid, persist, transport).await
        }
        Command::Id { json } => secure::id(&serve::data_dir(data_dir)?, json),
        Command::Trust { action } => secure::trust(&serve::data_dir(data_dir)?, action),
        Command::Detach { port } => attach::detach(port),
        Command::Port { json } => attach::ports(json),
        Command::Input { device, action } => {
            let request = match action {
                InputAction::Type { text } => ControlRequest::Type {
                    device,
                    text: unescape(&text),
                },
                InputAction::Move { dx, dy } => ControlRequest::MouseMove { device, dx, dy },
                InputAction::Click { button } => ControlRequest::MouseClick { device, button },
            };
            control(data_dir, request).await.map(|_| ())
        }
        Command::Adapters { json } => match control(data_dir, ControlRequest::Adapters).await? {
            ControlResponse::Adapters { adapters } => print_adapters(&adapters, json),
            _ => Err("unexpected reply on the control socket".into()),
        },
        Command::Status {
            wait_released: Some(busid),
            timeout,
            ..
        } => {
            let timeout_ms = timeout.saturating_mul(1000);
            control(data_dir, ControlRequest::WaitReleased { busid, timeout_ms })
                .await
                .map(|_| ())
        }
        Command::Status { json, .. } => {
            let response = control(data_dir, ControlRequest::Status).await?;
            if let ControlResponse::Status { devices } = response {
                if json {
                    println!("{}", serde_json::to_string_pretty(&devices)?);
                } else {
                    for d in devices {
                        let state = if d.imported { "imported" } else { "available" };
                        println!("{:<8} {:<12} {:<10} {}", d.busid, d.name, d.kind, state);
                    }
                }
            }
            Ok(())
        }
    }
}

/// Turns the escapes people type on a command line (`\n`, `\t`, `\\`) into characters.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

async fn control(
    data_dir: Option<PathBuf>,
    request: ControlRequest,
) -> Result<ControlResponse, AnyError> {
    let socket = serve::data_dir(data_dir)?.join(serve::CONTROL_SOCKET);
    let response = periwire_server::control::request(&socket, &request).await?;
    match response {
        ControlResponse::Error { message } => Err(message.into()),
        other => Ok(other),
    }
}

/// Interfaces as `class/subclass/protocol` in hex, as `usbip list` prints them.
fn interface_triples(interfaces: &[InterfaceClass]) -> Vec<String> {
    interfaces
        .iter()
        .map(|i| format!("{:02x}/{:02x}/{:02x}", i.class, i.subclass, i.protocol))
        .collect()
}

/// The interfaces of a remote device list entry, in the model's terms.
fn remote_interfaces(interfaces: &[periwire_wire::usbip::InterfaceRecord]) -> Vec<InterfaceClass> {
    (interfaces.iter().copied())
        .map(usbip_map::interface_from_wire)
        .collect()
}

/// Prints this machine's USB devices, as `usbip list -l` does.
fn list_local(json: bool) -> Result<(), AnyError> {
    let devices = periwire_host::list_devices()?;
    if json {
        let rows: Vec<_> = devices
            .iter()
            .map(|d| {
                serde_json::json!({
                    "busid": d.busid,
                    "vendor_id": format!("{:04x}", d.vendor_id),
                    "product_id": format!("{:04x}", d.product_id),
                    "manufacturer": d.manufacturer,
                    "product": d.product,
                    "serial": d.serial,
                    "speed": d.speed.name(),
                    "class": d.class,
                    "interfaces": interface_triples(&d.interfaces),
                    "drivers": d.drivers,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if devices.is_empty() {
        println!("no USB devices on this machine");
    }
    for d in &devices {
        let name = d
            .product
            .as_deref()
            .or(d.manufacturer.as_deref())
            .unwrap_or("-");
        let drivers = if d.drivers.is_empty() {
            "no driver".to_owned()
        } else {
            d.drivers.join(", ")
        };
        println!(
            "{:<10} {:04x}:{:04x}  {name}  ({drivers})",
            d.busid, d.vendor_id, d.product_id
        );
    }
    Ok(())
}

async fn list(
    remote: &str,
    json: bool,
    tls: Option<&periwire_server::secure::connect::TlsClient>,
) -> Result<(), AnyError> {
    let remote = periwire_server::client::Remote::parse(remote)?;
    let addr = remote.to_string();
    let timeout = Duration::from_secs(10);
    let devices = match tls {
        None => periwire_server::client::list_devices(&addr, timeout).await?,
        Some(tls) => {
            let mut connected = tls.connect(&remote, timeout).await?;
            periwire_server::client::list_devices_on(&mut connected.stream, timeout).await?
        }
    };
    if json {
        let rows: Vec<_> = devices
            .iter()
            .map(|d| {
                serde_json::json!({
                    "busid": d.device.busid.as_str(),
                    "vendor_id": format!("{:04x}", d.device.id_vendor),
                    "product_id": format!("{:04x}", d.device.id_product),
                    "speed": usbip_map::speed_from_wire(d.device.speed).name(),
                    "class": d.device.device_class,
                    "interfaces": interface_triples(&remote_interfaces(&d.interfaces)),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if devices.is_empty() {
        println!("{addr}: no exportable devices");
    }
    for d in &devices {
        let r = &d.device;
        println!(
            "{:>8}: {:04x}:{:04x} ({})",
            r.busid,
            r.id_vendor,
            r.id_product,
            usbip_map::speed_from_wire(r.speed).name()
        );
        for (n, i) in d.interfaces.iter().enumerate() {
            println!(
                "          {n}: class {:02x}/{:02x}/{:02x}",
                i.class, i.subclass, i.protocol
            );
        }
    }
    Ok(())
}
