//! The isolated TAP network: a network namespace the harness creates, holding a TAP device
//! that QEMU (run inside the namespace) plugs the guest's card into, and the host end of the
//! link. Servers a test runs for the guest bind their sockets inside the namespace
//! ([`TapNetwork::bind_tcp`]) or run inside it ([`TapNetwork::command`]); the namespace has
//! no other link and no route, so nothing the guest sends can leave it.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::{Error, Result};

/// The host's end of the TAP link, inside the namespace: the guest's server and gateway.
pub const TAP_HOST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The guest's address on the TAP link.
pub const TAP_GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The link's prefix length (10.77.0.0/24).
pub const TAP_PREFIX: u8 = 24;
/// The TAP device's name inside the namespace (names are per namespace, so every guest's
/// can be the same).
pub(crate) const TAP_DEVICE: &str = "tap0";

/// Namespace names start with this, then the test process's pid and a counter.
const NAME_PREFIX: &str = "pwguest-";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace with a TAP device for one guest's network card
/// ([`crate::GuestConfig::tap_network`]). Clones share it; the namespace (and the TAP device
/// in it) is deleted when the last clone, and the guest booted with it, is dropped — also
/// when a test panics. Namespaces of test processes that were killed are deleted by the next
/// [`TapNetwork::new`].
#[derive(Debug, Clone)]
pub struct TapNetwork(Arc<Namespace>);

#[derive(Debug)]
struct Namespace {
    name: String,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs `ip ARGS`, failing with its error message.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::MissingTool {
                what: "ip".into(),
                detail: "Debian package iproute2".into(),
            }
        } else {
            Error::io("running ip", e)
        }
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Network(format!(
            "ip {}: {} (creating a network namespace needs root)",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Deletes the harness's namespaces whose test process no longer runs (killed before its
/// drops ran). Best effort.
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NAME_PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new("/proc").join(pid).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

impl TapNetwork {
    /// Creates the namespace (named after this process and a counter, so parallel tests do
    /// not collide): loopback up, the TAP device with [`TAP_HOST_ADDR`] on it, up. Needs root
    /// and iproute2.
    pub fn new() -> Result<TapNetwork> {
        remove_stale_namespaces();
        let name = format!(
            "{NAME_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        // From here on, a failure deletes the namespace (the drop).
        let net = TapNetwork(Arc::new(Namespace { name }));
        let ns = net.name();
        let host = format!("{TAP_HOST_ADDR}/{TAP_PREFIX}");
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "tuntap", "add", "dev", TAP_DEVICE, "mode", "tap"])?;
        ip(&["-n", ns, "addr", "add", &host, "dev", TAP_DEVICE])?;
        ip(&["-n", ns, "link", "set", TAP_DEVICE, "up"])?;
        Ok(net)
    }

    /// The namespace's name (for `ip netns exec NAME ...`).
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME program`):
    /// a server the guest reaches at [`TAP_HOST_ADDR`].
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.name()]).arg(program);
        cmd
    }

    /// A TCP listener bound to `addr` inside the namespace (typically
    /// `(TAP_HOST_ADDR, port).into()`), for a server in this process: a socket keeps the
    /// namespace it was made in, so it is made on a short-lived thread that joins the
    /// namespace, and the rest of the process stays where it is.
    pub fn bind_tcp(&self, addr: SocketAddr) -> Result<TcpListener> {
        self.in_namespace(move || TcpListener::bind(addr))
            .map_err(|e| Error::io(format!("binding {addr} in {}", self.name()), e))
    }

    /// Runs `f` on a thread of its own that has joined the namespace.
    fn in_namespace<T: Send>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send,
    ) -> std::io::Result<T> {
        let ns = File::open(format!("/run/netns/{}", self.name()))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns(2) with a namespace file descriptor that stays open for the
                // call; it changes only this thread's network namespace, and the thread
                // ends when `f` returns.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("thread in the namespace panicked")))
        })
    }
}
