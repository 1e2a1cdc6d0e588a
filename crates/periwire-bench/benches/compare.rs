//! `cargo bench -p periwire-bench --bench compare`: periwire's USB/IP server against the
//! `usbip` crate's, side by side, then the guest disk. Prints one table (see the README's
//! "Benchmarks" section for how to read it).
//!
//! Environment: `PERIWIRE_BENCH_QUICK=1` measures less (one round of 0.1 s, a small guest
//! run); `PERIWIRE_BENCH_NO_GUEST=1` skips the guest rows; `PERIWIRE_BENCH_ONLY=periwire`
//! (or `usbip`) runs one server alone and `PERIWIRE_BENCH_ROWS=TEXT` only the rows whose
//! label contains TEXT (of the guest rows, the groups whose prefix, `guest tap` say, does), and `PERIWIRE_BENCH_NO_LOOPBACK=1` skips the ceiling (for profiling).
//! `PERIWIRE_BENCH_TLS=1` compares periwire over mutual TLS with periwire in the clear instead
//! of with the `usbip` crate.

mod usbip_peer;

use std::io::Write;
use std::time::{Duration, Instant};

use periwire_bench::bench::{self, ExtraRow, Plan, Scenario};
use periwire_bench::client::Stop;
use periwire_bench::guest::{self, GuestPath, GuestPlan};
use periwire_bench::passthrough::{self, PassthroughPlan};
use periwire_bench::target::Target;

fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; nothing else is understood.
    let quick = env_flag("PERIWIRE_BENCH_QUICK");
    let started = Instant::now();
    let (plan, guest_plan, passthrough_plan) = if quick {
        let mut p = Plan::full();
        p.reps = 1;
        p.stop = Stop::After(Duration::from_millis(100));
        (p, GuestPlan::smoke(), PassthroughPlan::smoke())
    } else {
        (Plan::full(), GuestPlan::full(), PassthroughPlan::full())
    };
    let mut plan = plan;
    plan.loopback = !env_flag("PERIWIRE_BENCH_NO_LOOPBACK");
    let only = std::env::var("PERIWIRE_BENCH_ONLY").unwrap_or_default();
    let mut targets = vec![Target::periwire()?];
    if env_flag("PERIWIRE_BENCH_TLS") {
        // TLS next to plain: periwire over TLS first, so the ratio column is TLS ÷ plain.
        targets.insert(0, Target::periwire_tls()?);
    } else if only.is_empty() || only == "usbip" {
        targets.push(usbip_peer::start()?);
    }
    if only == "usbip" {
        targets.remove(0);
    }
    eprint!(
        "periwire-bench: {} rounds over {} targets ",
        plan.reps,
        targets.len()
    );
    let mut progress = |s: &str| {
        eprint!("{s}");
        let _ = std::io::stderr().flush();
    };
    let filter = std::env::var("PERIWIRE_BENCH_ROWS").unwrap_or_default();
    let rows: Vec<Scenario> = Scenario::all()
        .into_iter()
        .filter(|s| s.label(plan.bulk_len).contains(filter.as_str()))
        .collect();
    let results = bench::run(plan, &rows, &targets, &mut progress)?;
    eprintln!(" {:.0} s", started.elapsed().as_secs_f64());
    drop(targets);

    let mut extra = Vec::new();
    if !env_flag("PERIWIRE_BENCH_NO_GUEST") {
        for path in [GuestPath::Usbip, GuestPath::UsbipTap, GuestPath::Usbredir] {
            guest_rows(path, guest_plan, &filter, &mut extra)?;
        }
        if "guest passthrough".contains(filter.as_str()) {
            passthrough_rows(passthrough_plan, &mut extra)?;
        }
    }
    println!();
    println!(
        "periwire-bench — {} rounds, medians; MB/s = 10^6 bytes/s; total {:.0} s",
        plan.reps,
        started.elapsed().as_secs_f64()
    );
    print!("{}", bench::render(&results, &extra));
    Ok(())
}

/// The guest rows of one path to the disk.
fn guest_rows(
    path: GuestPath,
    guest_plan: GuestPlan,
    filter: &str,
    extra: &mut Vec<ExtraRow>,
) -> Result<(), Box<dyn std::error::Error>> {
    let (what, prefix) = match path {
        GuestPath::Usbip => ("vhci-hcd + usb-storage", "guest"),
        GuestPath::UsbipTap => ("vhci-hcd + usb-storage, TAP network", "guest tap"),
        GuestPath::Usbredir => ("QEMU usb-redir on xHCI + usb-storage", "guest usb-redir"),
    };
    if !prefix.contains(filter) {
        return Ok(());
    }
    eprintln!("periwire-bench: {prefix} (QEMU TCG, {what})...");
    let dir = tempfile::tempdir()?;
    let peer_na = "n/a".to_owned();
    match guest::run(guest_plan, dir.path(), path) {
        Ok(g) => {
            let mb = |b: f64| format!("{:.1} MB/s", b / 1e6);
            let check = if g.written_ok {
                ""
            } else {
                " (IMAGE CHECK FAILED)"
            };
            let network = match path {
                GuestPath::Usbip => Some("through the same QEMU user-mode forward"),
                GuestPath::UsbipTap => Some("over the same TAP link in the bench's namespace"),
                GuestPath::Usbredir => None,
            };
            if let Some(network) = network {
                extra.push(ExtraRow {
                    ratio: String::new(),
                    label: format!("{prefix} ceiling: raw TCP guest → host"),
                    cells: vec![mb(g.raw_upload), String::new()],
                    note: format!(
                        "socat, 1 MiB writes, {} MiB, {network}",
                        guest_plan.upload_mib
                    ),
                });
            }
            extra.push(ExtraRow {
                ratio: String::new(),
                label: format!("{prefix}: sequential write, {} MiB", guest_plan.seq_mib),
                cells: vec![mb(g.write), peer_na.clone()],
                note: format!("dd bs=1M oflag=direct; peer has no mass storage{check}"),
            });
            extra.push(ExtraRow {
                ratio: String::new(),
                label: format!("{prefix}: sequential read, {} MiB", guest_plan.seq_mib),
                cells: vec![mb(g.read), peer_na.clone()],
                note: "dd bs=1M iflag=direct".into(),
            });
            extra.push(ExtraRow {
                ratio: String::new(),
                label: format!("{prefix}: 4 KiB random read"),
                cells: vec![format!("{:.0} IOPS", g.iops), peer_na],
                note: format!(
                    "ioping -D, {} requests; periwire's server was on CPU {:.1}% of the \
                     time the disk was attached",
                    g.random_requests,
                    100.0 * g.server_cpu.as_secs_f64() / g.attached.as_secs_f64()
                ),
            });
        }
        Err(why) => extra.push(ExtraRow {
            ratio: String::new(),
            label: format!("{prefix} rows"),
            cells: vec!["skipped".into(), peer_na],
            note: why,
        }),
    }
    Ok(())
}

/// The passthrough rows: one guest's stick read through periwire and through the kernel's
/// usbip-host (the second column), and directly.
fn passthrough_rows(
    plan: PassthroughPlan,
    extra: &mut Vec<ExtraRow>,
) -> Result<(), Box<dyn std::error::Error>> {
    eprintln!(
        "periwire-bench: guest passthrough (QEMU TCG, xHCI usb-storage stick; periwire vs \
         the kernel's usbip-host, {} rounds)...",
        plan.rounds
    );
    let dir = tempfile::tempdir()?;
    let label = format!("guest passthrough: sequential read, {} MiB", plan.mib);
    match passthrough::run(plan, dir.path()) {
        Ok(r) => {
            let (periwire, kernel, direct) = (
                bench::median(&r.periwire),
                bench::median(&r.kernel),
                bench::median(&r.direct),
            );
            // Each round's pair is adjacent in time, so its ratio is the least disturbed by
            // a machine whose load drifts over the run.
            let ratios: Vec<f64> = (r.periwire.iter().zip(&r.kernel))
                .map(|(p, k)| p / k.max(1.0))
                .collect();
            let rounds = |v: &[f64]| {
                v.iter()
                    .map(|b| format!("{:.0}", b / 1e6))
                    .collect::<Vec<_>>()
                    .join("/")
            };
            extra.push(ExtraRow {
                label,
                cells: vec![
                    format!("{:.1} MB/s", periwire / 1e6),
                    format!("{:.1} MB/s", kernel / 1e6),
                ],
                ratio: format!("{:.2}", bench::median(&ratios)),
                note: format!(
                    "second column: the kernel's usbip-host; both via usbip attach + \
                     vhci-hcd in one guest, dd bs=1M iflag=direct, alternating; ratio: \
                     median of the rounds' ({}); rounds periwire {} / kernel {} MB/s; \
                     periwire serve on the guest's one CPU {:.0}% of its reads",
                    ratios
                        .iter()
                        .map(|x| format!("{x:.2}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                    rounds(&r.periwire),
                    rounds(&r.kernel),
                    100.0 * bench::median(&r.periwire_cpu)
                ),
            });
            extra.push(ExtraRow {
                label: "guest passthrough ceiling: the stick read directly".into(),
                cells: vec![format!("{:.1} MB/s", direct / 1e6), String::new()],
                ratio: String::new(),
                note: format!(
                    "usb-storage on QEMU's xHCI, no USB/IP; rounds {} MB/s",
                    rounds(&r.direct)
                ),
            });
        }
        Err(why) => extra.push(ExtraRow {
            label: format!("{label} rows"),
            cells: vec!["skipped".into(), "n/a".into()],
            ratio: String::new(),
            note: why,
        }),
    }
    Ok(())
}
