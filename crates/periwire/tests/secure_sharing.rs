//! Secure sharing against real peers on this host: two and more `periwire` processes pinning
//! each other over TLS, OpenSSL's `s_client` as a TLS peer that is not rustls, the stock
//! `usbip` tool over plain USB/IP, network namespaces for a peer that is not on loopback, and
//! hostile input against a running server that keeps serving another client meanwhile.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{periwire_ok, prepare_fat_disk, usb_guest_qemu, KillOnDrop, Server};
use periwire_server::client::{self, ClientError, Remote, UrbClient, UrbRequest};
use periwire_server::secure::connect::{Connected, TlsClient};
use periwire_server::secure::Identity;
use periwire_wire::usbip::{BusId, Direction, OpStatus};

/// A keyboard and a mouse open to every trusted client, a disk only `laptop` may import.
const DEVICES: &str = r#"
[[device]]
kind = "keyboard"
busid = "1-1"

[[device]]
kind = "mouse"
busid = "1-2"

[[device]]
kind = "storage"
busid = "1-3"
image = "disk.img"
allow = ["laptop"]
"#;

/// Longest wait for a log line or a refusal; a failure limit, not a synchronisation means.
const WAIT: Duration = Duration::from_secs(30);

/// Runs the `periwire` CLI with `data_dir`; its output whatever the outcome.
fn periwire(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_periwire"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("run periwire")
}

/// [`periwire`] that must fail with a message; its stderr.
fn periwire_refused(data_dir: &Path, args: &[&str]) -> String {
    let out = periwire(data_dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "periwire {args:?} is refused, yet succeeds: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!stderr.trim().is_empty(), "periwire {args:?} says why");
    stderr
}

/// `periwire id --json` in `data_dir`: (name, fingerprint).
fn id(data_dir: &Path) -> (String, String) {
    let json: serde_json::Value =
        serde_json::from_str(&periwire_ok(data_dir, &["id", "--json"])).expect("id --json");
    let field = |k: &str| json[k].as_str().expect(k).to_owned();
    (field("name"), field("fingerprint"))
}

/// The bus ids `periwire list --tls --json` shows to the client of `data_dir`.
fn tls_busids(data_dir: &Path, remote: &str) -> Vec<String> {
    let out = periwire_ok(data_dir, &["list", "--tls", "--json", "-r", remote]);
    let rows: serde_json::Value = serde_json::from_str(&out).expect("list --json");
    let mut ids: Vec<String> = (rows.as_array().expect("array").iter())
        .map(|r| r["busid"].as_str().expect("busid").to_owned())
        .collect();
    ids.sort();
    ids
}

/// The stdout of a command that must have succeeded.
fn stdout_of_success(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A client data directory with its identity made.
fn client_dir() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, fingerprint) = id(dir.path());
    (dir, fingerprint)
}

#[test]
fn identities_are_private_and_their_fingerprint_is_openssls_spki_hash() {
    let (dir, fingerprint) = client_dir();
    assert!(
        fingerprint.len() == 71
            && fingerprint.starts_with("sha256:")
            && fingerprint[7..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "sha256: and 64 lowercase hex digits: {fingerprint}"
    );
    let text = periwire_ok(dir.path(), &["id"]);
    assert!(text.trim().ends_with(&fingerprint), "periwire id: {text}");
    for file in ["identity.key", "identity.crt"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{file} is readable by its owner only");
    }
    // OpenSSL's reading of the same certificate: the DER SubjectPublicKeyInfo, hashed.
    let spki = Command::new("sh")
        .arg("-c")
        .arg(
            "openssl x509 -in \"$1\" -pubkey -noout | openssl pkey -pubin -outform DER \
             | sha256sum",
        )
        .arg("sh")
        .arg(dir.path().join("identity.crt"))
        .output()
        .expect("openssl (scripts/install-test-deps installs it)");
    let hex = String::from_utf8_lossy(&spki.stdout);
    let hex = hex.split_whitespace().next().expect("sha256sum output");
    assert_eq!(format!("sha256:{hex}"), fingerprint);
    assert_eq!(
        id(dir.path()).1,
        fingerprint,
        "made once, then the same on every use"
    );

    // The trust store, by hand.
    let other = format!("sha256:{}", "0a".repeat(32));
    periwire_ok(dir.path(), &["trust", "add", "server.lan", &other]);
    let listed: serde_json::Value =
        serde_json::from_str(&periwire_ok(dir.path(), &["trust", "list", "--json"])).unwrap();
    assert_eq!(
        listed,
        serde_json::json!([{"name": "server.lan", "fingerprint": other}])
    );
    let taken = periwire_refused(dir.path(), &["trust", "add", "server.lan", &fingerprint]);
    assert!(taken.contains("already trusted"), "{taken}");
    let bad = periwire_refused(dir.path(), &["trust", "add", "x", "sha256:12"]);
    assert!(bad.contains("not a fingerprint"), "{bad}");
    periwire_ok(dir.path(), &["trust", "remove", "server.lan"]);
    assert!(periwire_ok(dir.path(), &["trust", "list"]).contains("no trusted peers"));
    periwire_refused(dir.path(), &["trust", "remove", "server.lan"]);
}

#[test]
fn periwires_pin_each_other_and_refuse_strangers_changed_keys_and_the_unlisted() {
    let mut server = Server::start(DEVICES, prepare_fat_disk);
    let remote = format!("127.0.0.1:{}", server.port);
    let (_, server_fp) = id(&server.data_dir);
    let (laptop, laptop_fp) = client_dir();
    let (tablet, tablet_fp) = client_dir();
    let (stranger, stranger_fp) = client_dir();
    let list_tls = ["list", "--tls", "-r", remote.as_str()];

    // A server the client has not pinned.
    let e = periwire_refused(laptop.path(), &list_tls);
    assert!(
        e.contains("not trusted") && e.contains(&server_fp) && e.contains("--trust-new"),
        "the client names the server's key and how to trust it:\n{e}"
    );
    server
        .log
        .wait_for(&["127.0.0.1:", "refused this server's key"], WAIT);

    // --trust-new pins it; the server does not trust the laptop yet.
    let e = periwire_refused(
        laptop.path(),
        &["list", "--tls", "--trust-new", "-r", &remote],
    );
    assert!(
        e.contains(&format!("pinned server {remote} as {server_fp}")),
        "the client prints the key it pinned:\n{e}"
    );
    assert!(
        e.contains("does not trust this client"),
        "the client says the server refused it:\n{e}"
    );
    server
        .log
        .wait_for(&["not trusted", &laptop_fp, "periwire trust add"], WAIT);
    let pins: serde_json::Value =
        serde_json::from_str(&periwire_ok(laptop.path(), &["trust", "list", "--json"])).unwrap();
    assert_eq!(
        pins,
        serde_json::json!([{"name": remote, "fingerprint": server_fp}])
    );

    // Trusted both ways: the laptop sees the disk its allow list names, the tablet does not.
    server.cli(&["trust", "add", "laptop", &laptop_fp]);
    server.cli(&["trust", "add", "tablet", &tablet_fp]);
    periwire_ok(tablet.path(), &["trust", "add", &remote, &server_fp]);
    periwire_ok(stranger.path(), &["trust", "add", &remote, &server_fp]);
    assert_eq!(tls_busids(laptop.path(), &remote), ["1-1", "1-2", "1-3"]);
    server.log.wait_for(&["TLS client", "client=laptop"], WAIT);
    assert_eq!(tls_busids(tablet.path(), &remote), ["1-1", "1-2"]);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let disk = BusId::new("1-3").unwrap();
    // The tablet is trusted but not on the disk's allow list.
    let refused = runtime.block_on(import_tls(tablet.path(), &remote, &disk));
    let Err(e) = refused else {
        panic!("the tablet may not import the disk")
    };
    assert!(
        matches!(e, ClientError::Refused(OpStatus::NotAvailable)),
        "{e}"
    );
    assert!(
        e.to_string().contains("allow list"),
        "the client says why: {e}"
    );
    server
        .log
        .wait_for(&["import refused", "tablet", "1-3", "allow list"], WAIT);
    assert!(!server.imported("1-3"), "the disk stays free");
    // The laptop may; the import holds the disk until the connection ends.
    let held = runtime
        .block_on(import_tls(laptop.path(), &remote, &disk))
        .expect("the laptop imports the disk");
    assert!(server.imported("1-3"));
    drop(held);
    server.cli(&["status", "--wait-released", "1-3", "--timeout", "30"]);

    // A client the server does not trust, though it has pinned the server.
    let e = periwire_refused(stranger.path(), &list_tls);
    assert!(e.contains("does not trust this client"), "{e}");
    server.log.wait_for(&["not trusted", &stranger_fp], WAIT);
    assert!(!server.imported("1-3"));

    // The server comes back with a new key: refused, with both keys, --trust-new or not.
    assert!(server.stop(), "the server stops cleanly");
    for file in ["identity.key", "identity.crt"] {
        std::fs::remove_file(server.data_dir.join(file)).unwrap();
    }
    server.start_again();
    let (_, new_fp) = id(&server.data_dir);
    assert_ne!(new_fp, server_fp);
    for args in [
        &list_tls[..],
        &["list", "--tls", "--trust-new", "-r", &remote][..],
    ] {
        let e = periwire_refused(laptop.path(), args);
        assert!(
            e.contains(&new_fp) && e.contains(&server_fp) && e.contains("pinned"),
            "a pinned server with another key is refused with both fingerprints:\n{e}"
        );
    }
    assert!(!server.imported("1-3"), "the device stays free");
}

/// Imports `busid` over TLS as the client of `data_dir`; the connection in the URB phase.
async fn import_tls(
    data_dir: &Path,
    remote: &str,
    busid: &BusId,
) -> Result<Connected, ClientError> {
    let tls = TlsClient {
        identity: Identity::load(data_dir).expect("identity"),
        data_dir: data_dir.to_owned(),
        trust_new: false,
    };
    let remote = Remote::parse(remote).unwrap();
    let mut connected = tls.connect(&remote, WAIT).await.expect("TLS connection");
    client::import_on(&mut connected.stream, busid, WAIT).await?;
    Ok(connected)
}

/// Runs `openssl s_client` against `port` with `args`, `input` on its stdin; (exit success,
/// stdout bytes, stderr text).
fn s_client(port: u16, args: &[&str], input: &[u8]) -> (bool, Vec<u8>, String) {
    let mut child = Command::new("timeout")
        .args(["30", "openssl", "s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl (scripts/install-test-deps installs it)");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn openssl_gets_tls_1_3_with_a_pinned_key_and_nothing_else() {
    let server = Server::start(DEVICES, prepare_fat_disk);
    let (laptop, laptop_fp) = client_dir();
    server.cli(&["trust", "add", "laptop", &laptop_fp]);
    let cert = laptop.path().join("identity.crt");
    let key = laptop.path().join("identity.key");
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let devlist = [0x01, 0x11, 0x80, 0x05, 0, 0, 0, 0];

    // TLS 1.2 is not spoken at all.
    let (ok, _, err) = s_client(server.port, &["-tls1_2", "-cert", cert, "-key", key], &[]);
    assert!(!ok, "a TLS 1.2 handshake fails:\n{err}");
    assert!(err.to_lowercase().contains("alert"), "{err}");
    server.log.wait_for(&["TLS handshake failed"], WAIT);

    // TLS 1.3 without a client certificate, and with one the server does not trust.
    let (stranger, stranger_fp) = client_dir();
    let scert = stranger.path().join("identity.crt");
    let skey = stranger.path().join("identity.key");
    for extra in [
        vec![],
        vec![
            "-cert",
            scert.to_str().unwrap(),
            "-key",
            skey.to_str().unwrap(),
        ],
    ] {
        let mut args = vec!["-tls1_3", "-ign_eof"];
        args.extend(extra);
        let (_, reply, err) = s_client(server.port, &args, &devlist);
        assert!(
            !reply.windows(4).any(|w| w == [0x01, 0x11, 0x00, 0x05]),
            "no device list without a trusted key:\n{err}"
        );
    }
    server.log.wait_for(&["not trusted", &stranger_fp], WAIT);

    // The laptop's key: TLS 1.3, and USB/IP inside it.
    let (_, reply, err) = s_client(
        server.port,
        &["-tls1_3", "-ign_eof", "-cert", cert, "-key", key],
        &devlist,
    );
    let text = format!("{}{err}", String::from_utf8_lossy(&reply));
    assert!(text.contains("TLSv1.3"), "{text}");
    let at = reply
        .windows(4)
        .position(|w| w == [0x01, 0x11, 0x00, 0x05])
        .unwrap_or_else(|| panic!("a device list in {reply:02x?}\n{err}"));
    let count = u32::from_be_bytes(reply[at + 8..at + 12].try_into().unwrap());
    assert_eq!(count, 3, "the laptop sees its three devices");
    server.log.wait_for(&["TLS client", "client=laptop"], WAIT);
}

#[test]
fn stock_usbip_lists_over_plain_usbip_from_loopback() {
    let server = Server::start(DEVICES, prepare_fat_disk);
    let text = stdout_of_success(
        Command::new("usbip")
            .args([
                "--tcp-port",
                &server.port.to_string(),
                "list",
                "-r",
                "127.0.0.1",
            ])
            .output()
            .expect("usbip (scripts/install-test-deps installs it)"),
    );
    for busid in ["1-1:", "1-2:", "1-3:"] {
        assert!(
            text.contains(busid),
            "the local user sees every device:\n{text}"
        );
    }
}

/// Reads until the server closes `stream` (or `limit` passes); what it sent and how long the
/// close took.
fn read_to_close(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("no close within {limit:?}: {e}"),
        }
    }
    (got, start.elapsed())
}

/// The server's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn hostile_input_is_answered_or_dropped_while_another_client_is_served() {
    let server = Server::start(DEVICES, prepare_fat_disk);
    let addr = format!("127.0.0.1:{}", server.port);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // A well-behaved client holds the keyboard throughout.
    let (stream, device) = runtime
        .block_on(client::import(&addr, &BusId::new("1-1").unwrap(), WAIT))
        .expect("import 1-1");
    let good = runtime.block_on(async { UrbClient::new(stream, &device) });
    let get_descriptor = UrbRequest {
        ep: 0,
        direction: Direction::In,
        setup: [0x80, 6, 0, 1, 0, 0, 18, 0],
        data: Vec::new(),
        length: 18,
    };
    let still_served = || {
        let reply = runtime
            .block_on(good.transfer(&get_descriptor))
            .expect("the other client is still served");
        assert_eq!((reply.status, reply.data.len()), (0, 18));
    };

    // An import whose bus id fills its 32 bytes with no NUL: an error status, then the end.
    let mut s = TcpStream::connect(&addr).unwrap();
    let mut import = vec![0x01, 0x11, 0x80, 0x03, 0, 0, 0, 0];
    import.extend_from_slice(&[b'1'; 32]);
    s.write_all(&import).unwrap();
    let (reply, _) = read_to_close(&mut s, WAIT);
    assert_eq!(
        reply,
        [0x01, 0x11, 0x00, 0x03, 0, 0, 0, 5],
        "OP_REP_IMPORT, ST_ERROR"
    );
    // A device list of another protocol version.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(&[0x01, 0x06, 0x80, 0x05, 0, 0, 0, 0]).unwrap();
    let (reply, _) = read_to_close(&mut s, WAIT);
    assert_eq!(
        reply,
        [0x01, 0x11, 0x00, 0x05, 0, 0, 0, 5],
        "OP_REP_DEVLIST, ST_ERROR"
    );
    server.log.wait_for(&["malformed request answered"], WAIT);
    still_served();

    // A URB command for another device than the one imported ends that connection.
    let (mut bad, device) = runtime
        .block_on(client::import(&addr, &BusId::new("1-2").unwrap(), WAIT))
        .expect("import 1-2");
    let mut submit = [0u8; 48];
    submit[3] = 1; // CMD_SUBMIT
    submit[7] = 1; // seqnum 1
    submit[8..12].copy_from_slice(&(device.devid() + 1).to_be_bytes());
    submit[15] = 1; // IN
    runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        bad.write_all(&submit).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, bad.read(&mut buf)).await;
        assert!(
            matches!(n, Ok(Ok(0)) | Ok(Err(_))),
            "the server ends the connection without a reply: {n:?}"
        );
    });
    server
        .log
        .wait_for(&["dropped client", "is imported"], WAIT);
    server.cli(&["status", "--wait-released", "1-2", "--timeout", "30"]);
    still_served();

    // Peers that send nothing, or a byte a second: dropped after the request timeout (5 s),
    // holding little meanwhile.
    let before = rss_kib(server.pid());
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let mut trickle = TcpStream::connect(&addr).unwrap();
    let start = Instant::now();
    let mut closed = false;
    let mut during = before;
    for (i, &b) in [0x01u8, 0x11, 0x80, 0x03, 0, 0, 0, 0, b'1']
        .iter()
        .enumerate()
    {
        if trickle.write_all(&[b]).is_err() {
            closed = true;
            break;
        }
        if i == 2 {
            // Two seconds in: every connection is accepted and waiting.
            during = rss_kib(server.pid());
        }
        // The peer's pace, not a synchronisation.
        std::thread::sleep(Duration::from_secs(1));
    }
    if !closed {
        let (got, _) = read_to_close(&mut trickle, WAIT);
        assert!(got.is_empty(), "no reply to a request never finished");
    }
    let trickle_time = start.elapsed();
    assert!(
        trickle_time < Duration::from_secs(12),
        "the trickling peer is dropped within a few seconds: {trickle_time:?}"
    );
    for mut s in idle {
        let (got, _) = read_to_close(&mut s, WAIT);
        assert!(got.is_empty());
    }
    let idle_time = start.elapsed();
    assert!(
        idle_time >= Duration::from_secs(4) && idle_time < Duration::from_secs(12),
        "idle peers are dropped after about 5 s: {idle_time:?}"
    );
    let per_connection = during.saturating_sub(before) * 1024 / 101;
    eprintln!(
        "101 idle/trickling connections: RSS {before} KiB -> {during} KiB, \
         {per_connection} bytes each; dropped after {idle_time:?}"
    );
    assert!(
        per_connection <= 8 * 1024,
        "an idle connection holds a few KiB at most: {per_connection} bytes"
    );
    server
        .log
        .wait_for(&["no complete operation request"], WAIT);
    server.log.wait_for(&["nothing received within"], WAIT);
    still_served();

    // Failed TLS handshakes: garbage after the record type, and untrusted keys, many times.
    let (stranger, _) = client_dir();
    let base = rss_kib(server.pid());
    for _ in 0..100 {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3])
            .unwrap();
        let _ = read_to_close(&mut s, WAIT);
    }
    for _ in 0..50 {
        periwire_refused(
            stranger.path(),
            &["list", "--tls", "--trust-new", "-r", &addr],
        );
    }
    let after = rss_kib(server.pid());
    eprintln!("150 failed TLS handshakes: RSS {base} KiB -> {after} KiB");
    assert!(
        after <= base + 2048,
        "failed handshakes leave nothing lasting: RSS {base} KiB -> {after} KiB"
    );
    still_served();
    assert!(!good.is_closed());
}

/// Network namespaces joined by veth pairs, deleted when dropped.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn ip(args: &[&str]) {
        let out = Command::new("ip")
            .args(args)
            .output()
            .expect("ip (iproute2)");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn a_peer_beyond_loopback_gets_tls_and_plain_only_from_plain_allow() {
    // A server namespace with two links: to `far` (192.0.2.0/25, not plain_allow) and to
    // `near` (192.0.2.128/25, plain_allow). Documentation addresses, inside namespaces.
    let tag = std::process::id();
    let (srv, far, near) = (
        format!("pw-srv-{tag}"),
        format!("pw-far-{tag}"),
        format!("pw-near-{tag}"),
    );
    let namespaces = Namespaces(vec![srv.clone(), far.clone(), near.clone()]);
    for ns in &namespaces.0 {
        Namespaces::ip(&["netns", "add", ns]);
        Namespaces::ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    for (client, i, server_addr, client_addr) in [
        (&far, 0, "192.0.2.1/25", "192.0.2.2/25"),
        (&near, 1, "192.0.2.129/25", "192.0.2.130/25"),
    ] {
        let (s, c) = (format!("pws{i}"), format!("pwc{i}"));
        Namespaces::ip(&[
            "link", "add", "name", &s, "netns", &srv, "type", "veth", "peer", "name", &c, "netns",
            client,
        ]);
        Namespaces::ip(&["-n", &srv, "addr", "add", server_addr, "dev", &s]);
        Namespaces::ip(&["-n", client, "addr", "add", client_addr, "dev", &c]);
        Namespaces::ip(&["-n", &srv, "link", "set", &s, "up"]);
        Namespaces::ip(&["-n", client, "link", "set", &c, "up"]);
    }
    // Each device on a usbredir listener too, beyond loopback like the USB/IP port.
    let devices =
        DEVICES.replace("\n\n", "\nusbredir = \"0.0.0.0:0\"\n\n") + "usbredir = \"0.0.0.0:0\"\n";
    let config = format!("plain_allow = [\"192.0.2.128/25\"]\n{devices}");
    let server = Server::start_in(
        &config,
        prepare_fat_disk,
        &["ip", "netns", "exec", &srv],
        "0.0.0.0",
    );
    let port = server.port.to_string();
    let in_ns = |ns: &str, program: &str, args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .output()
            .expect("ip netns exec")
    };
    let usbip_list =
        |ns: &str, host: &str| in_ns(ns, "usbip", &["--tcp-port", &port, "list", "-r", host]);

    // Plain USB/IP from `far` is closed, with a log line naming the peer.
    let out = usbip_list(&far, "192.0.2.1");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("1-1:"),
        "no device list in the clear from a network not in plain_allow"
    );
    server.log.wait_for(
        &[
            "192.0.2.2:",
            "plain USB/IP from a network not in plain_allow",
        ],
        WAIT,
    );

    // From `near`, plain USB/IP works, for the devices without an allow list.
    let text = stdout_of_success(usbip_list(&near, "192.0.2.129"));
    assert!(
        text.contains("1-1:") && text.contains("1-2:") && !text.contains("1-3:"),
        "a plain_allow client sees what no allow list restricts:\n{text}"
    );

    // TLS from `far`, with pins both ways.
    let (laptop, laptop_fp) = client_dir();
    server.cli(&["trust", "add", "laptop", &laptop_fp]);
    let (_, server_fp) = id(&server.data_dir);
    periwire_ok(laptop.path(), &["trust", "add", "192.0.2.1", &server_fp]);
    let bin: PathBuf = env!("CARGO_BIN_EXE_periwire").into();
    let text = stdout_of_success(in_ns(
        &far,
        bin.to_str().unwrap(),
        &[
            "--data-dir",
            laptop.path().to_str().unwrap(),
            "list",
            "--tls",
            "--json",
            "-r",
            &format!("192.0.2.1:{port}"),
        ],
    ));
    let rows: serde_json::Value = serde_json::from_str(&text).expect("list --json");
    let busids: Vec<&str> = (rows.as_array().expect("array").iter())
        .filter_map(|r| r["busid"].as_str())
        .collect();
    assert_eq!(
        busids,
        ["1-1", "1-2", "1-3"],
        "the trusted TLS client beyond loopback sees its devices:\n{text}"
    );
    server
        .log
        .wait_for(&["TLS client", "192.0.2.2:", "client=laptop"], WAIT);

    // usbredir is plain too: QEMU's usb-redir in `near` is served the keyboard (no allow
    // list) but not the disk (an allow list); from `far` it is served nothing.
    let usb_redir_qemu = |ns: &str, host: &str, busids: &[&str]| {
        let mut qemu = usb_guest_qemu(&["ip", "netns", "exec", ns]);
        qemu.args(["-monitor", "none"]);
        for (i, busid) in busids.iter().enumerate() {
            let port = server.usbredir_port(busid);
            qemu.arg("-chardev")
                .arg(format!("socket,id=r{i},host={host},port={port}"))
                .arg("-device")
                .arg(format!("usb-redir,chardev=r{i},bus=xhci.0"));
        }
        KillOnDrop(
            qemu.stdin(Stdio::null())
                .spawn()
                .expect("qemu-system-x86_64"),
        )
    };
    let _near_qemu = usb_redir_qemu(&near, "192.0.2.129", &["1-1", "1-3"]);
    let _far_qemu = usb_redir_qemu(&far, "192.0.2.1", &["1-2"]);
    server.log.wait_for(
        &["192.0.2.130:", "busid=1-1", "usbredir guest connected"],
        WAIT,
    );
    server.log.wait_for(
        &[
            "192.0.2.130:",
            "busid=1-3",
            "usbredir guest refused",
            "allow list",
        ],
        WAIT,
    );
    server.log.wait_for(
        &[
            "192.0.2.2:",
            "busid=1-2",
            "usbredir guest refused",
            "plain_allow",
        ],
        WAIT,
    );
    let served = |busid: &str| {
        let lines = server.log.lines();
        let connected = |l: &&String| l.contains("usbredir guest connected");
        let mut served = lines.iter().filter(connected);
        served.any(|l| l.contains(&format!("busid={busid}")))
    };
    assert!(
        !served("1-3") && !served("1-2"),
        "no usbredir session for a refused guest:\n{}",
        server.log.lines().join("\n")
    );
    drop(server);
    drop(namespaces);
}
