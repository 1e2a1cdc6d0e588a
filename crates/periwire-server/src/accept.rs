//! The accept loop every listener runs (the USB/IP port, its TLS front door, each usbredir
//! listener): one task per connection, and an orderly stop that waits for every connection
//! to end.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::warn;

/// Resolves when the server stops: handed to each connection's handler, which passes
/// [`Stopped::wait`] on as the `stop` of the protocol's `serve_stream`.
pub struct Stopped(watch::Receiver<bool>);

impl Stopped {
    /// Waits until the server stops.
    pub async fn wait(mut self) {
        // An error means the server is gone: stop as well.
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }
}

/// Accepts connections on `listener` until `shutdown` resolves, running `handler` for each in
/// a task of its own; then resolves every handler's [`Stopped`] and waits until all have
/// ended.
pub async fn accept_until<H, F>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    handler: H,
) where
    H: Fn(TcpStream, SocketAddr, Stopped) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Transient accept errors (EMFILE, ECONNABORTED) must not stop the server.
                        warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                connections.spawn(handler(stream, peer, Stopped(stop_rx.clone())));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
}
