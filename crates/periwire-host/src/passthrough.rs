//! A host device passed through: [`HostDevice`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nusb::descriptors::TransferType as NusbTransferType;
use nusb::transfer::{ControlIn, ControlOut, ControlType, Recipient as NusbRecipient};
use nusb::MaybeFuture;
use periwire_usb::device::{Direction, InterfaceRecord};
use periwire_usb::setup::{request, Recipient, RequestKind};
use periwire_usb::{
    AttachError, BoxFuture, Completion, DeviceInfo, TransferError, Urb, UrbResult, UsbDevice,
};

use crate::endpoint::{self, AnyEndpoint, EndpointSlot};
use crate::HostError;

/// How long a control transfer may take. Linux gives its own control requests 5 s
/// (`USB_CTRL_GET_TIMEOUT`); a client's driver has its own timeouts on top.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// Feature selector ENDPOINT_HALT (USB 2.0 table 9-6).
const ENDPOINT_HALT: u16 = 0;

/// A USB device of this machine, exported over USB/IP.
pub struct HostDevice {
    busid: String,
    device: nusb::Device,
    claimed: Mutex<Claimed>,
}

/// What periwire holds of the device while a client has it imported.
#[derive(Default)]
struct Claimed {
    interfaces: BTreeMap<u8, nusb::Interface>,
    endpoints: HashMap<u8, OpenEndpoint>,
}

struct OpenEndpoint {
    interface: u8,
    slot: Arc<tokio::sync::Mutex<EndpointSlot>>,
}

impl std::fmt::Debug for HostDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostDevice")
            .field("busid", &self.busid)
            .finish_non_exhaustive()
    }
}

impl HostDevice {
    /// Opens the device with bus id `busid` (as `periwire list --local` shows it). Opening
    /// does not disturb the device: its local drivers keep it until a client imports it.
    pub fn open(busid: &str) -> Result<Self, HostError> {
        if !crate::usb_present() {
            return Err(HostError::NotFound(busid.to_owned()));
        }
        let info = nusb::list_devices()
            .wait()
            .map_err(|e| HostError::List(e.into()))?
            .find(|d| crate::busid(d).as_deref() == Some(busid))
            .ok_or_else(|| HostError::NotFound(busid.to_owned()))?;
        let device = info.open().wait().map_err(|e| HostError::Open {
            busid: busid.to_owned(),
            source: e.into(),
        })?;
        Ok(Self {
            busid: busid.to_owned(),
            device,
            claimed: Mutex::new(Claimed::default()),
        })
    }

    /// The bus id this device was opened by.
    pub fn busid(&self) -> &str {
        &self.busid
    }

    fn claimed(&self) -> MutexGuard<'_, Claimed> {
        // Every change to `Claimed` is a single insert or remove, so a poisoned lock is sound.
        self.claimed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Interface numbers of the active configuration.
    fn interface_numbers(&self) -> Result<Vec<u8>, AttachError> {
        let config = self
            .device
            .active_configuration()
            .map_err(|e| AttachError(format!("{}: no active configuration: {e}", self.busid)))?;
        Ok(config.interfaces().map(|i| i.interface_number()).collect())
    }

    /// Takes every interface of the active configuration from its local driver.
    fn claim_all(&self) -> Result<(), AttachError> {
        let numbers = self.interface_numbers()?;
        let mut taken = BTreeMap::new();
        for n in numbers {
            match self.device.detach_and_claim_interface(n).wait() {
                Ok(interface) => {
                    taken.insert(n, interface);
                }
                Err(e) => {
                    let mut detached: Vec<u8> = taken.into_keys().collect();
                    detached.push(n);
                    self.give_back(&detached);
                    return Err(AttachError(format!(
                        "{}: interface {n} cannot be taken from its driver: {e}",
                        self.busid
                    )));
                }
            }
        }
        tracing::info!(busid = %self.busid, interfaces = taken.len(), "host device taken from its local drivers");
        self.claimed().interfaces = taken;
        Ok(())
    }

    /// Drops every open endpoint (cancelling what is in flight) and interface.
    fn release_all(&self) -> Vec<u8> {
        let mut claimed = self.claimed();
        claimed.endpoints.clear();
        let released: Vec<u8> = claimed.interfaces.keys().copied().collect();
        claimed.interfaces.clear();
        released
    }

    /// Asks the local drivers to bind `interfaces` again.
    fn give_back(&self, interfaces: &[u8]) {
        for &n in interfaces {
            if let Err(e) = self.device.attach_kernel_driver(n) {
                // Common and harmless: an interface no local driver wants.
                tracing::debug!(busid = %self.busid, interface = n, error = %e, "no local driver rebinds");
            }
        }
    }

    /// The endpoint `address` of the current alternate settings, opened on first use.
    fn endpoint(
        &self,
        address: u8,
    ) -> Result<Arc<tokio::sync::Mutex<EndpointSlot>>, TransferError> {
        let mut claimed = self.claimed();
        if let Some(open) = claimed.endpoints.get(&address) {
            return Ok(Arc::clone(&open.slot));
        }
        let found = claimed.interfaces.iter().find_map(|(&n, interface)| {
            let alt = interface.descriptor()?;
            let ep = alt.endpoints().find(|e| e.address() == address)?;
            Some((n, interface, ep.transfer_type()))
        });
        let Some((number, interface, kind)) = found else {
            tracing::debug!(busid = %self.busid, endpoint = address, "no such endpoint in the current settings");
            return Err(TransferError::Stall);
        };
        let is_in = address & 0x80 != 0;
        let opened = match (kind, is_in) {
            (NusbTransferType::Bulk, true) => interface.endpoint(address).map(AnyEndpoint::BulkIn),
            (NusbTransferType::Bulk, false) => {
                interface.endpoint(address).map(AnyEndpoint::BulkOut)
            }
            (NusbTransferType::Interrupt, true) => {
                interface.endpoint(address).map(AnyEndpoint::InterruptIn)
            }
            (NusbTransferType::Interrupt, false) => {
                interface.endpoint(address).map(AnyEndpoint::InterruptOut)
            }
            (other, _) => {
                tracing::warn!(busid = %self.busid, endpoint = address, kind = ?other, "transfers of this kind are not carried");
                return Err(TransferError::Fault);
            }
        };
        let endpoint = opened.map_err(|e| {
            tracing::warn!(busid = %self.busid, endpoint = address, error = %e, "cannot open endpoint");
            TransferError::Fault
        })?;
        let slot = Arc::new(tokio::sync::Mutex::new(EndpointSlot::new(endpoint)));
        claimed.endpoints.insert(
            address,
            OpenEndpoint {
                interface: number,
                slot: Arc::clone(&slot),
            },
        );
        Ok(slot)
    }

    async fn control(&self, urb: Urb) -> UrbResult {
        let setup = urb.setup;
        let control_type = match setup.kind() {
            RequestKind::Standard => ControlType::Standard,
            RequestKind::Class => ControlType::Class,
            RequestKind::Vendor => ControlType::Vendor,
            RequestKind::Reserved => return Err(TransferError::Stall),
        };
        let recipient = match (setup.recipient(), setup.request_type & 0x1f) {
            (Recipient::Device, _) => NusbRecipient::Device,
            (Recipient::Interface, _) => NusbRecipient::Interface,
            (Recipient::Endpoint, _) => NusbRecipient::Endpoint,
            (Recipient::Other, 3) => NusbRecipient::Other,
            (Recipient::Other, _) => return Err(TransferError::Stall),
        };
        // The requests that change host-side state go through the OS, so that it and the
        // device agree (as usbip-host does in `tweak_special_requests`).
        if control_type == ControlType::Standard {
            let low = |v: u16| v.to_le_bytes()[0];
            match (recipient, setup.request) {
                (NusbRecipient::Device, request::SET_CONFIGURATION) => {
                    return self.set_configuration(low(setup.value)).await;
                }
                (NusbRecipient::Interface, request::SET_INTERFACE) => {
                    return self.set_interface(low(setup.index), low(setup.value)).await;
                }
                (NusbRecipient::Endpoint, request::CLEAR_FEATURE)
                    if setup.value == ENDPOINT_HALT =>
                {
                    return self.clear_halt(low(setup.index), &urb).await;
                }
                _ => {}
            }
        }
        match urb.direction {
            Direction::In => {
                let data = self
                    .device
                    .control_in(
                        ControlIn {
                            control_type,
                            recipient,
                            request: setup.request,
                            value: setup.value,
                            index: setup.index,
                            length: setup.length,
                        },
                        CONTROL_TIMEOUT,
                    )
                    .await
                    .map_err(control_error)?;
                Ok(Completion::data_in_limited(data, urb.length))
            }
            Direction::Out => self.control_out(&urb, control_type, recipient).await,
        }
    }

    async fn control_out(
        &self,
        urb: &Urb,
        control_type: ControlType,
        recipient: NusbRecipient,
    ) -> UrbResult {
        let setup = urb.setup;
        self.device
            .control_out(
                ControlOut {
                    control_type,
                    recipient,
                    request: setup.request,
                    value: setup.value,
                    index: setup.index,
                    data: &urb.data,
                },
                CONTROL_TIMEOUT,
            )
            .await
            .map_err(control_error)?;
        Ok(Completion::data_out(urb.data.len()))
    }

    async fn set_configuration(&self, value: u8) -> UrbResult {
        let active = self
            .device
            .active_configuration()
            .ok()
            .map(|c| c.configuration_value());
        if active == Some(value) {
            // What every client sends once after enumeration: nothing to change.
            return Ok(Completion::data_out(0));
        }
        tracing::info!(busid = %self.busid, from = ?active, to = value, "client changes the configuration");
        self.release_all();
        if let Err(e) = self.device.set_configuration(value).await {
            tracing::warn!(busid = %self.busid, value, error = %e, "SET_CONFIGURATION failed");
            return Err(TransferError::Stall);
        }
        if value != 0 {
            self.claim_all().map_err(|e| {
                tracing::warn!(busid = %self.busid, error = %e, "after SET_CONFIGURATION");
                TransferError::Fault
            })?;
        }
        Ok(Completion::data_out(0))
    }

    async fn set_interface(&self, number: u8, alternate: u8) -> UrbResult {
        let interface = {
            let mut claimed = self.claimed();
            // nusb wants no open endpoint on an interface whose setting changes; the new
            // setting's endpoints open on first use.
            claimed.endpoints.retain(|_, open| open.interface != number);
            claimed.interfaces.get(&number).cloned()
        };
        let Some(interface) = interface else {
            return Err(TransferError::Stall);
        };
        match interface.set_alt_setting(alternate).await {
            Ok(()) => Ok(Completion::data_out(0)),
            Err(e) => {
                tracing::debug!(busid = %self.busid, number, alternate, error = %e, "SET_INTERFACE failed");
                Err(TransferError::Stall)
            }
        }
    }

    async fn clear_halt(&self, address: u8, urb: &Urb) -> UrbResult {
        let slot = self.endpoint(address)?;
        // A URB still in flight on the endpoint holds it; then the request goes to the device
        // as it is, which clears the halt there (the host's toggle is the client's concern).
        let Ok(mut slot) = slot.try_lock_owned() else {
            return self
                .control_out(urb, ControlType::Standard, NusbRecipient::Endpoint)
                .await;
        };
        match slot.clear_halt().await {
            Ok(()) => Ok(Completion::data_out(0)),
            Err(e) => {
                tracing::debug!(busid = %self.busid, endpoint = address, error = %e, "CLEAR_FEATURE(HALT) failed");
                Err(TransferError::Stall)
            }
        }
    }

    async fn bulk_or_interrupt(&self, urb: Urb) -> UrbResult {
        if !urb.iso_packets.is_empty() {
            tracing::warn!(busid = %self.busid, endpoint = urb.endpoint_address(), "isochronous transfers are not carried");
            return Err(TransferError::Fault);
        }
        let slot = self.endpoint(urb.endpoint_address())?;
        endpoint::transfer(slot.lock_owned().await, urb).await
    }
}

/// The periwire error of a failed control transfer; nusb reports its timeout as cancelled.
fn control_error(e: nusb::transfer::TransferError) -> TransferError {
    match endpoint::transfer_error(e) {
        TransferError::Cancelled => TransferError::Timeout,
        other => other,
    }
}

impl UsbDevice for HostDevice {
    fn info(&self) -> DeviceInfo {
        let descriptor = self.device.device_descriptor();
        let config = self.device.active_configuration().ok();
        let interfaces = config
            .as_ref()
            .map(|c| {
                c.interfaces()
                    .map(|i| {
                        let alt = i.first_alt_setting();
                        InterfaceRecord {
                            class: alt.class(),
                            subclass: alt.subclass(),
                            protocol: alt.protocol(),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        DeviceInfo {
            speed: crate::speed(self.device.speed()),
            vendor_id: descriptor.vendor_id(),
            product_id: descriptor.product_id(),
            device_version: descriptor.device_version(),
            class: descriptor.class(),
            subclass: descriptor.subclass(),
            protocol: descriptor.protocol(),
            configuration_value: config.map_or(0, |c| c.configuration_value()),
            num_configurations: descriptor.num_configurations(),
            interfaces,
        }
    }

    fn submit(&self, urb: Urb) -> BoxFuture<'_, UrbResult> {
        Box::pin(async move {
            if urb.endpoint == 0 {
                self.control(urb).await
            } else {
                self.bulk_or_interrupt(urb).await
            }
        })
    }

    fn attached(&self) -> Result<(), AttachError> {
        self.claim_all()
    }

    fn detached(&self) {
        let released = self.release_all();
        if !released.is_empty() {
            self.give_back(&released);
            tracing::info!(busid = %self.busid, "host device given back to its local drivers");
        }
    }

    fn shutdown(&self) {
        self.detached();
    }
}
