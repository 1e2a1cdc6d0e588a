//! periwire over TLS between two machines: in a Debian guest under QEMU, `periwire attach
//! --tls` imports the host server's disk through the guest's `vhci-hcd` (the kernel gets one
//! end of a socketpair, periwire keeps the TLS session), mounts it and reads a file; a
//! capture of the session holds TLS and no USB/IP; a device whose allow list leaves the guest
//! out is refused on both sides; `--persist` over TLS survives a server killed with SIGKILL
//! while the guest writes to ext4, and the image is clean after the journal replays.
//!
//! The guest's identity and pins are made on the host and copied in, as a user would set up
//! a new machine.

mod common;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{
    assert_fsck_clean, fingerprint, periwire_ok, prefixed_lines, prepare_ext4_disk,
    prepare_fat_disk, sha256, with_periwire, Server, EXT4_DISK, GUEST_WAIT_HELPERS, README_TEXT,
    STEP,
};
use periwire_guest::{Guest, GuestConfig};

/// The guest's data directory.
const GUEST_DATA: &str = "/root/pw";

/// The FAT disk for the guest, and a keyboard only `someone-else` may import.
const DEVICES: &str = r#"
[[device]]
kind = "storage"
busid = "1-3"
image = "disk.img"

[[device]]
kind = "keyboard"
busid = "1-1"
allow = ["someone-else"]
"#;

/// Longer than the bounded waits of a scenario step add up to.
const LONG: Duration = Duration::from_secs(300);

/// Makes the guest's identity on the host, trusts it on `server` as `guest`, pins the server
/// for the guest under the name it reaches it by (10.0.2.100), and returns `config` with the
/// guest's data directory in it.
fn with_guest_identity(config: GuestConfig, server: &Server) -> (GuestConfig, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let guest_fp = fingerprint(dir.path());
    server.cli(&["trust", "add", "guest", &guest_fp]);
    let server_fp = fingerprint(&server.data_dir);
    periwire_ok(dir.path(), &["trust", "add", "10.0.2.100", &server_fp]);
    let mut config = config;
    for file in ["identity.key", "identity.crt", "trusted"] {
        let bytes = std::fs::read(dir.path().join(file)).expect("identity file");
        config = config.file(format!("{GUEST_DATA}/{file}"), 0o600, bytes);
    }
    (config, guest_fp)
}

/// A `tshark` capture of loopback traffic to some ports.
struct Capture {
    tshark: Child,
    file: PathBuf,
    /// Packets captured so far (tshark prints a summary line for each).
    packets: std::sync::Arc<(std::sync::Mutex<usize>, std::sync::Condvar)>,
    _dir: tempfile::TempDir,
}

impl Capture {
    /// Starts capturing traffic to and from `ports` on loopback; returns once tshark runs.
    fn start(ports: &[u16]) -> Capture {
        let filter: Vec<String> = ports.iter().map(|p| format!("tcp port {p}")).collect();
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("session.pcapng");
        let mut tshark = Command::new("tshark")
            .args(["-i", "lo", "-f", &filter.join(" or "), "-P", "-w"])
            .arg(&file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tshark (scripts/install-test-deps installs it)");
        let stderr = tshark.stderr.take().expect("stderr");
        let mut lines = std::io::BufReader::new(stderr).lines();
        // tshark says when its dumpcap is capturing ("Capturing on" comes before that); nothing
        // is sent before then.
        loop {
            let line = lines.next().expect("tshark started").expect("stderr");
            if line.contains("Capture started") {
                break;
            }
        }
        // tshark writes on to stderr (its packet count at the end): keep reading, so that it
        // never writes into a closed pipe.
        std::thread::spawn(move || {
            lines
                .map_while(Result::ok)
                .for_each(|l| eprintln!("tshark: {l}"))
        });
        let packets = std::sync::Arc::new((std::sync::Mutex::new(0), std::sync::Condvar::new()));
        let counter = packets.clone();
        let stdout = tshark.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for _ in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                *counter.0.lock().unwrap() += 1;
                counter.1.notify_all();
            }
        });
        Capture {
            tshark,
            file,
            packets,
            _dir: dir,
        }
    }

    /// Packets captured so far.
    fn packets(&self) -> usize {
        *self.packets.0.lock().unwrap()
    }

    /// Whether at least `n` packets are captured within `timeout`.
    fn wait_packets(&self, n: usize, timeout: Duration) -> bool {
        let (count, changed) = &*self.packets;
        let waited = changed
            .wait_timeout_while(count.lock().unwrap(), timeout, |c| *c < n)
            .unwrap();
        !waited.1.timed_out()
    }

    /// Runs `traffic` until the capture has seen its packets (at least `n` more): the first
    /// packets after tshark says it started may still be missed.
    fn until_seen(&self, n: usize, mut traffic: impl FnMut()) {
        for _ in 0..30 {
            let before = self.packets();
            traffic();
            if self.wait_packets(before + n, Duration::from_secs(2)) {
                return;
            }
        }
        panic!("the capture sees none of the traffic");
    }

    /// Ends the capture.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.tshark.id().to_string()])
            .status();
        let status = self.tshark.wait().expect("tshark exits");
        assert!(status.success(), "tshark capture: {status}");
    }

    /// `fields` of the captured packets to or from `port` that match `filter`, that port
    /// dissected as `protocol` (`tls`, `usbip`), one line per packet.
    fn fields(&self, port: u16, protocol: &str, filter: &str, fields: &[&str]) -> Vec<String> {
        let mut command = Command::new("tshark");
        command.arg("-r").arg(&self.file).args([
            "-d",
            &format!("tcp.port=={port},{protocol}"),
            "-Y",
            &format!("tcp.port == {port} && ({filter})"),
        ]);
        if !fields.is_empty() {
            command.args(["-T", "fields"]);
            for f in fields {
                command.args(["-e", f]);
            }
        }
        let out = command.output().expect("tshark -r");
        assert!(
            out.status.success(),
            "tshark -r: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Hex of `bytes`, as tshark prints `tcp.payload`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn attach_over_tls_mounts_the_disk_and_the_wire_carries_no_usbip() {
    let server = Server::start(DEVICES, prepare_fat_disk);
    // A second server, spoken to in the clear: the capture is live once it has seen that
    // traffic, and the USB/IP dissector shows it recognises USB/IP when it is there.
    let control = Server::start(DEVICES, prepare_fat_disk);
    let mut capture = Capture::start(&[server.port, control.port]);
    let control_remote = format!("127.0.0.1:{}", control.port);
    // Connection, request, reply and the closes: ten packets and more.
    capture.until_seen(10, || {
        periwire_ok(&control.data_dir, &["list", "-r", &control_remote]);
    });
    let scenario = format!(
        r#"{GUEST_WAIT_HELPERS}
        mkdir -p /mnt
        periwire --data-dir {GUEST_DATA} attach --tls -r "$PERIWIRE_SERVER" -b 1-3 \
            >/tmp/attach.log 2>&1 &
        attacher=$!
        printed() {{ grep -q "$1" /tmp/attach.log; }}
        wait_until 120 "periwire attach --tls to attach" printed "attached usbip://"
        wait_until 90 "the disk behind vhci_hcd" disk_at vhci_hcd
        mount -t vfat -o ro "/dev/$(disk_at vhci_hcd)" /mnt
        mark README $(sha256sum /mnt/README.TXT)
        read -r _
        umount /mnt
        status=0
        periwire --data-dir {GUEST_DATA} attach --tls -r "$PERIWIRE_SERVER" -b 1-1 \
            >/tmp/refused.log 2>&1 || status=$?
        sed 's/^/REFUSED /' /tmp/refused.log
        mark REFUSED-EXIT status=$status
        port=$(sed -n 's/.*attached usbip:.* on port \([0-9][0-9]*\)$/\1/p' /tmp/attach.log)
        periwire detach -p "$port"
        wait_until 60 "the disk to go away" no_disk_at vhci_hcd
        wait_until 60 "periwire attach --tls to end with its session" exited $attacher
        sed 's/^/ATTACH /' /tmp/attach.log
        mark DONE
        "#
    );
    let (config, guest_fp) = with_guest_identity(
        with_periwire(
            GuestConfig::new(scenario)
                .modules(["vhci-hcd", "usb-storage", "vfat"])
                .server_port(server.port)
                .timeout(Duration::from_secs(600)),
        ),
        &server,
    );
    let mut guest = Guest::boot(config).expect("boot");

    let readme = guest.expect_line("README ", LONG).expect("README read");
    assert!(
        readme.contains(&sha256(README_TEXT)),
        "README.TXT reads back intact through the TLS-attached disk: {readme}"
    );
    server
        .log
        .wait_for(&["TLS client", "client=guest", &guest_fp], STEP);
    assert!(server.imported("1-3"), "the server has 1-3 imported");
    // Status names the client by the name its key is trusted under, beside its address.
    let out = server.cli(&["status", "--json"]);
    let devices: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    let disk = (devices.as_array().expect("array").iter())
        .find(|d| d["busid"] == "1-3")
        .expect("1-3 in status");
    assert_eq!(disk["client"]["identity"], "guest", "{disk}");
    let address = disk["client"]["address"].as_str().expect("address");
    assert!(address.starts_with("127.0.0.1:"), "{disk}");
    let table = String::from_utf8_lossy(&server.cli(&["status"]).stdout).into_owned();
    assert!(
        table.contains(&format!("guest ({address})")),
        "the table shows who holds 1-3:\n{table}"
    );
    guest.send_line("checked").expect("console");

    let refused = guest.expect_line("REFUSED-EXIT ", STEP).expect("refusal");
    let message = prefixed_lines(guest.transcript(), "REFUSED ").join("\n");
    assert_ne!(
        refused, "REFUSED-EXIT status=0",
        "1-1 is refused:\n{message}"
    );
    assert!(
        message.contains("allow list") && message.contains("1-1"),
        "the guest is told why:\n{message}"
    );
    server
        .log
        .wait_for(&["import refused", "guest", "1-1", "allow list"], STEP);
    assert!(!server.imported("1-1"), "the refused device stays free");

    guest.expect_line("DONE", LONG).expect("detached");
    let outcome = guest.wait_success(STEP).expect("scenario succeeds");
    let log = prefixed_lines(&outcome.transcript, "ATTACH ").join("\n");
    assert!(
        log.contains("TLS session of usbip://10.0.2.100:3240/1-3 ended"),
        "periwire attach --tls ends with the detach:\n{log}"
    );
    server.cli(&["status", "--wait-released", "1-3", "--timeout", "60"]);
    capture.stop();

    // Read as TLS: TLS 1.3 both ways, application data, nothing malformed. Read as USB/IP:
    // no USB/IP header anywhere. And no USB/IP request or byte of the file in the clear.
    let port = server.port;
    let frames = |protocol, filter| capture.fields(port, protocol, filter, &["frame.number"]);
    assert!(
        !frames("tls", "tls.handshake.type == 1").is_empty(),
        "a ClientHello"
    );
    let versions = capture.fields(
        port,
        "tls",
        "tls.handshake.type == 2",
        &["tls.handshake.extensions.supported_version"],
    );
    assert!(
        !versions.is_empty() && versions.iter().all(|v| v.contains("0x0304")),
        "every ServerHello selects TLS 1.3: {versions:?}"
    );
    let records = frames("tls", "tls.record.opaque_type == 23");
    assert!(
        records.len() > 20,
        "application data: {} records",
        records.len()
    );
    assert_eq!(
        frames("tls", "_ws.malformed"),
        Vec::<String>::new(),
        "every byte is TLS"
    );
    assert_eq!(
        frames(
            "usbip",
            "usbip.version == 0x0111 || usbip.urb >= 1 && usbip.urb <= 4"
        ),
        Vec::<String>::new(),
        "no USB/IP on the wire"
    );
    let payload: String = capture
        .fields(port, "tls", "tcp.len > 0", &["tcp.payload"])
        .concat();
    for (what, bytes) in [
        ("OP_REQ_IMPORT", &[0x01, 0x11, 0x80, 0x03][..]),
        ("the bus id field", b"1-3\0\0\0\0\0"),
        ("README.TXT's text", README_TEXT),
    ] {
        assert!(
            !payload.contains(&hex(bytes)),
            "{what} is not in the clear in the capture"
        );
    }

    // The same dissector reads the listing in the clear on the control port.
    assert!(
        !capture
            .fields(
                control.port,
                "usbip",
                "usbip.operation == 0x0005",
                &["frame.number"]
            )
            .is_empty(),
        "the plain listing shows as an OP_REP_DEVLIST"
    );
}

#[test]
fn persistent_tls_attach_survives_a_killed_server_and_the_image_stays_consistent() {
    let mut server = Server::start(EXT4_DISK, prepare_ext4_disk);
    let scenario = format!(
        r#"{GUEST_WAIT_HELPERS}
        mkdir -p /mnt
        : >/tmp/persist.log
        periwire --data-dir {GUEST_DATA} attach --tls --persist -v -r "$PERIWIRE_SERVER" \
            -b 1-1 >/tmp/persist.log 2>&1 &
        attacher=$!
        printed() {{
            if exited $attacher; then
                echo "FAILED: periwire attach --tls --persist exited" >&2
                sed 's/^/PERSIST /' /tmp/persist.log
                exit 1
            fi
            grep -q "$1" /tmp/persist.log
        }}
        wait_until 120 "periwire attach --tls --persist to attach" printed "attached usbip://"
        wait_until 90 "the disk behind vhci_hcd" disk_at vhci_hcd
        mount -t ext4 "/dev/$(disk_at vhci_hcd)" /mnt
        dd if=/dev/urandom of=/mnt/synced.bin bs=1k count=512 2>/dev/null
        sync
        mark SYNCED $(sha256sum /mnt/synced.bin)
        dd if=/dev/urandom of=/mnt/big.bin bs=1M count=48 conv=fsync 2>/dev/null &
        writer=$!
        while [ "$(stat -c %s /mnt/big.bin 2>/dev/null || echo 0)" -lt 4000000 ]; do
            usleep 50000
        done
        mark WRITING
        # The host kills its server.
        read -r _
        wait_until 120 "the disk to go away with the server" no_disk_at vhci_hcd
        kill $writer 2>/dev/null || true
        umount -l /mnt || true
        mark DISK-GONE
        # The host starts a server on the same port.
        read -r _
        wait_until 180 "periwire attach --tls --persist to re-attach" printed "re-attached usbip://"
        wait_until 90 "the disk behind vhci_hcd again" disk_at vhci_hcd
        mount -t ext4 "/dev/$(disk_at vhci_hcd)" /mnt
        mark AGAIN $(sha256sum /mnt/synced.bin)
        umount /mnt
        kill -TERM $attacher
        wait_until 30 "periwire attach --persist to exit on SIGTERM" exited $attacher
        sed 's/^/PERSIST /' /tmp/persist.log
        mark STOPPED
        "#
    );
    let (config, _) = with_guest_identity(
        with_periwire(
            GuestConfig::new(scenario)
                .modules([
                    "vhci-hcd",
                    "usb-storage",
                    "sd_mod",
                    "ext4",
                    "crc32c_generic",
                ])
                .server_port(server.port)
                .timeout(Duration::from_secs(900)),
        ),
        &server,
    );
    let mut guest = Guest::boot(config).expect("boot");

    let synced = guest.expect_line("SYNCED ", LONG).expect("synced file");
    guest.expect_line("WRITING", STEP).expect("write under way");
    server.kill();
    guest.send_line("killed").expect("console");
    guest
        .expect_line("DISK-GONE", LONG)
        .expect("the disk goes away with the server");

    server.start_again();
    guest.send_line("started").expect("console");
    let again = guest
        .expect_line("AGAIN ", LONG)
        .expect("re-attached and mounted");
    assert_eq!(
        again.trim_start_matches("AGAIN "),
        synced.trim_start_matches("SYNCED "),
        "data synced before the kill survives it, read through the re-attached disk"
    );
    server.log.wait_for(&["TLS client", "client=guest"], STEP);
    guest.expect_line("STOPPED", STEP).expect("attach stopped");
    let outcome = guest.wait_success(STEP).expect("scenario succeeds");
    let log = prefixed_lines(&outcome.transcript, "PERSIST ").join("\n");
    assert!(
        log.contains("re-attached usbip://10.0.2.100:3240/1-1"),
        "periwire attach --tls --persist re-attached:\n{log}"
    );
    server.cli(&["status", "--wait-released", "1-1", "--timeout", "60"]);
    assert!(server.stop(), "the server stops cleanly");

    // The guest's mount replayed the journal; its unmount left the file system clean.
    assert_fsck_clean(&server.data_dir.join("ext4.img"));
}
