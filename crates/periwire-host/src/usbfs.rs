//! Isochronous transfers of a host device, straight over Linux usbfs: nusb 0.2 has none.
//!
//! The interfaces that have isochronous endpoints (in any alternate setting) are claimed on
//! a usbfs handle of their own, [`IsoInterfaces`]; nusb claims the others. usbfs checks
//! claims per open file, so an interface's ISO URBs and its SET_INTERFACE must go through
//! the file that claimed it.
//!
//! Each client URB becomes one usbfs URB with the same packets (`USBDEVFS_SUBMITURB`, with
//! `USBDEVFS_URB_ISO_ASAP`). Completions are reaped (`USBDEVFS_REAPURBNDELAY`) by one task per
//! device, woken when the file turns writable, which is how usbfs signals a completion (as
//! libusb and nusb wait for it). A URB whose future is dropped is discarded
//! (`USBDEVFS_DISCARDURB`); its memory stays with the handle until the kernel gives it back.
//!
//! Memory: the kernel reads an URB's memory only inside `SUBMITURB` and writes it only inside
//! `REAPURB*` (it copies IN data to the user buffer when the URB is reaped, never from
//! interrupt context), and both happen under the [`Shared::transfers`] lock. Closing the
//! file kills what is in flight without touching user memory. So memory owned by the map
//! under that lock, freed only once reaped or once the file is closed, is never written to
//! behind Rust's back. A URB carries at most [`MAX_PACKETS`] packets (usbfs' own limit) and
//! the server bounds how many URBs an endpoint has in flight, so memory is bounded.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use linux_raw_sys::ioctl::{
    USBDEVFS_DISCARDURB, USBDEVFS_DISCONNECT_CLAIM, USBDEVFS_REAPURBNDELAY,
    USBDEVFS_RELEASEINTERFACE, USBDEVFS_SETINTERFACE, USBDEVFS_SUBMITURB,
};
use periwire_usb::device::Direction;
use periwire_usb::{Completion, IsoPacket, TransferError, Urb};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The most packets usbfs takes in one isochronous URB (`proc_do_submiturb`).
pub(crate) const MAX_PACKETS: usize = 128;
/// `USBDEVFS_URB_TYPE_ISO`.
const URB_TYPE_ISO: u8 = 0;
/// `USBDEVFS_URB_ISO_ASAP`: start at the next frame the controller can schedule, as the
/// client's drivers ask (`URB_ISO_ASAP`); the client's start frame means nothing here.
const URB_ISO_ASAP: u32 = 0x02;
/// `USBDEVFS_DISCONNECT_CLAIM_EXCEPT_DRIVER`: take the interface from its driver unless that
/// driver is usbfs itself (another program's claim is left alone, as nusb does).
const DISCONNECT_CLAIM_EXCEPT_DRIVER: u32 = 0x02;

/// `struct usbdevfs_iso_packet_desc`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct IsoPacketDesc {
    length: u32,
    actual_length: u32,
    status: u32,
}

/// `struct usbdevfs_urb`, followed by its packet descriptors (a C flexible array member;
/// here a fixed array of usbfs' maximum).
#[repr(C)]
#[derive(Debug)]
struct IsoUrb {
    kind: u8,
    endpoint: u8,
    status: i32,
    flags: u32,
    buffer: *mut u8,
    buffer_length: i32,
    actual_length: i32,
    start_frame: i32,
    number_of_packets: i32,
    error_count: i32,
    signr: u32,
    usercontext: *mut std::ffi::c_void,
    packets: [IsoPacketDesc; MAX_PACKETS],
}

/// `struct usbdevfs_disconnect_claim`.
#[repr(C)]
struct DisconnectClaim {
    interface: u32,
    flags: u32,
    driver: [u8; 256],
}

/// `struct usbdevfs_setinterface`.
#[repr(C)]
struct SetInterface {
    interface: u32,
    altsetting: u32,
}

/// One URB's memory: the usbfs record and its buffer (packets laid end to end, as usbfs
/// expects them). Boxed, so its address (the map's key) does not move.
struct Transfer {
    urb: IsoUrb,
    buffer: Vec<u8>,
}

// SAFETY: the raw pointers in `urb` point into `buffer`, owned by the same value; nothing
// else aliases them, and the kernel touches them only under the lock that guards the map.
unsafe impl Send for Transfer {}

enum State {
    /// Submitted; the waker of the future awaiting it.
    InFlight(Option<Waker>),
    /// Reaped, waiting for its future.
    Done,
    /// Its future was dropped; freed when reaped.
    Abandoned,
}

struct Entry {
    transfer: Box<Transfer>,
    state: State,
}

#[derive(Default)]
struct Transfers {
    by_address: HashMap<usize, Entry>,
    /// Why nothing more will be reaped, once so: the device is gone, or the interfaces were
    /// released. URBs still in flight end with it.
    closed: Option<TransferError>,
}

impl Transfers {
    /// Ends every URB in flight with `why`: their futures are woken to find it.
    fn close(&mut self, why: TransferError) {
        self.closed = Some(why);
        for entry in self.by_address.values_mut() {
            if let State::InFlight(waker) = &mut entry.state {
                if let Some(w) = waker.take() {
                    w.wake();
                }
            }
        }
    }
}

/// The usbfs file and the URBs submitted on it. The file is declared first, so it is closed
/// (killing what is in flight) before the memory of those URBs is freed.
struct Shared {
    file: File,
    transfers: Mutex<Transfers>,
}

impl AsRawFd for Shared {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Shared {
    fn transfers(&self) -> MutexGuard<'_, Transfers> {
        // Every change under the lock is a single insert, remove or assignment.
        self.transfers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reaps every completed URB and wakes its future, until none is left (`WouldBlock`) or
    /// the device has gone (`Ok`).
    fn reap_ready(&self) -> std::io::Result<()> {
        let mut transfers = self.transfers();
        loop {
            let mut reaped: *mut IsoUrb = std::ptr::null_mut();
            // SAFETY: REAPURBNDELAY writes one pointer to `reaped`, and the status, lengths
            // and packet results (and IN data) into the memory of a URB submitted on this
            // file, which the map owns and nothing reads while this lock is held.
            let rc = unsafe {
                libc::ioctl(
                    self.file.as_raw_fd(),
                    USBDEVFS_REAPURBNDELAY as _,
                    &mut reaped as *mut *mut IsoUrb,
                )
            };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EAGAIN) => Err(std::io::ErrorKind::WouldBlock.into()),
                    Some(libc::ENODEV) => {
                        transfers.close(TransferError::Disconnected);
                        Ok(())
                    }
                    _ => Err(e),
                };
            }
            let key = reaped as usize;
            let Some(entry) = transfers.by_address.get_mut(&key) else {
                tracing::warn!(
                    address = key,
                    "usbfs gave back a URB this handle does not know"
                );
                continue;
            };
            match std::mem::replace(&mut entry.state, State::Done) {
                State::InFlight(waker) => {
                    if let Some(w) = waker {
                        w.wake();
                    }
                }
                State::Abandoned => {
                    transfers.by_address.remove(&key);
                }
                State::Done => {}
            }
        }
    }
}

/// The interfaces of a device claimed on periwire's own usbfs handle, for their isochronous
/// endpoints.
pub(crate) struct IsoInterfaces {
    shared: Arc<Shared>,
    claimed: Mutex<Vec<u8>>,
    reaper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for IsoInterfaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IsoInterfaces").finish_non_exhaustive()
    }
}

/// The error of a failed ioctl, as an `io::Error`.
fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl IsoInterfaces {
    /// Opens the device's usbfs node (`/dev/bus/usb/BBB/DDD`).
    pub(crate) fn open(node: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(node)?;
        Ok(Self {
            shared: Arc::new(Shared {
                file,
                transfers: Mutex::new(Transfers::default()),
            }),
            claimed: Mutex::new(Vec::new()),
            reaper: Mutex::new(None),
        })
    }

    fn claimed(&self) -> MutexGuard<'_, Vec<u8>> {
        self.claimed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes interface `number` from its local driver and claims it on this handle.
    pub(crate) fn claim(&self, number: u8) -> std::io::Result<()> {
        let mut request = DisconnectClaim {
            interface: number.into(),
            flags: DISCONNECT_CLAIM_EXCEPT_DRIVER,
            driver: [0; 256],
        };
        request.driver[..5].copy_from_slice(b"usbfs");
        // SAFETY: DISCONNECT_CLAIM reads one `usbdevfs_disconnect_claim`, which `request` is.
        check(unsafe {
            libc::ioctl(
                self.shared.as_raw_fd(),
                USBDEVFS_DISCONNECT_CLAIM as _,
                &mut request as *mut DisconnectClaim,
            )
        })?;
        self.claimed().push(number);
        Ok(())
    }

    /// Whether interface `number` is claimed here.
    pub(crate) fn holds(&self, number: u8) -> bool {
        self.claimed().contains(&number)
    }

    /// The interfaces claimed here.
    pub(crate) fn numbers(&self) -> Vec<u8> {
        self.claimed().clone()
    }

    /// Selects alternate setting `alternate` of interface `number` (the OS sends the
    /// SET_INTERFACE request and sets up the endpoints). Blocks for the control transfer.
    pub(crate) fn set_interface(&self, number: u8, alternate: u8) -> std::io::Result<()> {
        let mut request = SetInterface {
            interface: number.into(),
            altsetting: alternate.into(),
        };
        // SAFETY: SETINTERFACE reads one `usbdevfs_setinterface`, which `request` is.
        check(unsafe {
            libc::ioctl(
                self.shared.as_raw_fd(),
                USBDEVFS_SETINTERFACE as _,
                &mut request as *mut SetInterface,
            )
        })
    }

    /// Gives up every interface claimed here (the URBs in flight on them are killed), so
    /// that their local drivers can bind again. Idempotent.
    pub(crate) fn release(&self) {
        if let Some(reaper) = self.reaper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            reaper.abort();
        }
        // Nothing reaps any more: the URBs still awaited end now (as cancelled, which is
        // what the kernel makes of them too).
        self.shared.transfers().close(TransferError::Cancelled);
        for number in std::mem::take(&mut *self.claimed()) {
            let mut interface = libc::c_uint::from(number);
            // SAFETY: RELEASEINTERFACE reads one unsigned int, which `interface` is.
            let rc = unsafe {
                libc::ioctl(
                    self.shared.as_raw_fd(),
                    USBDEVFS_RELEASEINTERFACE as _,
                    &mut interface as *mut libc::c_uint,
                )
            };
            if let Err(e) = check(rc) {
                tracing::warn!(interface = number, error = %e, "cannot release an isochronous interface");
            }
        }
    }

    /// Starts the task that reaps completions, once: it needs the runtime, which the first
    /// URB runs on.
    fn start_reaper(&self) -> Result<(), TransferError> {
        let mut reaper = self.reaper.lock().unwrap_or_else(|e| e.into_inner());
        if reaper.is_some() {
            return Ok(());
        }
        // SAFETY: `Shared` owns the file and the `Arc` keeps it alive for as long as the
        // `AsyncFd` (moved into the task) lives; `as_raw_fd` always returns that file's fd.
        let registered = unsafe {
            AsyncFd::register_with_interest(Arc::clone(&self.shared), Interest::WRITABLE)
        };
        let watched = registered.map_err(|e| {
            tracing::warn!(error = %e.into_parts().1, "cannot watch the usbfs handle");
            TransferError::Fault
        })?;
        *reaper = Some(tokio::spawn(async move {
            loop {
                let Ok(mut ready) = watched.writable().await else {
                    return;
                };
                match ready.try_io(|fd| fd.get_ref().reap_ready()) {
                    // All reaped; wait for the next completion.
                    Err(_would_block) => {}
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "reaping isochronous URBs");
                        return;
                    }
                }
            }
        }));
        Ok(())
    }

    /// Carries out an isochronous URB on endpoint `urb.endpoint_address()`.
    pub(crate) async fn transfer(&self, urb: &Urb) -> Completion {
        match self.try_transfer(urb).await {
            Ok(done) => done,
            Err(e) => e.into(),
        }
    }

    async fn try_transfer(&self, urb: &Urb) -> Result<Completion, TransferError> {
        let transfer = build(urb)?;
        self.start_reaper()?;
        let key = {
            let mut transfers = self.shared.transfers();
            if let Some(why) = transfers.closed {
                return Err(why);
            }
            let mut transfer = transfer;
            let urb_ptr: *mut IsoUrb = &mut transfer.urb;
            // SAFETY: SUBMITURB reads the record and its `number_of_packets` descriptors,
            // and (OUT) `buffer_length` bytes at `buffer`, all inside `transfer`; the map
            // then owns `transfer` until the kernel gives the URB back (see the module's
            // notes on memory).
            let rc =
                unsafe { libc::ioctl(self.shared.as_raw_fd(), USBDEVFS_SUBMITURB as _, urb_ptr) };
            if let Err(e) = check(rc) {
                tracing::debug!(endpoint = urb.endpoint_address(), error = %e, "ISO URB refused");
                return Err(errno_error(e.raw_os_error().unwrap_or(0)));
            }
            let key = urb_ptr as usize;
            transfers.by_address.insert(
                key,
                Entry {
                    transfer,
                    state: State::InFlight(None),
                },
            );
            key
        };
        let done = Reaped {
            shared: &self.shared,
            key,
        }
        .await?;
        Ok(completion(urb, &done))
    }
}

impl Drop for IsoInterfaces {
    fn drop(&mut self) {
        self.release();
    }
}

/// Waits for the URB at `key` to be reaped; dropped first, it discards the URB.
struct Reaped<'a> {
    shared: &'a Shared,
    key: usize,
}

impl Future for Reaped<'_> {
    type Output = Result<Box<Transfer>, TransferError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut transfers = self.shared.transfers();
        let closed = transfers.closed;
        let Some(entry) = transfers.by_address.get_mut(&self.key) else {
            return Poll::Ready(Err(TransferError::Cancelled));
        };
        match &mut entry.state {
            State::InFlight(waker) => match closed {
                Some(why) => Poll::Ready(Err(why)),
                None => {
                    *waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            },
            State::Done | State::Abandoned => {
                let entry = transfers.by_address.remove(&self.key);
                Poll::Ready(entry.map(|e| e.transfer).ok_or(TransferError::Cancelled))
            }
        }
    }
}

impl Drop for Reaped<'_> {
    fn drop(&mut self) {
        let mut transfers = self.shared.transfers();
        let Some(entry) = transfers.by_address.get_mut(&self.key) else {
            return;
        };
        match entry.state {
            State::InFlight(_) => {
                entry.state = State::Abandoned;
                let urb: *mut IsoUrb = &mut entry.transfer.urb;
                // SAFETY: DISCARDURB only looks the pointer up among this file's URBs; it
                // reads no memory. One already completed is refused (EINVAL), harmlessly.
                unsafe {
                    libc::ioctl(self.shared.as_raw_fd(), USBDEVFS_DISCARDURB as _, urb);
                }
            }
            // Reaped but never taken: nothing is in the kernel any more.
            State::Done | State::Abandoned => {
                transfers.by_address.remove(&self.key);
            }
        }
    }
}

/// The usbfs URB for a client's isochronous URB: its packets end to end in one buffer (OUT:
/// each packet's bytes gathered from where the client put it).
fn build(urb: &Urb) -> Result<Box<Transfer>, TransferError> {
    let count = urb.iso_packets.len();
    if count == 0 || count > MAX_PACKETS {
        tracing::warn!(
            endpoint = urb.endpoint_address(),
            packets = count,
            max = MAX_PACKETS,
            "isochronous URB with a packet count usbfs does not take"
        );
        return Err(TransferError::Fault);
    }
    let mut packets = [IsoPacketDesc::default(); MAX_PACKETS];
    let mut total: usize = 0;
    for (desc, packet) in packets.iter_mut().zip(&urb.iso_packets) {
        desc.length = packet.length;
        total = total.saturating_add(packet.length as usize);
    }
    if total > urb.length as usize {
        tracing::warn!(
            endpoint = urb.endpoint_address(),
            "ISO packets longer than their URB"
        );
        return Err(TransferError::Fault);
    }
    let mut buffer = Vec::with_capacity(total);
    match urb.direction {
        Direction::Out => {
            for packet in &urb.iso_packets {
                let start = packet.offset as usize;
                let bytes = start
                    .checked_add(packet.length as usize)
                    .and_then(|end| urb.data.get(start..end))
                    .ok_or(TransferError::Fault)?;
                buffer.extend_from_slice(bytes);
            }
        }
        Direction::In => buffer.resize(total, 0),
    }
    let buffer_length = i32::try_from(total).map_err(|_| TransferError::Fault)?;
    let mut transfer = Box::new(Transfer {
        urb: IsoUrb {
            kind: URB_TYPE_ISO,
            endpoint: urb.endpoint_address(),
            status: 0,
            flags: URB_ISO_ASAP,
            buffer: std::ptr::null_mut(),
            buffer_length,
            actual_length: 0,
            start_frame: 0,
            // At most MAX_PACKETS.
            number_of_packets: count as i32,
            error_count: 0,
            signr: 0,
            usercontext: std::ptr::null_mut(),
            packets,
        },
        buffer,
    });
    transfer.urb.buffer = transfer.buffer.as_mut_ptr();
    Ok(transfer)
}

/// What the client gets back: the URB's status, each packet's result at the client's
/// offsets; IN data compacted (each packet's received bytes end to end), as USB/IP carries
/// it.
fn completion(urb: &Urb, done: &Transfer) -> Completion {
    let mut data = Vec::new();
    let mut packets = Vec::with_capacity(urb.iso_packets.len());
    let mut start = 0usize;
    let mut moved: u32 = 0;
    for (asked, result) in urb.iso_packets.iter().zip(&done.urb.packets) {
        let actual = result.actual_length.min(asked.length);
        if urb.direction == Direction::In {
            let end = start + actual as usize;
            if let Some(bytes) = done.buffer.get(start..end) {
                data.extend_from_slice(bytes);
            }
        }
        start += asked.length as usize;
        moved = moved.saturating_add(actual);
        // usbfs stores a packet's negative errno in an unsigned field.
        let status = result.status as i32;
        packets.push(IsoPacket {
            offset: asked.offset,
            length: asked.length,
            actual_length: actual,
            status: if status == 0 {
                Ok(())
            } else {
                Err(errno_error(-status))
            },
        });
    }
    Completion {
        status: match done.urb.status {
            0 => Ok(()),
            status => Err(errno_error(-status)),
        },
        data,
        actual_length: moved,
        iso_packets: packets,
        start_frame: done.urb.start_frame,
        error_count: u32::try_from(done.urb.error_count).unwrap_or(0),
    }
}

/// The periwire error of a (positive) errno from usbfs, for a URB or one of its packets.
pub(crate) fn errno_error(errno: i32) -> TransferError {
    match errno {
        libc::EPIPE => TransferError::Stall,
        libc::EREMOTEIO => TransferError::ShortPacket,
        libc::ENOENT | libc::ECONNRESET => TransferError::Cancelled,
        libc::ENODEV | libc::ESHUTDOWN => TransferError::Disconnected,
        libc::EOVERFLOW => TransferError::Overflow,
        libc::EPROTO | libc::EILSEQ => TransferError::Protocol,
        libc::ETIME | libc::ETIMEDOUT => TransferError::Timeout,
        _ => TransferError::Fault,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use periwire_usb::SetupPacket;

    /// The sizes the kernel's ioctl numbers encode (bits 16..30) match the records here, so
    /// the layouts agree with `linux/usbdevice_fs.h`.
    #[test]
    fn records_have_the_sizes_the_ioctl_numbers_encode() {
        let size = |nr: u32| ((nr >> 16) & 0x3fff) as usize;
        let header = std::mem::size_of::<IsoUrb>() - MAX_PACKETS * 12;
        assert_eq!(size(USBDEVFS_SUBMITURB), header);
        assert_eq!(std::mem::size_of::<IsoPacketDesc>(), 12);
        assert_eq!(
            size(USBDEVFS_SETINTERFACE),
            std::mem::size_of::<SetInterface>()
        );
        assert_eq!(
            size(USBDEVFS_DISCONNECT_CLAIM),
            std::mem::size_of::<DisconnectClaim>()
        );
        assert_eq!(std::mem::offset_of!(IsoUrb, packets), header);
    }

    fn iso_urb(direction: Direction, data: Vec<u8>, packets: &[(u32, u32)]) -> Urb {
        Urb {
            endpoint: 1,
            direction,
            setup: SetupPacket::from_bytes([0; 8]),
            transfer_flags: 0,
            length: 12,
            data,
            iso_packets: packets
                .iter()
                .map(|&(offset, length)| IsoPacket {
                    offset,
                    length,
                    actual_length: 0,
                    status: Ok(()),
                })
                .collect(),
            start_frame: 0,
            interval: 1,
        }
    }

    #[test]
    fn out_packets_are_gathered_from_the_clients_offsets() {
        let data: Vec<u8> = (0..12).collect();
        let urb = iso_urb(Direction::Out, data, &[(8, 4), (0, 3)]);
        let t = build(&urb).unwrap();
        assert_eq!(t.buffer, [8, 9, 10, 11, 0, 1, 2]);
        assert_eq!(t.urb.buffer_length, 7);
        assert_eq!(t.urb.number_of_packets, 2);
        assert_eq!(t.urb.endpoint, 0x01);
        assert_eq!(t.urb.buffer, t.buffer.as_ptr() as *mut u8);
    }

    #[test]
    fn in_data_comes_back_compacted_at_the_clients_offsets() {
        let urb = iso_urb(Direction::In, Vec::new(), &[(0, 4), (4, 4), (8, 4)]);
        let mut t = build(&urb).unwrap();
        assert_eq!(t.urb.endpoint, 0x81);
        t.buffer
            .copy_from_slice(&[1, 2, 0, 0, 0, 0, 0, 0, 3, 4, 5, 6]);
        t.urb.packets[0].actual_length = 2;
        t.urb.packets[1].status = (-libc::EPROTO) as u32;
        t.urb.packets[2].actual_length = 4;
        t.urb.error_count = 1;
        let c = completion(&urb, &t);
        assert_eq!(c.data, [1, 2, 3, 4, 5, 6]);
        assert_eq!(c.actual_length, 6);
        assert_eq!(c.error_count, 1);
        let results: Vec<_> = c
            .iso_packets
            .iter()
            .map(|p| (p.offset, p.actual_length, p.status))
            .collect();
        assert_eq!(
            results,
            [
                (0, 2, Ok(())),
                (4, 0, Err(TransferError::Protocol)),
                (8, 4, Ok(()))
            ]
        );
    }

    #[test]
    fn packets_out_of_the_buffer_or_too_many_are_refused() {
        let urb = iso_urb(Direction::Out, vec![0; 12], &[(10, 4)]);
        assert_eq!(build(&urb).err(), Some(TransferError::Fault));
        let many: Vec<(u32, u32)> = (0..=MAX_PACKETS as u32).map(|i| (i, 0)).collect();
        let urb = iso_urb(Direction::In, Vec::new(), &many);
        assert_eq!(build(&urb).err(), Some(TransferError::Fault));
        let urb = iso_urb(Direction::In, Vec::new(), &[]);
        assert_eq!(build(&urb).err(), Some(TransferError::Fault));
    }
}
