//! Host USB passthrough end to end, all inside one Linux guest: QEMU gives the guest a USB
//! stick and a keyboard on an xHCI controller, periwire runs in that guest and exports both
//! by bus id, and the guest's own `usbip` attaches them through `vhci-hcd`. While imported,
//! a device is taken from its local kernel driver and works through periwire (files written
//! to the stick, keys typed on the keyboard through the QEMU monitor); on detach it is given
//! back. A device unplugged while imported (through the QEMU monitor) ends its session;
//! plugged back in, it can be imported again.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    key_presses_until_enter_released, prefixed_lines, sha256, usb_guest_qemu, xhci_stick_guest,
    KillOnDrop, Monitor, GUEST_INPUT_HELPERS, GUEST_USB_HELPERS, GUEST_WAIT_HELPERS, KEY_ENTER,
    STEP,
};
use periwire_guest::Guest;

/// QEMU's `usb-storage` and `usb-kbd`, as `VID:PID` in lowercase hex.
const STICK_IDS: &str = "46f4:0001";
const KEYBOARD_IDS: &str = "0627:0001";

const README_TEXT: &[u8] = b"periwire passthrough test file\n";

/// The keys the test types on the keyboard with the QEMU monitor's `sendkey`, and the Linux
/// key codes they arrive as (linux/input-event-codes.h: KEY_H, KEY_I, KEY_ENTER).
const TYPED_KEYS: [(&str, u16); 3] = [("h", 35), ("i", 23), ("ret", KEY_ENTER)];

/// Shell helpers of the scenario. Every wait is bounded and says what it waited for.
const HELPERS: &str = r#"
# keyboard_at PATTERN: the input device of a QEMU keyboard whose sysfs path contains PATTERN.
keyboard_at() {
    for i in /sys/class/input/input*; do
        [ -e "$i/name" ] && grep -q "QEMU USB Keyboard" "$i/name" || continue
        case "$(readlink -f "$i")" in *"$1"*) echo "${i##*/} $(cat "$i/name")"; return 0 ;; esac
    done
    return 1
}
no_keyboard_at() { ! keyboard_at "$1" >/dev/null; }
# keyboard_event PATTERN: the event device (/dev/input/eventN) of keyboard_at PATTERN.
keyboard_event() {
    _ke_input=$(keyboard_at "$1") || return 1
    for e in /sys/class/input/"${_ke_input%% *}"/event*; do
        [ -c "/dev/input/${e##*/}" ] && { echo "/dev/input/${e##*/}"; return 0; }
    done
    return 1
}
# vhci_port BUSID: the vhci port that imported BUSID from the local server.
vhci_port() {
    usbip port | awk -v want="usbip://127.0.0.1:3240/$1" '$1 == "Port" { p = $2 + 0 } $NF == want { print p; found = 1 } END { exit !found }'
}
no_vhci_port() { ! vhci_port "$1" >/dev/null; }
# usbip_ok: whether the server answers a device list (in /tmp/remote).
usbip_ok() { timeout 20 usbip list -r 127.0.0.1 >/tmp/remote 2>&1; }
# server_up: usbip_ok, but the scenario fails at once if periwire serve ($server) has exited
# (after its log is out: $logger ends with it).
server_up() {
    if exited "$server"; then
        wait "$logger" || true
        echo "FAILED: periwire serve exited" >&2
        exit 1
    fi
    usbip_ok
}
# find_stick: wait for the xHCI stick and its disk; sets $stick to its bus id.
find_stick() {
    wait_until 60 "the xHCI stick" usb_device "$STICK_IDS"
    stick=$(usb_device "$STICK_IDS")
    wait_until 60 "the stick's disk on xHCI" disk_at "/$stick:"
}
# serve BUSID...: start periwire serve exporting these host devices and wait until it answers;
# $server is its pid. Its log goes to the console as it is written (SERVE lines, so a failure
# or a hang shows it) and to /tmp/pw/serve.log; $logger, the loop copying it, ends with it.
serve() {
    mkdir -p /tmp/pw /mnt
    for b in "$@"; do printf '[[device]]\nkind = "host"\nbusid = "%s"\n\n' "$b"; done \
        >/tmp/pw/periwire.toml
    mkfifo /tmp/pw/log
    while IFS= read -r l || [ -n "$l" ]; do
        echo "SERVE $l"
        echo "$l" >>/tmp/pw/serve.log
    done </tmp/pw/log &
    logger=$!
    periwire serve --config /tmp/pw/periwire.toml --data-dir /tmp/pw \
        --listen 127.0.0.1:3240 -v >/tmp/pw/log 2>&1 &
    server=$!
    wait_until 60 "periwire serve to answer usbip list" server_up
}
# import_stick: attach $stick; it leaves usb-storage on xHCI and is a disk behind vhci, $vdisk
# (marked TAKEN).
import_stick() {
    timeout 60 usbip attach -r 127.0.0.1 -b "$stick"
    wait_until 90 "the imported disk behind vhci_hcd" disk_at vhci_hcd
    wait_until 60 "the xHCI disk to go away" no_disk_at "/$stick:"
    wait_until 60 "usb-storage to let go of the xHCI stick" \
        driver_is_not "$stick:1.0" usb-storage
    vdisk=$(disk_at vhci_hcd)
    mark TAKEN disk=$vdisk driver=$(driver "$stick:1.0") path=$(readlink -f /sys/block/$vdisk)
}
# release_stick: detach $stick; usb-storage binds the xHCI stick again and its disk, $xdisk,
# comes back.
release_stick() {
    port=$(vhci_port "$stick")
    timeout 60 usbip detach -p "$port"
    wait_until 60 "the vhci disk to go away" no_disk_at vhci_hcd
    wait_until 90 "usb-storage to bind the xHCI stick again" driver_is "$stick:1.0" usb-storage
    wait_until 90 "the xHCI disk to come back" disk_at "/$stick:"
    xdisk=$(disk_at "/$stick:")
}
# stop_server: check the server still answers (its list in AGAIN lines), stop it with SIGTERM
# and mark how it exited.
stop_server() {
    usbip_ok
    sed 's/^/AGAIN /' /tmp/remote
    kill -TERM $server
    wait_until 60 "periwire serve to exit on SIGTERM" exited $server
    status=0
    wait $server || status=$?
    wait $logger
    mark STOPPED status=$status
}
"#;

/// The scenario: find the xHCI devices, list them, serve them, import and release each.
fn scenario() -> String {
    format!(
        r#"{GUEST_WAIT_HELPERS}{GUEST_USB_HELPERS}{HELPERS}{GUEST_INPUT_HELPERS}
        STICK_IDS={STICK_IDS}
        find_stick
        wait_until 60 "the xHCI keyboard" usb_device {KEYBOARD_IDS}
        kbd=$(usb_device {KEYBOARD_IDS})
        wait_until 60 "the keyboard's input device on xHCI" keyboard_at "/$kbd:"
        d=/sys/bus/usb/devices
        # periwire opens the device through its usbfs node (devtmpfs makes it).
        node=$(printf /dev/bus/usb/%03d/%03d $(cat $d/$stick/busnum) $(cat $d/$stick/devnum))
        [ -c "$node" ] || {{ echo "FAILED: no usbfs node $node"; exit 1; }}
        mark ORIGINAL stick=$stick kbd=$kbd disk=$(disk_at "/$stick:") node=$node \
            stick-speed=$(cat $d/$stick/speed) kbd-speed=$(cat $d/$kbd/speed) \
            driver=$(driver "$stick:1.0")

        periwire list --local 2>&1 | sed 's/^/LOCAL /'
        periwire list --local --json | sed 's/^/JSON /'
        mark LISTED

        serve "$stick" "$kbd"
        sed 's/^/REMOTE /' /tmp/remote
        mark SERVING

        # The stick: imported, it leaves usb-storage on xHCI and is a disk behind vhci.
        import_stick
        mount -t vfat /dev/$vdisk /mnt
        mark README $(sha256sum /mnt/README.TXT)
        dd if=/dev/urandom of=/mnt/NEW.BIN bs=1k count=300 2>/dev/null
        mark NEW $(sha256sum /mnt/NEW.BIN)
        # Unmounting writes the file through periwire; the returned stick and the host
        # image are checked for it.
        umount /mnt
        usbip port | sed 's/^/PORT /'

        # Given back: usb-storage binds the xHCI stick again, with the file on it.
        release_stick
        mount -t vfat /dev/$xdisk /mnt
        mark RETURNED disk=$xdisk new=$(sha256sum /mnt/NEW.BIN)
        umount /mnt

        # The keyboard: imported, its input device moves from xHCI to vhci, then back.
        timeout 60 usbip attach -r 127.0.0.1 -b "$kbd"
        wait_until 90 "the imported keyboard's input device" keyboard_at vhci_hcd
        wait_until 60 "the xHCI keyboard's input device to go away" no_keyboard_at "/$kbd:"
        mark KBD-TAKEN $(keyboard_at vhci_hcd) driver=$(driver "$kbd:1.0")
        # Keys the test types (QEMU monitor) reach the vhci keyboard's event device: the
        # reports of its interrupt IN endpoint travel through periwire. It is open before
        # the test is told, so no event is lost.
        wait_until 60 "the imported keyboard's event device" keyboard_event vhci_hcd
        exec 3<"$(keyboard_event vhci_hcd)"
        stream_events 3 &
        streamer=$!
        mark KBD-READY event=$(keyboard_event vhci_hcd)
        read -r _
        kill $streamer
        wait_until 10 "the event reader to end" exited $streamer
        exec 3<&-
        port=$(vhci_port "$kbd")
        timeout 60 usbip detach -p "$port"
        wait_until 60 "the vhci keyboard to go away" no_keyboard_at vhci_hcd
        wait_until 90 "the xHCI keyboard's input device to come back" keyboard_at "/$kbd:"
        mark KBD-RETURNED $(keyboard_at "/$kbd:") driver=$(driver "$kbd:1.0")

        # Still serving both; SIGTERM stops it cleanly.
        stop_server
        "#
    )
}

/// The unplug scenario: the stick, imported, is unplugged (by the test, through the QEMU
/// monitor) and plugged back in; it is imported again once it is back.
fn unplug_scenario() -> String {
    format!(
        r#"{GUEST_WAIT_HELPERS}{GUEST_USB_HELPERS}{HELPERS}
        STICK_IDS={STICK_IDS}
        find_stick
        serve "$stick"
        mark SERVING
        import_stick
        mark IMPORTED stick=$stick disk=$vdisk port=$(vhci_port "$stick")
        # The test unplugs the stick now, and says so.
        read -r _
        wait_until 60 "the xHCI stick to be unplugged" no_usb_device "$STICK_IDS"
        # The disk is idle (no transfer in flight): periwire learns of the unplug from the
        # host's hot-plug events, not from a failing transfer, and ends the session at once.
        wait_until 60 "periwire to end the session of the unplugged stick" \
            grep -q "the device is gone; closing the connection" /tmp/pw/serve.log
        wait_until 60 "the vhci port of the unplugged stick to be freed" no_vhci_port "$stick"
        wait_until 60 "the vhci disk to go away" no_disk_at vhci_hcd
        server_up
        usbip port | sed 's/^/PORT /'
        sed 's/^/UNPLUGGED-LIST /' /tmp/remote
        mark GONE

        # The test plugs the stick back into the same port, and says so.
        read -r _
        old=$stick
        find_stick
        mark REPLUGGED stick=$stick driver=$(driver "$stick:1.0")
        [ "$stick" = "$old" ] || {{ echo "FAILED: the stick came back at $stick, not $old"; exit 1; }}
        import_stick
        mount -t vfat -o ro /dev/$vdisk /mnt
        mark README $(sha256sum /mnt/README.TXT)
        umount /mnt
        release_stick
        mark RETURNED disk=$xdisk driver=$(driver "$stick:1.0")
        stop_server
        "#
    )
}

/// The `key=value` word of a marker line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// Waits for `marker`; a failure shows periwire's log from the guest, not only the console
/// tail.
fn expect(guest: &mut Guest, marker: &str) -> String {
    let line = guest.expect_line(marker, STEP);
    logged(guest, line)
}

/// The value of a guest wait, or a failure that shows periwire's log from the guest.
fn logged<T>(guest: &Guest, result: periwire_guest::Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{e}\n--- periwire log ---\n{}", serve_log(guest)))
}

fn serve_log(guest: &Guest) -> String {
    prefixed_lines(guest.transcript(), "SERVE ").join("\n")
}

/// The lines a listing (`what`) printed for one device: its own line, the one starting with
/// `starts`, and, with `usbip list`, the `:` lines below it.
fn device_block<'a>(lines: &'a [String], what: &str, starts: &str) -> &'a [String] {
    let start = lines
        .iter()
        .position(|l| l.trim_start().starts_with(starts))
        .unwrap_or_else(|| panic!("no {starts:?} line in {what}:\n{}", lines.join("\n")));
    let len = lines[start + 1..]
        .iter()
        .take_while(|l| l.trim_start().starts_with(':'))
        .count();
    &lines[start..=start + len]
}

/// A 32 MiB FAT image in `dir` with README.TXT on it: the stick's drive.
fn stick_image(dir: &Path) -> PathBuf {
    let image = dir.join("stick.img");
    periwire_usb::storage::create_demo_image(
        &image,
        32 * 1024 * 1024,
        &[("README.TXT", README_TEXT)],
    )
    .expect("create FAT image");
    image
}

/// Waits for the marks of an import of the stick (`what`): its disk is behind vhci-hcd,
/// usb-storage no longer holds the xHCI stick, and README.TXT reads back intact.
fn expect_stick_taken(guest: &mut Guest, what: &str) {
    let taken = expect(guest, "TAKEN ");
    assert!(
        field(&taken, "path").contains("vhci_hcd"),
        "{what} is imported, a disk behind vhci_hcd: {taken}\n{}",
        serve_log(guest)
    );
    assert_ne!(
        field(&taken, "driver"),
        "usb-storage",
        "usb-storage no longer holds {what} on xHCI: {taken}"
    );
    let readme = expect(guest, "README ");
    assert!(
        readme.contains(&sha256(README_TEXT)),
        "README.TXT on {what} reads back intact through periwire: {readme}\n{}",
        serve_log(guest)
    );
}

/// Waits for the end of [`HELPERS`]' `stop_server`: `periwire serve` still exported `busids`
/// and exited 0 on SIGTERM, and the scenario succeeded.
fn expect_clean_stop(guest: &mut Guest, busids: &[&str]) {
    let stopped = expect(guest, "STOPPED ");
    let outcome = guest.wait_success(STEP);
    logged(guest, outcome);
    let again = prefixed_lines(guest.transcript(), "AGAIN ").join("\n");
    for busid in busids {
        assert!(
            again.contains(&format!("{busid}:")),
            "{busid} is exported again after its detach:\n{again}"
        );
    }
    assert_eq!(
        field(&stopped, "status"),
        "0",
        "periwire serve exits cleanly on SIGTERM:\n{}",
        serve_log(guest)
    );
}

#[test]
fn host_stick_and_keyboard_pass_through_and_return_to_their_kernel_drivers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = stick_image(dir.path());
    let monitor_path = dir.path().join("monitor.sock");
    // The monitor's sendkey goes to the first keyboard in QEMU's list of input handlers. A
    // usb-kbd puts itself first when it is created, but the PC machine's i8042 has a PS/2
    // keyboard too (which the guest does not use): without it, the usb-kbd is the only one.
    let config = xhci_stick_guest(
        scenario(),
        &image,
        &[
            "-machine",
            "i8042=off",
            "-device",
            "usb-storage,bus=xhci.0,drive=stick",
            "-device",
            "usb-kbd,bus=xhci.0",
        ],
    )
    .qemu_args(Monitor::qemu_args(&monitor_path))
    .modules(["evdev"]);
    let mut guest = Guest::boot(config).expect("boot");

    // The devices as the guest's kernel has them, and as `periwire list --local` does.
    let original = expect(&mut guest, "ORIGINAL ");
    let stick = field(&original, "stick").to_owned();
    let kbd = field(&original, "kbd").to_owned();
    assert_eq!(
        field(&original, "driver"),
        "usb-storage",
        "usb-storage binds the stick before periwire runs: {original}"
    );
    expect(&mut guest, "LISTED");
    let local = prefixed_lines(guest.transcript(), "LOCAL ");
    let local_text = local.join("\n");
    for (busid, ids, product) in [
        (&stick, STICK_IDS, "QEMU USB HARDDRIVE"),
        (&kbd, KEYBOARD_IDS, "QEMU USB Keyboard"),
    ] {
        let line = device_block(&local, "periwire list --local", &format!("{busid} "))[0].as_str();
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.get(1), Some(&ids), "{busid} is {ids}:\n{local_text}");
        assert!(
            line.contains(product),
            "{busid} is a {product}:\n{local_text}"
        );
    }
    assert!(
        !local_text.contains("1d6b:"),
        "root hubs are not listed:\n{local_text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&prefixed_lines(guest.transcript(), "JSON ").join("\n"))
            .unwrap_or_else(|e| panic!("periwire list --local --json: {e}\n{local_text}"));
    let devices = json.as_array().expect("a JSON array");
    for (busid, vendor, product, name) in [
        (&stick, "46f4", "0001", "QEMU USB HARDDRIVE"),
        (&kbd, "0627", "0001", "QEMU USB Keyboard"),
    ] {
        let device = devices
            .iter()
            .find(|d| d["busid"] == busid.as_str())
            .unwrap_or_else(|| panic!("{busid} in the JSON list: {json}"));
        assert_eq!(device["vendor_id"], vendor, "{device}");
        assert_eq!(device["product_id"], product, "{device}");
        assert_eq!(device["product"], name, "{device}");
        assert!(
            device["speed"].as_str().is_some_and(|s| !s.is_empty()),
            "{device}"
        );
    }

    // The stock tool sees both exported under their host bus ids.
    expect(&mut guest, "SERVING");
    let remote = prefixed_lines(guest.transcript(), "REMOTE ");
    for (busid, ids, class) in [
        (&stick, STICK_IDS, "(08/06/50)"),
        (&kbd, KEYBOARD_IDS, "(03/01/01)"),
    ] {
        let block = device_block(&remote, "usbip list -r", &format!("{busid}:"));
        let text = remote.join("\n");
        assert!(block[0].contains(&format!("({ids})")), "{busid}:\n{text}");
        assert!(
            block.iter().any(|l| l.contains(class)),
            "{busid} has an interface {class}:\n{text}"
        );
    }

    // Imported: the disk is behind vhci-hcd, usb-storage no longer holds the xHCI stick.
    expect_stick_taken(&mut guest, "the stick");
    let new = expect(&mut guest, "NEW ");
    let new_digest = new.split_whitespace().nth(1).expect("digest").to_owned();

    // Detached: the kernel has the stick again, with the new file on it.
    let returned = expect(&mut guest, "RETURNED ");
    assert_eq!(
        field(&returned, "new"),
        new_digest,
        "the file written through periwire is on the returned stick: {returned}"
    );

    let kbd_taken = expect(&mut guest, "KBD-TAKEN ");
    assert!(kbd_taken.contains("QEMU USB Keyboard"), "{kbd_taken}");
    assert_ne!(field(&kbd_taken, "driver"), "usbhid", "{kbd_taken}");

    // Keys typed on the QEMU keyboard while it is imported: QEMU reports them on the
    // keyboard's interrupt IN endpoint when it is polled, which only periwire does now (for
    // the vhci keyboard); they must come out of the vhci keyboard's event device, in order.
    expect(&mut guest, "KBD-READY ");
    let mut monitor = Monitor::connect(&monitor_path);
    for (key, _) in TYPED_KEYS {
        let answer = monitor.command(&format!("sendkey {key}"));
        assert_eq!(answer, "", "QEMU's sendkey {key}");
    }
    let presses = key_presses_until_enter_released(&mut guest);
    let presses = logged(&guest, presses);
    assert_eq!(
        presses,
        TYPED_KEYS.map(|(_, code)| code),
        "the keys typed on the passed-through keyboard arrive at the vhci keyboard as key \
         presses, in order:\n{}",
        serve_log(&guest)
    );
    guest.send_line("typed").expect("tell the guest");
    let kbd_returned = expect(&mut guest, "KBD-RETURNED ");
    assert_eq!(field(&kbd_returned, "driver"), "usbhid", "{kbd_returned}");

    expect_clean_stop(&mut guest, &[&stick, &kbd]);

    // On the host, the image holds what the guest wrote.
    let fs = fatfs::FileSystem::new(
        std::fs::File::open(&image).expect("image"),
        fatfs::FsOptions::new(),
    )
    .expect("FAT");
    let mut written = Vec::new();
    fs.root_dir()
        .open_file("NEW.BIN")
        .expect("NEW.BIN in the image")
        .read_to_end(&mut written)
        .expect("read NEW.BIN");
    assert_eq!(written.len(), 300 * 1024);
    assert_eq!(sha256(&written), new_digest, "the image holds the new file");
}

/// The stick, imported, is unplugged: periwire closes the session, the guest's vhci port is
/// freed and the server goes on. Plugged back into the same port, the stick is at the same bus
/// id and can be imported again (periwire opens the device found there at each import).
#[test]
fn host_stick_unplugged_while_imported_ends_its_session_and_is_imported_again_when_plugged_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = stick_image(dir.path());
    let monitor_path = dir.path().join("monitor.sock");
    // The stick's port is given, so that it can be plugged back into the same one (QEMU
    // would otherwise take the next free port, and the bus id would change).
    let config = xhci_stick_guest(
        unplug_scenario(),
        &image,
        &[
            "-device",
            "usb-storage,bus=xhci.0,drive=stick,id=stick0,port=1",
        ],
    )
    .qemu_args(Monitor::qemu_args(&monitor_path));
    let mut guest = Guest::boot(config).expect("boot");
    expect(&mut guest, "SERVING");
    let imported = expect(&mut guest, "IMPORTED ");
    let stick = field(&imported, "stick").to_owned();

    // Unplugged while imported: periwire ends the session (which frees the client's vhci
    // port) and goes on serving.
    let mut monitor = Monitor::connect(&monitor_path);
    let answer = monitor.command("device_del stick0");
    assert_eq!(answer, "", "QEMU's device_del stick0");
    guest.send_line("unplugged").expect("tell the guest");
    expect(&mut guest, "GONE");
    let log = serve_log(&guest);
    assert!(
        log.contains("the device is gone; closing the connection"),
        "periwire ends the session of the unplugged stick:\n{log}"
    );
    let ports = prefixed_lines(guest.transcript(), "PORT ").join("\n");
    assert!(
        !ports.contains(&format!("/{stick}")),
        "the vhci port of the unplugged stick is free:\n{ports}"
    );
    let listed = prefixed_lines(guest.transcript(), "UNPLUGGED-LIST ").join("\n");
    assert!(
        !listed.contains(&format!("{stick}:")),
        "the server's device list leaves out the unplugged stick:\n{listed}"
    );

    // Plugged back into the same port: QEMU deleted the drive with the device, so the
    // image comes back as a new drive.
    monitor.plug_stick_again("stick", &image, 1);
    guest.send_line("plugged").expect("tell the guest");
    let replugged = expect(&mut guest, "REPLUGGED ");
    assert_eq!(
        field(&replugged, "stick"),
        stick,
        "plugged back into the same port, the stick comes back at the same bus id: {replugged}"
    );
    assert_eq!(
        field(&replugged, "driver"),
        "usb-storage",
        "usb-storage binds the stick plugged back in: {replugged}"
    );

    // Imported again: the device found at the bus id now, with the file on it.
    expect_stick_taken(&mut guest, "the stick plugged back in");
    let returned = expect(&mut guest, "RETURNED ");
    assert_eq!(
        field(&returned, "driver"),
        "usb-storage",
        "detached, the stick goes back to usb-storage: {returned}"
    );
    expect_clean_stop(&mut guest, &[&stick]);
}

/// `periwire redirect`, with `usbredirect`'s command line, in the guest: it passes the guest's
/// xHCI stick to a second QEMU whose `usb-redir` listens on the host
/// (`-chardev socket,server=on`), reached through the guest's forward. That QEMU attaches the
/// device while usb-storage in the guest lets go of it; when `periwire redirect` is stopped,
/// that QEMU is told the device is gone (it leaves its bus) and usb-storage in the guest
/// gets the stick back.
#[test]
fn redirect_hands_a_host_stick_to_a_listening_qemu_usb_redir() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = stick_image(dir.path());
    // QEMU B: no guest at all, an xHCI with a usb-redir whose chardev listens on loopback.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let monitor_path = dir.path().join("usbguest-monitor.sock");
    let _usb_guest = KillOnDrop(
        usb_guest_qemu(&[])
            .arg("-chardev")
            .arg(format!(
                "socket,id=redir0,host=127.0.0.1,port={port},server=on,wait=off"
            ))
            .args(["-device", "usb-redir,chardev=redir0,bus=xhci.0,id=redir"])
            .args(Monitor::qemu_args(&monitor_path))
            .spawn()
            .expect("start the usb-guest QEMU"),
    );
    let deadline = Instant::now() + STEP;
    while !monitor_path.exists() {
        assert!(Instant::now() < deadline, "the usb-guest QEMU's monitor");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut monitor = Monitor::connect(&monitor_path);
    // `info usb` lists the usb-redir device on its port whether or not a peer is connected;
    // its QOM property `attached` says whether it is on the bus.
    let attached = |monitor: &mut Monitor| {
        monitor.command("qom-get /machine/peripheral/redir attached") == "true"
    };
    assert!(!attached(&mut monitor), "nothing attached yet");
    let usb_devices = |monitor: &mut Monitor, want: bool| {
        let deadline = Instant::now() + STEP;
        loop {
            if attached(monitor) == want {
                return monitor.command("info usb");
            }
            assert!(
                Instant::now() < deadline,
                "the usb-guest QEMU's usb-redir, waiting for attached={want}: {}",
                monitor.command("info usb")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    let scenario = format!(
        r#"{GUEST_WAIT_HELPERS}{GUEST_USB_HELPERS}{HELPERS}
        STICK_IDS={STICK_IDS}
        find_stick
        periwire redirect --device {STICK_IDS} --to 10.0.2.100:4000 -v >/tmp/redirect.log 2>&1 &
        redirect=$!
        wait_until 60 "usb-storage to let go of the stick" driver_is_not "$stick:1.0" usb-storage
        mark TAKEN stick=$stick speed=$(cat /sys/bus/usb/devices/$stick/speed)
        read -r _
        kill -TERM $redirect
        wait_until 60 "periwire redirect to exit on SIGTERM" exited $redirect
        status=0
        wait $redirect || status=$?
        sed 's/^/REDIRECT /' /tmp/redirect.log
        wait_until 90 "usb-storage to bind the stick again" driver_is "$stick:1.0" usb-storage
        mark RETURNED status=$status
        "#
    );
    let config = xhci_stick_guest(
        scenario,
        &image,
        &["-device", "usb-storage,bus=xhci.0,drive=stick"],
    )
    .forward(4000, port);
    let mut guest = Guest::boot(config).expect("boot");
    let taken = expect(&mut guest, "TAKEN ");
    let speed = field(&taken, "speed").to_owned();
    let info = usb_devices(&mut monitor, true);
    assert!(
        info.contains(&format!("Speed {speed} Mb/s")),
        "the usb-guest QEMU has the stick at its speed ({speed} Mb/s): {info}"
    );

    guest.send_line("stop").expect("console");
    usb_devices(&mut monitor, false);
    let returned = expect(&mut guest, "RETURNED ");
    assert_eq!(
        field(&returned, "status"),
        "0",
        "periwire redirect exits cleanly:\n{}",
        prefixed_lines(guest.transcript(), "REDIRECT ").join("\n")
    );
    guest.wait_success(STEP).expect("scenario succeeds");
}

/// QEMU's `usb-net` (CDC Ethernet, Netchip's IDs) and `usb-serial` (FTDI), as `VID:PID`.
const NET_IDS: &str = "0525:a4a2";
const SERIAL_IDS: &str = "0403:6001";

/// The line the test writes into the serial adapter's chardev, and the one the guest writes
/// back through the adapter.
const TO_GUEST_LINE: &str = "periwire-serial-to-guest";
const FROM_GUEST_LINE: &str = "periwire-serial-from-guest";

/// The queued-URB scenario: a network adapter, a serial adapter and the stick, all imported
/// through periwire. The network interface behind vhci pings QEMU's user-mode gateway (the
/// adapter's own netdev), the serial port carries a line each way to the test, and the disk
/// is reset (SCSI device reset: usb-storage's Bulk-Only reset and CLEAR_FEATURE(HALT) on both
/// bulk endpoints) while a read runs, then reads back what was written.
fn queued_scenario() -> String {
    format!(
        r#"{GUEST_WAIT_HELPERS}{GUEST_USB_HELPERS}{HELPERS}
        STICK_IDS={STICK_IDS}
        # net_at PATTERN: the network interface whose device's sysfs path contains PATTERN.
        net_at() {{
            for n in /sys/class/net/*; do
                case "$(readlink -f "$n/device" 2>/dev/null)" in *"$1"*) echo "${{n##*/}}"; return 0 ;; esac
            done
            return 1
        }}
        # tty_at PATTERN: the USB serial tty whose sysfs path contains PATTERN.
        tty_at() {{
            for t in /sys/bus/usb-serial/devices/*; do
                case "$(readlink -f "$t")" in *"$1"*) echo "${{t##*/}}"; return 0 ;; esac
            done
            return 1
        }}
        find_stick
        wait_until 60 "the usb-net adapter" usb_device {NET_IDS}
        net=$(usb_device {NET_IDS})
        wait_until 60 "the FTDI adapter" usb_device {SERIAL_IDS}
        ser=$(usb_device {SERIAL_IDS})
        serve "$stick" "$net" "$ser"
        mark SERVING

        # The network adapter: its bulk IN has many URBs queued by cdc_ether.
        timeout 60 usbip attach -r 127.0.0.1 -b "$net"
        wait_until 90 "the imported network interface" net_at vhci_hcd
        nif=$(net_at vhci_hcd)
        ip link set "$nif" up
        ip addr add 10.0.2.15/24 dev "$nif"
        ping -c 20 -s 1400 -W 10 10.0.2.2 >/tmp/ping 2>&1 || true
        sed 's/^/PING /' /tmp/ping
        mark NET if=$nif received=$(sed -n 's/.* \([0-9]*\) packets received.*/\1/p' /tmp/ping)

        # The serial adapter: a line from the test, one back.
        timeout 60 usbip attach -r 127.0.0.1 -b "$ser"
        wait_until 90 "the imported serial port" tty_at vhci_hcd
        tty=/dev/$(tty_at vhci_hcd)
        exec 4<>"$tty"
        stty -F "$tty" raw -echo 115200
        mark SERIAL-READY tty=$tty
        got=$(timeout 60 head -n 1 <&4)
        mark FROM-HOST line=$got
        printf '{FROM_GUEST_LINE}\n' >&4
        read -r _
        exec 4<&-

        # The stick: written, reset while a read runs, read back.
        import_stick
        mount -t vfat /dev/$vdisk /mnt
        dd if=/dev/urandom of=/mnt/NEW.BIN bs=1k count=2000 2>/dev/null
        mark NEW $(sha256sum /mnt/NEW.BIN)
        umount /mnt
        dd if=/dev/$vdisk of=/dev/null bs=64k 2>/dev/null &
        reader=$!
        sg_reset -d /dev/$vdisk
        mark RESET status=$?
        wait $reader
        mark READER status=$?
        echo 3 >/proc/sys/vm/drop_caches
        mount -t vfat /dev/$vdisk /mnt
        mark AFTER $(sha256sum /mnt/NEW.BIN)
        umount /mnt
        stop_server
        "#
    )
}

#[test]
fn host_network_serial_and_reset_stick_pass_through_with_queued_urbs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = stick_image(dir.path());
    let serial_path = dir.path().join("serial.sock");
    let config = xhci_stick_guest(
        queued_scenario(),
        &image,
        &[
            "-device",
            "usb-storage,bus=xhci.0,drive=stick",
            "-netdev",
            "user,id=usbnet,restrict=on",
            "-device",
            "usb-net,bus=xhci.0,netdev=usbnet",
            "-chardev",
            &format!(
                "socket,id=ftdi,path={},server=on,wait=off",
                serial_path.display()
            ),
            "-device",
            "usb-serial,bus=xhci.0,chardev=ftdi",
        ],
    )
    .modules(["usbnet", "cdc_ether", "usbserial", "ftdi_sio"]);
    let mut guest = Guest::boot(config).expect("boot");
    // QEMU plugs the FTDI adapter in only once its chardev has a peer: connect as soon as
    // QEMU listens.
    let started = Instant::now();
    let mut serial = loop {
        match std::os::unix::net::UnixStream::connect(&serial_path) {
            Ok(s) => break s,
            Err(e) if started.elapsed() > Duration::from_secs(60) => {
                panic!("QEMU's chardev for the FTDI adapter: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    expect(&mut guest, "SERVING");

    let net = expect(&mut guest, "NET ");
    let received: u32 = field(&net, "received").parse().unwrap_or(0);
    assert!(
        received >= 18,
        "pings of QEMU's gateway come back through the usb-net adapter behind vhci: {net}\n{}\n{}",
        prefixed_lines(guest.transcript(), "PING ").join("\n"),
        serve_log(&guest)
    );

    expect(&mut guest, "SERIAL-READY ");
    serial.set_read_timeout(Some(STEP)).expect("read timeout");
    use std::io::Write;
    serial
        .write_all(format!("{TO_GUEST_LINE}\n").as_bytes())
        .expect("write to the adapter");
    let from_host = expect(&mut guest, "FROM-HOST ");
    assert_eq!(
        field(&from_host, "line"),
        TO_GUEST_LINE,
        "bytes written into the FTDI adapter reach the tty behind vhci"
    );
    let mut got = Vec::new();
    let mut byte = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains(FROM_GUEST_LINE) {
        let n = serial.read(&mut byte).unwrap_or_else(|e| {
            panic!(
                "the guest's line through the adapter: {e}; got {:?}\n{}",
                String::from_utf8_lossy(&got),
                serve_log(&guest)
            )
        });
        assert!(n > 0, "the chardev closed");
        got.extend_from_slice(&byte[..n]);
    }
    guest.send_line("read").expect("tell the guest");

    let new = expect(&mut guest, "NEW ");
    let digest = new.split_whitespace().nth(1).expect("digest").to_owned();
    let reset = expect(&mut guest, "RESET ");
    assert_eq!(
        field(&reset, "status"),
        "0",
        "sg_reset -d succeeds: {reset}\n{}",
        serve_log(&guest)
    );
    let reader = expect(&mut guest, "READER ");
    assert_eq!(
        field(&reader, "status"),
        "0",
        "the read across the reset completes: {reader}"
    );
    let after = expect(&mut guest, "AFTER ");
    assert!(
        after.contains(&digest),
        "after the reset the disk reads back what was written ({digest}): {after}\n{}",
        serve_log(&guest)
    );
    expect_clean_stop(&mut guest, &[]);
}
