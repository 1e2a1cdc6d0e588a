//! Builders for the standard descriptors of a virtual device (USB 2.0 §9.6).
//!
//! A virtual device states its descriptors once as a [`DeviceDescriptors`]; the bytes the
//! host reads, and the [`DeviceInfo`](crate::DeviceInfo) the device list shows, both derive
//! from it, so they cannot disagree.

use crate::device::{DeviceInfo, InterfaceClass, Speed};

/// Descriptor type codes (USB 2.0 table 9-5).
pub mod kind {
    /// DEVICE.
    pub const DEVICE: u8 = 1;
    /// CONFIGURATION.
    pub const CONFIGURATION: u8 = 2;
    /// STRING.
    pub const STRING: u8 = 3;
    /// INTERFACE.
    pub const INTERFACE: u8 = 4;
    /// ENDPOINT.
    pub const ENDPOINT: u8 = 5;
    /// DEVICE_QUALIFIER.
    pub const DEVICE_QUALIFIER: u8 = 6;
    /// INTERFACE_ASSOCIATION.
    pub const INTERFACE_ASSOCIATION: u8 = 11;
    /// HID (HID 1.11 §7.1).
    pub const HID: u8 = 0x21;
    /// HID report descriptor.
    pub const HID_REPORT: u8 = 0x22;
    /// CS_INTERFACE, class-specific interface descriptor (CDC 1.2 §5.2.3).
    pub const CS_INTERFACE: u8 = 0x24;
}

/// Transfer type of an endpoint (bmAttributes bits 1..0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferType {
    /// Control.
    Control,
    /// Isochronous.
    Isochronous,
    /// Bulk.
    Bulk,
    /// Interrupt.
    Interrupt,
}

impl TransferType {
    fn bits(self) -> u8 {
        match self {
            Self::Control => 0,
            Self::Isochronous => 1,
            Self::Bulk => 2,
            Self::Interrupt => 3,
        }
    }
}

/// An endpoint descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// bEndpointAddress: number, bit 7 set for IN.
    pub address: u8,
    /// Transfer type.
    pub transfer: TransferType,
    /// wMaxPacketSize.
    pub max_packet_size: u16,
    /// bInterval.
    pub interval: u8,
}

/// An interface descriptor with what follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
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
    /// iInterface string index (0 for none).
    pub string: u8,
    /// Class-specific descriptors placed between the interface and its endpoints
    /// (HID descriptor, CDC functional descriptors), as raw bytes.
    pub class_descriptors: Vec<u8>,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// The descriptors of a single-configuration device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDescriptors {
    /// Speed the device runs at.
    pub speed: Speed,
    /// bcdUSB.
    pub usb_version: u16,
    /// bDeviceClass.
    pub class: u8,
    /// bDeviceSubClass.
    pub subclass: u8,
    /// bDeviceProtocol.
    pub protocol: u8,
    /// bMaxPacketSize0.
    pub max_packet_size0: u8,
    /// idVendor.
    pub vendor_id: u16,
    /// idProduct.
    pub product_id: u16,
    /// bcdDevice.
    pub device_version: u16,
    /// Manufacturer string.
    pub manufacturer: String,
    /// Product string.
    pub product: String,
    /// Serial number string.
    pub serial: String,
    /// bConfigurationValue of the one configuration.
    pub configuration_value: u8,
    /// bmAttributes of the configuration (bit 7 always set).
    pub configuration_attributes: u8,
    /// bMaxPower in 2 mA units.
    pub max_power: u8,
    /// Raw descriptors placed right after the configuration descriptor (e.g. an interface
    /// association descriptor).
    pub configuration_extra: Vec<u8>,
    /// Interfaces, with every alternate setting.
    pub interfaces: Vec<Interface>,
    /// Extra strings, from index 4 on (1..=3 are manufacturer, product, serial).
    pub extra_strings: Vec<String>,
}

/// String index of the manufacturer.
pub const STRING_MANUFACTURER: u8 = 1;
/// String index of the product.
pub const STRING_PRODUCT: u8 = 2;
/// String index of the serial number.
pub const STRING_SERIAL: u8 = 3;

impl DeviceDescriptors {
    /// The 18-byte device descriptor.
    pub fn device_descriptor(&self) -> Vec<u8> {
        let mut d = vec![18, kind::DEVICE];
        d.extend_from_slice(&self.usb_version.to_le_bytes());
        d.extend_from_slice(&[
            self.class,
            self.subclass,
            self.protocol,
            self.max_packet_size0,
        ]);
        d.extend_from_slice(&self.vendor_id.to_le_bytes());
        d.extend_from_slice(&self.product_id.to_le_bytes());
        d.extend_from_slice(&self.device_version.to_le_bytes());
        d.extend_from_slice(&[STRING_MANUFACTURER, STRING_PRODUCT, STRING_SERIAL, 1]);
        d
    }

    /// The 10-byte device qualifier descriptor (high-speed devices only).
    pub fn device_qualifier(&self) -> Option<Vec<u8>> {
        if self.speed != Speed::High {
            return None;
        }
        let mut d = vec![10, kind::DEVICE_QUALIFIER];
        d.extend_from_slice(&self.usb_version.to_le_bytes());
        d.extend_from_slice(&[
            self.class,
            self.subclass,
            self.protocol,
            self.max_packet_size0,
        ]);
        d.extend_from_slice(&[1, 0]);
        Some(d)
    }

    /// Number of distinct interfaces (alternate settings count once).
    pub fn num_interfaces(&self) -> u8 {
        let mut numbers: Vec<u8> = self.interfaces.iter().map(|i| i.number).collect();
        numbers.sort_unstable();
        numbers.dedup();
        u8::try_from(numbers.len()).unwrap_or(u8::MAX)
    }

    /// The full configuration descriptor with everything below it.
    pub fn configuration_descriptor(&self) -> Vec<u8> {
        let mut d = vec![9, kind::CONFIGURATION, 0, 0, self.num_interfaces()];
        d.extend_from_slice(&[
            self.configuration_value,
            0,
            0x80 | self.configuration_attributes,
            self.max_power,
        ]);
        d.extend_from_slice(&self.configuration_extra);
        for i in &self.interfaces {
            let num_endpoints = u8::try_from(i.endpoints.len()).unwrap_or(u8::MAX);
            d.extend_from_slice(&[
                9,
                kind::INTERFACE,
                i.number,
                i.alternate,
                num_endpoints,
                i.class,
                i.subclass,
                i.protocol,
                i.string,
            ]);
            d.extend_from_slice(&i.class_descriptors);
            for e in &i.endpoints {
                d.extend_from_slice(&[7, kind::ENDPOINT, e.address, e.transfer.bits()]);
                d.extend_from_slice(&e.max_packet_size.to_le_bytes());
                d.push(e.interval);
            }
        }
        let total = u16::try_from(d.len()).unwrap_or(u16::MAX).to_le_bytes();
        d[2] = total[0];
        d[3] = total[1];
        d
    }

    /// String descriptor `index` (0 is the language list), UTF-16LE.
    pub fn string_descriptor(&self, index: u8) -> Option<Vec<u8>> {
        let text = match index {
            0 => return Some(vec![4, kind::STRING, 0x09, 0x04]), // en-US
            STRING_MANUFACTURER => &self.manufacturer,
            STRING_PRODUCT => &self.product,
            STRING_SERIAL => &self.serial,
            n => self.extra_strings.get(usize::from(n) - 4)?,
        };
        let mut d = vec![0, kind::STRING];
        // A descriptor's length is one byte: keep at most 126 UTF-16 units.
        for unit in text.encode_utf16().take(126) {
            d.extend_from_slice(&unit.to_le_bytes());
        }
        d[0] = u8::try_from(d.len()).unwrap_or(u8::MAX);
        Some(d)
    }

    /// The endpoint with this address, in any alternate setting.
    pub fn endpoint(&self, address: u8) -> Option<&Endpoint> {
        self.interfaces
            .iter()
            .flat_map(|i| &i.endpoints)
            .find(|e| e.address == address)
    }

    /// What the device list shows.
    pub fn info(&self) -> DeviceInfo {
        DeviceInfo {
            speed: self.speed,
            vendor_id: self.vendor_id,
            product_id: self.product_id,
            device_version: self.device_version,
            class: self.class,
            subclass: self.subclass,
            protocol: self.protocol,
            configuration_value: self.configuration_value,
            num_configurations: 1,
            interfaces: self
                .interfaces
                .iter()
                .filter(|i| i.alternate == 0)
                .map(|i| InterfaceClass {
                    class: i.class,
                    subclass: i.subclass,
                    protocol: i.protocol,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DeviceDescriptors {
        DeviceDescriptors {
            speed: Speed::High,
            usb_version: 0x0200,
            class: 0,
            subclass: 0,
            protocol: 0,
            max_packet_size0: 64,
            vendor_id: 0x1209,
            product_id: 0x0001,
            device_version: 0x0100,
            manufacturer: "periwire".into(),
            product: "test".into(),
            serial: "1".into(),
            configuration_value: 1,
            configuration_attributes: 0,
            max_power: 50,
            configuration_extra: vec![],
            interfaces: vec![Interface {
                number: 0,
                alternate: 0,
                class: 8,
                subclass: 6,
                protocol: 0x50,
                string: 0,
                class_descriptors: vec![],
                endpoints: vec![
                    Endpoint {
                        address: 0x81,
                        transfer: TransferType::Bulk,
                        max_packet_size: 512,
                        interval: 0,
                    },
                    Endpoint {
                        address: 0x02,
                        transfer: TransferType::Bulk,
                        max_packet_size: 512,
                        interval: 0,
                    },
                ],
            }],
            extra_strings: vec![],
        }
    }

    #[test]
    fn configuration_total_length_is_patched() {
        let c = sample().configuration_descriptor();
        assert_eq!(c.len(), 9 + 9 + 7 + 7);
        assert_eq!(u16::from_le_bytes([c[2], c[3]]) as usize, c.len());
        assert_eq!(c[4], 1, "one interface");
        assert_eq!(c[7], 0x80, "bus powered bit always set");
    }

    #[test]
    fn strings_are_utf16() {
        let d = sample();
        assert_eq!(d.string_descriptor(0), Some(vec![4, 3, 9, 4]));
        let p = d.string_descriptor(STRING_PRODUCT).unwrap();
        assert_eq!(p, vec![10, 3, b't', 0, b'e', 0, b's', 0, b't', 0]);
        assert_eq!(d.string_descriptor(9), None);
    }

    #[test]
    fn device_descriptor_fields() {
        let d = sample().device_descriptor();
        assert_eq!(d.len(), 18);
        assert_eq!(&d[8..10], &[0x09, 0x12]);
        assert_eq!(sample().info().interfaces.len(), 1);
    }
}
