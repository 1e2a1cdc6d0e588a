//! The ceiling: raw TCP over loopback on this machine, in the same shape as the bulk rows (a
//! blocking client thread, a tokio server on a runtime like the USB/IP servers'), with no
//! protocol at all: one side only writes, the other only reads. Writes are vectored, 1 MiB of
//! one 64 KiB buffer per call (as the bulk rows' client writes 16 URBs); reads take up to
//! 1 MiB per call (as that client reads).

use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

use crate::target::server_runtime;

/// Bytes per vectored write.
pub const WRITE: usize = 1024 * 1024;
/// Bytes per slice of a vectored write: one buffer, written over and over.
pub const SLICE: usize = 64 * 1024;
/// Bytes per read.
pub const READ: usize = 1024 * 1024;

/// Which way the bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Client to server, like bulk OUT.
    Upload,
    /// Server to client, like bulk IN.
    Download,
}

/// A loopback TCP server that sinks or sources bytes.
pub struct Loopback {
    addr: String,
    runtime: Option<Runtime>,
}

impl Loopback {
    /// Starts the server on a runtime of its own.
    pub fn start() -> io::Result<Self> {
        let runtime = server_runtime("loopback-server")?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?.to_string();
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        });
        Ok(Self {
            addr,
            runtime: Some(runtime),
        })
    }

    /// Bytes per second moved during about `duration`.
    pub fn measure(&self, flow: Flow, duration: Duration) -> io::Result<f64> {
        let mut s = TcpStream::connect(&self.addr)?;
        s.set_nodelay(true)?;
        let start = Instant::now();
        match flow {
            Flow::Upload => {
                s.write_all(b"U")?;
                let chunk = vec![0x5au8; SLICE];
                let mut sent = 0u64;
                while start.elapsed() < duration {
                    let mut slices = [IoSlice::new(&chunk); WRITE / SLICE];
                    let mut bufs = &mut slices[..];
                    while !bufs.is_empty() {
                        let n = s.write_vectored(bufs)?;
                        sent += n as u64;
                        IoSlice::advance_slices(&mut bufs, n);
                    }
                }
                s.shutdown(std::net::Shutdown::Write)?;
                // The server answers with what it received once it has read it all, so the
                // time includes draining the socket buffers.
                let mut got = [0u8; 8];
                s.read_exact(&mut got)?;
                if u64::from_be_bytes(got) != sent {
                    return Err(io::Error::other("loopback server lost bytes"));
                }
                Ok(sent as f64 / start.elapsed().as_secs_f64())
            }
            Flow::Download => {
                s.write_all(b"D")?;
                let mut buf = vec![0u8; READ];
                let mut got = 0u64;
                while start.elapsed() < duration {
                    let n = s.read(&mut buf)?;
                    if n == 0 {
                        return Err(io::Error::other("loopback server closed"));
                    }
                    got += n as u64;
                }
                Ok(got as f64 / start.elapsed().as_secs_f64())
            }
        }
    }
}

async fn serve(mut stream: tokio::net::TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut mode = [0u8; 1];
    stream.read_exact(&mut mode).await?;
    if mode[0] == b'U' {
        let mut buf = vec![0u8; READ];
        let mut total = 0u64;
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        stream.write_all(&total.to_be_bytes()).await
    } else {
        let chunk = vec![0xa5u8; SLICE];
        loop {
            let mut slices = [IoSlice::new(&chunk); WRITE / SLICE];
            let mut bufs = &mut slices[..];
            while !bufs.is_empty() {
                let n = stream.write_vectored(bufs).await?;
                IoSlice::advance_slices(&mut bufs, n);
            }
        }
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}
