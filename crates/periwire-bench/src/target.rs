//! The servers under test, each on a tokio runtime of its own, shaped like the one the
//! `periwire` binary runs on (`#[tokio::main]`: multi-threaded, one worker per core).

use std::future::Future;
use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::time::Duration;

use periwire_server::front_door::{serve_front_door, FrontDoor};
use periwire_server::secure::tls;
use periwire_server::{serve, Export, Registry, ServerConfig};
use periwire_usb::source_sink::{SourceSink, SourceSinkHandle};
use periwire_wire::usbip::BusId;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

use crate::client::ByteStream;

/// Bus ids every server exports its two source/sink devices under.
pub const BUSIDS: [&str; 2] = ["1-1", "1-2"];

/// A server's runtime: multi-threaded with as many workers as cores, as `#[tokio::main]`.
pub fn server_runtime(name: &str) -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name(name)
        .enable_all()
        .build()
}

/// CPU time used so far by this process's threads whose name starts with `name` (as the
/// kernel keeps it: 15 bytes at most), from `/proc/self/task/*/schedstat` (nanoseconds on
/// CPU). Zero where that is not available.
pub fn threads_cpu_time(name: &str) -> Duration {
    let prefix = &name.as_bytes()[..name.len().min(15)];
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let mut total = 0u64;
    for task in tasks.flatten() {
        let path = task.path();
        let named = std::fs::read(path.join("comm")).is_ok_and(|c| c.starts_with(prefix));
        if !named {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(path.join("schedstat")) {
            total += stat
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(total)
}

/// A USB/IP server exporting two source/sink devices (bus ids [`BUSIDS`]) on loopback.
pub struct Target {
    /// Name in the table.
    pub name: String,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Why the server cannot keep a URB pending (so the mixed row with an idle interrupt IN
    /// cannot run), if it cannot.
    pub cannot_pend: Option<String>,
    /// Byte counters of periwire's devices (empty for peers).
    pub handles: Vec<SourceSinkHandle>,
    /// Name of the server runtime's threads.
    pub thread_name: String,
    /// The client's TLS configuration, for a server that speaks TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Identities and trust stores of a TLS target, removed with it.
    _secrets: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    runtime: Option<Runtime>,
}

impl Target {
    /// A target whose server `start` spawns on a new runtime whose threads are named
    /// `thread_name`, listening on a loopback port.
    pub fn new<F, Fut>(
        name: impl Into<String>,
        thread_name: &str,
        start: F,
    ) -> std::io::Result<Self>
    where
        F: FnOnce(tokio::net::TcpListener, oneshot::Receiver<()>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let runtime = server_runtime(thread_name)?;
        let std_listener = StdListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?.to_string();
        let (stop, stopped) = oneshot::channel();
        let fut = {
            let _guard = runtime.enter();
            let listener = tokio::net::TcpListener::from_std(std_listener)?;
            start(listener, stopped)
        };
        runtime.spawn(fut);
        Ok(Self {
            name: name.into(),
            addr,
            cannot_pend: None,
            handles: Vec::new(),
            thread_name: thread_name.to_owned(),
            tls: None,
            _secrets: None,
            stop: Some(stop),
            runtime: Some(runtime),
        })
    }

    /// periwire's server with two [`SourceSink`] devices, on a runtime of its own.
    pub fn periwire() -> std::io::Result<Self> {
        let (registry, handles) = source_sinks()?;
        let mut target = Self::new(
            "periwire",
            "periwire-server",
            move |listener, stopped| async move {
                let shutdown = async {
                    let _ = stopped.await;
                };
                let _ = serve(listener, registry, ServerConfig::default(), shutdown).await;
            },
        )?;
        target.handles = handles;
        Ok(target)
    }

    /// [`Target::periwire`] behind its front door, reached over mutual TLS 1.3 with pinned
    /// keys, as `periwire serve` and `periwire attach --tls` speak it.
    pub fn periwire_tls() -> std::io::Result<Self> {
        use periwire_server::secure::{Identity, TrustStore};
        let secrets = tempfile::tempdir()?;
        let (server_dir, client_dir) =
            (secrets.path().join("server"), secrets.path().join("client"));
        let id = |dir: &std::path::Path| {
            Identity::load_or_create(dir, "bench").map_err(std::io::Error::other)
        };
        let (server_id, client_id) = (id(&server_dir)?, id(&client_dir)?);
        let mut trusted = TrustStore::default();
        trusted
            .add("client", client_id.fingerprint)
            .map_err(std::io::Error::other)?;
        trusted.save(&server_dir).map_err(std::io::Error::other)?;
        let mut pins = TrustStore::default();
        pins.add("server", server_id.fingerprint)
            .map_err(std::io::Error::other)?;
        let (client_config, _) =
            tls::client_config(&client_id, pins, "server", false).map_err(std::io::Error::other)?;
        let door = Arc::new(FrontDoor {
            identity: server_id,
            data_dir: server_dir,
            plain_allow: Vec::new(),
            allow: Default::default(),
        });
        let (registry, handles) = source_sinks()?;
        let mut target = Self::new(
            "periwire+tls",
            "periwire-tls",
            move |listener, stopped| async move {
                let shutdown = async {
                    let _ = stopped.await;
                };
                let config = ServerConfig::default();
                let _ = serve_front_door(listener, door, registry, config, shutdown).await;
            },
        )?;
        target.handles = handles;
        target.tls = Some(client_config);
        target._secrets = Some(secrets);
        Ok(target)
    }

    /// A connection to the server, in the operation phase: TCP, or TLS over it.
    pub fn connect(&self) -> std::io::Result<Box<dyn ByteStream>> {
        let tcp = crate::client::connect(&self.addr)?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(config) => {
                let session = rustls::ClientConnection::new(Arc::clone(config), tls::server_name())
                    .map_err(std::io::Error::other)?;
                Ok(Box::new(rustls::StreamOwned::new(session, tcp)))
            }
        }
    }

    /// CPU time the server's threads have used so far.
    pub fn cpu_time(&self) -> Duration {
        threads_cpu_time(&self.thread_name)
    }
}

/// A registry with two [`SourceSink`] devices under [`BUSIDS`], and their handles.
fn source_sinks() -> std::io::Result<(Registry, Vec<SourceSinkHandle>)> {
    let registry = Registry::new();
    let mut handles = Vec::new();
    for (i, busid) in BUSIDS.iter().enumerate() {
        let (device, handle) = SourceSink::new();
        let busid = BusId::new(busid).map_err(std::io::Error::other)?;
        registry
            .add(Export {
                busid,
                busnum: 1,
                devnum: i as u32 + 1,
                name: format!("source-sink-{}", i + 1),
                device: Arc::new(device),
            })
            .map_err(|b| std::io::Error::other(format!("duplicate bus id {b}")))?;
        handles.push(handle);
    }
    Ok((registry, handles))
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}
