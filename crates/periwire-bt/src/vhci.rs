//! Linux `/dev/vhci` (drivers/bluetooth/hci_vhci.c): the host kernel's own Bluetooth stack
//! drives an emulated controller, which then appears as a local `hciN`.
//!
//! After opening, periwire writes the vendor packet `FF 00` (create a primary controller) and
//! the kernel answers `FF 00 idx_lo idx_hi`. From then on every `read` returns one H4 packet
//! from the host and every `write` must carry exactly one H4 packet to it: the driver takes a
//! write as one packet, so host-bound packets are never batched here (unlike H4 over sockets).

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use periwire_hci::controller::ToHost;
use tokio::io::unix::AsyncFd;

use crate::{AdapterHandle, ServeError};

/// The usual path of the device.
pub const DEFAULT_PATH: &str = "/dev/vhci";

/// H4 packet indicators (Vol 4, Part A, 2).
const H4_COMMAND: u8 = 0x01;
const H4_ACL: u8 = 0x02;
const H4_EVENT: u8 = 0x04;
/// The driver's vendor packet indicator, and the request for a primary controller.
const VHCI_VENDOR: u8 = 0xff;
const VHCI_PRIMARY: u8 = 0x00;
/// Largest packet read at once: an H4 indicator and an ACL packet of the largest length a
/// 16-bit field allows.
const MAX_PACKET: usize = 1 + 4 + 0xffff;

/// An open `/dev/vhci`, not yet registered.
#[derive(Debug)]
pub struct Vhci {
    file: std::fs::File,
}

impl Vhci {
    /// Opens the vhci device at `path` (so a missing or forbidden device is an error at
    /// start-up, not later in a task).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        // Non-blocking, so that the runtime's reactor polls it: the driver supports poll, and a
        // read or write in tokio's blocking pool would cost two thread hand-offs per packet.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        Ok(Self { file })
    }

    /// Registers the controller behind `adapter` with the kernel and serves it until the
    /// device is closed or fails. `registered` is told the kernel's controller index.
    pub async fn serve(
        self,
        adapter: &AdapterHandle,
        registered: impl FnOnce(u16),
    ) -> Result<(), ServeError> {
        serve_file(self.file, adapter, registered).await
    }
}

async fn serve_file(
    file: std::fs::File,
    adapter: &AdapterHandle,
    registered: impl FnOnce(u16),
) -> Result<(), ServeError> {
    let vhci = crate::sys::async_file(file)?;
    write_packet(&vhci, &[VHCI_VENDOR, VHCI_PRIMARY]).await?;
    let mut reply = [0u8; MAX_PACKET];
    let n = read_packet(&vhci, &mut reply).await?;
    if n != 4 || reply[0] != VHCI_VENDOR || reply[1] != VHCI_PRIMARY {
        return Err(ServeError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "unexpected vhci registration reply {:02x?}",
                &reply[..n.min(8)]
            ),
        )));
    }
    registered(u16::from_le_bytes([reply[2], reply[3]]));

    let mut buf = vec![0u8; MAX_PACKET];
    let mut out = Vec::with_capacity(1024);
    loop {
        tokio::select! {
            n = read_packet(&vhci, &mut buf) => {
                let n = n?;
                let Some((&indicator, packet)) = buf[..n].split_first() else {
                    return Ok(());
                };
                let result = match indicator {
                    H4_COMMAND => adapter.send_command(packet),
                    H4_ACL => adapter.send_acl(packet),
                    other => {
                        tracing::debug!(adapter = %adapter.id(), indicator = other, "vhci: packet type not handled, dropped");
                        Ok(())
                    }
                };
                result.map_err(ServeError::Protocol)?;
            }
            packet = adapter.recv() => {
                out.clear();
                match packet {
                    ToHost::Event(e) => {
                        out.push(H4_EVENT);
                        out.extend_from_slice(&e);
                    }
                    ToHost::Acl(a) => {
                        out.push(H4_ACL);
                        out.extend_from_slice(&a);
                    }
                }
                write_packet(&vhci, &out).await?;
            }
        }
    }
}

/// Reads one packet from the kernel. Cancel-safe: a packet is consumed only by the `read`
/// that returns it.
async fn read_packet(vhci: &AsyncFd<std::fs::File>, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let mut ready = vhci.readable().await?;
        match ready.try_io(|f| f.get_ref().read(buf)) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

/// Writes one packet: the driver takes a whole packet per `write` or refuses it.
async fn write_packet(vhci: &AsyncFd<std::fs::File>, packet: &[u8]) -> std::io::Result<()> {
    loop {
        let mut ready = vhci.writable().await?;
        match ready.try_io(|f| f.get_ref().write(packet)) {
            Ok(Ok(n)) if n == packet.len() => return Ok(()),
            Ok(Ok(n)) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    format!("vhci took {n} of a {}-byte packet", packet.len()),
                ))
            }
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}
