//! The comparison: which rows, in which order, and how the samples become the table.
//!
//! Every measurement of a row runs against every target back to back, and the whole set of
//! rows is repeated `reps` times, so that noise from the machine (other builds on two cores)
//! falls on all targets alike; the table shows medians.

use std::io;
use std::sync::Barrier;
use std::time::Duration;

use periwire_usb::source_sink::{EP_INTERRUPT, EP_SINK, EP_SOURCE};
use periwire_wire::usbip::Direction;

use crate::client::{Connection, RunStats, Stop, UrbSpec, ECONNRESET};
use crate::loopback::{Flow, Loopback};
use crate::target::{Target, BUSIDS};

/// How much to measure.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Rounds over every row and target.
    pub reps: usize,
    /// How long one measurement submits (or how many URBs).
    pub stop: Stop,
    /// Bytes per bulk URB.
    pub bulk_len: u32,
    /// Whether to measure the loopback ceiling (off only when profiling the servers).
    pub loopback: bool,
}

impl Plan {
    /// The full benchmark: 9 rounds of 0.25 s per measurement, 64 KiB bulk URBs. Many short
    /// rounds make the medians robust to bursts of load from the rest of the machine.
    pub fn full() -> Self {
        Self {
            reps: 9,
            stop: Stop::After(Duration::from_millis(250)),
            bulk_len: 64 * 1024,
            loopback: true,
        }
    }

    /// A few URBs per measurement: only proves that every code path works.
    pub fn smoke() -> Self {
        Self {
            reps: 2,
            stop: Stop::Count(40),
            bulk_len: 64 * 1024,
            loopback: true,
        }
    }

    fn loopback_time(&self) -> Duration {
        match self.stop {
            Stop::After(d) => d,
            Stop::Count(_) => Duration::from_millis(20),
        }
    }
}

/// One row of the URB part of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// GET_DESCRIPTOR(DEVICE) on EP0 with `depth` URBs in flight.
    Control {
        /// URBs in flight.
        depth: usize,
    },
    /// Bulk source (IN) or sink (OUT) with `depth` URBs in flight.
    Bulk {
        /// Direction.
        dir: Direction,
        /// URBs in flight.
        depth: usize,
    },
    /// As `Bulk`, while an interrupt IN URB stays pending on the same device.
    BulkWithPendingInterrupt {
        /// Direction.
        dir: Direction,
        /// URBs in flight.
        depth: usize,
    },
    /// As `Bulk`, while the second device, on another connection, runs the same load; the
    /// row shows the sum of both.
    BulkWithSecondDevice {
        /// Direction.
        dir: Direction,
        /// URBs in flight.
        depth: usize,
    },
}

impl Scenario {
    /// Every row, in table order.
    pub fn all() -> Vec<Scenario> {
        use Direction::{In, Out};
        let mut rows = vec![
            Scenario::Control { depth: 1 },
            Scenario::Control { depth: 32 },
        ];
        for dir in [Out, In] {
            for depth in [1, 4, 16] {
                rows.push(Scenario::Bulk { dir, depth });
            }
        }
        for dir in [Out, In] {
            rows.push(Scenario::BulkWithPendingInterrupt { dir, depth: 16 });
            rows.push(Scenario::BulkWithSecondDevice { dir, depth: 16 });
        }
        rows
    }

    /// The row's label in the table.
    pub fn label(&self, bulk_len: u32) -> String {
        let kib = bulk_len / 1024;
        let d = |dir: &Direction| match dir {
            Direction::Out => "OUT",
            Direction::In => "IN ",
        };
        match self {
            Scenario::Control { depth } => format!("control GET_DESCRIPTOR, {depth:>2} in flight"),
            Scenario::Bulk { dir, depth } => {
                format!("bulk {} {kib} KiB, {depth:>2} in flight", d(dir))
            }
            Scenario::BulkWithPendingInterrupt { dir, depth } => {
                format!("mixed: bulk {} {depth} + idle interrupt IN", d(dir))
            }
            Scenario::BulkWithSecondDevice { dir, depth } => {
                format!("mixed: bulk {} {depth} + 2nd device busy (sum)", d(dir))
            }
        }
    }

    fn spec(&self, bulk_len: u32) -> UrbSpec {
        match self {
            Scenario::Control { .. } => UrbSpec::get_device_descriptor(),
            Scenario::Bulk { dir, .. }
            | Scenario::BulkWithPendingInterrupt { dir, .. }
            | Scenario::BulkWithSecondDevice { dir, .. } => match dir {
                Direction::Out => UrbSpec::bulk_out(EP_SINK, bulk_len),
                Direction::In => UrbSpec::bulk_in(EP_SOURCE, bulk_len),
            },
        }
    }

    fn depth(&self) -> usize {
        match *self {
            Scenario::Control { depth }
            | Scenario::Bulk { depth, .. }
            | Scenario::BulkWithPendingInterrupt { depth, .. }
            | Scenario::BulkWithSecondDevice { depth, .. } => depth,
        }
    }

    fn is_control(&self) -> bool {
        matches!(self, Scenario::Control { .. })
    }

    /// The pure-bulk row a mixed row is held against.
    fn baseline(&self) -> Option<Scenario> {
        match *self {
            Scenario::BulkWithPendingInterrupt { dir, depth }
            | Scenario::BulkWithSecondDevice { dir, depth } => Some(Scenario::Bulk { dir, depth }),
            _ => None,
        }
    }

    fn flow(&self) -> Option<Flow> {
        match self {
            Scenario::Control { .. } => None,
            Scenario::Bulk { dir, .. }
            | Scenario::BulkWithPendingInterrupt { dir, .. }
            | Scenario::BulkWithSecondDevice { dir, .. } => Some(match dir {
                Direction::Out => Flow::Upload,
                Direction::In => Flow::Download,
            }),
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// URBs per second (control rows) or payload bytes per second (bulk rows).
    pub rate: f64,
    /// Every URB's submit-to-reply time (control rows only).
    pub latencies: Vec<Duration>,
    /// CPU time the server's threads spent per URB.
    pub server_cpu_per_urb: Duration,
}

/// What one target did on one row.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The samples, one per round.
    Measured(Vec<Sample>),
    /// The target cannot do this row, and why.
    NotApplicable(String),
    /// The row failed (a wrong status or length, a dropped connection).
    Failed(String),
}

/// Everything measured.
#[derive(Debug, Clone)]
pub struct Results {
    /// The plan that was run.
    pub plan: Plan,
    /// Target names, in column order.
    pub targets: Vec<String>,
    /// Per row, per target.
    pub rows: Vec<(Scenario, Vec<Outcome>)>,
    /// Loopback TCP bytes per second, per round.
    pub upload: Vec<f64>,
    /// Loopback TCP bytes per second, per round.
    pub download: Vec<f64>,
}

impl Results {
    /// The outcome of `scenario` on target `t`.
    pub fn outcome(&self, scenario: Scenario, t: usize) -> Option<&Outcome> {
        self.rows
            .iter()
            .find(|(s, _)| *s == scenario)
            .map(|(_, o)| &o[t])
    }
}

/// A target's two imported devices.
struct Session {
    conns: [Connection; 2],
}

impl Session {
    fn open(target: &Target) -> io::Result<Self> {
        Ok(Self {
            conns: [
                Connection::import_over(target.connect()?, BUSIDS[0])?,
                Connection::import_over(target.connect()?, BUSIDS[1])?,
            ],
        })
    }
}

fn measure(
    target: &Target,
    session: &mut Session,
    scenario: Scenario,
    plan: &Plan,
    progress: &mut dyn FnMut(&str),
) -> io::Result<Sample> {
    let spec = scenario.spec(plan.bulk_len);
    let depth = scenario.depth();
    let latencies = scenario.is_control();
    let cpu_before = target.cpu_time();
    let stats = match scenario {
        Scenario::Control { .. } | Scenario::Bulk { .. } => {
            session.conns[0].run(&spec, depth, plan.stop, latencies)?
        }
        Scenario::BulkWithPendingInterrupt { .. } => {
            let conn = &mut session.conns[0];
            conn.park(&UrbSpec::bulk_in(EP_INTERRUPT, 8))?;
            let stats = conn.run(&spec, depth, plan.stop, false)?;
            let statuses = conn.unlink_parked()?;
            if statuses != [ECONNRESET] {
                return Err(io::Error::other(format!(
                    "the idle interrupt IN did not stay pending (RET_UNLINK {statuses:?})"
                )));
            }
            stats
        }
        Scenario::BulkWithSecondDevice { .. } => {
            let [first, second] = &mut session.conns;
            let barrier = Barrier::new(2);
            let (a, b) = std::thread::scope(|s| {
                let other = s.spawn(|| {
                    barrier.wait();
                    second.run(&spec, depth, plan.stop, false)
                });
                barrier.wait();
                let mine = first.run(&spec, depth, plan.stop, false);
                let theirs = other
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("second client panicked")));
                (mine, theirs)
            });
            let (a, b) = (a?, b?);
            RunStats {
                urbs: a.urbs + b.urbs,
                bytes: a.bytes + b.bytes,
                elapsed: a.elapsed.max(b.elapsed),
                latencies: Vec::new(),
            }
        }
    };
    let server_cpu = target.cpu_time().saturating_sub(cpu_before);
    progress(".");
    Ok(Sample {
        server_cpu_per_urb: server_cpu / u32::try_from(stats.urbs.max(1)).unwrap_or(u32::MAX),
        rate: if scenario.is_control() {
            stats.urb_rate()
        } else {
            stats.byte_rate()
        },
        latencies: stats.latencies,
    })
}

/// Runs every row against every target, `plan.reps` rounds, with the loopback ceiling in
/// each round. `progress` gets a few characters as measurements finish.
pub fn run(
    plan: Plan,
    scenarios: &[Scenario],
    targets: &[Target],
    progress: &mut dyn FnMut(&str),
) -> io::Result<Results> {
    let loopback = Loopback::start()?;
    let mut sessions: Vec<Result<Session, String>> = targets
        .iter()
        .map(|t| Session::open(t).map_err(|e| format!("import failed: {e}")))
        .collect();
    let mut rows: Vec<(Scenario, Vec<Outcome>)> = scenarios
        .iter()
        .map(|s| {
            let outcomes = targets
                .iter()
                .zip(&sessions)
                .map(|(t, session)| match (s, &t.cannot_pend, session) {
                    (_, _, Err(e)) => Outcome::Failed(e.clone()),
                    (Scenario::BulkWithPendingInterrupt { .. }, Some(why), _) => {
                        Outcome::NotApplicable(why.clone())
                    }
                    _ => Outcome::Measured(Vec::new()),
                })
                .collect();
            (*s, outcomes)
        })
        .collect();

    // Warm up every target's paths (allocator, page faults, connection buffers).
    for session in sessions.iter_mut().flatten() {
        let warm = Stop::Count(64);
        let _ = session.conns[0].run(&UrbSpec::get_device_descriptor(), 8, warm, false);
        let _ = session.conns[0].run(&UrbSpec::bulk_out(EP_SINK, plan.bulk_len), 4, warm, false);
        let _ = session.conns[0].run(&UrbSpec::bulk_in(EP_SOURCE, plan.bulk_len), 4, warm, false);
    }
    let _ = loopback.measure(Flow::Upload, Duration::from_millis(20));

    let mut upload = Vec::new();
    let mut download = Vec::new();
    for _ in 0..plan.reps {
        if plan.loopback {
            upload.push(loopback.measure(Flow::Upload, plan.loopback_time())?);
            download.push(loopback.measure(Flow::Download, plan.loopback_time())?);
        }
        for (scenario, outcomes) in rows.iter_mut() {
            for (t, outcome) in outcomes.iter_mut().enumerate() {
                let Outcome::Measured(samples) = outcome else {
                    continue;
                };
                let Ok(session) = &mut sessions[t] else {
                    continue;
                };
                match measure(&targets[t], session, *scenario, &plan, progress) {
                    Ok(sample) => samples.push(sample),
                    Err(e) => {
                        *outcome = Outcome::Failed(e.to_string());
                        // A failed connection is useless for the rows that follow.
                        sessions[t] = Err(format!("connection lost after an error: {e}"));
                    }
                }
            }
        }
        progress("|");
    }
    Ok(Results {
        plan,
        targets: targets.iter().map(|t| t.name.clone()).collect(),
        rows,
        upload,
        download,
    })
}

/// The median of `v` (0 when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The `p`-th percentile (0..=100) of `v`, nearest rank.
pub fn percentile(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// A measured value, summarised for the table.
#[derive(Debug, Clone, Copy)]
struct Summary {
    rate: f64,
    cpu: Duration,
    p50: Duration,
    p99: Duration,
}

fn summarise(samples: &[Sample]) -> Summary {
    let rates: Vec<f64> = samples.iter().map(|s| s.rate).collect();
    let mut lat: Vec<Duration> = samples.iter().flat_map(|s| s.latencies.clone()).collect();
    let cpus: Vec<f64> = samples
        .iter()
        .map(|s| s.server_cpu_per_urb.as_secs_f64())
        .collect();
    Summary {
        rate: median(&rates),
        cpu: Duration::from_secs_f64(median(&cpus)),
        p50: percentile(&mut lat, 50.0),
        p99: percentile(&mut lat, 99.0),
    }
}

fn mbps(bytes_per_s: f64) -> String {
    format!("{:.0} MB/s", bytes_per_s / 1e6)
}

fn kurbs(urbs_per_s: f64) -> String {
    format!("{:.1} k URB/s", urbs_per_s / 1e3)
}

fn micros(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

/// Extra rows measured elsewhere (the guest disk), already formatted per column.
#[derive(Debug, Clone)]
pub struct ExtraRow {
    /// Row label.
    pub label: String,
    /// One cell per target.
    pub cells: Vec<String>,
    /// The ratio column (first cell ÷ second), if the row has one.
    pub ratio: String,
    /// The last column.
    pub note: String,
}

/// Renders the table. The ratio column is periwire against the second target, written so
/// that above 1 always means periwire is better (for latencies: theirs ÷ ours). The CPU
/// column is the time the server's threads spent on CPU per URB, per target.
pub fn render(results: &Results, extra: &[ExtraRow]) -> String {
    type Cell = Result<Summary, (&'static str, String)>;
    const COLUMNS: usize = 6;
    let names = &results.targets;
    let first = names.first().cloned().unwrap_or_default();
    let peer = names.get(1).cloned().unwrap_or_default();
    let mut lines: Vec<[String; COLUMNS]> = vec![[
        "row".into(),
        first.clone(),
        peer.clone(),
        format!("{first} ÷ {peer}"),
        "server CPU µs/URB".into(),
        "note".into(),
    ]];
    let up = median(&results.upload);
    let down = median(&results.download);
    let summaries: Vec<(Scenario, Vec<Cell>)> = results
        .rows
        .iter()
        .map(|(s, outcomes)| {
            let sums = outcomes
                .iter()
                .map(|o| match o {
                    Outcome::Measured(v) if !v.is_empty() => Ok(summarise(v)),
                    Outcome::Measured(_) => Err(("FAILED", "no samples".to_owned())),
                    Outcome::NotApplicable(why) => Err(("n/a", why.clone())),
                    Outcome::Failed(e) => Err(("FAILED", e.clone())),
                })
                .collect();
            (*s, sums)
        })
        .collect();
    let find = |s: Scenario| -> Option<&Vec<Cell>> {
        summaries.iter().find(|(x, _)| *x == s).map(|(_, v)| v)
    };
    for (scenario, sums) in &summaries {
        let at = |i: usize| sums.get(i).and_then(|r| r.as_ref().ok());
        let cell = |i: usize, f: &dyn Fn(&Summary) -> String| match sums.get(i) {
            Some(Ok(s)) => f(s),
            Some(Err((short, _))) => (*short).to_owned(),
            None => String::new(),
        };
        let both = |f: &dyn Fn(&Summary, &Summary) -> String| match (at(0), at(1)) {
            (Some(a), Some(b)) => f(a, b),
            _ => "—".to_owned(),
        };
        let cpu = (0..sums.len())
            .map(|i| cell(i, &|s| format!("{:.1}", s.cpu.as_secs_f64() * 1e6)))
            .collect::<Vec<_>>()
            .join(" / ");
        // Why a cell is empty goes to the note, named by target.
        let mut notes: Vec<String> = Vec::new();
        let label = scenario.label(results.plan.bulk_len);
        if scenario.is_control() {
            lines.push([
                label,
                cell(0, &|s| kurbs(s.rate)),
                cell(1, &|s| kurbs(s.rate)),
                both(&|a, b| format!("{:.2}", a.rate / b.rate)),
                cpu,
                String::new(),
            ]);
            let lat = |s: &Summary| format!("{} / {} µs", micros(s.p50), micros(s.p99));
            let gain = |theirs: Duration, ours: Duration| {
                theirs.as_secs_f64() / ours.as_secs_f64().max(1e-9)
            };
            lines.push([
                "    latency p50 / p99".into(),
                cell(0, &lat),
                cell(1, &lat),
                both(&|a, b| format!("{:.2} / {:.2}", gain(b.p50, a.p50), gain(b.p99, a.p99))),
                String::new(),
                String::new(),
            ]);
        } else {
            let ceiling = match scenario.flow() {
                Some(Flow::Upload) => up,
                _ => down,
            };
            if let Some(s) = at(0) {
                if ceiling > 0.0 {
                    notes.push(format!("{:.0}% of loopback", 100.0 * s.rate / ceiling));
                }
                let base = scenario.baseline().and_then(find).and_then(|v| v.first());
                if let Some(Ok(b)) = base {
                    notes.push(format!("{:.2}× pure bulk", s.rate / b.rate));
                }
            }
            lines.push([
                label,
                cell(0, &|s| mbps(s.rate)),
                cell(1, &|s| mbps(s.rate)),
                both(&|a, b| format!("{:.2}", a.rate / b.rate)),
                cpu,
                String::new(),
            ]);
        }
        for (r, name) in sums.iter().zip(names) {
            if let Err((_, why)) = r {
                notes.push(format!("{name}: {why}"));
            }
        }
        let row = lines.len() - if scenario.is_control() { 2 } else { 1 };
        lines[row][COLUMNS - 1] = notes.join("; ");
    }
    let ceiling_row = |label: &str, rate: f64, note: &str| {
        [
            label.to_owned(),
            mbps(rate),
            String::new(),
            String::new(),
            String::new(),
            note.to_owned(),
        ]
    };
    lines.push(ceiling_row(
        "loopback TCP ceiling, client → server",
        up,
        "raw TCP: 1 MiB vectored writes, 1 MiB reads",
    ));
    lines.push(ceiling_row(
        "loopback TCP ceiling, server → client",
        down,
        "",
    ));
    for e in extra {
        lines.push([
            e.label.clone(),
            e.cells.first().cloned().unwrap_or_default(),
            e.cells.get(1).cloned().unwrap_or_default(),
            e.ratio.clone(),
            String::new(),
            e.note.clone(),
        ]);
    }
    let mut widths = [0usize; COLUMNS];
    for l in &lines {
        for (w, c) in widths.iter_mut().zip(l) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        let mut line = String::new();
        for (c, (cell, w)) in l.iter().zip(widths).enumerate() {
            let pad = " ".repeat(w - cell.chars().count());
            if c == 0 || c == COLUMNS - 1 {
                line.push_str(cell);
                line.push_str(&pad);
            } else {
                line.push_str(&pad);
                line.push_str(cell);
            }
            line.push_str("  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
        if i == 0 {
            let width = widths.iter().sum::<usize>() + 2 * (COLUMNS - 1);
            out.push_str(&"-".repeat(width.min(160)));
            out.push('\n');
        }
    }
    out
}
