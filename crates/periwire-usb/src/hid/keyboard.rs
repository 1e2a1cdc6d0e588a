//! The boot keyboard: report format (HID 1.11 Appendix B.1), report descriptor (HID 1.11
//! Appendix E.6), key codes (HID Usage Tables 1.12 §10, Keyboard/Keypad page 0x07) and the
//! mapping of text to key presses on a US layout.

use std::sync::Arc;

use super::class::{Protocol, ReportType};
use super::device::{BootFunction, BootStrings, HidDevice, Inner, Shared};
use super::{InputError, KEYBOARD_PRODUCT_ID, PROTOCOL_KEYBOARD, QUEUE_CAPACITY};

/// The boot keyboard report descriptor, byte for byte as in HID 1.11 Appendix E.6: an
/// 8-byte input report (modifier bits, a reserved byte, six key codes 0..=101) and a 1-byte
/// output report (five LEDs, three bits of padding).
pub const KEYBOARD_REPORT_DESCRIPTOR: [u8; 63] = [
    0x05, 0x01, // Usage Page (Generic Desktop)
    0x09, 0x06, // Usage (Keyboard)
    0xa1, 0x01, // Collection (Application)
    0x05, 0x07, //   Usage Page (Key Codes)
    0x19, 0xe0, //   Usage Minimum (224)
    0x29, 0xe7, //   Usage Maximum (231)
    0x15, 0x00, //   Logical Minimum (0)
    0x25, 0x01, //   Logical Maximum (1)
    0x75, 0x01, //   Report Size (1)
    0x95, 0x08, //   Report Count (8)
    0x81, 0x02, //   Input (Data, Variable, Absolute): modifier byte
    0x95, 0x01, //   Report Count (1)
    0x75, 0x08, //   Report Size (8)
    0x81, 0x01, //   Input (Constant): reserved byte
    0x95, 0x05, //   Report Count (5)
    0x75, 0x01, //   Report Size (1)
    0x05, 0x08, //   Usage Page (LEDs)
    0x19, 0x01, //   Usage Minimum (1)
    0x29, 0x05, //   Usage Maximum (5)
    0x91, 0x02, //   Output (Data, Variable, Absolute): LED report
    0x95, 0x01, //   Report Count (1)
    0x75, 0x03, //   Report Size (3)
    0x91, 0x01, //   Output (Constant): LED report padding
    0x95, 0x06, //   Report Count (6)
    0x75, 0x08, //   Report Size (8)
    0x15, 0x00, //   Logical Minimum (0)
    0x25, 0x65, //   Logical Maximum (101)
    0x05, 0x07, //   Usage Page (Key Codes)
    0x19, 0x00, //   Usage Minimum (0)
    0x29, 0x65, //   Usage Maximum (101)
    0x81, 0x00, //   Input (Data, Array): key array
    0xc0, // End Collection
];

/// Key codes: usage IDs of the Keyboard/Keypad page (HID Usage Tables 1.12 §10, table 12).
/// Letters are `A + n`, digits `N1..=N9`, `N0`.
pub mod key {
    /// Keyboard a and A.
    pub const A: u8 = 0x04;
    /// Keyboard z and Z.
    pub const Z: u8 = 0x1d;
    /// Keyboard 1 and !.
    pub const N1: u8 = 0x1e;
    /// Keyboard 9 and (.
    pub const N9: u8 = 0x26;
    /// Keyboard 0 and ).
    pub const N0: u8 = 0x27;
    /// Keyboard Return (ENTER).
    pub const ENTER: u8 = 0x28;
    /// Keyboard ESCAPE.
    pub const ESCAPE: u8 = 0x29;
    /// Keyboard DELETE (Backspace).
    pub const BACKSPACE: u8 = 0x2a;
    /// Keyboard Tab.
    pub const TAB: u8 = 0x2b;
    /// Keyboard Spacebar.
    pub const SPACE: u8 = 0x2c;
    /// Keyboard - and _.
    pub const MINUS: u8 = 0x2d;
    /// Keyboard = and +.
    pub const EQUAL: u8 = 0x2e;
    /// Keyboard [ and {.
    pub const LEFT_BRACKET: u8 = 0x2f;
    /// Keyboard ] and }.
    pub const RIGHT_BRACKET: u8 = 0x30;
    /// Keyboard \ and |.
    pub const BACKSLASH: u8 = 0x31;
    /// Keyboard ; and :.
    pub const SEMICOLON: u8 = 0x33;
    /// Keyboard ' and ".
    pub const APOSTROPHE: u8 = 0x34;
    /// Keyboard ` and ~.
    pub const GRAVE: u8 = 0x35;
    /// Keyboard , and <.
    pub const COMMA: u8 = 0x36;
    /// Keyboard . and >.
    pub const PERIOD: u8 = 0x37;
    /// Keyboard / and ?.
    pub const SLASH: u8 = 0x38;
    /// Keyboard Caps Lock.
    pub const CAPS_LOCK: u8 = 0x39;
    /// Keyboard F1 (F2..F12 follow: `F1 + n - 1`).
    pub const F1: u8 = 0x3a;
    /// Keyboard F12.
    pub const F12: u8 = 0x45;
    /// Keyboard PrintScreen.
    pub const PRINT_SCREEN: u8 = 0x46;
    /// Keyboard Scroll Lock.
    pub const SCROLL_LOCK: u8 = 0x47;
    /// Keyboard Pause.
    pub const PAUSE: u8 = 0x48;
    /// Keyboard Insert.
    pub const INSERT: u8 = 0x49;
    /// Keyboard Home.
    pub const HOME: u8 = 0x4a;
    /// Keyboard PageUp.
    pub const PAGE_UP: u8 = 0x4b;
    /// Keyboard Delete Forward.
    pub const DELETE: u8 = 0x4c;
    /// Keyboard End.
    pub const END: u8 = 0x4d;
    /// Keyboard PageDown.
    pub const PAGE_DOWN: u8 = 0x4e;
    /// Keyboard RightArrow.
    pub const RIGHT: u8 = 0x4f;
    /// Keyboard LeftArrow.
    pub const LEFT: u8 = 0x50;
    /// Keyboard DownArrow.
    pub const DOWN: u8 = 0x51;
    /// Keyboard UpArrow.
    pub const UP: u8 = 0x52;
    /// Keypad Num Lock and Clear.
    pub const NUM_LOCK: u8 = 0x53;
    /// Keyboard Application (the last usage of the boot keyboard's range).
    pub const APPLICATION: u8 = 0x65;
}

/// The modifier byte of a boot keyboard report: one bit per usage 0xE0..=0xE7 (HID 1.11
/// Appendix B.1, HID Usage Tables §10). Combine with `|`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Modifiers(pub u8);

impl Modifiers {
    /// No modifier.
    pub const NONE: Self = Self(0);
    /// Left Control (0xE0).
    pub const LEFT_CTRL: Self = Self(0x01);
    /// Left Shift (0xE1).
    pub const LEFT_SHIFT: Self = Self(0x02);
    /// Left Alt (0xE2).
    pub const LEFT_ALT: Self = Self(0x04);
    /// Left GUI (0xE3).
    pub const LEFT_GUI: Self = Self(0x08);
    /// Right Control (0xE4).
    pub const RIGHT_CTRL: Self = Self(0x10);
    /// Right Shift (0xE5).
    pub const RIGHT_SHIFT: Self = Self(0x20);
    /// Right Alt (0xE6).
    pub const RIGHT_ALT: Self = Self(0x40);
    /// Right GUI (0xE7).
    pub const RIGHT_GUI: Self = Self(0x80);
}

impl std::ops::BitOr for Modifiers {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// The keyboard LED state the host set with SET_REPORT(Output) (HID 1.11 Appendix B.1; usages
/// of the LED page, HID Usage Tables §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Leds(pub u8);

impl Leds {
    /// Num Lock (LED usage 1).
    pub fn num_lock(self) -> bool {
        self.0 & 0x01 != 0
    }
    /// Caps Lock (LED usage 2).
    pub fn caps_lock(self) -> bool {
        self.0 & 0x02 != 0
    }
    /// Scroll Lock (LED usage 3).
    pub fn scroll_lock(self) -> bool {
        self.0 & 0x04 != 0
    }
    /// Compose (LED usage 4).
    pub fn compose(self) -> bool {
        self.0 & 0x08 != 0
    }
    /// Kana (LED usage 5).
    pub fn kana(self) -> bool {
        self.0 & 0x10 != 0
    }
}

/// One boot keyboard input report (HID 1.11 Appendix B.1): the modifiers held and up to six
/// keys held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct KeyboardReport {
    /// Modifier keys held.
    pub modifiers: Modifiers,
    /// Key codes held, 0 for none.
    pub keys: [u8; 6],
}

impl KeyboardReport {
    /// Length on the wire.
    pub const LEN: usize = 8;

    /// Nothing held: the report that releases every key.
    pub const RELEASED: Self = Self {
        modifiers: Modifiers::NONE,
        keys: [0; 6],
    };

    /// `keycode` held with `modifiers`.
    pub fn key(modifiers: Modifiers, keycode: u8) -> Self {
        Self {
            modifiers,
            keys: [keycode, 0, 0, 0, 0, 0],
        }
    }

    /// The 8 bytes: modifiers, reserved, six key codes.
    pub fn to_bytes(self) -> [u8; 8] {
        let k = self.keys;
        [self.modifiers.0, 0, k[0], k[1], k[2], k[3], k[4], k[5]]
    }

    /// Parses 8 report bytes (the reserved byte is ignored).
    pub fn from_bytes(b: [u8; 8]) -> Self {
        Self {
            modifiers: Modifiers(b[0]),
            keys: [b[2], b[3], b[4], b[5], b[6], b[7]],
        }
    }
}

/// The key (and whether Shift is needed) that types `c` on a US keyboard: letters, digits,
/// space, `\n`/`\r` (Enter), `\t` (Tab), `\x08` (Backspace), `\x1b` (Escape) and the printable
/// ASCII punctuation. `None` for anything else.
pub fn usage_for_char(c: char) -> Option<(Modifiers, u8)> {
    let plain = |k| Some((Modifiers::NONE, k));
    let shift = |k| Some((Modifiers::LEFT_SHIFT, k));
    // `c` is ASCII in every arm that does arithmetic on it, so the casts are lossless.
    match c {
        'a'..='z' => plain(key::A + (c as u8 - b'a')),
        'A'..='Z' => shift(key::A + (c as u8 - b'A')),
        '1'..='9' => plain(key::N1 + (c as u8 - b'1')),
        '0' => plain(key::N0),
        '\n' | '\r' => plain(key::ENTER),
        '\t' => plain(key::TAB),
        '\x08' => plain(key::BACKSPACE),
        '\x1b' => plain(key::ESCAPE),
        ' ' => plain(key::SPACE),
        '-' => plain(key::MINUS),
        '=' => plain(key::EQUAL),
        '[' => plain(key::LEFT_BRACKET),
        ']' => plain(key::RIGHT_BRACKET),
        '\\' => plain(key::BACKSLASH),
        ';' => plain(key::SEMICOLON),
        '\'' => plain(key::APOSTROPHE),
        '`' => plain(key::GRAVE),
        ',' => plain(key::COMMA),
        '.' => plain(key::PERIOD),
        '/' => plain(key::SLASH),
        '!' => shift(key::N1),
        '@' => shift(key::N1 + 1),
        '#' => shift(key::N1 + 2),
        '$' => shift(key::N1 + 3),
        '%' => shift(key::N1 + 4),
        '^' => shift(key::N1 + 5),
        '&' => shift(key::N1 + 6),
        '*' => shift(key::N1 + 7),
        '(' => shift(key::N9),
        ')' => shift(key::N0),
        '_' => shift(key::MINUS),
        '+' => shift(key::EQUAL),
        '{' => shift(key::LEFT_BRACKET),
        '}' => shift(key::RIGHT_BRACKET),
        '|' => shift(key::BACKSLASH),
        ':' => shift(key::SEMICOLON),
        '"' => shift(key::APOSTROPHE),
        '~' => shift(key::GRAVE),
        '<' => shift(key::COMMA),
        '>' => shift(key::PERIOD),
        '?' => shift(key::SLASH),
        _ => None,
    }
}

/// The reports that type `text`: a key-down report and an all-released report per character
/// (so repeated letters register as separate presses). `\r\n` types one Enter. Fails on the
/// first character [`usage_for_char`] does not know, naming it.
pub fn text_to_reports(text: &str) -> Result<Vec<KeyboardReport>, InputError> {
    let mut reports = Vec::with_capacity(text.len() * 2);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' && chars.peek() == Some(&'\n') {
            continue;
        }
        let (modifiers, keycode) = usage_for_char(c).ok_or(InputError::UnsupportedChar(c))?;
        reports.push(KeyboardReport::key(modifiers, keycode));
        reports.push(KeyboardReport::RELEASED);
    }
    Ok(reports)
}

fn check_keycode(keycode: u8) -> Result<(), InputError> {
    if (key::A..=key::APPLICATION).contains(&keycode) {
        Ok(())
    } else {
        Err(InputError::InvalidKeyCode(keycode))
    }
}

/// Keyboard state beyond the queue: LEDs and the last report the host got.
#[derive(Debug, Default)]
pub(crate) struct KeyboardFunction {
    leds: Leds,
    current: KeyboardReport,
}

impl BootFunction for KeyboardFunction {
    type Report = KeyboardReport;
    const REPORT_DESCRIPTOR: &'static [u8] = &KEYBOARD_REPORT_DESCRIPTOR;

    fn encode(report: &KeyboardReport, _protocol: Protocol) -> Vec<u8> {
        // The report descriptor describes the boot format, so both protocols send it.
        report.to_bytes().to_vec()
    }

    fn get_report(&self, report_type: ReportType, _protocol: Protocol) -> Option<Vec<u8>> {
        match report_type {
            ReportType::Input => Some(self.current.to_bytes().to_vec()),
            ReportType::Output => Some(vec![self.leds.0]),
            _ => None,
        }
    }

    fn set_report(&mut self, report_type: ReportType, data: &[u8]) -> bool {
        match (report_type, data.first()) {
            (ReportType::Output, Some(&bits)) => {
                // Five LEDs; the three padding bits are constant.
                self.leds = Leds(bits & 0x1f);
                true
            }
            _ => false,
        }
    }

    fn delivered(&mut self, report: &KeyboardReport) {
        self.current = *report;
    }

    fn reset(&mut self) {
        *self = Self::default();
    }
}

/// A virtual HID boot keyboard (interface 03/01/01, full speed, interrupt IN 0x81, 8 bytes,
/// every 10 ms), 1209:7700 "periwire" / "Virtual Keyboard". Input comes from its
/// [`KeyboardHandle`]s.
pub struct Keyboard {
    device: HidDevice<KeyboardFunction>,
}

impl Keyboard {
    /// A keyboard and a handle to type on it.
    pub fn new() -> (Self, KeyboardHandle) {
        let inner = Inner::new(KeyboardFunction::default(), QUEUE_CAPACITY, 125);
        let device = HidDevice::new(
            BootStrings {
                product_id: KEYBOARD_PRODUCT_ID,
                product: "Virtual Keyboard",
                serial: "PW7700",
            },
            PROTOCOL_KEYBOARD,
            // Report length (HID 1.11 Appendix B.1).
            8,
            inner,
        );
        let keyboard = Self { device };
        let handle = keyboard.handle();
        (keyboard, handle)
    }
}

boot_device_wrapper!(Keyboard, KeyboardHandle);

/// Types on a [`Keyboard`]. Cloneable; clones share the keyboard's queue.
///
/// The async methods wait while the queue is full. Each key press is queued together with its
/// release, so a dropped (cancelled) call never leaves a key held; `type_text` checks the
/// whole text before queueing anything, but if it is cancelled while waiting for room, the
/// characters already queued stay queued. Concurrent callers may interleave between
/// characters.
#[derive(Clone)]
pub struct KeyboardHandle {
    shared: Arc<Shared<KeyboardFunction>>,
}

impl KeyboardHandle {
    /// Types `text` on a US layout (see [`usage_for_char`]): a press and a release per
    /// character. Fails with [`InputError::UnsupportedChar`] before queueing anything if a
    /// character has no key. Waits for room in the queue as needed; returns once everything
    /// is queued (see [`drained`](Self::drained) for delivered). Caps Lock is not compensated
    /// for.
    pub async fn type_text(&self, text: &str) -> Result<(), InputError> {
        let reports = text_to_reports(text)?;
        for pair in reports.chunks(2) {
            self.shared.push(pair.len(), |_| pair.to_vec()).await?;
        }
        Ok(())
    }

    /// Like [`type_text`](Self::type_text) but all or nothing, without waiting: fails with
    /// [`InputError::QueueFull`] (queueing nothing) if the whole text does not fit.
    pub fn try_type_text(&self, text: &str) -> Result<(), InputError> {
        let reports = text_to_reports(text)?;
        self.shared.try_push(reports.len(), |_| reports)
    }

    /// Presses and releases `keycode` (a [`key`] code, 0x04..=0x65) with `modifiers` held.
    pub async fn press(&self, keycode: u8, modifiers: Modifiers) -> Result<(), InputError> {
        check_keycode(keycode)?;
        let reports = [
            KeyboardReport::key(modifiers, keycode),
            KeyboardReport::RELEASED,
        ];
        self.shared.push(2, |_| reports.to_vec()).await
    }

    /// Like [`press`](Self::press) without waiting: [`InputError::QueueFull`] if full.
    pub fn try_press(&self, keycode: u8, modifiers: Modifiers) -> Result<(), InputError> {
        check_keycode(keycode)?;
        let reports = [
            KeyboardReport::key(modifiers, keycode),
            KeyboardReport::RELEASED,
        ];
        self.shared.try_push(2, |_| reports.to_vec())
    }

    /// Queues one raw report as is: keys stay held until a later report releases them
    /// (e.g. [`KeyboardReport::RELEASED`]).
    pub async fn send(&self, report: KeyboardReport) -> Result<(), InputError> {
        self.shared.push(1, |_| vec![report]).await
    }

    /// The LEDs as the host last set them.
    pub fn leds(&self) -> Leds {
        self.shared.lock().function.leds
    }

    /// Waits until the host sets LEDs for which `pred` holds, and returns them.
    pub async fn wait_for_leds(&self, pred: impl Fn(Leds) -> bool) -> Result<Leds, InputError> {
        self.shared
            .wait(|inner| {
                let leds = inner.function.leds;
                if pred(leds) {
                    Some(Ok(leds))
                } else if inner.is_closed() {
                    Some(Err(InputError::DeviceGone))
                } else {
                    None
                }
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
    use crate::hid::device::REPORT_INTERVAL;
    use crate::hid::test_util::{control, poll_once, ready_now, urb_in};
    use crate::TransferError;
    use crate::UsbDevice;
    use std::time::Duration;

    #[test]
    fn report_descriptor_is_appendix_e6() {
        // HID 1.11 Appendix E.6, as the hex dump of any boot keyboard shows it.
        let expected = "05010906a101\
                        050719e029e715002501750195088102\
                        950175088101\
                        950575010508190129059102\
                        950175039101\
                        95067508150025650507190029658100\
                        c0";
        let hex: String = KEYBOARD_REPORT_DESCRIPTOR
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, expected.replace(' ', ""));
    }

    #[test]
    fn descriptors() {
        let (kb, _) = Keyboard::new();
        let d = kb.device.descriptors();
        let dev = d.device_descriptor();
        assert_eq!(&dev[8..12], &[0x09, 0x12, 0x00, 0x77]);
        let c = d.configuration_descriptor();
        // configuration 9 + interface 9 + HID 9 + endpoint 7
        assert_eq!(c.len(), 34);
        assert_eq!(u16::from_le_bytes([c[2], c[3]]), 34);
        assert_eq!(&c[9..18], &[9, 4, 0, 0, 1, 3, 1, 1, 0]);
        assert_eq!(&c[18..27], &[9, 0x21, 0x11, 0x01, 0, 1, 0x22, 63, 0]);
        assert_eq!(&c[27..34], &[7, 5, 0x81, 3, 8, 0, 10]);
        let info = kb.info();
        assert_eq!((info.vendor_id, info.product_id), (0x1209, 0x7700));
        assert_eq!(d.string_descriptor(2).unwrap().len(), 2 + 2 * 16);
    }

    #[test]
    fn text_maps_to_press_release_pairs() {
        let r = text_to_reports("aA1!\n").unwrap();
        let bytes: Vec<[u8; 8]> = r.iter().map(|r| r.to_bytes()).collect();
        let up = [0u8; 8];
        assert_eq!(
            bytes,
            vec![
                [0, 0, 0x04, 0, 0, 0, 0, 0],
                up,
                [0x02, 0, 0x04, 0, 0, 0, 0, 0],
                up,
                [0, 0, 0x1e, 0, 0, 0, 0, 0],
                up,
                [0x02, 0, 0x1e, 0, 0, 0, 0, 0],
                up,
                [0, 0, 0x28, 0, 0, 0, 0, 0],
                up,
            ]
        );
        assert_eq!(text_to_reports("\r\n").unwrap().len(), 2);
        assert_eq!(text_to_reports("").unwrap(), vec![]);
    }

    #[test]
    fn every_printable_ascii_has_a_key() {
        for b in 0x20u8..0x7f {
            let (m, k) = usage_for_char(char::from(b)).unwrap();
            assert!((key::A..=key::SLASH).contains(&k), "{:?}", char::from(b));
            assert!(m == Modifiers::NONE || m == Modifiers::LEFT_SHIFT);
        }
        assert_eq!(usage_for_char('z'), Some((Modifiers::NONE, key::Z)));
        assert_eq!(usage_for_char('9'), Some((Modifiers::NONE, key::N9)));
        assert_eq!(usage_for_char('~'), Some((Modifiers::LEFT_SHIFT, 0x35)));
        assert_eq!(usage_for_char('?'), Some((Modifiers::LEFT_SHIFT, 0x38)));
    }

    #[test]
    fn unknown_character_is_named() {
        let err = text_to_reports("ok é").unwrap_err();
        assert_eq!(err, InputError::UnsupportedChar('é'));
        assert!(err.to_string().contains('é'));
        let (_kb, h) = Keyboard::new();
        assert_eq!(
            h.try_type_text("a\u{7f}"),
            Err(InputError::UnsupportedChar('\u{7f}'))
        );
        assert_eq!(h.queued(), 0, "nothing queued when the text is rejected");
    }

    #[test]
    fn class_requests() {
        let (kb, h) = Keyboard::new();
        let run = |raw, data: &[u8]| ready_now(kb.submit(control(raw, data)));
        // Report descriptor, cut to wLength.
        let r = run([0x81, 0x06, 0x00, 0x22, 0x00, 0x00, 0xff, 0x00], &[])
            .into_result()
            .unwrap();
        assert_eq!(r.data, KEYBOARD_REPORT_DESCRIPTOR);
        let r = run([0x81, 0x06, 0x00, 0x22, 0x00, 0x00, 0x10, 0x00], &[])
            .into_result()
            .unwrap();
        assert_eq!(r.data.len(), 16);
        // HID descriptor.
        let r = run([0x81, 0x06, 0x00, 0x21, 0x00, 0x00, 0x09, 0x00], &[])
            .into_result()
            .unwrap();
        assert_eq!(r.data, [9, 0x21, 0x11, 0x01, 0, 1, 0x22, 63, 0]);
        // Physical descriptor: none.
        let r = run([0x81, 0x06, 0x00, 0x23, 0x00, 0x00, 0x09, 0x00], &[]);
        assert_eq!(r, crate::Completion::failed(TransferError::Stall));
        // SET_REPORT(Output): Caps Lock on.
        let r = run([0x21, 0x09, 0x00, 0x02, 0x00, 0x00, 0x01, 0x00], &[0x02])
            .into_result()
            .unwrap();
        assert_eq!(r.actual_length, 1);
        assert!(h.leds().caps_lock());
        assert!(!h.leds().num_lock());
        // GET_REPORT(Output) and GET_REPORT(Input).
        let r = run([0xa1, 0x01, 0x00, 0x02, 0x00, 0x00, 0x01, 0x00], &[])
            .into_result()
            .unwrap();
        assert_eq!(r.data, [0x02]);
        let r = run([0xa1, 0x01, 0x00, 0x01, 0x00, 0x00, 0x08, 0x00], &[])
            .into_result()
            .unwrap();
        assert_eq!(r.data, [0; 8]);
        // GET_REPORT(Feature): none. SET_REPORT with no data: stall.
        let r = run([0xa1, 0x01, 0x00, 0x03, 0x00, 0x00, 0x08, 0x00], &[]);
        assert_eq!(r, crate::Completion::failed(TransferError::Stall));
        let r = run([0x21, 0x09, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00], &[]);
        assert_eq!(r, crate::Completion::failed(TransferError::Stall));
        // Idle: 500 ms by default, then SET_IDLE(0).
        let r = run([0xa1, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00], &[])
            .into_result()
            .unwrap();
        assert_eq!(r.data, [125]);
        run([0x21, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00], &[])
            .into_result()
            .unwrap();
        let r = run([0xa1, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00], &[])
            .into_result()
            .unwrap();
        assert_eq!(r.data, [0]);
        // Protocol: report, then boot.
        let r = run([0xa1, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00], &[])
            .into_result()
            .unwrap();
        assert_eq!(r.data, [1]);
        run([0x21, 0x0b, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00], &[])
            .into_result()
            .unwrap();
        let r = run([0xa1, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00], &[])
            .into_result()
            .unwrap();
        assert_eq!(r.data, [0]);
        // Requests to interface 1 (which does not exist) stall.
        let r = run([0xa1, 0x03, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00], &[]);
        assert_eq!(r, crate::Completion::failed(TransferError::Stall));
        // SET_CONFIGURATION resets protocol, idle and LEDs.
        run([0x00, 0x09, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00], &[])
            .into_result()
            .unwrap();
        let r = run([0xa1, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00], &[])
            .into_result()
            .unwrap();
        assert_eq!(r.data, [1]);
        assert_eq!(h.leds(), Leds(0));
        // Standard requests still reach the shared handler.
        let r = run([0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 0x12, 0x00], &[])
            .into_result()
            .unwrap();
        assert_eq!(r.data.len(), 18);
    }

    #[tokio::test]
    async fn pending_interrupt_in_completes_when_a_key_is_typed() {
        let (kb, h) = Keyboard::new();
        let mut urb = kb.submit(urb_in(1, 8));
        assert!(poll_once(&mut urb).await.is_none(), "no key yet: pends");
        assert!(poll_once(&mut urb).await.is_none(), "still pends");
        h.type_text("hi").await.unwrap();
        let c = urb.await.into_result().unwrap();
        assert_eq!(c.data, [0, 0, 0x0b, 0, 0, 0, 0, 0]); // h
        assert_eq!(c.actual_length, 8);
        let mut rest = vec![];
        for _ in 0..3 {
            rest.push(kb.submit(urb_in(1, 64)).await.into_result().unwrap().data);
        }
        assert_eq!(rest[1], [0, 0, 0x0c, 0, 0, 0, 0, 0]); // i
        assert_eq!(rest[2], [0; 8]);
        h.drained().await.unwrap();
        // GET_REPORT(Input) tells what the host saw last.
        assert_eq!(kb.device_current(), KeyboardReport::RELEASED);
    }

    #[tokio::test(start_paused = true)]
    async fn reports_are_at_least_one_polling_interval_apart() {
        let (kb, h) = Keyboard::new();
        h.type_text("ab").await.unwrap();
        let first = kb.submit(urb_in(1, 8)).await.into_result().unwrap();
        assert_eq!(first.data, [0, 0, 0x04, 0, 0, 0, 0, 0]); // a
        let mut second = kb.submit(urb_in(1, 8));
        assert!(poll_once(&mut second).await.is_none(), "too soon after 'a'");
        tokio::time::advance(REPORT_INTERVAL - Duration::from_millis(1)).await;
        assert!(poll_once(&mut second).await.is_none(), "still too soon");
        assert_eq!(h.queued(), 3, "the waiting URB holds no report");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(second.await.into_result().unwrap().data, [0; 8]);
    }

    #[tokio::test]
    async fn detach_drops_input_queued_for_the_old_client() {
        let (kb, h) = Keyboard::new();
        h.type_text("abc").await.unwrap();
        assert_eq!(h.queued(), 6);
        kb.detached();
        assert_eq!(h.queued(), 0);
        h.drained().await.unwrap();
        h.type_text("d").await.unwrap();
        let c = kb.submit(urb_in(1, 8)).await.into_result().unwrap();
        assert_eq!(c.data, [0, 0, 0x07, 0, 0, 0, 0, 0]); // d, not a
    }

    #[tokio::test]
    async fn dropping_a_pending_urb_loses_no_report() {
        let (kb, h) = Keyboard::new();
        // Dropped while pending, before any input.
        let mut urb = kb.submit(urb_in(1, 8));
        assert!(poll_once(&mut urb).await.is_none());
        drop(urb);
        // Dropped after being woken by input but before being polled again.
        let mut urb = kb.submit(urb_in(1, 8));
        assert!(poll_once(&mut urb).await.is_none());
        h.press(key::ENTER, Modifiers::LEFT_CTRL).await.unwrap();
        drop(urb);
        // Dropped without ever being polled.
        drop(kb.submit(urb_in(1, 8)));
        assert_eq!(h.queued(), 2);
        let c = kb.submit(urb_in(1, 8)).await.into_result().unwrap();
        assert_eq!(c.data, [0x01, 0, 0x28, 0, 0, 0, 0, 0]);
        let c = kb.submit(urb_in(1, 8)).await.into_result().unwrap();
        assert_eq!(c.data, [0; 8]);
    }

    #[tokio::test]
    async fn full_queue_waits_for_the_host() {
        let (kb, h) = Keyboard::new();
        let text = "a".repeat(QUEUE_CAPACITY / 2);
        h.try_type_text(&text).unwrap();
        assert_eq!(h.queued(), QUEUE_CAPACITY);
        assert_eq!(h.try_type_text("b"), Err(InputError::QueueFull));
        // The queue is bounded even for one long text.
        let (_kb2, h2) = Keyboard::new();
        let long = "x".repeat(QUEUE_CAPACITY / 2 + 1);
        assert_eq!(h2.try_type_text(&long), Err(InputError::QueueFull));
        assert_eq!(h2.queued(), 0);
        assert_eq!(
            h.try_press(key::A, Modifiers::NONE),
            Err(InputError::QueueFull)
        );
        let mut typing = Box::pin(h.type_text("bc"));
        assert!(poll_once(&mut typing).await.is_none(), "waits for room");
        // The host takes one report: still no room for a press + release.
        kb.submit(urb_in(1, 8)).await.into_result().unwrap();
        assert!(poll_once(&mut typing).await.is_none());
        kb.submit(urb_in(1, 8)).await.into_result().unwrap();
        // Room for 'b' but not yet for 'c'.
        assert!(poll_once(&mut typing).await.is_none());
        assert_eq!(h.queued(), QUEUE_CAPACITY);
        for _ in 0..2 {
            kb.submit(urb_in(1, 8)).await.into_result().unwrap();
        }
        typing.await.unwrap();
        assert_eq!(h.queued(), QUEUE_CAPACITY);
    }

    #[test]
    fn handle_futures_can_be_spawned() {
        fn assert_send<T: Send>(_: &T) {}
        let (kb, h) = Keyboard::new();
        assert_send(&h.type_text("x"));
        assert_send(&h.press(key::A, Modifiers::NONE));
        assert_send(&h.wait_for_leds(|_| true));
        assert_send(&h.drained());
        assert_send(&kb.submit(urb_in(1, 8)));
    }

    #[tokio::test]
    async fn handles_fail_once_the_device_is_gone() {
        let (kb, h) = Keyboard::new();
        let text = "a".repeat(QUEUE_CAPACITY / 2 + 1);
        let mut typing = Box::pin(h.type_text(&text));
        assert!(poll_once(&mut typing).await.is_none());
        drop(kb);
        assert_eq!(typing.await, Err(InputError::DeviceGone));
        assert_eq!(
            h.try_press(key::A, Modifiers::NONE),
            Err(InputError::DeviceGone)
        );
    }

    #[tokio::test]
    async fn leds_can_be_awaited() {
        let (kb, h) = Keyboard::new();
        let mut waiting = Box::pin(h.wait_for_leds(Leds::caps_lock));
        assert!(poll_once(&mut waiting).await.is_none());
        kb.submit(control(
            [0x21, 0x09, 0x00, 0x02, 0x00, 0x00, 0x01, 0x00],
            &[0x03],
        ))
        .await
        .into_result()
        .unwrap();
        let leds = waiting.await.unwrap();
        assert!(leds.caps_lock() && leds.num_lock());
    }

    #[tokio::test]
    async fn raw_keycodes_are_checked_and_short_urbs_overflow() {
        let (kb, h) = Keyboard::new();
        assert_eq!(
            h.press(0x66, Modifiers::NONE).await,
            Err(InputError::InvalidKeyCode(0x66))
        );
        assert_eq!(
            h.press(0, Modifiers::NONE).await,
            Err(InputError::InvalidKeyCode(0))
        );
        h.send(KeyboardReport::key(Modifiers::NONE, key::F1))
            .await
            .unwrap();
        assert_eq!(
            kb.submit(urb_in(1, 4)).await,
            crate::Completion::failed(TransferError::Overflow)
        );
        // Wrong endpoints stall.
        assert_eq!(
            kb.submit(urb_in(2, 8)).await,
            crate::Completion::failed(TransferError::Stall)
        );
    }

    impl Keyboard {
        fn device_current(&self) -> KeyboardReport {
            self.device.shared().lock().function.current
        }
    }
}
