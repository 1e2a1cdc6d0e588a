//! What the guest scenarios share: a `periwire serve` process started from the built binary,
//! and the decoding of what the guest prints.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use periwire_guest::Guest;

/// How long a guest step may take before the test fails (TCG is slow; this is a failure
/// limit, never a synchronisation means).
pub const STEP: Duration = Duration::from_secs(120);

/// A running `periwire serve`, stopped with SIGTERM when dropped.
pub struct Server {
    child: Child,
    /// Loopback port of the USB/IP server.
    pub port: u16,
    /// Host-side ports of serial devices, by bus id.
    pub serial_ports: Vec<(String, u16)>,
    /// Ports of usbredir listeners, by bus id.
    pub usbredir_ports: Vec<(String, u16)>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Loopback port of the web page and its API.
    pub web_port: u16,
    /// What the server logged (stderr), line by line, across restarts.
    pub log: ServerLog,
    /// Command words the server runs under (`ip netns exec NS`), and the host it listens on.
    launch: Launch,
    _dir: tempfile::TempDir,
}

/// How a server is started: under which command words, listening on which host.
#[derive(Debug, Clone)]
struct Launch {
    wrapper: Vec<String>,
    host: String,
}

/// The lines a server wrote to stderr, shared with the thread that reads them; each line is
/// also passed on to the test's stderr.
#[derive(Debug, Clone, Default)]
pub struct ServerLog(Arc<(Mutex<Vec<String>>, Condvar)>);

impl ServerLog {
    fn push(&self, line: String) {
        let (lines, changed) = &*self.0;
        lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        changed.notify_all();
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.0 .0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until a line contains every one of `needles`, at most `timeout`; returns it.
    /// Panics with the log if none does in time.
    pub fn wait_for(&self, needles: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let (lines, changed) = &*self.0;
        let mut guard = lines.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(l) = guard.iter().find(|l| needles.iter().all(|n| l.contains(n))) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no server log line with {needles:?} within {timeout:?}:\n{}",
                guard.join("\n")
            );
            guard = changed
                .wait_timeout(guard, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Server {
    /// Starts `periwire serve` with `config` (TOML) in a fresh data directory, after `prepare`
    /// has put files (images) into that directory. Waits for the ready line.
    pub fn start(config: &str, prepare: impl FnOnce(&Path)) -> Server {
        Server::start_in(config, prepare, &[], "127.0.0.1")
    }

    /// [`Server::start`] under the command words `wrapper` (`ip netns exec NS`), listening
    /// on `host` (an address of that namespace).
    pub fn start_in(
        config: &str,
        prepare: impl FnOnce(&Path),
        wrapper: &[&str],
        host: &str,
    ) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).expect("data dir");
        prepare(&data_dir);
        std::fs::write(dir.path().join("periwire.toml"), config).expect("write config");
        let launch = Launch {
            wrapper: wrapper.iter().map(|w| w.to_string()).collect(),
            host: host.to_owned(),
        };
        let log = ServerLog::default();
        let Spawned {
            child,
            port,
            serial_ports,
            usbredir_ports,
            web_port,
        } = spawn_serve(dir.path(), &data_dir, 0, &launch, &log);
        Server {
            child,
            port,
            serial_ports,
            usbredir_ports,
            data_dir,
            web_port,
            log,
            launch,
            _dir: dir,
        }
    }

    /// Starts `periwire serve` again after [`Server::stop`]: the same configuration and data
    /// directory (so the same images), listening on the same port (a client that reconnects
    /// finds it where it was). Waits for the ready line.
    pub fn start_again(&mut self) {
        assert!(!self.is_running(), "start_again after stop");
        let Spawned {
            child,
            port,
            serial_ports,
            usbredir_ports,
            web_port,
        } = spawn_serve(
            self._dir.path(),
            &self.data_dir,
            self.port,
            &self.launch,
            &self.log,
        );
        assert_eq!(
            port, self.port,
            "periwire serve listens on its old port again"
        );
        self.child = child;
        self.serial_ports = serial_ports;
        self.usbredir_ports = usbredir_ports;
        self.web_port = web_port;
    }

    /// The host-side port of the serial device `busid`.
    pub fn serial_port(&self, busid: &str) -> u16 {
        self.serial_ports
            .iter()
            .find(|(b, _)| b == busid)
            .map(|(_, p)| *p)
            .unwrap_or_else(|| panic!("serial device {busid}"))
    }

    /// The port of the usbredir listener of `busid`.
    pub fn usbredir_port(&self, busid: &str) -> u16 {
        self.usbredir_ports
            .iter()
            .find(|(b, _)| b == busid)
            .map(|(_, p)| *p)
            .unwrap_or_else(|| panic!("device {busid} has a usbredir listener"))
    }

    /// Runs the `periwire` CLI against this server's data directory.
    pub fn cli(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_periwire"))
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .output()
            .expect("run periwire");
        assert!(
            out.status.success(),
            "periwire {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Whether a client holds `busid`, from `periwire status --json`.
    pub fn imported(&self, busid: &str) -> bool {
        let out = self.cli(&["status", "--json"]);
        let devices: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
        devices
            .as_array()
            .expect("array")
            .iter()
            .find(|d| d["busid"] == busid)
            .map(|d| d["imported"] == true)
            .expect("device in status")
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the server with SIGKILL (no shutdown, no flush) and waits for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server with SIGTERM and waits for it; returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        matches!(self.child.wait(), Ok(s) if s.success())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.is_running() {
            self.stop();
        }
    }
}

/// Runs the host's `periwire ARGS` with `data_dir`, which must succeed; its stdout.
pub fn periwire_ok(data_dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_periwire"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("run periwire");
    assert!(
        out.status.success(),
        "periwire {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The fingerprint `periwire id` prints for `data_dir` (making the identity if need be).
pub fn fingerprint(data_dir: &Path) -> String {
    let json: serde_json::Value =
        serde_json::from_str(&periwire_ok(data_dir, &["id", "--json"])).expect("id --json");
    json["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_owned()
}

/// Runs `periwire serve` with `dir`/periwire.toml and `data_dir`, listening on loopback at
/// `port` (0: any), and waits for its ready line; returns it and the ports it printed.
fn spawn_serve(
    dir: &Path,
    data_dir: &Path,
    port: u16,
    launch: &Launch,
    log: &ServerLog,
) -> Spawned {
    let mut words = launch.wrapper.iter();
    let mut command = match words.next() {
        Some(first) => {
            let mut c = Command::new(first);
            c.args(words).arg(env!("CARGO_BIN_EXE_periwire"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_periwire")),
    };
    let mut child = command
        .arg("serve")
        .arg("--listen")
        .arg(format!("{}:{port}", launch.host))
        .args(["-v", "--config"])
        .arg(dir.join("periwire.toml"))
        .arg("--data-dir")
        .arg(data_dir)
        // Any free port: tests run side by side, and the default one may be taken.
        .args(["--web", "127.0.0.1:0"])
        // Plain log lines, so tests can search them.
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start periwire serve");
    let stderr = child.stderr.take().expect("stderr");
    let log = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            log.push(line);
        }
    });
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut serial_ports = Vec::new();
    let mut usbredir_ports = Vec::new();
    let mut web_port = 0;
    let port = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("periwire serve printed its ready line");
        if let Some(rest) = line.strip_prefix("periwire: web page on http://") {
            web_port = port_of(rest.trim_end_matches('/'));
        } else if let Some(rest) = line.strip_prefix("periwire: serial ") {
            let (busid, addr) = rest.split_once(" host side on ").expect("serial line");
            serial_ports.push((busid.to_owned(), port_of(addr)));
        } else if let Some(rest) = line.strip_prefix("periwire: device ") {
            let (busid, addr) = rest.split_once(" on usbredir ").expect("usbredir line");
            usbredir_ports.push((busid.to_owned(), port_of(addr)));
        } else if let Some(rest) = line.strip_prefix("periwire: serving ") {
            let addr = rest
                .split(" on ")
                .nth(1)
                .expect("address")
                .split(' ')
                .next()
                .unwrap();
            break port_of(addr);
        }
    };
    Spawned {
        child,
        port,
        serial_ports,
        usbredir_ports,
        web_port,
    }
}

/// A `periwire serve` that has printed its ready line, and the ports it printed.
struct Spawned {
    child: Child,
    port: u16,
    serial_ports: Vec<(String, u16)>,
    usbredir_ports: Vec<(String, u16)>,
    web_port: u16,
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port")
}

/// One Linux `struct input_event` (x86-64: 16 bytes of time, then type, code, value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEvent {
    /// EV_KEY = 1, EV_REL = 2, ...
    pub kind: u16,
    /// KEY_* / REL_* / BTN_* code.
    pub code: u16,
    /// Value: 1 press, 0 release, 2 repeat; or a relative amount.
    pub value: i32,
}

/// Event type of key and button events.
pub const EV_KEY: u16 = 1;
/// Event type of relative movement.
pub const EV_REL: u16 = 2;
/// The Enter key's code (linux/input-event-codes.h).
pub const KEY_ENTER: u16 = 28;

/// Event type of synchronisation events.
const EV_SYN: u16 = 0;
/// The guest's evdev buffer overflowed and it threw events away.
const SYN_DROPPED: u16 = 3;

/// Decodes an `EV <48 hex digits>` line as the guest prints it. Panics on SYN_DROPPED, so a
/// test that loses input says so rather than reporting a confusing event sequence.
pub fn parse_event(line: &str) -> InputEvent {
    let hex = line.trim_start_matches("EV ").trim();
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    assert_eq!(bytes.len(), 24, "input_event is 24 bytes: {line}");
    let event = InputEvent {
        kind: u16::from_le_bytes([bytes[16], bytes[17]]),
        code: u16::from_le_bytes([bytes[18], bytes[19]]),
        value: i32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]),
    };
    assert!(
        !(event.kind == EV_SYN && event.code == SYN_DROPPED),
        "the guest's evdev dropped events (SYN_DROPPED): input came faster than it was read"
    );
    event
}

/// Reads the guest's `EV` lines (of [`GUEST_INPUT_HELPERS`]' `stream_events`) until Enter is
/// released, and returns the codes of the key presses (EV_KEY, value 1) in the order they
/// came. Fails like [`Guest::expect_line`] if an event does not come within [`STEP`].
pub fn key_presses_until_enter_released(guest: &mut Guest) -> periwire_guest::Result<Vec<u16>> {
    let mut presses = Vec::new();
    loop {
        let ev = parse_event(&guest.expect_line("EV ", STEP)?);
        if ev.kind == EV_KEY && ev.value == 1 {
            presses.push(ev.code);
        }
        if ev.kind == EV_KEY && ev.code == KEY_ENTER && ev.value == 0 {
            return Ok(presses);
        }
    }
}

/// Shell functions the input scenarios use: find the event device of a named input device,
/// and stream its events to the console as `EV <hex>` lines, one event per line.
pub const GUEST_INPUT_HELPERS: &str = r#"
find_event() {
    _left=600
    while :; do
        for d in /sys/class/input/event*; do
            if [ -e "$d/device/name" ] && grep -q "$1" "$d/device/name"; then
                echo "/dev/input/${d##*/}"
                return 0
            fi
        done
        _left=$((_left - 1))
        [ "$_left" -gt 0 ] || { echo "no input device named $1" >&2; return 1; }
        usleep 100000
    done
}
# stream_events FD: print each event read from file descriptor FD (already open, so no event
# is lost between opening and reading) as one line. One long-lived reader: hexdump's stdio
# read takes every event available at once, so a burst of key reports cannot overflow the
# evdev client buffer (64 events) while a reader is being started. Run it in the background
# (`stream_events 3 &`): the background shell becomes the reader, so `kill $!` ends it. The
# reader is a new shell: busybox runs hexdump without exec, so hexdump would otherwise keep
# the scenario shell's stdout buffering, and once a builtin such as printf has written to a
# file there, that is full buffering, which holds the events back until hexdump ends.
stream_events() {
    exec sh -c 'exec hexdump -v -e "$1" <&"$2"' sh '"EV " 24/1 "%02x" "\n"' "$1"
}
"#;

/// sha256 of a file, as `sha256sum` prints it.
pub fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_owned()
}

/// sha256 of bytes.
pub fn sha256(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path().join("f");
    std::fs::write(&p, bytes).expect("write");
    sha256_file(&p)
}

/// The `periwire` binary without its debug info, small enough for the guest's initramfs.
pub fn stripped_periwire() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("periwire");
    let status = std::process::Command::new("objcopy")
        .arg("--strip-debug")
        .arg(env!("CARGO_BIN_EXE_periwire"))
        .arg(&out)
        .status()
        .expect("objcopy");
    assert!(status.success(), "objcopy --strip-debug");
    std::fs::read(&out).expect("stripped binary")
}

/// The shared libraries `binary` loads, as `ldd` lists them.
pub fn shared_libraries(binary: &str) -> Vec<String> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(str::to_owned)
        .collect()
}

/// The rest of every console line that contains `prefix`, after it (a guest prints `LIST ...`
/// lines; a kernel message may land before one on the same console line).
pub fn prefixed_lines(transcript: &[periwire_guest::ConsoleLine], prefix: &str) -> Vec<String> {
    transcript
        .iter()
        .filter_map(|l| {
            l.text
                .find(prefix)
                .map(|p| l.text[p + prefix.len()..].to_owned())
        })
        .collect()
}

/// A server's devices for the USB/IP scenarios: keyboard 1-1, mouse 1-2, a FAT disk
/// (`disk.img` of [`prepare_fat_disk`]) 1-3, a serial port 1-4.
pub const ALL_DEVICES: &str = r#"
[[device]]
kind = "keyboard"
busid = "1-1"
name = "kbd"

[[device]]
kind = "mouse"
busid = "1-2"
name = "mouse"

[[device]]
kind = "storage"
busid = "1-3"
image = "disk.img"

[[device]]
kind = "serial"
busid = "1-4"
tcp = "127.0.0.1:0"
"#;

/// The contents of README.TXT on the disk of [`prepare_fat_disk`].
pub const README_TEXT: &[u8] = b"periwire guest test file\n";

/// Puts `disk.img` into `dir`: a 64 MiB FAT image with README.TXT ([`README_TEXT`]) on it.
pub fn prepare_fat_disk(dir: &Path) {
    periwire_usb::storage::create_demo_image(
        dir.join("disk.img"),
        64 * 1024 * 1024,
        &[("README.TXT", README_TEXT)],
    )
    .expect("create FAT image");
}

/// A server with one ext4 disk, 1-1 (`ext4.img` of [`prepare_ext4_disk`]).
pub const EXT4_DISK: &str = r#"
[[device]]
kind = "storage"
busid = "1-1"
image = "ext4.img"
"#;

/// Puts `ext4.img` into `dir`: a fresh 64 MiB ext4 file system.
pub fn prepare_ext4_disk(dir: &Path) {
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "periwire"])
        .arg(dir.join("ext4.img"))
        .arg("64M")
        .status()
        .expect("mkfs.ext4");
    assert!(status.success(), "mkfs.ext4");
}

/// Checks with `e2fsck -f -n` that the ext4 image at `image` is clean.
pub fn assert_fsck_clean(image: &Path) {
    let fsck = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(image)
        .output()
        .expect("e2fsck");
    assert!(
        fsck.status.success(),
        "the image is fsck-clean: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
}

/// `config` with the `periwire` binary ([`stripped_periwire`]) at /usr/bin/periwire in the
/// guest, and the shared libraries it loads.
pub fn with_periwire(mut config: periwire_guest::GuestConfig) -> periwire_guest::GuestConfig {
    config = config.file("/usr/bin/periwire", 0o755, stripped_periwire());
    for lib in shared_libraries(env!("CARGO_BIN_EXE_periwire")) {
        let bytes = std::fs::read(&lib).expect("library");
        config = config.file(lib, 0o755, bytes);
    }
    config
}

/// Shell functions for bounded waits in a guest scenario.
pub const GUEST_WAIT_HELPERS: &str = r#"
# wait_until SECONDS WHAT COMMAND...: run COMMAND every 0.1 s until it succeeds (its output
# discarded); fail once SECONDS have passed.
wait_until() {
    read -r _wu_now _ </proc/uptime
    _wu_end=$((${_wu_now%.*} + $1))
    _wu_what=$2
    shift 2
    until "$@" >/dev/null; do
        read -r _wu_now _ </proc/uptime
        if [ "${_wu_now%.*}" -ge "$_wu_end" ]; then
            echo "FAILED: timed out waiting for $_wu_what"
            return 1
        fi
        usleep 100000
    done
}
# exited PID: whether process PID has ended (gone, or a zombie).
exited() { ! [ -e "/proc/$1" ] || grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat" 2>/dev/null; }
# disk_at PATTERN: the SCSI disk whose sysfs path contains PATTERN.
disk_at() {
    for b in /sys/block/sd*; do
        case "$(readlink -f "$b")" in *"$1"*) echo "${b##*/}"; return 0 ;; esac
    done
    return 1
}
no_disk_at() { ! disk_at "$1" >/dev/null; }
"#;

// ---------------------------------------------------------------------------------------------
// Host-linked ("socket-backed") Bluetooth guests: BlueZ's btvirt makes two BR/EDR controllers
// on one emulated radio inside the guest; hci0 plays the host's physical adapter, hci1 a
// remote device. bluetoothd (on a private D-Bus system bus) runs the SDP server and stores
// link keys.
// ---------------------------------------------------------------------------------------------

/// Kernel modules of a host-linked Bluetooth guest: the core, `/dev/vhci` (btvirt's and
/// periwire's way in), RFCOMM (rctest) and the ciphers the kernel's SMP asks for by name.
/// Their dependencies (rfkill, ecdh_generic, ...) come from `modules.dep`.
pub const BT_HOST_MODULES: &[&str] = &["bluetooth", "hci_vhci", "rfcomm", "cmac", "ecb"];

/// BlueZ and D-Bus programs a host-linked Bluetooth guest gets besides the harness's own
/// (`btmgmt`, `hciconfig`, `hcitool`, `l2ping`, `l2test`).
pub const BT_HOST_BINARIES: &[&str] = &[
    "/usr/bin/btvirt",
    "/usr/bin/btmon",
    "/usr/bin/rctest",
    "/usr/bin/rfcomm",
    "/usr/bin/sdptool",
    "/usr/bin/bluetoothctl",
    "/usr/libexec/bluetooth/bluetoothd",
    "/usr/bin/dbus-daemon",
];

/// The guest's D-Bus system bus: root only, everything allowed (the default Debian policy
/// needs the `messagebus` user and the per-service files; none of that matters in a guest).
const GUEST_DBUS_CONF: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=/run/dbus/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#;

/// `config` with the host binaries `binaries` at the same paths in the guest, and the shared
/// libraries they load (each library once).
pub fn with_host_binaries(
    mut config: periwire_guest::GuestConfig,
    binaries: &[&str],
) -> periwire_guest::GuestConfig {
    let mut libs = std::collections::BTreeSet::new();
    for &binary in binaries {
        let bytes = std::fs::read(binary).unwrap_or_else(|e| {
            panic!("{binary}: {e}; run scripts/install-test-deps (bluez, bluez-test-tools, dbus-daemon)")
        });
        config = config.file(binary, 0o755, bytes);
        for lib in shared_libraries(binary) {
            if libs.insert(lib.clone()) {
                let bytes = std::fs::read(&lib).expect("library");
                config = config.file(lib, 0o755, bytes);
            }
        }
    }
    config
}

/// `config` made a host-linked Bluetooth guest: [`BT_HOST_MODULES`], [`BT_HOST_BINARIES`] and
/// the files bluetoothd and dbus-daemon need (`/etc/passwd`, `/etc/group`,
/// `/etc/machine-id`, `/etc/periwire/dbus.conf`). The scenario brings it up with the shell
/// functions of [`BT_HOST_HELPERS`]. Add [`with_periwire`] to run periwire in it too.
pub fn with_bt_host(config: periwire_guest::GuestConfig) -> periwire_guest::GuestConfig {
    with_host_binaries(
        config.modules(BT_HOST_MODULES.iter().copied()),
        BT_HOST_BINARIES,
    )
    .file("/etc/periwire/dbus.conf", 0o644, GUEST_DBUS_CONF)
    .file("/etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\n")
    .file("/etc/group", 0o644, "root:x:0:\n")
    .file(
        "/etc/machine-id",
        0o644,
        "7065726977697265677565737400000a\n",
    )
}

/// Shell functions of a host-linked Bluetooth guest ([`with_bt_host`]); needs
/// [`GUEST_WAIT_HELPERS`] before it. Logs go to `/tmp/bt/`.
///
/// - `bt_host_up [nodaemon]`: starts `btvirt -B -l2` (hci0, hci1; `$BT_VIRT_FLAGS` replaces
///   `-B`, empty for dual-mode controllers), the D-Bus system bus and
///   `bluetoothd -n -C` (unless `nodaemon`), sets both controllers to NoInputNoOutput
///   (`io-cap 3`), bondable, powered; hci1 connectable and discoverable (page and inquiry
///   scan). Sets `$BT_HCI0` and `$BT_HCI1` to their addresses and prints
///   `BT-ADDR hci0 <addr>` and `BT-ADDR hci1 <addr>`. Call it before periwire registers its
///   own vhci adapter, so that btvirt's two are hci0 and hci1.
/// - `bt_start_receivers`: on hci1, `l2test -r` on PSM `$BT_L2_PSM` (4113 = 0x1011),
///   `l2test -w` (sends `$BT_L2_FRAMES` frames of `$BT_L2_FRAME` bytes to whoever connects)
///   on `$BT_L2_PSM_W`, `rctest -r` on channel `$BT_RC_CH`, `rctest -w` on `$BT_RC_CH_W`;
///   registers a Serial Port SDP record for `$BT_RC_CH`; waits until all listen; prints
///   `BT-RECEIVERS-READY`. Logs: `l2r.log`, `l2w.log`, `rcr.log`, `rcw.log`.
/// - `bt_sum_bytes LOG`: the sum of the `N bytes in T sec, R kB/s` lines of an l2test or
///   rctest log.
/// - `bt_wait_bytes SECONDS LOG TOTAL`: waits until `bt_sum_bytes LOG` reaches `TOTAL`.
/// - `bt_uptime`: seconds since boot (`/proc/uptime`, centiseconds).
/// - `bt_dump PREFIX LOG`: prints `LOG` with each line prefixed.
///
/// Receivers print one line per `$BT_L2_CHUNK` / `$BT_RC_CHUNK` bytes (their `-b`, ten frames),
/// so a transfer of a multiple of ten frames is counted exactly. l2test checks each frame's
/// sequence number, length and pattern (`seq missmatch`, `size missmatch`,
/// `data missmatch` otherwise; BlueZ 5.66 spells it so); rctest checks nothing (its checks are
/// compiled out), so RFCOMM content is compared with `cmp` where possible (`rctest -a`, see
/// [`rctest_stream`]).
pub const BT_HOST_HELPERS: &str = r#"
BT_L2_PSM=${BT_L2_PSM:-4113}
BT_L2_PSM_W=${BT_L2_PSM_W:-4115}
BT_L2_FRAME=${BT_L2_FRAME:-600}
BT_L2_FRAMES=${BT_L2_FRAMES:-300}
BT_L2_CHUNK=$((BT_L2_FRAME * 10))
BT_RC_CH=${BT_RC_CH:-11}
BT_RC_CH_W=${BT_RC_CH_W:-12}
BT_RC_FRAME=${BT_RC_FRAME:-1000}
BT_RC_FRAMES=${BT_RC_FRAMES:-200}
BT_RC_CHUNK=$((BT_RC_FRAME * 10))
mkdir -p /tmp/bt
bt_uptime() { read -r _bt_up _ </proc/uptime; echo "$_bt_up"; }
bt_dump() { sed "s/^/$1 /" "$2"; }
bt_addr() { btmgmt --index "$1" info | sed -n 's/.*addr \([0-9A-F:]*\) .*/\1/p'; }
bt_sum_bytes() {
    awk '{ for (i = 2; i < NF; i++) if ($i == "bytes" && $(i + 1) == "in") s += $(i - 1) }
         END { print s + 0 }' "$1" 2>/dev/null || echo 0
}
bt_has_bytes() { [ "$(bt_sum_bytes "$1")" -ge "$2" ]; }
bt_wait_bytes() {
    wait_until "$1" "$3 bytes in $2" bt_has_bytes "$2" "$3" || { bt_dump FAILED-LOG "$2"; return 1; }
}
bt_logged() { grep -q "$2" "$1" 2>/dev/null; }
bt_mgmt_has() { btmgmt --index "$1" info 2>/dev/null | grep -q "$2"; }
bt_host_up() {
    # BR/EDR-only controllers unless BT_VIRT_FLAGS says otherwise ("" for dual mode).
    btvirt ${BT_VIRT_FLAGS--B} -l2 >/tmp/bt/btvirt.log 2>&1 &
    wait_until 60 "btvirt's hci0 and hci1" test -e /sys/class/bluetooth/hci1 -a -e /sys/class/bluetooth/hci0
    wait_until 60 "mgmt index 0" bt_mgmt_has 0 "addr "
    wait_until 60 "mgmt index 1" bt_mgmt_has 1 "addr "
    if [ "${1:-}" != nodaemon ]; then
        mkdir -p /run/dbus /var/lib/bluetooth
        dbus-daemon --config-file=/etc/periwire/dbus.conf --nofork --nopidfile --nosyslog \
            >/tmp/bt/dbus.log 2>&1 &
        wait_until 60 "the D-Bus system bus" test -S /run/dbus/system_bus_socket
        # -C: the deprecated SDP socket /run/sdp, for `sdptool add`.
        /usr/libexec/bluetooth/bluetoothd -n -C >/tmp/bt/bluetoothd.log 2>&1 &
        # bluetoothd sets the name once it has taken the adapter over (it powers nothing
        # itself: no main.conf, so no AutoEnable).
        wait_until 60 "bluetoothd on hci0" bt_mgmt_has 0 "name BlueZ"
        wait_until 60 "bluetoothd on hci1" bt_mgmt_has 1 "name BlueZ"
    fi
    for _bt_i in 0 1; do
        btmgmt --index $_bt_i io-cap 3 >/dev/null
        btmgmt --index $_bt_i bondable on >/dev/null
        btmgmt --index $_bt_i ssp on >/dev/null
        btmgmt --index $_bt_i power on >/dev/null
    done
    btmgmt --index 1 connectable on >/dev/null
    btmgmt --index 1 discov on >/dev/null
    BT_HCI0=$(bt_addr 0)
    BT_HCI1=$(bt_addr 1)
    export BT_HCI0 BT_HCI1
    echo "BT-ADDR hci0 $BT_HCI0"
    echo "BT-ADDR hci1 $BT_HCI1"
}
bt_start_receivers() {
    l2test -r -i hci1 -P "$BT_L2_PSM" -b "$BT_L2_CHUNK" >/tmp/bt/l2r.log 2>&1 &
    l2test -w -i hci1 -P "$BT_L2_PSM_W" -b "$BT_L2_FRAME" -N "$BT_L2_FRAMES" -g 600000 \
        >/tmp/bt/l2w.log 2>&1 &
    rctest -r -i hci1 -P "$BT_RC_CH" -b "$BT_RC_CHUNK" >/tmp/bt/rcr.log 2>&1 &
    rctest -w -i hci1 -P "$BT_RC_CH_W" -b "$BT_RC_FRAME" -N "$BT_RC_FRAMES" -L 30 \
        >/tmp/bt/rcw.log 2>&1 &
    for _bt_l in l2r l2w rcr rcw; do
        wait_until 60 "$_bt_l listening" bt_logged /tmp/bt/$_bt_l.log "Waiting for connection"
    done
    if [ -S /run/sdp ]; then
        sdptool add --channel="$BT_RC_CH" SP >/dev/null
    fi
    echo BT-RECEIVERS-READY
}
"#;

/// What an l2test or rctest receiver reported: the sum of its `N bytes in T sec, R kB/s`
/// lines.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransferRate {
    /// Bytes the lines count.
    pub bytes: u64,
    /// Receiving time, in seconds: each line's bytes over its rate (more precise than its
    /// `T sec`, which has two decimals).
    pub secs: f64,
    /// Lines found.
    pub lines: usize,
}

impl TransferRate {
    /// The rate over all lines, in kB/s as l2test counts them (1 kB = 1024 bytes).
    pub fn kb_per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.bytes as f64 / 1024.0 / self.secs
        } else {
            0.0
        }
    }
}

/// Sums the `N bytes in T sec, R kB/s` lines of an l2test or rctest receiver log (any line
/// prefix, such as `l2test[174]: ` or a scenario's `L2R `, is skipped).
pub fn parse_transfer_rate(log: &str) -> TransferRate {
    let mut rate = TransferRate {
        bytes: 0,
        secs: 0.0,
        lines: 0,
    };
    for line in log.lines() {
        let Some(pos) = line.find(" bytes in ") else {
            continue;
        };
        let Some(bytes) = line[..pos]
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let rest = &line[pos + " bytes in ".len()..];
        let mut words = rest.split_whitespace();
        let secs: Option<f64> = words.next().and_then(|s| s.parse().ok());
        // "sec," then "R" then "kB/s"
        let kbps: Option<f64> = words.nth(1).and_then(|s| s.parse().ok());
        let line_secs = match (kbps, secs) {
            (Some(r), _) if r > 0.0 && r.is_finite() => bytes as f64 / 1024.0 / r,
            (_, Some(s)) => s,
            _ => continue,
        };
        rate.bytes += bytes;
        rate.secs += line_secs;
        rate.lines += 1;
    }
    rate
}

/// The overall rate in kB/s (1024 bytes) of an l2test receiver log; see
/// [`parse_transfer_rate`]. rctest logs have the same format.
pub fn parse_l2test_rate(log: &str) -> f64 {
    parse_transfer_rate(log).kb_per_sec()
}

/// Whether an l2test receiver log reports a corrupted frame (sequence, size or data; BlueZ
/// 5.66 writes `missmatch`, later versions `mismatch`).
pub fn l2test_reports_mismatch(log: &str) -> bool {
    log.contains("missmatch") || log.contains("mismatch")
}

/// The byte stream `rctest -s`/`-w`/`-a` sends with `-b frame -N frames` (no `-B`): each frame
/// is its sequence number (le32), its size (le16), then 0x7f bytes.
pub fn rctest_stream(frame: usize, frames: u32) -> Vec<u8> {
    assert!(frame >= 6, "rctest frames hold a 6-byte header");
    let mut out = Vec::with_capacity(frame * frames as usize);
    for seq in 0..frames {
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&(frame as u16).to_le_bytes());
        out.resize(out.len() + frame - 6, 0x7f);
    }
    out
}

/// QEMU's human monitor, on the Unix socket of `-monitor unix:PATH,server=on,wait=off`.
pub struct Monitor {
    stream: UnixStream,
}

impl Monitor {
    const PROMPT: &'static [u8] = b"(qemu) ";

    /// The QEMU arguments that give the guest a monitor on the Unix socket `path`.
    pub fn qemu_args(path: &Path) -> [String; 2] {
        [
            "-monitor".to_owned(),
            format!("unix:{},server=on,wait=off", path.display()),
        ]
    }

    pub fn connect(path: &Path) -> Monitor {
        let stream = UnixStream::connect(path).unwrap_or_else(|e| {
            panic!("connecting to the QEMU monitor at {}: {e}", path.display())
        });
        stream
            .set_read_timeout(Some(STEP))
            .expect("monitor read timeout");
        let mut monitor = Monitor { stream };
        monitor.read_to_prompt("the monitor's banner");
        monitor
    }

    /// Runs `command` and returns what the monitor answered (empty for a command that
    /// succeeded silently), without the echo of the command and the prompt.
    pub fn command(&mut self, command: &str) -> String {
        self.stream
            .write_all(format!("{command}\n").as_bytes())
            .unwrap_or_else(|e| panic!("writing {command:?} to the QEMU monitor: {e}"));
        let reply = self.read_to_prompt(command);
        // The monitor echoes the line as it is typed (with terminal escapes), then a line
        // break, then its answer.
        let answer = reply.split_once('\n').map_or("", |(_, rest)| rest);
        answer.replace('\r', "").trim().to_owned()
    }

    fn read_to_prompt(&mut self, what: &str) -> String {
        let mut bytes = Vec::new();
        let mut buf = [0u8; 4096];
        while !bytes.ends_with(Self::PROMPT) {
            let so_far = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
            match self.stream.read(&mut buf) {
                Ok(0) => panic!(
                    "the QEMU monitor closed, answering {what:?}: {:?}",
                    so_far(&bytes)
                ),
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(e) => panic!(
                    "the QEMU monitor, answering {what:?}: {e}; so far {:?}",
                    so_far(&bytes)
                ),
            }
        }
        bytes.truncate(bytes.len() - Self::PROMPT.len());
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Plugs the USB stick on `image` in again, into `port` of `xhci.0`, once its old drive
    /// `old` is gone: QEMU deletes a `-drive` with its device, so the image comes back as a
    /// new drive (`stick2`), under the device id `stick1`.
    pub fn plug_stick_again(&mut self, old: &str, image: &Path, port: u32) {
        self.wait_drive_deleted(old);
        let answer = self.command(&format!(
            "drive_add 0 if=none,id=stick2,format=raw,file={}",
            image.display()
        ));
        assert_eq!(answer, "OK", "QEMU's drive_add");
        let answer = self.command(&format!(
            "device_add usb-storage,bus=xhci.0,drive=stick2,id=stick1,port={port}"
        ));
        assert_eq!(answer, "", "QEMU's device_add");
    }

    /// Waits until QEMU no longer has the drive `id`. QEMU deletes a `-drive` together with
    /// its device, but only shortly after `device_del` has returned; until then the drive
    /// holds the image's lock, so another drive on the image cannot be used.
    pub fn wait_drive_deleted(&mut self, id: &str) {
        let deadline = Instant::now() + STEP;
        loop {
            let block = self.command("info block");
            if !block.lines().any(|l| l.starts_with(&format!("{id} "))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "QEMU still has the drive {id} {STEP:?} after its device was deleted:\n{block}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Shell functions that find a guest's USB devices and their drivers in sysfs.
pub const GUEST_USB_HELPERS: &str = r#"
# usb_device VID:PID: the bus id of the device with these IDs that is not a vhci import.
usb_device() {
    for d in /sys/bus/usb/devices/*; do
        [ -e "$d/idVendor" ] || continue
        # (2>/dev/null: a device being unplugged may vanish meanwhile.)
        [ "$(cat "$d/idVendor" 2>/dev/null):$(cat "$d/idProduct" 2>/dev/null)" = "$1" ] ||
            continue
        case "$(readlink -f "$d")" in *vhci_hcd*) continue ;; esac
        echo "${d##*/}"
        return 0
    done
    return 1
}
no_usb_device() { ! usb_device "$1" >/dev/null; }
# driver INTERFACE: the driver bound to a USB interface (2-1:1.0), or "none".
driver() {
    if [ -e "/sys/bus/usb/devices/$1/driver" ]; then
        basename "$(readlink "/sys/bus/usb/devices/$1/driver")"
    else
        echo none
    fi
}
driver_is() { [ "$(driver "$1")" = "$2" ]; }
driver_is_not() { ! driver_is "$1" "$2"; }
"#;

/// A guest running `scenario` with periwire, an xHCI controller and the stick's drive
/// (`stick`, backed by `image`); `devices` adds the QEMU options of the devices on it.
pub fn xhci_stick_guest(
    scenario: String,
    image: &Path,
    devices: &[&str],
) -> periwire_guest::GuestConfig {
    let config = periwire_guest::GuestConfig::new(scenario)
        // xHCI first, so its buses are 1 (USB 2) and 2 (USB 3); vhci-hcd's come after.
        .modules(["xhci-pci", "usb-storage", "vfat", "usbhid", "vhci-hcd"])
        .qemu_args([
            "-device".to_owned(),
            "qemu-xhci,id=xhci".to_owned(),
            "-drive".to_owned(),
            format!("if=none,id=stick,format=raw,file={}", image.display()),
        ])
        .qemu_args(devices.iter().copied())
        .timeout(Duration::from_secs(600));
    with_periwire(config)
}

/// Keys the Linux input layer reports for "hello world\n" (linux/input-event-codes.h).
pub const HELLO_WORLD_KEYS: [u16; 12] = [35, 18, 38, 38, 24, 57, 17, 24, 19, 38, 32, 28];

/// The contents of file `name` in the FAT image `image`.
pub fn read_fat_file(image: &Path, name: &str) -> Vec<u8> {
    use std::io::Read;
    let file = std::fs::File::open(image).expect("image");
    let fs = fatfs::FileSystem::new(file, fatfs::FsOptions::new()).expect("FAT");
    let mut f = fs.root_dir().open_file(name).expect("file in image");
    let mut data = Vec::new();
    f.read_to_end(&mut data).expect("read");
    data
}

/// Guest steps on the disk of [`prepare_fat_disk`] once it is /dev/sda: mount it, print
/// README.TXT's checksum, write NEW.BIN (3000 KiB of random bytes) and print its checksum,
/// then read the whole disk with `dd` and print the uptimes around it. [`check_storage_io`]
/// reads what they print.
pub const STORAGE_IO_SCENARIO: &str = r#"
mkdir -p /mnt
mount -t vfat /dev/sda /mnt
mark README $(sha256sum /mnt/README.TXT)
dd if=/dev/urandom of=/tmp/new.bin bs=1k count=3000 2>/dev/null
cp /tmp/new.bin /mnt/NEW.BIN
sync
umount /mnt
mark NEW $(sha256sum /tmp/new.bin)
echo 3 > /proc/sys/vm/drop_caches
read -r t0 _ </proc/uptime
dd if=/dev/sda of=/dev/null bs=1M 2>/dev/null
read -r t1 _ </proc/uptime
mark READ-SPEED $t0 $t1
"#;

/// Checks what [`STORAGE_IO_SCENARIO`] printed: README.TXT read back intact; prints the
/// sequential read rate under `label`. Returns the line with NEW.BIN's checksum, for
/// [`check_written_image`].
pub fn check_storage_io(guest: &mut Guest, label: &str) -> String {
    let readme = guest.expect_line("README ", STEP).expect("README checksum");
    assert!(
        readme.contains(&sha256(README_TEXT)),
        "the file on the disk reads back intact: {readme}"
    );
    let new = guest.expect_line("NEW ", STEP).expect("new file checksum");
    let speed = guest.expect_line("READ-SPEED ", STEP).expect("dd read");
    let times: Vec<f64> = speed
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().expect("uptime"))
        .collect();
    let seconds = times[1] - times[0];
    println!(
        "guest sequential read of the whole 64 MiB disk{label}: {:.1} MB/s ({seconds:.2} s)",
        64.0 * 1.048_576 / seconds
    );
    new
}

/// Stops `server` with the guest still holding its disk (over usb-redir), which tells the
/// guest the device is gone: the guest, sent a line, waits for its disk to go and prints
/// GONE. Then checks the image for the NEW.BIN of [`check_storage_io`] (`new`).
pub fn stop_and_see_the_disk_go(server: &mut Server, guest: &mut Guest, new: &str) {
    assert!(server.stop(), "server stops cleanly on SIGTERM");
    guest.send_line("go").expect("console");
    guest
        .expect_line("GONE", STEP)
        .expect("device removed from the guest");
    guest.wait_success(STEP).expect("scenario succeeds");
    check_written_image(&server.data_dir.join("disk.img"), new);
}

/// Checks, with the server stopped, that the NEW.BIN the guest wrote (its checksum in `new`)
/// is intact in `image`, and that the image is fsck-clean.
pub fn check_written_image(image: &Path, new: &str) {
    let written = read_fat_file(image, "NEW.BIN");
    assert_eq!(written.len(), 3000 * 1024);
    assert!(
        new.contains(&sha256(&written)),
        "guest's file is intact in the image"
    );
    let fsck = Command::new("fsck.fat")
        .args(["-n"])
        .arg(image)
        .output()
        .expect("fsck.fat");
    assert!(
        fsck.status.success(),
        "image is fsck-clean: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

/// Guest steps once the virtual keyboard and mouse are attached (with
/// [`GUEST_INPUT_HELPERS`]): streams the keyboard's events until the host's next line, then
/// the mouse's until the one after. [`typed_text_arrives`] and [`mouse_moves_and_clicks`] are
/// the host's side.
pub const KEYBOARD_MOUSE_SCENARIO: &str = r#"
kbd=$(find_event "Virtual Keyboard")
mouse=$(find_event "Virtual Mouse")
exec 3<"$kbd"
stream_events 3 &
streamer=$!
mark KBD-READY
read -r _
kill $streamer
exec 4<"$mouse"
stream_events 4 &
streamer=$!
mark MOUSE-READY
read -r _
kill $streamer
mark INPUT-DONE
"#;

/// Guest steps on /dev/ttyACM0 once it is there: raw mode at 115200, then one line from the
/// host and one line back. [`serial_exchange`] is the host's side.
pub const SERIAL_ECHO_SCENARIO: &str = r#"
stty -F /dev/ttyACM0 raw -echo 115200
exec 5<>/dev/ttyACM0
mark SERIAL-READY $(stty -F /dev/ttyACM0 speed)
read -r line <&5
mark GOT "$line"
echo "pong from the guest" >&5
mark SENT
"#;

/// The host's side of [`SERIAL_ECHO_SCENARIO`] over the serial port's host socket at
/// `serial_port`: the line coding arrived, a line goes each way intact.
pub fn serial_exchange(guest: &mut Guest, serial_port: u16) {
    use std::io::{Read, Write};
    let ready = guest.expect_line("SERIAL-READY", STEP).expect("tty open");
    assert!(ready.ends_with("115200"), "line coding set: {ready}");
    let mut host =
        std::net::TcpStream::connect(("127.0.0.1", serial_port)).expect("serial host side");
    host.set_read_timeout(Some(STEP)).expect("timeout");
    host.write_all(b"ping from the host\n").expect("write");
    let got = guest.expect_line("GOT ", STEP).expect("guest read");
    assert_eq!(got, "GOT ping from the host");
    guest.expect_line("SENT", STEP).expect("guest wrote");
    let mut received = Vec::new();
    let mut buf = [0u8; 256];
    while !received.ends_with(b"\n") {
        let n = host.read(&mut buf).expect("read from serial");
        assert!(n > 0, "serial host side closed");
        received.extend_from_slice(&buf[..n]);
    }
    assert_eq!(received, b"pong from the guest\n");
}

/// Once the guest has printed KBD-READY (its keyboard's events streaming with
/// `stream_events`), types "hello world\n" with `periwire input type` and checks that the
/// guest's input layer reports exactly those keys; then lets the guest go on.
pub fn typed_text_arrives(guest: &mut Guest, server: &Server) {
    guest
        .expect_line("KBD-READY", STEP)
        .expect("keyboard bound");
    server.cli(&["input", "type", "hello world\n"]);
    let presses = key_presses_until_enter_released(guest).expect("key events");
    assert_eq!(
        presses, HELLO_WORLD_KEYS,
        "typed text arrives as key presses, in order"
    );
    guest.send_line("next").expect("console");
}

/// Kernel modules of a guest that mounts the ext4 disk of [`prepare_ext4_disk`], besides
/// those of the way it reaches it.
pub const EXT4_MODULES: &[&str] = &["usb-storage", "sd_mod", "ext4", "crc32c_generic"];

/// Guest steps on the ext4 disk once it is /dev/sda: a synced file (its checksum printed
/// after SYNCED), then a large write that prints WRITING once 8 MB are on the way; the test
/// kills the guest there.
pub const WRITE_UNTIL_KILLED_SCENARIO: &str = r#"
mkdir -p /mnt
mount -t ext4 /dev/sda /mnt
dd if=/dev/urandom of=/mnt/synced.bin bs=1k count=512 2>/dev/null
sync
mark SYNCED $(sha256sum /mnt/synced.bin)
dd if=/dev/urandom of=/mnt/big.bin bs=1M count=48 conv=fsync 2>/dev/null &
while [ "$(stat -c %s /mnt/big.bin 2>/dev/null || echo 0)" -lt 8000000 ]; do usleep 50000; done
mark WRITING
wait
mark WRITE-FINISHED
"#;

/// The host's side of [`WRITE_UNTIL_KILLED_SCENARIO`]: once the large write is under way,
/// kills QEMU; checks that the server survives and releases device `busid`. Returns the
/// synced file's checksum line.
pub fn kill_mid_write(mut guest: Guest, server: &mut Server, busid: &str) -> String {
    let synced = guest.expect_line("SYNCED ", STEP).expect("synced");
    guest
        .expect_line("WRITING", STEP)
        .expect("large write under way");
    guest.kill().expect("kill QEMU");
    drop(guest);
    assert!(
        server.is_running(),
        "the server survives a client killed mid-write"
    );
    server.cli(&["status", "--wait-released", busid, "--timeout", "60"]);
    assert!(
        !server.imported(busid),
        "the device is released after its client died"
    );
    synced
}

/// Guest steps after the crash: mount (the kernel replays the journal), print the synced
/// file's checksum after SYNCED, unmount.
pub const AFTER_CRASH_SCENARIO: &str = r#"
mkdir -p /mnt
mount -t ext4 /dev/sda /mnt
mark SYNCED $(sha256sum /mnt/synced.bin)
umount /mnt
"#;

/// REL_X.
pub const REL_X: u16 = 0;
/// REL_Y.
pub const REL_Y: u16 = 1;
/// BTN_LEFT.
pub const BTN_LEFT: u16 = 0x110;

/// Once the guest has printed MOUSE-READY (the mouse's events streaming), moves the mouse
/// named `mouse` by (25, -7) and clicks left; checks the movement arrives whole and the button
/// goes down and up; then lets the guest go on.
pub fn mouse_moves_and_clicks(guest: &mut Guest, server: &Server) {
    guest
        .expect_line("MOUSE-READY", STEP)
        .expect("mouse attached");
    server.cli(&["input", "--device", "mouse", "move", "25", "-7"]);
    server.cli(&["input", "click", "left"]);
    let (mut dx, mut dy, mut buttons) = (0, 0, Vec::new());
    loop {
        let ev = parse_event(&guest.expect_line("EV ", STEP).expect("mouse event"));
        match (ev.kind, ev.code) {
            (EV_REL, REL_X) => dx += ev.value,
            (EV_REL, REL_Y) => dy += ev.value,
            (EV_KEY, BTN_LEFT) => buttons.push(ev.value),
            _ => {}
        }
        if buttons == [1, 0] {
            break;
        }
    }
    assert_eq!((dx, dy), (25, -7), "relative movement arrives whole");
    guest.send_line("next").expect("console");
}

/// A child process killed (and reaped) when dropped, so that a failed assertion leaves no
/// QEMU behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A QEMU without a guest (no disk, no kernel: the firmware finds nothing to boot) with an
/// xHCI controller `xhci`, as the usb-guest end of the `usb-redir` devices the caller adds;
/// run under the command words `wrapper` (`ip netns exec NS`), if any.
pub fn usb_guest_qemu(wrapper: &[&str]) -> Command {
    let mut words = wrapper.iter().copied().chain(["qemu-system-x86_64"]);
    let mut qemu = Command::new(words.next().unwrap_or("qemu-system-x86_64"));
    qemu.args(words)
        .args([
            "-accel",
            "tcg",
            "-display",
            "none",
            "-nodefaults",
            "-m",
            "64",
        ])
        .args(["-serial", "none", "-device", "qemu-xhci,id=xhci"])
        .stdin(Stdio::null());
    qemu
}
