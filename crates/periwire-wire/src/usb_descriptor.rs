//! Reading the standard descriptors a device returns (USB 2.0 §9.6): the device descriptor and
//! configuration descriptors with their interfaces and endpoints.
//!
//! The bytes come from the device (a host device may be anything), so every length is checked:
//! a descriptor whose `bLength` runs past the buffer ends the walk with an error, descriptors
//! this reader does not know (class-specific, SuperSpeed companions) are skipped by their
//! `bLength`.

use crate::Reader;
use thiserror::Error;

/// DEVICE descriptor type.
pub const DEVICE: u8 = 1;
/// CONFIGURATION descriptor type.
pub const CONFIGURATION: u8 = 2;
/// INTERFACE descriptor type.
pub const INTERFACE: u8 = 4;
/// ENDPOINT descriptor type.
pub const ENDPOINT: u8 = 5;
/// Length of a device descriptor.
pub const DEVICE_LEN: usize = 18;
/// Length of a configuration descriptor's own header.
pub const CONFIGURATION_LEN: usize = 9;

/// Why descriptor bytes are not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DescriptorError {
    /// Shorter than its fixed fields.
    #[error("descriptor type {0} is truncated")]
    Truncated(u8),
    /// Not the descriptor type asked for.
    #[error("expected descriptor type {expected}, got {got}")]
    WrongType {
        /// The type asked for.
        expected: u8,
        /// The type found.
        got: u8,
    },
    /// A `bLength` below 2 or past the end of the buffer.
    #[error("descriptor at offset {0} has a bad length")]
    BadLength(usize),
}

/// The device descriptor's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceDescriptor {
    /// bcdUSB.
    pub usb_version: u16,
    /// bDeviceClass.
    pub class: u8,
    /// bDeviceSubClass.
    pub subclass: u8,
    /// bDeviceProtocol.
    pub protocol: u8,
    /// bMaxPacketSize0 (the exponent for SuperSpeed devices).
    pub max_packet_size0: u8,
    /// idVendor.
    pub vendor_id: u16,
    /// idProduct.
    pub product_id: u16,
    /// bcdDevice.
    pub device_version: u16,
    /// bNumConfigurations.
    pub num_configurations: u8,
}

impl DeviceDescriptor {
    /// Reads a device descriptor.
    pub fn parse(buf: &[u8]) -> Result<Self, DescriptorError> {
        let mut r = Reader::new(buf);
        let truncated = DescriptorError::Truncated(DEVICE);
        let [len, kind] = r.array().ok_or(truncated)?;
        if kind != DEVICE {
            return Err(DescriptorError::WrongType {
                expected: DEVICE,
                got: kind,
            });
        }
        if usize::from(len) < DEVICE_LEN || buf.len() < DEVICE_LEN {
            return Err(truncated);
        }
        let usb_version = r.u16_le().ok_or(truncated)?;
        let [class, subclass, protocol, max_packet_size0] = r.array().ok_or(truncated)?;
        let vendor_id = r.u16_le().ok_or(truncated)?;
        let product_id = r.u16_le().ok_or(truncated)?;
        let device_version = r.u16_le().ok_or(truncated)?;
        let [_manufacturer, _product, _serial, num_configurations] = r.array().ok_or(truncated)?;
        Ok(Self {
            usb_version,
            class,
            subclass,
            protocol,
            max_packet_size0,
            vendor_id,
            product_id,
            device_version,
            num_configurations,
        })
    }

    /// The control endpoint's max packet size in bytes.
    pub fn ep0_max_packet_size(&self) -> u16 {
        if self.usb_version >= 0x0300 && self.max_packet_size0 < 16 {
            1 << self.max_packet_size0
        } else {
            u16::from(self.max_packet_size0)
        }
    }
}

/// An endpoint descriptor's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointDescriptor {
    /// bEndpointAddress.
    pub address: u8,
    /// bmAttributes (bits 1..0: the transfer type).
    pub attributes: u8,
    /// wMaxPacketSize as encoded (bits 12..11: extra transactions per microframe).
    pub max_packet_size: u16,
    /// bInterval.
    pub interval: u8,
}

impl EndpointDescriptor {
    /// The transfer type: 0 control, 1 isochronous, 2 bulk, 3 interrupt.
    pub fn transfer_type(&self) -> u8 {
        self.attributes & 0x03
    }

    /// Bytes per service interval: the packet size times the transactions per microframe
    /// of a high-bandwidth endpoint.
    pub fn max_packet_bytes(&self) -> u16 {
        let size = self.max_packet_size & 0x07ff;
        let transactions = 1 + ((self.max_packet_size >> 11) & 0x03);
        size.saturating_mul(transactions)
    }
}

/// One alternate setting of an interface, with its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceDescriptor {
    /// bInterfaceNumber.
    pub number: u8,
    /// bAlternateSetting.
    pub alternate: u8,
    /// bInterfaceClass.
    pub class: u8,
    /// bInterfaceSubClass.
    pub subclass: u8,
    /// bInterfaceProtocol.
    pub protocol: u8,
    /// The endpoints that follow it.
    pub endpoints: Vec<EndpointDescriptor>,
}

/// A configuration descriptor with everything it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigurationDescriptor {
    /// bConfigurationValue.
    pub value: u8,
    /// Every interface descriptor (each alternate setting is one), in order.
    pub interfaces: Vec<InterfaceDescriptor>,
}

impl ConfigurationDescriptor {
    /// Reads a configuration descriptor and what follows it, up to `wTotalLength` or the end
    /// of `buf`, whichever comes first.
    pub fn parse(buf: &[u8]) -> Result<Self, DescriptorError> {
        let truncated = DescriptorError::Truncated(CONFIGURATION);
        let mut r = Reader::new(buf);
        let [len, kind] = r.array().ok_or(truncated)?;
        if kind != CONFIGURATION {
            return Err(DescriptorError::WrongType {
                expected: CONFIGURATION,
                got: kind,
            });
        }
        if usize::from(len) < CONFIGURATION_LEN {
            return Err(truncated);
        }
        let total = usize::from(r.u16_le().ok_or(truncated)?);
        let [_num_interfaces, value] = r.array().ok_or(truncated)?;
        let buf = &buf[..total.min(buf.len())];
        let mut interfaces: Vec<InterfaceDescriptor> = Vec::new();
        let mut at = usize::from(len);
        while at + 2 <= buf.len() {
            let dlen = usize::from(buf[at]);
            let Some(d) = buf.get(at..at + dlen).filter(|_| dlen >= 2) else {
                return Err(DescriptorError::BadLength(at));
            };
            match d[1] {
                INTERFACE if dlen >= 9 => interfaces.push(InterfaceDescriptor {
                    number: d[2],
                    alternate: d[3],
                    class: d[5],
                    subclass: d[6],
                    protocol: d[7],
                    endpoints: Vec::new(),
                }),
                ENDPOINT if dlen >= 7 => {
                    // An endpoint before any interface belongs to nothing; skip it.
                    if let Some(interface) = interfaces.last_mut() {
                        interface.endpoints.push(EndpointDescriptor {
                            address: d[2],
                            attributes: d[3],
                            max_packet_size: u16::from_le_bytes([d[4], d[5]]),
                            interval: d[6],
                        });
                    }
                }
                _ => {}
            }
            at += dlen;
        }
        Ok(Self { value, interfaces })
    }

    /// The interface numbers, each once, in the order they first appear.
    pub fn interface_numbers(&self) -> Vec<u8> {
        let mut numbers = Vec::new();
        for i in &self.interfaces {
            if !numbers.contains(&i.number) {
                numbers.push(i.number);
            }
        }
        numbers
    }

    /// Alternate setting `alternate` of interface `number`.
    pub fn interface(&self, number: u8, alternate: u8) -> Option<&InterfaceDescriptor> {
        self.interfaces
            .iter()
            .find(|i| i.number == number && i.alternate == alternate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A boot keyboard's configuration: one interface, a HID descriptor, one interrupt IN.
    const KEYBOARD_CONFIG: [u8; 34] = [
        9, 2, 34, 0, 1, 1, 0, 0xa0, 50, // configuration
        9, 4, 0, 0, 1, 3, 1, 1, 0, // interface 0: HID boot keyboard
        9, 0x21, 0x11, 0x01, 0, 1, 0x22, 63, 0, // HID descriptor
        7, 5, 0x81, 3, 8, 0, 10, // endpoint 0x81 interrupt, 8 bytes, 10 ms
    ];

    #[test]
    fn reads_a_keyboard_configuration() {
        let c = ConfigurationDescriptor::parse(&KEYBOARD_CONFIG).unwrap();
        assert_eq!(c.value, 1);
        assert_eq!(c.interface_numbers(), vec![0]);
        let i = c.interface(0, 0).unwrap();
        assert_eq!((i.class, i.subclass, i.protocol), (3, 1, 1));
        assert_eq!(
            i.endpoints,
            vec![EndpointDescriptor {
                address: 0x81,
                attributes: 3,
                max_packet_size: 8,
                interval: 10
            }]
        );
    }

    #[test]
    fn refuses_a_descriptor_past_the_end_and_stops_at_total_length() {
        let mut bad = KEYBOARD_CONFIG;
        bad[27] = 200; // the endpoint's bLength runs past the buffer
        assert_eq!(
            ConfigurationDescriptor::parse(&bad),
            Err(DescriptorError::BadLength(27))
        );
        let mut short = KEYBOARD_CONFIG.to_vec();
        short[2] = 27; // wTotalLength leaves the endpoint out; trailing bytes are ignored
        short.extend_from_slice(&[0xff; 5]);
        let c = ConfigurationDescriptor::parse(&short).unwrap();
        assert!(c.interfaces[0].endpoints.is_empty());
    }

    #[test]
    fn high_bandwidth_packet_sizes_count_every_transaction() {
        let ep = EndpointDescriptor {
            address: 0x81,
            attributes: 1,
            max_packet_size: 0x1400, // 1024 bytes, 3 transactions
            interval: 1,
        };
        assert_eq!(ep.max_packet_bytes(), 3072);
    }

    #[test]
    fn reads_a_device_descriptor() {
        let d = [
            18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x6b, 0x1d, 0x04, 0x01, 0x00, 0x01, 1, 2, 3, 1,
        ];
        let d = DeviceDescriptor::parse(&d).unwrap();
        assert_eq!((d.vendor_id, d.product_id), (0x1d6b, 0x0104));
        assert_eq!((d.ep0_max_packet_size(), d.num_configurations), (64, 1));
        assert_eq!(
            DeviceDescriptor::parse(&[18, 1, 0]),
            Err(DescriptorError::Truncated(DEVICE))
        );
    }
}
