//! The listing commands (`list --local`, `list --remote`, `status`) and `bind` / `unbind`:
//! what they ask, and their tables and JSON.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use periwire_server::secure::connect::TlsClient;
use periwire_server::usbip_map;
use serde::{Deserialize, Serialize};

use crate::control::{
    request, BindRequest, ControlClientError, ControlRequest, ControlResponse, UnbindRequest,
};
use crate::devices::{
    local_view, plugged_of, ClientStatus, DeviceState, DeviceStatus, LocalDevice,
};
use crate::state::{self, Plugged, StateFile};
use crate::table::Table;
use crate::{names, serve, AnyError};

/// One device a remote server offers, as `periwire list --remote --json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteDevice {
    /// Bus id on the server.
    pub busid: String,
    /// idVendor, four hex digits.
    pub vendor_id: String,
    /// idProduct, four hex digits.
    pub product_id: String,
    /// The vendor's name from the USB ID database, if it has it.
    pub vendor: Option<String>,
    /// The product's name from the USB ID database, if it has it.
    pub product: Option<String>,
    /// bDeviceClass.
    pub class: u8,
    /// The class's name (of the first interface when the device leaves it to them).
    pub class_name: Option<String>,
    /// Link speed.
    pub speed: String,
    /// Interfaces as `class/subclass/protocol` in hex.
    pub interfaces: Vec<String>,
}

/// A byte count for people: `512 B`, `1.5 KiB`, `3.2 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// How long ago `since` (seconds since the epoch) was: `42s`, `5m 3s`, `2h 10m`.
pub fn ago(since: u64, now: SystemTime) -> String {
    let now = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let s = now.saturating_sub(since);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

fn client_cells(client: Option<&ClientStatus>, now: SystemTime) -> [String; 4] {
    match client {
        Some(c) => [
            match &c.identity {
                Some(name) => format!("{name} ({})", c.address),
                None => c.address.clone(),
            },
            ago(c.since, now),
            bytes(c.bytes_in),
            bytes(c.bytes_out),
        ],
        None => Default::default(),
    }
}

fn or_dash(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("-").to_owned()
}

/// The `list --local` table.
pub fn local_table(devices: &[LocalDevice], now: SystemTime) -> Table {
    let mut t = Table::new(&[
        "BUSID", "VID:PID", "VENDOR", "PRODUCT", "CLASS", "SPEED", "DRIVERS", "STATE", "CLIENT",
        "SINCE", "IN", "OUT",
    ]);
    for d in devices {
        let drivers = if d.drivers.is_empty() {
            "-".to_owned()
        } else {
            d.drivers.join(",")
        };
        let mut row = vec![
            d.busid.clone(),
            format!("{}:{}", d.vendor_id, d.product_id),
            or_dash(d.vendor.as_deref()),
            or_dash(d.product.as_deref()),
            or_dash(d.class_name.as_deref()),
            d.speed.clone(),
            drivers,
            d.state.word().to_owned(),
        ];
        row.extend(client_cells(d.client.as_ref(), now));
        t.row(row);
    }
    t
}

/// The `status` table.
pub fn status_table(devices: &[DeviceStatus], now: SystemTime) -> Table {
    let mut t = Table::new(&[
        "BUSID",
        "VID:PID",
        "NAME",
        "KIND",
        "SHARED BY",
        "STATE",
        "CLIENT",
        "SINCE",
        "IN",
        "OUT",
    ]);
    for d in devices {
        let kind = serde_json::to_value(d.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let by = serde_json::to_value(d.shared_by)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let state = if d.state == DeviceState::Shared && !d.present {
            "shared (not plugged in)"
        } else {
            d.state.word()
        };
        let mut row = vec![
            d.busid.clone(),
            format!("{}:{}", d.vendor_id, d.product_id),
            d.name.clone(),
            kind,
            by,
            state.to_owned(),
        ];
        row.extend(client_cells(d.client.as_ref(), now));
        t.row(row);
    }
    t
}

/// The `list --remote` table.
pub fn remote_table(devices: &[RemoteDevice]) -> Table {
    let mut t = Table::new(&[
        "BUSID",
        "VID:PID",
        "VENDOR",
        "PRODUCT",
        "CLASS",
        "SPEED",
        "INTERFACES",
    ]);
    for d in devices {
        t.row(vec![
            d.busid.clone(),
            format!("{}:{}", d.vendor_id, d.product_id),
            or_dash(d.vendor.as_deref()),
            or_dash(d.product.as_deref()),
            or_dash(d.class_name.as_deref()),
            d.speed.clone(),
            d.interfaces.join(" "),
        ]);
    }
    t
}

fn print_json<T: Serialize>(value: &T) -> Result<(), AnyError> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The server's control socket in the data directory.
fn socket(data_dir: Option<PathBuf>) -> Result<(PathBuf, PathBuf), AnyError> {
    let dir = serve::data_dir(data_dir)?;
    Ok((dir.join(serve::CONTROL_SOCKET), dir))
}

/// Asks a running server; `None` when none runs with this data directory.
async fn ask(
    socket: &std::path::Path,
    req: ControlRequest,
) -> Result<Option<ControlResponse>, AnyError> {
    match request(socket, &req).await {
        Ok(ControlResponse::Error { message }) => Err(message.into()),
        Ok(r) => Ok(Some(r)),
        Err(ControlClientError::Connect { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Asks a running server to act; what it did, or `None` when none runs.
async fn ask_done(
    socket: &std::path::Path,
    req: ControlRequest,
) -> Result<Option<String>, AnyError> {
    match ask(socket, req).await? {
        Some(ControlResponse::Done { message }) => Ok(Some(message)),
        Some(_) => Err("unexpected reply on the control socket".into()),
        None => Ok(None),
    }
}

/// `periwire list --local`: from a running server if there is one (it knows who holds
/// what), else from the device list and the bindings file.
pub async fn list_local(data_dir: Option<PathBuf>, json: bool) -> Result<(), AnyError> {
    let (socket, dir) = socket(data_dir)?;
    let devices = match ask(&socket, ControlRequest::Local).await? {
        Some(ControlResponse::Local { devices }) => devices,
        Some(_) => return Err("unexpected reply on the control socket".into()),
        None => {
            let bindings = StateFile::in_dir(&dir).load()?;
            local_view(&periwire_host::list_devices()?, &bindings, None)
        }
    };
    if json {
        return print_json(&devices);
    }
    if devices.is_empty() {
        println!("no USB devices on this machine");
        return Ok(());
    }
    print!("{}", local_table(&devices, SystemTime::now()).render());
    Ok(())
}

/// `periwire status`.
pub fn print_status(devices: &[DeviceStatus], json: bool) -> Result<(), AnyError> {
    if json {
        return print_json(&devices);
    }
    if devices.is_empty() {
        println!("no devices shared: `periwire bind` shares one");
        return Ok(());
    }
    print!("{}", status_table(devices, SystemTime::now()).render());
    Ok(())
}

/// The device list of the server at `remote` (over mutual TLS with `tls`), with names from
/// the database.
pub async fn remote_devices(
    remote: &str,
    tls: Option<&TlsClient>,
) -> Result<(String, Vec<RemoteDevice>), AnyError> {
    let remote = periwire_server::client::Remote::parse(remote)?;
    let addr = remote.to_string();
    let timeout = Duration::from_secs(10);
    let devices = match tls {
        None => periwire_server::client::list_devices(&addr, timeout).await?,
        Some(tls) => {
            let mut connected = tls.connect(&remote, timeout).await?;
            periwire_server::client::list_devices_on(&mut connected.stream, timeout).await?
        }
    };
    let rows = devices
        .iter()
        .map(|d| {
            let r = &d.device;
            let interfaces = crate::remote_interfaces(&d.interfaces);
            let class = if r.device_class == 0 {
                interfaces.first().map_or(0, |i| i.class)
            } else {
                r.device_class
            };
            RemoteDevice {
                busid: r.busid.as_str().to_owned(),
                vendor_id: format!("{:04x}", r.id_vendor),
                product_id: format!("{:04x}", r.id_product),
                vendor: names::vendor(r.id_vendor).map(str::to_owned),
                product: names::product(r.id_vendor, r.id_product).map(str::to_owned),
                class: r.device_class,
                class_name: names::class(class).map(str::to_owned),
                speed: usbip_map::speed_from_wire(r.speed).name().to_owned(),
                interfaces: crate::interface_triples(&interfaces),
            }
        })
        .collect();
    Ok((addr, rows))
}

/// `periwire list --remote`.
pub async fn list_remote(
    remote: &str,
    json: bool,
    tls: Option<&TlsClient>,
) -> Result<(), AnyError> {
    let (addr, devices) = remote_devices(remote, tls).await?;
    if json {
        return print_json(&devices);
    }
    if devices.is_empty() {
        println!("{addr}: no exportable devices");
        return Ok(());
    }
    print!("{}", remote_table(&devices).render());
    Ok(())
}

/// `periwire list --discover`: the devices of each server found asked over mutual TLS with
/// `tls`.
pub async fn list_discovered(
    wait: Duration,
    json: bool,
    tls: Option<TlsClient>,
) -> Result<(), AnyError> {
    let servers = crate::discovery::discover(wait, tls.as_ref()).await?;
    if json {
        return print_json(&servers);
    }
    if servers.is_empty() {
        println!("no USB/IP servers announced themselves within {wait:?}");
    }
    for s in &servers {
        println!("{} at {} ({})", s.name, s.address, s.host);
        match &s.error {
            Some(e) => println!("    cannot list its devices: {e}"),
            None if s.devices.is_empty() => println!("    no exportable devices"),
            None => {
                for line in remote_table(&s.devices).render().lines() {
                    println!("    {line}");
                }
            }
        }
    }
    Ok(())
}

/// `periwire bind`: through a running server, else into the bindings file for its next
/// start.
pub async fn bind(data_dir: Option<PathBuf>, req: BindRequest) -> Result<(), AnyError> {
    let binding = req.binding()?;
    let (socket, dir) = socket(data_dir)?;
    match ask_done(&socket, ControlRequest::Bind(req)).await? {
        Some(message) => println!("periwire: {message}"),
        None => {
            let target = binding.target.clone();
            let file = StateFile::in_dir(&dir);
            let changed = file.update(|list| {
                let changed = state::add(list, binding);
                Ok((changed, changed))
            })?;
            let what = if changed { "bound" } else { "already bound:" };
            println!(
                "periwire: {what} {target} (in {}); no server is running: shared when `periwire serve` starts",
                file.path().display()
            );
        }
    }
    Ok(())
}

/// `periwire unbind`: through a running server, else in the bindings file.
pub async fn unbind(data_dir: Option<PathBuf>, req: UnbindRequest) -> Result<(), AnyError> {
    let which = req.which()?;
    let (socket, dir) = socket(data_dir)?;
    match ask_done(&socket, ControlRequest::Unbind(req)).await? {
        Some(message) => println!("periwire: {message}"),
        None => {
            let local = periwire_host::list_devices()?;
            let plugged: Vec<Plugged<'_>> = local.iter().map(plugged_of).collect();
            let removed = StateFile::in_dir(&dir).update(|list| {
                let removed = state::remove(list, &which, &plugged);
                let changed = !removed.is_empty();
                Ok((removed, changed))
            })?;
            if removed.is_empty() {
                return Err("nothing to unbind: no binding matches".into());
            }
            for b in removed {
                println!("periwire: unbound {}", b.target);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_and_ages_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(ago(9_958, now), "42s");
        assert_eq!(ago(10_000 - 303, now), "5m 3s");
        assert_eq!(ago(10_000 - 7_800, now), "2h 10m");
        assert_eq!(ago(20_000, now), "0s", "a clock that went back");
    }

    #[test]
    fn the_remote_table_aligns_long_names() {
        let dev = |busid: &str, product: Option<&str>| RemoteDevice {
            busid: busid.into(),
            vendor_id: "46f4".into(),
            product_id: "0001".into(),
            vendor: None,
            product: product.map(str::to_owned),
            class: 0,
            class_name: Some("Mass Storage".into()),
            speed: "high".into(),
            interfaces: vec!["08/06/50".into()],
        };
        let text = remote_table(&[
            dev("1-1", Some("A rather long product name indeed")),
            dev("10-1.2", None),
        ])
        .render();
        let lines: Vec<&str> = text.lines().collect();
        let at = |l: &str| l.find("high").or_else(|| l.find("SPEED"));
        assert_eq!(at(lines[0]), at(lines[1]));
        assert_eq!(at(lines[1]), at(lines[2]));
        assert!(
            lines[2].contains(" - "),
            "a missing name shows as -: {text}"
        );
    }
}
