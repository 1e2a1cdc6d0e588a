//! periwire against a real Linux: a Debian kernel under QEMU attaches periwire's virtual
//! devices with the stock `usbip` tool and drives them with its own drivers (vhci-hcd,
//! usbhid, usb-storage, cdc-acm).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use common::{
    key_presses_until_enter_released, parse_event, prepare_fat_disk, sha256, Server, ALL_DEVICES,
    EV_KEY, EV_REL, GUEST_INPUT_HELPERS, README_TEXT, STEP,
};
use periwire_guest::{Guest, GuestConfig};

#[test]
fn usbip_list_shows_every_device_with_ids_and_classes() {
    let server = Server::start(ALL_DEVICES, prepare_fat_disk);
    let mut guest = Guest::boot(
        GuestConfig::new(
            r#"
            usbip list -r "$PERIWIRE_SERVER" > /tmp/list
            sed 's/^/LIST /' /tmp/list
            mark LIST-DONE
            "#,
        )
        .modules(["vhci-hcd"])
        .server_port(server.port),
    )
    .expect("boot");
    guest.expect_line("LIST-DONE", STEP).expect("list ran");
    guest.wait_success(STEP).expect("scenario succeeds");
    let listing: Vec<String> = guest
        .transcript()
        .iter()
        .filter_map(|l| l.text.find("LIST ").map(|p| l.text[p + 5..].to_owned()))
        .collect();
    let text = listing.join("\n");
    for (busid, ids, class) in [
        ("1-1", "1209:7700", "(03/01/01)"),
        ("1-2", "1209:7701", "(03/01/02)"),
        ("1-3", "1209:7702", "(08/06/50)"),
        ("1-4", "1209:7703", "(02/02/01)"),
    ] {
        let line = listing
            .iter()
            .position(|l| l.trim_start().starts_with(&format!("{busid}:")))
            .unwrap_or_else(|| panic!("{busid} missing from usbip list:\n{text}"));
        assert!(
            listing[line].contains(ids),
            "{busid} should be {ids}:\n{text}"
        );
        let block: Vec<&String> = listing[line + 1..]
            .iter()
            .take_while(|l| !l.trim_start().starts_with("1-"))
            .collect();
        assert!(
            block.iter().any(|l| l.contains(class)),
            "{busid} should have an interface {class}:\n{text}"
        );
    }
    assert!(
        listing[0..].iter().any(|l| l.contains("(0a/00/00)")),
        "CDC data interface:\n{text}"
    );
}

/// Keys the Linux input layer reports for "hello world\n" (linux/input-event-codes.h).
const HELLO_WORLD_KEYS: [u16; 12] = [35, 18, 38, 38, 24, 57, 17, 24, 19, 38, 32, 28];
const REL_X: u16 = 0;
const REL_Y: u16 = 1;
const BTN_LEFT: u16 = 0x110;

#[test]
fn keyboard_and_mouse_input_reach_the_guest_input_layer() {
    let server = Server::start(ALL_DEVICES, prepare_fat_disk);
    let scenario = format!(
        r#"{GUEST_INPUT_HELPERS}
        usbip attach -r "$PERIWIRE_SERVER" -b 1-1
        usbip attach -r "$PERIWIRE_SERVER" -b 1-2
        kbd=$(find_event "Virtual Keyboard")
        mouse=$(find_event "Virtual Mouse")
        exec 3<"$kbd"
        stream_events 3 &
        streamer=$!
        mark KBD-READY
        read -r _
        kill $streamer
        exec 4<"$mouse"
        stream_events 4 &
        streamer=$!
        mark MOUSE-READY
        read -r _
        kill $streamer
        mark INPUT-DONE
        "#
    );
    let mut guest = Guest::boot(
        GuestConfig::new(scenario)
            .modules(["vhci-hcd", "usbhid", "evdev"])
            .server_port(server.port),
    )
    .expect("boot");

    guest
        .expect_line("KBD-READY", STEP)
        .expect("keyboard attached");
    server.cli(&["input", "type", "hello world\n"]);
    let presses = key_presses_until_enter_released(&mut guest).expect("key events");
    assert_eq!(
        presses, HELLO_WORLD_KEYS,
        "typed text arrives as key presses, in order"
    );
    guest.send_line("next").expect("console");

    guest
        .expect_line("MOUSE-READY", STEP)
        .expect("mouse attached");
    server.cli(&["input", "--device", "mouse", "move", "25", "-7"]);
    server.cli(&["input", "click", "left"]);
    let (mut dx, mut dy, mut buttons) = (0, 0, Vec::new());
    loop {
        let ev = parse_event(&guest.expect_line("EV ", STEP).expect("mouse event"));
        match (ev.kind, ev.code) {
            (EV_REL, REL_X) => dx += ev.value,
            (EV_REL, REL_Y) => dy += ev.value,
            (EV_KEY, BTN_LEFT) => buttons.push(ev.value),
            _ => {}
        }
        if buttons == [1, 0] {
            break;
        }
    }
    assert_eq!((dx, dy), (25, -7), "relative movement arrives whole");
    guest.send_line("done").expect("console");
    guest
        .expect_line("INPUT-DONE", STEP)
        .expect("scenario ends");
    guest.wait_success(STEP).expect("scenario succeeds");
}

#[test]
fn storage_mounts_reads_writes_and_keeps_data_after_detach() {
    let mut server = Server::start(ALL_DEVICES, prepare_fat_disk);
    let mut guest = Guest::boot(
        GuestConfig::new(
            r#"
            usbip attach -r "$PERIWIRE_SERVER" -b 1-3
            wait_for /dev/sda 60
            mkdir -p /mnt
            mount -t vfat /dev/sda /mnt
            mark README $(sha256sum /mnt/README.TXT)
            dd if=/dev/urandom of=/tmp/new.bin bs=1k count=3000 2>/dev/null
            cp /tmp/new.bin /mnt/NEW.BIN
            sync
            umount /mnt
            mark NEW $(sha256sum /tmp/new.bin)
            echo 3 > /proc/sys/vm/drop_caches
            read -r t0 _ </proc/uptime
            dd if=/dev/sda of=/dev/null bs=1M 2>/dev/null
            read -r t1 _ </proc/uptime
            mark READ-SPEED $t0 $t1
            usbip detach -p 0
            mark DETACHED
            "#,
        )
        .modules(["vhci-hcd", "usb-storage", "sd_mod", "vfat"])
        .server_port(server.port),
    )
    .expect("boot");
    let readme = guest.expect_line("README ", STEP).expect("README checksum");
    assert!(
        readme.contains(&sha256(README_TEXT)),
        "the file on the disk reads back intact: {readme}"
    );
    let new = guest.expect_line("NEW ", STEP).expect("new file checksum");
    let speed = guest.expect_line("READ-SPEED ", STEP).expect("dd read");
    let times: Vec<f64> = speed
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().expect("uptime"))
        .collect();
    let seconds = times[1] - times[0];
    println!(
        "guest sequential read of the whole 64 MiB disk: {:.1} MB/s ({seconds:.2} s)",
        64.0 * 1.048_576 / seconds
    );
    guest.expect_line("DETACHED", STEP).expect("detached");
    guest.wait_success(STEP).expect("scenario succeeds");

    // The device is released on detach, and the file is in the image on the host.
    let image = server.data_dir.join("disk.img");
    let written = read_fat_file(&image, "NEW.BIN");
    assert_eq!(written.len(), 3000 * 1024);
    assert!(
        new.contains(&sha256(&written)),
        "guest's file is intact in the image"
    );
    assert!(server.stop(), "server stops cleanly on SIGTERM");
    let fsck = std::process::Command::new("fsck.fat")
        .args(["-n"])
        .arg(&image)
        .output()
        .expect("fsck.fat");
    assert!(
        fsck.status.success(),
        "image is fsck-clean: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

fn read_fat_file(image: &Path, name: &str) -> Vec<u8> {
    let file = std::fs::File::open(image).expect("image");
    let fs = fatfs::FileSystem::new(file, fatfs::FsOptions::new()).expect("FAT");
    let mut f = fs.root_dir().open_file(name).expect("file in image");
    let mut data = Vec::new();
    f.read_to_end(&mut data).expect("read");
    data
}

#[test]
fn serial_port_carries_bytes_both_ways() {
    let server = Server::start(ALL_DEVICES, prepare_fat_disk);
    let serial_port = server
        .serial_ports
        .iter()
        .find(|(b, _)| b == "1-4")
        .map(|(_, p)| *p)
        .expect("serial port");
    let mut guest = Guest::boot(
        GuestConfig::new(
            r#"
            usbip attach -r "$PERIWIRE_SERVER" -b 1-4
            wait_for /dev/ttyACM0 60
            stty -F /dev/ttyACM0 raw -echo 115200
            exec 5<>/dev/ttyACM0
            mark SERIAL-READY $(stty -F /dev/ttyACM0 speed)
            read -r line <&5
            mark GOT "$line"
            echo "pong from the guest" >&5
            mark SENT
            read -r _
            "#,
        )
        .modules(["vhci-hcd", "cdc-acm"])
        .server_port(server.port),
    )
    .expect("boot");
    let ready = guest.expect_line("SERIAL-READY", STEP).expect("tty open");
    assert!(ready.ends_with("115200"), "line coding set: {ready}");
    let mut host = TcpStream::connect(("127.0.0.1", serial_port)).expect("serial host side");
    host.set_read_timeout(Some(STEP)).expect("timeout");
    host.write_all(b"ping from the host\n").expect("write");
    let got = guest.expect_line("GOT ", STEP).expect("guest read");
    assert_eq!(got, "GOT ping from the host");
    guest.expect_line("SENT", STEP).expect("guest wrote");
    let mut received = Vec::new();
    let mut buf = [0u8; 256];
    while !received.ends_with(b"\n") {
        let n = host.read(&mut buf).expect("read from serial");
        assert!(n > 0, "serial host side closed");
        received.extend_from_slice(&buf[..n]);
    }
    assert_eq!(received, b"pong from the guest\n");
    guest.send_line("bye").expect("console");
    guest.wait_success(STEP).expect("scenario succeeds");
}

#[test]
fn killed_guest_mid_write_leaves_a_consistent_image_and_the_server_running() {
    let mut server = Server::start(common::EXT4_DISK, common::prepare_ext4_disk);
    let modules = [
        "vhci-hcd",
        "usb-storage",
        "sd_mod",
        "ext4",
        "crc32c_generic",
    ];

    // First guest: a synced file, then a large write that is cut short by killing QEMU.
    // While it holds the disk, a second attach of the same device is refused as busy.
    let mut guest = Guest::boot(
        GuestConfig::new(
            r#"
            usbip attach -r "$PERIWIRE_SERVER" -b 1-1
            wait_for /dev/sda 60
            if usbip attach -r "$PERIWIRE_SERVER" -b 1-1 2>/tmp/err; then
                mark SECOND-ATTACH-ACCEPTED
            else
                mark SECOND-ATTACH-REFUSED $(cat /tmp/err)
            fi
            mkdir -p /mnt
            mount -t ext4 /dev/sda /mnt
            dd if=/dev/urandom of=/mnt/synced.bin bs=1k count=512 2>/dev/null
            sync
            mark SYNCED $(sha256sum /mnt/synced.bin)
            dd if=/dev/urandom of=/mnt/big.bin bs=1M count=48 conv=fsync 2>/dev/null &
            while [ "$(stat -c %s /mnt/big.bin 2>/dev/null || echo 0)" -lt 8000000 ]; do usleep 50000; done
            mark WRITING
            wait
            mark WRITE-FINISHED
            "#,
        )
        .modules(modules)
        .server_port(server.port),
    )
    .expect("boot");
    let refused = guest
        .expect_line("SECOND-ATTACH-", STEP)
        .expect("second attach");
    assert!(
        refused.starts_with("SECOND-ATTACH-REFUSED"),
        "busy device refused: {refused}"
    );
    let synced = guest.expect_line("SYNCED ", STEP).expect("synced");
    guest
        .expect_line("WRITING", STEP)
        .expect("large write under way");
    guest.kill().expect("kill QEMU");
    drop(guest);

    assert!(
        server.is_running(),
        "the server survives a client killed mid-write"
    );
    server.cli(&["status", "--wait-released", "1-1", "--timeout", "60"]);
    assert!(
        !server.imported("1-1"),
        "the device is released after its client died"
    );

    // Second guest: attaches again, mounts (the kernel replays the journal), checks the
    // synced file and unmounts cleanly.
    let mut guest = Guest::boot(
        GuestConfig::new(
            r#"
            usbip attach -r "$PERIWIRE_SERVER" -b 1-1
            wait_for /dev/sda 60
            mkdir -p /mnt
            mount -t ext4 /dev/sda /mnt
            mark SYNCED $(sha256sum /mnt/synced.bin)
            umount /mnt
            usbip detach -p 0
            mark DETACHED
            "#,
        )
        .modules(modules)
        .server_port(server.port),
    )
    .expect("boot");
    let again = guest
        .expect_line("SYNCED ", STEP)
        .expect("synced file after crash");
    assert_eq!(again, synced, "data synced before the crash survives it");
    guest.expect_line("DETACHED", STEP).expect("detached");
    guest.wait_success(STEP).expect("second guest succeeds");
    assert!(server.stop(), "server stops cleanly");

    common::assert_fsck_clean(&server.data_dir.join("ext4.img"));
}

/// Wireshark's USB/IP dissector reads a whole session (device list, import, enumeration,
/// storage I/O, detach) as captured on loopback and finds nothing malformed.
#[test]
fn tshark_dissects_a_whole_session_without_malformed_packets() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let server = Server::start(ALL_DEVICES, prepare_fat_disk);
    let dir = tempfile::tempdir().expect("temp dir");
    let capture = dir.path().join("usbip.pcapng");
    let mut tshark = Command::new("tshark")
        .args(["-i", "lo", "-f", &format!("tcp port {}", server.port), "-w"])
        .arg(&capture)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tshark");
    let stderr = tshark.stderr.take().expect("stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    // tshark says when the capture is running; nothing is sent before that.
    loop {
        let line = lines
            .next()
            .expect("tshark started")
            .expect("tshark stderr");
        if line.contains("Capturing on") {
            break;
        }
    }
    let mut guest = Guest::boot(
        GuestConfig::new(
            r#"
            usbip list -r "$PERIWIRE_SERVER" >/dev/null
            usbip attach -r "$PERIWIRE_SERVER" -b 1-3
            usbip attach -r "$PERIWIRE_SERVER" -b 1-1
            wait_for /dev/sda 60
            mkdir -p /mnt
            mount -t vfat /dev/sda /mnt
            cat /mnt/README.TXT >/dev/null
            echo captured >/mnt/CAPTURE.TXT
            umount /mnt
            usbip detach -p 0
            usbip detach -p 1
            mark SESSION-DONE
            "#,
        )
        .modules(["vhci-hcd", "usb-storage", "sd_mod", "vfat", "usbhid"])
        .server_port(server.port),
    )
    .expect("boot");
    guest.expect_line("SESSION-DONE", STEP).expect("session");
    guest.wait_success(STEP).expect("scenario succeeds");
    let _ = Command::new("kill")
        .args(["-INT", &tshark.id().to_string()])
        .status();
    assert!(
        tshark.wait().expect("tshark exits").success(),
        "tshark capture"
    );

    let count = |filter: &str| -> usize {
        let out = Command::new("tshark")
            .arg("-r")
            .arg(&capture)
            .args([
                "-d",
                &format!("tcp.port=={},usbip", server.port),
                "-Y",
                filter,
            ])
            .output()
            .expect("tshark -r");
        assert!(
            out.status.success(),
            "tshark -r failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert!(
        count("usbip.operation == 0x0005") >= 1,
        "OP_REP_DEVLIST dissected"
    );
    assert!(
        count("usbip.operation == 0x0003") >= 2,
        "OP_REP_IMPORT dissected"
    );
    assert!(count("usbip.urb == 1") > 20, "CMD_SUBMIT dissected");
    assert!(count("usbip.urb == 3") > 20, "RET_SUBMIT dissected");
    assert_eq!(
        count("_ws.malformed || _ws.expert.severity >= 0x00800000"),
        0,
        "no malformed or error-level packets"
    );
}
