//! periwire as the usb-host of QEMU's own `usb-redir` device: the guest has no usbip at all;
//! QEMU dials periwire's usbredir listener and presents the device on an emulated xHCI (or
//! EHCI) controller, where the guest's stock drivers (usb-storage, usbhid, cdc-acm) bind.

mod common;

use common::{
    assert_fsck_clean, check_storage_io, kill_mid_write, mouse_moves_and_clicks, prepare_ext4_disk,
    prepare_fat_disk, serial_exchange, stop_and_see_the_disk_go, typed_text_arrives, Server,
    AFTER_CRASH_SCENARIO, EXT4_MODULES, GUEST_INPUT_HELPERS, GUEST_WAIT_HELPERS,
    KEYBOARD_MOUSE_SCENARIO, SERIAL_ECHO_SCENARIO, STEP, STORAGE_IO_SCENARIO,
    WRITE_UNTIL_KILLED_SCENARIO,
};
use periwire_guest::{Guest, GuestConfig, RedirBus};

/// Every virtual kind, each on its own usbredir listener (port 0: the system picks).
const USBREDIR_DEVICES: &str = r#"
[[device]]
kind = "keyboard"
busid = "1-1"
name = "kbd"
usbredir = "127.0.0.1:0"

[[device]]
kind = "mouse"
busid = "1-2"
name = "mouse"
usbredir = "127.0.0.1:0"

[[device]]
kind = "storage"
busid = "1-3"
image = "disk.img"
usbredir = "127.0.0.1:0"

[[device]]
kind = "serial"
busid = "1-4"
tcp = "127.0.0.1:0"
usbredir = "127.0.0.1:0"
"#;

/// The guest's check that no USB device with periwire's vendor id (pid.codes, 0x1209) is
/// left on any bus.
const NO_PERIWIRE_DEVICE: &str = r#"
no_periwire_device() {
    ! grep -qx 1209 /sys/bus/usb/devices/*/idVendor 2>/dev/null
}
"#;

/// The disk over usb-redir on `bus`: it mounts, a file reads back intact, a file the guest
/// writes is intact in the image; when the server stops, the guest is told the device is
/// gone and it leaves the guest's bus.
fn storage_over_usbredir(bus: RedirBus, modules: &[&str], expected_speed: &str) {
    let mut server = Server::start(USBREDIR_DEVICES, prepare_fat_disk);
    let scenario = format!(
        r#"{GUEST_WAIT_HELPERS}{NO_PERIWIRE_DEVICE}
        wait_for /dev/sda 90
        for d in /sys/bus/usb/devices/*; do
            if [ "$(cat $d/idVendor 2>/dev/null)" = 1209 ]; then mark SPEED $(cat $d/speed); fi
        done
        {STORAGE_IO_SCENARIO}
        mark WRITTEN
        read -r _
        wait_until 60 "the disk to go away" sh -c '! [ -e /dev/sda ]'
        wait_until 60 "the USB device to go away" no_periwire_device
        mark GONE
        "#
    );
    let mut modules = modules.to_vec();
    modules.extend(["usb-storage", "sd_mod", "vfat"]);
    let mut guest = Guest::boot(
        GuestConfig::new(scenario)
            .modules(modules)
            .usb_redir(server.usbredir_port("1-3"), bus),
    )
    .expect("boot");
    let speed = guest.expect_line("SPEED ", STEP).expect("device speed");
    assert_eq!(speed, format!("SPEED {expected_speed}"));
    let new = check_storage_io(&mut guest, &format!(" over usb-redir ({bus:?})"));
    guest.expect_line("WRITTEN", STEP).expect("written");
    assert!(server.imported("1-3"), "the usb-redir guest holds the disk");

    // Stopping the server tells the guest the device is gone (device_disconnect).
    stop_and_see_the_disk_go(&mut server, &mut guest, &new);
}

#[test]
fn storage_over_usbredir_on_xhci() {
    storage_over_usbredir(RedirBus::Xhci, &["xhci-pci"], "480");
}

#[test]
fn storage_over_usbredir_on_ehci() {
    storage_over_usbredir(RedirBus::Ehci, &["ehci-pci"], "480");
}

#[test]
fn keyboard_and_mouse_over_usbredir_reach_the_guest_input_layer() {
    let server = Server::start(USBREDIR_DEVICES, prepare_fat_disk);
    let scenario = format!(
        r#"{GUEST_INPUT_HELPERS}
        {KEYBOARD_MOUSE_SCENARIO}
        "#
    );
    let mut guest = Guest::boot(
        GuestConfig::new(scenario)
            .modules(["xhci-pci", "usbhid", "evdev"])
            .usb_redir(server.usbredir_port("1-1"), RedirBus::Xhci)
            .usb_redir(server.usbredir_port("1-2"), RedirBus::Xhci),
    )
    .expect("boot");
    typed_text_arrives(&mut guest, &server);
    mouse_moves_and_clicks(&mut guest, &server);
    guest
        .expect_line("INPUT-DONE", STEP)
        .expect("scenario ends");
    guest.wait_success(STEP).expect("scenario succeeds");
}

/// A killed QEMU leaves the server running and the device free, and a consistent image: a
/// second guest mounts it (the journal replayed), finds the synced file intact, and the
/// image is fsck-clean.
#[test]
fn killed_guest_mid_write_over_usbredir_leaves_a_consistent_image() {
    let mut server = Server::start(
        r#"
[[device]]
kind = "storage"
busid = "1-1"
image = "ext4.img"
usbredir = "127.0.0.1:0"
"#,
        prepare_ext4_disk,
    );
    let mut modules = vec!["xhci-pci"];
    modules.extend(EXT4_MODULES);
    let port = server.usbredir_port("1-1");
    let guest = Guest::boot(
        GuestConfig::new(format!(
            "wait_for /dev/sda 90\n{WRITE_UNTIL_KILLED_SCENARIO}"
        ))
        .modules(modules.clone())
        .usb_redir(port, RedirBus::Xhci),
    )
    .expect("boot");
    let synced = kill_mid_write(guest, &mut server, "1-1");

    let mut guest = Guest::boot(
        GuestConfig::new(format!(
            "wait_for /dev/sda 90\n{AFTER_CRASH_SCENARIO}\nmark UNMOUNTED\n"
        ))
        .modules(modules)
        .usb_redir(port, RedirBus::Xhci),
    )
    .expect("boot");
    let again = guest
        .expect_line("SYNCED ", STEP)
        .expect("synced file after crash");
    assert_eq!(again, synced, "data synced before the crash survives it");
    guest.expect_line("UNMOUNTED", STEP).expect("unmounted");
    guest.wait_success(STEP).expect("second guest succeeds");
    assert!(server.stop(), "server stops cleanly");
    assert_fsck_clean(&server.data_dir.join("ext4.img"));
}

#[test]
fn serial_over_usbredir_carries_bytes_both_ways_and_refuses_a_usbip_import() {
    let server = Server::start(USBREDIR_DEVICES, prepare_fat_disk);
    let serial_port = server.serial_port("1-4");
    let mut guest = Guest::boot(
        GuestConfig::new(format!(
            r#"
            wait_for /dev/ttyACM0 90
            if usbip attach -r "$PERIWIRE_SERVER" -b 1-4 2>/dev/null; then
                mark IMPORT attached
            else
                mark IMPORT refused
            fi
            {SERIAL_ECHO_SCENARIO}
            read -r _
            "#,
        ))
        .modules(["xhci-pci", "cdc-acm", "vhci-hcd"])
        .server_port(server.port)
        .usb_redir(server.usbredir_port("1-4"), RedirBus::Xhci),
    )
    .expect("boot");
    let import = guest.expect_line("IMPORT ", STEP).expect("usbip attach");
    assert_eq!(
        import, "IMPORT refused",
        "a device a usb-redir guest holds is busy for USB/IP"
    );
    serial_exchange(&mut guest, serial_port);
    guest.send_line("bye").expect("console");
    guest.wait_success(STEP).expect("scenario succeeds");
}
