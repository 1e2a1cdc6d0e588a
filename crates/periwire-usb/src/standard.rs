//! Standard control requests (USB 2.0 §9.4) answered from a device's descriptors, shared by
//! every virtual device.

use std::sync::Mutex;

use crate::descriptor::{kind, DeviceDescriptors};
use crate::device::{Completion, TransferError};
use crate::setup::{request, Recipient, RequestKind, SetupPacket};

/// Hub class SET_FEATURE(PORT_RESET) as `usbip-host` sees it when a client resets the port
/// (bmRequestType 0x23, wValue 4).
const PORT_RESET_REQUEST_TYPE: u8 = 0x23;
const USB_PORT_FEAT_RESET: u16 = 4;
const ENDPOINT_HALT: u16 = 0;

#[derive(Debug, Default)]
struct State {
    configuration: u8,
    /// (interface number, alternate setting) pairs that differ from 0.
    alternates: Vec<(u8, u8)>,
    halted: Vec<u8>,
}

/// Answers the standard requests of a virtual device and keeps the state they set
/// (configuration, alternate settings, halted endpoints).
#[derive(Debug)]
pub struct StandardRequests {
    descriptors: DeviceDescriptors,
    device_descriptor: Vec<u8>,
    configuration_descriptor: Vec<u8>,
    state: Mutex<State>,
}

/// Which standard event a request caused, so the device can react (reset its function state
/// on a new configuration, clear a halted pipe's queue, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandardEvent {
    /// Nothing beyond the reply.
    None,
    /// SET_CONFIGURATION or a port reset: the device's function state starts afresh.
    Reset,
    /// SET_INTERFACE selected an alternate setting.
    AlternateSet {
        /// Interface number.
        interface: u8,
        /// Alternate setting.
        alternate: u8,
    },
    /// CLEAR_FEATURE(ENDPOINT_HALT) on this endpoint address.
    HaltCleared(u8),
}

impl StandardRequests {
    /// Serves requests for `descriptors`.
    pub fn new(descriptors: DeviceDescriptors) -> Self {
        Self {
            device_descriptor: descriptors.device_descriptor(),
            configuration_descriptor: descriptors.configuration_descriptor(),
            descriptors,
            state: Mutex::new(State::default()),
        }
    }

    /// The descriptors served.
    pub fn descriptors(&self) -> &DeviceDescriptors {
        &self.descriptors
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another URB's handler panicked; the state stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The active configuration value (0 while unconfigured).
    pub fn configuration(&self) -> u8 {
        self.state().configuration
    }

    /// Whether the endpoint with this address is halted.
    pub fn is_halted(&self, address: u8) -> bool {
        self.state().halted.contains(&address)
    }

    /// Marks an endpoint halted (a function stalls it, e.g. a Bulk-Only phase error).
    pub fn halt(&self, address: u8) {
        let mut s = self.state();
        if !s.halted.contains(&address) {
            s.halted.push(address);
        }
    }

    /// Answers `setup` if it is a standard request this module handles; `None` leaves it to
    /// the device (class and vendor requests, interface-specific descriptors such as the HID
    /// report descriptor).
    pub fn handle(
        &self,
        setup: SetupPacket,
        _data: &[u8],
    ) -> Option<(Result<Completion, TransferError>, StandardEvent)> {
        if setup.request_type == PORT_RESET_REQUEST_TYPE
            && setup.request == request::SET_FEATURE
            && setup.value == USB_PORT_FEAT_RESET
        {
            *self.state() = State::default();
            return Some((Ok(Completion::default()), StandardEvent::Reset));
        }
        if setup.kind() != RequestKind::Standard {
            return None;
        }
        let ok = |e| Some((Ok(Completion::default()), e));
        let stall = Some((Err(TransferError::Stall), StandardEvent::None));
        let reply = |bytes: &[u8]| {
            Some((
                Ok(Completion::data_in_limited(
                    bytes.to_vec(),
                    setup.length.into(),
                )),
                StandardEvent::None,
            ))
        };
        match (setup.recipient(), setup.request) {
            (Recipient::Device, request::GET_DESCRIPTOR) => {
                let [index, ty] = setup.value.to_le_bytes();
                match ty {
                    kind::DEVICE => reply(&self.device_descriptor),
                    kind::CONFIGURATION if index == 0 => reply(&self.configuration_descriptor),
                    kind::STRING => match self.descriptors.string_descriptor(index) {
                        Some(s) => reply(&s),
                        None => stall,
                    },
                    kind::DEVICE_QUALIFIER => match self.descriptors.device_qualifier() {
                        Some(q) => reply(&q),
                        None => stall,
                    },
                    _ => stall,
                }
            }
            (Recipient::Device, request::GET_CONFIGURATION) => reply(&[self.configuration()]),
            (Recipient::Device, request::SET_CONFIGURATION) => {
                let value = u8::try_from(setup.value).ok()?;
                if value != 0 && value != self.descriptors.configuration_value {
                    return stall;
                }
                *self.state() = State {
                    configuration: value,
                    ..State::default()
                };
                ok(StandardEvent::Reset)
            }
            (Recipient::Device, request::SET_ADDRESS) => ok(StandardEvent::None),
            (_, request::GET_STATUS) => {
                let halted = setup.recipient() == Recipient::Endpoint
                    && self.is_halted(setup.index.to_le_bytes()[0]);
                let self_powered = setup.recipient() == Recipient::Device
                    && self.descriptors.configuration_attributes & 0x40 != 0;
                reply(&[u8::from(halted || self_powered), 0])
            }
            (Recipient::Interface, request::GET_INTERFACE) => {
                let iface = setup.index.to_le_bytes()[0];
                let alt = self
                    .state()
                    .alternates
                    .iter()
                    .find(|(i, _)| *i == iface)
                    .map_or(0, |(_, a)| *a);
                reply(&[alt])
            }
            (Recipient::Interface, request::SET_INTERFACE) => {
                let interface = setup.index.to_le_bytes()[0];
                let alternate = u8::try_from(setup.value).ok()?;
                let exists = self
                    .descriptors
                    .interfaces
                    .iter()
                    .any(|i| i.number == interface && i.alternate == alternate);
                if !exists {
                    return stall;
                }
                let mut s = self.state();
                s.alternates.retain(|(i, _)| *i != interface);
                if alternate != 0 {
                    s.alternates.push((interface, alternate));
                }
                ok(StandardEvent::AlternateSet {
                    interface,
                    alternate,
                })
            }
            (Recipient::Endpoint, request::CLEAR_FEATURE) if setup.value == ENDPOINT_HALT => {
                let address = setup.index.to_le_bytes()[0];
                self.state().halted.retain(|&a| a != address);
                ok(StandardEvent::HaltCleared(address))
            }
            (Recipient::Endpoint, request::SET_FEATURE) if setup.value == ENDPOINT_HALT => {
                self.halt(setup.index.to_le_bytes()[0]);
                ok(StandardEvent::None)
            }
            (Recipient::Device, request::CLEAR_FEATURE | request::SET_FEATURE) => {
                ok(StandardEvent::None)
            }
            // Interface GET_DESCRIPTOR (HID report) and anything else: the device decides.
            _ => None,
        }
    }
}
