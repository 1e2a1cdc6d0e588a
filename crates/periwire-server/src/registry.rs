//! The table of exported devices and who has imported each.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use periwire_usb::{AttachError, UsbDevice};
use periwire_wire::usbip::{BusId, DeviceRecord, ExportedDevice};

use crate::usbip_map;

/// One exported device.
#[derive(Clone)]
pub struct Export {
    /// Bus id the client imports it by.
    pub busid: BusId,
    /// Bus number shown in the device list and encoded in the devid.
    pub busnum: u32,
    /// Device number on its bus.
    pub devnum: u32,
    /// Human-readable name, for logs and `periwire list`.
    pub name: String,
    /// The device.
    pub device: Arc<dyn UsbDevice>,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("busid", &self.busid)
            .field("busnum", &self.busnum)
            .field("devnum", &self.devnum)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Export {
    /// The `usbip_usb_device` record of this export.
    pub fn record(&self) -> DeviceRecord {
        let info = self.device.info();
        DeviceRecord {
            path: format!(
                "/sys/devices/platform/periwire/usb{}/{}",
                self.busnum, self.busid
            ),
            busid: self.busid.clone(),
            busnum: self.busnum,
            devnum: self.devnum,
            speed: usbip_map::speed_to_wire(info.speed),
            id_vendor: info.vendor_id,
            id_product: info.product_id,
            bcd_device: info.device_version,
            device_class: info.class,
            device_subclass: info.subclass,
            device_protocol: info.protocol,
            configuration_value: info.configuration_value,
            num_configurations: info.num_configurations,
            num_interfaces: u8::try_from(info.interfaces.len()).unwrap_or(u8::MAX),
        }
    }

    /// The device list entry of this export.
    pub fn listing(&self) -> ExportedDevice {
        ExportedDevice {
            device: self.record(),
            interfaces: (self.device.info().interfaces.into_iter())
                .map(usbip_map::interface_to_wire)
                .collect(),
        }
    }
}

/// Why an import is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// No device has that bus id.
    #[error("no device {0}")]
    NoDevice(BusId),
    /// Another client holds it.
    #[error("device {0} is imported by another client")]
    Busy(BusId),
    /// The device refused: a host device its local drivers would not give up, say.
    #[error("device {0} cannot be imported: {1}")]
    Device(BusId, AttachError),
}

#[derive(Default)]
struct Inner {
    exports: Vec<Export>,
    claimed: HashSet<BusId>,
}

/// The exported devices, shared by every connection. A device is held by at most one client
/// at a time; the [`Claim`] returned by [`Registry::claim`] releases it when dropped.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
    /// Signalled whenever a device is claimed or released.
    changed: Arc<tokio::sync::Notify>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The registry's invariants hold between statements, so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a device. Bus ids must be unique.
    pub fn add(&self, export: Export) -> Result<(), BusId> {
        let mut inner = self.lock();
        if inner.exports.iter().any(|e| e.busid == export.busid) {
            return Err(export.busid);
        }
        inner.exports.push(export);
        Ok(())
    }

    /// Every export, in the order added.
    pub fn exports(&self) -> Vec<Export> {
        self.lock().exports.clone()
    }

    /// The exports a client may import now, in the order added: the device list.
    pub fn present(&self) -> Vec<Export> {
        let exports = self.exports();
        exports.into_iter().filter(|e| e.device.present()).collect()
    }

    /// Whether a client holds `busid`.
    pub fn is_claimed(&self, busid: &BusId) -> bool {
        self.lock().claimed.contains(busid)
    }

    /// Takes `busid` for one client.
    pub fn claim(&self, busid: &BusId) -> Result<Claim, ImportError> {
        let export = self
            .lock()
            .exports
            .iter()
            .find(|e| &e.busid == busid)
            .cloned()
            .ok_or_else(|| ImportError::NoDevice(busid.clone()))?;
        // Outside the lock: a host device looks itself up in the OS.
        if !export.device.present() {
            return Err(ImportError::NoDevice(busid.clone()));
        }
        let mut inner = self.lock();
        if !inner.claimed.insert(busid.clone()) {
            return Err(ImportError::Busy(busid.clone()));
        }
        drop(inner);
        if let Err(e) = export.device.attached() {
            self.lock().claimed.remove(busid);
            return Err(ImportError::Device(busid.clone(), e));
        }
        self.changed.notify_waiters();
        Ok(Claim {
            registry: self.clone(),
            export,
        })
    }

    /// Waits until no client holds `busid` (returns at once if none does).
    pub async fn wait_until_free(&self, busid: &BusId) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Register before looking, so a release in between is not missed.
            changed.as_mut().enable();
            if !self.is_claimed(busid) {
                return;
            }
            changed.await;
        }
    }

    /// Waits until some client holds `busid`.
    pub async fn wait_until_claimed(&self, busid: &BusId) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_claimed(busid) {
                return;
            }
            changed.await;
        }
    }

    /// Tells every device the server stops, so storage is made durable.
    pub fn shutdown(&self) {
        for e in self.exports() {
            e.device.shutdown();
        }
    }
}

/// A client's hold on one device; dropping it tells the device it was detached and frees it
/// for the next client.
pub struct Claim {
    registry: Registry,
    export: Export,
}

impl Claim {
    /// The claimed export.
    pub fn export(&self) -> &Export {
        &self.export
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.export.device.detached();
        self.registry.lock().claimed.remove(&self.export.busid);
        self.registry.changed.notify_waiters();
    }
}
