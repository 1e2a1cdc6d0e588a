//! The web page in headless Chromium, driven through the DevTools protocol: it shows every
//! demo device; its unbind button withdraws a device from the stock `usbip list -r` and its
//! bind button brings it back; a Linux guest attaching the disk with the stock `usbip attach`
//! makes the page show it attached, with the client and the bytes it read, without a reload
//! (the server-sent events). And the API: `/api/devices` answers what `periwire status --json`
//! does, `/metrics` the same counts in the Prometheus text format, and a malformed POST a 4xx
//! with a message.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{prepare_fat_disk, Server, ALL_DEVICES, GUEST_WAIT_HELPERS, STEP};
use periwire_guest::{Guest, GuestConfig};
use serde_json::{json, Value};

/// The kinds of the demo set of `periwire serve --demo`: keyboard, mouse, disk and serial
/// port, and a virtual Bluetooth dongle.
fn demo_config() -> String {
    format!(
        "{ALL_DEVICES}\n[[adapter]]\nname = \"periwire-demo\"\ntransport = \"usb\"\nbusid = \"1-5\"\n"
    )
}

const DEMO_BUSIDS: [&str; 5] = ["1-1", "1-2", "1-3", "1-4", "1-5"];

/// One HTTP/1.1 request to 127.0.0.1:`port`; the status and the body.
fn http(port: u16, method: &str, path: &str, body: Option<(&str, &str)>) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(STEP)).expect("timeout");
    let (content_type, body) = body.unwrap_or(("", ""));
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if !content_type.is_empty() {
        request.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).expect("send");
    // Read until the body is complete: Content-Length when given (Chromium's DevTools server
    // keeps the connection open), else the end of the stream.
    let mut response = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|n| n.trim().parse::<usize>().ok());
            if length.is_some_and(|n| response.len() >= end + 4 + n) {
                break;
            }
        }
        match stream.read(&mut buf).expect("read") {
            0 => break,
            n => response.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        status,
        if chunked {
            unchunk(body)
        } else {
            body.to_owned()
        },
    )
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

fn get_json(port: u16, path: &str) -> Value {
    let (status, body) = http(port, "GET", path, None);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// The stock `usbip list -r` of the server.
fn usbip_list(server: &Server) -> String {
    let out = Command::new("usbip")
        .args([
            "--tcp-port",
            &server.port.to_string(),
            "list",
            "-r",
            "127.0.0.1",
        ])
        .output()
        .expect("run usbip (scripts/install-test-deps installs it)");
    assert!(out.status.success(), "usbip list -r: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lists(text: &str, busid: &str) -> bool {
    text.lines()
        .any(|l| l.trim_start().starts_with(&format!("{busid}: ")))
}

/// Headless Chromium with the page open, and a DevTools connection to the page.
struct Browser {
    child: Child,
    page: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--window-size=1200,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start chromium (scripts/install-test-deps installs it)");
        // Chromium says where its DevTools endpoint listens on stderr.
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("ws://") {
                    let _ = tx.send(line[at..].trim().to_owned());
                }
            }
        });
        let browser_ws = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("chromium's DevTools listening line");
        let devtools_port: u16 = browser_ws["ws://127.0.0.1:".len()..]
            .split('/')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("DevTools address in {browser_ws}"));
        let targets = get_json(devtools_port, "/json/list");
        let page_ws = targets
            .as_array()
            .and_then(|t| {
                t.iter()
                    .find(|t| t["type"] == "page" && t["url"] == "about:blank")
            })
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap_or_else(|| panic!("a page target for {url}: {targets}"))
            .to_owned();
        let (page, _) = tungstenite::connect(page_ws.as_str()).expect("DevTools connection");
        let mut browser = Browser {
            child,
            page,
            next_id: 1,
            _profile: profile,
        };
        // Navigate with page events on, and wait for the load event: scripts run only in the
        // document that results.
        browser.call("Page.enable", json!({}));
        browser.call("Page.navigate", json!({ "url": url }));
        browser.until(|m| m["method"] == "Page.loadEventFired");
        browser
    }

    /// Sends a DevTools command and returns its reply's `result`.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let call = json!({ "id": id, "method": method, "params": params });
        self.page
            .send(tungstenite::Message::text(call.to_string()))
            .expect("DevTools send");
        let reply = self.until(|m| m["id"] == id);
        if let Some(e) = reply.get("error") {
            panic!("{method} {params}\nDevTools refused it: {e}");
        }
        reply["result"].clone()
    }

    /// Reads DevTools messages until one that `wanted` picks.
    fn until(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        loop {
            let message = self.page.read().expect("DevTools read");
            let Ok(text) = message.to_text() else {
                continue;
            };
            let Ok(message) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            if wanted(&message) {
                return message;
            }
        }
    }

    /// Evaluates `expression` in the page (awaiting it if it is a promise) and returns its
    /// value; a JavaScript exception fails the test.
    fn eval(&mut self, expression: &str) -> Value {
        let params =
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true });
        let result = self.call("Runtime.evaluate", params);
        if let Some(e) = result.get("exceptionDetails") {
            panic!("{expression}\nthrew {e}");
        }
        result["result"]["value"].clone()
    }

    /// Waits, in the page, until the JavaScript condition `cond` holds: checked at once and
    /// on every change of the page's DOM (so no polling), failing after `STEP`.
    fn wait_for(&mut self, what: &str, cond: &str) {
        let script = format!(
            r#"new Promise((resolve, reject) => {{
                const cond = () => {{ try {{ return !!({cond}); }} catch (e) {{ return false; }} }};
                if (cond()) return resolve(true);
                const seen = new MutationObserver(() => {{ if (cond()) {{ seen.disconnect(); resolve(true); }} }});
                seen.observe(document, {{ subtree: true, childList: true, characterData: true, attributes: true }});
                setTimeout(() => {{ seen.disconnect(); reject(new Error("timed out: " + {what:?} + "\n" + document.body.innerText)); }}, {ms});
            }})"#,
            ms = STEP.as_millis()
        );
        assert_eq!(self.eval(&script), Value::Bool(true), "{what}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text of row `busid` of the page's table `table`, as a JavaScript expression.
fn row_text(table: &str, busid: &str) -> String {
    format!("document.querySelector('#{table} tr[data-busid=\"{busid}\"]').innerText")
}

#[test]
fn page_shows_devices_binds_and_unbinds_and_follows_an_attach_live() {
    let server = Server::start(&demo_config(), prepare_fat_disk);
    let url = format!("http://127.0.0.1:{}/", server.web_port);
    let mut browser = Browser::open(&url);

    // Every demo device, shared.
    browser.wait_for(
        "every demo device on the page",
        &DEMO_BUSIDS
            .map(|b| format!("{}.includes('shared')", row_text("devices", b)))
            .join(" && "),
    );
    let text = browser.eval("document.querySelector('#devices').innerText");
    for name in ["kbd", "mouse", "1-3", "1-4", "periwire-demo"] {
        assert!(
            text.as_str().is_some_and(|t| t.contains(name)),
            "{name} on the page: {text}"
        );
    }
    browser.wait_for(
        "the demo Bluetooth adapter",
        "document.querySelector('#adapters').innerText.includes('periwire-demo')",
    );
    // A mark that a reload would wipe: the page must never reload below.
    browser.eval("window.stayed = true");

    // Unbind on the page: the mouse leaves the stock client's list.
    assert!(lists(&usbip_list(&server), "1-2"));
    browser.eval("document.querySelector('[data-testid=\"unbind-1-2\"]').click()");
    browser.wait_for(
        "the mouse shown not shared",
        &format!("{}.includes('not shared')", row_text("devices", "1-2")),
    );
    let listed = usbip_list(&server);
    assert!(
        !lists(&listed, "1-2"),
        "unbound on the page, gone from usbip list -r:\n{listed}"
    );
    assert!(lists(&listed, "1-1"), "{listed}");
    // Bind on the page: back in the list.
    browser.eval("document.querySelector('[data-testid=\"bind-1-2\"]').click()");
    browser.wait_for(
        "the mouse shown shared again",
        &format!(
            "{t}.includes('shared') && !{t}.includes('not shared')",
            t = row_text("devices", "1-2")
        ),
    );
    assert!(
        lists(&usbip_list(&server), "1-2"),
        "bound again on the page"
    );

    // A malformed POST: a 4xx with a message, and nothing changes.
    for (body, content_type, want) in [
        ("{\"busid\":", "application/json", 400),
        (
            "{\"busid\":\"1-1\",\"hardware_id\":\"46f4:0001\"}",
            "application/json",
            400,
        ),
        ("{\"busid\":\"../x\"}", "application/json", 400),
        ("{\"busid\":\"1-1\"}", "text/plain", 415),
    ] {
        let (status, answer) = http(
            server.web_port,
            "POST",
            "/api/unbind",
            Some((content_type, body)),
        );
        assert_eq!(status, want, "{body}: {answer}");
        let error: Value = serde_json::from_str(&answer).expect("a JSON error");
        assert!(
            error["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
    }
    assert!(
        lists(&usbip_list(&server), "1-1"),
        "a refused request changes nothing"
    );

    // A guest attaches the disk with the stock usbip and reads 2 MiB: the page shows it
    // attached, who has it and what it read, from the events alone.
    let mut guest = Guest::boot(
        GuestConfig::new(
            r#"
            usbip attach -r "$PERIWIRE_SERVER" -b 1-3
            wait_for /dev/sda 60
            dd if=/dev/sda of=/dev/null bs=64k count=32 2>/dev/null
            mark READ
            read -r _
            usbip detach -p 0
            mark DETACHED
            "#,
        )
        .modules(["vhci-hcd", "usb-storage", "sd_mod"])
        .server_port(server.port),
    )
    .expect("boot");
    guest
        .expect_line("READ", STEP)
        .expect("the guest read the disk");
    browser.wait_for(
        "the disk shown attached to the guest's connection, with the bytes it read",
        &format!(
            "{t}.includes('attached') && {t}.includes('127.0.0.1:') && /^[2-9]\\.\\d MiB$/.test({bytes_in})",
            t = row_text("devices", "1-3"),
            bytes_in = "document.querySelector('#devices tr[data-busid=\"1-3\"]').cells[6].innerText"
        ),
    );
    assert_eq!(
        browser.eval("window.stayed === true"),
        Value::Bool(true),
        "no reload"
    );

    // The API answers what the CLI shows.
    let api = get_json(server.web_port, "/api/devices");
    let cli: Value =
        serde_json::from_slice(&server.cli(&["status", "--json"]).stdout).expect("status --json");
    let strip = |v: &Value| {
        // The counters move while the guest's kernel polls the disk; the rest must agree.
        let mut v = v.clone();
        for d in v.as_array_mut().expect("array") {
            d.as_object_mut().expect("object").remove("totals");
            if let Some(c) = d["client"].as_object_mut() {
                c.remove("bytes_in");
                c.remove("bytes_out");
                c.remove("urbs");
            }
        }
        v
    };
    assert_eq!(strip(&api), strip(&cli), "/api/devices is status --json");
    let disk = api
        .as_array()
        .and_then(|a| a.iter().find(|d| d["busid"] == "1-3"))
        .expect("the disk in /api/devices");
    assert_eq!(disk["state"], "attached", "{disk}");
    let (status, metrics) = http(server.web_port, "GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(metrics.contains("\nperiwire_devices 5\n"), "{metrics}");
    assert!(
        metrics.contains("periwire_device_attached{busid=\"1-3\",name=\"1-3\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("periwire_imports_total{busid=\"1-3\",name=\"1-3\"} 1"),
        "{metrics}"
    );
    let bytes_in: u64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("periwire_bytes_total{busid=\"1-3\",name=\"1-3\",direction=\"in\"}")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("disk bytes in: {metrics}"));
    assert!(
        bytes_in >= 2 * 1024 * 1024,
        "the 2 MiB read is counted: {bytes_in}"
    );
    assert!(
        metrics.contains("# TYPE periwire_connections_total counter"),
        "{metrics}"
    );

    // Detached: the page shows the disk shared again.
    guest.send_line("detach").expect("tell the guest");
    guest.expect_line("DETACHED", STEP).expect("detached");
    browser.wait_for(
        "the disk shown shared after the detach",
        &format!("!{}.includes('attached')", row_text("devices", "1-3")),
    );
    guest.wait_success(STEP).expect("scenario");
}

/// One GET to 127.0.0.1:`port`: the whole answer.
fn http_get(port: u16, target: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    answer
}

/// A free port on the host's loopback, for QEMU to forward from.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The client's view: `periwire ui --remote` runs in a Linux guest with vhci-hcd, showing the
/// host server's devices; Chromium on the host (through a forwarded port) clicks Attach, the
/// guest's kernel gets the disk through vhci-hcd and the page lists its port; Detach gives it
/// back. Listening beyond the guest's loopback, the page wants its token: nothing without
/// it, and Chromium opens `/?token=...` once and carries on with the cookie it is given.
#[test]
fn client_page_attaches_and_detaches_a_remote_device_with_a_click() {
    let server = Server::start(&demo_config(), prepare_fat_disk);
    let web = free_port();
    let mut guest = Guest::boot(common::with_periwire(
        GuestConfig::new(format!(
            r#"{GUEST_WAIT_HELPERS}
                periwire --data-dir /tmp/ui ui --remote "$PERIWIRE_SERVER" --web 0.0.0.0:3280 \
                    >/tmp/ui.log 2>&1 &
                # Its last line before it serves: the listener is bound, the token made.
                wait_until 60 "periwire ui to listen" \
                    grep -q "token=TOKEN with the token in /tmp/ui/web-token" /tmp/ui.log
                mark TOKEN $(cat /tmp/ui/web-token)
                mark UI-UP
                wait_for /dev/sda 120
                mark ATTACHED $(cat /sys/block/sda/device/vendor 2>/dev/null)
                wait_until 120 "the disk to go away" sh -c '! [ -e /dev/sda ]'
                mark DETACHED
                # The page must see it too before periwire ui goes down with the guest.
                read -r _
                "#
        ))
        .modules(["vhci-hcd", "usb-storage", "sd_mod"])
        .server_port(server.port)
        .expose(3280, web),
    ))
    .expect("boot");
    let token = guest.expect_line("TOKEN ", STEP).expect("the page's token");
    let token = token.trim_start_matches("TOKEN ").trim().to_owned();
    guest.expect_line("UI-UP", STEP).expect("periwire ui runs");
    let refused = http_get(web, "/api/ports");
    assert!(
        refused.starts_with("HTTP/1.1 401") && refused.contains("needs its token"),
        "no token, no API: {refused}"
    );
    let mut browser = Browser::open(&format!("http://127.0.0.1:{web}/?token={token}"));
    browser.wait_for(
        "the server's devices, each with an Attach button",
        &DEMO_BUSIDS
            .map(|b| format!("!!document.querySelector('[data-testid=\"attach-{b}\"]')"))
            .join(" && "),
    );
    let remote = browser.eval("document.querySelector('#remote').innerText");
    assert!(
        remote
            .as_str()
            .is_some_and(|t| t.contains("Mass Storage") && t.contains("Human Interface Device")),
        "class names from the USB ID database: {remote}"
    );
    browser.eval("document.querySelector('[data-testid=\"attach-1-3\"]').click()");
    guest
        .expect_line("ATTACHED", STEP)
        .expect("the disk attached in the guest");
    browser.wait_for(
        "the vhci port of the disk",
        "document.querySelector('#ports tr[data-busid=\"1-3\"]') !== null",
    );
    assert!(server.imported("1-3"), "the server has the disk imported");
    let port =
        browser.eval("document.querySelector('#ports tr[data-busid=\"1-3\"]').cells[0].innerText");
    let port = port.as_str().expect("port number").to_owned();
    browser.eval(&format!(
        "document.querySelector('[data-testid=\"detach-{port}\"]').click()"
    ));
    guest
        .expect_line("DETACHED", STEP)
        .expect("the disk detached in the guest");
    browser.wait_for(
        "no vhci port in use",
        "document.querySelector('#ports').innerText.includes('nothing attached')",
    );
    guest.send_line("seen").expect("console");
    guest.wait_success(STEP).expect("scenario");
}
