//! Discovery through the host's BlueZ daemon: when bluetoothd runs and manages the host
//! controller, a guest's inquiry and remote name requests go through its D-Bus API, so the
//! guest sees what the host knows (paired and cached devices, the names bluetoothd resolved)
//! beside what a fresh discovery finds, and periwire never races bluetoothd for the
//! controller's inquiry. Without a daemon, the host link falls back to raw HCI (`sys`).

use std::collections::BTreeSet;
use std::time::Duration;

use bluer::{Adapter, AdapterEvent, AddressType, DiscoveryFilter, DiscoveryTransport, Session};
use futures_util::StreamExt;
use periwire_hci::wire::ClassOfDevice;
use periwire_hci::BdAddr;

use crate::sys::InquiryResult;

/// How long reaching the system bus and bluetoothd may take before periwire uses the
/// kernel instead (a bus that does not answer must not stall the guest's inquiry).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// bluetoothd, managing one host controller.
pub(crate) struct Bluetoothd {
    adapter: Adapter,
    // Keeps the D-Bus connection the adapter's calls go through.
    _session: Session,
}

impl Bluetoothd {
    /// bluetoothd's view of host controller `hci{index}`; `None` when no daemon answers on
    /// the system bus or it does not manage that controller.
    pub(crate) async fn connect(index: u16) -> Option<Self> {
        let reach = async {
            let session = Session::new().await.ok()?;
            let adapter = session.adapter(&format!("hci{index}")).ok()?;
            // The adapter object exists only while bluetoothd manages the controller.
            adapter.address().await.ok()?;
            Some(Self {
                adapter,
                _session: session,
            })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, reach)
            .await
            .ok()
            .flatten()
    }

    /// Runs a BR/EDR discovery for `length`, handing `found` each device bluetoothd knows or
    /// finds, once each.
    pub(crate) async fn inquiry(
        &self,
        length: Duration,
        mut found: impl FnMut(InquiryResult),
    ) -> bluer::Result<()> {
        self.adapter
            .set_discovery_filter(DiscoveryFilter {
                transport: DiscoveryTransport::BrEdr,
                ..Default::default()
            })
            .await?;
        let events = self.adapter.discover_devices().await?;
        let mut events = std::pin::pin!(events);
        let deadline = tokio::time::Instant::now() + length;
        let mut reported = BTreeSet::new();
        // Dropping the stream at the deadline ends this discovery session.
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.next()).await {
            tracing::debug!(?event, "bluetoothd discovery");
            let AdapterEvent::DeviceAdded(address) = event else {
                continue;
            };
            if !reported.insert(address) {
                continue;
            }
            match self.describe(address).await {
                Some(result) => found(result),
                None => tracing::debug!(%address, "not a BR/EDR device: not listed"),
            }
        }
        Ok(())
    }

    /// The name bluetoothd holds for `remote`, without paging it.
    pub(crate) async fn name(&self, remote: BdAddr) -> Option<String> {
        let device = self.adapter.device(bluer_address(remote)).ok()?;
        device.name().await.ok().flatten()
    }

    /// A device as an inquiry result; `None` for what cannot be a BR/EDR device and for
    /// devices gone meanwhile. BlueZ has no "BR/EDR" flag: its `AddressType` says "public"
    /// for BR/EDR and LE public addresses alike, and it leaves `Class` out when the class
    /// is 0. So a device with a random address (LE only) is left out, and one without a
    /// class is listed only if this BR/EDR-filtered discovery sees it now (it has an RSSI)
    /// or the host has paired with it.
    async fn describe(&self, address: bluer::Address) -> Option<InquiryResult> {
        let device = self.adapter.device(address).ok()?;
        if device.address_type().await.ok()? == AddressType::LeRandom {
            return None;
        }
        let class = match device.class().await.ok()? {
            Some(class) => class,
            None => {
                let seen = device.rssi().await.ok().flatten().is_some();
                if !seen && !device.is_paired().await.ok()? {
                    return None;
                }
                0
            }
        };
        Some(InquiryResult {
            address: bd_addr(address),
            class_of_device: ClassOfDevice(class & 0x00ff_ffff),
            name: device.name().await.ok().flatten(),
        })
    }
}

/// BlueZ's D-Bus addresses are written most significant octet first; HCI's least.
pub(crate) fn bluer_address(addr: BdAddr) -> bluer::Address {
    let mut msb_first = addr.0;
    msb_first.reverse();
    bluer::Address(msb_first)
}

/// The HCI order of a D-Bus address.
pub(crate) fn bd_addr(addr: bluer::Address) -> BdAddr {
    let mut lsb_first = addr.0;
    lsb_first.reverse();
    BdAddr(lsb_first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_convert_both_ways() {
        let hci = BdAddr([0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
        let dbus = bluer_address(hci);
        assert_eq!(dbus.to_string(), "11:22:33:44:55:66");
        assert_eq!(bd_addr(dbus), hci);
    }
}
