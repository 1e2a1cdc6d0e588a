//! HID boot keyboard and mouse (work in progress).
