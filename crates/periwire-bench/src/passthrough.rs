//! Host passthrough against the kernel's own: one Linux guest under QEMU TCG with QEMU's
//! emulated `usb-storage` stick on an emulated xHCI reads the stick sequentially (`dd`,
//! O_DIRECT, 1 MiB blocks) three ways, round after round, alternating: directly from
//! usb-storage on xHCI (the ceiling), through the kernel's `usbip-host` + `usbipd`, and
//! through periwire's passthrough (`periwire serve` with the stick as a host device), each
//! imported with the stock `usbip attach` from 127.0.0.1 into the same guest's `vhci-hcd`.
//! Same guest, same device, same client; only the server differs.
//!
//! periwire runs in the guest from the release build's binary ([`periwire_binary`]), which
//! `crates/periwire-bench/run` builds first.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use periwire_guest::{Guest, GuestConfig};

use crate::guest::{binary_with_libs, seconds, which};

/// How much the guest reads.
#[derive(Debug, Clone, Copy)]
pub struct PassthroughPlan {
    /// MiB per read (the stick's size).
    pub mib: u32,
    /// Rounds; each reads once per path.
    pub rounds: u32,
}

impl PassthroughPlan {
    /// The full benchmark.
    pub fn full() -> Self {
        Self {
            mib: 128,
            rounds: 5,
        }
    }

    /// Just enough to prove the path works.
    pub fn smoke() -> Self {
        Self { mib: 16, rounds: 1 }
    }
}

/// Bytes per second of each round's read, per path.
#[derive(Debug, Clone, Default)]
pub struct PassthroughResult {
    /// usb-storage on the emulated xHCI, no USB/IP.
    pub direct: Vec<f64>,
    /// The kernel's usbip-host through vhci-hcd.
    pub kernel: Vec<f64>,
    /// periwire's passthrough through vhci-hcd.
    pub periwire: Vec<f64>,
    /// The share of each periwire read's time that `periwire serve` was on the guest's CPU
    /// (0..1; the guest has one).
    pub periwire_cpu: Vec<f64>,
}

/// The periwire binary the guest runs: `$PERIWIRE_BENCH_PERIWIRE`, or `periwire` beside
/// the bench's own build directory (`target/release/`, where `cargo build --release -p
/// periwire` puts it).
pub fn periwire_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("PERIWIRE_BENCH_PERIWIRE") {
        return Ok(path.into());
    }
    // The bench runs as target/release/deps/compare-HASH.
    let exe = std::env::current_exe().map_err(|e| format!("the bench's own path: {e}"))?;
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("periwire"))
        .filter(|p| p.is_file());
    candidate.ok_or_else(|| {
        "no release periwire binary beside the bench (cargo build --release -p periwire, \
         which crates/periwire-bench/run does, or set PERIWIRE_BENCH_PERIWIRE)"
            .to_owned()
    })
}

/// QEMU's `usb-storage`, as `VID:PID`.
const STICK_IDS: &str = "46f4:0001";

/// The guest's side. `usbipd` (the kernel path) listens on 3240, `periwire serve` on 3241.
const SCENARIO: &str = r#"
usb_device() {
    for d in /sys/bus/usb/devices/*; do
        [ -e "$d/idVendor" ] || continue
        [ "$(cat "$d/idVendor"):$(cat "$d/idProduct")" = "$1" ] && { echo "${d##*/}"; return 0; }
    done
    return 1
}
disk_at() {
    for b in /sys/block/sd*; do
        [ -e "$b" ] || continue
        case "$(readlink -f "$b")" in *"$1"*) echo "${b##*/}"; return 0 ;; esac
    done
    return 1
}
no_disk_at() { ! disk_at "$1"; }
# until_ok SECONDS WHAT COMMAND...: retry COMMAND every 0.1 s; fail after SECONDS.
until_ok() {
    _n=$(($1 * 10)); _what=$2; shift 2
    until "$@" >/dev/null 2>&1; do
        _n=$((_n - 1))
        [ "$_n" -gt 0 ] || { echo "FAILED: timed out waiting for $_what"; return 1; }
        usleep 100000
    done
}
# timed_read PATH DISK: read the whole disk, mark the uptimes around it.
timed_read() {
    read -r t0 _ </proc/uptime
    dd if="/dev/$2" of=/dev/null bs=1M count="$MIB" iflag=direct 2>/dev/null
    read -r t1 _ </proc/uptime
    mark READ "$1" "$t0" "$t1"
}
# cpu_ticks PID: user + system time of a process, all its threads, in clock ticks (1/100 s).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# import PORT: attach the stick from the server on PORT, wait for its disk behind vhci.
import() {
    timeout 60 usbip --tcp-port "$1" attach -r 127.0.0.1 -b "$stick"
    until_ok 90 "the disk behind vhci_hcd" disk_at vhci_hcd
    until_ok 60 "the xHCI disk to go away" no_disk_at "/$stick:"
}
# release: detach the vhci port, wait for its disk to go.
release() {
    port=$(usbip port | sed -n 's/^Port \([0-9]*\):.*/\1/p' | head -n 1)
    timeout 60 usbip detach -p "$port"
    until_ok 60 "the vhci disk to go away" no_disk_at vhci_hcd
}
until_ok 60 "the xHCI stick" usb_device "$STICK_IDS"
stick=$(usb_device "$STICK_IDS")
until_ok 60 "the stick's disk on xHCI" disk_at "/$stick:"
usbipd -D
mkdir -p /tmp/pw
printf '[[device]]\nkind = "host"\nbusid = "%s"\n' "$stick" >/tmp/pw/periwire.toml
periwire serve --config /tmp/pw/periwire.toml --data-dir /tmp/pw --listen 127.0.0.1:3241 \
    >/tmp/pw/log 2>&1 &
server=$!
until_ok 60 "periwire serve to answer" usbip --tcp-port 3241 list -r 127.0.0.1
mark READY stick=$stick
for round in $(seq "$ROUNDS"); do
    timed_read direct "$(disk_at "/$stick:")"
    usbip bind -b "$stick"
    import 3240
    timed_read kernel "$(disk_at vhci_hcd)"
    release
    usbip unbind -b "$stick"
    until_ok 90 "usb-storage to take the stick back from usbip-host" disk_at "/$stick:"
    import 3241
    c0=$(cpu_ticks "$server")
    timed_read periwire "$(disk_at vhci_hcd)"
    mark CPU "$(($(cpu_ticks "$server") - c0))"
    release
    until_ok 90 "usb-storage to take the stick back from periwire" disk_at "/$stick:"
done
mark DONE
"#;

/// Boots the guest with a stick of `plan.mib` MiB (an image in `dir`) and measures.
pub fn run(plan: PassthroughPlan, dir: &Path) -> Result<PassthroughResult, String> {
    if let Some(why) = crate::guest::missing_tools() {
        return Err(why);
    }
    let periwire = periwire_binary()?;
    if which("usbipd").is_none() {
        return Err("usbipd is missing (Debian package usbip; scripts/install-test-deps)".into());
    }
    let image = dir.join("stick.img");
    let size = u64::from(plan.mib) * 1024 * 1024;
    std::fs::write(&image, vec![0x5au8; size as usize]).map_err(|e| format!("image: {e}"))?;
    // The guest's copy without debug info: a quarter of the size, symbols kept (perf).
    let stripped = dir.join("periwire");
    let status = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(&periwire)
        .arg(&stripped)
        .status()
        .map_err(|e| format!("objcopy (binutils): {e}"))?;
    if !status.success() {
        return Err(format!("objcopy --strip-debug {}", periwire.display()));
    }
    let mut config = GuestConfig::new(format!(
        "MIB={}\nROUNDS={}\nSTICK_IDS={STICK_IDS}\n{SCENARIO}",
        plan.mib, plan.rounds
    ))
    .modules([
        "xhci-pci",
        "usb-storage",
        "sd_mod",
        "vhci-hcd",
        "usbip-host",
    ])
    .qemu_args([
        "-device".to_owned(),
        "qemu-xhci,id=xhci".to_owned(),
        "-drive".to_owned(),
        format!("if=none,id=stick,format=raw,file={}", image.display()),
        "-device".to_owned(),
        "usb-storage,bus=xhci.0,drive=stick".to_owned(),
    ])
    .without_network()
    .timeout(Duration::from_secs(420));
    config = config.file(
        "/usr/bin/periwire",
        0o755,
        std::fs::read(&stripped).map_err(|e| format!("periwire binary: {e}"))?,
    );
    let libs = binary_with_libs(&periwire.to_string_lossy())
        .map_err(|e| format!("periwire's libraries: {e}"))?;
    for (path, bytes) in libs.into_iter().skip(1) {
        config = config.file(path, 0o755, bytes);
    }
    let mut guest = Guest::boot(config).map_err(|e| e.to_string())?;
    let step = Duration::from_secs(180);
    guest
        .expect_line("READY ", step)
        .map_err(|e| e.to_string())?;
    let bytes = f64::from(plan.mib) * 1024.0 * 1024.0;
    let mut result = PassthroughResult::default();
    let mut periwire_secs = Vec::new();
    for _ in 0..plan.rounds * 3 {
        let line = guest
            .expect_line("READ ", step)
            .map_err(|e| e.to_string())?;
        // READ PATH T0 T1
        let which = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let secs = seconds(&line)?;
        match which.as_str() {
            "direct" => result.direct.push(bytes / secs),
            "kernel" => result.kernel.push(bytes / secs),
            "periwire" => {
                result.periwire.push(bytes / secs);
                periwire_secs.push(secs);
            }
            _ => return Err(format!("unknown path in {line:?}")),
        }
    }
    guest.expect_line("DONE", step).map_err(|e| e.to_string())?;
    let ticks = guest
        .transcript()
        .iter()
        .filter_map(|l| l.text.strip_prefix("CPU "))
        .filter_map(|t| t.trim().parse::<f64>().ok());
    result.periwire_cpu = ticks
        .zip(&periwire_secs)
        .map(|(ticks, secs)| ticks / 100.0 / secs)
        .collect();
    guest.wait_success(step).map_err(|e| e.to_string())?;
    Ok(result)
}
