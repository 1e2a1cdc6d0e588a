//! The Linux HCI socket calls the host link needs and no crate offers: naming a host
//! adapter (`HCIGETDEVINFO`) and the two HCI commands a raw socket runs beside bluetoothd
//! (Inquiry and Remote Name Request, what `hcitool scan` and `hcitool name` do).
//!
//! The only module of this crate with `unsafe`: each block is one system call on a descriptor
//! this module owns, or on a `#[repr(C)]` struct laid out as the kernel's.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use periwire_hci::wire::ClassOfDevice;
use periwire_hci::BdAddr;
use tokio::io::unix::AsyncFd;

const BTPROTO_HCI: libc::c_int = 1;
const HCI_CHANNEL_RAW: u16 = 0;
const SOL_HCI: libc::c_int = 0;
const HCI_FILTER: libc::c_int = 2;
/// `_IOR('H', 211, int)`.
const HCIGETDEVINFO: libc::c_ulong = 0x8004_48d3;
/// `HCI_MAX_DEV` in the kernel's `hci_sock.h`: indexes above are not looked at.
const MAX_DEVICES: u16 = 16;

const HCI_COMMAND_PKT: u8 = 0x01;
const HCI_EVENT_PKT: u8 = 0x04;

const EVT_INQUIRY_COMPLETE: u8 = 0x01;
const EVT_INQUIRY_RESULT: u8 = 0x02;
const EVT_REMOTE_NAME_COMPLETE: u8 = 0x07;
const EVT_COMMAND_COMPLETE: u8 = 0x0e;
const EVT_COMMAND_STATUS: u8 = 0x0f;
const EVT_INQUIRY_RESULT_RSSI: u8 = 0x22;
const EVT_EXTENDED_INQUIRY_RESULT: u8 = 0x2f;

const OP_INQUIRY: u16 = 0x0401;
const OP_REMOTE_NAME_REQUEST: u16 = 0x0419;

/// `struct sockaddr_hci`.
#[repr(C)]
struct SockaddrHci {
    family: libc::sa_family_t,
    dev: u16,
    channel: u16,
}

/// `struct hci_filter`.
#[repr(C)]
struct HciFilter {
    type_mask: u32,
    event_mask: [u32; 2],
    opcode: u16,
}

/// `struct hci_dev_info` (with its `struct hci_dev_stats`).
#[repr(C)]
struct HciDevInfo {
    dev_id: u16,
    name: [u8; 8],
    bdaddr: [u8; 6],
    flags: u32,
    dev_type: u8,
    features: [u8; 8],
    pkt_type: u32,
    link_policy: u32,
    link_mode: u32,
    acl_mtu: u16,
    acl_pkts: u16,
    sco_mtu: u16,
    sco_pkts: u16,
    stats: [u32; 10],
}

/// One Bluetooth controller of the host kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostController {
    /// Its index, the N of `hciN`.
    pub index: u16,
    /// Its BD_ADDR.
    pub address: BdAddr,
    /// Whether it is up (`HCI_UP`).
    pub up: bool,
}

fn hci_socket(nonblocking: bool) -> io::Result<OwnedFd> {
    let mut ty = libc::SOCK_RAW | libc::SOCK_CLOEXEC;
    if nonblocking {
        ty |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_BLUETOOTH, ty, BTPROTO_HCI) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A non-blocking HCI socket bound to controller `dev` (or HCI_DEV_NONE) on `channel`.
fn bound_hci_socket(dev: u16, channel: u16) -> io::Result<OwnedFd> {
    let fd = hci_socket(true)?;
    let addr = SockaddrHci {
        family: libc::AF_BLUETOOTH as libc::sa_family_t,
        dev,
        channel,
    };
    // SAFETY: `addr` is a valid `struct sockaddr_hci` and its true size is passed.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const SockaddrHci as *const libc::sockaddr,
            std::mem::size_of::<SockaddrHci>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The host controller `hci{index}`, or `None` when there is none.
pub fn controller(index: u16) -> io::Result<Option<HostController>> {
    let fd = hci_socket(false)?;
    // SAFETY: HciDevInfo is plain integers; all-zero is a valid value.
    let mut info: HciDevInfo = unsafe { std::mem::zeroed() };
    info.dev_id = index;
    // SAFETY: HCIGETDEVINFO reads `dev_id` and fills in the struct it is given, whose layout
    // is the kernel's `struct hci_dev_info`; `info` outlives the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), HCIGETDEVINFO, &mut info as *mut HciDevInfo) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODEV) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(HostController {
        index,
        address: BdAddr(info.bdaddr),
        up: info.flags & 1 != 0,
    }))
}

/// Every controller of the host kernel.
pub fn controllers() -> io::Result<Vec<HostController>> {
    let mut out = Vec::new();
    for index in 0..MAX_DEVICES {
        if let Some(c) = controller(index)? {
            out.push(c);
        }
    }
    Ok(out)
}

/// Asks for a receive buffer of `bytes` on socket `fd`: beyond `net.core.rmem_max` when the
/// process may (`SO_RCVBUFFORCE`, CAP_NET_ADMIN), else up to that limit.
pub fn set_receive_buffer(fd: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |option| {
        // SAFETY: `value` is a c_int that outlives the call and its true size is passed.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                &value as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    set(libc::SO_RCVBUFFORCE).or_else(|_| set(libc::SO_RCVBUF))
}

/// Registers an open (non-blocking) file with the runtime's reactor.
pub fn async_file(file: std::fs::File) -> io::Result<AsyncFd<std::fs::File>> {
    // SAFETY: the AsyncFd takes ownership of `file`, whose descriptor therefore stays open
    // and the same for the AsyncFd's whole life.
    unsafe { AsyncFd::register(file) }.map_err(io::Error::from)
}

/// A raw HCI socket bound to one controller, seeing every event it reports.
struct RawHci {
    fd: AsyncFd<OwnedFd>,
}

impl RawHci {
    fn open(index: u16) -> io::Result<Self> {
        let fd = bound_hci_socket(index, HCI_CHANNEL_RAW)?;
        let filter = HciFilter {
            type_mask: 1 << HCI_EVENT_PKT,
            event_mask: [u32::MAX, u32::MAX],
            opcode: 0,
        };
        // SAFETY: `filter` is a valid `struct hci_filter` and its true size is passed.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                SOL_HCI,
                HCI_FILTER,
                &filter as *const HciFilter as *const libc::c_void,
                std::mem::size_of::<HciFilter>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is an open descriptor the AsyncFd takes ownership of, so it stays open
        // and the same for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(Self { fd })
    }

    async fn command(&self, opcode: u16, params: &[u8]) -> io::Result<()> {
        let mut packet = vec![HCI_COMMAND_PKT];
        packet.extend_from_slice(&opcode.to_le_bytes());
        packet.push(u8::try_from(params.len()).map_err(|_| io::ErrorKind::InvalidInput)?);
        packet.extend_from_slice(params);
        self.write(&packet).await
    }

    async fn write(&self, packet: &[u8]) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            let r = guard.try_io(|fd| {
                // SAFETY: `packet` is valid for `packet.len()` bytes for the whole call.
                let n = unsafe {
                    libc::write(
                        fd.as_raw_fd(),
                        packet.as_ptr() as *const libc::c_void,
                        packet.len(),
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            if let Ok(r) = r {
                return r;
            }
        }
    }

    async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            let r = guard.try_io(|fd| {
                // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call.
                let n = unsafe {
                    libc::read(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                    )
                };
                usize::try_from(n).map_err(|_| io::Error::last_os_error())
            });
            if let Ok(n) = r {
                return n;
            }
        }
    }

    /// The next event: its code and parameters.
    async fn event(&self) -> io::Result<(u8, Vec<u8>)> {
        let mut buf = [0u8; 260];
        loop {
            let n = self.read(&mut buf).await?;
            // [type, code, length, parameters...]; anything shorter or cut is skipped.
            if let [HCI_EVENT_PKT, code, len, params @ ..] = &buf[..n] {
                if let Some(params) = params.get(..usize::from(*len)) {
                    return Ok((*code, params.to_vec()));
                }
            }
        }
    }

    /// Waits for the Command Status (or Complete) of `opcode`: `Ok` when it was started.
    async fn started(&self, opcode: u16) -> io::Result<()> {
        loop {
            let (code, p) = self.event().await?;
            let status = match (code, p.as_slice()) {
                (EVT_COMMAND_STATUS, [status, _, lo, hi, ..])
                    if [*lo, *hi] == opcode.to_le_bytes() =>
                {
                    *status
                }
                (EVT_COMMAND_COMPLETE, [_, lo, hi, status, ..])
                    if [*lo, *hi] == opcode.to_le_bytes() =>
                {
                    *status
                }
                _ => continue,
            };
            return if status == 0 {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "HCI command {opcode:#06x} refused with status {status:#04x}"
                )))
            };
        }
    }
}

const HCI_DEV_NONE: u16 = 0xffff;
const HCI_CHANNEL_CONTROL: u16 = 3;
const MGMT_OP_PAIR_DEVICE: u16 = 0x0019;
const MGMT_EV_CMD_COMPLETE: u16 = 0x0001;
const MGMT_EV_CMD_STATUS: u16 = 0x0002;
const MGMT_STATUS_ALREADY_PAIRED: u8 = 0x13;
/// NoInputNoOutput: the host pairs "Just Works" (Core Vol 3, Part C, 5.2.2.6).
const IO_CAP_NO_INPUT_NO_OUTPUT: u8 = 0x03;

/// A socket on the kernel's management interface (every controller's events).
fn management_socket() -> io::Result<RawHci> {
    let fd = bound_hci_socket(HCI_DEV_NONE, HCI_CHANNEL_CONTROL)?;
    // SAFETY: as in RawHci::open: the AsyncFd owns the open descriptor for its whole life.
    let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
    Ok(RawHci { fd })
}

/// How a bonding through the host's management interface ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bonding {
    /// Bonded now, or bonded before.
    Bonded,
    /// Refused or failed, with the management status.
    Failed(u8),
}

/// Bonds host controller `index` with BR/EDR device `remote` through the kernel's management
/// interface (what bluetoothd's Device1.Pair does: dedicated bonding, so the key is kept), as
/// NoInputNoOutput. Needs CAP_NET_ADMIN.
pub async fn bond(index: u16, remote: BdAddr) -> io::Result<Bonding> {
    let hci = management_socket()?;
    // Header: opcode, controller index, parameter length; then address, BR/EDR, IO capability.
    let mut packet = Vec::with_capacity(14);
    packet.extend_from_slice(&MGMT_OP_PAIR_DEVICE.to_le_bytes());
    packet.extend_from_slice(&index.to_le_bytes());
    packet.extend_from_slice(&8u16.to_le_bytes());
    packet.extend_from_slice(&remote.0);
    packet.extend_from_slice(&[0x00, IO_CAP_NO_INPUT_NO_OUTPUT]);
    hci.write(&packet).await?;
    let mut buf = [0u8; 512];
    loop {
        let n = hci.read(&mut buf).await?;
        let Some((header, params)) = buf[..n].split_at_checked(6) else {
            continue;
        };
        let event = u16::from_le_bytes([header[0], header[1]]);
        let ev_index = u16::from_le_bytes([header[2], header[3]]);
        if ev_index != index || !matches!(event, MGMT_EV_CMD_COMPLETE | MGMT_EV_CMD_STATUS) {
            continue;
        }
        let [lo, hi, status, ..] = *params else {
            continue;
        };
        if u16::from_le_bytes([lo, hi]) != MGMT_OP_PAIR_DEVICE {
            continue;
        }
        return Ok(match status {
            0 | MGMT_STATUS_ALREADY_PAIRED => Bonding::Bonded,
            other => Bonding::Failed(other),
        });
    }
}

const MGMT_OP_START_DISCOVERY: u16 = 0x0023;
const MGMT_OP_STOP_DISCOVERY: u16 = 0x0024;
const MGMT_EV_DEVICE_FOUND: u16 = 0x0012;
/// The LE public and random address types of Start Discovery.
const MGMT_DISCOVERY_LE: u8 = 0x06;

/// One LE advertiser the host found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeAdvertiser {
    /// Its address (HCI octet order).
    pub address: BdAddr,
    /// 0 public, 1 random.
    pub address_type: u8,
    /// Its advertising data and scan response, as AD structures.
    pub data: Vec<u8>,
}

/// Scans for LE advertisers on host controller `index` for about `length`, through the
/// kernel's management interface (as bluetoothd does; the kernel runs the scan and reports
/// each device with its merged advertising data), handing each to `found` as it comes. When
/// the host is already discovering (bluetoothd), its results are taken instead. Needs
/// CAP_NET_ADMIN.
pub async fn le_scan(
    index: u16,
    length: Duration,
    mut found: impl FnMut(LeAdvertiser),
) -> io::Result<()> {
    let mgmt = management_socket()?;
    let command = |opcode: u16| {
        let mut packet = Vec::with_capacity(7);
        packet.extend_from_slice(&opcode.to_le_bytes());
        packet.extend_from_slice(&index.to_le_bytes());
        packet.extend_from_slice(&1u16.to_le_bytes());
        packet.push(MGMT_DISCOVERY_LE);
        packet
    };
    mgmt.write(&command(MGMT_OP_START_DISCOVERY)).await?;
    let deadline = tokio::time::Instant::now() + length;
    let mut started = false;
    let mut buf = [0u8; 1024];
    loop {
        let Ok(n) = tokio::time::timeout_at(deadline, mgmt.read(&mut buf)).await else {
            break;
        };
        let n = n?;
        let Some((header, params)) = buf[..n].split_at_checked(6) else {
            continue;
        };
        let event = u16::from_le_bytes([header[0], header[1]]);
        if u16::from_le_bytes([header[2], header[3]]) != index {
            continue;
        }
        match event {
            MGMT_EV_CMD_COMPLETE | MGMT_EV_CMD_STATUS => {
                if let [lo, hi, status, ..] = *params {
                    if u16::from_le_bytes([lo, hi]) == MGMT_OP_START_DISCOVERY {
                        started = status == 0;
                        if !started {
                            tracing::debug!(
                                status,
                                "host LE discovery not started (already discovering?)"
                            );
                        }
                    }
                }
            }
            MGMT_EV_DEVICE_FOUND => {
                // Address, address type (1 LE public, 2 LE random), RSSI, flags (4), EIR
                // length (2), EIR.
                let Some((fixed, eir)) = params.split_at_checked(14) else {
                    continue;
                };
                let kind = fixed[6];
                let len = usize::from(u16::from_le_bytes([fixed[12], fixed[13]]));
                let (Some(data), 1 | 2) = (eir.get(..len), kind) else {
                    continue;
                };
                let mut address = [0u8; 6];
                address.copy_from_slice(&fixed[..6]);
                found(LeAdvertiser {
                    address: BdAddr(address),
                    address_type: kind - 1,
                    data: data.to_vec(),
                });
            }
            _ => {}
        }
    }
    if started {
        mgmt.write(&command(MGMT_OP_STOP_DISCOVERY)).await?;
    }
    Ok(())
}

/// One device an inquiry found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InquiryResult {
    /// Its address.
    pub address: BdAddr,
    /// Its class of device.
    pub class_of_device: ClassOfDevice,
    /// Its name, when its extended inquiry response carried one.
    pub name: Option<String>,
}

/// Runs a general inquiry of about `length` on host controller `index`, handing each device
/// found to `found` as it comes.
pub async fn inquiry(
    index: u16,
    length: Duration,
    mut found: impl FnMut(InquiryResult),
) -> io::Result<()> {
    let hci = RawHci::open(index)?;
    // GIAC (0x9e8b33), Inquiry_Length in units of 1.28 s, unlimited responses.
    let units = (length.as_millis() / 1280).clamp(1, 0x30) as u8;
    hci.command(OP_INQUIRY, &[0x33, 0x8b, 0x9e, units, 0])
        .await?;
    hci.started(OP_INQUIRY).await?;
    // The controller ends the inquiry itself; the margin covers a lost Inquiry Complete.
    let deadline = tokio::time::Instant::now() + length + Duration::from_secs(5);
    loop {
        let Ok(event) = tokio::time::timeout_at(deadline, hci.event()).await else {
            return Ok(());
        };
        let (code, p) = event?;
        match code {
            EVT_INQUIRY_COMPLETE => return Ok(()),
            EVT_INQUIRY_RESULT | EVT_INQUIRY_RESULT_RSSI => {
                for r in parse_inquiry_results(code, &p) {
                    found(r);
                }
            }
            EVT_EXTENDED_INQUIRY_RESULT => {
                if let Some(r) = parse_extended_inquiry_result(&p) {
                    found(r);
                }
            }
            _ => {}
        }
    }
}

/// Asks host controller `index` for the name of `remote`; `None` when it did not answer.
pub async fn remote_name(
    index: u16,
    remote: BdAddr,
    timeout: Duration,
) -> io::Result<Option<String>> {
    let hci = RawHci::open(index)?;
    let mut params = remote.0.to_vec();
    // Page Scan Repetition Mode R2, reserved, no clock offset: what a host without an
    // inquiry result at hand sends.
    params.extend_from_slice(&[0x02, 0x00, 0x00, 0x00]);
    hci.command(OP_REMOTE_NAME_REQUEST, &params).await?;
    hci.started(OP_REMOTE_NAME_REQUEST).await?;
    let wait = async {
        loop {
            let (code, p) = hci.event().await?;
            if code != EVT_REMOTE_NAME_COMPLETE {
                continue;
            }
            let (Some(&status), Some(addr)) = (p.first(), p.get(1..7)) else {
                continue;
            };
            if addr != remote.0 {
                continue;
            }
            if status != 0 {
                return Ok(None);
            }
            return Ok(p.get(7..).map(utf8_until_nul));
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(r) => r,
        Err(_) => Ok(None),
    }
}

fn utf8_until_nul(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn class_of(b: &[u8]) -> ClassOfDevice {
    ClassOfDevice(u32::from_le_bytes([b[0], b[1], b[2], 0]))
}

/// Inquiry Result (0x02) and Inquiry Result with RSSI (0x22): per field, one array over all
/// responses (Vol 4, Part E, 7.7.2 and 7.7.33).
fn parse_inquiry_results(code: u8, p: &[u8]) -> Vec<InquiryResult> {
    let Some((&n, rest)) = p.split_first() else {
        return Vec::new();
    };
    let n = usize::from(n);
    // Address, page scan repetition mode, reserved (2 octets, 1 with RSSI), class, clock
    // offset, and the RSSI.
    let reserved = if code == EVT_INQUIRY_RESULT { 2 } else { 1 };
    let rssi = usize::from(code != EVT_INQUIRY_RESULT);
    let per = 6 + 1 + reserved + 3 + 2 + rssi;
    if rest.len() < n * per {
        return Vec::new();
    }
    let class_at = n * (6 + 1 + reserved);
    (0..n)
        .map(|i| {
            let mut a = [0u8; 6];
            a.copy_from_slice(&rest[i * 6..i * 6 + 6]);
            InquiryResult {
                address: BdAddr(a),
                class_of_device: class_of(&rest[class_at + i * 3..]),
                name: None,
            }
        })
        .collect()
}

/// Extended Inquiry Result (0x2f): one response with its EIR (Vol 4, Part E, 7.7.38).
fn parse_extended_inquiry_result(p: &[u8]) -> Option<InquiryResult> {
    // Num_Responses (always 1), address, page scan repetition mode, reserved, class, clock
    // offset, RSSI, then 240 octets of EIR.
    let addr = p.get(1..7)?;
    let class = p.get(9..12)?;
    let eir = p.get(15..).unwrap_or_default();
    let mut a = [0u8; 6];
    a.copy_from_slice(addr);
    Some(InquiryResult {
        address: BdAddr(a),
        class_of_device: class_of(class),
        name: eir_name(eir),
    })
}

/// The Complete (0x09) or else Shortened (0x08) Local Name of an EIR (Core Supplement,
/// Part A, 1.2).
pub(crate) fn eir_name(mut eir: &[u8]) -> Option<String> {
    let mut short = None;
    while let Some((&len, rest)) = eir.split_first() {
        let len = usize::from(len);
        if len == 0 || rest.len() < len {
            break;
        }
        let (field, next) = rest.split_at(len);
        match field.split_first() {
            Some((0x09, name)) => return Some(utf8_until_nul(name)),
            Some((0x08, name)) => short = Some(utf8_until_nul(name)),
            _ => {}
        }
        eir = next;
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eir_names_complete_over_shortened() {
        let eir = [3, 0x08, b'a', b'b', 4, 0x09, b'x', b'y', b'z', 0, 0];
        assert_eq!(eir_name(&eir).as_deref(), Some("xyz"));
        assert_eq!(eir_name(&eir[..4]).as_deref(), Some("ab"));
        // A field longer than what is left ends the walk.
        assert_eq!(eir_name(&[9, 0x09, b'q']), None);
    }

    #[test]
    fn inquiry_results_read_per_field_arrays() {
        // Two responses, no RSSI: addresses, modes, 2x2 reserved, classes, clock offsets.
        let mut p = vec![2];
        p.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        p.extend_from_slice(&[1, 1, 0, 0, 0, 0]);
        p.extend_from_slice(&[0x0c, 0x01, 0x1a, 0x04, 0x05, 0x24]);
        p.extend_from_slice(&[0, 0, 0, 0]);
        let r = parse_inquiry_results(EVT_INQUIRY_RESULT, &p);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].address, BdAddr([7, 8, 9, 10, 11, 12]));
        assert_eq!(r[0].class_of_device, ClassOfDevice(0x1a010c));
        assert_eq!(r[1].class_of_device, ClassOfDevice(0x240504));
        assert!(parse_inquiry_results(EVT_INQUIRY_RESULT, &p[..20]).is_empty());
    }
}
