//! periwire's virtual Bluetooth adapters against Linux BlueZ: two USB dongles exported over
//! USB/IP, bound by the guest kernel's `btusb`, brought up by the kernel's `hci_sync` and
//! driven with BlueZ's own tools (`btmgmt`, `l2ping`, `l2test`). The two adapters meet on
//! periwire's simulated radio.

mod common;

use common::{Server, STEP};
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

#[test]
fn btusb_binds_the_dongles_and_bluez_discovers_pings_and_moves_l2cap_data() {
    let server = Server::start(&config(), |_| {});
    let scenario = format!(
        r#"
        usbip attach -r "$PERIWIRE_SERVER" -b 1-1
        wait_for /sys/class/bluetooth/hci0 60
        usbip attach -r "$PERIWIRE_SERVER" -b 1-2
        wait_for /sys/class/bluetooth/hci1 60
        # The kernel offers a controller to mgmt once hci_sync has brought it up.
        wait_mgmt() {{
            _left=600
            until btmgmt --index "$1" info 2>/dev/null | grep -q "addr "; do
                _left=$((_left - 1))
                [ "$_left" -gt 0 ] || {{ echo "hci$1 never came up" >&2; return 1; }}
                usleep 100000
            done
        }}
        wait_mgmt 0
        wait_mgmt 1
        btmgmt --index 0 power on >/dev/null
        btmgmt --index 1 connectable on >/dev/null
        btmgmt --index 1 discov on >/dev/null || true
        btmgmt --index 1 power on >/dev/null
        btmgmt --index 0 info | sed 's/^/INFO0 /'
        btmgmt --index 0 find -b 2>&1 | sed 's/^/FIND /'
        mark FIND-DONE
        l2ping -i hci0 -c 3 {ADDRESS_B} 2>&1 | sed 's/^/PING /'
        mark PING-DONE
        l2test -r -i hci1 -P 4113 >/tmp/recv.log 2>&1 &
        receiver=$!
        while ! grep -q "Waiting for connection" /tmp/recv.log; do usleep 50000; done
        read -r t0 _ </proc/uptime
        l2test -s -i hci0 -P 4113 -b 600 -N 300 {ADDRESS_B} 2>&1 | sed 's/^/SEND /'
        # The receiver's child reads until the sender's close reaches it, then says so.
        while ! grep -q "Disconnect" /tmp/recv.log; do usleep 50000; done
        read -r t1 _ </proc/uptime
        kill $receiver || true
        sed 's/^/RECV /' /tmp/recv.log
        mark L2TEST-TIME $t0 $t1
        mark L2TEST-DONE
        "#
    );
    let mut guest = Guest::boot(
        GuestConfig::new(scenario)
            .modules(["vhci-hcd", "btusb"])
            .server_port(server.port),
    )
    .expect("boot");
    guest
        .expect_line("L2TEST-DONE", STEP * 2)
        .expect("scenario ran");
    let outcome = guest.wait_success(STEP).expect("scenario succeeds");
    let lines = |prefix: &str| -> Vec<String> {
        outcome
            .transcript
            .iter()
            .filter_map(|l| {
                l.text
                    .find(prefix)
                    .map(|p| l.text[p + prefix.len()..].to_owned())
            })
            .collect()
    };
    let text = |prefix: &str| lines(prefix).join("\n");

    let info = text("INFO0 ");
    assert!(
        info.contains(&format!("addr {ADDRESS_A}")),
        "btusb bound the dongle:\n{info}"
    );
    assert!(
        info.lines()
            .any(|l| l.contains("current settings:") && l.contains("powered")),
        "BlueZ powered the adapter on:\n{info}"
    );

    let find = text("FIND ");
    assert!(
        find.contains(&format!("dev_found: {ADDRESS_B} type BR/EDR")),
        "inquiry found the other adapter:\n{find}"
    );
    assert!(
        find.contains("name guest-b"),
        "remote name resolved:\n{find}"
    );
    assert!(
        find.contains("discovering off"),
        "discovery ran to its end:\n{find}"
    );

    let ping = text("PING ");
    assert!(
        ping.contains("3 sent, 3 received, 0% loss"),
        "l2ping:\n{ping}"
    );

    let recv = text("RECV ");
    assert!(
        !recv.contains("mismatch"),
        "l2test found corrupted frames:\n{recv}"
    );
    let received: u64 = lines("RECV ")
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
    assert_eq!(received, 300 * 600, "every frame arrived:\n{recv}");
    let times: Vec<f64> = lines("L2TEST-TIME ")
        .first()
        .expect("timing line")
        .split_whitespace()
        .map(|t| t.parse().expect("uptime"))
        .collect();
    println!(
        "L2CAP over BR/EDR between two dongles in one guest: {} bytes in {:.2} s = {:.1} kB/s",
        received,
        times[1] - times[0],
        received as f64 / 1000.0 / (times[1] - times[0])
    );
}
