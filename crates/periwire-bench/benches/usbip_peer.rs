//! The peer: the `usbip` crate's server (crates.io), serving a source/sink device of its own
//! built with its `UsbInterfaceHandler` trait, as close to periwire's [`SourceSink`] as the
//! crate allows: bulk IN 0x81 returns as many bytes as asked (the same counting pattern),
//! bulk OUT 0x02 swallows, interrupt IN 0x83 exists but cannot pend — the crate's handlers
//! are synchronous and its connection loop runs one URB at a time, so an interrupt IN with
//! nothing to report completes at once, empty.
//!
//! Served with the crate's own per-connection `usbip::handler`, on sockets with
//! TCP_NODELAY set as periwire sets it (the crate's `usbip::server` leaves Nagle on).
//!
//! [`SourceSink`]: periwire_usb::source_sink::SourceSink

use std::any::Any;
use std::sync::{Arc, Mutex};

use periwire_bench::target::{Target, BUSIDS};
use usbip::{
    EndpointAttributes, SetupPacket, UsbDevice, UsbEndpoint, UsbInterface, UsbInterfaceHandler,
    UsbIpServer,
};

/// Why the peer cannot do the "idle interrupt IN" row.
pub const CANNOT_PEND: &str = "one synchronous handler call per URB: no URB can pend";

#[derive(Debug, Default)]
struct SourceSinkHandler;

impl UsbInterfaceHandler for SourceSinkHandler {
    fn get_class_specific_descriptor(&self) -> Vec<u8> {
        Vec::new()
    }

    fn handle_urb(
        &mut self,
        _interface: &UsbInterface,
        ep: UsbEndpoint,
        transfer_buffer_length: u32,
        _setup: SetupPacket,
        _req: &[u8],
    ) -> std::io::Result<Vec<u8>> {
        match ep.address {
            0x81 => Ok(periwire_usb::source_sink::pattern(
                transfer_buffer_length as usize,
            )),
            0x02 => Ok(Vec::new()),
            0x83 => Ok(Vec::new()),
            other => Err(std::io::Error::other(format!("no endpoint {other:#04x}"))),
        }
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

fn device(index: u32, busid: &str) -> UsbDevice {
    let ep = |address, attributes: EndpointAttributes, max_packet_size, interval| UsbEndpoint {
        address,
        attributes: attributes as u8,
        max_packet_size,
        interval,
    };
    let mut dev = UsbDevice::new(index).with_interface(
        0xff,
        0,
        0,
        Some("Source/Sink"),
        vec![
            ep(0x81, EndpointAttributes::Bulk, 512, 0),
            ep(0x02, EndpointAttributes::Bulk, 512, 0),
            ep(0x83, EndpointAttributes::Interrupt, 8, 4),
        ],
        Arc::new(Mutex::new(
            Box::new(SourceSinkHandler) as Box<dyn UsbInterfaceHandler + Send>
        )),
    );
    dev.bus_id = busid.to_owned();
    dev.path = format!("/sys/devices/usbip-crate/{busid}");
    dev.bus_num = 1;
    dev.vendor_id = 0x1209;
    dev.product_id = 0x77ff;
    dev
}

/// The `usbip` crate's server with two source/sink devices, on a runtime of its own.
pub fn start() -> std::io::Result<Target> {
    let devices = BUSIDS
        .iter()
        .enumerate()
        .map(|(i, b)| device(i as u32 + 1, b))
        .collect();
    let server = Arc::new(UsbIpServer::new_simulated(devices));
    let mut target = Target::new(
        "usbip 0.9",
        "usbip-crate-server",
        move |listener, mut stopped| async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    accepted = listener.accept() => {
                        let Ok((mut socket, _)) = accepted else { continue };
                        let _ = socket.set_nodelay(true);
                        let server = server.clone();
                        tokio::spawn(async move {
                            let _ = usbip::handler(&mut socket, server).await;
                        });
                    }
                }
            }
        },
    )?;
    target.cannot_pend = Some(CANNOT_PEND.to_owned());
    Ok(target)
}
