//! The local control socket: a Unix socket in the server's data directory through which
//! `periwire input`, `status`, `bind` and `unbind` talk to a running server (and the web page
//! makes the same requests). One JSON request per line,
//! one JSON response per line. The socket file is created mode 0600 so that only the user who
//! runs the server can type on its keyboards.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use periwire_usb::hid::{KeyboardHandle, MouseHandle};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::devices::{DeviceManager, DeviceStatus, LocalDevice};
use crate::state::{Binding, HardwareId, Target, Unbind};

/// Longest request line accepted, so a confused client cannot make the server buffer without
/// bound.
const MAX_REQUEST_LINE: usize = 64 * 1024;

/// A mouse button.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MouseButton {
    /// Primary button.
    Left,
    /// Secondary button.
    Right,
    /// Middle button / wheel press.
    Middle,
}

impl std::str::FromStr for MouseButton {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "left" => Ok(Self::Left),
            "right" => Ok(Self::Right),
            "middle" => Ok(Self::Middle),
            other => Err(format!(
                "unknown button {other:?}: use left, right or middle"
            )),
        }
    }
}

/// A request on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum ControlRequest {
    /// List the exported devices and who holds each.
    Status,
    /// List this machine's USB devices and whether each is shared.
    Local,
    /// Share a host device (and persist the binding).
    Bind(BindRequest),
    /// Withdraw devices.
    Unbind(UnbindRequest),
    /// List the virtual Bluetooth adapters and their links.
    Adapters,
    /// Wait until no client holds a device (answers `Ok`, or an error after the timeout).
    WaitReleased {
        /// The device's bus id.
        busid: String,
        /// Longest wait in milliseconds.
        timeout_ms: u64,
    },
    /// Type text on a keyboard.
    Type {
        /// Keyboard name or bus id; the first keyboard if absent.
        device: Option<String>,
        /// The text.
        text: String,
    },
    /// Move a mouse.
    MouseMove {
        /// Mouse name or bus id; the first mouse if absent.
        device: Option<String>,
        /// Horizontal movement.
        dx: i32,
        /// Vertical movement.
        dy: i32,
    },
    /// Click a mouse button.
    MouseClick {
        /// Mouse name or bus id; the first mouse if absent.
        device: Option<String>,
        /// The button.
        button: MouseButton,
    },
}

/// What to bind: exactly one of `busid` and `hardware_id`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindRequest {
    /// A port's bus id.
    #[serde(default)]
    pub busid: Option<String>,
    /// `VID:PID`.
    #[serde(default)]
    pub hardware_id: Option<String>,
    /// With `hardware_id`: only the device with this serial number.
    #[serde(default)]
    pub serial: Option<String>,
    /// Take the device from its local drivers at once.
    #[serde(default)]
    pub force: bool,
}

impl BindRequest {
    /// The binding it asks for, or why it is not one.
    pub fn binding(&self) -> Result<Binding, String> {
        let target = match (&self.busid, &self.hardware_id, &self.serial) {
            (Some(b), None, None) => {
                crate::state::check_busid(b).map_err(|e| e.to_string())?;
                Target::BusId(b.clone())
            }
            (Some(_), None, Some(_)) => {
                return Err("serial goes with hardware_id, not busid".into())
            }
            (None, Some(h), serial) => Target::Hardware {
                id: h.parse::<HardwareId>().map_err(|e| e.to_string())?,
                serial: serial.clone(),
            },
            _ => return Err("give exactly one of busid and hardware_id".into()),
        };
        Ok(Binding {
            target,
            force: self.force,
        })
    }
}

/// What to unbind: exactly one of `busid`, `hardware_id` and `all`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnbindRequest {
    /// A bus id.
    #[serde(default)]
    pub busid: Option<String>,
    /// `VID:PID`.
    #[serde(default)]
    pub hardware_id: Option<String>,
    /// Everything.
    #[serde(default)]
    pub all: bool,
}

impl UnbindRequest {
    /// What it asks to unbind, or why it is not valid.
    pub fn which(&self) -> Result<Unbind, String> {
        match (&self.busid, &self.hardware_id, self.all) {
            (Some(b), None, false) => {
                crate::state::check_busid(b).map_err(|e| e.to_string())?;
                Ok(Unbind::BusId(b.clone()))
            }
            (None, Some(h), false) => Ok(Unbind::Hardware(
                h.parse::<HardwareId>().map_err(|e| e.to_string())?,
            )),
            (None, None, true) => Ok(Unbind::All),
            _ => Err("give exactly one of busid, hardware_id and all".into()),
        }
    }
}

/// One link of a Bluetooth adapter in an adapters reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// Connection handle.
    pub handle: u16,
    /// Peer address.
    pub peer: String,
    /// "BR/EDR" or "LE".
    pub transport: String,
    /// "central" or "peripheral".
    pub role: String,
    /// Whether the link is encrypted.
    pub encrypted: bool,
}

/// One virtual Bluetooth adapter in an adapters reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterStatus {
    /// BD_ADDR.
    pub address: String,
    /// Local name (as the host last set it).
    pub name: String,
    /// Its medium: `simulated` or `host:hciN`.
    #[serde(default)]
    pub link: String,
    /// Its links.
    pub links: Vec<LinkStatus>,
    /// Its L2CAP channels, each one host socket (host-linked adapters only).
    #[serde(default)]
    pub channels: Vec<ChannelStatus>,
}

/// One L2CAP channel of a host-linked adapter in an adapters reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelStatus {
    /// The remote device.
    pub remote: String,
    /// The PSM.
    pub psm: u16,
    /// Whether it carries data yet.
    pub open: bool,
    /// Whether the remote opened it (to a PSM the adapter accepts).
    #[serde(default)]
    pub incoming: bool,
    /// Payload bytes from the guest to the remote.
    pub bytes_to_remote: u64,
    /// Payload bytes from the remote to the guest.
    pub bytes_to_guest: u64,
}

/// A response on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum ControlResponse {
    /// Done.
    Ok,
    /// Done, and what was done.
    Done {
        /// For the user.
        message: String,
    },
    /// This machine's devices.
    Local {
        /// Every device.
        devices: Vec<LocalDevice>,
    },
    /// The device table.
    Status {
        /// Every device.
        devices: Vec<DeviceStatus>,
    },
    /// The Bluetooth adapters.
    Adapters {
        /// Every adapter, simulated and host-linked.
        adapters: Vec<AdapterStatus>,
    },
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
}

/// A named input device the control socket can drive.
#[derive(Clone)]
pub struct NamedInput<H> {
    /// Its name.
    pub name: String,
    /// Its bus id.
    pub busid: String,
    /// The handle that injects input.
    pub handle: H,
}

/// What the control socket serves.
#[derive(Clone)]
pub struct ControlState {
    /// The server's devices.
    pub manager: Arc<DeviceManager>,
    /// Keyboards.
    pub keyboards: Vec<NamedInput<KeyboardHandle>>,
    /// Mice.
    pub mice: Vec<NamedInput<MouseHandle>>,
    /// The simulated Bluetooth radio, if any adapter is configured on it.
    pub radio: Option<periwire_bt::SharedRadio>,
    /// The host links of host-linked adapters, one per host controller.
    pub host_media: Vec<periwire_bt::host::HostMedium>,
}

fn link_statuses(links: Vec<periwire_hci::controller::LinkInfo>) -> Vec<LinkStatus> {
    links
        .into_iter()
        .map(|l| LinkStatus {
            handle: l.handle,
            peer: l.peer_address.to_string(),
            transport: match l.transport {
                periwire_hci::medium::Transport::BrEdr => "BR/EDR",
                periwire_hci::medium::Transport::Le => "LE",
            }
            .to_owned(),
            role: format!("{:?}", l.role).to_lowercase(),
            encrypted: l.encrypted,
        })
        .collect()
}

fn pick<'a, H>(
    list: &'a [NamedInput<H>],
    wanted: &Option<String>,
    kind: &str,
) -> Result<&'a NamedInput<H>, String> {
    match wanted {
        None => list
            .first()
            .ok_or_else(|| format!("the server has no {kind}")),
        Some(w) => list
            .iter()
            .find(|n| &n.name == w || &n.busid == w)
            .ok_or_else(|| format!("no {kind} named {w}")),
    }
}

impl ControlState {
    /// The input device `wanted` (or the first of its kind), if a client has it attached:
    /// input sent to a device nobody uses would surface, stale, whenever one attaches.
    fn attached<'a, H>(
        &self,
        list: &'a [NamedInput<H>],
        wanted: &Option<String>,
        kind: &str,
    ) -> Result<&'a H, String> {
        let input = pick(list, wanted, kind)?;
        let attached = periwire_wire::usbip::BusId::new(&input.busid)
            .map(|b| self.manager.registry().is_claimed(&b))
            .unwrap_or(false);
        if attached {
            Ok(&input.handle)
        } else {
            Err(format!(
                "{kind} {} ({}) is not attached to any client",
                input.name, input.busid
            ))
        }
    }

    /// Carries out one request.
    pub async fn handle(&self, request: ControlRequest) -> ControlResponse {
        let result = match request {
            ControlRequest::Status => {
                return ControlResponse::Status {
                    devices: self.manager.status(),
                };
            }
            ControlRequest::Local => {
                return ControlResponse::Local {
                    devices: self.manager.local(),
                };
            }
            ControlRequest::Bind(request) => {
                let manager = Arc::clone(&self.manager);
                return done(request.binding().and_then(|binding| {
                    // Opening a forced device and listing devices touch sysfs and usbfs.
                    tokio::task::block_in_place(|| manager.bind(binding))
                }));
            }
            ControlRequest::Unbind(request) => {
                let manager = Arc::clone(&self.manager);
                return done(
                    request
                        .which()
                        .and_then(|which| tokio::task::block_in_place(|| manager.unbind(which))),
                );
            }
            ControlRequest::Adapters => {
                let mut adapters: Vec<AdapterStatus> = self
                    .radio
                    .as_ref()
                    .map(|r| r.adapters())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(_, address, name, links)| AdapterStatus {
                        address: address.to_string(),
                        name,
                        link: "simulated".to_owned(),
                        links: link_statuses(links),
                        channels: Vec::new(),
                    })
                    .collect();
                for medium in &self.host_media {
                    adapters.extend(medium.adapters().into_iter().map(|a| {
                        AdapterStatus {
                            address: a.address.to_string(),
                            name: a.name,
                            link: format!("host:hci{}", a.host.index),
                            links: link_statuses(a.links),
                            channels: a
                                .channels
                                .into_iter()
                                .map(|c| ChannelStatus {
                                    remote: c.remote.to_string(),
                                    psm: c.psm,
                                    open: c.open,
                                    incoming: c.incoming,
                                    bytes_to_remote: c.bytes_to_remote,
                                    bytes_to_guest: c.bytes_to_guest,
                                })
                                .collect(),
                        }
                    }));
                }
                return ControlResponse::Adapters { adapters };
            }
            ControlRequest::WaitReleased { busid, timeout_ms } => {
                let wait = async {
                    let id = periwire_wire::usbip::BusId::new(&busid).map_err(|e| e.to_string())?;
                    let registry = self.manager.registry();
                    if !registry.exports().iter().any(|e| e.busid == id) {
                        return Err(format!("no device {busid}"));
                    }
                    registry.wait_until_free(&id).await;
                    Ok(())
                };
                match tokio::time::timeout(std::time::Duration::from_millis(timeout_ms), wait).await
                {
                    Ok(r) => r,
                    Err(_) => Err(format!(
                        "device {busid} still imported after {timeout_ms} ms"
                    )),
                }
            }
            ControlRequest::Type { device, text } => {
                match self.attached(&self.keyboards, &device, "keyboard") {
                    Ok(k) => k.type_text(&text).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                }
            }
            ControlRequest::MouseMove { device, dx, dy } => {
                match self.attached(&self.mice, &device, "mouse") {
                    Ok(m) => m.move_by(dx, dy).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                }
            }
            ControlRequest::MouseClick { device, button } => {
                match self.attached(&self.mice, &device, "mouse") {
                    Ok(m) => {
                        let b = match button {
                            MouseButton::Left => periwire_usb::hid::MouseButton::Left,
                            MouseButton::Right => periwire_usb::hid::MouseButton::Right,
                            MouseButton::Middle => periwire_usb::hid::MouseButton::Middle,
                        };
                        m.click(b).await.map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok(()) => ControlResponse::Ok,
            Err(message) => ControlResponse::Error { message },
        }
    }
}

fn done(result: Result<String, String>) -> ControlResponse {
    match result {
        Ok(message) => ControlResponse::Done { message },
        Err(message) => ControlResponse::Error { message },
    }
}

/// Binds the control socket at `path` (replacing a stale one) with mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves control requests on `listener` until the task is dropped.
pub async fn serve(listener: UnixListener, state: Arc<ControlState>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_client(stream, &state).await {
                debug!(error = %e, "control client ended");
            }
        });
    }
}

async fn serve_client(stream: UnixStream, state: &ControlState) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut reader = BufReader::new(rd);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Read at most one byte past the cap, so an endless line cannot grow the buffer.
        let n = (&mut reader)
            .take(MAX_REQUEST_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let response = if line.last() != Some(&b'\n') && n > MAX_REQUEST_LINE {
            let mut out = serde_json::to_vec(&ControlResponse::Error {
                message: "request too long".into(),
            })
            .map_err(std::io::Error::other)?;
            out.push(b'\n');
            wr.write_all(&out).await?;
            return Ok(());
        } else {
            match serde_json::from_slice::<ControlRequest>(&line) {
                Ok(req) => state.handle(req).await,
                Err(e) => ControlResponse::Error {
                    message: format!("invalid request: {e}"),
                },
            }
        };
        let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
        out.push(b'\n');
        wr.write_all(&out).await?;
    }
}

/// Why a control request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ControlClientError {
    /// The socket could not be reached.
    #[error("cannot reach the server's control socket {path}: {source} (is `periwire serve` running with this data directory?)")]
    Connect {
        /// The socket path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Talking to it failed.
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    /// The reply is not valid.
    #[error("invalid reply on the control socket: {0}")]
    Reply(#[from] serde_json::Error),
    /// The server closed the socket without replying.
    #[error("the server closed the control socket without replying")]
    Closed,
}

/// Sends one request to the control socket at `path` and returns the response.
pub async fn request(
    path: &Path,
    request: &ControlRequest,
) -> Result<ControlResponse, ControlClientError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| ControlClientError::Connect {
            path: path.display().to_string(),
            source,
        })?;
    let (rd, mut wr) = stream.into_split();
    let mut out = serde_json::to_vec(request)?;
    out.push(b'\n');
    wr.write_all(&out).await?;
    let mut lines = BufReader::new(rd).lines();
    let line = lines.next_line().await?.ok_or(ControlClientError::Closed)?;
    Ok(serde_json::from_str(&line)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{Declared, ExportKind};
    use periwire_server::{Export, Registry};

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn input_goes_only_to_an_attached_keyboard() {
        let registry = Registry::new();
        let (kbd, handle) = periwire_usb::hid::Keyboard::new();
        let busid = periwire_wire::usbip::BusId::new("1-1").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let manager = DeviceManager::new(
            registry.clone(),
            crate::state::StateFile::in_dir(dir.path()),
            vec![Declared {
                export: Export {
                    busid: busid.clone(),
                    busnum: 1,
                    devnum: 2,
                    name: "kbd".into(),
                    device: Arc::new(kbd),
                },
                kind: ExportKind::Keyboard,
            }],
        )
        .unwrap();
        let state = ControlState {
            manager,
            keyboards: vec![NamedInput {
                name: "kbd".into(),
                busid: "1-1".into(),
                handle: handle.clone(),
            }],
            mice: Vec::new(),
            radio: None,
            host_media: Vec::new(),
        };
        let typed = |device: Option<&str>| ControlRequest::Type {
            device: device.map(str::to_owned),
            text: "a".into(),
        };
        let ControlResponse::Error { message } = state.handle(typed(None)).await else {
            panic!("typing on a detached keyboard must fail");
        };
        assert!(message.contains("not attached"), "{message}");
        assert_eq!(handle.queued(), 0);

        let _claim = registry.claim(&busid).unwrap();
        assert_eq!(state.handle(typed(Some("kbd"))).await, ControlResponse::Ok);
        assert_eq!(handle.queued(), 2, "key down and key up");
        let ControlResponse::Error { message } = state.handle(typed(Some("nope"))).await else {
            panic!("unknown keyboard");
        };
        assert!(message.contains("no keyboard named nope"));
        let ControlResponse::Error { .. } = state
            .handle(ControlRequest::MouseClick {
                device: None,
                button: MouseButton::Left,
            })
            .await
        else {
            panic!("no mouse");
        };
        let ControlResponse::Status { devices } = state.handle(ControlRequest::Status).await else {
            panic!("status");
        };
        assert!(devices[0].imported);
    }

    #[test]
    fn requests_have_a_stable_json_form() {
        let r = ControlRequest::Type {
            device: None,
            text: "hi".into(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"op":"type","device":null,"text":"hi"}"#
        );
        let back: ControlRequest =
            serde_json::from_str(r#"{"op":"mouse-move","device":"m","dx":-3,"dy":4}"#).unwrap();
        assert_eq!(
            back,
            ControlRequest::MouseMove {
                device: Some("m".into()),
                dx: -3,
                dy: 4
            }
        );
    }
}
