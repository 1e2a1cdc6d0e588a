//! DNS-SD discovery between two network namespaces the test creates, joined by a veth pair
//! (nothing can leave them): `periwire serve` in one announces `_usbip._tcp` with its key's
//! fingerprint, and `periwire list --discover --tls` in the other finds it over multicast DNS
//! and lists its devices from its announced address over mutual TLS (plain USB/IP from
//! there is refused). A server on loopback is not announced. The server's web page, beyond
//! loopback here, answers curl only with its token.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

mod common;
use common::{fingerprint, periwire_ok};

const CONFIG: &str = r#"
[[device]]
kind = "keyboard"
busid = "1-1"

[[device]]
kind = "mouse"
busid = "1-2"
"#;

/// Runs `ip ARGS`, failing the test if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (scripts/install-test-deps installs iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces, `a` at 10.201.0.1 and `b` at 10.201.0.2, on one veth link; deleted (with
/// whatever still runs in them) when dropped.
struct Pair {
    a: String,
    b: String,
    /// b's end of the link.
    vb: String,
}

impl Pair {
    fn new() -> Pair {
        let id = std::process::id();
        let (va, vb) = (
            format!("pwda{}", id % 100_000),
            format!("pwdb{}", id % 100_000),
        );
        let pair = Pair {
            a: format!("pwdisc-a-{id}"),
            b: format!("pwdisc-b-{id}"),
            vb: vb.clone(),
        };
        ip(&["netns", "add", &pair.a]);
        ip(&["netns", "add", &pair.b]);
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", &pair.a]);
        ip(&["link", "set", &vb, "netns", &pair.b]);
        for (ns, dev, addr) in [
            (&pair.a, &va, "10.201.0.1/24"),
            (&pair.b, &vb, "10.201.0.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    fn command(ns: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_periwire")]);
        c
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A process the test started, stopped with SIGTERM when dropped (a failing test too).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

/// `periwire serve` in namespace `ns` listening at `listen` (its page at `web`, or `off`),
/// once it is ready.
fn serve(ns: &str, dir: &std::path::Path, listen: &str, web: &str) -> Running {
    std::fs::write(dir.join("periwire.toml"), CONFIG).expect("config");
    let mut child = Pair::command(ns)
        .args(["serve", "--web", web, "--listen", listen, "--config"])
        .arg(dir.join("periwire.toml"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("periwire serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = lines
            .next()
            .expect("periwire serve printed its ready line")
            .expect("read");
        if line.starts_with("periwire: serving ") {
            break;
        }
    }
    // Keep reading its output, so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Running(child)
}

/// `periwire list --discover` in `ns` with `args`, as the client with data directory `dir`.
fn discover(ns: &str, dir: &std::path::Path, args: &[&str]) -> Output {
    let out = Pair::command(ns)
        .args(["list", "--discover", "--wait", "4", "--json", "--data-dir"])
        .arg(dir)
        .args(args)
        .output()
        .expect("periwire list --discover");
    assert!(
        out.status.success(),
        "list --discover: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// curl in `ns` (someone else's HTTP client): the status code and the body.
fn curl(ns: &str, args: &[&str]) -> (String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sS", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl (scripts/install-test-deps installs it)");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.to_owned(), body.to_owned())
}

#[test]
fn a_server_in_another_namespace_is_discovered_with_its_devices() {
    let pair = Pair::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(&pair.a, dir.path(), "10.201.0.1:3240", "10.201.0.1:3280");
    let server_data = dir.path().join("data");
    let client_data = dir.path().join("client");
    // Each side trusts the other's key: the server by name (`trust add`), the client on
    // first sight (--trust-new), checked below against the announced fingerprint.
    let server_key = fingerprint(&server_data);
    let client_key = fingerprint(&client_data);
    periwire_ok(&server_data, &["trust", "add", "desk-client", &client_key]);

    // Wireshark listens on b's side of the link meanwhile: a dissector someone else wrote
    // must read the DNS-SD exchange as well-formed.
    let capture = dir.path().join("mdns.pcap");
    let mut tshark = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.b,
            "tshark",
            "-q",
            "-i",
            &pair.vb,
            "-f",
            "udp port 5353",
            "-w",
        ])
        .arg(&capture)
        .stderr(Stdio::piped())
        .spawn()
        .expect("tshark (scripts/install-test-deps installs it)");
    let mut tshark_err = BufReader::new(tshark.stderr.take().expect("stderr")).lines();
    // It says "Capturing on ..." once the capture runs.
    loop {
        let line = tshark_err.next().expect("tshark started").expect("read");
        if line.contains("Capturing on") {
            break;
        }
    }
    let out = discover(&pair.b, &client_data, &["--tls", "--trust-new"]);
    stop(&mut tshark);
    let found: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let servers = found.as_array().expect("array");
    assert_eq!(servers.len(), 1, "one server on the link: {found}");
    let s = &servers[0];
    assert_eq!(s["address"], "10.201.0.1:3240", "{s}");
    assert_eq!(s["txt"]["version"], env!("CARGO_PKG_VERSION"), "{s}");
    assert_eq!(s["txt"]["fingerprint"], server_key.as_str(), "{s}");
    let pinned = periwire_ok(&client_data, &["trust", "list"]);
    assert!(
        pinned.contains("10.201.0.1") && pinned.contains(&server_key),
        "--trust-new pinned the key the TXT record announced: {pinned}"
    );
    assert!(
        s["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("periwire on ")),
        "{s}"
    );
    assert_eq!(s["error"], Value::Null, "{s}");
    let busids: Vec<&str> = s["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter_map(|d| d["busid"].as_str())
        .collect();
    assert_eq!(busids, ["1-1", "1-2"], "{s}");
    let read = |filter: &str, fields: &[&str]| {
        let mut c = Command::new("tshark");
        c.arg("-r")
            .arg(&capture)
            .args(["-Y", filter, "-T", "fields"]);
        for f in fields {
            c.args(["-e", f]);
        }
        let out = c.output().expect("tshark -r");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let answers = read("mdns", &["dns.ptr.domain_name", "dns.srv.port", "dns.a"]);
    assert!(
        answers.contains("._usbip._tcp.local")
            && answers.contains("3240")
            && answers.contains("10.201.0.1"),
        "Wireshark reads the PTR, SRV and A answers:\n{answers}"
    );
    let malformed = read("_ws.malformed", &["frame.number"]);
    assert_eq!(
        malformed.trim(),
        "",
        "no malformed mDNS packets:\n{answers}"
    );

    // Plain USB/IP from beyond loopback is refused: found, but not listed.
    let out = discover(&pair.b, &client_data, &[]);
    let found: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let s = &found[0];
    assert_eq!(s["address"], "10.201.0.1:3240", "{found}");
    assert!(s["error"].is_string(), "plain listing refused: {s}");
    assert_eq!(s["devices"], Value::Array(Vec::new()), "{s}");

    // The page beyond loopback: nothing without the token, everything with it.
    let token = std::fs::read_to_string(server_data.join("web-token")).expect("web-token");
    let token = token.trim();
    let api = "http://10.201.0.1:3280/api/devices";
    let (code, body) = curl(&pair.b, &[api]);
    assert_eq!(code, "401", "{body}");
    assert!(body.contains("token"), "the refusal says why: {body}");
    let (code, body) = curl(
        &pair.b,
        &["-H", &format!("Authorization: Bearer {token}x"), api],
    );
    assert_eq!(code, "401", "a wrong token: {body}");
    let (code, body) = curl(
        &pair.b,
        &["-H", &format!("Authorization: Bearer {token}"), api],
    );
    assert_eq!(code, "200", "{body}");
    let devices: Value = serde_json::from_str(&body).expect("devices JSON");
    assert_eq!(devices.as_array().map(Vec::len), Some(2), "{devices}");
    // A browser opens /?token=..., keeps the cookie it is given, and needs no more.
    let jar = dir.path().join("cookies");
    let jar = jar.to_str().expect("path");
    let page = format!("http://10.201.0.1:3280/?token={token}");
    let (code, body) = curl(&pair.b, &["-L", "-c", jar, &page]);
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("<html"), "the page: {body}");
    let (code, body) = curl(&pair.b, &["-b", jar, "http://10.201.0.1:3280/metrics"]);
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("periwire_devices 2"), "{body}");
    drop(server);

    // On loopback it is not announced (nobody else could reach it).
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(&pair.a, dir.path(), "127.0.0.1:3240", "off");
    let out = discover(&pair.b, &client_data, &[]);
    let found: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        found,
        Value::Array(Vec::new()),
        "a loopback server stays quiet"
    );
    drop(server);
    drop(pair);
}

/// Stops a server with SIGTERM, as a user would, so it withdraws its announcement.
fn stop(server: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();
}
