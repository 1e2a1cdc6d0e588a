//! The web page and its API (axum, on the server's tokio).
//!
//! Two modes share one page: beside `periwire serve` it shows the server's devices, this
//! machine's USB devices, the clients and the Bluetooth adapters, with bind and unbind
//! buttons; `periwire ui --remote HOST` shows what a remote server offers and this
//! machine's vhci ports, with attach and detach buttons. The page is one static file compiled
//! into the binary; it follows the state through server-sent events (`GET /api/events`).
//!
//! API: `GET /api/devices` (the objects of `periwire status --json`), `GET /api/local`,
//! `GET /api/adapters`, `GET /api/state` (all of it, what each event carries),
//! `POST /api/bind` and `POST /api/unbind` (JSON bodies as the control socket takes them),
//! in client mode `GET /api/remote`, `GET /api/ports`, `POST /api/attach {"busid"}` and
//! `POST /api/detach {"port"}`; and `GET /metrics` in the Prometheus text format.
//!
//! A POST must be `application/json`, which a page of another origin cannot send without the
//! CORS preflight this server never grants; and on loopback, the `Host` header must name
//! loopback, so that a DNS-rebound name cannot reach the API either. A page listening beyond
//! loopback asks every request for its token ([`WebToken`]): `Authorization: Bearer TOKEN`,
//! or the cookie that opening `/?token=TOKEN` sets (`HttpOnly`, `SameSite=Strict`).

mod token;

pub use token::WebToken;

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::control::{
    AdapterStatus, BindRequest, ControlRequest, ControlResponse, ControlState, UnbindRequest,
};
use crate::devices::{DeviceStatus, LocalDevice};
use crate::listing::RemoteDevice;
use periwire_vhci::Transport;

/// The page.
const INDEX_HTML: &str = include_str!("web/index.html");
/// How often the page is sent the state when nothing else changed: the throughput figures
/// move even when no device comes or goes.
const TICK: Duration = Duration::from_secs(1);
/// Longest wait for a remote server's device list in client mode.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest request body accepted.
const MAX_BODY: usize = 16 * 1024;

/// Where the default web listener goes.
pub const DEFAULT_WEB: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 3280);

/// What a page serves.
#[derive(Clone)]
pub enum Mode {
    /// Beside `periwire serve`.
    Server(Arc<ControlState>),
    /// `periwire ui --remote HOST`: the client's view of a remote server.
    Client {
        /// The server, HOST or HOST:PORT.
        remote: String,
        /// How its devices are listed and imported.
        transport: Transport,
    },
}

#[derive(Clone)]
struct App {
    mode: Mode,
    /// The listener's address: a loopback listener accepts only loopback `Host` names.
    listen: SocketAddr,
    /// What every request must present, for a listener beyond loopback.
    token: Option<WebToken>,
}

/// The token a page listening at `listen` asks for: none on loopback, else the one in
/// `data_dir` (made on first use).
pub fn token_for(
    listen: SocketAddr,
    data_dir: &std::path::Path,
) -> Result<Option<WebToken>, token::TokenError> {
    if listen.ip().is_loopback() {
        return Ok(None);
    }
    WebToken::load_or_create(data_dir).map(Some)
}

/// What `GET /api/state` answers and each event carries.
#[derive(Debug, Serialize, Deserialize)]
pub struct PageState {
    /// `server` or `client`.
    pub mode: String,
    /// The server's devices (server mode).
    pub devices: Vec<DeviceStatus>,
    /// This machine's USB devices (server mode).
    pub local: Vec<LocalDevice>,
    /// The Bluetooth adapters (server mode).
    pub adapters: Vec<AdapterStatus>,
    /// Connections the server accepted so far (server mode).
    pub connections: u64,
    /// The remote server (client mode).
    pub remote: Option<RemoteView>,
    /// This machine's vhci ports in use (client mode).
    pub ports: Vec<serde_json::Value>,
}

/// A remote server as client mode shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct RemoteView {
    /// HOST:PORT.
    pub address: String,
    /// What it offers.
    pub devices: Vec<RemoteDevice>,
    /// Why it could not be listed, if it could not.
    pub error: Option<String>,
}

/// A failed request: its status and a JSON `{"error": ...}` body.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

/// Serves the page on `listener` until the task is dropped; with `token`, only to requests
/// that present it.
pub async fn serve(
    listener: tokio::net::TcpListener,
    mode: Mode,
    token: Option<WebToken>,
) -> std::io::Result<()> {
    let listen = listener.local_addr()?;
    let app = App {
        mode,
        listen,
        token,
    };
    let router = Router::new()
        .route("/", get(index))
        .route("/api/state", get(state))
        .route("/api/devices", get(devices))
        .route("/api/local", get(local))
        .route("/api/adapters", get(adapters))
        .route("/api/events", get(events))
        .route("/api/bind", post(bind))
        .route("/api/unbind", post(unbind))
        .route("/api/remote", get(remote))
        .route("/api/ports", get(ports))
        .route("/api/attach", post(attach))
        .route("/api/detach", post(detach))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            check_access,
        ))
        .with_state(app);
    axum::serve(listener, router).await
}

/// How a request showed the token.
#[derive(Debug, PartialEq, Eq)]
enum Presented {
    /// `Authorization: Bearer` or the page's cookie.
    Kept,
    /// `?token=` in the URL: the page is given the cookie.
    InUrl,
}

/// Name of the page's cookie: per port, as cookies are shared by every port of a host.
fn cookie_name(listen: SocketAddr) -> String {
    format!("periwire_token_{}", listen.port())
}

/// How `request` presented `token`, if it did.
fn presented(
    request: &axum::extract::Request,
    token: &WebToken,
    cookie: &str,
) -> Option<Presented> {
    let headers = request.headers();
    let bearer = (headers.get_all(header::AUTHORIZATION).iter())
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.strip_prefix("Bearer "));
    let cookies = (headers.get_all(header::COOKIE).iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(name, _)| *name == cookie)
        .map(|(_, value)| value);
    if bearer.chain(cookies).any(|t| token.matches(t.trim())) {
        return Some(Presented::Kept);
    }
    let query = request.uri().query().unwrap_or("");
    (query.split('&'))
        .filter_map(|p| p.strip_prefix("token="))
        .any(|t| token.matches(t))
        .then_some(Presented::InUrl)
}

/// Refuses a request to a loopback listener whose `Host` is not a loopback name, and one to
/// a listener beyond loopback that does not present the token.
async fn check_access(
    State(app): State<App>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(token) = &app.token {
        let cookie = cookie_name(app.listen);
        match presented(&request, token, &cookie) {
            Some(Presented::Kept) => {}
            Some(Presented::InUrl) if request.uri().path() == "/" => {
                // The page keeps the token as a cookie, and the URL bar loses it.
                let set = format!(
                    "{cookie}={}; HttpOnly; SameSite=Strict; Path=/",
                    token.secret()
                );
                return (
                    StatusCode::SEE_OTHER,
                    [
                        (header::SET_COOKIE, set),
                        (header::LOCATION, "/".to_owned()),
                    ],
                )
                    .into_response();
            }
            Some(Presented::InUrl) => {}
            None => {
                let message = format!(
                    "this page listens beyond loopback and needs its token (in {} of the \
                     machine it runs on): open /?token=TOKEN, or send Authorization: Bearer TOKEN",
                    token.path.display()
                );
                return ApiError(StatusCode::UNAUTHORIZED, message).into_response();
            }
        }
    }
    if app.listen.ip().is_loopback() {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let name = host.rsplit_once(':').map_or(host, |(n, _)| n);
        if !matches!(name, "127.0.0.1" | "localhost" | "[::1]") {
            return ApiError(
                StatusCode::FORBIDDEN,
                format!("host {host:?} is not this loopback listener"),
            )
            .into_response();
        }
    }
    next.run(request).await
}

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

fn server(app: &App) -> Result<&Arc<ControlState>, ApiError> {
    match &app.mode {
        Mode::Server(control) => Ok(control),
        Mode::Client { .. } => Err(ApiError(
            StatusCode::NOT_FOUND,
            "this page is a client's view: no server runs here".into(),
        )),
    }
}

fn client(app: &App) -> Result<(&str, &Transport), ApiError> {
    match &app.mode {
        Mode::Client { remote, transport } => Ok((remote, transport)),
        Mode::Server(_) => Err(ApiError(
            StatusCode::NOT_FOUND,
            "this page is a server's: run `periwire ui --remote HOST` for the client's view".into(),
        )),
    }
}

async fn adapter_list(control: &ControlState) -> Vec<AdapterStatus> {
    match control.handle(ControlRequest::Adapters).await {
        ControlResponse::Adapters { adapters } => adapters,
        _ => Vec::new(),
    }
}

async fn remote_view(remote: &str, transport: &Transport) -> RemoteView {
    let tls = match transport {
        Transport::Plain => None,
        Transport::Tls(tls) => Some(tls),
    };
    let listed = tokio::time::timeout(REMOTE_TIMEOUT, crate::listing::remote_devices(remote, tls));
    match listed.await {
        Ok(Ok((address, devices))) => RemoteView {
            address,
            devices,
            error: None,
        },
        Ok(Err(e)) => RemoteView {
            address: remote.to_owned(),
            devices: Vec::new(),
            error: Some(e.to_string()),
        },
        Err(_) => RemoteView {
            address: remote.to_owned(),
            devices: Vec::new(),
            error: Some(format!("no answer within {REMOTE_TIMEOUT:?}")),
        },
    }
}

async fn page_state(app: &App) -> PageState {
    match &app.mode {
        Mode::Server(control) => PageState {
            mode: "server".into(),
            devices: control.manager.status(),
            local: control.manager.local(),
            adapters: adapter_list(control).await,
            connections: control.manager.registry().connections(),
            remote: None,
            ports: Vec::new(),
        },
        Mode::Client { remote, transport } => PageState {
            mode: "client".into(),
            devices: Vec::new(),
            local: Vec::new(),
            adapters: Vec::new(),
            connections: 0,
            remote: Some(remote_view(remote, transport).await),
            ports: crate::attach::port_rows().unwrap_or_default(),
        },
    }
}

async fn state(State(app): State<App>) -> Json<PageState> {
    Json(page_state(&app).await)
}

async fn devices(State(app): State<App>) -> Result<Json<Vec<DeviceStatus>>, ApiError> {
    Ok(Json(server(&app)?.manager.status()))
}

async fn local(State(app): State<App>) -> Result<Json<Vec<LocalDevice>>, ApiError> {
    Ok(Json(server(&app)?.manager.local()))
}

async fn adapters(State(app): State<App>) -> Result<Json<Vec<AdapterStatus>>, ApiError> {
    Ok(Json(adapter_list(server(&app)?).await))
}

async fn remote(State(app): State<App>) -> Result<Json<RemoteView>, ApiError> {
    let (remote, transport) = client(&app)?;
    Ok(Json(remote_view(remote, transport).await))
}

async fn ports(State(app): State<App>) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    client(&app)?;
    crate::attach::port_rows()
        .map(Json)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The state whenever a device comes, goes, is claimed or released, and every second.
async fn events(
    State(app): State<App>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let (registry, local) = match &app.mode {
        Mode::Server(c) => (
            Some(c.manager.registry().subscribe()),
            Some(c.manager.subscribe_local()),
        ),
        Mode::Client { .. } => (None, None),
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = (app, registry, local, tick);
    let stream = futures_util::stream::unfold(
        start,
        |(app, mut registry, mut local, mut tick)| async move {
            tokio::select! {
                () = changed(&mut registry) => {}
                () = changed(&mut local) => {}
                _ = tick.tick() => {}
            }
            let body = serde_json::to_string(&page_state(&app).await).unwrap_or_default();
            let event = Event::default().event("state").data(body);
            Some((Ok(event), (app, registry, local, tick)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Resolves when `rx` sees a new value; never for none (or a closed channel).
async fn changed(rx: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    if let Some(rx) = rx {
        if rx.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

/// The JSON body of a POST, refused unless it is `application/json` and valid.
fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .is_some_and(|c| {
            c.split(';')
                .next()
                .is_some_and(|t| t.trim() == "application/json")
        });
    if !json {
        return Err(ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the request as Content-Type: application/json".into(),
        ));
    }
    if body.len() > MAX_BODY {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request too large".into(),
        ));
    }
    serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid request: {e}")))
}

async fn act(
    control: &ControlState,
    request: ControlRequest,
) -> Result<Json<serde_json::Value>, ApiError> {
    match control.handle(request).await {
        ControlResponse::Done { message } => Ok(Json(json!({ "message": message }))),
        ControlResponse::Error { message } => Err(bad_request(message)),
        _ => Ok(Json(json!({ "message": "done" }))),
    }
}

async fn bind(
    State(app): State<App>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let control = server(&app)?;
    let request: BindRequest = json_body(&headers, &body)?;
    act(control, ControlRequest::Bind(request)).await
}

async fn unbind(
    State(app): State<App>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let control = server(&app)?;
    let request: UnbindRequest = json_body(&headers, &body)?;
    act(control, ControlRequest::Unbind(request)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachRequest {
    busid: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetachRequest {
    port: u32,
}

async fn attach(
    State(app): State<App>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (remote, transport) = client(&app)?;
    let request: AttachRequest = json_body(&headers, &body)?;
    let port = crate::attach::attach_once(remote, &request.busid, transport)
        .await
        .map_err(|e| bad_request(e.to_string()))?;
    Ok(Json(
        json!({ "message": format!("attached {} on port {port}", request.busid), "port": port }),
    ))
}

async fn detach(
    State(app): State<App>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    client(&app)?;
    let request: DetachRequest = json_body(&headers, &body)?;
    periwire_vhci::Vhci::system()
        .detach(request.port)
        .map_err(|e| bad_request(e.to_string()))?;
    Ok(Json(
        json!({ "message": format!("detached port {}", request.port) }),
    ))
}

/// A Prometheus label value: backslash, quote and line feed escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics text of a server's devices.
pub fn metrics_text(devices: &[DeviceStatus], connections: u64) -> String {
    let mut out = String::new();
    let mut family =
        |name: &str, kind: &str, help: &str, samples: &mut dyn Iterator<Item = (String, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
    let shared: Vec<&DeviceStatus> = devices
        .iter()
        .filter(|d| d.state != crate::devices::DeviceState::NotShared)
        .collect();
    family(
        "periwire_devices",
        "gauge",
        "Devices in the server's device list.",
        &mut std::iter::once((String::new(), shared.len() as u64)),
    );
    let labels =
        |d: &DeviceStatus| format!("busid=\"{}\",name=\"{}\"", label(&d.busid), label(&d.name));
    family(
        "periwire_device_attached",
        "gauge",
        "1 while a client holds the device.",
        &mut shared
            .iter()
            .map(|d| (format!("{{{}}}", labels(d)), u64::from(d.imported))),
    );
    family(
        "periwire_imports_total",
        "counter",
        "Imports granted, per device.",
        &mut devices
            .iter()
            .map(|d| (format!("{{{}}}", labels(d)), d.totals.imports)),
    );
    family(
        "periwire_urbs_total",
        "counter",
        "URBs completed, per device.",
        &mut devices
            .iter()
            .map(|d| (format!("{{{}}}", labels(d)), d.totals.urbs)),
    );
    family(
        "periwire_urb_errors_total",
        "counter",
        "URBs that completed with an error, per device.",
        &mut devices
            .iter()
            .map(|d| (format!("{{{}}}", labels(d)), d.totals.errors)),
    );
    family(
        "periwire_bytes_total",
        "counter",
        "Payload bytes moved, per device and direction (in: device to client).",
        &mut devices.iter().flat_map(|d| {
            [
                (
                    format!("{{{},direction=\"in\"}}", labels(d)),
                    d.totals.bytes_in,
                ),
                (
                    format!("{{{},direction=\"out\"}}", labels(d)),
                    d.totals.bytes_out,
                ),
            ]
        }),
    );
    family(
        "periwire_connections_total",
        "counter",
        "USB/IP connections accepted.",
        &mut std::iter::once((String::new(), connections)),
    );
    out
}

async fn metrics(State(app): State<App>) -> Result<Response, ApiError> {
    let control = server(&app)?;
    let text = metrics_text(
        &control.manager.status(),
        control.manager.registry().connections(),
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
    /// One HTTP/1.1 request to `addr`; the whole answer (the server closes after it).
    async fn get(addr: SocketAddr, target: &str, extra: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request =
            format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn a_page_with_a_token_serves_only_who_presents_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Mode::Client {
            remote: "127.0.0.1:1".into(),
            transport: Transport::Plain,
        };
        let secret = "ab".repeat(32);
        let token = WebToken::with_secret(&secret);
        tokio::spawn(serve(listener, mode, Some(token)));
        let cookie = cookie_name(addr);

        let refused = get(addr, "/", "").await;
        assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
        assert!(refused.contains("needs its token"), "{refused}");
        let wrong = get(
            addr,
            "/",
            &format!("Authorization: Bearer {}\r\n", "cd".repeat(32)),
        )
        .await;
        assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
        let wrong = get(addr, &format!("/?token={}", &secret[2..]), "").await;
        assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");

        let opened = get(addr, &format!("/?token={secret}"), "").await;
        assert!(opened.starts_with("HTTP/1.1 303"), "{opened}");
        let set = format!("set-cookie: {cookie}={secret}; HttpOnly; SameSite=Strict; Path=/");
        assert!(
            opened.to_lowercase().contains(&set.to_lowercase()),
            "{opened}"
        );

        let page = get(
            addr,
            "/",
            &format!("Cookie: other=1; {cookie}={secret}\r\n"),
        )
        .await;
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(page.contains("<html"), "{page}");
        let bearer = format!("Authorization: Bearer {secret}\r\n");
        // Past the token, client mode answers the server-only API with its own 404.
        let api = get(addr, "/api/devices", &bearer).await;
        assert!(api.starts_with("HTTP/1.1 404"), "{api}");
        assert!(api.contains("client's view"), "{api}");
    }
}
