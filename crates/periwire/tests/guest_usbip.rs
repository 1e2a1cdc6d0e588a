//! periwire against a real Linux: a Debian kernel under QEMU attaches periwire's virtual
//! devices with the stock `usbip` tool and drives them with its own drivers (vhci-hcd,
//! usbhid, usb-storage, cdc-acm).

mod common;

use common::{
    assert_fsck_clean, check_storage_io, check_written_image, kill_mid_write,
    mouse_moves_and_clicks, prepare_ext4_disk, prepare_fat_disk, serial_exchange,
    typed_text_arrives, Server, AFTER_CRASH_SCENARIO, ALL_DEVICES, EXT4_DISK, EXT4_MODULES,
    GUEST_INPUT_HELPERS, KEYBOARD_MOUSE_SCENARIO, SERIAL_ECHO_SCENARIO, STEP, STORAGE_IO_SCENARIO,
    WRITE_UNTIL_KILLED_SCENARIO,
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

#[test]
fn keyboard_and_mouse_input_reach_the_guest_input_layer() {
    let server = Server::start(ALL_DEVICES, prepare_fat_disk);
    let scenario = format!(
        r#"{GUEST_INPUT_HELPERS}
        usbip attach -r "$PERIWIRE_SERVER" -b 1-1
        usbip attach -r "$PERIWIRE_SERVER" -b 1-2
        {KEYBOARD_MOUSE_SCENARIO}
        "#
    );
    let mut guest = Guest::boot(
        GuestConfig::new(scenario)
            .modules(["vhci-hcd", "usbhid", "evdev"])
            .server_port(server.port),
    )
    .expect("boot");

    typed_text_arrives(&mut guest, &server);

    mouse_moves_and_clicks(&mut guest, &server);
    guest
        .expect_line("INPUT-DONE", STEP)
        .expect("scenario ends");
    guest.wait_success(STEP).expect("scenario succeeds");
}

#[test]
fn storage_mounts_reads_writes_and_keeps_data_after_detach() {
    let mut server = Server::start(ALL_DEVICES, prepare_fat_disk);
    let mut guest = Guest::boot(
        GuestConfig::new(format!(
            r#"
            usbip attach -r "$PERIWIRE_SERVER" -b 1-3
            wait_for /dev/sda 60
            {STORAGE_IO_SCENARIO}
            usbip detach -p 0
            mark DETACHED
            "#,
        ))
        .modules(["vhci-hcd", "usb-storage", "sd_mod", "vfat"])
        .server_port(server.port),
    )
    .expect("boot");
    let new = check_storage_io(&mut guest, " over USB/IP");
    guest.expect_line("DETACHED", STEP).expect("detached");
    guest.wait_success(STEP).expect("scenario succeeds");

    // The device is released on detach, and the file is in the image on the host.
    assert!(server.stop(), "server stops cleanly on SIGTERM");
    check_written_image(&server.data_dir.join("disk.img"), &new);
}

#[test]
fn serial_port_carries_bytes_both_ways() {
    let server = Server::start(ALL_DEVICES, prepare_fat_disk);
    let serial_port = server.serial_port("1-4");
    let mut guest = Guest::boot(
        GuestConfig::new(format!(
            r#"
            usbip attach -r "$PERIWIRE_SERVER" -b 1-4
            wait_for /dev/ttyACM0 60
            {SERIAL_ECHO_SCENARIO}
            read -r _
            "#,
        ))
        .modules(["vhci-hcd", "cdc-acm"])
        .server_port(server.port),
    )
    .expect("boot");
    serial_exchange(&mut guest, serial_port);
    guest.send_line("bye").expect("console");
    guest.wait_success(STEP).expect("scenario succeeds");
}

#[test]
fn killed_guest_mid_write_leaves_a_consistent_image_and_the_server_running() {
    let mut server = Server::start(EXT4_DISK, prepare_ext4_disk);
    let mut modules = vec!["vhci-hcd"];
    modules.extend(EXT4_MODULES);

    // First guest: a synced file, then a large write that is cut short by killing QEMU.
    // While it holds the disk, a second attach of the same device is refused as busy.
    let mut guest = Guest::boot(
        GuestConfig::new(format!(
            r#"
            usbip attach -r "$PERIWIRE_SERVER" -b 1-1
            wait_for /dev/sda 60
            if usbip attach -r "$PERIWIRE_SERVER" -b 1-1 2>/tmp/err; then
                mark SECOND-ATTACH-ACCEPTED
            else
                mark SECOND-ATTACH-REFUSED $(cat /tmp/err)
            fi
            {WRITE_UNTIL_KILLED_SCENARIO}
            "#,
        ))
        .modules(modules.clone())
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
    let synced = kill_mid_write(guest, &mut server, "1-1");

    // Second guest: attaches again, mounts (the kernel replays the journal), checks the
    // synced file and unmounts cleanly.
    let mut guest = Guest::boot(
        GuestConfig::new(format!(
            r#"
            usbip attach -r "$PERIWIRE_SERVER" -b 1-1
            wait_for /dev/sda 60
            {AFTER_CRASH_SCENARIO}
            usbip detach -p 0
            mark DETACHED
            "#,
        ))
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

    assert_fsck_clean(&server.data_dir.join("ext4.img"));
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
