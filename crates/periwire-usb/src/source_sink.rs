//! A vendor-class source/sink device, in the spirit of Linux's gadget zero: the reference
//! load for tests and benchmarks.
//!
//! | endpoint | type | behaviour |
//! | --- | --- | --- |
//! | 0x81 | bulk IN | returns as many bytes as asked, a counting pattern |
//! | 0x02 | bulk OUT | swallows everything, counting bytes |
//! | 0x83 | interrupt IN | pends until the handle sends a report (like an idle keyboard) |
//! | 0x04 / 0x84 | bulk OUT / IN | loopback: IN returns what OUT stored, in order; IN pends while empty |

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};

use crate::descriptor::{DeviceDescriptors, Endpoint, Interface, TransferType};
use crate::device::{BoxFuture, Completion, DeviceInfo, Direction, Speed, TransferError, Urb};
use crate::standard::StandardRequests;
use crate::UsbDevice;

/// Bulk IN source endpoint.
pub const EP_SOURCE: u8 = 0x81;
/// Bulk OUT sink endpoint.
pub const EP_SINK: u8 = 0x02;
/// Interrupt IN endpoint that pends until a report is sent.
pub const EP_INTERRUPT: u8 = 0x83;
/// Loopback OUT endpoint.
pub const EP_LOOP_OUT: u8 = 0x04;
/// Loopback IN endpoint.
pub const EP_LOOP_IN: u8 = 0x84;

/// Most bytes the loopback holds; a loopback OUT beyond it stalls.
const LOOPBACK_CAPACITY: usize = 4 * 1024 * 1024;
/// Reports the interrupt queue holds.
const INTERRUPT_QUEUE: usize = 64;

#[derive(Default)]
struct Counters {
    sunk: AtomicU64,
    sourced: AtomicU64,
}

/// The source/sink device.
pub struct SourceSink {
    standard: StandardRequests,
    counters: Arc<Counters>,
    interrupts: tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>,
    loopback: Mutex<VecDeque<Vec<u8>>>,
    loopback_ready: Notify,
}

/// Controls a [`SourceSink`] from the host side.
#[derive(Clone)]
pub struct SourceSinkHandle {
    counters: Arc<Counters>,
    interrupts: mpsc::Sender<Vec<u8>>,
}

impl SourceSinkHandle {
    /// Bytes swallowed by the sink so far.
    pub fn bytes_sunk(&self) -> u64 {
        self.counters.sunk.load(Ordering::Relaxed)
    }

    /// Bytes produced by the source so far.
    pub fn bytes_sourced(&self) -> u64 {
        self.counters.sourced.load(Ordering::Relaxed)
    }

    /// Queues one interrupt report (at most 8 bytes are sent).
    pub async fn send_interrupt(&self, report: Vec<u8>) -> Result<(), TransferError> {
        self.interrupts
            .send(report)
            .await
            .map_err(|_| TransferError::Disconnected)
    }
}

/// What the source endpoint returns for `len` bytes: a counting pattern (byte `i` is
/// `i mod 256`), built by copying whole periods rather than byte by byte.
pub fn pattern(len: usize) -> Vec<u8> {
    const PERIOD: [u8; 4096] = {
        let mut p = [0u8; 4096];
        let mut i = 0;
        while i < p.len() {
            p[i] = i as u8;
            i += 1;
        }
        p
    };
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        // Every chunk starts at a multiple of 4096, so the pattern runs on unbroken.
        let n = (len - data.len()).min(PERIOD.len());
        data.extend_from_slice(&PERIOD[..n]);
    }
    data
}

fn descriptors() -> DeviceDescriptors {
    let ep = |address, transfer, max_packet_size, interval| Endpoint {
        address,
        transfer,
        max_packet_size,
        interval,
    };
    DeviceDescriptors {
        speed: Speed::High,
        usb_version: 0x0200,
        class: 0xff,
        subclass: 0,
        protocol: 0,
        max_packet_size0: 64,
        vendor_id: 0x1209,
        product_id: 0x77ff,
        device_version: 0x0100,
        manufacturer: "periwire".into(),
        product: "Source/Sink".into(),
        serial: "0001".into(),
        configuration_value: 1,
        configuration_attributes: 0,
        max_power: 50,
        configuration_extra: Vec::new(),
        interfaces: vec![Interface {
            number: 0,
            alternate: 0,
            class: 0xff,
            subclass: 0,
            protocol: 0,
            string: 0,
            class_descriptors: Vec::new(),
            endpoints: vec![
                ep(EP_SOURCE, TransferType::Bulk, 512, 0),
                ep(EP_SINK, TransferType::Bulk, 512, 0),
                ep(EP_INTERRUPT, TransferType::Interrupt, 8, 4),
                ep(EP_LOOP_OUT, TransferType::Bulk, 512, 0),
                ep(EP_LOOP_IN, TransferType::Bulk, 512, 0),
            ],
        }],
        extra_strings: Vec::new(),
    }
}

impl SourceSink {
    /// A new device and its handle.
    pub fn new() -> (Self, SourceSinkHandle) {
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(INTERRUPT_QUEUE);
        (
            Self {
                standard: StandardRequests::new(descriptors()),
                counters: counters.clone(),
                interrupts: tokio::sync::Mutex::new(rx),
                loopback: Mutex::new(VecDeque::new()),
                loopback_ready: Notify::new(),
            },
            SourceSinkHandle {
                counters,
                interrupts: tx,
            },
        )
    }

    fn loopback(&self) -> std::sync::MutexGuard<'_, VecDeque<Vec<u8>>> {
        self.loopback.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn loopback_in(&self, limit: u32) -> Result<Completion, TransferError> {
        loop {
            let notified = self.loopback_ready.notified();
            if let Some(mut chunk) = self.loopback().pop_front() {
                let limit = limit as usize;
                if chunk.len() > limit {
                    // Keep the rest at the front for the next URB.
                    let rest = chunk.split_off(limit);
                    self.loopback().push_front(rest);
                }
                return Ok(Completion::data_in(chunk));
            }
            notified.await;
        }
    }
}

impl SourceSink {
    /// Carries out one URB; none of this device's fails partway.
    async fn transfer(&self, urb: Urb) -> Result<Completion, TransferError> {
        if urb.endpoint == 0 {
            return match self.standard.handle(urb.setup, &urb.data) {
                Some((result, _)) => result,
                None => Err(TransferError::Stall),
            };
        }
        match (urb.endpoint_address(), urb.direction) {
            (EP_SOURCE, Direction::In) => {
                let data = pattern(urb.length as usize);
                self.counters
                    .sourced
                    .fetch_add(u64::from(urb.length), Ordering::Relaxed);
                Ok(Completion::data_in(data))
            }
            (EP_SINK, Direction::Out) => {
                self.counters
                    .sunk
                    .fetch_add(urb.data.len() as u64, Ordering::Relaxed);
                Ok(Completion::data_out(urb.data.len()))
            }
            (EP_INTERRUPT, Direction::In) => {
                // recv() is cancel-safe: a dropped URB takes no report with it.
                let mut rx = self.interrupts.lock().await;
                match rx.recv().await {
                    Some(report) => Ok(Completion::data_in_limited(report, urb.length.min(8))),
                    None => Err(TransferError::Disconnected),
                }
            }
            (EP_LOOP_OUT, Direction::Out) => {
                let len = urb.data.len();
                let mut q = self.loopback();
                let held: usize = q.iter().map(Vec::len).sum();
                if held + len > LOOPBACK_CAPACITY {
                    return Err(TransferError::Stall);
                }
                if len > 0 {
                    q.push_back(urb.data);
                }
                drop(q);
                self.loopback_ready.notify_one();
                Ok(Completion::data_out(len))
            }
            (EP_LOOP_IN, Direction::In) => self.loopback_in(urb.length).await,
            _ => Err(TransferError::Stall),
        }
    }
}

impl UsbDevice for SourceSink {
    fn info(&self) -> DeviceInfo {
        self.standard.descriptors().info()
    }

    fn submit(&self, urb: Urb) -> BoxFuture<'_, Completion> {
        Box::pin(async move { self.transfer(urb).await.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::pattern;

    #[test]
    fn pattern_counts_modulo_256_at_any_length() {
        for len in [0, 1, 255, 256, 4095, 4096, 4097, 65536, 100_003] {
            let p = pattern(len);
            assert_eq!(p.len(), len);
            assert!(
                p.iter().enumerate().all(|(i, &b)| b == i as u8),
                "len {len}"
            );
        }
    }
}
