//! A test harness that boots a real Linux guest (the installed Debian kernel, under QEMU TCG)
//! with a small initramfs, runs a shell scenario in it, and lets a Rust test synchronise with
//! it through lines on the serial console.
//!
//! ```no_run
//! use std::time::Duration;
//! use periwire_guest::{Guest, GuestConfig};
//!
//! let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! let port = listener.local_addr()?.port();
//! let mut guest = Guest::boot(
//!     GuestConfig::new(r#"
//!         usbip list -r "$PERIWIRE_SERVER"
//!         mark LISTED
//!     "#)
//!     .modules(["vhci-hcd"])
//!     .server_port(port),
//! )?;
//! guest.expect_line("LISTED", Duration::from_secs(60))?;
//! guest.wait_success(Duration::from_secs(30))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The guest
//!
//! `/init` mounts `/proc`, `/sys`, `/dev` (devtmpfs), `/dev/pts`, `/tmp` and `/run`; loads
//! the requested modules with their dependencies (resolved on the host from `modules.dep`);
//! brings up `eth0` (10.0.2.15/24 via 10.0.2.2 on the user-mode network, 10.77.0.2/24 via
//! 10.77.0.1 on a [`TapNetwork`]; none with [`GuestConfig::without_network`]); runs the scenario
//! with `sh -e` in `/root`; prints `PERIWIRE-GUEST-EXIT <status>` and powers off. The
//! scenario sees `$PERIWIRE_SERVER` (10.0.2.100, or 10.77.0.1 on a [`TapNetwork`]) and
//! `$PERIWIRE_PORT` (3240) and two helpers:
//! `wait_for PATH [SECONDS]` and `mark WORDS...`. Its standard input is the console, so
//! [`Guest::send_line`] can feed it (`read -r line`).
//!
//! Busybox provides the shell and tools (`nc`, `ip`, `xxd`, `hexdump`, `dd`, `mount`,
//! `mkdosfs`, `timeout`, ...); `/usr/sbin/usbip` and `/usr/sbin/usbipd` are Debian's.
//!
//! # Guests other programs run
//!
//! [`BootImage::build`] makes the kernel, initramfs and command line of a [`GuestConfig`]
//! without starting QEMU, for a launcher such as libvirt; [`Guest::attach`] then reads and
//! writes the VM's serial console through a stream, as for the harness's own QEMU.
//!
//! # Networking
//!
//! By default, QEMU user-mode networking with `restrict=on`: the guest reaches nothing but the forwards.
//! Every TCP connection the guest opens to 10.0.2.100:`guest_port` becomes a new TCP
//! connection from the host to 127.0.0.1:`host_port` (made by `socat`, which QEMU starts
//! for each guest connection), so the server sees one connection per guest connection and
//! each side sees the other close. User-mode networking moves guest → host TCP at a few
//! MB/s only.
//!
//! [`GuestConfig::tap_network`] gives the guest a faster, equally isolated link instead: a
//! network namespace the test creates ([`TapNetwork::new`]) holds a TAP device with
//! 10.77.0.1/24 and nothing else; QEMU runs inside the namespace with its card on the TAP
//! device, and the test's servers bind inside it too ([`TapNetwork::bind_tcp`], or
//! [`TapNetwork::command`] for a program). The guest reaches the host end at 10.77.0.1
//! directly, no forwards; the namespace has no route out, so nothing leaves it. Dropping
//! the last [`TapNetwork`] clone and the guest deletes the namespace.
//!
//! # Serialisation and timeouts
//!
//! Guests run one at a time: a process-wide lock plus a file lock in the cache directory
//! (so test binaries of several cargo runs on one machine do not compete for the two cores).
//! A guest holds the lock from [`Guest::boot`] until it is dropped; the thread holding it may
//! boot more guests (a test that needs two at once). Time spent waiting for the lock does not
//! count against any timeout. Timeouts are failure limits only: tests wait for lines the
//! guest prints. [`GuestConfig::timeout`] is enforced twice: the host kills QEMU when a wait
//! passes it, and the guest powers itself off a little later, so a QEMU whose test process
//! died does not live on.

#![warn(missing_docs)]

mod cpio;
mod image;
mod modules;
mod tap;

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

pub use image::{GuestFile, Kernel};
pub use modules::normalize as normalize_module_name;
pub use tap::{TapNetwork, TAP_GUEST_ADDR, TAP_HOST_ADDR, TAP_PREFIX};

/// The address the guest reaches the host's forwarded ports at.
pub const SERVER_ADDR: &str = "10.0.2.100";
/// The USB/IP port the guest connects to (`usbip`'s default).
pub const USBIP_PORT: u16 = 3240;

const INIT_MARKER: &str = "PERIWIRE-GUEST-INIT";
const READY_MARKER: &str = "PERIWIRE-GUEST-READY";
const EXIT_MARKER: &str = "PERIWIRE-GUEST-EXIT ";
const SETUP_FAILED_MARKER: &str = "PERIWIRE-GUEST-SETUP-FAILED ";
/// Lines of console output an error message shows.
const TAIL_LINES: usize = 60;

/// Errors of the guest harness. Their `Debug` form is their `Display` form (with the tail of
/// the console transcript), so a failing test that unwraps one prints something readable.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A host file operation or command failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A tool, package or kernel the harness needs is not installed.
    #[error("missing {what} ({detail}); run scripts/install-test-deps")]
    MissingTool {
        /// What is missing.
        what: String,
        /// Which package provides it, or what went wrong.
        detail: String,
    },
    /// A requested kernel module is in neither `modules.dep` nor `modules.builtin`.
    #[error("kernel module {name} not found in {}", dir.display())]
    ModuleNotFound {
        /// The normalised module name.
        name: String,
        /// The modules directory searched.
        dir: PathBuf,
    },
    /// A wait ran out of time.
    #[error("timed out after {after:?} waiting for {waiting_for}\n--- console tail ---\n{tail}")]
    Timeout {
        /// What was awaited.
        waiting_for: String,
        /// How long the wait lasted.
        after: Duration,
        /// The last console lines.
        tail: String,
    },
    /// The guest (QEMU) ended before the awaited line appeared.
    #[error("guest ended while waiting for {waiting_for}\n--- console tail ---\n{tail}")]
    Ended {
        /// What was awaited.
        waiting_for: String,
        /// The last console lines.
        tail: String,
    },
    /// `/init` could not set the guest up (a module did not load, no network).
    #[error("guest setup failed: {reason}\n--- console tail ---\n{tail}")]
    SetupFailed {
        /// What `/init` reported.
        reason: String,
        /// The last console lines.
        tail: String,
    },
    /// QEMU ended without the exit marker: the kernel panicked, QEMU failed or was killed.
    #[error(
        "guest ended without reporting an exit status (QEMU {qemu})\n--- console tail ---\n{tail}"
    )]
    NoExitStatus {
        /// QEMU's own exit status.
        qemu: String,
        /// The last console lines.
        tail: String,
    },
    /// The guest's network could not be set up, or the configuration asks for what its
    /// network cannot do.
    #[error("guest network: {0}")]
    Network(String),
    /// The scenario exited with a non-zero status ([`Guest::wait_success`] only).
    #[error("scenario failed with exit status {status}\n--- console tail ---\n{tail}")]
    ScenarioFailed {
        /// The scenario's exit status.
        status: i32,
        /// The last console lines.
        tail: String,
    },
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Error {
    fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One forwarded port: guest connections to 10.0.2.100:`guest_port` reach 127.0.0.1:`host_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// The port the guest connects to at [`SERVER_ADDR`].
    pub guest_port: u16,
    /// The port on the host's loopback.
    pub host_port: u16,
}

/// The emulated host controller a QEMU `usb-redir` device is plugged into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirBus {
    /// `qemu-xhci` (USB 3; every speed). The guest needs `xhci-pci`.
    Xhci,
    /// `usb-ehci` (USB 2, high speed only). The guest needs `ehci-pci`.
    Ehci,
}

/// One QEMU `usb-redir` device: its socket chardev dials 127.0.0.1:`host_port`, where a
/// usbredir usb-host (periwire) listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsbRedir {
    /// The usb-host's port on the host's loopback.
    pub host_port: u16,
    /// The controller it is plugged into.
    pub bus: RedirBus,
}

/// One port of the guest the host reaches: connections to 127.0.0.1:`host_port` on the host
/// go to the guest's `guest_port` (QEMU's `hostfwd`; `restrict=on` still lets these in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exposed {
    /// The port the guest listens on (any of its addresses).
    pub guest_port: u16,
    /// The port on the host's loopback.
    pub host_port: u16,
}

/// The guest's network card, if any.
#[derive(Debug, Clone)]
pub enum Network {
    /// No card ([`GuestConfig::without_network`]).
    None,
    /// QEMU user-mode networking, `restrict=on`, with the forwards and exposed ports.
    User,
    /// A TAP device in a network namespace of the test's ([`GuestConfig::tap_network`]).
    Tap(TapNetwork),
}

/// How to boot a guest. Build it with [`GuestConfig::new`] and the chained setters.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    /// Kernel modules to load, by name (`vhci-hcd`, `usbhid`; `-` and `_` are the same).
    /// Their dependencies are added and ordered from `modules.dep`, and some run-time
    /// companions too (`usbhid` brings `hid-generic`, `usb-storage` brings `sd_mod`, `vfat`
    /// brings the `nls_*` tables it mounts with). `virtio_net` is always loaded.
    pub modules: Vec<String>,
    /// The shell script the guest runs with `sh -e`.
    pub scenario: String,
    /// Ports forwarded from 10.0.2.100 in the guest to the host's loopback.
    pub forwards: Vec<Forward>,
    /// Guest ports the host's loopback reaches (e.g. a server in this guest that another
    /// guest's forward leads to).
    pub exposed: Vec<Exposed>,
    /// Extra files to put in the guest.
    pub files: Vec<GuestFile>,
    /// Extra QEMU arguments (e.g. `-device qemu-xhci -device usb-kbd`).
    pub qemu_args: Vec<String>,
    /// QEMU `usb-redir` devices, each on its own socket chardev.
    pub usb_redirs: Vec<UsbRedir>,
    /// Extra kernel command line words (e.g. `vhci_hcd.nr_hcs=2`).
    pub kernel_args: Vec<String>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs (QEMU's multi-threaded TCG runs each on its own host thread).
    pub cpus: u32,
    /// The guest's network card, which `/init` brings up as `eth0`. Forwards and exposed
    /// ports are of the user-mode network only.
    pub network: Network,
    /// The longest the guest may live; after it QEMU is killed and waits fail. A failure
    /// limit, not a synchronisation means.
    pub timeout: Duration,
}

impl GuestConfig {
    /// A guest that runs `scenario`, with one CPU, 512 MiB, no modules but the network's, no forwards
    /// and a 300 s limit.
    pub fn new(scenario: impl Into<String>) -> Self {
        GuestConfig {
            modules: Vec::new(),
            scenario: scenario.into(),
            forwards: Vec::new(),
            exposed: Vec::new(),
            files: Vec::new(),
            qemu_args: Vec::new(),
            usb_redirs: Vec::new(),
            kernel_args: Vec::new(),
            memory_mib: 512,
            cpus: 1,
            network: Network::User,
            timeout: Duration::from_secs(300),
        }
    }

    /// Adds kernel modules to load.
    pub fn modules<I, S>(mut self, modules: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.modules.extend(modules.into_iter().map(Into::into));
        self
    }

    /// Forwards the guest's 10.0.2.100:3240 (the USB/IP port) to 127.0.0.1:`host_port`.
    pub fn server_port(self, host_port: u16) -> Self {
        self.forward(USBIP_PORT, host_port)
    }

    /// Forwards the guest's 10.0.2.100:`guest_port` to 127.0.0.1:`host_port`.
    pub fn forward(mut self, guest_port: u16, host_port: u16) -> Self {
        self.forwards.push(Forward {
            guest_port,
            host_port,
        });
        self
    }

    /// Makes the guest's `guest_port` reachable at 127.0.0.1:`host_port` on the host.
    pub fn expose(mut self, guest_port: u16, host_port: u16) -> Self {
        self.exposed.push(Exposed {
            guest_port,
            host_port,
        });
        self
    }

    /// Puts a file into the guest at the absolute path `path`.
    pub fn file(
        mut self,
        path: impl Into<String>,
        mode: u32,
        contents: impl Into<Vec<u8>>,
    ) -> Self {
        self.files.push(GuestFile {
            path: path.into(),
            mode,
            contents: contents.into(),
        });
        self
    }

    /// Adds QEMU arguments.
    pub fn qemu_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.qemu_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Plugs a QEMU `usb-redir` device into `bus` whose chardev dials 127.0.0.1:`host_port`
    /// when QEMU starts (so the usb-host must be listening by then). The guest sees the
    /// device on that emulated controller, with no usbip in the guest at all.
    pub fn usb_redir(mut self, host_port: u16, bus: RedirBus) -> Self {
        self.usb_redirs.push(UsbRedir { host_port, bus });
        self
    }

    /// Adds kernel command line words.
    pub fn kernel_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.kernel_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets the guest's memory in MiB.
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Sets the guest's number of CPUs: for a guest whose user-space and kernel work should
    /// run side by side, as on a real machine.
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus.max(1);
        self
    }

    /// A guest without a network card: for a VM the harness does not run itself
    /// ([`BootImage`]), whose launcher gives it no user-mode network to reach.
    pub fn without_network(mut self) -> Self {
        self.network = Network::None;
        self
    }

    /// Puts the guest's card on `net`'s TAP device instead of the user-mode network: QEMU
    /// runs inside `net`'s namespace, and the guest reaches the servers bound there at
    /// [`TAP_HOST_ADDR`] (its `$PERIWIRE_SERVER`). For tests that move data faster than
    /// user-mode networking carries it. Forwards and exposed ports cannot be used with it.
    pub fn tap_network(mut self, net: &TapNetwork) -> Self {
        self.network = Network::Tap(net.clone());
        self
    }

    /// Sets the longest the guest may live.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// One line of the console, with when it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleLine {
    /// Time since QEMU was started.
    pub at: Duration,
    /// The text, without the line end. QEMU's own messages (its stderr) start with `qemu: `.
    pub text: String,
}

/// How a scenario ended.
#[derive(Debug, Clone)]
pub struct GuestOutcome {
    /// The scenario's exit status (0 is success).
    pub status: i32,
    /// Every console line, QEMU's stderr included.
    pub transcript: Vec<ConsoleLine>,
    /// When `/init` started, since QEMU was started.
    pub init_at: Option<Duration>,
    /// When the scenario started (modules loaded, network up), since QEMU was started.
    pub scenario_at: Option<Duration>,
    /// When QEMU ended, since it was started.
    pub ended_at: Duration,
}

impl GuestOutcome {
    /// Whether the scenario exited with status 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }

    /// The transcript as text, one line per console line.
    pub fn transcript_text(&self) -> String {
        join_lines(&self.transcript)
    }
}

fn join_lines(lines: &[ConsoleLine]) -> String {
    let mut out = String::new();
    for l in lines {
        out.push_str(&l.text);
        out.push('\n');
    }
    out
}

enum Event {
    Line(ConsoleLine),
    /// QEMU's stdout (the console) closed: QEMU has ended or is ending.
    ConsoleClosed,
}

/// Serialises guests: within this process, and across processes with a file lock in the
/// cache directory. The thread holding it may boot more guests (a test that needs two guests
/// at once); it is released when the last of them is dropped.
struct GuestLock;

struct LockState {
    owner: Option<ThreadId>,
    guests: usize,
    file: Option<File>,
}

static LOCK_STATE: Mutex<LockState> = Mutex::new(LockState {
    owner: None,
    guests: 0,
    file: None,
});
static LOCK_FREED: Condvar = Condvar::new();

fn lock_state() -> MutexGuard<'static, LockState> {
    // A test that panicked while holding the mutex poisons it; the state is still consistent
    // (every update is a single assignment sequence without panics).
    LOCK_STATE.lock().unwrap_or_else(|e| e.into_inner())
}

impl GuestLock {
    fn acquire() -> Result<Self> {
        let me = std::thread::current().id();
        let mut state = lock_state();
        while state.owner.is_some_and(|owner| owner != me) {
            state = LOCK_FREED.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if state.guests == 0 {
            let dir = image::cache_dir();
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            let path = dir.join("guest.lock");
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            // Blocks while a guest of another process runs.
            file.lock()
                .map_err(|e| Error::io(format!("locking {}", path.display()), e))?;
            state.file = Some(file);
            state.owner = Some(me);
        }
        state.guests += 1;
        Ok(GuestLock)
    }
}

impl Drop for GuestLock {
    fn drop(&mut self) {
        let mut state = lock_state();
        state.guests = state.guests.saturating_sub(1);
        if state.guests == 0 {
            // Closing the file releases the file lock.
            state.file = None;
            state.owner = None;
            LOCK_FREED.notify_all();
        }
    }
}

/// The VM behind a [`Guest`].
enum Vm {
    /// QEMU, the harness's own child.
    Qemu(Child),
    /// A VM another program runs; the harness holds only its console stream.
    Attached(UnixStream),
}

/// A running guest. Dropping it kills QEMU (of a [`Guest::boot`]).
pub struct Guest {
    vm: Vm,
    stdin: Option<Box<dyn Write + Send>>,
    events: Receiver<Event>,
    lines: Vec<ConsoleLine>,
    /// Index of the first line [`Guest::expect_line`] has not consumed yet.
    cursor: usize,
    console_closed: bool,
    exit_status: Option<i32>,
    setup_failure: Option<String>,
    /// How the VM ended, once known: QEMU's exit status, or what is known of an attached VM.
    vm_status: Option<String>,
    started: Instant,
    deadline: Instant,
    limit: Duration,
    readers: Vec<JoinHandle<()>>,
    _initrd: tempfile::NamedTempFile,
    _lock: GuestLock,
    /// The TAP network's namespace, kept until QEMU (killed by the drop) is gone.
    _net: Option<TapNetwork>,
}

impl fmt::Debug for Guest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guest")
            .field("pid", &self.pid())
            .field("lines", &self.lines.len())
            .field("exit_status", &self.exit_status)
            .finish_non_exhaustive()
    }
}

/// QEMU arguments for `redirs`: each controller used once, then one chardev and one
/// `usb-redir` per device.
fn usb_redir_args(redirs: &[UsbRedir]) -> Vec<String> {
    let mut args = Vec::new();
    for (bus, device) in [(RedirBus::Xhci, "qemu-xhci"), (RedirBus::Ehci, "usb-ehci")] {
        if redirs.iter().any(|r| r.bus == bus) {
            args.push("-device".into());
            args.push(format!("{device},id={}", redir_bus_id(bus)));
        }
    }
    for (i, r) in redirs.iter().enumerate() {
        args.push("-chardev".into());
        args.push(format!(
            "socket,id=redir{i},host=127.0.0.1,port={}",
            r.host_port
        ));
        args.push("-device".into());
        args.push(format!(
            "usb-redir,chardev=redir{i},id=usbredir{i},bus={}.0",
            redir_bus_id(r.bus)
        ));
    }
    args
}

fn redir_bus_id(bus: RedirBus) -> &'static str {
    match bus {
        RedirBus::Xhci => "redirxhci",
        RedirBus::Ehci => "redirehci",
    }
}

/// The `-netdev user` option: user-mode networking restricted to the forwards.
fn netdev_arg(forwards: &[Forward], exposed: &[Exposed]) -> String {
    let mut arg = String::from("user,id=n0,restrict=on");
    for e in exposed {
        arg.push_str(&format!(
            ",hostfwd=tcp:127.0.0.1:{}-:{}",
            e.host_port, e.guest_port
        ));
    }
    for f in forwards {
        // QEMU runs the command (split into words, no shell) for every guest connection, with
        // the connection on its stdin and stdout. The chardev form (`-tcp:127.0.0.1:PORT`)
        // would carry a single connection for QEMU's whole life and never pass a close on.
        // socat with TCP_NODELAY: a relay with Nagle on (busybox nc) meets the peer's delayed
        // ACKs and adds ~40 ms to every request/response pair. socat's own messages go to
        // /dev/null: QEMU hands the command's stderr to the connection too, so a refused
        // connect would otherwise reach the guest as bytes of text rather than as a close.
        // `,,` is QEMU's escaped comma.
        arg.push_str(&format!(
            ",guestfwd=tcp:{SERVER_ADDR}:{}-cmd:socat -lf /dev/null -b 262144 STDIO TCP:127.0.0.1:{},,nodelay",
            f.guest_port, f.host_port
        ));
    }
    arg
}

/// Removes per-boot initrds left behind by test processes that were killed (a dropped
/// [`Guest`] removes its own). Best effort: anything older than an hour goes.
fn remove_stale_initrds(run_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if stale && entry.file_name().to_string_lossy().starts_with("initrd-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn spawn_reader<R: Read + Send + 'static>(
    mut source: R,
    prefix: &'static str,
    started: Instant,
    tx: Sender<Event>,
    report_close: bool,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("periwire-guest-console".into())
        .spawn(move || {
            let mut pending: Vec<u8> = Vec::new();
            let mut buf = [0u8; 4096];
            let send_line = |bytes: &[u8]| {
                let text = String::from_utf8_lossy(bytes);
                let text = text.trim_end_matches(['\r', '\n']);
                tx.send(Event::Line(ConsoleLine {
                    at: started.elapsed(),
                    text: format!("{prefix}{text}"),
                }))
                .is_ok()
            };
            loop {
                match source.read(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                            let line: Vec<u8> = pending.drain(..=pos).collect();
                            if !send_line(&line) {
                                return;
                            }
                        }
                    }
                }
            }
            if !pending.is_empty() {
                send_line(&pending);
            }
            if report_close {
                let _ = tx.send(Event::ConsoleClosed);
            }
        })
        .map_err(|e| Error::io("starting a console reader thread", e))
}

/// The files one guest boots from, built for its [`GuestConfig`]: the kernel image, a
/// per-boot initramfs and the kernel command line. For a VM some other program runs (libvirt):
/// build it, start the VM from these files with its first serial port (`ttyS0`) on a
/// stream, and hand both to [`Guest::attach`]. Holds the guest lock (guests run one at a
/// time) until it, or the guest made from it, is dropped; dropping it removes the initramfs.
pub struct BootImage {
    kernel: PathBuf,
    initrd: tempfile::NamedTempFile,
    cmdline: String,
    timeout: Duration,
    lock: GuestLock,
}

impl fmt::Debug for BootImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootImage")
            .field("kernel", &self.kernel)
            .field("initrd", &self.initrd.path())
            .field("cmdline", &self.cmdline)
            .finish_non_exhaustive()
    }
}

impl BootImage {
    /// Waits for the guest lock, then builds (or reuses) the kernel image and initramfs for
    /// `config`. Its QEMU arguments, memory and CPUs are the launcher's to apply.
    pub fn build(config: &GuestConfig) -> Result<BootImage> {
        let kernel = Kernel::find()?;
        let kernel_image = image::boot_image(&kernel)?;
        let base = image::base_archive()?;
        let (modules, _order) = image::modules_archive(&kernel, &config.modules)?;
        // The guest's own watchdog fires a little after the host's limit.
        let guest_limit = config.timeout.as_secs() + 10;
        let mut files = config.files.clone();
        // "ADDRESS/PREFIX GATEWAY SERVER" for /init and lib.sh.
        let network = match &config.network {
            Network::None => None,
            Network::User => Some(format!("10.0.2.15/24 10.0.2.2 {SERVER_ADDR}")),
            Network::Tap(_) => {
                if !config.forwards.is_empty() || !config.exposed.is_empty() {
                    return Err(Error::Network(
                        "forwards and exposed ports are of the user-mode network; on a TAP \
                         network, bind the server in its namespace (TapNetwork::bind_tcp)"
                            .into(),
                    ));
                }
                Some(format!(
                    "{TAP_GUEST_ADDR}/{TAP_PREFIX} {TAP_HOST_ADDR} {TAP_HOST_ADDR}"
                ))
            }
        };
        files.push(match network {
            Some(line) => GuestFile {
                path: "/etc/periwire/network".into(),
                mode: 0o644,
                contents: format!("{line}\n").into_bytes(),
            },
            None => GuestFile {
                path: "/etc/periwire/no-network".into(),
                mode: 0o644,
                contents: Vec::new(),
            },
        });
        let scenario = image::scenario_archive(&config.scenario, guest_limit, &files);

        let lock = GuestLock::acquire()?;

        let run_dir = image::cache_dir().join("run");
        std::fs::create_dir_all(&run_dir)
            .map_err(|e| Error::io(format!("creating {}", run_dir.display()), e))?;
        remove_stale_initrds(&run_dir);
        let mut initrd = tempfile::Builder::new()
            .prefix("initrd-")
            .suffix(".cpio")
            .tempfile_in(&run_dir)
            .map_err(|e| Error::io(format!("creating an initrd in {}", run_dir.display()), e))?;
        for part in [&base, &modules] {
            let mut f = File::open(part)
                .map_err(|e| Error::io(format!("opening {}", part.display()), e))?;
            std::io::copy(&mut f, initrd.as_file_mut())
                .map_err(|e| Error::io(format!("copying {}", part.display()), e))?;
        }
        initrd
            .write_all(&scenario)
            .and_then(|()| initrd.flush())
            .map_err(|e| Error::io("writing the initrd", e))?;

        let mut cmdline = String::from(
            "console=ttyS0 quiet panic=-1 oops=panic rdinit=/init \
             mitigations=off nokaslr i8042.noaux i8042.nokbd i8042.nopnp \
             8250.nr_uarts=1 cryptomgr.notests tsc=reliable no_timer_check",
        );
        for word in &config.kernel_args {
            cmdline.push(' ');
            cmdline.push_str(word);
        }
        Ok(BootImage {
            kernel: kernel_image,
            initrd,
            cmdline,
            timeout: config.timeout,
            lock,
        })
    }

    /// The kernel image (an uncompressed `vmlinux` with a PVH entry, or the bzImage).
    pub fn kernel(&self) -> &Path {
        &self.kernel
    }

    /// The initramfs: `/init`, busybox, the tools, the modules and the scenario.
    pub fn initrd(&self) -> &Path {
        self.initrd.path()
    }

    /// The kernel command line (the console on `ttyS0`, `/init` as the first process).
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }
}

impl Guest {
    /// Boots a guest: waits for the guest lock, builds (or reuses) the initramfs, starts QEMU.
    /// Returns as soon as QEMU runs; the scenario then runs on its own.
    ///
    /// Start the servers the forwards lead to before booting.
    pub fn boot(config: GuestConfig) -> Result<Guest> {
        let boot = BootImage::build(&config)?;
        let qemu = std::env::var("PERIWIRE_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
        let tap = match &config.network {
            Network::Tap(net) => Some(net.clone()),
            _ => None,
        };
        // On a TAP network, QEMU runs inside its namespace (`ip` execs it, so the child is
        // QEMU itself).
        let mut cmd = match &tap {
            Some(net) => net.command(&qemu),
            None => Command::new(&qemu),
        };
        cmd.args([
            "-accel",
            "tcg",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ])
        .arg("-no-reboot")
        .arg("-smp")
        .arg(config.cpus.to_string())
        .arg("-m")
        .arg(config.memory_mib.to_string())
        .args([
            "-chardev",
            "stdio,id=console,signal=off",
            "-serial",
            "chardev:console",
        ])
        .arg("-kernel")
        .arg(boot.kernel())
        .arg("-initrd")
        .arg(boot.initrd())
        .arg("-append")
        .arg(boot.cmdline());
        let netdev = match &config.network {
            Network::None => None,
            Network::User => Some(netdev_arg(&config.forwards, &config.exposed)),
            Network::Tap(_) => Some(format!(
                "tap,id=n0,ifname={},script=no,downscript=no",
                tap::TAP_DEVICE
            )),
        };
        if let Some(netdev) = netdev {
            cmd.arg("-netdev")
                .arg(netdev)
                .args(["-device", "virtio-net-pci,netdev=n0,romfile="]);
        }
        cmd.args(&config.qemu_args)
            .args(usb_redir_args(&config.usb_redirs))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());

        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::MissingTool {
                    what: qemu.clone(),
                    detail: "Debian package qemu-system-x86".into(),
                }
            } else {
                Error::io(format!("starting {qemu}"), e)
            }
        })?;
        let (tx, events) = mpsc::channel();
        let mut readers = Vec::new();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let spawned = (|| {
            if let Some(out) = stdout {
                readers.push(spawn_reader(out, "", started, tx.clone(), true)?);
            }
            if let Some(err) = stderr {
                readers.push(spawn_reader(err, "qemu: ", started, tx, false)?);
            }
            Ok(())
        })();
        if let Err(e) = spawned {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        let stdin = child
            .stdin
            .take()
            .map(|s| Box::new(s) as Box<dyn Write + Send>);
        let mut guest = Guest::new(Vm::Qemu(child), stdin, events, readers, started, boot);
        guest._net = tap;
        Ok(guest)
    }

    /// A guest some other program runs (libvirt), booted from `boot`: `console` is a stream
    /// its first serial port is connected to. Its timeouts count from now. The harness
    /// cannot stop such a VM: [`Guest::kill`] and dropping the guest only close the
    /// console; stopping the VM is its owner's job.
    pub fn attach(boot: BootImage, console: UnixStream) -> Result<Guest> {
        let started = Instant::now();
        let clone = |s: &UnixStream| {
            s.try_clone()
                .map_err(|e| Error::io("duplicating the console stream", e))
        };
        let reader = clone(&console)?;
        let writer = clone(&console)?;
        let (tx, events) = mpsc::channel();
        let readers = vec![spawn_reader(reader, "", started, tx, true)?];
        Ok(Guest::new(
            Vm::Attached(console),
            Some(Box::new(writer)),
            events,
            readers,
            started,
            boot,
        ))
    }

    fn new(
        vm: Vm,
        stdin: Option<Box<dyn Write + Send>>,
        events: Receiver<Event>,
        readers: Vec<JoinHandle<()>>,
        started: Instant,
        boot: BootImage,
    ) -> Guest {
        Guest {
            vm,
            stdin,
            events,
            lines: Vec::new(),
            cursor: 0,
            console_closed: false,
            exit_status: None,
            setup_failure: None,
            vm_status: None,
            started,
            deadline: started + boot.timeout,
            limit: boot.timeout,
            readers,
            _initrd: boot.initrd,
            _lock: boot.lock,
            _net: None,
        }
    }

    /// Boots a guest and waits for its scenario to end (within `config.timeout`).
    pub fn run(config: GuestConfig) -> Result<GuestOutcome> {
        let timeout = config.timeout;
        Guest::boot(config)?.wait_exit(timeout)
    }

    /// Waits for a console line containing `marker`, after the line the previous call
    /// returned, and returns the line from `marker` on (so `EVENTS 01ab` comes back as
    /// `"EVENTS 01ab"` even if a kernel message landed before it on the same line).
    pub fn expect_line(&mut self, marker: &str, timeout: Duration) -> Result<String> {
        let waiting_for = || format!("a console line containing {marker:?}");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((i, pos)) = self.lines[self.cursor..]
                .iter()
                .enumerate()
                .find_map(|(i, l)| l.text.find(marker).map(|pos| (i, pos)))
            {
                let index = self.cursor + i;
                self.cursor = index + 1;
                return Ok(self.lines[index].text[pos..].to_owned());
            }
            if self.console_closed {
                return Err(Error::Ended {
                    waiting_for: waiting_for(),
                    tail: self.tail(TAIL_LINES),
                });
            }
            self.pump(deadline, timeout, &waiting_for)?;
        }
    }

    /// Writes `line` and a newline to the guest console; the scenario reads it from its
    /// standard input (`read -r reply`). The console does not echo it.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| {
            Error::io(
                "writing to the console",
                std::io::ErrorKind::BrokenPipe.into(),
            )
        })?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| Error::io("writing to the console", e))
    }

    /// Waits for the guest to end, and returns how the scenario ended, whatever its status.
    /// Fails if QEMU ended without the exit marker (kernel panic, QEMU error, [`Guest::kill`])
    /// or `/init` reported a setup failure.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<GuestOutcome> {
        let deadline = Instant::now() + timeout;
        let waiting_for = || "the guest to end".to_owned();
        while !self.console_closed {
            self.pump(deadline, timeout, &waiting_for)?;
        }
        // The console closes when QEMU exits; reap it (kill it if it lingers).
        let status = self.reap(Duration::from_secs(5))?;
        while let Ok(event) = self.events.try_recv() {
            self.record(event);
        }
        if let Some(reason) = &self.setup_failure {
            return Err(Error::SetupFailed {
                reason: reason.clone(),
                tail: self.tail(TAIL_LINES),
            });
        }
        let Some(exit) = self.exit_status else {
            return Err(Error::NoExitStatus {
                qemu: status.to_string(),
                tail: self.tail(TAIL_LINES),
            });
        };
        let find = |marker: &str| {
            self.lines
                .iter()
                .find(|l| l.text.contains(marker))
                .map(|l| l.at)
        };
        Ok(GuestOutcome {
            status: exit,
            init_at: find(INIT_MARKER),
            scenario_at: find(READY_MARKER),
            ended_at: self.started.elapsed(),
            transcript: self.lines.clone(),
        })
    }

    /// Like [`Guest::wait_exit`], but a non-zero scenario status is an error too.
    pub fn wait_success(&mut self, timeout: Duration) -> Result<GuestOutcome> {
        let outcome = self.wait_exit(timeout)?;
        if outcome.success() {
            Ok(outcome)
        } else {
            Err(Error::ScenarioFailed {
                status: outcome.status,
                tail: self.tail(TAIL_LINES),
            })
        }
    }

    /// Kills QEMU at once (SIGKILL), as a crash would, and reaps it. Console lines received
    /// so far stay available. Of an attached guest ([`Guest::attach`]) it closes the console
    /// only.
    pub fn kill(&mut self) -> Result<()> {
        if self.vm_status.is_some() {
            return Ok(());
        }
        match &mut self.vm {
            Vm::Qemu(child) => {
                match child.kill() {
                    Ok(()) => {}
                    // Already exited (and not yet reaped): nothing to kill.
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {}
                    Err(e) => return Err(Error::io("killing QEMU", e)),
                }
                let status = child.wait().map_err(|e| Error::io("waiting for QEMU", e))?;
                self.vm_status = Some(status.to_string());
            }
            Vm::Attached(console) => {
                let _ = console.shutdown(std::net::Shutdown::Both);
                self.vm_status = Some("console closed by the harness".into());
            }
        }
        Ok(())
    }

    /// Every console line received so far.
    pub fn transcript(&self) -> &[ConsoleLine] {
        &self.lines
    }

    /// The last `n` console lines received so far, as text.
    pub fn tail(&self, n: usize) -> String {
        join_lines(&self.lines[self.lines.len().saturating_sub(n)..])
    }

    /// Time since QEMU was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The QEMU process id, if the harness runs QEMU ([`Guest::boot`]).
    pub fn pid(&self) -> Option<u32> {
        match &self.vm {
            Vm::Qemu(child) => Some(child.id()),
            Vm::Attached(_) => None,
        }
    }

    fn record(&mut self, event: Event) {
        match event {
            Event::Line(line) => {
                if let Some(pos) = line.text.find(EXIT_MARKER) {
                    let rest = &line.text[pos + EXIT_MARKER.len()..];
                    self.exit_status = rest.split_whitespace().next().and_then(|s| s.parse().ok());
                } else if let Some(pos) = line.text.find(SETUP_FAILED_MARKER) {
                    self.setup_failure =
                        Some(line.text[pos + SETUP_FAILED_MARKER.len()..].to_owned());
                }
                self.lines.push(line);
            }
            Event::ConsoleClosed => self.console_closed = true,
        }
    }

    /// Receives one console event, or fails once `deadline` (of a wait lasting `timeout`) or
    /// the guest's own limit passes; the latter kills QEMU.
    fn pump(
        &mut self,
        deadline: Instant,
        timeout: Duration,
        waiting_for: &dyn Fn() -> String,
    ) -> Result<()> {
        let (until, guest_limit) = if self.deadline < deadline {
            (self.deadline, true)
        } else {
            (deadline, false)
        };
        let wait = until.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(wait) {
            Ok(event) => {
                self.record(event);
                Ok(())
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.console_closed = true;
                Ok(())
            }
            Err(RecvTimeoutError::Timeout) => {
                let (what, after) = if guest_limit {
                    let _ = self.kill();
                    (
                        format!(
                            "{} (the guest's limit, GuestConfig::timeout; QEMU killed)",
                            waiting_for()
                        ),
                        self.limit,
                    )
                } else {
                    (waiting_for(), timeout)
                };
                Err(Error::Timeout {
                    waiting_for: what,
                    after,
                    tail: self.tail(TAIL_LINES),
                })
            }
        }
    }

    /// Reaps QEMU once its console has closed (killing it if it lingers past `grace`), and
    /// returns how the VM ended.
    fn reap(&mut self, grace: Duration) -> Result<String> {
        if let Some(status) = &self.vm_status {
            return Ok(status.clone());
        }
        let deadline = Instant::now() + grace;
        loop {
            let child = match &mut self.vm {
                Vm::Qemu(child) => child,
                Vm::Attached(_) => {
                    let status = String::from("its console closed");
                    self.vm_status = Some(status.clone());
                    return Ok(status);
                }
            };
            match child.try_wait() {
                Ok(Some(status)) => {
                    let status = status.to_string();
                    self.vm_status = Some(status.clone());
                    return Ok(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    self.kill()?;
                    return self.vm_status.clone().ok_or_else(|| {
                        Error::io("reaping QEMU", std::io::ErrorKind::Other.into())
                    });
                }
                Err(e) => return Err(Error::io("waiting for QEMU", e)),
            }
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.kill();
        // The reader threads end by themselves when QEMU's pipes close; not joining them
        // keeps a drop from waiting on a process that inherited a pipe.
        self.readers.clear();
    }
}
