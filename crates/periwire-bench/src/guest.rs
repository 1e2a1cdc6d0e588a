//! The virtual disk as a real Linux uses it: a Debian kernel under QEMU TCG attaches
//! periwire's mass-storage device with the stock `usbip` tool, and `vhci-hcd` +
//! `usb-storage` carry `dd` (sequential, O_DIRECT, 1 MiB blocks) and `ioping` (4 KiB random
//! reads, O_DIRECT, one at a time — usb-storage's Bulk-Only Transport runs one command at a
//! time whatever the queue depth) to periwire's server in this process. First, `socat` sends
//! raw TCP over the same network: the ceiling of the write row (on the user-mode network,
//! QEMU hands the guest's TCP payload to its forward one segment at a time).
//!
//! The USB/IP guest runs twice: on QEMU's user-mode network ([`GuestPath::Usbip`]), whose
//! guest → host TCP is a few MB/s, and on the harness's TAP network in a namespace of the
//! bench's ([`GuestPath::UsbipTap`]), where the server binds its socket too.
//!
//! The same disk and the same measurements also run through QEMU's own `usb-redir` on an
//! emulated xHCI ([`GuestPath::Usbredir`]): periwire's usbredir server, no usbip in the guest
//! and no user-mode network in the data path.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use periwire_guest::{Guest, GuestConfig, Kernel, RedirBus, TapNetwork, TAP_HOST_ADDR, USBIP_PORT};
use periwire_server::usbredir::UsbredirConfig;
use periwire_server::{serve, Export, Registry, ServerConfig};
use periwire_usb::storage::{serial_number, MassStorage, StorageConfig};
use periwire_wire::usbip::BusId;

use crate::target::{server_runtime, threads_cpu_time};

/// Name of the threads of the server the guest talks to.
const SERVER_THREADS: &str = "periwire-guest-server";

/// How much the guest moves.
#[derive(Debug, Clone, Copy)]
pub struct GuestPlan {
    /// MiB written sequentially (then read back).
    pub seq_mib: u32,
    /// Seconds of random 4 KiB reads.
    pub random_secs: u32,
    /// MiB of raw TCP the guest sends to the host first.
    pub upload_mib: u32,
}

impl GuestPlan {
    /// The full benchmark.
    pub fn full() -> Self {
        Self {
            seq_mib: 64,
            random_secs: 5,
            upload_mib: 8,
        }
    }

    /// Just enough to prove the path works.
    pub fn smoke() -> Self {
        Self {
            seq_mib: 4,
            random_secs: 1,
            upload_mib: 1,
        }
    }
}

/// How the guest reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestPath {
    /// USB/IP through QEMU's user-mode network, `usbip attach`, `vhci-hcd`.
    Usbip,
    /// The same, on a TAP device in a network namespace the bench creates (QEMU and the
    /// server's socket inside it).
    UsbipTap,
    /// QEMU's `usb-redir` on an emulated xHCI, dialling periwire's usbredir listener.
    Usbredir,
}

/// What the guest measured.
#[derive(Debug, Clone, Copy)]
pub struct GuestResult {
    /// Sequential write, bytes per second.
    pub write: f64,
    /// Sequential read, bytes per second.
    pub read: f64,
    /// 4 KiB random reads per second.
    pub iops: f64,
    /// Requests ioping completed.
    pub random_requests: u64,
    /// Raw TCP from the guest to the host over the same network (busybox `nc`), bytes per
    /// second: the ceiling of the write row (USB/IP only; 0 for usb-redir).
    pub raw_upload: f64,
    /// CPU time periwire's server used while the disk was attached.
    pub server_cpu: Duration,
    /// How long the disk was attached (the three measurements and what lies between).
    pub attached: Duration,
    /// Bytes the image holds after the run that the guest wrote (a check: the pattern of
    /// the sequential write reached the image).
    pub written_ok: bool,
}

/// Why the guest part cannot run, if it cannot. Installs `ioping` (Debian package) when it
/// is missing and this process may (root); QEMU, the kernel and the guest's tools come from
/// `scripts/install-test-deps`.
pub fn missing_tools() -> Option<String> {
    if Kernel::find().is_err() || which("qemu-system-x86_64").is_none() {
        return Some("QEMU or the Debian kernel is missing (scripts/install-test-deps)".into());
    }
    if which("ioping").is_none() {
        install_ioping();
    }
    if which("ioping").is_none() {
        return Some("ioping is missing (apt-get install ioping)".into());
    }
    None
}

/// `apt-get install ioping`, updating the package lists first if the install fails.
fn install_ioping() {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !is_root {
        return;
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let install = ["install", "-y", "-q", "--no-install-recommends", "ioping"];
    if !apt(&install) {
        apt(&["update", "-q"]);
        apt(&install);
    }
}

pub(crate) fn which(tool: &str) -> Option<String> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !path.is_empty()).then_some(path)
}

/// A host binary and the shared libraries it loads (as `ldd` lists them), as guest files.
pub(crate) fn binary_with_libs(path: &str) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut files = vec![(path.to_owned(), std::fs::read(path)?)];
    let out = Command::new("ldd").arg(path).output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let lib = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(lib) = lib.filter(|l| l.starts_with('/')) {
            let real = std::fs::canonicalize(lib)?;
            files.push((lib.to_owned(), std::fs::read(real)?));
        }
    }
    Ok(files)
}

/// Port the raw upload goes to, in the guest's view.
const UPLOAD_PORT: u16 = 5001;

/// How the USB/IP guest gets the disk: the raw upload first, then `usbip attach`.
const USBIP_ATTACH: &str = r#"
dd if=/dev/zero bs=1M count=$UPLOAD_MIB 2>/dev/null |
    socat -u -b 1048576 STDIN TCP:"$PERIWIRE_SERVER":5001
mark UPLOADED
mkdir -p /var/run/vhci_hcd
usbip attach -r "$PERIWIRE_SERVER" -b 1-1
"#;

/// What both guests measure once the disk is /dev/sda.
const MEASURE: &str = r#"
wait_for /dev/sda 60
mark ATTACHED
read -r t0 _ </proc/uptime
dd if=/dev/zero of=/dev/sda bs=1M count=$SEQ_MIB oflag=direct conv=fsync 2>/dev/null
read -r t1 _ </proc/uptime
mark WRITE $t0 $t1
echo 3 > /proc/sys/vm/drop_caches
read -r t0 _ </proc/uptime
dd if=/dev/sda of=/dev/null bs=1M count=$SEQ_MIB iflag=direct 2>/dev/null
read -r t1 _ </proc/uptime
mark READ $t0 $t1
mark RANDOM $(ioping -B -q -D -i 0 -s 4k -S ${SEQ_MIB}m -w $RANDOM_SECS /dev/sda)
"#;

/// Boots the guest against a periwire server with one mass-storage device (a fresh image
/// in `dir`) on a runtime of its own, reached over `path`, and measures.
pub fn run(plan: GuestPlan, dir: &Path, path: GuestPath) -> Result<GuestResult, String> {
    if let Some(why) = missing_tools() {
        return Err(why);
    }
    let err = |what: &str| {
        let what = what.to_owned();
        move |e: std::io::Error| format!("{what}: {e}")
    };
    let image = dir.join("bench-disk.img");
    let size = u64::from(plan.seq_mib.max(8)) * 1024 * 1024;
    // Non-zero bytes, so the guest's zeros are seen to arrive.
    std::fs::write(&image, vec![0xeeu8; size as usize]).map_err(err("image"))?;
    let device = MassStorage::open(StorageConfig {
        path: image.clone(),
        size: Some(size),
        serial: serial_number("bench 1-1"),
        ..StorageConfig::default()
    })
    .map_err(err("open image"))?;
    let registry = Registry::new();
    registry
        .add(Export {
            busid: BusId::new("1-1").map_err(|e| e.to_string())?,
            busnum: 1,
            devnum: 2,
            name: "disk".into(),
            device: Arc::new(device),
        })
        .map_err(|b| format!("duplicate {b}"))?;
    let runtime = server_runtime(SERVER_THREADS).map_err(err("runtime"))?;
    // On the TAP network, the server's sockets are made inside its namespace, at the
    // guest's default ports (nothing else is there).
    let net = match path {
        GuestPath::UsbipTap => Some(TapNetwork::new().map_err(|e| e.to_string())?),
        _ => None,
    };
    let bind = |port: u16| -> Result<std::net::TcpListener, String> {
        match &net {
            Some(net) => net
                .bind_tcp((TAP_HOST_ADDR, port).into())
                .map_err(|e| e.to_string()),
            None => std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}")),
        }
    };
    let listener = bind(USBIP_PORT)?;
    listener.set_nonblocking(true).map_err(err("bind"))?;
    let listener = {
        let _runtime = runtime.enter();
        tokio::net::TcpListener::from_std(listener).map_err(err("bind"))?
    };
    let port = listener.local_addr().map_err(err("bind"))?.port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stopped = async {
        let _ = stopped.await;
    };
    let server = match path {
        GuestPath::Usbip | GuestPath::UsbipTap => {
            runtime.spawn(serve(listener, registry, ServerConfig::default(), stopped))
        }
        GuestPath::Usbredir => runtime.spawn(periwire_server::usbredir::serve(
            listener,
            registry,
            BusId::new("1-1").map_err(|e| e.to_string())?,
            // QEMU dials from loopback, which the default rules admit.
            Default::default(),
            UsbredirConfig::default(),
            stopped,
        )),
    };

    let ioping = which("ioping").ok_or("ioping is missing")?;
    let upload = bind(UPLOAD_PORT)?;
    let upload_port = upload.local_addr().map_err(err("bind"))?.port();
    let upload_bytes = u64::from(plan.upload_mib) * 1024 * 1024;
    let (attach, detach) = match path {
        GuestPath::Usbip | GuestPath::UsbipTap => (USBIP_ATTACH, "usbip detach -p 0\n"),
        GuestPath::Usbredir => ("", ""),
    };
    let scenario = format!(
        "SEQ_MIB={}\nRANDOM_SECS={}\nUPLOAD_MIB={}\n{attach}{MEASURE}{detach}mark DETACHED\n",
        plan.seq_mib, plan.random_secs, plan.upload_mib
    );
    let mut config = GuestConfig::new(scenario).timeout(Duration::from_secs(240));
    let upload_rate = match path {
        GuestPath::Usbip => {
            config = config
                .modules(["vhci-hcd", "usb-storage", "sd_mod"])
                .server_port(port)
                .forward(UPLOAD_PORT, upload_port);
            Some(std::thread::spawn(move || raw_upload_rate(&upload)))
        }
        GuestPath::UsbipTap => {
            let net = net.as_ref().ok_or("the TAP network is missing")?;
            config = config
                .modules(["vhci-hcd", "usb-storage", "sd_mod"])
                .tap_network(net);
            Some(std::thread::spawn(move || raw_upload_rate(&upload)))
        }
        GuestPath::Usbredir => {
            config = config
                .modules(["xhci-pci", "usb-storage", "sd_mod"])
                .usb_redir(port, RedirBus::Xhci);
            None
        }
    };
    for (path, bytes) in binary_with_libs(&ioping).map_err(err("ioping"))? {
        config = config.file(path, 0o755, bytes);
    }
    // The raw upload's sender: socat with 1 MiB reads and writes (busybox nc moves a few KiB
    // per write, which on the TAP link bounds it below the USB/IP rows it should bound).
    if path != GuestPath::Usbredir {
        let socat = which("socat").ok_or("socat is missing (scripts/install-test-deps)")?;
        for (path, bytes) in binary_with_libs(&socat).map_err(err("socat"))? {
            config = config.file(path, 0o755, bytes);
        }
    }
    let step = Duration::from_secs(180);
    let outcome = (|| -> Result<GuestResult, String> {
        let mut guest = Guest::boot(config).map_err(|e| e.to_string())?;
        let line = |g: &mut Guest, m: &str| g.expect_line(m, step).map_err(|e| e.to_string());
        if path != GuestPath::Usbredir {
            line(&mut guest, "UPLOADED")?;
        }
        line(&mut guest, "ATTACHED")?;
        let (cpu0, t0) = (threads_cpu_time(SERVER_THREADS), std::time::Instant::now());
        let bytes = f64::from(plan.seq_mib) * 1024.0 * 1024.0;
        let write = bytes / seconds(&line(&mut guest, "WRITE ")?)?;
        let read = bytes / seconds(&line(&mut guest, "READ ")?)?;
        let random = line(&mut guest, "RANDOM ")?;
        // ioping -B: requests, time (µs), iops, bytes/s, min, avg, max, mdev, ...
        let fields: Vec<&str> = random.split_whitespace().skip(1).collect();
        let (Some(req), Some(iops)) = (fields.first(), fields.get(2)) else {
            return Err(format!("ioping printed {random:?}"));
        };
        let random_requests = req.parse().map_err(|_| format!("ioping: {random:?}"))?;
        let iops = iops.parse().map_err(|_| format!("ioping: {random:?}"))?;
        line(&mut guest, "DETACHED")?;
        let (server_cpu, attached) = (
            threads_cpu_time(SERVER_THREADS).saturating_sub(cpu0),
            t0.elapsed(),
        );
        guest.wait_success(step).map_err(|e| e.to_string())?;
        Ok(GuestResult {
            write,
            read,
            iops,
            random_requests,
            raw_upload: 0.0,
            server_cpu,
            attached,
            written_ok: false,
        })
    })();
    let _ = stop.send(());
    let _ = runtime.block_on(server);
    let mut result = outcome?;
    if let Some(upload_rate) = upload_rate {
        let (received, rate) = upload_rate
            .join()
            .map_err(|_| "upload listener panicked".to_owned())?
            .map_err(|e| format!("raw upload: {e}"))?;
        if received != upload_bytes {
            return Err(format!(
                "raw upload: {received} of {upload_bytes} bytes arrived"
            ));
        }
        result.raw_upload = rate;
    }
    let data = std::fs::read(&image).map_err(err("read image"))?;
    let written = (plan.seq_mib as usize) * 1024 * 1024;
    result.written_ok = data[..written].iter().all(|&b| b == 0);
    Ok(result)
}

/// Accepts one connection and counts its bytes to the end: (bytes, bytes per second from the
/// first byte to the end).
fn raw_upload_rate(listener: &std::net::TcpListener) -> std::io::Result<(u64, f64)> {
    use std::io::Read;
    let (mut conn, _) = listener.accept()?;
    let mut buf = vec![0u8; 1024 * 1024];
    let mut total = 0u64;
    let mut first = None;
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(std::time::Instant::now);
        total += n as u64;
    }
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    Ok((total, total as f64 / secs.max(1e-3)))
}

/// Seconds between the two `/proc/uptime` stamps of a `MARK [WORD] t0 t1` line.
pub(crate) fn seconds(line: &str) -> Result<f64, String> {
    let t: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    match t[..] {
        [t0, t1] if t1 > t0 => Ok(t1 - t0),
        [_, _] => Ok(0.01), // under the clock's 10 ms resolution
        _ => Err(format!("bad timing line {line:?}")),
    }
}
