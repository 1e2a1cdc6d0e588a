//! HID boot keyboard and mouse (HID 1.11), driven in the guest by the stock Linux `usbhid`
//! and `hid-generic` drivers (or any boot-protocol driver: BIOS, `usbkbd`, `usbmouse`).
//!
//! Each device comes with a cloneable handle that injects input:
//!
//! ```no_run
//! # async fn demo() -> Result<(), periwire_usb::hid::InputError> {
//! use periwire_usb::hid::{Keyboard, Mouse, MouseButton};
//! let (keyboard, keys) = Keyboard::new();
//! let (mouse, pointer) = Mouse::new();
//! // ... export `keyboard` and `mouse` through the server ...
//! keys.type_text("echo hello\n").await?;
//! pointer.move_by(300, -20).await?;
//! pointer.click(MouseButton::Left).await?;
//! # Ok(()) }
//! ```
//!
//! Input goes into a bounded queue of reports ([`QUEUE_CAPACITY`]); the interrupt IN endpoint
//! hands out one report per URB. An interrupt IN URB with nothing queued stays pending until
//! input arrives or the URB is unlinked; a report leaves the queue only when a URB completes
//! with it, so an unlinked URB loses nothing. When the queue is full the async handle methods
//! wait for the host to take reports (backpressure), the `try_*` methods fail with
//! [`InputError::QueueFull`].
//!
//! Layout: [`class`] decodes the HID class requests (sans-IO); the keyboard and mouse modules
//! hold the report formats, the report descriptors and the text-to-key mapping (sans-IO);
//! a small shared core adds the queue and the [`UsbDevice`](crate::UsbDevice) glue.

pub mod class;
#[macro_use]
mod device;
mod keyboard;
mod mouse;

pub use keyboard::{
    key, text_to_reports, usage_for_char, Keyboard, KeyboardHandle, KeyboardReport, Leds,
    Modifiers, KEYBOARD_REPORT_DESCRIPTOR,
};
pub use mouse::{Mouse, MouseButton, MouseHandle, MouseReport, MOUSE_REPORT_DESCRIPTOR};

/// idVendor of periwire's virtual devices (pid.codes, 0x1209).
pub const VENDOR_ID: u16 = 0x1209;
/// idProduct of the virtual keyboard.
pub const KEYBOARD_PRODUCT_ID: u16 = 0x7700;
/// idProduct of the virtual mouse.
pub const MOUSE_PRODUCT_ID: u16 = 0x7701;
/// Manufacturer string.
pub const MANUFACTURER: &str = "periwire";
/// Reports a device queues before its handles wait (or `try_*` fails).
pub const QUEUE_CAPACITY: usize = 1024;

/// bInterfaceClass of HID (HID 1.11 §4.1).
pub const CLASS_HID: u8 = 0x03;
/// bInterfaceSubClass of a boot interface (HID 1.11 §4.2).
pub const SUBCLASS_BOOT: u8 = 0x01;
/// bInterfaceProtocol of a boot keyboard (HID 1.11 §4.3).
pub const PROTOCOL_KEYBOARD: u8 = 0x01;
/// bInterfaceProtocol of a boot mouse (HID 1.11 §4.3).
pub const PROTOCOL_MOUSE: u8 = 0x02;

/// Why input could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// `type_text` met a character no key of a US keyboard types. Nothing was queued.
    #[error("cannot type {0:?}: no key of a US keyboard types it")]
    UnsupportedChar(char),
    /// A key code outside the boot keyboard's range 0x04..=0x65 (HID Usage Tables §10).
    #[error("key code {0:#04x} is not a key of the boot keyboard (0x04..=0x65)")]
    InvalidKeyCode(u8),
    /// The queue has no room (only the `try_*` methods; the others wait).
    #[error("input queue is full")]
    QueueFull,
    /// The device was dropped.
    #[error("the device is gone")]
    DeviceGone,
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;

    use crate::device::{Direction, Urb};
    use crate::SetupPacket;

    /// Polls `f` once: `Some` if it completed.
    pub(crate) async fn poll_once<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut *f).poll(cx) {
                Poll::Ready(v) => Some(v),
                Poll::Pending => None,
            })
        })
        .await
    }

    /// The output of `f`, which must complete on its first poll (control transfers do).
    pub(crate) fn ready_now<F: Future + Unpin>(mut f: F) -> F::Output {
        struct NoWake;
        impl std::task::Wake for NoWake {
            fn wake(self: std::sync::Arc<Self>) {}
        }
        let waker = std::task::Waker::from(std::sync::Arc::new(NoWake));
        let mut cx = std::task::Context::from_waker(&waker);
        match Pin::new(&mut f).poll(&mut cx) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("pends instead of completing at once"),
        }
    }

    pub(crate) fn control(raw: [u8; 8], data: &[u8]) -> Urb {
        let setup = SetupPacket::from_bytes(raw);
        Urb {
            endpoint: 0,
            direction: if setup.is_in() {
                Direction::In
            } else {
                Direction::Out
            },
            setup,
            transfer_flags: 0,
            length: if setup.is_in() {
                u32::from(setup.length)
            } else {
                u32::try_from(data.len()).unwrap()
            },
            data: data.to_vec(),
            iso_packets: vec![],
            start_frame: 0,
            interval: 0,
        }
    }

    pub(crate) fn urb_out(endpoint: u8, data: &[u8]) -> Urb {
        Urb {
            direction: Direction::Out,
            length: u32::try_from(data.len()).unwrap(),
            data: data.to_vec(),
            ..urb_in(endpoint, 0)
        }
    }

    pub(crate) fn urb_in(endpoint: u8, length: u32) -> Urb {
        Urb {
            endpoint,
            direction: Direction::In,
            setup: SetupPacket::default(),
            transfer_flags: 0,
            length,
            data: vec![],
            iso_packets: vec![],
            start_frame: 0,
            interval: 10,
        }
    }
}
