//! The machine's USB devices, as `usbip list -l` shows them.

use std::path::Path;

use nusb::MaybeFuture;
use periwire_usb::device::{InterfaceClass, Speed};

use crate::HostError;

/// One USB device of this machine (root hubs left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDeviceSummary {
    /// Bus id (`1-1`, `3-2.4`): what the config's `busid` names.
    pub busid: String,
    /// Bus number.
    pub busnum: u8,
    /// Device address on the bus.
    pub devnum: u8,
    /// idVendor.
    pub vendor_id: u16,
    /// idProduct.
    pub product_id: u16,
    /// bDeviceClass.
    pub class: u8,
    /// Link speed.
    pub speed: Speed,
    /// Manufacturer string, if the device has one.
    pub manufacturer: Option<String>,
    /// Product string, if the device has one.
    pub product: Option<String>,
    /// Serial number string, if the device has one.
    pub serial: Option<String>,
    /// The interfaces of the active configuration.
    pub interfaces: Vec<InterfaceClass>,
    /// The drivers bound to its interfaces (`usb-storage`, `usbhid`; `usbfs` while a program
    /// such as periwire holds the interface), without repeats.
    pub drivers: Vec<String>,
}

/// Every USB device of this machine, sorted by bus id.
pub fn list_devices() -> Result<Vec<HostDeviceSummary>, HostError> {
    if !crate::usb_present() {
        return Ok(Vec::new());
    }
    let devices = nusb::list_devices()
        .wait()
        .map_err(|e| HostError::List(e.into()))?;
    let mut list: Vec<HostDeviceSummary> = devices
        .filter_map(|info| {
            let busid = crate::busid(&info)?;
            Some(HostDeviceSummary {
                drivers: interface_drivers(info.sysfs_path(), &busid),
                busnum: info.busnum(),
                devnum: info.device_address(),
                vendor_id: info.vendor_id(),
                product_id: info.product_id(),
                class: info.class(),
                speed: crate::speed(info.speed()),
                manufacturer: info.manufacturer_string().map(str::to_owned),
                product: info.product_string().map(str::to_owned),
                serial: info.serial_number().map(str::to_owned),
                interfaces: interface_records(&info),
                busid,
            })
        })
        .collect();
    list.sort_by_key(|d| busid_order(&d.busid));
    Ok(list)
}

/// The interfaces of a device's active configuration, as the OS lists them.
pub(crate) fn interface_records(info: &nusb::DeviceInfo) -> Vec<InterfaceClass> {
    info.interfaces()
        .map(|i| InterfaceClass {
            class: i.class(),
            subclass: i.subclass(),
            protocol: i.protocol(),
        })
        .collect()
}

/// The drivers bound to the interfaces of the device at `sysfs`: its interface directories
/// are named `BUSID:CONFIG.INTERFACE`, each with a `driver` link when one is bound.
fn interface_drivers(sysfs: &Path, busid: &str) -> Vec<String> {
    let prefix = format!("{busid}:");
    let mut drivers = Vec::new();
    let Ok(entries) = std::fs::read_dir(sysfs) else {
        return drivers;
    };
    let mut names: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with(&prefix))
        .collect();
    names.sort();
    for name in names {
        let Ok(link) = std::fs::read_link(sysfs.join(&name).join("driver")) else {
            continue;
        };
        if let Some(driver) = link.file_name().map(|d| d.to_string_lossy().into_owned()) {
            if !drivers.contains(&driver) {
                drivers.push(driver);
            }
        }
    }
    drivers
}

/// Sort key of a bus id: bus number, then the port chain, numerically (`1-2` before `1-10`).
fn busid_order(busid: &str) -> Vec<u32> {
    busid
        .split(['-', '.'])
        .map(|p| p.parse().unwrap_or(u32::MAX))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_ids_sort_numerically() {
        let mut ids = vec!["2-1", "1-10", "1-2.3", "1-2"];
        ids.sort_by_key(|b| busid_order(b));
        assert_eq!(ids, ["1-2", "1-2.3", "1-10", "2-1"]);
    }

    #[test]
    fn drivers_are_read_from_the_interface_directories() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("1-1");
        let drivers = dir.path().join("drivers");
        std::fs::create_dir_all(drivers.join("usbhid")).unwrap();
        std::fs::create_dir_all(drivers.join("usb-storage")).unwrap();
        for (intf, driver) in [
            ("1-1:1.0", Some("usb-storage")),
            ("1-1:1.1", None),
            ("1-1:1.2", Some("usbhid")),
            ("1-1:1.3", Some("usbhid")),
        ] {
            std::fs::create_dir_all(dev.join(intf)).unwrap();
            if let Some(d) = driver {
                std::os::unix::fs::symlink(drivers.join(d), dev.join(intf).join("driver")).unwrap();
            }
        }
        std::fs::create_dir_all(dev.join("power")).unwrap();
        assert_eq!(interface_drivers(&dev, "1-1"), ["usb-storage", "usbhid"]);
        assert!(interface_drivers(&dir.path().join("gone"), "1-9").is_empty());
    }
}
