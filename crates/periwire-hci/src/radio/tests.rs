//! Controllers on one radio, stepped in memory with a virtual clock (quinn's `Pair` style):
//! each test reads like the HCI trace a host would produce.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::*;
use crate::controller::supported::SUPPORTED_COMMAND_BITS;
use crate::medium::*;
use crate::wire::{self as w, HciCommand, HciEvent, LeMetaEvent};
use crate::wire::{BdAddr, ErrorCode};

/// The hosts' view: events and ACL each adapter's host received, not yet consumed.
struct Bed {
    radio: Radio,
    now: Instant,
    events: BTreeMap<AdapterId, VecDeque<HciEvent>>,
    acl: BTreeMap<AdapterId, VecDeque<Vec<u8>>>,
    /// When false, nothing is read from that adapter (a slow host).
    reading: BTreeMap<AdapterId, bool>,
}

enum Answer {
    Complete(Vec<u8>),
    Status(ErrorCode),
}

fn addr(s: &str) -> BdAddr {
    BdAddr::parse_str(s).expect("address")
}

impl Bed {
    fn new() -> Self {
        Self {
            radio: Radio::new(),
            now: Instant::now(),
            events: BTreeMap::new(),
            acl: BTreeMap::new(),
            reading: BTreeMap::new(),
        }
    }

    /// An adapter brought up the way Bumble's `Host.reset` does, with every event unmasked.
    fn adapter(&mut self, a: &str, name: &str) -> AdapterId {
        let mut config = ControllerConfig::new(addr(a));
        config.name = name.to_owned();
        let id = self.radio.add_adapter(config);
        self.reading.insert(id, true);
        self.ok(id, w::Reset {});
        self.ok(id, w::ReadLocalSupportedCommands {});
        self.ok(
            id,
            w::SetEventMask {
                event_mask: [0xff; 8],
            },
        );
        self.ok(
            id,
            w::LeSetEventMask {
                le_event_mask: [0xff; 8],
            },
        );
        id
    }

    fn drain(&mut self) {
        let ids: Vec<AdapterId> = self.radio.adapter_ids().collect();
        for id in ids {
            if !self.reading[&id] {
                continue; // a slow host: nothing is read until it catches up
            }
            while let Some(p) = self.radio.poll_to_host(id, self.now) {
                match p {
                    ToHost::Event(b) => {
                        let ev =
                            HciEvent::parse(&w::EventPacket::new_checked(&b[..]).unwrap()).unwrap();
                        self.events.entry(id).or_default().push_back(ev);
                    }
                    ToHost::Acl(b) => self.acl.entry(id).or_default().push_back(b),
                }
            }
        }
    }

    fn send(&mut self, id: AdapterId, cmd: impl Into<HciCommand>) -> Answer {
        let cmd: HciCommand = cmd.into();
        let opcode = cmd.opcode();
        self.radio
            .handle_command(id, self.now, &cmd.to_packet())
            .unwrap();
        self.drain();
        let q = self.events.entry(id).or_default();
        let pos = q
            .iter()
            .position(|e| match e {
                HciEvent::CommandComplete(c) => c.command_opcode == opcode,
                HciEvent::CommandStatus(c) => c.command_opcode == opcode,
                _ => false,
            })
            .unwrap_or_else(|| panic!("no answer to {cmd:?}: {q:?}"));
        match q.remove(pos) {
            Some(HciEvent::CommandComplete(c)) => Answer::Complete(c.return_parameters.0),
            Some(HciEvent::CommandStatus(c)) => Answer::Status(c.status),
            _ => unreachable!(),
        }
    }

    /// Sends a command and asserts success; returns the return parameters (empty for
    /// asynchronous commands).
    fn ok(&mut self, id: AdapterId, cmd: impl Into<HciCommand>) -> Vec<u8> {
        let cmd = cmd.into();
        let dbg = format!("{cmd:?}");
        match self.send(id, cmd) {
            Answer::Complete(r) => {
                assert_eq!(r.first(), Some(&0), "{dbg} failed: {r:02x?}");
                r
            }
            Answer::Status(s) => {
                assert_eq!(s, ErrorCode::Success, "{dbg} failed");
                Vec::new()
            }
        }
    }

    fn status(&mut self, id: AdapterId, cmd: impl Into<HciCommand>) -> ErrorCode {
        match self.send(id, cmd) {
            Answer::Complete(r) => ErrorCode::from_u8(r.first().copied().unwrap_or(0xff)),
            Answer::Status(s) => s,
        }
    }

    /// Takes the first pending event of `id` that `f` maps to `Some`.
    fn take<T>(&mut self, id: AdapterId, f: impl Fn(&HciEvent) -> Option<T>) -> T {
        self.drain();
        let q = self.events.entry(id).or_default();
        for i in 0..q.len() {
            if let Some(v) = f(&q[i]) {
                q.remove(i);
                return v;
            }
        }
        panic!("expected event not found; pending: {q:#?}");
    }

    fn none<T>(&mut self, id: AdapterId, f: impl Fn(&HciEvent) -> Option<T>) {
        self.drain();
        let q = self.events.entry(id).or_default();
        assert!(q.iter().all(|e| f(e).is_none()), "unexpected event: {q:#?}");
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.radio.handle_timeout(self.now);
        self.drain();
    }

    fn acl(&mut self, id: AdapterId, handle: u16, data: &[u8]) -> Result<(), RadioError> {
        let p = w::AclRepr {
            handle,
            packet_boundary: w::PacketBoundary::FirstNonFlushable,
            broadcast_flag: 0,
            data,
        }
        .to_packet();
        let r = self.radio.handle_acl(id, self.now, &p);
        self.drain();
        r
    }

    /// Connects `a` to `b` over BR/EDR; returns (handle on a, handle on b).
    fn connect_bredr(&mut self, a: AdapterId, b: AdapterId) -> (u16, u16) {
        let (aa, ba) = (self.bd(a), self.bd(b));
        self.ok(b, w::WriteScanEnable { scan_enable: 0x02 });
        self.ok(
            a,
            w::CreateConnection {
                bd_addr: ba,
                packet_type: 0xcc18,
                page_scan_repetition_mode: 1,
                reserved: 0,
                clock_offset: 0,
                allow_role_switch: 1,
            },
        );
        let req = self.take(b, |e| match e {
            HciEvent::ConnectionRequest(r) => Some(r.bd_addr),
            _ => None,
        });
        assert_eq!(req, aa);
        self.ok(
            b,
            w::AcceptConnectionRequest {
                bd_addr: aa,
                role: 0x01,
            },
        );
        let hb = self.take(b, |e| match e {
            HciEvent::ConnectionComplete(c) if c.bd_addr == aa => {
                assert_eq!(c.status, ErrorCode::Success);
                Some(c.connection_handle)
            }
            _ => None,
        });
        let ha = self.take(a, |e| match e {
            HciEvent::ConnectionComplete(c) if c.bd_addr == ba => {
                assert_eq!(c.status, ErrorCode::Success);
                Some(c.connection_handle)
            }
            _ => None,
        });
        (ha, hb)
    }

    fn bd(&self, id: AdapterId) -> BdAddr {
        self.radio.adapter(id).unwrap().bd_addr()
    }
}

fn le_meta(e: &HciEvent) -> Option<&LeMetaEvent> {
    match e {
        HciEvent::LeMeta(m) => Some(&m.event),
        _ => None,
    }
}

#[test]
fn bring_up_sequences_of_bluez_and_bumble_succeed() {
    let mut bed = Bed::new();
    let a = bed.adapter("00:11:22:33:44:55", "alpha");
    // Linux hci_sync init stages 1-4 and power on (net/bluetooth/hci_sync.c), then the rest
    // of Bumble's Host.reset and Device.power_on.
    let cmds: Vec<HciCommand> = vec![
        w::Reset {}.into(),
        w::ReadLocalSupportedFeatures {}.into(),
        w::ReadLocalVersionInformation {}.into(),
        w::ReadBdAddr {}.into(),
        w::ReadLocalSupportedCommands {}.into(),
        w::ReadBufferSize {}.into(),
        w::ReadClassOfDevice {}.into(),
        w::ReadLocalName {}.into(),
        w::ReadVoiceSetting {}.into(),
        w::ReadNumberOfSupportedIac {}.into(),
        w::ReadCurrentIacLap {}.into(),
        w::SetEventFilter {
            filter_type: 0,
            filter: w::Rest(vec![]),
        }
        .into(),
        w::WriteConnectionAcceptTimeout {
            connection_accept_timeout: 0x7d00,
        }
        .into(),
        w::LeReadBufferSize {}.into(),
        w::LeReadLocalSupportedFeatures {}.into(),
        w::LeReadSupportedStates {}.into(),
        w::WriteSimplePairingMode {
            simple_pairing_mode: 1,
        }
        .into(),
        w::WriteInquiryMode { inquiry_mode: 2 }.into(),
        w::ReadInquiryResponseTransmitPowerLevel {}.into(),
        w::ReadLocalExtendedFeatures { page_number: 1 }.into(),
        w::SetEventMask {
            event_mask: [0xff, 0xff, 0xfb, 0xff, 0x07, 0xf8, 0xbf, 0x3d],
        }
        .into(),
        w::ReadStoredLinkKey {
            bd_addr: BdAddr::ANY,
            read_all: 1,
        }
        .into(),
        w::WriteDefaultLinkPolicySettings {
            default_link_policy_settings: 0x0f,
        }
        .into(),
        w::ReadPageScanActivity {}.into(),
        w::ReadPageScanType {}.into(),
        w::LeSetEventMask {
            le_event_mask: [0x1f, 0, 0, 0, 0, 0, 0, 0],
        }
        .into(),
        w::LeReadAdvertisingPhysicalChannelTxPower {}.into(),
        w::LeReadFilterAcceptListSize {}.into(),
        w::LeClearFilterAcceptList {}.into(),
        w::WriteLeHostSupport {
            le_supported_host: 1,
            unused: 0,
        }
        .into(),
        w::DeleteStoredLinkKey {
            bd_addr: BdAddr::ANY,
            delete_all: 1,
        }
        .into(),
        w::WriteAuthenticationEnable {
            authentication_enable: 0,
        }
        .into(),
        w::WriteScanEnable { scan_enable: 0x03 }.into(),
        w::WriteClassOfDevice {
            class_of_device: w::ClassOfDevice(0x0c010c),
        }
        .into(),
        w::WriteLocalName {
            local_name: [0; 248],
        }
        .into(),
        w::WriteExtendedInquiryResponse {
            fec_required: 0,
            extended_inquiry_response: [0; 240],
        }
        .into(),
        w::WriteSecureConnectionsHostSupport {
            secure_connections_host_support: 0,
        }
        .into(),
        w::LeSetRandomAddress {
            random_address: addr("C0:11:22:33:44:55"),
        }
        .into(),
        w::LeRand {}.into(),
    ];
    for c in cmds {
        bed.ok(a, c);
    }
    let r = bed.ok(a, w::ReadBdAddr {});
    assert_eq!(
        w::ReadBdAddrReturn::parse(&r).unwrap().bd_addr,
        addr("00:11:22:33:44:55")
    );
    let r = bed.ok(a, w::ReadLocalExtendedFeatures { page_number: 1 });
    let host = w::ReadLocalExtendedFeaturesReturn::parse(&r).unwrap();
    assert_eq!(host.maximum_page_number, 1);
    assert_eq!(
        host.extended_lmp_features[0] & 0b11,
        0b11,
        "SSP and LE host"
    );
}

#[test]
fn supported_commands_match_the_handler_table() {
    let mut bed = Bed::new();
    let a = bed.adapter("00:00:00:00:00:01", "dual");
    let r = bed.ok(a, w::ReadLocalSupportedCommands {});
    let mask = w::ReadLocalSupportedCommandsReturn::parse(&r)
        .unwrap()
        .supported_commands;
    let c = bed.radio.adapter(a).unwrap();
    for (opcode, octet, bit) in SUPPORTED_COMMAND_BITS {
        let set = mask[*octet] & (1 << bit) != 0;
        assert_eq!(set, c.supports(*opcode), "{opcode:?}");
    }
    // Every bit set names a command from the table (no stray bits).
    let table_bits: usize = SUPPORTED_COMMAND_BITS
        .iter()
        .filter(|(o, _, _)| c.supports(*o))
        .count();
    let set_bits: u32 = mask.iter().map(|b| b.count_ones()).sum();
    assert_eq!(set_bits as usize, table_bits);

    // An LE-only controller advertises no BR/EDR command and says so in its features.
    let mut config = ControllerConfig::new(addr("00:00:00:00:00:02"));
    config.bredr = false;
    let le_only = bed.radio.add_adapter(config);
    let c = bed.radio.adapter(le_only).unwrap();
    assert!(!c.supports(w::Inquiry::CODE));
    assert!(c.supports(w::LeCreateConnection::CODE));
    let f = u64::from_le_bytes(c.lmp_features());
    assert_ne!(f & (1 << 37), 0, "BR/EDR Not Supported");
    assert_ne!(f & (1 << 38), 0, "LE Supported (Controller)");
    bed.reading.insert(le_only, true);
    assert_eq!(
        bed.status(le_only, w::WriteScanEnable { scan_enable: 3 }),
        ErrorCode::UnknownHciCommand
    );
}

#[test]
fn unknown_and_malformed_commands_are_answered() {
    let mut bed = Bed::new();
    let a = bed.adapter("00:00:00:00:00:01", "a");
    let vendor = HciCommand::Unknown {
        opcode: w::Opcode(0xfc01),
        parameters: vec![1, 2],
    };
    assert_eq!(bed.status(a, vendor), ErrorCode::UnknownHciCommand);
    // Write Scan Enable with a trailing byte: Command Complete, Invalid Parameters.
    bed.radio
        .handle_command(a, bed.now, &[0x1a, 0x0c, 0x02, 0x03, 0x00])
        .unwrap();
    let ev = bed.take(a, |e| match e {
        HciEvent::CommandComplete(c) => Some(c.clone()),
        _ => None,
    });
    assert_eq!(ev.status(), Some(ErrorCode::InvalidHciCommandParameters));
    // Create Connection, truncated: Command Status, Invalid Parameters.
    bed.radio
        .handle_command(a, bed.now, &[0x05, 0x04, 0x01, 0x00])
        .unwrap();
    let s = bed.take(a, |e| match e {
        HciEvent::CommandStatus(c) => Some(c.status),
        _ => None,
    });
    assert_eq!(s, ErrorCode::InvalidHciCommandParameters);
    // A packet whose length disagrees with its header is refused outright.
    assert!(bed.radio.handle_command(a, bed.now, &[0x03, 0x0c]).is_err());
}

#[test]
fn inquiry_finds_scanning_adapters_with_names() {
    let mut bed = Bed::new();
    let a = bed.adapter("00:00:00:00:00:0A", "alpha");
    let b = bed.adapter("00:00:00:00:00:0B", "bravo");
    let c = bed.adapter("00:00:00:00:00:0C", "charlie");
    bed.ok(
        b,
        w::WriteClassOfDevice {
            class_of_device: w::ClassOfDevice(0x5a020c),
        },
    );
    bed.ok(b, w::WriteScanEnable { scan_enable: 0x03 });
    bed.ok(a, w::WriteInquiryMode { inquiry_mode: 1 });
    bed.ok(
        a,
        w::Inquiry {
            lap: [0x33, 0x8b, 0x9e],
            inquiry_length: 2,
            num_responses: 0,
        },
    );
    let found = bed.take(a, |e| match e {
        HciEvent::InquiryResultWithRssi(r) => Some(r.responses.0[0].clone()),
        _ => None,
    });
    assert_eq!(found.bd_addr, bed.bd(b));
    assert_eq!(found.class_of_device, w::ClassOfDevice(0x5a020c));
    // c is not discoverable yet; it becomes discoverable during the inquiry and is found by
    // the next inquiry train.
    bed.none(a, |e| {
        matches!(e, HciEvent::InquiryResultWithRssi(_)).then_some(())
    });
    bed.ok(c, w::WriteScanEnable { scan_enable: 0x01 });
    bed.advance(Duration::from_millis(1300));
    let found = bed.take(a, |e| match e {
        HciEvent::InquiryResultWithRssi(r) => Some(r.responses.0[0].bd_addr),
        _ => None,
    });
    assert_eq!(found, bed.bd(c));
    // 2 × 1.28 s after the start the inquiry completes.
    bed.none(a, |e| {
        matches!(e, HciEvent::InquiryComplete(_)).then_some(())
    });
    bed.advance(Duration::from_millis(1300));
    bed.take(a, |e| {
        matches!(e, HciEvent::InquiryComplete(_)).then_some(())
    });

    // Remote name request without a connection (b is page scanning).
    let bb = bed.bd(b);
    bed.ok(
        a,
        w::RemoteNameRequest {
            bd_addr: bb,
            page_scan_repetition_mode: 1,
            reserved: 0,
            clock_offset: 0,
        },
    );
    let name = bed.take(a, |e| match e {
        HciEvent::RemoteNameRequestComplete(r) if r.status.is_success() => {
            Some(r.remote_name[..5].to_vec())
        }
        _ => None,
    });
    assert_eq!(name, b"bravo");
    // c only inquiry-scans: its name cannot be read; the request times out.
    let cc = bed.bd(c);
    bed.ok(
        a,
        w::RemoteNameRequest {
            bd_addr: cc,
            page_scan_repetition_mode: 1,
            reserved: 0,
            clock_offset: 0,
        },
    );
    bed.advance(Duration::from_secs(6));
    let s = bed.take(a, |e| match e {
        HciEvent::RemoteNameRequestComplete(r) => Some(r.status),
        _ => None,
    });
    assert_eq!(s, ErrorCode::PageTimeout);
}

#[test]
fn bredr_connection_carries_acl_in_order_and_disconnects() {
    let mut bed = Bed::new();
    let a = bed.adapter("00:00:00:00:00:0A", "alpha");
    let b = bed.adapter("00:00:00:00:00:0B", "bravo");
    let (ha, hb) = bed.connect_bredr(a, b);

    for i in 0..50u8 {
        bed.acl(a, ha, &[i; 100]).unwrap();
        bed.acl(b, hb, &[i, i]).unwrap();
    }
    let got_b: Vec<Vec<u8>> = bed.acl.remove(&b).unwrap().into();
    let got_a: Vec<Vec<u8>> = bed.acl.remove(&a).unwrap().into();
    assert_eq!(got_b.len(), 50);
    for (i, p) in got_b.iter().enumerate() {
        let r = w::AclRepr::parse_bytes(p).unwrap();
        assert_eq!(r.handle, hb);
        assert_eq!(r.packet_boundary, w::PacketBoundary::FirstFlushable);
        assert_eq!(r.data, &[i as u8; 100][..]);
    }
    for (i, p) in got_a.iter().enumerate() {
        assert_eq!(w::AclRepr::parse_bytes(p).unwrap().data, &[i as u8; 2][..]);
    }
    // Every packet's buffer came back through Number Of Completed Packets.
    let mut completed = 0;
    while let Some(n) = bed.events.get_mut(&a).and_then(|q| {
        let i = q
            .iter()
            .position(|e| matches!(e, HciEvent::NumberOfCompletedPackets(_)))?;
        q.remove(i)
    }) {
        let HciEvent::NumberOfCompletedPackets(n) = n else {
            unreachable!()
        };
        assert_eq!(n.handles.0[0].connection_handle, ha);
        completed += n.handles.0[0].num_completed_packets;
    }
    assert_eq!(completed, 50);

    bed.ok(
        a,
        w::ReadRemoteSupportedFeatures {
            connection_handle: ha,
        },
    );
    let f = bed.take(a, |e| match e {
        HciEvent::ReadRemoteSupportedFeaturesComplete(f) => Some(f.lmp_features),
        _ => None,
    });
    assert_eq!(f, bed.radio.adapter(b).unwrap().lmp_features());

    bed.ok(
        b,
        w::Disconnect {
            connection_handle: hb,
            reason: ErrorCode::RemoteUserTerminatedConnection,
        },
    );
    let r = bed.take(b, |e| match e {
        HciEvent::DisconnectionComplete(d) => Some((d.connection_handle, d.reason)),
        _ => None,
    });
    assert_eq!(r, (hb, ErrorCode::ConnectionTerminatedByLocalHost));
    let r = bed.take(a, |e| match e {
        HciEvent::DisconnectionComplete(d) => Some((d.connection_handle, d.reason)),
        _ => None,
    });
    assert_eq!(r, (ha, ErrorCode::RemoteUserTerminatedConnection));
    assert!(matches!(
        bed.acl(a, ha, b"late"),
        Err(RadioError::Acl(AclError::UnknownHandle(_)))
    ));
}

#[test]
fn page_times_out_when_nobody_scans_and_rejects_are_reported() {
    let mut bed = Bed::new();
    let a = bed.adapter("00:00:00:00:00:0A", "alpha");
    let b = bed.adapter("00:00:00:00:00:0B", "bravo");
    let bb = bed.bd(b);
    let create = w::CreateConnection {
        bd_addr: bb,
        packet_type: 0xcc18,
        page_scan_repetition_mode: 1,
        reserved: 0,
        clock_offset: 0,
        allow_role_switch: 1,
    };
    bed.ok(a, create.clone());
    bed.advance(Duration::from_secs(6)); // default page timeout 5.12 s
    let s = bed.take(a, |e| match e {
        HciEvent::ConnectionComplete(c) => Some(c.status),
        _ => None,
    });
    assert_eq!(s, ErrorCode::PageTimeout);

    bed.ok(b, w::WriteScanEnable { scan_enable: 0x02 });
    bed.ok(a, create);
    let aa = bed.bd(a);
    bed.take(b, |e| {
        matches!(e, HciEvent::ConnectionRequest(_)).then_some(())
    });
    bed.ok(
        b,
        w::RejectConnectionRequest {
            bd_addr: aa,
            reason: ErrorCode::RejectedSecurityReasons,
        },
    );
    for id in [a, b] {
        let s = bed.take(id, |e| match e {
            HciEvent::ConnectionComplete(c) => Some(c.status),
            _ => None,
        });
        assert_eq!(s, ErrorCode::RejectedSecurityReasons);
    }
}

fn adv_data(name: &str) -> (u8, [u8; 31]) {
    let mut d = vec![0x02, 0x01, 0x06, name.len() as u8 + 1, 0x09];
    d.extend_from_slice(name.as_bytes());
    let mut out = [0u8; 31];
    out[..d.len()].copy_from_slice(&d);
    (d.len() as u8, out)
}

/// b advertises from a random static address; a scans actively and connects.
fn le_connect(bed: &mut Bed, a: AdapterId, b: AdapterId) -> (u16, u16) {
    let rb = addr("C0:00:00:00:00:0B");
    bed.ok(b, w::LeSetRandomAddress { random_address: rb });
    bed.ok(
        b,
        w::LeSetAdvertisingParameters {
            advertising_interval_min: 0x20,
            advertising_interval_max: 0x20,
            advertising_type: 0,
            own_address_type: 1,
            peer_address_type: 0,
            peer_address: BdAddr::ANY,
            advertising_channel_map: 7,
            advertising_filter_policy: 0,
        },
    );
    let (len, data) = adv_data("bravo");
    bed.ok(
        b,
        w::LeSetAdvertisingData {
            advertising_data_length: len,
            advertising_data: data,
        },
    );
    bed.ok(
        b,
        w::LeSetScanResponseData {
            scan_response_data_length: 3,
            scan_response_data: {
                let mut d = [0u8; 31];
                d[..3].copy_from_slice(&[0x02, 0x0a, 0x00]);
                d
            },
        },
    );
    bed.ok(
        b,
        w::LeSetAdvertisingEnable {
            advertising_enable: 1,
        },
    );
    bed.ok(
        a,
        w::LeSetScanParameters {
            le_scan_type: 1,
            le_scan_interval: 0x10,
            le_scan_window: 0x10,
            own_address_type: 0,
            scanning_filter_policy: 0,
        },
    );
    bed.ok(
        a,
        w::LeSetScanEnable {
            le_scan_enable: 1,
            filter_duplicates: 1,
        },
    );
    let reports: Vec<w::AdvertisingReport> = (0..2)
        .map(|_| {
            bed.take(a, |e| match le_meta(e) {
                Some(LeMetaEvent::LeAdvertisingReport(r)) => Some(r.reports.0[0].clone()),
                _ => None,
            })
        })
        .collect();
    assert_eq!(reports[0].event_type, 0);
    assert_eq!((reports[0].address, reports[0].address_type), (rb, 1));
    assert_eq!(reports[0].data.0, &data[..usize::from(len)]);
    assert_eq!(reports[1].event_type, 4, "scan response");
    assert_eq!(reports[1].data.0, vec![0x02, 0x0a, 0x00]);
    bed.ok(
        a,
        w::LeSetScanEnable {
            le_scan_enable: 0,
            filter_duplicates: 0,
        },
    );
    bed.ok(
        a,
        w::LeCreateConnection {
            le_scan_interval: 0x10,
            le_scan_window: 0x10,
            initiator_filter_policy: 0,
            peer_address_type: 1,
            peer_address: rb,
            own_address_type: 0,
            connection_interval_min: 0x18,
            connection_interval_max: 0x28,
            max_latency: 0,
            supervision_timeout: 0x2a,
            min_ce_length: 0,
            max_ce_length: 0,
        },
    );
    let ca = bed.take(a, |e| match le_meta(e) {
        Some(LeMetaEvent::LeConnectionComplete(c)) => Some(c.clone()),
        _ => None,
    });
    let cb = bed.take(b, |e| match le_meta(e) {
        Some(LeMetaEvent::LeConnectionComplete(c)) => Some(c.clone()),
        _ => None,
    });
    assert_eq!(
        (ca.status, ca.role, ca.peer_address),
        (ErrorCode::Success, 0, rb)
    );
    assert_eq!(
        (cb.status, cb.role, cb.peer_address, cb.peer_address_type),
        (ErrorCode::Success, 1, bed.bd(a), 0)
    );
    assert_eq!(ca.connection_interval, 0x28);
    (ca.connection_handle, cb.connection_handle)
}

#[test]
fn le_advertise_scan_connect_exchange_disconnect() {
    let mut bed = Bed::new();
    let a = bed.adapter("00:00:00:00:00:0A", "alpha");
    let b = bed.adapter("00:00:00:00:00:0B", "bravo");
    let (ha, hb) = le_connect(&mut bed, a, b);
    // Advertising stopped with the connection: a second initiator waits in vain.
    let c = bed.adapter("00:00:00:00:00:0C", "charlie");
    bed.ok(
        c,
        w::LeCreateConnection {
            le_scan_interval: 0x10,
            le_scan_window: 0x10,
            initiator_filter_policy: 0,
            peer_address_type: 1,
            peer_address: addr("C0:00:00:00:00:0B"),
            own_address_type: 0,
            connection_interval_min: 0x18,
            connection_interval_max: 0x28,
            max_latency: 0,
            supervision_timeout: 0x2a,
            min_ce_length: 0,
            max_ce_length: 0,
        },
    );
    bed.none(c, |e| le_meta(e).cloned());
    bed.ok(c, w::LeCreateConnectionCancel {});
    let s = bed.take(c, |e| match le_meta(e) {
        Some(LeMetaEvent::LeConnectionComplete(c)) => Some(c.status),
        _ => None,
    });
    assert_eq!(s, ErrorCode::UnknownConnectionIdentifier);

    // L2CAP-sized fragments, with continuation, both ways.
    bed.acl(a, ha, &[1; 251]).unwrap();
    let p = w::AclRepr {
        handle: ha,
        packet_boundary: w::PacketBoundary::Continuing,
        broadcast_flag: 0,
        data: &[2; 10],
    }
    .to_packet();
    bed.radio.handle_acl(a, bed.now, &p).unwrap();
    bed.drain();
    bed.acl(b, hb, b"pong").unwrap();
    let got: Vec<Vec<u8>> = bed.acl.remove(&b).unwrap().into();
    let r0 = w::AclRepr::parse_bytes(&got[0]).unwrap();
    let r1 = w::AclRepr::parse_bytes(&got[1]).unwrap();
    assert_eq!((r0.handle, r0.data.len()), (hb, 251));
    assert_eq!(r1.packet_boundary, w::PacketBoundary::Continuing);
    assert_eq!(
        w::AclRepr::parse_bytes(&bed.acl.remove(&a).unwrap()[0])
            .unwrap()
            .data,
        b"pong"
    );
    assert!(matches!(
        bed.acl(a, ha, &[0; 252]),
        Err(RadioError::Acl(AclError::TooLong { .. }))
    ));

    bed.ok(
        a,
        w::LeConnectionUpdate {
            connection_handle: ha,
            connection_interval_min: 6,
            connection_interval_max: 6,
            max_latency: 0,
            supervision_timeout: 100,
            min_ce_length: 0,
            max_ce_length: 0,
        },
    );
    for (id, h) in [(a, ha), (b, hb)] {
        let u = bed.take(id, |e| match le_meta(e) {
            Some(LeMetaEvent::LeConnectionUpdateComplete(u)) => Some(u.clone()),
            _ => None,
        });
        assert_eq!((u.connection_handle, u.connection_interval), (h, 6));
    }

    bed.ok(
        a,
        w::Disconnect {
            connection_handle: ha,
            reason: ErrorCode::RemoteUserTerminatedConnection,
        },
    );
    bed.take(b, |e| match e {
        HciEvent::DisconnectionComplete(d) if d.connection_handle == hb => Some(()),
        _ => None,
    });
}

#[test]
fn le_encryption_with_matching_and_missing_keys() {
    let mut bed = Bed::new();
    let a = bed.adapter("00:00:00:00:00:0A", "alpha");
    let b = bed.adapter("00:00:00:00:00:0B", "bravo");
    let (ha, hb) = le_connect(&mut bed, a, b);
    let ltk = [7u8; 16];
    let start = w::LeEnableEncryption {
        connection_handle: ha,
        random_number: [1; 8],
        encrypted_diversifier: 0x1234,
        long_term_key: ltk,
    };
    bed.ok(a, start.clone());
    let req = bed.take(b, |e| match le_meta(e) {
        Some(LeMetaEvent::LeLongTermKeyRequest(r)) => Some(r.clone()),
        _ => None,
    });
    assert_eq!(
        (req.connection_handle, req.encrypted_diversifier),
        (hb, 0x1234)
    );
    bed.ok(
        b,
        w::LeLongTermKeyRequestReply {
            connection_handle: hb,
            long_term_key: ltk,
        },
    );
    for (id, h) in [(a, ha), (b, hb)] {
        let c = bed.take(id, |e| match e {
            HciEvent::EncryptionChange(c) => Some(c.clone()),
            _ => None,
        });
        assert_eq!(
            (c.status, c.connection_handle, c.encryption_enabled),
            (ErrorCode::Success, h, 1)
        );
    }
    // Re-encryption is a key refresh; a peripheral without the key refuses it.
    bed.ok(a, start);
    bed.take(b, |e| le_meta(e).map(|_| ()));
    bed.ok(
        b,
        w::LeLongTermKeyRequestNegativeReply {
            connection_handle: hb,
        },
    );
    let s = bed.take(a, |e| match e {
        HciEvent::EncryptionChange(c) => Some(c.status),
        _ => None,
    });
    assert_eq!(s, ErrorCode::PinOrKeyMissing);
}

/// Runs SSP between a (initiator) and b with the given IO capabilities; returns the link
/// keys each host was notified of.
fn ssp(bed: &mut Bed, a: AdapterId, b: AdapterId, ha: u16, io: (u8, u8)) -> ([u8; 16], u8) {
    let (aa, ba) = (bed.bd(a), bed.bd(b));
    for id in [a, b] {
        bed.ok(
            id,
            w::WriteSimplePairingMode {
                simple_pairing_mode: 1,
            },
        );
    }
    bed.ok(
        a,
        w::AuthenticationRequested {
            connection_handle: ha,
        },
    );
    bed.take(a, |e| match e {
        HciEvent::LinkKeyRequest(r) if r.bd_addr == ba => Some(()),
        _ => None,
    });
    bed.ok(a, w::LinkKeyRequestNegativeReply { bd_addr: ba });
    bed.take(a, |e| {
        matches!(e, HciEvent::IoCapabilityRequest(_)).then_some(())
    });
    bed.ok(
        a,
        w::IoCapabilityRequestReply {
            bd_addr: ba,
            io_capability: io.0,
            oob_data_present: 0,
            authentication_requirements: 0x03,
        },
    );
    let theirs = bed.take(b, |e| match e {
        HciEvent::IoCapabilityResponse(r) => Some(r.io_capability),
        _ => None,
    });
    assert_eq!(theirs, io.0);
    bed.take(b, |e| {
        matches!(e, HciEvent::IoCapabilityRequest(_)).then_some(())
    });
    bed.ok(
        b,
        w::IoCapabilityRequestReply {
            bd_addr: aa,
            io_capability: io.1,
            oob_data_present: 0,
            authentication_requirements: 0x02,
        },
    );
    let ra = bed.take(a, |e| match e {
        HciEvent::IoCapabilityResponse(r) => Some(r.io_capability),
        _ => None,
    });
    assert_eq!(ra, io.1);
    let va = bed.take(a, |e| match e {
        HciEvent::UserConfirmationRequest(r) => Some(r.numeric_value),
        _ => None,
    });
    let vb = bed.take(b, |e| match e {
        HciEvent::UserConfirmationRequest(r) => Some(r.numeric_value),
        _ => None,
    });
    assert_eq!(va, vb);
    assert!(va < 1_000_000);
    bed.ok(a, w::UserConfirmationRequestReply { bd_addr: ba });
    bed.ok(b, w::UserConfirmationRequestReply { bd_addr: aa });
    let mut keys = Vec::new();
    for (id, peer) in [(a, ba), (b, aa)] {
        let s = bed.take(id, |e| match e {
            HciEvent::SimplePairingComplete(s) => Some(s.status),
            _ => None,
        });
        assert_eq!(s, ErrorCode::Success);
        keys.push(bed.take(id, |e| match e {
            HciEvent::LinkKeyNotification(n) if n.bd_addr == peer => Some((n.link_key, n.key_type)),
            _ => None,
        }));
    }
    assert_eq!(keys[0], keys[1]);
    let s = bed.take(a, |e| match e {
        HciEvent::AuthenticationComplete(c) if c.connection_handle == ha => Some(c.status),
        _ => None,
    });
    assert_eq!(s, ErrorCode::Success);
    bed.none(b, |e| {
        matches!(e, HciEvent::AuthenticationComplete(_)).then_some(())
    });
    keys[0]
}

#[test]
fn secure_simple_pairing_then_encryption_then_reauthentication() {
    let mut bed = Bed::new();
    let a = bed.adapter("00:00:00:00:00:0A", "alpha");
    let b = bed.adapter("00:00:00:00:00:0B", "bravo");
    let (ha, hb) = bed.connect_bredr(a, b);
    let (key, key_type) = ssp(&mut bed, a, b, ha, (0x01, 0x01));
    assert_eq!(
        key_type, 0x05,
        "DisplayYesNo both sides with MITM: authenticated"
    );

    bed.ok(
        a,
        w::SetConnectionEncryption {
            connection_handle: ha,
            encryption_enable: 1,
        },
    );
    for (id, h) in [(a, ha), (b, hb)] {
        let c = bed.take(id, |e| match e {
            HciEvent::EncryptionChange(c) => Some(c.clone()),
            _ => None,
        });
        assert_eq!((c.connection_handle, c.encryption_enabled), (h, 1));
    }
    let r = bed.ok(
        a,
        w::ReadEncryptionKeySize {
            connection_handle: ha,
        },
    );
    assert_eq!(r[3], 16);

    // Authenticating again with the stored key succeeds without pairing...
    let (aa, ba) = (bed.bd(a), bed.bd(b));
    bed.ok(
        a,
        w::AuthenticationRequested {
            connection_handle: ha,
        },
    );
    bed.take(a, |e| {
        matches!(e, HciEvent::LinkKeyRequest(_)).then_some(())
    });
    bed.ok(
        a,
        w::LinkKeyRequestReply {
            bd_addr: ba,
            link_key: key,
        },
    );
    bed.take(b, |e| {
        matches!(e, HciEvent::LinkKeyRequest(_)).then_some(())
    });
    bed.ok(
        b,
        w::LinkKeyRequestReply {
            bd_addr: aa,
            link_key: key,
        },
    );
    let s = bed.take(a, |e| match e {
        HciEvent::AuthenticationComplete(c) => Some(c.status),
        _ => None,
    });
    assert_eq!(s, ErrorCode::Success);
    // ...and fails when the responder lost it.
    bed.ok(
        a,
        w::AuthenticationRequested {
            connection_handle: ha,
        },
    );
    bed.ok(
        a,
        w::LinkKeyRequestReply {
            bd_addr: ba,
            link_key: key,
        },
    );
    bed.ok(b, w::LinkKeyRequestNegativeReply { bd_addr: aa });
    let s = bed.take(a, |e| match e {
        HciEvent::AuthenticationComplete(c) => Some(c.status),
        _ => None,
    });
    assert_eq!(s, ErrorCode::PinOrKeyMissing);
}

#[test]
fn just_works_pairing_gives_unauthenticated_key() {
    let mut bed = Bed::new();
    let a = bed.adapter("00:00:00:00:00:0A", "alpha");
    let b = bed.adapter("00:00:00:00:00:0B", "bravo");
    let (ha, _) = bed.connect_bredr(a, b);
    let (_, key_type) = ssp(&mut bed, a, b, ha, (0x03, 0x01));
    assert_eq!(key_type, 0x04);
}

#[test]
fn legacy_pin_pairing() {
    let mut bed = Bed::new();
    let a = bed.adapter("00:00:00:00:00:0A", "alpha");
    let b = bed.adapter("00:00:00:00:00:0B", "bravo");
    let (ha, _) = bed.connect_bredr(a, b);
    let (aa, ba) = (bed.bd(a), bed.bd(b));
    let mut pin = [0u8; 16];
    pin[..4].copy_from_slice(b"0000");
    for (wrong, expect) in [
        (false, ErrorCode::Success),
        (true, ErrorCode::AuthenticationFailure),
    ] {
        bed.ok(
            a,
            w::AuthenticationRequested {
                connection_handle: ha,
            },
        );
        bed.ok(a, w::LinkKeyRequestNegativeReply { bd_addr: ba });
        bed.take(a, |e| {
            matches!(e, HciEvent::PinCodeRequest(_)).then_some(())
        });
        bed.ok(
            a,
            w::PinCodeRequestReply {
                bd_addr: ba,
                pin_code_length: 4,
                pin_code: pin,
            },
        );
        bed.take(b, |e| {
            matches!(e, HciEvent::PinCodeRequest(_)).then_some(())
        });
        let mut theirs = pin;
        if wrong {
            theirs[0] = b'1';
        }
        bed.ok(
            b,
            w::PinCodeRequestReply {
                bd_addr: aa,
                pin_code_length: 4,
                pin_code: theirs,
            },
        );
        let s = bed.take(a, |e| match e {
            HciEvent::AuthenticationComplete(c) => Some(c.status),
            _ => None,
        });
        assert_eq!(s, expect);
        if !wrong {
            let ka = bed.take(a, |e| match e {
                HciEvent::LinkKeyNotification(n) => Some(n.link_key),
                _ => None,
            });
            let kb = bed.take(b, |e| match e {
                HciEvent::LinkKeyNotification(n) => Some(n.link_key),
                _ => None,
            });
            assert_eq!(ka, kb);
        }
    }
}

#[test]
fn removed_adapter_drops_its_links() {
    let mut bed = Bed::new();
    let a = bed.adapter("00:00:00:00:00:0A", "alpha");
    let b = bed.adapter("00:00:00:00:00:0B", "bravo");
    let c = bed.adapter("00:00:00:00:00:0C", "charlie");
    let (ha, _) = bed.connect_bredr(a, b);
    let (hc, _) = le_connect(&mut bed, c, b);
    bed.radio.remove_adapter(b, bed.now);
    bed.drain();
    for (id, h) in [(a, ha), (c, hc)] {
        let r = bed.take(id, |e| match e {
            HciEvent::DisconnectionComplete(d) => Some((d.connection_handle, d.reason)),
            _ => None,
        });
        assert_eq!(r, (h, ErrorCode::ConnectionTimeout));
    }
    assert!(bed.radio.adapter(a).unwrap().links().is_empty());
}

#[test]
fn a_slow_host_holds_back_the_senders_buffers() {
    let mut bed = Bed::new();
    let a = bed.adapter("00:00:00:00:00:0A", "alpha");
    let b = bed.adapter("00:00:00:00:00:0B", "bravo");
    let (ha, _) = bed.connect_bredr(a, b);
    let max_to_host = bed.radio.adapter(b).unwrap().config().max_acl_to_host;
    let buffers = bed
        .radio
        .adapter(a)
        .unwrap()
        .config()
        .total_num_acl_data_packets;
    // b's host stops reading ACL. a may fill b's host queue plus its own buffers.
    bed.reading.insert(b, false);
    let mut sent = 0usize;
    let mut refused = None;
    for i in 0..(max_to_host + usize::from(buffers) + 4) {
        match bed.acl(a, ha, &(i as u32).to_le_bytes()) {
            Ok(()) => sent += 1,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert_eq!(refused, Some(RadioError::Acl(AclError::BufferOverflow)));
    bed.take(a, |e| {
        matches!(e, HciEvent::DataBufferOverflow(_)).then_some(())
    });
    // b's host queue plus a's buffers, and not one more.
    assert_eq!(sent, max_to_host + usize::from(buffers));
    // The host catches up: every packet arrives, in order, and a gets its buffers back.
    bed.reading.insert(b, true);
    bed.drain();
    bed.drain();
    let got: Vec<u32> = bed
        .acl
        .remove(&b)
        .unwrap()
        .iter()
        .map(|p| {
            let d = w::AclRepr::parse_bytes(p).unwrap().data;
            u32::from_le_bytes(d.try_into().unwrap())
        })
        .collect();
    assert_eq!(got, (0..sent as u32).collect::<Vec<_>>());
    bed.acl(a, ha, b"after").unwrap();
}
