//! periwire as a USB/IP client: in a Debian guest under QEMU, `periwire attach` imports the
//! host server's disk through the guest's `vhci-hcd`, `periwire port` and the stock
//! `usbip port` list it with its remote, `periwire detach` gives it back; refusals fail
//! with a message; `periwire attach --persist` attaches the disk again after the server
//! restarts.

mod common;

use std::time::Duration;

use common::{
    prefixed_lines, prepare_fat_disk, sha256, with_periwire, Server, ALL_DEVICES,
    GUEST_WAIT_HELPERS, README_TEXT, STEP,
};
use periwire_guest::{Guest, GuestConfig};

/// The remote and bus id of the disk, as the guest names it.
const DISK_URL: &str = "usbip://10.0.2.100:3240/1-3";

/// How long the test waits for a mark that comes after several bounded waits of the guest,
/// longer than they add up to (the guest's failure, with its output, comes first).
const LONG: Duration = Duration::from_secs(300);

/// Shell helpers of the scenarios (after [`GUEST_WAIT_HELPERS`]).
const HELPERS: &str = r#"
mkdir -p /mnt
# run TAG COMMAND...: run COMMAND (at most 60 s), print its output (stdout and stderr, also
# left in /tmp/run.out) as "TAG ..." lines, then "TAG-EXIT status=N".
run() {
    _run_tag=$1
    shift
    _run_status=0
    timeout 60 "$@" >/tmp/run.out 2>&1 || _run_status=$?
    sed "s/^/$_run_tag /" /tmp/run.out
    mark "$_run_tag-EXIT status=$_run_status"
}
# port_in FILE: the N of the last "... attached usbip://... on port N" line in FILE.
port_in() {
    _pi=$(sed -n 's/.*attached usbip:.* on port \([0-9][0-9]*\)$/\1/p' "$1" | tail -n 1)
    [ -n "$_pi" ] || { echo "FAILED: no port in $1" >&2; return 1; }
    echo "$_pi"
}
# readme TAG: mount the disk behind vhci_hcd read-only, mark "TAG <sha256 of README.TXT>",
# unmount.
readme() {
    mount -t vfat -o ro "/dev/$(disk_at vhci_hcd)" /mnt
    mark "$1" $(sha256sum /mnt/README.TXT)
    umount /mnt
}
"#;

/// A guest with periwire, vhci-hcd and the modules of a FAT USB disk, that reaches `server`.
fn guest_config(scenario: &str, server: &Server) -> GuestConfig {
    with_periwire(
        GuestConfig::new(format!("{GUEST_WAIT_HELPERS}{HELPERS}{scenario}"))
            .modules(["vhci-hcd", "usb-storage", "vfat"])
            .server_port(server.port)
            .timeout(Duration::from_secs(600)),
    )
}

/// What one `run TAG ...` of a scenario gave.
#[derive(Debug)]
struct Ran {
    status: i32,
    /// The command's output, its lines joined.
    output: String,
}

/// Waits for the end of `run TAG ...` and returns its status and output.
fn ran(guest: &mut Guest, tag: &str) -> Ran {
    let line = guest
        .expect_line(&format!("{tag}-EXIT status="), STEP)
        .unwrap_or_else(|e| panic!("{e}"));
    let status = line
        .rsplit('=')
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("status in {line:?}"));
    let output = prefixed_lines(guest.transcript(), &format!("{tag} ")).join("\n");
    Ran { status, output }
}

/// Waits for `run TAG ...` and checks that it succeeded.
fn succeeded(guest: &mut Guest, tag: &str, what: &str) -> String {
    let r = ran(guest, tag);
    assert_eq!(r.status, 0, "{what} succeeds:\n{}", r.output);
    r.output
}

/// Waits for `run TAG ...` and checks that it failed with a message.
fn refused(guest: &mut Guest, tag: &str, what: &str) -> String {
    let r = ran(guest, tag);
    assert_ne!(r.status, 0, "{what} fails:\n{}", r.output);
    // busybox timeout ends a command that outlives it with SIGTERM (status 143).
    assert_ne!(r.status, 143, "{what} gives up by itself:\n{}", r.output);
    assert!(!r.output.trim().is_empty(), "{what} says why");
    r.output
}

/// The port `periwire attach` (`verb`: "attached" or "re-attached") says it attached the
/// disk on.
fn attached_port(output: &str, verb: &str) -> u32 {
    let prefix = format!("periwire: {verb} {DISK_URL} on port ");
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix:?}N line in:\n{output}"))
}

/// Waits for the `TAG ...` mark of `readme TAG` and checks the file read back intact.
fn expect_readme(guest: &mut Guest, tag: &str) {
    expect_readme_within(guest, tag, STEP);
}

/// [`expect_readme`] for a mark that may take up to `timeout`.
fn expect_readme_within(guest: &mut Guest, tag: &str, timeout: Duration) {
    let line = guest
        .expect_line(&format!("{tag} "), timeout)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        line.contains(&sha256(README_TEXT)),
        "README.TXT reads back intact through the attached disk: {line}"
    );
}

/// Checks `periwire port` (text) lists the disk, and nothing else, on `port`: its line starts
/// `port N: usbip://HOST:PORT/BUSID (SPEED)` (more may follow, such as its local bus id).
fn check_periwire_port(listing: &str, port: u32) {
    let expected = format!("port {port}: {DISK_URL} (high)");
    let lines: Vec<&str> = listing.lines().map(str::trim).collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with(&expected),
        "periwire port lists the disk alone, as {expected:?}:\n{listing}"
    );
}

#[test]
fn attach_lists_the_port_with_its_remote_and_detach_releases_it() {
    let server = Server::start(ALL_DEVICES, prepare_fat_disk);
    let mut guest = Guest::boot(guest_config(
        r#"
        run ATTACH periwire attach -r "$PERIWIRE_SERVER" -b 1-3
        port=$(port_in /tmp/run.out)
        wait_until 90 "the disk behind vhci_hcd" disk_at vhci_hcd
        mark DISK disk=$(disk_at vhci_hcd) port=$port
        run PWPORT periwire port
        run PWJSON periwire port --json
        run USBIPPORT usbip port
        run RECORD cat /var/run/vhci_hcd/port$port
        readme README
        # The host checks its server has the disk imported.
        read -r _
        run DETACH periwire detach -p "$port"
        wait_until 60 "the disk to go away" no_disk_at vhci_hcd
        run GONEPORT periwire port
        run GONEJSON periwire port --json
        run GONEUSBIP usbip port
        mark DETACHED
        # The host checks its server released the disk.
        read -r _
        "#,
        &server,
    ))
    .expect("boot");

    let attach = succeeded(&mut guest, "ATTACH", "periwire attach -b 1-3");
    let port = attached_port(&attach, "attached");
    let disk = guest.expect_line("DISK ", STEP).expect("disk appeared");
    assert!(disk.contains(&format!("port={port}")), "{disk}");

    check_periwire_port(&succeeded(&mut guest, "PWPORT", "periwire port"), port);
    let json = succeeded(&mut guest, "PWJSON", "periwire port --json");
    let ports: serde_json::Value = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("periwire port --json is JSON ({e}):\n{json}"));
    let ports = ports.as_array().expect("periwire port --json is an array");
    assert_eq!(ports.len(), 1, "one port in use:\n{json}");
    for (key, value) in [
        ("port", serde_json::json!(port)),
        ("busid", serde_json::json!("1-3")),
        ("remote", serde_json::json!("10.0.2.100:3240")),
        ("speed", serde_json::json!("high")),
    ] {
        assert_eq!(
            ports[0][key], value,
            "{key} in periwire port --json:\n{json}"
        );
    }
    let usbip = succeeded(&mut guest, "USBIPPORT", "usbip port");
    assert!(
        usbip.contains(&format!("Port {port:02}: <Port in Use>"))
            && usbip.contains(&format!("-> {DISK_URL}")),
        "the stock usbip port shows the port periwire attached, with its remote:\n{usbip}"
    );
    let record = succeeded(&mut guest, "RECORD", "reading the port's record");
    assert_eq!(
        record.trim(),
        "10.0.2.100 3240 1-3",
        "/var/run/vhci_hcd/port{port} as usbip attach writes it"
    );
    expect_readme(&mut guest, "README");
    assert!(server.imported("1-3"), "the server has 1-3 imported");
    guest.send_line("checked").expect("console");

    succeeded(&mut guest, "DETACH", "periwire detach -p");
    let after = succeeded(&mut guest, "GONEPORT", "periwire port after detach");
    assert!(
        !after.contains("usbip://"),
        "no port in use after detach:\n{after}"
    );
    let after_json = succeeded(&mut guest, "GONEJSON", "periwire port --json after detach");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&after_json).ok(),
        Some(serde_json::json!([])),
        "periwire port --json after detach:\n{after_json}"
    );
    let usbip_after = succeeded(&mut guest, "GONEUSBIP", "usbip port after detach");
    assert!(
        !usbip_after.contains("<Port in Use>"),
        "usbip port after detach:\n{usbip_after}"
    );
    guest.expect_line("DETACHED", STEP).expect("detached");
    // The guest is still up (its connection would close with it): the detach released 1-3.
    server.cli(&["status", "--wait-released", "1-3", "--timeout", "60"]);
    assert!(!server.imported("1-3"), "the server released 1-3");
    guest.send_line("released").expect("console");
    guest.wait_success(STEP).expect("scenario succeeds");
}

#[test]
fn attach_refuses_a_missing_busy_or_unreachable_device_and_detach_an_unused_port() {
    let server = Server::start(ALL_DEVICES, prepare_fat_disk);
    // Nothing answers at the guest's 10.0.2.100:3299 (no forward): a server that is down.
    let mut guest = Guest::boot(guest_config(
        r#"
        run NODEV periwire attach -r "$PERIWIRE_SERVER" -b 1-9
        run ATTACH periwire attach -r "$PERIWIRE_SERVER" -b 1-3
        port=$(port_in /tmp/run.out)
        wait_until 90 "the disk behind vhci_hcd" disk_at vhci_hcd
        run BUSY periwire attach -r "$PERIWIRE_SERVER" -b 1-3
        run DOWN periwire attach -r "$PERIWIRE_SERVER:3299" -b 1-3
        run PWPORT periwire port
        readme README
        run UNUSED periwire detach -p $((port + 1))
        run DETACH periwire detach -p "$port"
        wait_until 60 "the disk to go away" no_disk_at vhci_hcd
        run AGAIN periwire detach -p "$port"
        mark REFUSALS-DONE
        "#,
        &server,
    ))
    .expect("boot");

    let nodev = refused(&mut guest, "NODEV", "attaching 1-9, which the server lacks");
    assert!(
        nodev.contains("1-9") || nodev.to_lowercase().contains("no such device"),
        "the refusal of 1-9 names it:\n{nodev}"
    );
    let attach = succeeded(&mut guest, "ATTACH", "periwire attach -b 1-3");
    let port = attached_port(&attach, "attached");
    let busy = refused(&mut guest, "BUSY", "attaching 1-3 a second time");
    assert!(
        busy.to_lowercase().contains("busy"),
        "the second attach of 1-3 is refused as busy:\n{busy}"
    );
    let down = refused(&mut guest, "DOWN", "attaching from a server that is down");
    assert!(
        down.contains("10.0.2.100:3299"),
        "the refusal names the server that is down:\n{down}"
    );
    check_periwire_port(
        &succeeded(&mut guest, "PWPORT", "periwire port after the refusals"),
        port,
    );
    expect_readme(&mut guest, "README");
    refused(&mut guest, "UNUSED", "detaching a port not in use");
    succeeded(&mut guest, "DETACH", "periwire detach -p");
    refused(&mut guest, "AGAIN", "detaching the same port again");
    guest
        .expect_line("REFUSALS-DONE", STEP)
        .expect("scenario ends");
    guest.wait_success(STEP).expect("scenario succeeds");
    assert!(!server.imported("1-3"), "the server released 1-3");
}

#[test]
fn persistent_attach_attaches_again_after_the_server_restarts() {
    let mut server = Server::start(ALL_DEVICES, prepare_fat_disk);
    let mut guest = Guest::boot(guest_config(
        r#"
        # periwire attach --persist, its output on the console as it comes (PERSIST lines) and
        # in /tmp/persist.log; $logger, the loop copying it, ends with it.
        : >/tmp/persist.log
        mkfifo /tmp/persist.fifo
        while IFS= read -r l || [ -n "$l" ]; do
            echo "PERSIST $l"
            echo "$l" >>/tmp/persist.log
        done </tmp/persist.fifo &
        logger=$!
        periwire attach --persist -v -r "$PERIWIRE_SERVER" -b 1-3 >/tmp/persist.fifo 2>&1 &
        attacher=$!
        # printed TEXT: whether periwire attach --persist printed TEXT; the scenario fails at
        # once if it has exited.
        printed() {
            if exited $attacher; then
                echo "FAILED: periwire attach --persist exited" >&2
                exit 1
            fi
            grep -q "$1" /tmp/persist.log
        }
        wait_until 90 "periwire attach --persist to attach" printed "attached usbip://"
        wait_until 90 "the disk behind vhci_hcd" disk_at vhci_hcd
        readme README1
        mark ATTACHED
        # The host stops its server.
        read -r _
        wait_until 60 "the disk to go away with the server" no_disk_at vhci_hcd
        if exited $attacher; then echo "FAILED: periwire attach --persist exited"; exit 1; fi
        mark DISK-GONE
        # The host starts a server on the same port.
        read -r _
        wait_until 120 "periwire attach --persist to re-attach" printed "re-attached usbip://"
        wait_until 90 "the disk behind vhci_hcd again" disk_at vhci_hcd
        readme README2
        mark BACK port=$(port_in /tmp/persist.log)
        run PWPORT periwire port
        kill -TERM $attacher
        wait_until 30 "periwire attach --persist to exit on SIGTERM" exited $attacher
        status=0
        wait $attacher || status=$?
        wait $logger
        mark STOPPED status=$status
        "#,
        &server,
    ))
    .expect("boot");

    expect_readme(&mut guest, "README1");
    guest.expect_line("ATTACHED", STEP).expect("attached");
    assert!(server.imported("1-3"), "the server has 1-3 imported");
    let log = prefixed_lines(guest.transcript(), "PERSIST ").join("\n");
    assert!(
        !log.contains(" lost ") && !log.contains("re-attach"),
        "while the disk stays attached, periwire attach --persist neither reports it lost nor \
         imports it again:\n{log}"
    );

    assert!(server.stop(), "the server stops cleanly on SIGTERM");
    guest.send_line("stopped").expect("console");
    guest
        .expect_line("DISK-GONE", LONG)
        .expect("the disk goes away with the server; periwire attach --persist stays");

    server.start_again();
    guest.send_line("started").expect("console");
    expect_readme_within(&mut guest, "README2", LONG);
    let back = guest.expect_line("BACK ", STEP).expect("attached again");
    assert!(server.imported("1-3"), "the new server has 1-3 imported");
    let port: u32 = back
        .rsplit("port=")
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("port in {back}"));
    check_periwire_port(
        &succeeded(&mut guest, "PWPORT", "periwire port after the re-attach"),
        port,
    );

    let stopped = guest.expect_line("STOPPED ", STEP).expect("attach stopped");
    let outcome = guest.wait_success(STEP).expect("scenario succeeds");
    let log = prefixed_lines(&outcome.transcript, "PERSIST ").join("\n");
    assert_eq!(
        stopped, "STOPPED status=0",
        "periwire attach --persist exits 0 on SIGTERM:\n{log}"
    );
    attached_port(&log, "attached");
    assert_eq!(
        attached_port(&log, "re-attached"),
        port,
        "re-attached on the port periwire port lists:\n{log}"
    );
    let (_, after) = log.split_once("re-attached").expect("re-attached line");
    assert!(
        !after.contains(" lost ") && !after.contains("re-attach"),
        "once re-attached, periwire attach --persist neither reports the disk lost nor imports \
         it again:\n{log}"
    );
}
