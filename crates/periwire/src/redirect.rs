//! `periwire redirect`: one USB device of this machine over usbredir, with the command line
//! of `usbredirect` (Debian `usbredir-tools`), so that what spawns `usbredirect` (KubeVirt's
//! `virtctl usbredir`, scripts) can run periwire instead.

use std::sync::Arc;

use periwire_host::{HostDevice, HostDeviceSummary};
use periwire_server::front_door::AccessRules;
use periwire_server::secure::Network;
use periwire_server::usbredir::{self, UsbredirConfig};
use periwire_server::{Export, Registry};
use periwire_wire::usbip::BusId;
use tokio::net::{TcpListener, TcpStream};

use crate::serve::shutdown_signal;
use crate::AnyError;

/// Options of `periwire redirect`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("peer").required(true).args(["to", "as_addr"])))]
pub struct RedirectArgs {
    /// The device: VID:PID (hex), BUS-DEV (bus number and device address, decimal), or its
    /// bus id as `periwire list --local` shows it.
    #[arg(long)]
    device: String,
    /// Connect to a usb-guest listening at HOST:PORT (QEMU `-chardev socket,server=on`) and
    /// serve it until it disconnects.
    #[arg(long, value_name = "HOST:PORT")]
    to: Option<String>,
    /// Listen at HOST:PORT and serve whoever connects (QEMU's chardev dials it), until
    /// interrupted. usbredir is unauthenticated: only guests on loopback and on the
    /// `--plain-allow` networks are served.
    #[arg(long = "as", value_name = "HOST:PORT")]
    as_addr: Option<String>,
    /// With `--as`: a network besides loopback (CIDR, or one address) whose guests are served;
    /// may be repeated.
    #[arg(long, value_name = "NETWORK", requires = "as_addr")]
    plain_allow: Vec<Network>,
}

/// Which of `devices` `spec` names: VID:PID first, then BUS-DEV, then a bus id.
pub fn pick_device<'a>(
    devices: &'a [HostDeviceSummary],
    spec: &str,
) -> Result<&'a HostDeviceSummary, String> {
    if let Some((vid, pid)) = spec.split_once(':') {
        let parse = |s: &str| u16::from_str_radix(s, 16).map_err(|_| format!("bad VID:PID {spec}"));
        let (vid, pid) = (parse(vid)?, parse(pid)?);
        return devices
            .iter()
            .find(|d| d.vendor_id == vid && d.product_id == pid)
            .ok_or_else(|| format!("no USB device {vid:04x}:{pid:04x} is plugged in"));
    }
    let bus_dev = spec
        .split_once('-')
        .and_then(|(b, d)| Some((b.parse::<u8>().ok()?, d.parse::<u8>().ok()?)));
    if let Some((bus, dev)) = bus_dev {
        if let Some(d) = devices.iter().find(|d| d.busnum == bus && d.devnum == dev) {
            return Ok(d);
        }
    }
    devices
        .iter()
        .find(|d| d.busid == spec)
        .ok_or_else(|| format!("no USB device {spec} (VID:PID, BUS-DEV or a bus id)"))
}

/// Runs `periwire redirect`.
pub async fn run(args: RedirectArgs) -> Result<(), AnyError> {
    let devices = periwire_host::list_devices()?;
    let summary = pick_device(&devices, &args.device)?;
    let busid = BusId::new(&summary.busid)?;
    let device = HostDevice::new(&summary.busid)?;
    let registry = Registry::new();
    registry
        .add(Export {
            busid: busid.clone(),
            busnum: u32::from(summary.busnum),
            devnum: u32::from(summary.devnum),
            name: summary.busid.clone(),
            device: Arc::new(device),
        })
        .map_err(|b| format!("bus id {b} is used twice"))?;
    let config = UsbredirConfig::default();
    let ids = format!("{:04x}:{:04x}", summary.vendor_id, summary.product_id);
    match (args.to, args.as_addr) {
        (Some(addr), _) => {
            let stream = TcpStream::connect(&addr)
                .await
                .map_err(|e| format!("connecting to {addr}: {e}"))?;
            stream.set_nodelay(true)?;
            println!("periwire: redirecting {} ({ids}) to {addr}", summary.busid);
            usbredir::serve_stream(stream, &addr, &registry, &busid, config, shutdown_signal())
                .await?;
        }
        (None, Some(addr)) => {
            let listener = TcpListener::bind(&addr)
                .await
                .map_err(|e| format!("listening on {addr}: {e}"))?;
            println!(
                "periwire: device {} ({ids}) on usbredir {}",
                summary.busid,
                listener.local_addr()?
            );
            let access = usbredir::UsbredirAccess {
                rules: Arc::new(AccessRules {
                    plain_allow: args.plain_allow,
                    allow: Default::default(),
                }),
                tls: None,
            };
            let stop = shutdown_signal();
            usbredir::serve(listener, registry.clone(), busid, access, config, stop).await?;
        }
        (None, None) => return Err("--to or --as is needed".into()),
    }
    registry.shutdown();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use periwire_usb::Speed;

    fn device(busid: &str, busnum: u8, devnum: u8, vid: u16, pid: u16) -> HostDeviceSummary {
        HostDeviceSummary {
            busid: busid.into(),
            busnum,
            devnum,
            vendor_id: vid,
            product_id: pid,
            class: 0,
            speed: Speed::High,
            manufacturer: None,
            product: None,
            serial: None,
            interfaces: Vec::new(),
            drivers: Vec::new(),
        }
    }

    #[test]
    fn picks_by_ids_bus_and_address_or_bus_id() {
        let list = [
            device("1-1", 1, 2, 0x46f4, 0x0001),
            device("1-2", 1, 3, 0x0627, 0x0001),
        ];
        assert_eq!(pick_device(&list, "0627:0001").unwrap().busid, "1-2");
        // BUS-DEV before bus id: 1-3 is bus 1 address 3.
        assert_eq!(pick_device(&list, "1-3").unwrap().busid, "1-2");
        assert_eq!(pick_device(&list, "1-1").unwrap().busid, "1-1");
        assert!(pick_device(&list, "dead:beef").is_err());
        assert!(pick_device(&list, "zz:1").is_err());
        assert!(pick_device(&list, "2-9").is_err());
    }
}
