//! The boot mouse: report format (HID 1.11 Appendix B.2), a report descriptor in the shape of
//! HID 1.11 Appendix E.10 with a wheel added (Generic Desktop usage 0x38, HID Usage Tables
//! §4), and relative motion split into ±127 steps.

use std::sync::Arc;

use super::class::{Protocol, ReportType};
use super::device::{BootFunction, BootStrings, HidDevice, Inner, Shared};
use super::{InputError, MOUSE_PRODUCT_ID, PROTOCOL_MOUSE, QUEUE_CAPACITY};

/// The mouse report descriptor (52 bytes): three buttons, five bits of padding, then X, Y
/// and wheel as relative values -127..=127. Its first three bytes are the boot format of
/// HID 1.11 Appendix B.2; in report protocol the wheel byte follows.
pub const MOUSE_REPORT_DESCRIPTOR: [u8; 52] = [
    0x05, 0x01, // Usage Page (Generic Desktop)
    0x09, 0x02, // Usage (Mouse)
    0xa1, 0x01, // Collection (Application)
    0x09, 0x01, //   Usage (Pointer)
    0xa1, 0x00, //   Collection (Physical)
    0x05, 0x09, //     Usage Page (Buttons)
    0x19, 0x01, //     Usage Minimum (1)
    0x29, 0x03, //     Usage Maximum (3)
    0x15, 0x00, //     Logical Minimum (0)
    0x25, 0x01, //     Logical Maximum (1)
    0x95, 0x03, //     Report Count (3)
    0x75, 0x01, //     Report Size (1)
    0x81, 0x02, //     Input (Data, Variable, Absolute): buttons
    0x95, 0x01, //     Report Count (1)
    0x75, 0x05, //     Report Size (5)
    0x81, 0x01, //     Input (Constant): padding
    0x05, 0x01, //     Usage Page (Generic Desktop)
    0x09, 0x30, //     Usage (X)
    0x09, 0x31, //     Usage (Y)
    0x09, 0x38, //     Usage (Wheel)
    0x15, 0x81, //     Logical Minimum (-127)
    0x25, 0x7f, //     Logical Maximum (127)
    0x75, 0x08, //     Report Size (8)
    0x95, 0x03, //     Report Count (3)
    0x81, 0x06, //     Input (Data, Variable, Relative): X, Y, wheel
    0xc0, //   End Collection
    0xc0, // End Collection
];

/// The largest step one report carries: the logical range is -127..=127.
const MAX_STEP: i32 = 127;

/// A mouse button (Button page usages 1..=3, HID Usage Tables §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MouseButton {
    /// Button 1, bit 0.
    Left,
    /// Button 2, bit 1.
    Right,
    /// Button 3, bit 2.
    Middle,
}

impl MouseButton {
    /// Its bit in the button byte.
    pub fn bit(self) -> u8 {
        match self {
            Self::Left => 0x01,
            Self::Right => 0x02,
            Self::Middle => 0x04,
        }
    }
}

/// One mouse input report (HID 1.11 Appendix B.2 plus a wheel byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct MouseReport {
    /// Buttons held: bit 0 left, bit 1 right, bit 2 middle.
    pub buttons: u8,
    /// Relative X, positive to the right.
    pub dx: i8,
    /// Relative Y, positive downwards.
    pub dy: i8,
    /// Wheel, positive away from the user (scroll up).
    pub wheel: i8,
}

impl MouseReport {
    /// The report bytes in `protocol`: 3 in boot protocol (Appendix B.2), 4 in report
    /// protocol (with the wheel).
    pub fn to_bytes(self, protocol: Protocol) -> Vec<u8> {
        let [dx] = self.dx.to_le_bytes();
        let [dy] = self.dy.to_le_bytes();
        let [wheel] = self.wheel.to_le_bytes();
        match protocol {
            Protocol::Boot => vec![self.buttons, dx, dy],
            Protocol::Report => vec![self.buttons, dx, dy, wheel],
        }
    }
}

/// Splits a relative motion into steps that each fit a report (±127), so the host sees the
/// same total motion. Lazy: a huge motion allocates nothing.
pub(crate) fn split_motion(dx: i32, dy: i32) -> impl Iterator<Item = (i8, i8)> {
    let step = |v: &mut i32| {
        let s = (*v).clamp(-MAX_STEP, MAX_STEP);
        *v -= s;
        // In -127..=127 by the clamp.
        i8::try_from(s).unwrap_or(0)
    };
    let (mut dx, mut dy) = (dx, dy);
    std::iter::from_fn(move || (dx != 0 || dy != 0).then(|| (step(&mut dx), step(&mut dy))))
}

/// Mouse state beyond the queue.
#[derive(Debug, Default)]
pub(crate) struct MouseFunction {
    /// Buttons held as of the last queued report: motion queued later carries them (drags).
    queued_buttons: u8,
    /// Buttons in the last report the host got (GET_REPORT).
    delivered_buttons: u8,
}

impl BootFunction for MouseFunction {
    type Report = MouseReport;
    const REPORT_DESCRIPTOR: &'static [u8] = &MOUSE_REPORT_DESCRIPTOR;

    fn encode(report: &MouseReport, protocol: Protocol) -> Vec<u8> {
        report.to_bytes(protocol)
    }

    fn get_report(&self, report_type: ReportType, protocol: Protocol) -> Option<Vec<u8>> {
        match report_type {
            ReportType::Input => Some(
                MouseReport {
                    buttons: self.delivered_buttons,
                    ..MouseReport::default()
                }
                .to_bytes(protocol),
            ),
            _ => None,
        }
    }

    fn set_report(&mut self, _report_type: ReportType, _data: &[u8]) -> bool {
        false
    }

    fn delivered(&mut self, report: &MouseReport) {
        self.delivered_buttons = report.buttons;
    }

    fn reset(&mut self) {
        self.delivered_buttons = 0;
    }
}

/// A virtual HID boot mouse (interface 03/01/02, full speed, interrupt IN 0x81, 4 bytes,
/// every 10 ms), 1209:7701 "periwire" / "Virtual Mouse": three buttons, relative X/Y and a
/// wheel. Input comes from its [`MouseHandle`]s.
pub struct Mouse {
    device: HidDevice<MouseFunction>,
}

impl Mouse {
    /// A mouse and a handle to move it.
    pub fn new() -> (Self, MouseHandle) {
        let inner = Inner::new(MouseFunction::default(), QUEUE_CAPACITY, 0);
        let device = HidDevice::new(
            BootStrings {
                product_id: MOUSE_PRODUCT_ID,
                product: "Virtual Mouse",
                serial: "PW7701",
            },
            PROTOCOL_MOUSE,
            // Report protocol length: buttons, X, Y, wheel.
            4,
            inner,
        );
        let mouse = Self { device };
        let handle = mouse.handle();
        (mouse, handle)
    }
}

boot_device_wrapper!(Mouse, MouseHandle);

/// Moves and clicks a [`Mouse`]. Cloneable; clones share the mouse's queue and button state.
///
/// The methods wait while the queue is full. A long move is several reports queued one by
/// one: if the call is dropped while waiting for room, part of the move stays queued.
#[derive(Clone)]
pub struct MouseHandle {
    shared: Arc<Shared<MouseFunction>>,
}

impl MouseHandle {
    /// Moves by (`dx`, `dy`) (right and down are positive), in as many reports as it takes at
    /// ±127 per report. Held buttons stay held (a drag).
    pub async fn move_by(&self, dx: i32, dy: i32) -> Result<(), InputError> {
        for (dx, dy) in split_motion(dx, dy) {
            self.shared
                .push(1, |f| {
                    vec![MouseReport {
                        buttons: f.queued_buttons,
                        dx,
                        dy,
                        wheel: 0,
                    }]
                })
                .await?;
        }
        Ok(())
    }

    /// Turns the wheel by `clicks` detents (positive scrolls up), ±127 per report. Boot
    /// protocol hosts do not see the wheel.
    pub async fn scroll(&self, clicks: i32) -> Result<(), InputError> {
        for (wheel, _) in split_motion(clicks, 0) {
            self.shared
                .push(1, |f| {
                    vec![MouseReport {
                        buttons: f.queued_buttons,
                        wheel,
                        ..MouseReport::default()
                    }]
                })
                .await?;
        }
        Ok(())
    }

    /// Presses `button` and keeps it held.
    pub async fn press(&self, button: MouseButton) -> Result<(), InputError> {
        self.set_buttons(|b| b | button.bit()).await
    }

    /// Releases `button`.
    pub async fn release(&self, button: MouseButton) -> Result<(), InputError> {
        self.set_buttons(|b| b & !button.bit()).await
    }

    /// Presses and releases `button`; the two reports are queued together.
    pub async fn click(&self, button: MouseButton) -> Result<(), InputError> {
        self.shared
            .push(2, |f| {
                let held = f.queued_buttons;
                vec![
                    MouseReport {
                        buttons: held | button.bit(),
                        ..MouseReport::default()
                    },
                    MouseReport {
                        buttons: held & !button.bit(),
                        ..MouseReport::default()
                    },
                ]
            })
            .await?;
        Ok(())
    }

    async fn set_buttons(&self, change: impl FnOnce(u8) -> u8) -> Result<(), InputError> {
        self.shared
            .push(1, |f| {
                f.queued_buttons = change(f.queued_buttons);
                vec![MouseReport {
                    buttons: f.queued_buttons,
                    ..MouseReport::default()
                }]
            })
            .await
    }

    /// Reports queued and not yet taken by the host.
    pub fn queued(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// Waits until the host has taken every queued report.
    pub async fn drained(&self) -> Result<(), InputError> {
        self.shared.drained().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hid::test_util::{control, poll_once, ready_now, urb_in};
    use crate::UsbDevice;

    #[test]
    fn descriptors() {
        let (mouse, _) = Mouse::new();
        let d = mouse.device.descriptors();
        let c = d.configuration_descriptor();
        assert_eq!(c.len(), 34);
        assert_eq!(u16::from_le_bytes([c[2], c[3]]), 34);
        assert_eq!(&c[9..18], &[9, 4, 0, 0, 1, 3, 1, 2, 0]);
        assert_eq!(&c[18..27], &[9, 0x21, 0x11, 0x01, 0, 1, 0x22, 52, 0]);
        assert_eq!(&c[27..34], &[7, 5, 0x81, 3, 4, 0, 10]);
        assert_eq!(mouse.info().product_id, 0x7701);
        let r = ready_now(mouse.submit(control(
            [0x81, 0x06, 0x00, 0x22, 0x00, 0x00, 0x40, 0x00],
            &[],
        )))
        .into_result()
        .unwrap();
        assert_eq!(r.data, MOUSE_REPORT_DESCRIPTOR);
    }

    #[test]
    fn handle_futures_can_be_spawned() {
        fn assert_send<T: Send>(_: &T) {}
        let (_mouse, h) = Mouse::new();
        assert_send(&h.move_by(1, 1));
        assert_send(&h.click(MouseButton::Left));
        assert_send(&h.press(MouseButton::Left));
        assert_send(&h.scroll(1));
    }

    #[test]
    fn motion_is_split_into_steps() {
        let split = |dx, dy| split_motion(dx, dy).collect::<Vec<_>>();
        assert_eq!(split(0, 0), vec![]);
        assert_eq!(split(5, -3), vec![(5, -3)]);
        assert_eq!(split(300, -10), vec![(127, -10), (127, 0), (46, 0)]);
        assert_eq!(split(-254, 254), vec![(-127, 127), (-127, 127)]);
        let (sx, sy) = split_motion(-1_000_001, 999_999).fold((0i64, 0i64), |(x, y), (dx, dy)| {
            (x + i64::from(dx), y + i64::from(dy))
        });
        assert_eq!((sx, sy), (-1_000_001, 999_999));
    }

    #[test]
    fn report_bytes_per_protocol() {
        let r = MouseReport {
            buttons: 1,
            dx: -1,
            dy: 2,
            wheel: -3,
        };
        assert_eq!(r.to_bytes(Protocol::Boot), [1, 0xff, 2]);
        assert_eq!(r.to_bytes(Protocol::Report), [1, 0xff, 2, 0xfd]);
    }

    async fn next(mouse: &Mouse) -> Vec<u8> {
        mouse.submit(urb_in(1, 4)).await.into_result().unwrap().data
    }

    #[tokio::test]
    async fn a_move_larger_than_127_is_split() {
        let (mouse, h) = Mouse::new();
        let mut urb = mouse.submit(urb_in(1, 4));
        assert!(poll_once(&mut urb).await.is_none());
        h.move_by(300, -200).await.unwrap();
        assert_eq!(urb.await.into_result().unwrap().data, [0, 127, 0x81, 0]); // -127
        assert_eq!(next(&mouse).await, [0, 127, 0xb7, 0]); // -73
        assert_eq!(next(&mouse).await, [0, 46, 0, 0]);
        assert_eq!(h.queued(), 0);
    }

    #[tokio::test]
    async fn buttons_click_and_drag() {
        let (mouse, h) = Mouse::new();
        h.click(MouseButton::Right).await.unwrap();
        h.press(MouseButton::Left).await.unwrap();
        h.move_by(1, 1).await.unwrap();
        h.release(MouseButton::Left).await.unwrap();
        h.scroll(-2).await.unwrap();
        assert_eq!(next(&mouse).await, [2, 0, 0, 0]);
        assert_eq!(next(&mouse).await, [0, 0, 0, 0]);
        assert_eq!(next(&mouse).await, [1, 0, 0, 0]);
        // GET_REPORT(Input) shows the button the host saw held.
        let r = ready_now(mouse.submit(control(
            [0xa1, 0x01, 0x00, 0x01, 0x00, 0x00, 0x04, 0x00],
            &[],
        )))
        .into_result()
        .unwrap();
        assert_eq!(r.data, [1, 0, 0, 0]);
        assert_eq!(next(&mouse).await, [1, 1, 1, 0]);
        assert_eq!(next(&mouse).await, [0, 0, 0, 0]);
        // In boot protocol only three bytes go out.
        ready_now(mouse.submit(control(
            [0x21, 0x0b, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
            &[],
        )))
        .into_result()
        .unwrap();
        assert_eq!(next(&mouse).await, [0, 0, 0]);
        h.drained().await.unwrap();
        // No output reports on a mouse.
        let r = ready_now(mouse.submit(control(
            [0x21, 0x09, 0x00, 0x02, 0x00, 0x00, 0x01, 0x00],
            &[1],
        )));
        assert_eq!(r, crate::Completion::failed(crate::TransferError::Stall));
    }
}
