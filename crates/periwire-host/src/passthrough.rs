//! A host device passed through: [`HostDevice`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nusb::descriptors::TransferType as NusbTransferType;
use nusb::transfer::{ControlIn, ControlOut, ControlType, Recipient as NusbRecipient};
use nusb::MaybeFuture;
use periwire_usb::device::Direction;
use periwire_usb::setup::{request, Recipient, RequestKind};
use periwire_usb::{AttachError, BoxFuture, Completion, DeviceInfo, TransferError, Urb, UsbDevice};

use crate::endpoint::{self, AnyEndpoint, EndpointQueue, SharedQueue};
use crate::usbfs::IsoInterfaces;
use crate::HostError;

/// How long a control transfer may take. Linux gives its own control requests 5 s
/// (`USB_CTRL_GET_TIMEOUT`); a client's driver has its own timeouts on top.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an imported device is checked for being unplugged.
const UNPLUG_POLL: Duration = Duration::from_secs(1);
/// Feature selector ENDPOINT_HALT (USB 2.0 table 9-6).
const ENDPOINT_HALT: u16 = 0;
/// bmRequestType of a hub's port request: class, to "other" (USB 2.0 table 11-15).
const PORT_REQUEST: u8 = 0x23;
/// Port feature selector PORT_RESET (USB 2.0 table 11-17).
const PORT_RESET: u16 = 4;

/// A USB device of this machine, exported over USB/IP by its bus id.
///
/// The device is opened when a client imports it and closed when the client lets go, so a
/// device unplugged and plugged back in (or replaced by another at the same port) is simply
/// the one found at the next import, as with `usbip bind`.
pub struct HostDevice {
    busid: String,
    /// Whether the device is kept from its local drivers between imports too.
    force: bool,
    /// Set while a client has the device imported.
    claimed: Mutex<Option<Claimed>>,
    /// What a forced device holds while no client has it.
    held: Mutex<Option<Claimed>>,
    /// What the device list showed last; kept while the device is unplugged.
    last_info: Mutex<DeviceInfo>,
}

/// What periwire holds of the device while a client has it imported.
struct Claimed {
    /// Its address on the bus: a device plugged in again gets a new one.
    address: u8,
    /// Its usbfs node, `/dev/bus/usb/BBB/DDD`.
    node: PathBuf,
    device: nusb::Device,
    /// The interfaces nusb holds.
    interfaces: NusbInterfaces,
    /// The interfaces with isochronous endpoints, held on periwire's own usbfs handle.
    iso: Option<Arc<IsoInterfaces>>,
    endpoints: HashMap<u8, OpenEndpoint>,
}

/// The interfaces nusb holds, by number.
type NusbInterfaces = BTreeMap<u8, nusb::Interface>;

struct OpenEndpoint {
    interface: u8,
    queue: SharedQueue,
}

impl std::fmt::Debug for HostDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostDevice")
            .field("busid", &self.busid)
            .finish_non_exhaustive()
    }
}

impl HostDevice {
    /// The device at bus id `busid` (as `periwire list --local` shows it), whether or not
    /// one is plugged in there now: the device list shows it while it is. This does not
    /// disturb it: its local drivers keep it until a client imports it.
    pub fn new(busid: &str) -> Result<Self, HostError> {
        let found = find(busid)?;
        Ok(Self {
            busid: busid.to_owned(),
            force: false,
            claimed: Mutex::new(None),
            held: Mutex::new(None),
            last_info: Mutex::new(found.as_ref().map_or_else(absent_info, device_info)),
        })
    }

    /// The device at `busid`, taken from its local drivers now (as `usbip bind` does) and
    /// kept from them between imports, until this is dropped. A device plugged in later, or
    /// again, is taken by the next [`hold`](Self::hold).
    pub fn forced(busid: &str) -> Result<Self, HostError> {
        let mut device = Self::new(busid)?;
        device.force = true;
        device.hold();
        Ok(device)
    }

    /// For a forced device: takes the device plugged at the bus id now from its local
    /// drivers, if nothing holds it yet (or what was held has been unplugged since). Does
    /// nothing for a device that is not forced.
    pub fn hold(&self) {
        if !self.force || self.claimed().is_some() {
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held
            .as_ref()
            .is_some_and(|h| plugged(&self.busid, h.address))
        {
            return;
        }
        *held = None;
        if !self.is_plugged() {
            return;
        }
        match self.open_and_claim() {
            Ok(claimed) => *held = Some(claimed),
            Err(e) => {
                tracing::warn!(busid = %self.busid, error = %e, "cannot take the device from its local drivers")
            }
        }
    }

    /// Whether a device is plugged in at the bus id now.
    pub fn is_plugged(&self) -> bool {
        matches!(find(&self.busid), Ok(Some(_)))
    }

    /// The bus id the device is exported by.
    pub fn busid(&self) -> &str {
        &self.busid
    }

    fn claimed(&self) -> MutexGuard<'_, Option<Claimed>> {
        // Every change under this lock is a single assignment, so a poisoned lock is sound.
        self.claimed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The opened device, while imported; a URB that comes after the release finds it gone.
    fn device(&self) -> Result<nusb::Device, TransferError> {
        self.claimed()
            .as_ref()
            .map(|c| c.device.clone())
            .ok_or(TransferError::Disconnected)
    }

    /// Opens the device found at the bus id now and takes every interface.
    fn open_and_claim(&self) -> Result<Claimed, AttachError> {
        let found = find(&self.busid)
            .map_err(|e| AttachError(e.to_string()))?
            .ok_or_else(|| AttachError(format!("{} is not plugged in", self.busid)))?;
        *self.last_info.lock().unwrap_or_else(|e| e.into_inner()) = device_info(&found);
        let device = found
            .open()
            .wait()
            .map_err(|e| AttachError(format!("opening {}: {e}", self.busid)))?;
        let node = PathBuf::from(format!(
            "/dev/bus/usb/{:03}/{:03}",
            found.busnum(),
            found.device_address()
        ));
        let (interfaces, iso) = self.claim_all(&device, &node)?;
        Ok(Claimed {
            address: found.device_address(),
            node,
            device,
            interfaces,
            iso,
            endpoints: HashMap::new(),
        })
    }

    /// Takes every interface of the active configuration from its local driver: those with
    /// isochronous endpoints (in any alternate setting) on periwire's own usbfs handle of
    /// `node`, the others through nusb.
    fn claim_all(
        &self,
        device: &nusb::Device,
        node: &Path,
    ) -> Result<(NusbInterfaces, Option<Arc<IsoInterfaces>>), AttachError> {
        let config = device
            .active_configuration()
            .map_err(|e| AttachError(format!("{}: no active configuration: {e}", self.busid)))?;
        let numbers: Vec<(u8, bool)> = config
            .interfaces()
            .map(|i| {
                let iso = i.alt_settings().any(|alt| {
                    alt.endpoints()
                        .any(|e| e.transfer_type() == NusbTransferType::Isochronous)
                });
                (i.interface_number(), iso)
            })
            .collect();
        let iso = if numbers.iter().any(|&(_, iso)| iso) {
            let handle = IsoInterfaces::open(node).map_err(|e| {
                AttachError(format!("{}: opening {}: {e}", self.busid, node.display()))
            })?;
            Some(Arc::new(handle))
        } else {
            None
        };
        let mut taken = BTreeMap::new();
        for (n, has_iso) in numbers {
            let claimed = match &iso {
                Some(handle) if has_iso => handle.claim(n).map_err(|e| e.to_string()),
                _ => device
                    .detach_and_claim_interface(n)
                    .wait()
                    .map(|interface| {
                        taken.insert(n, interface);
                    })
                    .map_err(|e| e.to_string()),
            };
            if let Err(e) = claimed {
                // As in `release_interfaces`: the isochronous ones first.
                let mut detached = Vec::new();
                if let Some(handle) = &iso {
                    detached.extend(handle.numbers());
                    handle.release();
                }
                detached.extend(taken.into_keys());
                detached.push(n);
                self.give_back(device, &detached);
                return Err(AttachError(format!(
                    "{}: interface {n} cannot be taken from its driver: {e}",
                    self.busid
                )));
            }
        }
        let iso_count = iso.as_ref().map_or(0, |h| h.numbers().len());
        tracing::info!(busid = %self.busid, interfaces = taken.len() + iso_count, isochronous = iso_count, "host device taken from its local drivers");
        Ok((taken, iso))
    }

    /// Drops every open endpoint (cancelling what is in flight) and interface; the interface
    /// numbers that were held.
    fn release_interfaces(claimed: &mut Claimed) -> Vec<u8> {
        claimed.endpoints.clear();
        let mut released = Vec::new();
        // The isochronous interfaces first, and now rather than when the last URB future
        // lets go of the handle: nusb rebinds an interface's driver as it drops it, and a
        // driver of the whole function (snd-usb-audio binding the audio control interface)
        // takes its streaming interfaces only if they are free by then.
        if let Some(iso) = claimed.iso.take() {
            released.extend(iso.numbers());
            iso.release();
        }
        released.extend(claimed.interfaces.keys().copied());
        claimed.interfaces.clear();
        released.sort_unstable();
        released
    }

    /// Asks the local drivers to bind `interfaces` again.
    fn give_back(&self, device: &nusb::Device, interfaces: &[u8]) {
        for &n in interfaces {
            if let Err(e) = device.attach_kernel_driver(n) {
                // Common and harmless: an interface no local driver wants.
                tracing::debug!(busid = %self.busid, interface = n, error = %e, "no local driver rebinds");
            }
        }
    }

    /// The endpoint `address` of the current alternate settings, opened on first use.
    fn endpoint(&self, address: u8) -> Result<SharedQueue, TransferError> {
        let mut guard = self.claimed();
        let claimed = guard.as_mut().ok_or(TransferError::Disconnected)?;
        if let Some(open) = claimed.endpoints.get(&address) {
            return Ok(Arc::clone(&open.queue));
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
        let queue = EndpointQueue::new(endpoint);
        claimed.endpoints.insert(
            address,
            OpenEndpoint {
                interface: number,
                queue: Arc::clone(&queue),
            },
        );
        Ok(queue)
    }

    async fn control(&self, urb: Urb) -> Result<Completion, TransferError> {
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
        // A client that resets its port sends it to the device as the hub request it would
        // be (usbip-host reads it so too): the OS resets the device.
        if setup.request_type == PORT_REQUEST
            && setup.request == request::SET_FEATURE
            && setup.value == PORT_RESET
        {
            return self.reset().await;
        }
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
                    return self.clear_halt(low(setup.index)).await;
                }
                _ => {}
            }
        }
        match urb.direction {
            Direction::In => {
                let data = self
                    .device()?
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
    ) -> Result<Completion, TransferError> {
        let setup = urb.setup;
        self.device()?
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

    /// Resets the device through the OS, then opens it again and takes its interfaces, as
    /// nusb wants after a reset. URBs in flight on its endpoints end as the reset left them.
    async fn reset(&self) -> Result<Completion, TransferError> {
        let device = self.device()?;
        tracing::info!(busid = %self.busid, "client resets the device");
        if let Some(claimed) = self.claimed().as_mut() {
            // Cancelled now, they end as cancelled rather than as the reset's "shut down",
            // which would read as the device gone.
            for open in claimed.endpoints.values() {
                endpoint::cancel_everything(&open.queue);
            }
            claimed.endpoints.clear();
            // The isochronous interfaces too (their URBs end as cancelled), now: an ISO URB
            // future still holding the handle must not keep them from the new one.
            if let Some(iso) = claimed.iso.take() {
                iso.release();
            }
        }
        if let Err(e) = device.reset().await {
            tracing::warn!(busid = %self.busid, error = %e, "reset failed");
            return Err(TransferError::Stall);
        }
        drop(device);
        // The old handle is spent: let go of it before opening the device afresh.
        drop(self.claimed().take());
        match self.open_and_claim() {
            Ok(claimed) => {
                *self.claimed() = Some(claimed);
                Ok(Completion::data_out(0))
            }
            Err(e) => {
                tracing::warn!(busid = %self.busid, error = %e, "after reset");
                Err(TransferError::Disconnected)
            }
        }
    }

    async fn set_configuration(&self, value: u8) -> Result<Completion, TransferError> {
        let device = self.device()?;
        let active = device
            .active_configuration()
            .ok()
            .map(|c| c.configuration_value());
        if active == Some(value) {
            // What every client sends once after enumeration: nothing to change.
            return Ok(Completion::data_out(0));
        }
        tracing::info!(busid = %self.busid, from = ?active, to = value, "client changes the configuration");
        if let Some(claimed) = self.claimed().as_mut() {
            Self::release_interfaces(claimed);
        }
        if let Err(e) = device.set_configuration(value).await {
            tracing::warn!(busid = %self.busid, value, error = %e, "SET_CONFIGURATION failed");
            return Err(TransferError::Stall);
        }
        if value != 0 {
            let node = self
                .claimed()
                .as_ref()
                .map(|c| c.node.clone())
                .ok_or(TransferError::Disconnected)?;
            let (interfaces, iso) = self.claim_all(&device, &node).map_err(|e| {
                tracing::warn!(busid = %self.busid, error = %e, "after SET_CONFIGURATION");
                TransferError::Fault
            })?;
            if let Some(claimed) = self.claimed().as_mut() {
                claimed.interfaces = interfaces;
                claimed.iso = iso;
            }
        }
        Ok(Completion::data_out(0))
    }

    async fn set_interface(&self, number: u8, alternate: u8) -> Result<Completion, TransferError> {
        if let Some(iso) = self.iso().filter(|iso| iso.holds(number)) {
            // A blocking ioctl (the OS carries out the control transfer): off the runtime.
            let changed =
                tokio::task::spawn_blocking(move || iso.set_interface(number, alternate)).await;
            return match changed {
                Ok(Ok(())) => Ok(Completion::data_out(0)),
                Ok(Err(e)) => {
                    tracing::debug!(busid = %self.busid, number, alternate, error = %e, "SET_INTERFACE failed");
                    Err(TransferError::Stall)
                }
                Err(_) => Err(TransferError::Fault),
            };
        }
        let interface = self.claimed().as_mut().and_then(|claimed| {
            // nusb wants no open endpoint on an interface whose setting changes; the new
            // setting's endpoints open on first use.
            claimed.endpoints.retain(|_, open| open.interface != number);
            claimed.interfaces.get(&number).cloned()
        });
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

    async fn clear_halt(&self, address: u8) -> Result<Completion, TransferError> {
        // URBs still in flight on the endpoint are cancelled first, as a halt ends them.
        let queue = self.endpoint(address)?;
        match endpoint::clear_halt(&queue).await {
            Ok(()) => Ok(Completion::data_out(0)),
            Err(e) => {
                tracing::debug!(busid = %self.busid, endpoint = address, error = %e, "CLEAR_FEATURE(HALT) failed");
                Err(TransferError::Stall)
            }
        }
    }

    /// The usbfs handle of the interfaces with isochronous endpoints, while imported.
    fn iso(&self) -> Option<Arc<IsoInterfaces>> {
        self.claimed().as_ref().and_then(|c| c.iso.clone())
    }

    async fn bulk_or_interrupt(&self, urb: Urb) -> Completion {
        if !urb.iso_packets.is_empty() {
            // Only isochronous URBs carry packets.
            let Some(iso) = self.iso() else {
                tracing::warn!(busid = %self.busid, endpoint = urb.endpoint_address(), "isochronous URB for a device without isochronous interfaces");
                return TransferError::Stall.into();
            };
            return iso.transfer(&urb).await;
        }
        match self.endpoint(urb.endpoint_address()) {
            Ok(queue) => endpoint::transfer(queue, urb).await,
            Err(e) => e.into(),
        }
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
        let mut last = self.last_info.lock().unwrap_or_else(|e| e.into_inner());
        // Read afresh, so the list shows the device plugged at the bus id now.
        if let Ok(Some(found)) = find(&self.busid) {
            *last = device_info(&found);
        }
        last.clone()
    }

    fn present(&self) -> bool {
        self.claimed().is_some() || self.is_plugged()
    }

    fn queue_depth(&self, endpoint_address: u8) -> usize {
        // The default control pipe stays one at a time: its requests change device state.
        if endpoint_address & 0x0f == 0 {
            1
        } else {
            endpoint::QUEUE_DEPTH
        }
    }

    fn submit(&self, urb: Urb) -> BoxFuture<'_, Completion> {
        Box::pin(async move {
            if urb.endpoint == 0 {
                self.control(urb).await.into()
            } else {
                self.bulk_or_interrupt(urb).await
            }
        })
    }

    fn attached(&self) -> Result<(), AttachError> {
        let held = (self.held.lock().unwrap_or_else(|e| e.into_inner()).take())
            .filter(|h| plugged(&self.busid, h.address));
        let claimed = match held {
            Some(h) => h,
            None => self.open_and_claim()?,
        };
        *self.claimed() = Some(claimed);
        Ok(())
    }

    fn gone(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(address) = self.claimed().as_ref().map(|c| c.address) else {
                return std::future::pending().await;
            };
            // Polled rather than watched: nusb's hot-plug watch hears only udev's
            // re-broadcasts, and minimal hosts and VMs run no udevd. One small sysfs read a
            // second per imported device is cheap.
            let mut tick = tokio::time::interval(UNPLUG_POLL);
            loop {
                tick.tick().await;
                if !plugged(&self.busid, address) {
                    tracing::info!(busid = %self.busid, "host device unplugged");
                    return;
                }
            }
        })
    }

    fn detached(&self) {
        let Some(mut claimed) = self.claimed().take() else {
            return;
        };
        if self.force {
            // Kept from the local drivers for the next client; its endpoints start afresh.
            claimed.endpoints.clear();
            *self.held.lock().unwrap_or_else(|e| e.into_inner()) = Some(claimed);
            return;
        }
        let released = Self::release_interfaces(&mut claimed);
        self.give_back(&claimed.device, &released);
        tracing::info!(busid = %self.busid, "host device given back to its local drivers");
    }

    fn shutdown(&self) {
        self.detached();
        self.release_held();
    }
}

impl HostDevice {
    /// Gives a forced device's interfaces back to its local drivers.
    fn release_held(&self) {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut held) = held {
            let released = Self::release_interfaces(&mut held);
            self.give_back(&held.device, &released);
            tracing::info!(busid = %self.busid, "host device given back to its local drivers");
        }
    }
}

impl Drop for HostDevice {
    fn drop(&mut self) {
        self.release_held();
    }
}

/// The device plugged at `busid` now, if any.
fn find(busid: &str) -> Result<Option<nusb::DeviceInfo>, HostError> {
    if !crate::usb_present() {
        return Ok(None);
    }
    Ok(nusb::list_devices()
        .wait()
        .map_err(|e| HostError::List(e.into()))?
        .find(|d| crate::busid(d).as_deref() == Some(busid)))
}

/// A record for a device never seen: the device list leaves it out until it is plugged in.
fn absent_info() -> DeviceInfo {
    DeviceInfo {
        speed: periwire_usb::device::Speed::Unknown,
        vendor_id: 0,
        product_id: 0,
        device_version: 0,
        class: 0,
        subclass: 0,
        protocol: 0,
        configuration_value: 0,
        num_configurations: 0,
        interfaces: Vec::new(),
    }
}

/// What the device list shows of a device, from what the OS knows of it (sysfs on Linux)
/// without opening it.
fn device_info(found: &nusb::DeviceInfo) -> DeviceInfo {
    let attribute = |name: &str| -> u8 {
        std::fs::read_to_string(found.sysfs_path().join(name))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    DeviceInfo {
        speed: crate::speed(found.speed()),
        vendor_id: found.vendor_id(),
        product_id: found.product_id(),
        device_version: found.device_version(),
        class: found.class(),
        subclass: found.subclass(),
        protocol: found.protocol(),
        // Empty (0) while the device is unconfigured.
        configuration_value: attribute("bConfigurationValue"),
        num_configurations: attribute("bNumConfigurations"),
        interfaces: crate::list::interface_records(found),
    }
}

/// Whether the device at `busid` is still the one that had `address` (Linux: its sysfs
/// `devnum`). Where that cannot be read, as on other systems, it is taken as plugged: an
/// unplug then shows when the next transfer fails.
fn plugged(busid: &str, address: u8) -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    let devnum = std::path::Path::new("/sys/bus/usb/devices")
        .join(busid)
        .join("devnum");
    match std::fs::read_to_string(devnum) {
        Ok(text) => text.trim().parse::<u8>().ok() == Some(address),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}
