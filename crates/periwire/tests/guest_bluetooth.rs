//! periwire's virtual Bluetooth adapters against Linux BlueZ: two USB dongles exported over
//! USB/IP, bound by the guest kernel's `btusb`, brought up by the kernel's `hci_sync` and
//! driven with BlueZ's own tools (`btmgmt`, `l2ping`, `l2test`). The two adapters meet on
//! periwire's simulated radio.

mod common;

use common::{prefixed_lines, shared_libraries, stripped_periwire, Server, STEP};
use periwire_guest::{Guest, GuestConfig};

const ADDRESS_A: &str = "00:50:57:00:00:0A";
const ADDRESS_B: &str = "00:50:57:00:00:0B";

fn config() -> String {
    format!(
        r#"
[[adapter]]
name = "guest-a"
transport = "usb"
busid = "1-1"
address = "{ADDRESS_A}"

[[adapter]]
name = "guest-b"
transport = "usb"
busid = "1-2"
address = "{ADDRESS_B}"
"#
    )
}

/// Waits until mgmt offers controller index `$1`: the kernel does so once `hci_sync` has
/// brought the controller up through the dongle.
const WAIT_MGMT: &str = r#"
wait_mgmt() {
    _left=600
    until btmgmt --index "$1" info 2>/dev/null | grep -q "addr "; do
        _left=$((_left - 1))
        [ "$_left" -gt 0 ] || { echo "hci$1 never came up" >&2; return 1; }
        usleep 100000
    done
}
"#;

const FRAMES: u64 = 300;
const FRAME_BYTES: u64 = 600;
/// l2test's receiver prints a line per 1200 bytes (two frames of this size).
const REPORT_BYTES: u64 = 1200;
const REPORTS: u64 = FRAMES * FRAME_BYTES / REPORT_BYTES;

#[test]
fn two_guests_with_btusb_dongles_discover_ping_and_move_l2cap_data() {
    let server = Server::start(&config(), |_| {});
    // Guest B: its adapter is connectable and discoverable, and an l2test receiver listens.
    let receiver = format!(
        r#"{WAIT_MGMT}
        usbip attach -r "$PERIWIRE_SERVER" -b 1-2
        wait_mgmt 0
        btmgmt --index 0 connectable on >/dev/null
        btmgmt --index 0 discov on >/dev/null
        btmgmt --index 0 power on >/dev/null
        btmgmt --index 0 info | sed 's/^/INFO /'
        l2test -r -i hci0 -P 4113 >/tmp/recv.log 2>&1 &
        while ! grep -q "Waiting for connection" /tmp/recv.log; do usleep 50000; done
        mark RECEIVER-READY
        while ! grep -q "Receiving" /tmp/recv.log; do usleep 20000; done
        read -r t0 _ </proc/uptime
        # l2test reports every {REPORT_BYTES} bytes; stop early if the channel drops.
        while [ "$(grep -c ' bytes in ' /tmp/recv.log)" -lt {REPORTS} ] && ! grep -q Disconnect /tmp/recv.log; do
            usleep 20000
        done
        read -r t1 _ </proc/uptime
        mark RECEIVED-ALL $t0 $t1
        # The sender closes once told to; the receiver's child then says so and exits.
        while ! grep -q "Disconnect" /tmp/recv.log; do usleep 50000; done
        sed 's/^/RECV /' /tmp/recv.log
        mark RECEIVER-DONE
        "#
    );
    let mut guest_b = Guest::boot(
        GuestConfig::new(receiver)
            .modules(["vhci-hcd", "btusb"])
            .server_port(server.port),
    )
    .expect("boot guest B");
    guest_b
        .expect_line("RECEIVER-READY", STEP)
        .expect("receiver ready");

    // Guest A: finds B by inquiry, pings it, sends it frames over an L2CAP channel. It keeps
    // the channel open until the host saw B receive everything: closing at once would let
    // the L2CAP Disconnect Request (sent at a higher priority by Linux) overtake the last
    // queued frames.
    let sender = format!(
        r#"{WAIT_MGMT}
        usbip attach -r "$PERIWIRE_SERVER" -b 1-1
        wait_mgmt 0
        btmgmt --index 0 power on >/dev/null
        btmgmt --index 0 info | sed 's/^/INFO /'
        btmgmt --index 0 find -b 2>&1 | sed 's/^/FIND /'
        l2ping -i hci0 -c 3 {ADDRESS_B} 2>&1 | sed 's/^/PING /'
        l2test -s -g 600000 -i hci0 -P 4113 -b {FRAME_BYTES} -N {FRAMES} {ADDRESS_B} >/tmp/send.log 2>&1 &
        sender=$!
        mark SENDING
        read -r _
        kill $sender
        sed 's/^/SEND /' /tmp/send.log
        "#
    );
    let mut guest_a = Guest::boot(
        GuestConfig::new(sender)
            .modules(["vhci-hcd", "btusb"])
            .server_port(server.port),
    )
    .expect("boot guest A");
    guest_a
        .expect_line("SENDING", STEP * 2)
        .expect("sender started");
    let received_all = guest_b
        .expect_line("RECEIVED-ALL", STEP)
        .expect("receiver done");
    guest_a.send_line("close").expect("console");
    let a = guest_a.wait_success(STEP).expect("sender succeeds");
    guest_b
        .expect_line("RECEIVER-DONE", STEP)
        .expect("receiver saw the channel close");
    let b = guest_b.wait_success(STEP).expect("receiver succeeds");

    let lines = |outcome: &periwire_guest::GuestOutcome, prefix: &str| -> Vec<String> {
        prefixed_lines(&outcome.transcript, prefix)
    };
    let text = |outcome, prefix| lines(outcome, prefix).join("\n");

    for (outcome, address) in [(&a, ADDRESS_A), (&b, ADDRESS_B)] {
        let info = text(outcome, "INFO ");
        assert!(
            info.contains(&format!("addr {address}")),
            "btusb bound the dongle:\n{info}"
        );
        assert!(
            info.lines()
                .any(|l| l.contains("current settings:") && l.contains("powered")),
            "BlueZ powered the adapter on:\n{info}"
        );
    }

    let find = text(&a, "FIND ");
    assert!(
        find.contains(&format!("dev_found: {ADDRESS_B} type BR/EDR")),
        "inquiry found the other guest's adapter:\n{find}"
    );
    assert!(
        find.contains("name guest-b"),
        "remote name resolved:\n{find}"
    );
    assert!(
        find.contains("discovering off"),
        "discovery ran to its end:\n{find}"
    );

    let ping = text(&a, "PING ");
    assert!(
        ping.contains("3 sent, 3 received, 0% loss"),
        "l2ping:\n{ping}"
    );

    // l2test numbers its frames and fills them with a pattern; the receiver checks both.
    let recv = text(&b, "RECV ");
    assert!(
        !recv.contains("mismatch"),
        "l2test found corrupted frames:\n{recv}"
    );
    let received: u64 = lines(&b, "RECV ")
        .iter()
        .filter_map(|l| {
            l.split(": ")
                .nth(1)?
                .split(" bytes in ")
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(
        received,
        FRAMES * FRAME_BYTES,
        "every frame arrived:\n{recv}"
    );
    let times: Vec<f64> = received_all
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().expect("uptime"))
        .collect();
    println!(
        "L2CAP over BR/EDR between two guests: {received} bytes received in {:.2} s = {:.1} kB/s",
        times[1] - times[0],
        received as f64 / 1000.0 / (times[1] - times[0])
    );
}

/// periwire running inside a Linux guest registers two adapters with that kernel through
/// `/dev/vhci`; BlueZ brings both up, pings one from the other across periwire's radio, and
/// pairs them (Secure Simple Pairing, Just Works) to a stored link key.
#[test]
fn vhci_adapters_come_up_in_the_local_kernel_ping_and_pair() {
    let scenario = format!(
        r#"{WAIT_MGMT}
        mkdir -p /tmp/pw
        cat >/tmp/pw/periwire.toml <<EOF
[[adapter]]
name = "vhci-a"
transport = "vhci"
address = "00:50:57:00:01:0A"

[[adapter]]
name = "vhci-b"
transport = "vhci"
address = "00:50:57:00:01:0B"
EOF
        periwire serve --config /tmp/pw/periwire.toml --data-dir /tmp/pw >/tmp/pw/log 2>&1 &
        wait_mgmt 0 && wait_mgmt 1 || {{ sed 's/^/SERVE /' /tmp/pw/log; exit 1; }}
        sed 's/^/SERVE /' /tmp/pw/log
        btmgmt --index 1 connectable on >/dev/null
        btmgmt --index 1 bondable on >/dev/null
        btmgmt --index 1 ssp on >/dev/null
        btmgmt --index 1 io-cap 3 >/dev/null
        btmgmt --index 1 power on >/dev/null
        btmgmt --index 0 bondable on >/dev/null
        btmgmt --index 0 ssp on >/dev/null
        btmgmt --index 0 power on >/dev/null
        btmgmt --index 0 info | sed 's/^/INFO /'
        btmgmt --index 1 info | sed 's/^/INFO /'
        # The two adapters start side by side: which one the kernel numbers hci1 varies.
        peer=$(btmgmt --index 1 info | sed -n 's/.*addr \([0-9A-F:]*\) .*/\1/p')
        echo "PEER $peer"
        l2ping -i hci0 -c 3 "$peer" 2>&1 | sed 's/^/PING /'
        # btmgmt stays until its timeout after pairing; 15 s bounds it under TCG.
        btmgmt --timeout 15 --index 0 pair -c 3 -t 0 "$peer" 2>&1 | sed 's/^/PAIR /'
        periwire adapters --data-dir /tmp/pw | sed 's/^/ADAPTERS /'
        mark VHCI-DONE
        "#
    );
    let mut config = GuestConfig::new(scenario).modules(["hci_vhci"]).file(
        "/usr/bin/periwire",
        0o755,
        stripped_periwire(),
    );
    for lib in shared_libraries(env!("CARGO_BIN_EXE_periwire")) {
        let bytes = std::fs::read(&lib).expect("library");
        config = config.file(lib, 0o755, bytes);
    }
    let mut guest = Guest::boot(config).expect("boot");
    guest.expect_line("VHCI-DONE", STEP).expect("scenario ran");
    let outcome = guest.wait_success(STEP).expect("scenario succeeds");
    let text = |prefix: &str| -> String { prefixed_lines(&outcome.transcript, prefix).join("\n") };
    let serve = text("SERVE ");
    assert!(
        serve.contains("is hci0 (vhci)") && serve.contains("is hci1 (vhci)"),
        "registered:\n{serve}"
    );
    let info = text("INFO ");
    for address in ["00:50:57:00:01:0A", "00:50:57:00:01:0B"] {
        assert!(
            info.contains(&format!("addr {address}")),
            "{address} in the kernel:\n{info}"
        );
    }
    assert_eq!(
        info.lines()
            .filter(|l| l.contains("current settings:") && l.contains("powered"))
            .count(),
        2,
        "both powered:\n{info}"
    );
    let ping = text("PING ");
    assert!(
        ping.contains("3 sent, 3 received, 0% loss"),
        "l2ping:\n{ping}"
    );
    let peer = text("PEER ");
    assert!(
        ["00:50:57:00:01:0A", "00:50:57:00:01:0B"].contains(&peer.as_str()),
        "hci1 is one of periwire's adapters: {peer:?}"
    );
    let pair = text("PAIR ");
    assert!(
        pair.contains(&format!("Paired with {peer}")),
        "BlueZ pairing (Secure Simple Pairing, Just Works):\n{pair}"
    );
    let adapters = text("ADAPTERS ");
    assert!(
        adapters.contains("00:50:57:00:01:0A  vhci-a"),
        "periwire adapters:\n{adapters}"
    );
}
