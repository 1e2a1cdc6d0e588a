//! The text vhci-hcd shows in its `status` attributes and the records the usbip tool keeps
//! beside them: parsing and choosing a port, without touching the system.
//!
//! A status table looks like this (one per controller, `status`, `status.1`, ...):
//!
//! ```text
//! hub port sta spd dev      sockfd local_busid
//! hs  0000 006 003 00010003 000003 3-1
//! hs  0001 004 000 00000000 000000 0-0
//! ss  0015 004 000 00000000 000000 0-0
//! ```

use std::fmt;

/// Port status `VDEV_ST_NULL`: free.
const STATUS_FREE: u32 = 4;
/// Port status `VDEV_ST_NOTASSIGNED`: taken by an attach the kernel has not finished.
const STATUS_NOT_ASSIGNED: u32 = 5;

/// Which root hub of a controller a port is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hub {
    /// The USB 2 hub: low, full and high speed devices.
    High,
    /// The USB 3 hub: SuperSpeed devices.
    Super,
}

/// One port of a vhci-hcd controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The hub it is on.
    pub hub: Hub,
    /// The global port number, as `attach` and `detach` take it.
    pub number: u32,
    /// The kernel's `VDEV_ST_*` status.
    pub status: u32,
    /// The attached device's speed (Linux `USB_SPEED_*`), 0 when free.
    pub speed: u32,
    /// The attached device's id on its server (`busnum << 16 | devnum`).
    pub devid: u32,
    /// The local bus id the device got (`3-1`), `0-0` when free.
    pub local_busid: String,
}

impl Port {
    /// Whether no device is attached.
    pub fn is_free(&self) -> bool {
        self.status == STATUS_FREE
    }

    /// Whether an attach has taken the port and the kernel is still setting it up.
    pub fn is_being_assigned(&self) -> bool {
        self.status == STATUS_NOT_ASSIGNED
    }
}

/// A status table that is not what vhci-hcd writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("vhci-hcd status line {line}: {reason}: {text:?}")]
pub struct StatusError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: &'static str,
    /// The line.
    pub text: String,
}

/// Parses one status table. The header line is skipped; blank lines are ignored.
pub fn parse_status(text: &str) -> Result<Vec<Port>, StatusError> {
    let mut ports = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() || fields[0] == "hub" {
            continue;
        }
        let error = |reason| StatusError {
            line: index + 1,
            reason,
            text: line.to_owned(),
        };
        let [hub, number, status, speed, devid, _sockfd, local_busid] = fields[..] else {
            return Err(error("expected 7 fields"));
        };
        let hub = match hub {
            "hs" => Hub::High,
            "ss" => Hub::Super,
            _ => return Err(error("unknown hub")),
        };
        let decimal = |s: &str| s.parse::<u32>().map_err(|_| error("not a number"));
        ports.push(Port {
            hub,
            number: decimal(number)?,
            status: decimal(status)?,
            speed: decimal(speed)?,
            devid: u32::from_str_radix(devid, 16).map_err(|_| error("devid is not hex"))?,
            local_busid: local_busid.to_owned(),
        });
    }
    Ok(ports)
}

/// The first free port for a device of `speed` (Linux `USB_SPEED_*`): SuperSpeed devices
/// go on a USB 3 hub, all others on a USB 2 hub.
pub fn free_port(ports: &[Port], speed: u32) -> Option<u32> {
    let hub = if speed >= SPEED_SUPER {
        Hub::Super
    } else {
        Hub::High
    };
    ports
        .iter()
        .find(|p| p.hub == hub && p.is_free())
        .map(|p| p.number)
}

/// Linux `USB_SPEED_SUPER`.
const SPEED_SUPER: u32 = 5;

/// A short name for a Linux `USB_SPEED_*` value.
pub fn speed_name(speed: u32) -> &'static str {
    match speed {
        1 => "low",
        2 => "full",
        3 => "high",
        4 => "wireless",
        5 => "super",
        6 => "super-plus",
        _ => "unknown",
    }
}

/// Where an attached device came from: the record the usbip tool writes to
/// `/var/run/vhci_hcd/portN` as `HOST SERVICE BUSID`, so `usbip port` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Server host, as given.
    pub host: String,
    /// Server port.
    pub service: String,
    /// The device's bus id on the server.
    pub busid: String,
}

impl Record {
    /// Parses a record file's text; `None` if it is not three words.
    pub fn parse(text: &str) -> Option<Record> {
        let mut words = text.split_whitespace();
        let record = Record {
            host: words.next()?.to_owned(),
            service: words.next()?.to_owned(),
            busid: words.next()?.to_owned(),
        };
        words.next().is_none().then_some(record)
    }
}

impl fmt::Display for Record {
    /// The file's text: one line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} {} {}", self.host, self.service, self.busid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "hub port sta spd dev      sockfd local_busid
hs  0000 006 003 00010003 000003 3-1
hs  0001 004 000 00000000 000000 0-0
ss  0015 004 000 00000000 000000 0-0
ss  0016 006 005 00020002 000005 4-2
";

    #[test]
    fn parses_what_vhci_hcd_writes() {
        let ports = parse_status(TABLE).unwrap();
        assert_eq!(ports.len(), 4);
        assert_eq!(
            ports[0],
            Port {
                hub: Hub::High,
                number: 0,
                status: 6,
                speed: 3,
                devid: 0x0001_0003,
                local_busid: "3-1".into(),
            }
        );
        assert!(!ports[0].is_free() && ports[1].is_free());
        assert_eq!(ports[3].hub, Hub::Super);
    }

    #[test]
    fn free_ports_follow_the_speed() {
        let ports = parse_status(TABLE).unwrap();
        assert_eq!(free_port(&ports, 3), Some(1));
        assert_eq!(free_port(&ports, 1), Some(1));
        assert_eq!(free_port(&ports, 5), Some(15));
        assert_eq!(free_port(&ports[..1], 3), None);
    }

    #[test]
    fn malformed_tables_are_errors_that_name_the_line() {
        let e = parse_status("hub port\nhs 0000 004").unwrap_err();
        assert_eq!((e.line, e.reason), (2, "expected 7 fields"));
        let e = parse_status("xs 0000 004 000 00000000 000000 0-0").unwrap_err();
        assert_eq!(e.reason, "unknown hub");
        let e = parse_status("hs 00x0 004 000 00000000 000000 0-0").unwrap_err();
        assert_eq!(e.reason, "not a number");
        let e = parse_status("hs 0000 004 000 0000zz00 000000 0-0").unwrap_err();
        assert_eq!(e.reason, "devid is not hex");
    }

    #[test]
    fn records_round_trip_as_the_usbip_tool_writes_them() {
        let r = Record {
            host: "10.0.2.100".into(),
            service: "3240".into(),
            busid: "1-3".into(),
        };
        assert_eq!(r.to_string(), "10.0.2.100 3240 1-3\n");
        assert_eq!(Record::parse(&r.to_string()), Some(r));
        assert_eq!(Record::parse("a b"), None);
        assert_eq!(Record::parse("a b c d"), None);
    }
}
