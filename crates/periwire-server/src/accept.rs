//! The accept loop both servers (USB/IP and usbredir) run: one task per connection, and an
//! orderly stop that waits for every connection to end.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::warn;

/// Resolves when the server stops; handed to each connection.
pub type Stopped = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Accepts connections on `listener` until `shutdown` resolves, running `serve_one` for each
/// in a task of its own; then resolves every connection's [`Stopped`] and waits until all
/// have ended.
pub async fn accept_until<F, Fut>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    serve_one: F,
) where
    F: Fn(TcpStream, SocketAddr, Stopped) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
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
                let mut stop = stop_rx.clone();
                let stopped: Stopped = Box::pin(async move {
                    // An error means the server is gone: stop as well.
                    let _ = stop.wait_for(|stopping| *stopping).await;
                });
                connections.spawn(serve_one(stream, peer, stopped));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
}
