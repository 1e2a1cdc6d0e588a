//! The usb-host side of usbredir as a sans-IO state machine: periwire owns the device, QEMU's
//! `usb-redir` (the usb-guest) uses it.
//!
//! The driver feeds in the guest's bytes ([`UsbHost::handle_input`]) and what the device made
//! of each transfer ([`UsbHost::handle_completion`]); out come transfers for the device and
//! cancellations ([`UsbHost::poll_event`]) and bytes for the guest
//! ([`UsbHost::poll_transmit`]). Nothing here does I/O or reads the clock.
//!
//! What the state machine does, following `usb-redirection-protocol.txt`:
//! - sends its hello at once and reads the device's descriptors through its control pipe
//!   (device descriptor, each configuration, the active configuration); once the guest's hello
//!   is in too, it sends interface_info, ep_info and device_connect, in that order;
//! - turns control, bulk and interrupt OUT packets into transfers and answers each with a
//!   packet of the same type and id; transfers complete in order per endpoint (the driver's
//!   device queues keep that order), so replies do too;
//! - handles set_configuration and set_alt_setting *synchronously*, as the protocol asks: it
//!   reads no further packet until the device has answered, and on success sends the new
//!   interface_info and ep_info before the status reply;
//! - keeps one transfer in flight on each interrupt IN endpoint the guest started receiving
//!   on, and sends what it brings as interrupt packets numbered from 0;
//! - answers a cancelled packet at once with status cancelled (the late completion is dropped);
//! - refuses iso streams, bulk streams and buffered bulk (which it does not announce) with
//!   status inval;
//! - on [`UsbHost::disconnect`] (the device unplugged, the server stopping) answers everything
//!   pending as cancelled and sends device_disconnect, then waits for the guest's ack if both
//!   sides have [`Cap::DeviceDisconnectAck`].
//!
//! Memory is bounded: at most [`HostLimits::max_packets_in_flight`] data packets and about
//! [`HostLimits::max_bytes_in_flight`] bytes of them are held; beyond that the host stops
//! consuming input ([`UsbHost::wants_input`]) until completions free room.

use std::collections::{HashMap, VecDeque};

use super::{
    endpoint_index, BulkHeader, Cap, Caps, Codec, ControlHeader, DeviceConnect, EndpointEntry,
    EndpointHeader, EndpointType, Frame, InterfaceEntry, Limits, Packet, Role, Speed, Status,
    WireError, ENDPOINTS,
};
use crate::usb_descriptor::{
    ConfigurationDescriptor, DescriptorError, DeviceDescriptor, CONFIGURATION, CONFIGURATION_LEN,
    DEVICE, DEVICE_LEN,
};

/// The capabilities periwire's usb-host announces: what QEMU needs on xHCI
/// (ep_info_max_packet_size, 32bits_bulk_length, 64bits_ids), the device version in
/// device_connect, filters, and the disconnect ack. Not bulk streams, buffered bulk receiving.
pub fn host_caps() -> Caps {
    Caps::of(&[
        Cap::ConnectDeviceVersion,
        Cap::Filter,
        Cap::DeviceDisconnectAck,
        Cap::EpInfoMaxPacketSize,
        Cap::Ids64,
        Cap::BulkLength32,
    ])
}

/// Most configurations read from a device.
const MAX_CONFIGURATIONS: u8 = 8;

/// Caps on what one guest can make the host hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// Wire caps.
    pub wire: Limits,
    /// Data packets in flight before the host stops reading.
    pub max_packets_in_flight: usize,
    /// Bytes of data packets (OUT data plus IN lengths asked for) in flight before the host
    /// stops reading; one packet may go past it.
    pub max_bytes_in_flight: u64,
}

impl Default for HostLimits {
    fn default() -> Self {
        Self {
            wire: Limits::default(),
            max_packets_in_flight: 256,
            max_bytes_in_flight: 64 * 1024 * 1024,
        }
    }
}

/// Which transfer a completion belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferId {
    /// A guest's data packet, by its id.
    Packet(u64),
    /// The transfer that polls an interrupt IN endpoint; `generation` tells a poll started
    /// again apart from one that was stopped.
    Poll {
        /// Endpoint address.
        endpoint: u8,
        /// Which start of receiving this poll belongs to.
        generation: u32,
    },
    /// A control transfer of the host's own (descriptor reads, set configuration, set
    /// interface).
    Host(u32),
}

/// The kind of a transfer for the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferKind {
    /// On the default control pipe, with its SETUP packet.
    Control {
        /// The 8 SETUP bytes.
        setup: [u8; 8],
    },
    /// Bulk.
    Bulk,
    /// Interrupt.
    Interrupt,
}

/// A transfer the device is to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Endpoint address (bit 7 set for IN); 0x00 or 0x80 for control.
    pub endpoint: u8,
    /// Its kind.
    pub kind: TransferKind,
    /// Bytes asked for (IN) or carried (OUT).
    pub length: u32,
    /// OUT data.
    pub data: Vec<u8>,
}

/// What the device made of a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferResult {
    /// Outcome.
    pub status: Status,
    /// IN data.
    pub data: Vec<u8>,
    /// Bytes moved (OUT).
    pub actual_length: u32,
}

/// Why a connection is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The device went away (or the server stops) and the guest was told.
    Disconnected,
    /// The guest's device filter refused the device.
    Rejected,
}

/// What the host asks of its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Hand this transfer to the device; report it back under `id`.
    Submit {
        /// Its id.
        id: TransferId,
        /// The transfer.
        transfer: Transfer,
    },
    /// Cancel the transfer `id`; its completion, if any still comes, is dropped.
    Cancel {
        /// Its id.
        id: TransferId,
    },
    /// The guest reset the device.
    Reset,
    /// Nothing more will happen on this connection; close it.
    Closed(CloseReason),
}

/// Why the guest loses its connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// Its bytes are not usbredir.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A packet came before the guest's hello, or a second hello.
    #[error("packet type {0} out of place (the hello comes first, once)")]
    OutOfOrder(u32),
    /// A packet only a usb-host sends.
    #[error("packet type {0} is not one a usb-guest sends")]
    Unexpected(u32),
    /// A data packet reuses the id of one in flight.
    #[error("packet id {0} is already in flight")]
    DuplicateId(u64),
    /// The device's descriptors could not be read.
    #[error("reading the device's descriptors: {0}")]
    Probe(String),
}

impl From<DescriptorError> for HostError {
    fn from(e: DescriptorError) -> Self {
        Self::Probe(e.to_string())
    }
}

/// A guest data packet in flight.
#[derive(Debug, Clone, Copy)]
enum Pending {
    Control(ControlHeader),
    Bulk(BulkHeader),
    Interrupt(EndpointHeader),
}

impl Pending {
    fn endpoint(&self) -> u8 {
        match self {
            Self::Control(h) => h.endpoint & 0x80,
            Self::Bulk(h) => h.endpoint,
            Self::Interrupt(h) => h.endpoint,
        }
    }
}

/// A control transfer of the host's own and why it was made.
#[derive(Debug, Clone, Copy)]
enum HostOp {
    DeviceDescriptor,
    ConfigurationHeader(u8),
    Configuration(u8),
    ActiveConfiguration,
    SetConfiguration { id: u64, configuration: u8 },
    SetAltSetting { id: u64, interface: u8, alt: u8 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading descriptors or waiting for the guest's hello.
    Connecting,
    /// device_connect sent.
    Connected,
    /// device_disconnect sent; waiting for the ack.
    Disconnecting,
    /// Over.
    Closed,
}

#[derive(Debug, Clone, Copy)]
struct Poll {
    generation: u32,
    next_id: u64,
    length: u32,
}

/// The usb-host state machine: see the [module documentation](self).
#[derive(Debug)]
pub struct UsbHost {
    codec: Codec,
    ours: Caps,
    limits: HostLimits,
    speed: Speed,
    state: State,
    peer_hello: bool,
    device: Option<DeviceDescriptor>,
    configurations: Vec<ConfigurationDescriptor>,
    probe_done: bool,
    configuration: u8,
    alts: HashMap<u8, u8>,
    endpoints: [EndpointEntry; ENDPOINTS],
    packets: HashMap<u64, Pending>,
    bytes_in_flight: u64,
    host_ops: HashMap<u32, HostOp>,
    next_host_id: u32,
    /// A set_configuration or set_alt_setting in progress: no input is read meanwhile.
    sync_pending: bool,
    polls: HashMap<u8, Poll>,
    next_generation: u32,
    filter: Option<String>,
    events: VecDeque<Event>,
    out: Vec<u8>,
}

impl UsbHost {
    /// A host for a device running at `speed`; the hello goes out at once and the first
    /// descriptor read is submitted.
    pub fn new(version: &str, speed: Speed, limits: HostLimits) -> Self {
        let ours = host_caps();
        let mut host = Self {
            codec: Codec::new(Role::Host, limits.wire),
            ours,
            limits,
            speed,
            state: State::Connecting,
            peer_hello: false,
            device: None,
            configurations: Vec::new(),
            probe_done: false,
            configuration: 0,
            alts: HashMap::new(),
            endpoints: [EndpointEntry::default(); ENDPOINTS],
            packets: HashMap::new(),
            bytes_in_flight: 0,
            host_ops: HashMap::new(),
            next_host_id: 0,
            sync_pending: false,
            polls: HashMap::new(),
            next_generation: 0,
            filter: None,
            events: VecDeque::new(),
            out: Vec::new(),
        };
        host.send(
            0,
            &Packet::Hello {
                version: version.to_owned(),
                capabilities: vec![ours.0],
            },
        );
        host.get_descriptor(HostOp::DeviceDescriptor, DEVICE, 0, DEVICE_LEN as u16);
        host
    }

    /// The codec in force (the negotiated capabilities).
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// Whether the host reads more input now: not while a synchronous request is with the
    /// device, not while the in-flight caps are reached, not once closed.
    pub fn wants_input(&self) -> bool {
        !self.sync_pending
            && self.packets.len() < self.limits.max_packets_in_flight
            && self.bytes_in_flight < self.limits.max_bytes_in_flight
            && self.state != State::Closed
    }

    /// Whether device_connect has gone out and no disconnect since.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// The filter the guest sent, if any.
    pub fn guest_filter(&self) -> Option<&str> {
        self.filter.as_deref()
    }

    /// Data packets in flight.
    pub fn packets_in_flight(&self) -> usize {
        self.packets.len()
    }

    /// Consumes whole packets from the start of `buf` for as long as
    /// [`wants_input`](Self::wants_input); returns the bytes consumed. Bytes of an incomplete
    /// packet (or of packets not read yet) stay for the next call.
    pub fn handle_input(&mut self, buf: &[u8]) -> Result<usize, HostError> {
        let mut used = 0;
        while self.wants_input() {
            let Some((frame, n)) = self.codec.decode(&buf[used..])? else {
                break;
            };
            used += n;
            self.handle_packet(frame)?;
        }
        Ok(used)
    }

    /// The next thing for the driver to do.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Appends every byte waiting for the guest to `out`; returns whether there were any.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> bool {
        if self.out.is_empty() {
            return false;
        }
        if out.is_empty() {
            std::mem::swap(out, &mut self.out);
        } else {
            out.append(&mut self.out);
        }
        true
    }

    /// The device went away, or the server stops: everything pending is answered as
    /// cancelled and the guest is sent device_disconnect.
    pub fn disconnect(&mut self) {
        match self.state {
            State::Disconnecting | State::Closed => return,
            State::Connecting if !self.peer_hello => {
                self.close(CloseReason::Disconnected);
                return;
            }
            State::Connecting | State::Connected => {}
        }
        self.cancel_where(|_| true);
        self.stop_polls(|_| true);
        for id in self.host_ops.keys().copied().collect::<Vec<_>>() {
            self.events.push_back(Event::Cancel {
                id: TransferId::Host(id),
            });
        }
        self.host_ops.clear();
        self.sync_pending = false;
        self.send(0, &Packet::DeviceDisconnect);
        if self.codec.has(Cap::DeviceDisconnectAck) {
            self.state = State::Disconnecting;
        } else {
            self.close(CloseReason::Disconnected);
        }
    }

    fn close(&mut self, reason: CloseReason) {
        if self.state != State::Closed {
            self.state = State::Closed;
            self.events.push_back(Event::Closed(reason));
        }
    }

    fn send(&mut self, id: u64, packet: &Packet) {
        self.codec.encode(id, packet, &mut self.out);
    }

    fn submit(&mut self, id: TransferId, transfer: Transfer) {
        self.events.push_back(Event::Submit { id, transfer });
    }

    fn host_control(&mut self, op: HostOp, setup: [u8; 8]) {
        let id = self.next_host_id;
        self.next_host_id = self.next_host_id.wrapping_add(1);
        self.host_ops.insert(id, op);
        let length = u32::from(u16::from_le_bytes([setup[6], setup[7]]));
        self.submit(
            TransferId::Host(id),
            Transfer {
                endpoint: setup[0] & 0x80,
                kind: TransferKind::Control { setup },
                length,
                data: Vec::new(),
            },
        );
    }

    fn get_descriptor(&mut self, op: HostOp, kind: u8, index: u8, length: u16) {
        let [l0, l1] = length.to_le_bytes();
        // GET_DESCRIPTOR, device-to-host, standard, device.
        self.host_control(op, [0x80, 0x06, index, kind, 0, 0, l0, l1]);
    }

    fn handle_packet(&mut self, frame: Frame) -> Result<(), HostError> {
        let Frame { id, packet } = frame;
        let kind = packet.kind();
        if !self.peer_hello {
            let Packet::Hello { capabilities, .. } = packet else {
                return Err(HostError::OutOfOrder(kind));
            };
            self.peer_hello = true;
            let theirs = Caps(capabilities.first().copied().unwrap_or(0));
            self.codec.negotiate(self.ours, theirs);
            self.connect_if_ready();
            return Ok(());
        }
        if matches!(self.state, State::Disconnecting | State::Closed) {
            // After device_disconnect the guest's packets are for a device that is gone; only
            // its ack matters.
            if let Packet::DeviceDisconnectAck = packet {
                self.close(CloseReason::Disconnected);
            }
            return Ok(());
        }
        match packet {
            Packet::Hello { .. } => return Err(HostError::OutOfOrder(kind)),
            Packet::Reset => {
                self.cancel_where(|_| true);
                self.stop_polls(|_| true);
                self.events.push_back(Event::Reset);
            }
            Packet::SetConfiguration { configuration } => self.set_configuration(id, configuration),
            Packet::GetConfiguration => self.send(
                id,
                &Packet::ConfigurationStatus {
                    status: Status::Success,
                    configuration: self.configuration,
                },
            ),
            Packet::SetAltSetting { interface, alt } => self.set_alt_setting(id, interface, alt),
            Packet::GetAltSetting { interface } => {
                let (status, alt) = match self.active_configuration() {
                    Some(c) if c.interface_numbers().contains(&interface) => (
                        Status::Success,
                        self.alts.get(&interface).copied().unwrap_or(0),
                    ),
                    _ => (Status::Inval, 255),
                };
                self.send(
                    id,
                    &Packet::AltSettingStatus {
                        status,
                        interface,
                        alt,
                    },
                );
            }
            Packet::StartIsoStream { endpoint, .. } | Packet::StopIsoStream { endpoint } => self
                .send(
                    id,
                    &Packet::IsoStreamStatus {
                        status: Status::Inval,
                        endpoint,
                    },
                ),
            Packet::StartInterruptReceiving { endpoint } => {
                let status = self.start_polling(endpoint);
                self.send(id, &Packet::InterruptReceivingStatus { status, endpoint });
            }
            Packet::StopInterruptReceiving { endpoint } => {
                self.stop_polls(|ep| ep == endpoint);
                self.send(
                    id,
                    &Packet::InterruptReceivingStatus {
                        status: Status::Success,
                        endpoint,
                    },
                );
            }
            Packet::AllocBulkStreams { endpoints, .. } | Packet::FreeBulkStreams { endpoints } => {
                self.send(
                    id,
                    &Packet::BulkStreamsStatus {
                        endpoints,
                        streams: 0,
                        status: Status::Inval,
                    },
                )
            }
            Packet::StartBulkReceiving {
                stream_id,
                endpoint,
                ..
            }
            | Packet::StopBulkReceiving {
                stream_id,
                endpoint,
            } => self.send(
                id,
                &Packet::BulkReceivingStatus {
                    stream_id,
                    endpoint,
                    status: Status::Inval,
                },
            ),
            Packet::CancelDataPacket => {
                if let Some(pending) = self.packets.remove(&id) {
                    self.events.push_back(Event::Cancel {
                        id: TransferId::Packet(id),
                    });
                    self.release(pending);
                    self.reply(id, pending, Status::Cancelled, Vec::new(), 0);
                }
            }
            Packet::FilterReject => self.close(CloseReason::Rejected),
            Packet::FilterFilter { rules } => self.filter = Some(rules),
            // Only meaningful after a disconnect (handled above).
            Packet::DeviceDisconnectAck => {}
            Packet::Control(h, data) => self.control(id, h, data)?,
            Packet::Bulk(h, data) => self.bulk(id, h, data)?,
            Packet::Interrupt(h, data) => self.interrupt(id, h, data)?,
            // No iso stream is ever started, so iso data has nowhere to go.
            Packet::Iso(..) => {}
            Packet::DeviceConnect(_)
            | Packet::DeviceDisconnect
            | Packet::InterfaceInfo(_)
            | Packet::EpInfo(_)
            | Packet::ConfigurationStatus { .. }
            | Packet::AltSettingStatus { .. }
            | Packet::IsoStreamStatus { .. }
            | Packet::InterruptReceivingStatus { .. }
            | Packet::BulkStreamsStatus { .. }
            | Packet::BulkReceivingStatus { .. }
            | Packet::BufferedBulk(..) => return Err(HostError::Unexpected(kind)),
        }
        Ok(())
    }

    fn track(&mut self, id: u64, pending: Pending, bytes: u32) -> Result<(), HostError> {
        if self.packets.contains_key(&id) {
            return Err(HostError::DuplicateId(id));
        }
        self.packets.insert(id, pending);
        self.bytes_in_flight += u64::from(bytes);
        Ok(())
    }

    fn release(&mut self, pending: Pending) {
        let bytes = match pending {
            Pending::Control(h) => u32::from(h.length),
            Pending::Bulk(h) => h.length,
            Pending::Interrupt(h) => u32::from(h.length),
        };
        self.bytes_in_flight = self.bytes_in_flight.saturating_sub(u64::from(bytes));
    }

    fn endpoint_type(&self, address: u8) -> EndpointType {
        self.endpoints[endpoint_index(address)].kind
    }

    fn control(&mut self, id: u64, h: ControlHeader, data: Vec<u8>) -> Result<(), HostError> {
        if h.endpoint & 0x7f != 0 {
            self.reply(id, Pending::Control(h), Status::Inval, Vec::new(), 0);
            return Ok(());
        }
        self.track(id, Pending::Control(h), u32::from(h.length))?;
        let [v0, v1] = h.value.to_le_bytes();
        let [i0, i1] = h.index.to_le_bytes();
        let [l0, l1] = h.length.to_le_bytes();
        self.submit(
            TransferId::Packet(id),
            Transfer {
                endpoint: h.endpoint,
                kind: TransferKind::Control {
                    setup: [h.request_type, h.request, v0, v1, i0, i1, l0, l1],
                },
                length: u32::from(h.length),
                data,
            },
        );
        Ok(())
    }

    fn bulk(&mut self, id: u64, h: BulkHeader, data: Vec<u8>) -> Result<(), HostError> {
        if self.endpoint_type(h.endpoint) != EndpointType::Bulk || h.stream_id != 0 {
            self.reply(id, Pending::Bulk(h), Status::Inval, Vec::new(), 0);
            return Ok(());
        }
        self.track(id, Pending::Bulk(h), h.length)?;
        self.submit(
            TransferId::Packet(id),
            Transfer {
                endpoint: h.endpoint,
                kind: TransferKind::Bulk,
                length: h.length,
                data,
            },
        );
        Ok(())
    }

    fn interrupt(&mut self, id: u64, h: EndpointHeader, data: Vec<u8>) -> Result<(), HostError> {
        // Interrupt IN goes through start_interrupt_receiving, never through packets.
        if h.endpoint & 0x80 != 0 || self.endpoint_type(h.endpoint) != EndpointType::Interrupt {
            self.reply(id, Pending::Interrupt(h), Status::Inval, Vec::new(), 0);
            return Ok(());
        }
        self.track(id, Pending::Interrupt(h), u32::from(h.length))?;
        self.submit(
            TransferId::Packet(id),
            Transfer {
                endpoint: h.endpoint,
                kind: TransferKind::Interrupt,
                length: u32::from(h.length),
                data,
            },
        );
        Ok(())
    }

    /// Answers data packet `id` with `status` and what moved.
    fn reply(&mut self, id: u64, pending: Pending, status: Status, data: Vec<u8>, actual: u32) {
        let packet = match pending {
            Pending::Control(mut h) => {
                let is_in = h.endpoint & 0x80 != 0;
                let (status, data) = fit_in(status, data, u32::from(h.length), is_in);
                h.length = if is_in {
                    data.len() as u16
                } else {
                    actual.min(u32::from(h.length)) as u16
                };
                h.status = status;
                Packet::Control(h, data)
            }
            Pending::Bulk(mut h) => {
                let is_in = h.endpoint & 0x80 != 0;
                let (status, data) = fit_in(status, data, h.length, is_in);
                h.length = if is_in {
                    data.len() as u32
                } else {
                    actual.min(h.length)
                };
                h.status = status;
                Packet::Bulk(h, data)
            }
            Pending::Interrupt(mut h) => {
                h.length = actual.min(u32::from(h.length)) as u16;
                h.status = status;
                Packet::Interrupt(h, Vec::new())
            }
        };
        self.send(id, &packet);
    }

    /// Feeds in what the device made of transfer `id`.
    pub fn handle_completion(
        &mut self,
        id: TransferId,
        result: TransferResult,
    ) -> Result<(), HostError> {
        match id {
            TransferId::Packet(id) => {
                // A packet cancelled meanwhile was answered already.
                if let Some(pending) = self.packets.remove(&id) {
                    self.release(pending);
                    self.reply(
                        id,
                        pending,
                        result.status,
                        result.data,
                        result.actual_length,
                    );
                }
            }
            TransferId::Poll {
                endpoint,
                generation,
            } => self.poll_done(endpoint, generation, result),
            TransferId::Host(id) => {
                if let Some(op) = self.host_ops.remove(&id) {
                    self.host_op_done(op, result)?;
                }
            }
        }
        Ok(())
    }

    fn host_op_done(&mut self, op: HostOp, result: TransferResult) -> Result<(), HostError> {
        let ok = result.status == Status::Success;
        let failed = |what: &str| HostError::Probe(format!("{what}: {:?}", result.status));
        match op {
            HostOp::DeviceDescriptor => {
                if !ok {
                    return Err(failed("device descriptor"));
                }
                let device = DeviceDescriptor::parse(&result.data)?;
                self.device = Some(device);
                self.next_configuration(0);
            }
            HostOp::ConfigurationHeader(index) => {
                if !ok || result.data.len() < CONFIGURATION_LEN {
                    return Err(failed("configuration descriptor"));
                }
                let total = u16::from_le_bytes([result.data[2], result.data[3]]);
                self.get_descriptor(
                    HostOp::Configuration(index),
                    CONFIGURATION,
                    index,
                    total.max(CONFIGURATION_LEN as u16),
                );
            }
            HostOp::Configuration(index) => {
                if !ok {
                    return Err(failed("configuration descriptor"));
                }
                self.configurations
                    .push(ConfigurationDescriptor::parse(&result.data)?);
                self.next_configuration(index + 1);
            }
            HostOp::ActiveConfiguration => {
                // A device that will not say is taken as unconfigured; the guest configures
                // it.
                self.configuration = match (ok, result.data.first()) {
                    (true, Some(&value)) => value,
                    _ => 0,
                };
                self.probe_done = true;
                self.connect_if_ready();
            }
            HostOp::SetConfiguration { id, configuration } => {
                self.sync_pending = false;
                if ok {
                    self.configuration = configuration;
                    self.alts.clear();
                    self.send_interfaces_and_endpoints();
                }
                let status = result.status;
                let configuration = self.configuration;
                self.send(
                    id,
                    &Packet::ConfigurationStatus {
                        status,
                        configuration,
                    },
                );
            }
            HostOp::SetAltSetting { id, interface, alt } => {
                self.sync_pending = false;
                if ok {
                    self.alts.insert(interface, alt);
                    self.send_interfaces_and_endpoints();
                }
                let alt = self.alts.get(&interface).copied().unwrap_or(0);
                self.send(
                    id,
                    &Packet::AltSettingStatus {
                        status: result.status,
                        interface,
                        alt,
                    },
                );
            }
        }
        Ok(())
    }

    fn next_configuration(&mut self, index: u8) {
        let count = self.device.map_or(0, |d| d.num_configurations);
        if index < count.min(MAX_CONFIGURATIONS) {
            self.get_descriptor(
                HostOp::ConfigurationHeader(index),
                CONFIGURATION,
                index,
                CONFIGURATION_LEN as u16,
            );
        } else {
            // GET_CONFIGURATION, device-to-host, one byte.
            self.host_control(HostOp::ActiveConfiguration, [0x80, 0x08, 0, 0, 0, 0, 1, 0]);
        }
    }

    fn connect_if_ready(&mut self) {
        if self.state != State::Connecting || !self.probe_done || !self.peer_hello {
            return;
        }
        let Some(d) = self.device else {
            return;
        };
        self.send_interfaces_and_endpoints();
        self.send(
            0,
            &Packet::DeviceConnect(DeviceConnect {
                speed: self.speed,
                class: d.class,
                subclass: d.subclass,
                protocol: d.protocol,
                vendor_id: d.vendor_id,
                product_id: d.product_id,
                device_version: d.device_version,
            }),
        );
        self.state = State::Connected;
    }

    fn active_configuration(&self) -> Option<&ConfigurationDescriptor> {
        self.configurations
            .iter()
            .find(|c| c.value == self.configuration && self.configuration != 0)
    }

    /// Recomputes the endpoint table from the active configuration and alt settings and sends
    /// interface_info and ep_info.
    fn send_interfaces_and_endpoints(&mut self) {
        let mut endpoints = [EndpointEntry::default(); ENDPOINTS];
        let ep0 = EndpointEntry {
            kind: EndpointType::Control,
            max_packet_size: self.device.map_or(64, |d| d.ep0_max_packet_size()),
            ..EndpointEntry::default()
        };
        endpoints[0] = ep0;
        endpoints[16] = ep0;
        let mut interfaces = Vec::new();
        if let Some(config) = self.active_configuration() {
            for number in config.interface_numbers() {
                let alt = self.alts.get(&number).copied().unwrap_or(0);
                let Some(i) = config
                    .interface(number, alt)
                    .or_else(|| config.interface(number, 0))
                else {
                    continue;
                };
                if interfaces.len() < super::MAX_INTERFACES {
                    interfaces.push(InterfaceEntry {
                        number,
                        class: i.class,
                        subclass: i.subclass,
                        protocol: i.protocol,
                    });
                }
                for ep in &i.endpoints {
                    let slot = &mut endpoints[endpoint_index(ep.address)];
                    if ep.address & 0x0f == 0 {
                        continue;
                    }
                    *slot = EndpointEntry {
                        kind: EndpointType::from_u8(ep.transfer_type()),
                        interval: ep.interval,
                        interface: number,
                        max_packet_size: ep.max_packet_bytes(),
                        max_streams: 0,
                    };
                }
            }
        }
        self.endpoints = endpoints;
        self.send(0, &Packet::InterfaceInfo(interfaces));
        self.send(0, &Packet::EpInfo(Box::new(endpoints)));
    }

    fn set_configuration(&mut self, id: u64, configuration: u8) {
        let known =
            configuration == 0 || self.configurations.iter().any(|c| c.value == configuration);
        if !known {
            let current = self.configuration;
            self.send(
                id,
                &Packet::ConfigurationStatus {
                    status: Status::Inval,
                    configuration: current,
                },
            );
            return;
        }
        // The protocol drops whatever was pending on the device.
        self.cancel_where(|_| true);
        self.stop_polls(|_| true);
        self.sync_pending = true;
        // SET_CONFIGURATION, host-to-device, standard, device.
        self.host_control(
            HostOp::SetConfiguration { id, configuration },
            [0x00, 0x09, configuration, 0, 0, 0, 0, 0],
        );
    }

    fn set_alt_setting(&mut self, id: u64, interface: u8, alt: u8) {
        let exists = self
            .active_configuration()
            .is_some_and(|c| c.interface(interface, alt).is_some());
        if !exists {
            let current = self.alts.get(&interface).copied().unwrap_or(0);
            self.send(
                id,
                &Packet::AltSettingStatus {
                    status: Status::Inval,
                    interface,
                    alt: current,
                },
            );
            return;
        }
        // Only the endpoints of that interface are dropped.
        let of_interface: Vec<u8> = (0..ENDPOINTS)
            .filter(|&i| {
                self.endpoints[i].interface == interface
                    && !matches!(
                        self.endpoints[i].kind,
                        EndpointType::Invalid | EndpointType::Control
                    )
            })
            .map(super::endpoint_address)
            .collect();
        self.cancel_where(|ep| of_interface.contains(&ep));
        self.stop_polls(|ep| of_interface.contains(&ep));
        self.sync_pending = true;
        // SET_INTERFACE, host-to-device, standard, interface.
        self.host_control(
            HostOp::SetAltSetting { id, interface, alt },
            [0x01, 0x0b, alt, 0, interface, 0, 0, 0],
        );
    }

    /// Cancels the data packets on endpoints `which` selects, answering each as cancelled.
    fn cancel_where(&mut self, which: impl Fn(u8) -> bool) {
        let mut ids: Vec<u64> = self
            .packets
            .iter()
            .filter(|(_, p)| which(p.endpoint()))
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(pending) = self.packets.remove(&id) {
                self.events.push_back(Event::Cancel {
                    id: TransferId::Packet(id),
                });
                self.release(pending);
                self.reply(id, pending, Status::Cancelled, Vec::new(), 0);
            }
        }
    }

    fn start_polling(&mut self, endpoint: u8) -> Status {
        let entry = self.endpoints[endpoint_index(endpoint)];
        if endpoint & 0x80 == 0 || entry.kind != EndpointType::Interrupt {
            return Status::Inval;
        }
        if self.polls.contains_key(&endpoint) {
            return Status::Success;
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let poll = Poll {
            generation,
            next_id: 0,
            // A descriptor that says 0 bytes still gets room for a report.
            length: u32::from(entry.max_packet_size).max(1),
        };
        self.polls.insert(endpoint, poll);
        self.submit_poll(endpoint, poll);
        Status::Success
    }

    fn submit_poll(&mut self, endpoint: u8, poll: Poll) {
        self.submit(
            TransferId::Poll {
                endpoint,
                generation: poll.generation,
            },
            Transfer {
                endpoint,
                kind: TransferKind::Interrupt,
                length: poll.length,
                data: Vec::new(),
            },
        );
    }

    fn stop_polls(&mut self, which: impl Fn(u8) -> bool) {
        let mut stopped: Vec<(u8, Poll)> = self
            .polls
            .iter()
            .filter(|(&ep, _)| which(ep))
            .map(|(&ep, &p)| (ep, p))
            .collect();
        stopped.sort_unstable_by_key(|(ep, _)| *ep);
        for (endpoint, poll) in stopped {
            self.polls.remove(&endpoint);
            self.events.push_back(Event::Cancel {
                id: TransferId::Poll {
                    endpoint,
                    generation: poll.generation,
                },
            });
        }
    }

    fn poll_done(&mut self, endpoint: u8, generation: u32, result: TransferResult) {
        let Some(poll) = self.polls.get_mut(&endpoint) else {
            return;
        };
        if poll.generation != generation || self.state != State::Connected {
            return;
        }
        let id = poll.next_id;
        poll.next_id += 1;
        let poll = *poll;
        if result.status == Status::Success {
            let (status, data) = fit_in(result.status, result.data, poll.length, true);
            let header = EndpointHeader {
                endpoint,
                status,
                length: data.len() as u16,
            };
            self.send(id, &Packet::Interrupt(header, data));
            self.submit_poll(endpoint, poll);
        } else {
            // The protocol reports a stream stopped other than by the guest as a stall.
            self.polls.remove(&endpoint);
            self.send(
                0,
                &Packet::InterruptReceivingStatus {
                    status: Status::Stall,
                    endpoint,
                },
            );
        }
    }
}

/// IN data cut to the `length` asked for (the device babbled if it sent more); OUT replies
/// carry none.
fn fit_in(status: Status, mut data: Vec<u8>, length: u32, is_in: bool) -> (Status, Vec<u8>) {
    if !is_in {
        return (status, Vec::new());
    }
    let max = usize::try_from(length).unwrap_or(usize::MAX);
    if data.len() > max {
        data.truncate(max);
        let status = if status == Status::Success {
            Status::Babble
        } else {
            status
        };
        return (status, data);
    }
    (status, data)
}

#[cfg(test)]
mod tests;
