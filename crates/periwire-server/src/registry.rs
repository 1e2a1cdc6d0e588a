//! The table of exported devices and who has imported each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use periwire_usb::{AttachError, UsbDevice};
use periwire_wire::usbip::{BusId, DeviceRecord, ExportedDevice};

use crate::stats::{Meters, TransferCounts, TransferStats};
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

/// Who a client is, as logs and status name it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// Its address as the server saw it (`127.0.0.1:51234`), or empty.
    pub address: String,
    /// The name its key is trusted under, when it came over mutual TLS.
    pub identity: Option<String>,
}

impl Peer {
    /// A client known only by its address.
    pub fn at(address: impl std::fmt::Display) -> Self {
        Self {
            address: address.to_string(),
            identity: None,
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.identity {
            Some(name) => write!(f, "{name} ({})", self.address),
            None => f.write_str(&self.address),
        }
    }
}

/// Who holds a device, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimInfo {
    /// The client.
    pub client: Peer,
    /// When it imported the device.
    pub since: SystemTime,
    /// What the import has moved so far.
    pub counts: TransferCounts,
}

struct Held {
    client: Peer,
    since: SystemTime,
    stats: Arc<TransferStats>,
    /// Set when the device is withdrawn from under the client.
    withdraw: tokio::sync::watch::Sender<bool>,
}

/// A device's counters since the server started, kept while it comes and goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceTotals {
    /// Imports granted.
    pub imports: u64,
    /// URBs and bytes.
    pub counts: TransferCounts,
}

#[derive(Default)]
struct Inner {
    exports: Vec<Export>,
    claimed: HashMap<BusId, Held>,
    totals: HashMap<BusId, (u64, Arc<TransferStats>)>,
    /// Connections accepted (any request).
    connections: u64,
}

/// The exported devices, shared by every connection. A device is held by at most one client
/// at a time; the [`Claim`] returned by [`Registry::claim`] releases it when dropped.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
    /// Signalled whenever a device is claimed or released.
    changed: Arc<tokio::sync::Notify>,
    /// Counts every change of the table (added, removed, claimed, released), for watchers.
    generation: Arc<tokio::sync::watch::Sender<u64>>,
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

    fn bump(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// A receiver that sees a new value whenever a device is added, removed, claimed or
    /// released.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Adds a device. Bus ids must be unique.
    pub fn add(&self, export: Export) -> Result<(), BusId> {
        let mut inner = self.lock();
        if inner.exports.iter().any(|e| e.busid == export.busid) {
            return Err(export.busid);
        }
        inner.exports.push(export);
        drop(inner);
        self.bump();
        Ok(())
    }

    /// Withdraws `busid`: it leaves the device list, and a client holding it loses it (its
    /// session ends as if the device were unplugged). The export, if there was one.
    pub fn remove(&self, busid: &BusId) -> Option<Export> {
        let mut inner = self.lock();
        let at = inner.exports.iter().position(|e| &e.busid == busid)?;
        let export = inner.exports.remove(at);
        if let Some(held) = inner.claimed.get(busid) {
            held.withdraw.send_replace(true);
        }
        drop(inner);
        self.bump();
        Some(export)
    }

    /// Who holds `busid`, if anyone.
    pub fn claim_info(&self, busid: &BusId) -> Option<ClaimInfo> {
        self.lock().claimed.get(busid).map(|h| ClaimInfo {
            client: h.client.clone(),
            since: h.since,
            counts: h.stats.counts(),
        })
    }

    /// What `busid` has done since the server started.
    pub fn totals(&self, busid: &BusId) -> DeviceTotals {
        self.lock()
            .totals
            .get(busid)
            .map(|(imports, stats)| DeviceTotals {
                imports: *imports,
                counts: stats.counts(),
            })
            .unwrap_or_default()
    }

    /// Counts a connection accepted by a server of this registry.
    pub fn count_connection(&self) {
        self.lock().connections += 1;
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.lock().connections
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
        self.lock().claimed.contains_key(busid)
    }

    /// Takes `busid` for a client that gave no address.
    pub fn claim(&self, busid: &BusId) -> Result<Claim, ImportError> {
        self.claim_by(busid, Peer::default())
    }

    /// Takes `busid` for `client` (as status shows it).
    pub fn claim_by(&self, busid: &BusId, client: Peer) -> Result<Claim, ImportError> {
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
        if inner.claimed.contains_key(busid) {
            return Err(ImportError::Busy(busid.clone()));
        }
        let (withdraw, withdrawn) = tokio::sync::watch::channel(false);
        let stats = Arc::new(TransferStats::default());
        inner.claimed.insert(
            busid.clone(),
            Held {
                client,
                since: SystemTime::now(),
                stats: Arc::clone(&stats),
                withdraw,
            },
        );
        drop(inner);
        if let Err(e) = export.device.attached() {
            self.lock().claimed.remove(busid);
            return Err(ImportError::Device(busid.clone(), e));
        }
        let device = {
            let mut inner = self.lock();
            let (imports, device) = inner.totals.entry(busid.clone()).or_default();
            *imports += 1;
            Arc::clone(device)
        };
        self.changed.notify_waiters();
        self.bump();
        Ok(Claim {
            registry: self.clone(),
            export,
            meters: Meters {
                import: stats,
                device,
            },
            withdrawn,
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
    meters: Meters,
    withdrawn: tokio::sync::watch::Receiver<bool>,
}

impl Claim {
    /// The claimed export.
    pub fn export(&self) -> &Export {
        &self.export
    }

    /// The counters this import's URBs go to.
    pub fn meters(&self) -> &Meters {
        &self.meters
    }

    /// Resolves when the device is withdrawn ([`Registry::remove`]) while held: the driver
    /// then ends the session. Owns what it needs, so it can sit in a `select!` beside the
    /// session.
    pub fn withdrawn(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.withdrawn.clone();
        async move {
            if rx.wait_for(|w| *w).await.is_err() {
                // The registry's sender lives as long as the claim: never withdrawn.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.export.device.detached();
        self.registry.lock().claimed.remove(&self.export.busid);
        self.registry.changed.notify_waiters();
        self.registry.bump();
    }
}
