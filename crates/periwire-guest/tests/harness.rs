//! Proves the harness against the real Debian kernel under QEMU. These tests fail (never skip)
//! when QEMU or the kernel is missing: run `scripts/install-test-deps`.

use std::io::Read;
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use periwire_guest::{Error, Guest, GuestConfig, TapNetwork, TAP_HOST_ADDR};

/// Failure limit for one wait; boots take a few seconds, so this is never reached when
/// things work.
const LIMIT: Duration = Duration::from_secs(120);

fn report(name: &str, outcome: &periwire_guest::GuestOutcome) {
    eprintln!(
        "{name}: /init at {:?}, scenario at {:?}, ended at {:?}",
        outcome.init_at, outcome.scenario_at, outcome.ended_at
    );
}

#[test]
fn boots_loads_vhci_and_reports_its_status() {
    let started = Instant::now();
    let mut guest = Guest::boot(
        GuestConfig::new(
            r#"
            status=/sys/devices/platform/vhci_hcd.0/status
            wait_for "$status" 10
            cat "$status"
            mark STATUS-DONE
            read -r reply
            mark "GOT $reply"
            "#,
        )
        .modules(["vhci-hcd"]),
    )
    .unwrap();
    guest.expect_line("STATUS-DONE", LIMIT).unwrap();
    guest.send_line("hello guest").unwrap();
    assert_eq!(guest.expect_line("GOT ", LIMIT).unwrap(), "GOT hello guest");
    let outcome = guest.wait_success(LIMIT).unwrap();
    report("vhci status", &outcome);
    eprintln!("vhci status: whole test {:?}", started.elapsed());

    // `hub port sta spd dev sockfd local_busid`, then one row per port of the first
    // controller: as many high-speed ports ("hs") as super-speed ones ("ss";
    // CONFIG_USBIP_VHCI_HC_PORTS each, 15 in Debian's kernel), all free (status 4,
    // VDEV_ST_NULL).
    let text = outcome.transcript_text();
    let header = text
        .lines()
        .position(|l| l.starts_with("hub port sta spd dev"))
        .expect("status header");
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(header + 1)
        .take_while(|l| l.starts_with("hs ") || l.starts_with("ss "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let hs = rows.iter().filter(|r| r[0] == "hs").count();
    assert!(hs > 0 && rows.len() == 2 * hs, "{text}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.len(), 7, "{row:?}");
        assert_eq!(row[1], format!("{i:04}"));
        assert_eq!(row[2], "004", "port {i} not free: {row:?}");
    }
}

#[test]
fn nonzero_scenario_exit_is_reported() {
    let outcome = Guest::run(
        GuestConfig::new(
            r#"
            mark BEFORE
            false
            mark NOT-REACHED
            "#,
        )
        .timeout(LIMIT),
    )
    .unwrap();
    report("false", &outcome);
    assert_eq!(outcome.status, 1);
    assert!(!outcome.success());
    let text = outcome.transcript_text();
    assert!(text.contains("BEFORE"));
    assert!(!text.contains("NOT-REACHED"));

    let mut guest = Guest::boot(GuestConfig::new("exit 7")).unwrap();
    match guest.wait_success(LIMIT) {
        Err(Error::ScenarioFailed { status: 7, .. }) => {}
        other => panic!("expected ScenarioFailed(7), got {other:?}"),
    }
}

#[test]
fn guest_reaches_a_host_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    let server = std::thread::spawn(move || {
        // Two connections, one after the other: each guest connection is its own host
        // connection. Reading to the end proves the guest's close reaches the host; the guest's
        // `nc` ending after the host closes proves the reverse.
        for _ in 0..2 {
            let (mut conn, _) = listener.accept().unwrap();
            let mut text = String::new();
            conn.read_to_string(&mut text).unwrap();
            tx.send(text).unwrap();
        }
    });
    let mut guest = Guest::boot(
        GuestConfig::new(
            r#"
            echo "hello from the guest" | nc "$PERIWIRE_SERVER" "$PERIWIRE_PORT"
            mark SENT-1
            echo "second connection" | nc 10.0.2.100 3240
            mark SENT-2
            "#,
        )
        .server_port(port),
    )
    .unwrap();
    guest.expect_line("SENT-1", LIMIT).unwrap();
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), "hello from the guest\n");
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), "second connection\n");
    report("nc", &guest.wait_success(LIMIT).unwrap());
    server.join().unwrap();
}

#[test]
fn usbip_runs_in_the_guest() {
    let outcome = Guest::run(
        GuestConfig::new(
            r#"
            usbip version
            # Walks sysfs through libudev; prints nothing with no USB device.
            usbip list -l
            "#,
        )
        .modules(["vhci-hcd"])
        .timeout(LIMIT),
    )
    .unwrap();
    report("usbip version", &outcome);
    assert!(outcome.success(), "{}", outcome.transcript_text());
    let text = outcome.transcript_text();
    assert!(
        text.lines().any(|l| l.starts_with("usbip (usbip-utils")),
        "{text}"
    );
}

#[test]
fn device_class_modules_load_with_their_dependencies() {
    // The names tests use; the harness adds modules.dep dependencies and run-time companions
    // (hid-generic, sd_mod, the nls tables), and mounting vfat proves the latter are there.
    let outcome = Guest::run(
        GuestConfig::new(
            r#"
            for m in vhci_hcd usbhid hid_generic usb_storage sd_mod vfat nls_cp437 \
                     cdc_acm evdev btusb bluetooth xhci_pci loop; do
                test -d /sys/module/$m || { echo "module $m missing"; exit 1; }
            done
            dd if=/dev/zero of=/tmp/fat.img bs=1024 count=2048 2>/dev/null
            mkdosfs /tmp/fat.img >/dev/null
            mount -t vfat -o loop /tmp/fat.img /mnt
            echo hello >/mnt/hello.txt
            umount /mnt
            mark MODULES-OK
            "#,
        )
        .modules([
            "vhci-hcd",
            "usbhid",
            "usb-storage",
            "vfat",
            "cdc-acm",
            "evdev",
            "btusb",
            "xhci-pci",
            "loop",
        ])
        .timeout(LIMIT),
    )
    .unwrap();
    report("modules", &outcome);
    assert!(outcome.success(), "{}", outcome.transcript_text());
    assert!(outcome.transcript_text().contains("MODULES-OK"));
}

#[test]
fn kill_ends_a_guest_at_once_and_one_thread_may_run_two_guests() {
    let mut stuck = Guest::boot(GuestConfig::new("mark UP; sleep 600")).unwrap();
    // A second guest from the same thread while the first one runs (no deadlock on the
    // guest lock).
    let mut other = Guest::boot(GuestConfig::new("mark OTHER-UP")).unwrap();
    let t = Instant::now();
    stuck.expect_line("UP", LIMIT).unwrap();
    eprintln!("up {:?}", t.elapsed());
    let pid = stuck.pid().expect("the harness runs QEMU");
    stuck.kill().unwrap();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU {pid} still there"
    );
    match stuck.wait_exit(LIMIT) {
        Err(Error::NoExitStatus { .. }) => {}
        other => panic!("expected NoExitStatus after kill, got {other:?}"),
    }
    other.expect_line("OTHER-UP", LIMIT).unwrap();
    eprintln!("killed {:?}", t.elapsed());
    let o = other.wait_success(LIMIT).unwrap();
    eprintln!("other {:?} {:?}", t.elapsed(), o.ended_at);
}

/// Bytes the TAP test moves each way.
const TAP_BYTES: usize = 16 * 1024 * 1024;

/// `sha256sum` of `data`, computed by the host's coreutils.
fn host_sha256(data: &[u8]) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils)");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// A TAP network carries data both ways between the guest and listeners bound in its
/// namespace, intact; the guest reaches nothing outside the namespace: not a listener on
/// the host's own loopback, not another address.
#[test]
fn tap_network_carries_data_both_ways_and_nothing_leaves_its_namespace() {
    use std::io::Write;
    let net = TapNetwork::new().unwrap();
    let up = net.bind_tcp((TAP_HOST_ADDR, 5001).into()).unwrap();
    let down = net.bind_tcp((TAP_HOST_ADDR, 5002).into()).unwrap();
    // Outside the namespace: a listener on the host's loopback, at a port nothing in the
    // namespace listens on. The guest tries it at the link's host end and at the user-mode
    // network's host address.
    let outside = TcpListener::bind("127.0.0.1:0").unwrap();
    let outside_port = outside.local_addr().unwrap().port();
    // Pseudo-random bytes (xorshift), so a reordered or dropped segment changes the digest.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let sent: Vec<u8> = (0..TAP_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let sent_digest = host_sha256(&sent);
    // The connections' results come back on a channel, so a guest that never connects
    // fails the test (with its console) rather than hang it.
    let (tx, results) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut conn, _) = up.accept().unwrap();
        let mut received = Vec::new();
        conn.read_to_end(&mut received).unwrap();
        // Closed, so the guest's `nc` ends.
        drop(conn);
        tx.send(received).unwrap();
        let (mut conn, _) = down.accept().unwrap();
        conn.write_all(&sent).unwrap();
    });
    let started = Instant::now();
    let mut guest = Guest::boot(
        GuestConfig::new(format!(
            r#"
            mark ADDR $(ip -4 addr show dev eth0 | grep inet)
            dd if=/dev/urandom of=/tmp/up bs=1M count={mib} 2>/dev/null
            mark UP-SUM $(sha256sum </tmp/up)
            nc "$PERIWIRE_SERVER" 5001 </tmp/up
            nc "$PERIWIRE_SERVER" 5002 </dev/null >/tmp/down
            mark DOWN-SUM $(sha256sum </tmp/down)
            for target in "$PERIWIRE_SERVER" 10.0.2.2 192.0.2.1; do
                if timeout 20 nc -w 10 "$target" {outside_port} </dev/null; then
                    mark OUTSIDE reached "$target"
                else
                    mark OUTSIDE unreachable "$target"
                fi
            done
            "#,
            mib = TAP_BYTES >> 20,
        ))
        .tap_network(&net),
    )
    .unwrap();
    let addr = guest.expect_line("ADDR ", LIMIT).unwrap();
    assert!(addr.contains("10.77.0.2/24"), "the guest's address: {addr}");
    let up_sum = guest.expect_line("UP-SUM ", LIMIT).unwrap();
    let received = results
        .recv_timeout(LIMIT)
        .unwrap_or_else(|e| panic!("the guest's upload: {e}\n{}", guest.tail(40)));
    assert_eq!(received.len(), TAP_BYTES, "guest → host bytes");
    assert_eq!(
        up_sum.split_whitespace().nth(1),
        Some(host_sha256(&received).as_str()),
        "guest → host data arrives intact"
    );
    let down_sum = guest.expect_line("DOWN-SUM ", LIMIT).unwrap();
    assert_eq!(
        down_sum.split_whitespace().nth(1),
        Some(sent_digest.as_str()),
        "host → guest data arrives intact"
    );
    for target in ["10.77.0.1", "10.0.2.2", "192.0.2.1"] {
        assert_eq!(
            guest.expect_line("OUTSIDE ", LIMIT).unwrap(),
            format!("OUTSIDE unreachable {target}"),
            "the guest cannot reach port {outside_port} at {target}"
        );
    }
    report("tap", &guest.wait_success(LIMIT).unwrap());
    // Nothing reached the listener outside the namespace.
    outside.set_nonblocking(true).unwrap();
    assert_eq!(
        outside.accept().map(|(_, peer)| peer).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "no connection from the guest reached the host's loopback"
    );
    // And the namespace has no route beyond its link.
    let route = std::process::Command::new("ip")
        .args(["-n", net.name(), "route", "get", "192.0.2.1"])
        .output()
        .unwrap();
    assert!(
        !route.status.success(),
        "no route out of the namespace: {}",
        String::from_utf8_lossy(&route.stdout)
    );
    let name = net.name().to_owned();
    drop(guest);
    drop(net);
    assert!(
        !std::path::Path::new("/run/netns").join(&name).exists(),
        "the namespace {name} is deleted with the guest and the network"
    );
    eprintln!("tap: whole test {:?}", started.elapsed());
}
