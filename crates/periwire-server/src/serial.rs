//! Bridges a virtual serial port to the host: the guest's `/dev/ttyACM*` on one side, a TCP
//! client on a loopback listener on the other.

use periwire_usb::cdc_acm::SerialLink;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

/// Serves one TCP client at a time on `listener`, copying bytes both ways between it and the
/// serial line. While no client is connected, bytes from the guest wait in the device's
/// bounded buffer (and then the guest's writes wait), as on a real line with flow control.
pub async fn bridge_tcp(listener: TcpListener, link: SerialLink) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "serial listener accept failed");
                continue;
            }
        };
        info!(%peer, "serial client connected");
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let mut buf = vec![0u8; 4096];
        loop {
            tokio::select! {
                from_guest = link.read() => match from_guest {
                    Some(bytes) => {
                        if let Err(e) = wr.write_all(&bytes).await {
                            debug!(error = %e, "serial client write failed");
                            break;
                        }
                    }
                    None => return,
                },
                n = rd.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if link.write(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                },
            }
        }
        info!(%peer, "serial client disconnected");
    }
}
