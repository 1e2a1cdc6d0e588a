//! periwire's emulated controllers driven by Bumble (PyPI `bumble`), a complete Bluetooth host
//! stack nobody on this project wrote. Bumble is installed with pip when missing.
//!
//! Each test starts an [`H4Server`] on the loopback interface (or a Unix socket) and runs a
//! Bumble program against it; the programs print markers and the tests check them after the
//! program exits. Nothing waits on a sleep.

use std::path::Path;
use std::process::Stdio;
use std::sync::Once;
use std::time::Duration;

use periwire_bt::{AdapterPlan, BdAddr, H4Server, Medium, SharedRadio};
use tokio::process::Command;

const BASE: &str = "00:50:57:AA:00:00";

/// Installs Bumble with pip if `import bumble` fails, so the tests run on a fresh machine.
/// nextest runs each test in its own process: `flock` keeps two of them from running pip at
/// the same time.
fn ensure_bumble() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let present = || {
            std::process::Command::new("python3")
                .args(["-c", "import bumble"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if present() {
            return;
        }
        let install =
            "python3 -c 'import bumble' 2>/dev/null || python3 -m pip install --quiet bumble";
        let lock = std::env::temp_dir().join("periwire-bumble-install.lock");
        let locked = std::process::Command::new("flock")
            .arg(&lock)
            .args(["sh", "-c", install])
            .status();
        let st = match locked {
            Ok(st) => st,
            Err(_) => std::process::Command::new("sh")
                .args(["-c", install])
                .status()
                .expect("run pip"),
        };
        assert!(st.success() && present(), "pip install bumble failed");
    });
}

async fn tcp_server() -> (SharedRadio, u16) {
    let radio = SharedRadio::new();
    let plan = AdapterPlan::new(BdAddr::parse_str(BASE).unwrap(), "periwire-test");
    let server = H4Server::bind_tcp(
        "127.0.0.1:0".parse().unwrap(),
        Medium::Simulated(radio.clone()),
        plan,
    )
    .await
    .expect("bind");
    let port = server.local_addr().unwrap().port();
    tokio::spawn(server.run());
    (radio, port)
}

/// Runs `python3 args...`, fails the test on a non-zero exit or a timeout, returns stdout.
async fn python(args: &[&str], timeout: Duration) -> String {
    let child = Command::new("python3")
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn python3");
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("python3 {args:?} timed out"))
        .expect("wait for python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python3 {args:?} failed: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    stdout
}

fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/bumble")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn marker<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} marker in:\n{out}"))
        .trim()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bumble_controller_info_brings_the_adapter_up() {
    ensure_bumble();
    let (_radio, port) = tcp_server().await;
    let transport = format!("tcp-client:127.0.0.1:{port}");
    let out = python(
        &[
            "-m",
            "bumble.apps.controller_info",
            "--latency-probes",
            "20",
            &transport,
        ],
        Duration::from_secs(120),
    )
    .await;
    assert!(out.contains("Public Address:"), "{out}");
    assert!(out.contains(BASE), "address missing:\n{out}");
    assert!(out.contains("periwire-test"), "local name missing:\n{out}");
    assert!(out.contains("HCI_LE_CREATE_CONNECTION_COMMAND"), "{out}");
    assert!(out.contains("HCI Command Latency"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bumble_over_a_unix_socket() {
    ensure_bumble();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hci.sock");
    let radio = SharedRadio::new();
    let plan = AdapterPlan::new(BdAddr::parse_str("00:50:57:BB:00:00").unwrap(), "unix");
    let server = H4Server::bind_unix(&path, Medium::Simulated(radio.clone()), plan).unwrap();
    tokio::spawn(server.run());
    let transport = format!("unix:{}", path.display());
    let out = python(
        &["-m", "bumble.apps.controller_info", &transport],
        Duration::from_secs(120),
    )
    .await;
    assert!(out.contains("00:50:57:BB:00:00"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bumble_hosts_exchange_data_over_le_coc() {
    ensure_bumble();
    let (radio, port) = tcp_server().await;
    let transport = format!("tcp-client:127.0.0.1:{port}");
    let size = 256 * 1024;
    let out = python(
        &[
            &script("le_coc.py"),
            &transport,
            &transport,
            &size.to_string(),
        ],
        Duration::from_secs(180),
    )
    .await;
    eprintln!("{out}");
    let powered = marker(&out, "POWERED");
    assert!(powered.contains("00:50:57:AA:00:00") && powered.contains("00:50:57:AA:00:01"));
    assert_eq!(marker(&out, "FOUND"), "F0:F1:F2:F3:F4:01");
    let received = marker(&out, "RECEIVED");
    assert!(received.starts_with(&size.to_string()), "{received}");
    marker(&out, "ECHOED");
    marker(&out, "PASS");
    // The hosts have gone: once the server has read their EOFs, their adapters are detached.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !radio.adapters().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            radio.adapters()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bumble_hosts_discover_pair_and_exchange_data_over_bredr() {
    ensure_bumble();
    let (_radio, port) = tcp_server().await;
    let transport = format!("tcp-client:127.0.0.1:{port}");
    let size = 100_000;
    let out = python(
        &[
            &script("classic.py"),
            &transport,
            &transport,
            &size.to_string(),
        ],
        Duration::from_secs(180),
    )
    .await;
    eprintln!("{out}");
    assert!(marker(&out, "FOUND").starts_with("00:50:57:AA:00:01"));
    assert_eq!(marker(&out, "NAME"), "pw-classic-b");
    marker(&out, "AUTHENTICATED");
    assert_eq!(marker(&out, "ENCRYPTED"), "True");
    assert_eq!(marker(&out, "LINK_KEY").len(), 32);
    assert_eq!(marker(&out, "RECEIVED"), size.to_string());
    marker(&out, "ECHOED");
    marker(&out, "PASS");
}
