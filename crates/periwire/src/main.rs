//! `periwire`: share the peripherals in front of the user with virtual machines over USB/IP.

mod attach;
mod config;
mod control;
mod devices;
mod discovery;
mod listing;
mod names;
mod redirect;
mod secure;
mod serve;
mod state;
mod table;
mod web;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use control::{BindRequest, ControlRequest, ControlResponse, MouseButton, UnbindRequest};
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
    /// List the devices a USB/IP server exports, or (--local) this machine's USB devices
    /// and whether each is shared.
    List {
        /// Server to ask, HOST or HOST:PORT.
        #[arg(long, short, default_value = "127.0.0.1")]
        remote: String,
        /// List this machine's USB devices, which `periwire bind` shares.
        #[arg(long, short, conflicts_with_all = ["remote", "discover"])]
        local: bool,
        /// Find the servers on the local network (DNS-SD, `_usbip._tcp`) and list theirs.
        #[arg(long, conflicts_with = "remote")]
        discover: bool,
        /// With --discover: how long to listen for servers, in seconds.
        #[arg(long, default_value_t = 3, requires = "discover")]
        wait: u64,
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
    /// Share a USB device of this machine: now if a server runs, and from its next start.
    #[command(group = clap::ArgGroup::new("what").required(true).args(["busid", "hardware_id"]))]
    Bind {
        /// The port's bus id (`periwire list --local`): whatever is plugged in there.
        #[arg(long, short)]
        busid: Option<String>,
        /// VID:PID: that device, wherever it is plugged in.
        #[arg(long, value_name = "VID:PID")]
        hardware_id: Option<String>,
        /// With --hardware-id: only the device with this serial number.
        #[arg(long, requires = "hardware_id")]
        serial: Option<String>,
        /// Take the device from its local drivers now, not when a client attaches it.
        #[arg(long)]
        force: bool,
    },
    /// Stop sharing devices (a client using one loses it).
    #[command(group = clap::ArgGroup::new("what").required(true).args(["busid", "hardware_id", "all"]))]
    Unbind {
        /// The bus id: its binding, and that of the device plugged in there.
        #[arg(long, short)]
        busid: Option<String>,
        /// VID:PID.
        #[arg(long, value_name = "VID:PID")]
        hardware_id: Option<String>,
        /// Every binding.
        #[arg(long)]
        all: bool,
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
    /// Issue QEMU a client certificate from periwire's usbredir CA (made on first use), for
    /// the devices whose usbredir listener has `usbredir_tls = true`: writes `ca-cert.pem`,
    /// `client-cert.pem` and `client-key.pem` into DIR, the directory of QEMU's
    /// `-object tls-creds-x509,id=tls0,dir=DIR,endpoint=client`.
    UsbredirCreds {
        /// The client's name: in the certificate, in periwire's logs, and what a device's
        /// `allow` list names.
        #[arg(long)]
        name: String,
        /// The directory to write into (created if missing).
        #[arg(long)]
        out: std::path::PathBuf,
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
    /// Serve the client's web page: a remote server's devices, with attach and detach, and
    /// this machine's vhci ports.
    Ui {
        /// The server, HOST or HOST:PORT.
        #[arg(long, short)]
        remote: String,
        /// Where the page listens. Beyond loopback it asks for the token in the data
        /// directory (`web-token`).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3280")]
        web: std::net::SocketAddr,
        /// List and import over mutual TLS, the server's key checked against the pins.
        #[arg(long)]
        tls: bool,
        /// With --tls: pin a server seen for the first time (printing its fingerprint).
        #[arg(long, requires = "tls")]
        trust_new: bool,
    },
    /// Show the devices of a running server, who uses each, and what they moved.
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
fn print_adapters(adapters: &[control::AdapterStatus], json: bool) -> Result<(), AnyError> {
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
        } => listing::list_local(data_dir, json).await,
        Command::List {
            remote,
            discover,
            wait,
            json,
            tls,
            trust_new,
            ..
        } => {
            let tls = match tls {
                true => Some(secure::tls_client(serve::data_dir(data_dir)?, trust_new)?),
                false => None,
            };
            match discover {
                true => listing::list_discovered(Duration::from_secs(wait), json, tls).await,
                false => listing::list_remote(&remote, json, tls.as_ref()).await,
            }
        }
        Command::Bind {
            busid,
            hardware_id,
            serial,
            force,
        } => {
            let request = BindRequest {
                busid,
                hardware_id,
                serial,
                force,
            };
            listing::bind(data_dir, request).await
        }
        Command::Unbind {
            busid,
            hardware_id,
            all,
        } => {
            let request = UnbindRequest {
                busid,
                hardware_id,
                all,
            };
            listing::unbind(data_dir, request).await
        }
        Command::Attach {
            remote,
            busid,
            persist,
            tls,
            trust_new,
        } => {
            let transport = transport(tls, trust_new, data_dir)?;
            attach::attach(&remote, &busid, persist, transport).await
        }
        Command::Id { json } => secure::id(&serve::data_dir(data_dir)?, json),
        Command::Trust { action } => secure::trust(&serve::data_dir(data_dir)?, action),
        Command::UsbredirCreds { name, out } => {
            secure::usbredir_creds(&serve::data_dir(data_dir)?, &name, &out)
        }
        Command::Detach { port } => attach::detach(port),
        Command::Ui {
            remote,
            web,
            tls,
            trust_new,
        } => {
            let data_dir = serve::data_dir(data_dir)?;
            let transport = transport(tls, trust_new, Some(data_dir.clone()))?;
            let Some((listener, token)) = serve::bind_web(web, &data_dir, false).await? else {
                return Ok(());
            };
            let mode = web::Mode::Client { remote, transport };
            tokio::select! {
                r = web::serve(listener, mode, token) => r?,
                () = serve::shutdown_signal() => {}
            }
            Ok(())
        }
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
        Command::Status { json, .. } => match control(data_dir, ControlRequest::Status).await? {
            ControlResponse::Status { devices } => listing::print_status(&devices, json),
            _ => Err("unexpected reply on the control socket".into()),
        },
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
    let response = control::request(&socket, &request).await?;
    match response {
        ControlResponse::Error { message } => Err(message.into()),
        other => Ok(other),
    }
}

/// How `attach` and `ui` reach a server: plain USB/IP, or (`tls`) mutual TLS with this
/// periwire's identity and pins.
fn transport(
    tls: bool,
    trust_new: bool,
    data_dir: Option<PathBuf>,
) -> Result<periwire_vhci::Transport, AnyError> {
    Ok(match tls {
        true => periwire_vhci::Transport::Tls(secure::tls_client(
            serve::data_dir(data_dir)?,
            trust_new,
        )?),
        false => periwire_vhci::Transport::Plain,
    })
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
