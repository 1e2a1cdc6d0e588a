//! Hearing devices come and go: [`DeviceWatch`].

use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use futures_core::Stream;

/// How often the sysfs device directory is read, for hosts where no udev re-broadcasts the
/// kernel's hot-plug events (minimal hosts and VMs): well inside the second a view may lag.
const SYSFS_POLL: Duration = Duration::from_millis(250);

/// Tells when a USB device was plugged in or unplugged.
///
/// Two sources: nusb's hot-plug watch, which is immediate but hears only udev's
/// re-broadcasts, and a look at `/sys/bus/usb/devices` four times a second, which needs no
/// udev. A change either sees resolves [`DeviceWatch::changed`].
pub struct DeviceWatch {
    hotplug: Option<nusb::hotplug::HotplugWatch>,
    seen: Vec<(String, String)>,
    tick: tokio::time::Interval,
}

impl DeviceWatch {
    /// A watch from now on. Where nusb's watch cannot start, the sysfs look alone serves.
    pub fn new() -> Self {
        let hotplug = match nusb::watch_devices() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::debug!(error = %e, "no hot-plug watch; reading sysfs only");
                None
            }
        };
        let mut tick = tokio::time::interval(SYSFS_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            hotplug,
            seen: sysfs_devices(Path::new(SYSFS_DEVICES)),
            tick,
        }
    }

    /// Waits until a device has been plugged in or unplugged since the last call (or since
    /// [`new`](Self::new)). Cancel-safe.
    pub async fn changed(&mut self) {
        loop {
            let hotplug = std::future::poll_fn(|cx| match self.hotplug.as_mut() {
                Some(w) => Pin::new(w).poll_next(cx),
                None => std::task::Poll::Pending,
            });
            tokio::select! {
                event = hotplug => {
                    if event.is_none() {
                        self.hotplug = None;
                    }
                    self.seen = sysfs_devices(Path::new(SYSFS_DEVICES));
                    return;
                }
                _ = self.tick.tick() => {
                    let now = sysfs_devices(Path::new(SYSFS_DEVICES));
                    if now != self.seen {
                        self.seen = now;
                        return;
                    }
                }
            }
        }
    }
}

impl Default for DeviceWatch {
    fn default() -> Self {
        Self::new()
    }
}

const SYSFS_DEVICES: &str = "/sys/bus/usb/devices";

/// The devices (not interfaces) under `dir` and their bus addresses, sorted: a device
/// plugged out and in again at the same port gets a new address, so it shows as a change.
fn sysfs_devices(dir: &Path) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut devices: Vec<(String, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            // Interfaces are `BUSID:CONFIG.INTERFACE`.
            if name.contains(':') {
                return None;
            }
            let devnum = std::fs::read_to_string(e.path().join("devnum")).unwrap_or_default();
            Some((name, devnum.trim().to_owned()))
        })
        .collect();
    devices.sort();
    devices
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_listing_sees_devices_and_their_addresses_not_interfaces() {
        let dir = tempfile::tempdir().unwrap();
        for (name, devnum) in [("1-1", Some("2")), ("1-1:1.0", None), ("usb1", Some("1"))] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            if let Some(n) = devnum {
                std::fs::write(dir.path().join(name).join("devnum"), format!("{n}\n")).unwrap();
            }
        }
        let before = sysfs_devices(dir.path());
        assert_eq!(
            before,
            [("1-1".into(), "2".into()), ("usb1".into(), "1".into())]
        );
        std::fs::write(dir.path().join("1-1/devnum"), "3\n").unwrap();
        assert_ne!(sysfs_devices(dir.path()), before, "a replug is a change");
    }
}
