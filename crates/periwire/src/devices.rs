//! The device manager: which devices the server exports, kept in step with the bindings
//! (`periwire bind`), the configuration's devices, and what is plugged in.
//!
//! The configuration's devices are exported from the start; `unbind` withdraws one for the
//! rest of the run and `bind` brings it back (the file is not edited). Host devices bound by
//! bus id are exported under that bus id whether or not anything is plugged in there (the
//! device list shows them while something is); those bound by hardware id are exported under
//! the bus id where they are plugged in now, and move when they are plugged in elsewhere.
//! Every hot-plug event [reconciles](DeviceManager::reconcile) the two.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::UNIX_EPOCH;

use periwire_host::{HostDevice, HostDeviceSummary};
use periwire_server::{Export, Registry};
use periwire_wire::usbip::BusId;
use serde::{Deserialize, Serialize};

use crate::names;
use crate::state::{self, Binding, HardwareId, Plugged, StateFile, Target, Unbind};

/// What an exported device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportKind {
    /// A virtual keyboard.
    Keyboard,
    /// A virtual mouse.
    Mouse,
    /// A virtual disk.
    Storage,
    /// A virtual serial port.
    Serial,
    /// A device of this machine, passed through.
    Host,
    /// A virtual Bluetooth dongle.
    Bluetooth,
}

/// A device the configuration (or `--demo`) declares.
pub struct Declared {
    /// Its export.
    pub export: Export,
    /// What it is.
    pub kind: ExportKind,
}

/// Why an export is in the device list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SharedBy {
    /// Declared in the configuration.
    Config,
    /// `periwire bind -b`.
    Busid,
    /// `periwire bind --hardware-id`.
    HardwareId,
}

/// The state of a device in `list --local` and on the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceState {
    /// Not exported.
    NotShared,
    /// Bound in the bindings file, with no server running to export it.
    Bound,
    /// In the device list, no client holds it.
    Shared,
    /// A client holds it.
    Attached,
}

impl DeviceState {
    /// The word the tables show.
    pub fn word(self) -> &'static str {
        match self {
            DeviceState::NotShared => "not shared",
            DeviceState::Bound => "bound (no server)",
            DeviceState::Shared => "shared",
            DeviceState::Attached => "attached",
        }
    }
}

/// The client that holds a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStatus {
    /// Its address as the server saw it.
    pub address: String,
    /// The name its TLS key is trusted under (`periwire trust`); null for a plain USB/IP
    /// client.
    pub identity: Option<String>,
    /// When it attached, in seconds since the Unix epoch.
    pub since: u64,
    /// Bytes from the device to the client.
    pub bytes_in: u64,
    /// Bytes from the client to the device.
    pub bytes_out: u64,
    /// URBs completed.
    pub urbs: u64,
}

/// A device's counters since the server started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Imports granted.
    pub imports: u64,
    /// URBs completed.
    pub urbs: u64,
    /// URBs that failed.
    pub errors: u64,
    /// Bytes from the device to clients.
    pub bytes_in: u64,
    /// Bytes from clients to the device.
    pub bytes_out: u64,
}

/// One exported device, as `periwire status --json` and `GET /api/devices` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Bus id.
    pub busid: String,
    /// Display name.
    pub name: String,
    /// What it is.
    pub kind: ExportKind,
    /// idVendor, four hex digits.
    pub vendor_id: String,
    /// idProduct, four hex digits.
    pub product_id: String,
    /// The vendor's name (the database's), if known.
    pub vendor: Option<String>,
    /// The product's name (the device's string, else the database's), if known.
    pub product: Option<String>,
    /// bDeviceClass.
    pub class: u8,
    /// Link speed.
    pub speed: String,
    /// Whether a client can import it now (a host device is plugged in).
    pub present: bool,
    /// Why it is exported.
    pub shared_by: SharedBy,
    /// `shared` or `attached`.
    pub state: DeviceState,
    /// Whether a client holds it (the same as `state == attached`).
    pub imported: bool,
    /// The client holding it.
    pub client: Option<ClientStatus>,
    /// Counters since the server started.
    pub totals: Totals,
}

/// One USB device of this machine, as `periwire list --local --json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalDevice {
    /// Bus id.
    pub busid: String,
    /// idVendor, four hex digits.
    pub vendor_id: String,
    /// idProduct, four hex digits.
    pub product_id: String,
    /// The vendor: the device's manufacturer string, else the database's name.
    pub vendor: Option<String>,
    /// The product: the device's product string, else the database's name.
    pub product: Option<String>,
    /// The device's manufacturer string.
    pub manufacturer: Option<String>,
    /// The device's serial number string.
    pub serial: Option<String>,
    /// bDeviceClass.
    pub class: u8,
    /// The class's name (of the first interface when the device leaves it to them).
    pub class_name: Option<String>,
    /// Link speed.
    pub speed: String,
    /// Interfaces as `class/subclass/protocol` in hex.
    pub interfaces: Vec<String>,
    /// The drivers bound to its interfaces.
    pub drivers: Vec<String>,
    /// Shared or not.
    pub state: DeviceState,
    /// The binding that shares it (`busid`, `hardware-id`, `config`), if any.
    pub shared_by: Option<SharedBy>,
    /// The client holding it.
    pub client: Option<ClientStatus>,
}

fn hex4(v: u16) -> String {
    format!("{v:04x}")
}

/// What a binding is matched against, of a device in the local list.
pub fn plugged_of(d: &HostDeviceSummary) -> Plugged<'_> {
    Plugged {
        busid: &d.busid,
        id: HardwareId {
            vendor_id: d.vendor_id,
            product_id: d.product_id,
        },
        serial: d.serial.as_deref(),
    }
}

fn shared_by(binding: &Binding) -> SharedBy {
    match binding.target {
        Target::BusId(_) => SharedBy::Busid,
        Target::Hardware { .. } => SharedBy::HardwareId,
    }
}

/// The client holding `busid` in `registry`, if any.
pub fn client_of(registry: &Registry, busid: &BusId) -> Option<ClientStatus> {
    registry.claim_info(busid).map(|c| ClientStatus {
        address: c.client.address,
        identity: c.client.identity,
        since: c
            .since
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        bytes_in: c.counts.bytes_in,
        bytes_out: c.counts.bytes_out,
        urbs: c.counts.urbs,
    })
}

/// A running server's view: its registry, and why it exports a bus id (if it does).
pub type ServerView<'a> = (&'a Registry, &'a dyn Fn(&str) -> Option<SharedBy>);

/// The local device list with states: from a running server's view, or, with none, from the
/// bindings file alone (`bound`).
pub fn local_view(
    devices: &[HostDeviceSummary],
    bindings: &[Binding],
    server: Option<ServerView<'_>>,
) -> Vec<LocalDevice> {
    devices
        .iter()
        .map(|d| {
            let binding = bindings.iter().find(|b| b.matches(&plugged_of(d)));
            let (state, by, client) = match server {
                Some((registry, exported_by)) => match exported_by(&d.busid) {
                    Some(by) => {
                        let client = BusId::new(&d.busid)
                            .ok()
                            .and_then(|b| client_of(registry, &b));
                        let state = if client.is_some() {
                            DeviceState::Attached
                        } else {
                            DeviceState::Shared
                        };
                        (state, Some(by), client)
                    }
                    None => (DeviceState::NotShared, None, None),
                },
                None => match binding {
                    Some(b) => (DeviceState::Bound, Some(shared_by(b)), None),
                    None => (DeviceState::NotShared, None, None),
                },
            };
            let class = if d.class == 0 {
                d.interfaces.first().map_or(0, |i| i.class)
            } else {
                d.class
            };
            LocalDevice {
                busid: d.busid.clone(),
                vendor_id: hex4(d.vendor_id),
                product_id: hex4(d.product_id),
                vendor: (d.manufacturer.clone())
                    .or_else(|| names::vendor(d.vendor_id).map(str::to_owned)),
                product: (d.product.clone())
                    .or_else(|| names::product(d.vendor_id, d.product_id).map(str::to_owned)),
                manufacturer: d.manufacturer.clone(),
                serial: d.serial.clone(),
                class: d.class,
                class_name: names::class(class).map(str::to_owned),
                speed: d.speed.name().to_owned(),
                interfaces: crate::interface_triples(&d.interfaces),
                drivers: d.drivers.clone(),
                state,
                shared_by: by,
                client,
            }
        })
        .collect()
}

/// A host device exported because of a binding.
struct Managed {
    binding: Binding,
    device: Arc<HostDevice>,
}

#[derive(Default)]
struct Inner {
    bindings: Vec<Binding>,
    declared: Vec<(Export, ExportKind)>,
    /// Declared devices withdrawn for this run.
    withdrawn: HashSet<String>,
    managed: BTreeMap<String, Managed>,
    local: Vec<HostDeviceSummary>,
}

/// See the [module documentation](self).
pub struct DeviceManager {
    registry: Registry,
    state: StateFile,
    inner: Mutex<Inner>,
    /// Bumped whenever the local device list changes.
    local_changed: tokio::sync::watch::Sender<u64>,
}

impl DeviceManager {
    /// A manager exporting `declared` and the bindings of `state` into `registry`.
    pub fn new(
        registry: Registry,
        state: StateFile,
        declared: Vec<Declared>,
    ) -> Result<Arc<Self>, crate::AnyError> {
        let bindings = state.load()?;
        for d in &declared {
            registry
                .add(d.export.clone())
                .map_err(|b| format!("bus id {b} is used twice"))?;
        }
        let manager = Arc::new(Self {
            registry,
            state,
            inner: Mutex::new(Inner {
                bindings,
                declared: declared.into_iter().map(|d| (d.export, d.kind)).collect(),
                ..Inner::default()
            }),
            local_changed: tokio::sync::watch::Sender::new(0),
        });
        manager.reconcile();
        Ok(manager)
    }

    /// The registry the server serves.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change under the lock leaves the maps consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver that sees a new value whenever the machine's device list changes.
    pub fn subscribe_local(&self) -> tokio::sync::watch::Receiver<u64> {
        self.local_changed.subscribe()
    }

    /// Brings the exports in step with the bindings and what is plugged in now.
    pub fn reconcile(&self) {
        let local = match periwire_host::list_devices() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list this machine's USB devices");
                Vec::new()
            }
        };
        let mut inner = self.lock();
        let declared: HashSet<String> = inner
            .declared
            .iter()
            .map(|(e, _)| e.busid.to_string())
            .collect();
        // The bus ids to export, each with its binding: ports first, then where the devices
        // bound by hardware id are now.
        let mut wanted: BTreeMap<String, Binding> = BTreeMap::new();
        for b in &inner.bindings {
            if let Target::BusId(busid) = &b.target {
                if !declared.contains(busid) {
                    wanted.entry(busid.clone()).or_insert_with(|| b.clone());
                }
            }
        }
        for d in &local {
            if declared.contains(&d.busid) || wanted.contains_key(&d.busid) {
                continue;
            }
            if let Some(b) = inner
                .bindings
                .iter()
                .find(|b| matches!(b.target, Target::Hardware { .. }) && b.matches(&plugged_of(d)))
            {
                wanted.insert(d.busid.clone(), b.clone());
            }
        }
        let stale: Vec<String> = inner
            .managed
            .iter()
            .filter(|(busid, m)| wanted.get(*busid) != Some(&m.binding))
            .map(|(busid, _)| busid.clone())
            .collect();
        for busid in stale {
            inner.managed.remove(&busid);
            if let Ok(b) = BusId::new(&busid) {
                self.registry.remove(&b);
            }
            tracing::info!(%busid, "host device withdrawn");
        }
        for (busid, binding) in wanted {
            if let Some(m) = inner.managed.get(&busid) {
                // A forced device plugged in again is taken from its drivers again.
                m.device.hold();
                continue;
            }
            let made = if binding.force {
                HostDevice::forced(&busid)
            } else {
                HostDevice::new(&busid)
            };
            let device = match made {
                Ok(d) => Arc::new(d),
                Err(e) => {
                    tracing::warn!(%busid, error = %e, "cannot export host device");
                    continue;
                }
            };
            let Ok(id) = BusId::new(&busid) else {
                continue;
            };
            let found = local.iter().find(|d| d.busid == busid);
            let name = found.map_or_else(
                || busid.clone(),
                |d| names::display(d.vendor_id, d.product_id, d.product.as_deref()),
            );
            let export = Export {
                busid: id,
                busnum: found.map_or_else(|| busnum_of(&busid), |d| u32::from(d.busnum)),
                devnum: found.map_or(0, |d| u32::from(d.devnum)),
                name,
                device: device.clone(),
            };
            if self.registry.add(export).is_err() {
                continue;
            }
            tracing::info!(%busid, binding = %binding.target, "host device shared");
            inner.managed.insert(busid, Managed { binding, device });
        }
        if inner.local != local {
            inner.local = local;
            self.local_changed.send_modify(|g| *g = g.wrapping_add(1));
        }
    }

    /// Watches for devices plugged in and out and reconciles on each change, for ever.
    pub async fn watch(self: Arc<Self>) {
        let mut watch = periwire_host::DeviceWatch::new();
        loop {
            watch.changed().await;
            let me = Arc::clone(&self);
            // Listing and opening devices reads sysfs and usbfs: off the async threads.
            let _ = tokio::task::spawn_blocking(move || me.reconcile()).await;
        }
    }

    /// Shares what `binding` names, persisting it; the message says what happened.
    pub fn bind(&self, binding: Binding) -> Result<String, String> {
        if let Target::BusId(busid) = &binding.target {
            state::check_busid(busid).map_err(|e| e.to_string())?;
            let mut inner = self.lock();
            if let Some((export, _)) = inner
                .declared
                .iter()
                .find(|(e, _)| e.busid.as_str() == busid)
                .cloned()
            {
                if !inner.withdrawn.remove(busid) {
                    return Ok(format!("{busid} ({}) is shared already", export.name));
                }
                let name = export.name.clone();
                self.registry
                    .add(export)
                    .map_err(|b| format!("bus id {b} is in use"))?;
                return Ok(format!("shared {busid} ({name}) again"));
            }
        }
        let target = binding.target.clone();
        let changed = self
            .state
            .update(|list| {
                let changed = state::add(list, binding);
                Ok(((changed, list.clone()), changed))
            })
            .map_err(|e| e.to_string())?;
        let (changed, list) = changed;
        self.lock().bindings = list;
        self.reconcile();
        let shared: Vec<String> = {
            let inner = self.lock();
            (inner.managed.iter())
                .filter(|(busid, m)| {
                    m.binding.target == target && inner.local.iter().any(|d| &d.busid == *busid)
                })
                .map(|(b, _)| b.clone())
                .collect()
        };
        let what = if changed { "bound" } else { "already bound:" };
        Ok(match shared.as_slice() {
            [] => format!(
                "{what} {target}; nothing is plugged in that matches now: it is shared once it is"
            ),
            busids => format!("{what} {target}; shared as {}", busids.join(", ")),
        })
    }

    /// Withdraws what `which` names; the message says what happened.
    pub fn unbind(&self, which: Unbind) -> Result<String, String> {
        let mut messages = Vec::new();
        {
            let mut inner = self.lock();
            let names: Vec<(Export, String)> = inner
                .declared
                .iter()
                .filter(|(e, _)| match &which {
                    Unbind::All => true,
                    Unbind::BusId(b) => e.busid.as_str() == b,
                    Unbind::Hardware(_) => false,
                })
                .map(|(e, _)| (e.clone(), e.busid.to_string()))
                .collect();
            for (export, busid) in names {
                if inner.withdrawn.insert(busid.clone()) {
                    self.registry.remove(&export.busid);
                    messages.push(format!(
                        "withdrew {busid} ({}) until the server restarts",
                        export.name
                    ));
                }
            }
        }
        let plugged = self.lock().local.clone();
        let plugged: Vec<Plugged<'_>> = plugged.iter().map(plugged_of).collect();
        let (removed, list) = self
            .state
            .update(|list| {
                let removed = state::remove(list, &which, &plugged);
                let changed = !removed.is_empty();
                Ok(((removed, list.clone()), changed))
            })
            .map_err(|e| e.to_string())?;
        self.lock().bindings = list;
        self.reconcile();
        messages.extend(removed.iter().map(|b| format!("unbound {}", b.target)));
        if messages.is_empty() {
            return Err(match which {
                Unbind::All => "nothing is bound".to_owned(),
                Unbind::BusId(b) => format!("nothing is bound at bus id {b}"),
                Unbind::Hardware(h) => format!("nothing is bound by hardware id {h}"),
            });
        }
        Ok(messages.join("; "))
    }

    /// Why `busid` is exported, if it is.
    pub fn shared_by(&self, busid: &str) -> Option<SharedBy> {
        let inner = self.lock();
        if let Some(m) = inner.managed.get(busid) {
            return Some(shared_by(&m.binding));
        }
        let declared = inner
            .declared
            .iter()
            .any(|(e, _)| e.busid.as_str() == busid);
        (declared && !inner.withdrawn.contains(busid)).then_some(SharedBy::Config)
    }

    /// The status of every exported device, and of the declared ones withdrawn for this run
    /// (`not-shared`, so that they can be bound again, on the page say).
    pub fn status(&self) -> Vec<DeviceStatus> {
        let (declared, withdrawn, local) = {
            let inner = self.lock();
            (
                inner.declared.clone(),
                inner.withdrawn.clone(),
                inner.local.clone(),
            )
        };
        let kind_of = |busid: &BusId| {
            (declared.iter().find(|(e, _)| &e.busid == busid)).map_or(ExportKind::Host, |d| d.1)
        };
        let mut list: Vec<DeviceStatus> = self
            .registry
            .exports()
            .iter()
            .map(|e| {
                let kind = kind_of(&e.busid);
                let strings = (kind == ExportKind::Host)
                    .then(|| local.iter().find(|d| d.busid == e.busid.as_str()))
                    .flatten();
                self.device_status(e, kind, strings, true)
            })
            .collect();
        for (e, kind) in &declared {
            if withdrawn.contains(e.busid.as_str())
                && !list.iter().any(|d| d.busid == e.busid.as_str())
            {
                list.push(self.device_status(e, *kind, None, false));
            }
        }
        list
    }

    /// One device's status; `strings` is its entry in the local list (host devices).
    fn device_status(
        &self,
        e: &Export,
        kind: ExportKind,
        strings: Option<&HostDeviceSummary>,
        exported: bool,
    ) -> DeviceStatus {
        let info = e.device.info();
        let busid = e.busid.to_string();
        let client = client_of(&self.registry, &e.busid);
        let totals = self.registry.totals(&e.busid);
        let state = match (exported, &client) {
            (false, _) => DeviceState::NotShared,
            (true, Some(_)) => DeviceState::Attached,
            (true, None) => DeviceState::Shared,
        };
        DeviceStatus {
            name: e.name.clone(),
            kind,
            vendor_id: hex4(info.vendor_id),
            product_id: hex4(info.product_id),
            vendor: (strings.and_then(|d| d.manufacturer.clone()))
                .or_else(|| names::vendor(info.vendor_id).map(str::to_owned)),
            product: (strings.and_then(|d| d.product.clone()))
                .or_else(|| names::product(info.vendor_id, info.product_id).map(str::to_owned)),
            class: info.class,
            speed: info.speed.name().to_owned(),
            present: exported && e.device.present(),
            shared_by: self.shared_by(&busid).unwrap_or(SharedBy::Config),
            state,
            imported: client.is_some(),
            client,
            totals: Totals {
                imports: totals.imports,
                urbs: totals.counts.urbs,
                errors: totals.counts.errors,
                bytes_in: totals.counts.bytes_in,
                bytes_out: totals.counts.bytes_out,
            },
            busid,
        }
    }

    /// This machine's devices with their states.
    pub fn local(&self) -> Vec<LocalDevice> {
        let (local, bindings) = {
            let inner = self.lock();
            (inner.local.clone(), inner.bindings.clone())
        };
        let exported_by = |busid: &str| self.shared_by(busid);
        local_view(&local, &bindings, Some((&self.registry, &exported_by)))
    }
}

/// The busnum of a bus id like `3-1.2`, or 1.
pub fn busnum_of(busid: &str) -> u32 {
    busid
        .split('-')
        .next()
        .and_then(|b| b.parse().ok())
        .filter(|&n| n > 0 && n < 0x8000)
        .unwrap_or(1)
}
