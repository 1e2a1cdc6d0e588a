//! `periwire bind` and `unbind` end to end in a Linux guest: QEMU gives the guest a USB stick
//! and a keyboard on an xHCI controller; `periwire serve` starts with nothing to share, and
//! the guest's stock `usbip list -r` sees what `bind` shares at once, across a server restart,
//! and not after `unbind`. A stick bound by hardware id is still shared after it is unplugged
//! and plugged into another port (QEMU monitor `device_del` / `device_add`), under its new bus
//! id, within about a second. `list --local` and `status` show names and states, including
//! the client that attached the stick and the bytes it moved. `bind --force` takes a device
//! from its local driver at once, and `unbind` gives it back.

mod common;

use common::{
    prefixed_lines, xhci_stick_guest, Monitor, GUEST_USB_HELPERS, GUEST_WAIT_HELPERS, STEP,
};
use periwire_guest::Guest;

const STICK_IDS: &str = "46f4:0001";
const KEYBOARD_IDS: &str = "0627:0001";

/// Shell helpers of the scenario; every wait is bounded.
const HELPERS: &str = r#"
pw() { periwire --data-dir /tmp/pw "$@"; }
# listed BUSID: whether the stock usbip lists BUSID (its list in /tmp/remote).
listed() {
    timeout 20 usbip list -r 127.0.0.1 >/tmp/remote 2>&1 || return 1
    grep -q "^ *$1: " /tmp/remote
}
unlisted() {
    timeout 20 usbip list -r 127.0.0.1 >/tmp/remote 2>&1 || return 1
    ! grep -q "^ *$1: " /tmp/remote
}
answers() { timeout 20 usbip list -r 127.0.0.1 >/tmp/remote 2>&1; }
# show TAG: the last usbip list, each line prefixed with TAG.
show() { sed "s/^/$1 /" /tmp/remote; }
serve() {
    mkdir -p /tmp/pw
    periwire serve --data-dir /tmp/pw --listen 127.0.0.1:3240 -v >>/tmp/pw/serve.log 2>&1 &
    server=$!
    wait_until 60 "periwire serve to answer" answers
}
stop() {
    kill -TERM $server
    wait_until 60 "periwire serve to exit" exited $server
    status=0
    wait $server || status=$?
    [ $status = 0 ] || { echo "FAILED: serve exited $status"; cat /tmp/pw/serve.log; exit 1; }
}
# uptime_ms: the guest's uptime in milliseconds (centisecond resolution).
uptime_ms() { read -r _u _ </proc/uptime; echo $(( ${_u%.*} * 1000 + 10 * 10#${_u#*.} )); }
"#;

fn scenario() -> String {
    format!(
        r#"{GUEST_WAIT_HELPERS}{GUEST_USB_HELPERS}{HELPERS}
        wait_until 60 "the xHCI stick" usb_device {STICK_IDS}
        wait_until 60 "the xHCI keyboard" usb_device {KEYBOARD_IDS}
        stick=$(usb_device {STICK_IDS})
        kbd=$(usb_device {KEYBOARD_IDS})
        wait_until 60 "usb-storage on the stick" driver_is "$stick:1.0" usb-storage
        serve
        show EMPTY
        mark M-EMPTY stick=$stick kbd=$kbd

        # Bound by bus id: listed by the next usbip list, no wait.
        pw bind -b "$stick" | sed 's/^/BIND /'
        listed "$stick" || {{ echo "FAILED: not listed right after bind"; show NOW; exit 1; }}
        show BOUND
        pw list --local | sed 's/^/LOCAL /'
        pw list --local --json | sed 's/^/LJSON /'
        pw list -r 127.0.0.1 | sed 's/^/PWREMOTE /'
        mark M-BOUND

        # --force takes the keyboard from usbhid at bind time; unbind gives it back.
        wait_until 60 "usbhid on the keyboard" driver_is "$kbd:1.0" usbhid
        pw bind -b "$kbd" --force | sed 's/^/FORCE /'
        wait_until 30 "usbhid to let go of the forced keyboard" driver_is_not "$kbd:1.0" usbhid
        mark M-FORCED driver=$(driver "$kbd:1.0")
        pw unbind -b "$kbd" | sed 's/^/UNFORCE /'
        wait_until 60 "usbhid to bind the keyboard again" driver_is "$kbd:1.0" usbhid
        mark M-UNFORCED driver=$(driver "$kbd:1.0")

        # The binding is in the data directory: the next server shares it from the start.
        stop
        serve
        listed "$stick" || {{ echo "FAILED: not listed after a restart"; show NOW; exit 1; }}
        show RESTARTED
        mark M-RESTARTED

        # Attached by the stock client: status shows the client and what it moved.
        timeout 60 usbip attach -r 127.0.0.1 -b "$stick"
        wait_until 90 "the imported disk" disk_at vhci_hcd
        vdisk=$(disk_at vhci_hcd)
        dd if=/dev/$vdisk of=/dev/null bs=64k count=16 2>/dev/null
        pw status | sed 's/^/STATUS /'
        pw status --json | sed 's/^/SJSON /'
        pw list --local | sed 's/^/ALOCAL /'
        mark M-ATTACHED

        # Unbound while attached: withdrawn from the client, gone from the list.
        pw unbind -b "$stick" | sed 's/^/UNBIND /'
        unlisted "$stick" || {{ echo "FAILED: still listed after unbind"; show NOW; exit 1; }}
        show UNBOUND
        wait_until 60 "the vhci disk to go away" no_disk_at vhci_hcd
        wait_until 90 "usb-storage to bind the stick again" driver_is "$stick:1.0" usb-storage
        mark M-UNBOUND

        # Bound by hardware id: shared again, and after a move to another port.
        pw bind --hardware-id {STICK_IDS} | sed 's/^/HWBIND /'
        listed "$stick" || {{ echo "FAILED: not listed after bind --hardware-id"; show NOW; exit 1; }}
        show HWBOUND
        mark M-HWBOUND
        read -r _
        wait_until 60 "the stick to be unplugged" no_usb_device {STICK_IDS}
        wait_until 60 "the unplugged stick to leave the list" unlisted "$stick"
        show UNPLUGGED
        mark M-UNPLUGGED
        read -r _
        old=$stick
        wait_until 60 "the stick in its new port" usb_device {STICK_IDS}
        seen=$(uptime_ms)
        stick=$(usb_device {STICK_IDS})
        wait_until 60 "the moved stick to be listed" listed "$stick"
        shared=$(uptime_ms)
        show MOVED
        pw status | sed 's/^/MSTATUS /'
        mark M-MOVED old=$old new=$stick after_ms=$((shared - seen))
        stop
        mark M-STOPPED
        "#
    )
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

fn log(guest: &Guest) -> String {
    guest
        .transcript()
        .iter()
        .map(|l| l.text.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

fn expect(guest: &mut Guest, marker: &str) -> String {
    let line = guest.expect_line(marker, STEP);
    line.unwrap_or_else(|e| panic!("{e}\n--- transcript ---\n{}", log(guest)))
}

fn lines(guest: &Guest, tag: &str) -> String {
    prefixed_lines(guest.transcript(), &format!("{tag} ")).join("\n")
}

/// Whether a `usbip list -r` output lists `busid`.
fn lists(text: &str, busid: &str) -> bool {
    text.lines()
        .any(|l| l.trim_start().starts_with(&format!("{busid}: ")))
}

#[test]
fn bind_shares_at_once_survives_restart_unbind_withdraws_and_hardware_id_follows_the_device() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("stick.img");
    periwire_usb::storage::create_demo_image(&image, 16 * 1024 * 1024, &[("A.TXT", b"a\n")])
        .expect("image");
    let monitor_path = dir.path().join("monitor.sock");
    let config = xhci_stick_guest(
        scenario(),
        &image,
        &[
            "-device",
            "usb-storage,bus=xhci.0,drive=stick,id=stick0,port=1",
            "-device",
            "usb-kbd,bus=xhci.0,port=3",
        ],
    )
    .qemu_args(Monitor::qemu_args(&monitor_path));
    let mut guest = Guest::boot(config).expect("boot");

    let empty = expect(&mut guest, "M-EMPTY ");
    let stick = field(&empty, "stick").to_owned();
    let kbd = field(&empty, "kbd").to_owned();
    let listed = lines(&guest, "EMPTY");
    assert!(
        !lists(&listed, &stick) && !lists(&listed, &kbd),
        "a server with no config and no bindings lists nothing:\n{listed}"
    );

    expect(&mut guest, "M-BOUND");
    let bound = lines(&guest, "BOUND");
    assert!(lists(&bound, &stick), "bind -b lists the stick:\n{bound}");
    assert!(bound.contains(STICK_IDS), "{bound}");
    assert!(!lists(&bound, &kbd), "only what is bound:\n{bound}");
    // Names and states, aligned: the stick's row says shared, the keyboard's not shared.
    let local = lines(&guest, "LOCAL");
    let row = |busid: &str| {
        local
            .lines()
            .find(|l| l.starts_with(&format!("{busid} ")))
            .unwrap_or_else(|| panic!("no row {busid}:\n{local}"))
            .to_owned()
    };
    let header = local.lines().next().expect("header");
    let state_col = header.find("STATE").expect("STATE column");
    assert!(row(&stick).contains("QEMU USB HARDDRIVE"), "{local}");
    assert_eq!(
        row(&stick).get(state_col..state_col + 6),
        Some("shared"),
        "{local}"
    );
    assert!(row(&kbd).contains("QEMU USB Keyboard"), "{local}");
    assert_eq!(
        row(&kbd).get(state_col..state_col + 10),
        Some("not shared"),
        "{local}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&lines(&guest, "LJSON")).expect("list --local --json");
    let stick_json = json
        .as_array()
        .and_then(|a| a.iter().find(|d| d["busid"] == stick.as_str()))
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(stick_json["state"], "shared", "{stick_json}");
    assert_eq!(stick_json["shared_by"], "busid", "{stick_json}");
    assert_eq!(stick_json["class_name"], "Mass Storage", "{stick_json}");
    let pw_remote = lines(&guest, "PWREMOTE");
    assert!(
        pw_remote.contains(&stick) && pw_remote.contains("Mass Storage"),
        "periwire list -r names the class:\n{pw_remote}"
    );

    let forced = expect(&mut guest, "M-FORCED ");
    assert_ne!(
        field(&forced, "driver"),
        "usbhid",
        "bind --force takes the device: {forced}"
    );
    let unforced = expect(&mut guest, "M-UNFORCED ");
    assert_eq!(
        field(&unforced, "driver"),
        "usbhid",
        "unbind gives it back: {unforced}"
    );
    expect(&mut guest, "M-RESTARTED");
    let restarted = lines(&guest, "RESTARTED");
    assert!(
        lists(&restarted, &stick),
        "the binding survives a restart:\n{restarted}"
    );

    expect(&mut guest, "M-ATTACHED");
    let status: serde_json::Value =
        serde_json::from_str(&lines(&guest, "SJSON")).expect("status --json");
    let s = status
        .as_array()
        .and_then(|a| a.iter().find(|d| d["busid"] == stick.as_str()))
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(s["state"], "attached", "{s}");
    assert_eq!(s["kind"], "host", "{s}");
    assert!(
        s["client"]["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "the client's address: {s}"
    );
    assert!(
        s["client"]["bytes_in"].as_u64().unwrap_or(0) >= 1024 * 1024,
        "the 1 MiB read shows in the bytes in: {s}"
    );
    assert!(s["client"]["bytes_out"].as_u64().unwrap_or(0) > 0, "{s}");
    let alocal = lines(&guest, "ALOCAL");
    println!(
        "periwire status:\n{}\nperiwire list --local:\n{alocal}",
        lines(&guest, "STATUS")
    );
    assert!(
        alocal.lines().any(|l| l.starts_with(&format!("{stick} "))
            && l.contains("attached")
            && l.contains("127.0.0.1:")),
        "list --local shows the stick attached and to whom:\n{alocal}"
    );

    expect(&mut guest, "M-UNBOUND");
    let unbound = lines(&guest, "UNBOUND");
    assert!(!lists(&unbound, &stick), "unbind withdraws it:\n{unbound}");

    expect(&mut guest, "M-HWBOUND");
    assert!(lists(&lines(&guest, "HWBOUND"), &stick));

    // Unplugged, then plugged into another port of the same controller.
    let mut monitor = Monitor::connect(&monitor_path);
    assert_eq!(monitor.command("device_del stick0"), "", "device_del");
    guest.send_line("unplugged").expect("tell the guest");
    expect(&mut guest, "M-UNPLUGGED");
    monitor.plug_stick_again("stick", &image, 2);
    guest.send_line("plugged").expect("tell the guest");
    let moved = expect(&mut guest, "M-MOVED ");
    let new = field(&moved, "new");
    assert_ne!(new, stick, "another port, another bus id: {moved}");
    let list = lines(&guest, "MOVED");
    assert!(
        lists(&list, new) && !lists(&list, &stick),
        "bound by hardware id, the stick is shared at its new bus id {new}:\n{list}"
    );
    let after: u64 = field(&moved, "after_ms").parse().expect("ms");
    println!("hot-plug: shared {after} ms after the guest saw the device (TCG)");
    assert!(
        after <= 2000,
        "the moved stick is shared within about a second of appearing (TCG guest): {after} ms"
    );
    expect(&mut guest, "M-STOPPED");
    guest.wait_success(STEP).expect("scenario");
}
