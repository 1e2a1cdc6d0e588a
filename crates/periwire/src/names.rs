//! Names for USB ids and classes from the USB ID database (the `usb-ids` crate, a copy of
//! linux-usb.org's `usb.ids` compiled in), for devices whose own strings are missing or not at
//! hand (a remote device list carries ids only).

use usb_ids::FromId;

/// The vendor's name for `vendor_id`, if the database has it.
pub fn vendor(vendor_id: u16) -> Option<&'static str> {
    usb_ids::Vendor::from_id(vendor_id).map(|v| v.name())
}

/// The product's name for the pair, if the database has it.
pub fn product(vendor_id: u16, product_id: u16) -> Option<&'static str> {
    usb_ids::Device::from_vid_pid(vendor_id, product_id).map(|d| d.name())
}

/// The name of a device or interface class (`Mass Storage`, `Human Interface Device`).
pub fn class(class: u8) -> Option<&'static str> {
    usb_ids::Class::from_id(class).map(|c| c.name())
}

/// A device's display name: its product string, else the database's product name, else the
/// vendor's name, else `VID:PID`.
pub fn display(vendor_id: u16, product_id: u16, product_string: Option<&str>) -> String {
    product_string
        .filter(|s| !s.trim().is_empty())
        .map(str::to_owned)
        .or_else(|| product(vendor_id, product_id).map(str::to_owned))
        .or_else(|| vendor(vendor_id).map(str::to_owned))
        .unwrap_or_else(|| format!("{vendor_id:04x}:{product_id:04x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_ids_have_names() {
        assert_eq!(vendor(0x1d6b), Some("Linux Foundation"));
        assert_eq!(product(0x1d6b, 0x0002), Some("2.0 root hub"));
        assert_eq!(class(0x08), Some("Mass Storage"));
        assert_eq!(display(0x1d6b, 0x0002, Some("  ")), "2.0 root hub");
        assert_eq!(display(0x1d6b, 0x0002, Some("Mine")), "Mine");
        assert_eq!(display(0xfffe, 0xfffe, None), "fffe:fffe");
    }
}
