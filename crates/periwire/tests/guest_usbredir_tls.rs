//! usbredir over TLS with QEMU's own x509 credentials: `periwire usbredir-creds` writes the
//! directory of QEMU's `tls-creds-x509` (endpoint=client), QEMU's socket chardev dials the
//! TLS-only listener with `tls-creds=`, and the guest's stock drivers get the disk. A plain
//! client, a QEMU whose certificate another CA signed, and one the device's allow list does
//! not name are refused, and the device stays free.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    check_storage_io, periwire_ok, prepare_fat_disk, stop_and_see_the_disk_go, usb_guest_qemu,
    KillOnDrop, Server, GUEST_WAIT_HELPERS, README_TEXT, STEP, STORAGE_IO_SCENARIO,
};
use periwire_guest::{Guest, GuestConfig};

/// The disk on a TLS-only usbredir listener, for the client named `vm-a` only.
const TLS_DISK: &str = r#"
[[device]]
kind = "storage"
busid = "1-3"
image = "disk.img"
usbredir = "127.0.0.1:0"
usbredir_tls = true
allow = ["vm-a"]
"#;

/// QEMU arguments for one usb-redir on xHCI `bus` whose chardev dials 127.0.0.1:`port`
/// over TLS with the credentials in `creds`.
fn tls_redir_args(creds: &Path, port: u16, bus: &str) -> Vec<String> {
    vec![
        "-object".into(),
        format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=client",
            creds.display()
        ),
        "-chardev".into(),
        format!("socket,id=redir,host=127.0.0.1,port={port},tls-creds=tls0"),
        "-device".into(),
        format!("usb-redir,chardev=redir,bus={bus}.0"),
    ]
}

/// Starts a QEMU with no guest whose usb-redir dials `port` with the credentials in
/// `creds`; waits for the server to log a refusal with every one of `reason`, checks that
/// the device is still free, and stops that QEMU.
fn refused(server: &Server, creds: &Path, port: u16, reason: &[&str]) {
    let qemu = usb_guest_qemu(&[])
        .args(tls_redir_args(creds, port, "xhci"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start QEMU");
    let _qemu = KillOnDrop(qemu);
    let mut needles = vec!["usbredir TLS guest refused"];
    needles.extend(reason);
    server.log.wait_for(&needles, STEP);
    assert!(!server.imported("1-3"), "a refused QEMU holds nothing");
}

/// A TCP relay between one client and 127.0.0.1:`to` that keeps every byte each way.
struct Recorder {
    port: u16,
    from_client: Arc<Mutex<Vec<u8>>>,
    from_server: Arc<Mutex<Vec<u8>>>,
}

impl Recorder {
    fn start(to: u16) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let port = listener.local_addr().expect("relay address").port();
        let from_client = Arc::new(Mutex::new(Vec::new()));
        let from_server = Arc::new(Mutex::new(Vec::new()));
        let (up, down) = (Arc::clone(&from_client), Arc::clone(&from_server));
        std::thread::spawn(move || {
            let Ok((client, _)) = listener.accept() else {
                return;
            };
            let server = TcpStream::connect(("127.0.0.1", to)).expect("relay to periwire");
            let pipe = |mut from: TcpStream, mut to: TcpStream, log: Arc<Mutex<Vec<u8>>>| {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64 * 1024];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        log.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = to.shutdown(Shutdown::Write);
                })
            };
            let a = pipe(client.try_clone().unwrap(), server.try_clone().unwrap(), up);
            let b = pipe(server, client, down);
            let _ = (a.join(), b.join());
        });
        Recorder {
            port,
            from_client,
            from_server,
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn storage_over_usbredir_tls_with_qemu_x509_credentials() {
    let mut server = Server::start(TLS_DISK, prepare_fat_disk);
    let port = server.usbredir_port("1-3");
    let creds = tempfile::tempdir().expect("temp dir");
    let (good, unlisted, foreign) = (
        creds.path().join("vm-a"),
        creds.path().join("vm-b"),
        creds.path().join("foreign"),
    );
    for (name, dir) in [("vm-a", &good), ("vm-b", &unlisted)] {
        let out = dir.to_str().unwrap();
        periwire_ok(
            &server.data_dir,
            &["usbredir-creds", "--name", name, "--out", out],
        );
    }
    for file in ["ca-cert.pem", "client-cert.pem", "client-key.pem"] {
        assert!(good.join(file).is_file(), "{file} written");
    }
    // The same name from another periwire's CA. (QEMU's sanity check refuses to start with
    // a client certificate its ca-cert.pem did not sign; and it checks the server's
    // certificate only after the handshake, by which time periwire has refused its own.)
    let other = tempfile::tempdir().expect("temp dir");
    let out = foreign.to_str().unwrap();
    periwire_ok(
        other.path(),
        &["usbredir-creds", "--name", "vm-a", "--out", out],
    );

    // A plain usbredir client gets no usbredir from it: at most a TLS alert, then the end.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    // A usbredir hello header (type 0, length 64) and a version string.
    let mut hello = vec![0, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0];
    hello.extend([b'x'; 64]);
    plain.write_all(&hello).expect("send hello");
    let mut reply = Vec::new();
    let _ = plain.read_to_end(&mut reply);
    assert!(
        reply.is_empty() || reply[0] == 0x15,
        "a plain client gets nothing or a TLS alert, not usbredir: {reply:02x?}"
    );
    assert!(!contains(&reply, b"periwire usb-host"));
    server
        .log
        .wait_for(&["usbredir TLS guest refused", "corrupt message"], STEP);
    assert!(!server.imported("1-3"), "a plain client holds nothing");

    refused(&server, &foreign, port, &["invalid peer certificate"]);
    refused(&server, &unlisted, port, &["client=vm-b", "allow list"]);

    // The real guest, through a relay that keeps what crosses the wire.
    let relay = Recorder::start(port);
    let scenario = format!(
        r#"{GUEST_WAIT_HELPERS}
        wait_for /dev/sda 90
        {STORAGE_IO_SCENARIO}
        mark WRITTEN
        read -r _
        wait_until 60 "the disk to go away" sh -c '! [ -e /dev/sda ]'
        mark GONE
        "#
    );
    let mut guest = Guest::boot(
        GuestConfig::new(scenario)
            .modules(["xhci-pci", "usb-storage", "sd_mod", "vfat"])
            .qemu_args(["-device", "qemu-xhci,id=tlsxhci"])
            .qemu_args(tls_redir_args(&good, relay.port, "tlsxhci")),
    )
    .expect("boot");
    let new = check_storage_io(&mut guest, " over usb-redir with TLS");
    guest.expect_line("WRITTEN", STEP).expect("written");
    assert!(server.imported("1-3"), "the TLS guest holds the disk");
    let admitted = server
        .log
        .wait_for(&["usbredir TLS guest", "client=vm-a"], STEP);
    assert!(admitted.contains("TLSv1_3"), "TLS 1.3: {admitted}");

    // Stopping the server tells the guest the device is gone (device_disconnect).
    stop_and_see_the_disk_go(&mut server, &mut guest, &new);

    // TLS records both ways from the first byte (0x16: a handshake record), and none of
    // the usbredir stream or the file's bytes in the clear.
    let (up, down) = (
        relay.from_client.lock().unwrap(),
        relay.from_server.lock().unwrap(),
    );
    assert_eq!(up.first(), Some(&0x16), "QEMU opens with a ClientHello");
    assert_eq!(
        down.first(),
        Some(&0x16),
        "periwire answers with a ServerHello"
    );
    assert!(up.len() > 3000 * 1024, "the written file crossed the relay");
    for stream in [&*up, &*down] {
        assert!(
            !contains(stream, b"periwire usb-host"),
            "hello in the clear"
        );
        assert!(!contains(stream, README_TEXT), "the file in the clear");
    }
}
