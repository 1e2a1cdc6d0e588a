//! The benchmark's code paths with a few URBs each, so they do not rot. Only correctness is
//! asserted (statuses, byte counts, every row measured); never a timing.

#[path = "../benches/usbip_peer.rs"]
mod usbip_peer;

use periwire_bench::bench::{self, Outcome, Plan, Scenario};
use periwire_bench::client::{Connection, Stop, UrbSpec, ECONNRESET};
use periwire_bench::guest::{self, GuestPath, GuestPlan};
use periwire_bench::target::{Target, BUSIDS};
use periwire_usb::source_sink::{EP_INTERRUPT, EP_SINK, EP_SOURCE};

#[test]
fn every_row_runs_against_both_servers() {
    let targets = vec![Target::periwire().unwrap(), usbip_peer::start().unwrap()];
    let plan = Plan::smoke();
    let results = bench::run(plan, &Scenario::all(), &targets, &mut |_| {}).unwrap();
    let Stop::Count(per_run) = plan.stop else {
        panic!("smoke plan counts URBs")
    };
    for (scenario, outcomes) in &results.rows {
        for (t, outcome) in outcomes.iter().enumerate() {
            match outcome {
                Outcome::Measured(samples) => {
                    assert_eq!(samples.len(), plan.reps, "{scenario:?} on {t}");
                    assert!(samples.iter().all(|s| s.rate > 0.0), "{scenario:?} on {t}");
                    if matches!(scenario, Scenario::Control { .. }) {
                        assert!(samples
                            .iter()
                            .all(|s| s.latencies.len() == per_run as usize));
                    }
                }
                Outcome::NotApplicable(_) => assert!(
                    t == 1 && matches!(scenario, Scenario::BulkWithPendingInterrupt { .. }),
                    "only the peer's idle-interrupt rows are n/a: {scenario:?} on {t}"
                ),
                Outcome::Failed(e) => panic!("{scenario:?} on target {t} failed: {e}"),
            }
        }
    }
    // periwire's devices counted every byte: device 1 gets the warm-up (64 URBs each way),
    // three pure bulk rows and two mixed rows per direction and round; device 2 one mixed row.
    let urb = u64::from(plan.bulk_len);
    let reps = plan.reps as u64;
    let dev1 = (64 + reps * 5 * per_run) * urb;
    let dev2 = reps * per_run * urb;
    let h = &targets[0].handles;
    assert_eq!((h[0].bytes_sunk(), h[0].bytes_sourced()), (dev1, dev1));
    assert_eq!((h[1].bytes_sunk(), h[1].bytes_sourced()), (dev2, dev2));

    let table = bench::render(&results, &[]);
    for label in [
        "control GET_DESCRIPTOR, 32 in flight",
        "bulk IN  64 KiB, 16 in flight",
    ] {
        assert!(table.contains(label), "{label} in\n{table}");
    }
    assert!(table.contains("loopback TCP ceiling"), "{table}");
}

#[test]
fn client_checks_replies_and_parks_an_interrupt() {
    let target = Target::periwire().unwrap();
    let mut c = Connection::import(&target.addr, BUSIDS[0]).unwrap();
    c.park(&UrbSpec::bulk_in(EP_INTERRUPT, 8)).unwrap();
    let s = c
        .run(
            &UrbSpec::bulk_in(EP_SOURCE, 1000),
            3,
            Stop::Count(10),
            false,
        )
        .unwrap();
    assert_eq!((s.urbs, s.bytes), (10, 10_000));
    let s = c
        .run(&UrbSpec::bulk_out(EP_SINK, 512), 7, Stop::Count(20), true)
        .unwrap();
    assert_eq!((s.urbs, s.bytes, s.latencies.len()), (20, 10_240, 20));
    assert_eq!(c.unlink_parked().unwrap(), vec![ECONNRESET]);
    assert_eq!(target.handles[0].bytes_sunk(), 10_240);
    // A reply that does not match the URB is an error, not a number: a stall on an
    // endpoint the device does not have.
    assert!(c
        .run(&UrbSpec::bulk_in(0x8f, 8), 1, Stop::Count(1), false)
        .is_err());
}

#[test]
fn guest_disk_rows_run() {
    let r = guest_rows(GuestPath::Usbip);
    assert!(r.raw_upload > 0.0, "{r:?}");
}

#[test]
fn guest_disk_rows_run_over_usbredir() {
    guest_rows(GuestPath::Usbredir);
}

fn guest_rows(path: GuestPath) -> guest::GuestResult {
    // scripts/test installs the guest's tools; a missing one is a failure, never a skip.
    if let Some(why) = guest::missing_tools() {
        panic!("the guest rows cannot run: {why}");
    }
    let dir = tempfile::tempdir().unwrap();
    let r = guest::run(GuestPlan::smoke(), dir.path(), path).unwrap();
    assert!(
        r.written_ok,
        "the guest's sequential write reached the image"
    );
    assert!(r.random_requests > 0 && r.iops > 0.0, "{r:?}");
    assert!(r.read > 0.0 && r.write > 0.0, "{r:?}");
    assert!(r.server_cpu > std::time::Duration::ZERO, "{r:?}");
    r
}
