//! A guest's host driving a host-linked controller, with the runtime's socket outcomes fed in
//! by hand: each test reads like the HCI and socket trace of one scenario.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use super::*;
use crate::wire::{self as w, AclRepr, HciCommand, HciEvent, PacketBoundary};

const GUEST: &str = "00:50:57:00:00:01";
const REMOTE: &str = "00:AA:00:00:00:02";

fn addr(s: &str) -> BdAddr {
    BdAddr::parse_str(s).expect("address")
}

struct Bed {
    adapter: HostLinkedAdapter,
    now: Instant,
    events: VecDeque<HciEvent>,
    /// Whole L2CAP frames the guest's host received (reassembled), by handle.
    frames: VecDeque<Vec<u8>>,
    partial: Vec<u8>,
    actions: VecDeque<HostAction>,
}

impl Bed {
    fn new(keys: BTreeMap<BdAddr, [u8; 16]>) -> Self {
        let mut config = ControllerConfig::new(addr(GUEST));
        config.acl_data_packet_length = 64;
        config.entropy = 0x1234_5678;
        let mut bed = Self {
            adapter: HostLinkedAdapter::new(AdapterId(0), config, keys),
            now: Instant::now(),
            events: VecDeque::new(),
            frames: VecDeque::new(),
            partial: Vec::new(),
            actions: VecDeque::new(),
        };
        bed.command(w::Reset {});
        bed.command(w::SetEventMask {
            event_mask: [0xff; 8],
        });
        bed.command(w::WriteSimplePairingMode {
            simple_pairing_mode: 1,
        });
        bed.events.clear();
        bed
    }

    fn drain(&mut self) {
        while let Some(p) = self.adapter.poll_to_host(self.now) {
            match p {
                ToHost::Event(b) => {
                    let ev =
                        HciEvent::parse(&w::EventPacket::new_checked(&b[..]).unwrap()).unwrap();
                    self.events.push_back(ev);
                }
                ToHost::Acl(b) => {
                    let acl = AclRepr::parse_bytes(&b).unwrap();
                    if acl.packet_boundary.is_first() {
                        self.partial.clear();
                    }
                    self.partial.extend_from_slice(acl.data);
                    let h = BasicHeader::parse(&self.partial).unwrap();
                    if self.partial.len() == 4 + usize::from(h.length) {
                        self.frames.push_back(std::mem::take(&mut self.partial));
                    }
                }
            }
        }
        while let Some(a) = self.adapter.poll_action() {
            self.actions.push_back(a);
        }
    }

    fn command(&mut self, cmd: impl Into<HciCommand>) {
        let cmd: HciCommand = cmd.into();
        self.adapter
            .handle_command(self.now, &cmd.to_packet())
            .unwrap();
        self.drain();
    }

    fn event<T>(&mut self, f: impl Fn(&HciEvent) -> Option<T>) -> T {
        self.drain();
        let i = self
            .events
            .iter()
            .position(|e| f(e).is_some())
            .unwrap_or_else(|| panic!("event not seen in {:?}", self.events));
        let e = self.events.remove(i).unwrap();
        f(&e).unwrap()
    }

    fn action(&mut self) -> HostAction {
        self.drain();
        self.actions.pop_front().expect("an action")
    }

    fn link<T>(&mut self, f: impl FnOnce(&mut HostLink) -> T) -> T {
        let out = self.adapter.with_link(self.now, f);
        self.drain();
        out
    }

    /// Creates a connection; the host says the remote answered. Returns the handle.
    fn connect(&mut self) -> u16 {
        self.command(w::CreateConnection {
            bd_addr: addr(REMOTE),
            packet_type: 0xcc18,
            page_scan_repetition_mode: 1,
            reserved: 0,
            clock_offset: 0,
            allow_role_switch: 1,
        });
        assert_eq!(
            self.action(),
            HostAction::Page {
                remote: addr(REMOTE)
            }
        );
        self.link(|l| l.handle_page_result(addr(REMOTE), Ok(())));
        self.event(|e| match e {
            HciEvent::ConnectionComplete(c) if c.status == ErrorCode::Success => {
                Some(c.connection_handle)
            }
            _ => None,
        })
    }

    /// Sends an L2CAP frame from the guest's host, fragmented to the buffer size.
    fn send_frame(&mut self, handle: u16, cid: u16, payload: &[u8]) {
        let frame = BasicHeader::frame(cid, payload);
        for (i, chunk) in frame.chunks(64).enumerate() {
            let packet = AclRepr {
                handle,
                packet_boundary: if i == 0 {
                    PacketBoundary::FirstNonFlushable
                } else {
                    PacketBoundary::Continuing
                },
                broadcast_flag: 0,
                data: chunk,
            }
            .to_packet();
            self.adapter.handle_acl(self.now, &packet).unwrap();
        }
        self.drain();
    }

    fn signal(&mut self, handle: u16, identifier: u8, signal: L2capSignal) {
        let mut payload = Vec::new();
        SignalCommand { identifier, signal }.emit(&mut payload);
        self.send_frame(handle, CID_SIGNALING, &payload);
    }

    /// The next signalling command the guest received.
    fn signal_in(&mut self) -> SignalCommand {
        self.drain();
        let i = self
            .frames
            .iter()
            .position(|f| BasicHeader::parse(f).unwrap().cid == CID_SIGNALING)
            .expect("a signalling frame");
        let f = self.frames.remove(i).unwrap();
        let mut cmds = SignalCommand::parse_all(&f[4..]).unwrap();
        assert_eq!(cmds.len(), 1);
        cmds.remove(0)
    }

    fn completed_packets(&mut self) -> u16 {
        self.drain();
        let mut n = 0;
        self.events.retain(|e| match e {
            HciEvent::NumberOfCompletedPackets(p) => {
                n += p
                    .handles
                    .0
                    .iter()
                    .map(|h| h.num_completed_packets)
                    .sum::<u16>();
                false
            }
            _ => true,
        });
        n
    }

    /// Opens a channel to `psm` up to the point the host socket is asked for.
    fn request_channel(&mut self, handle: u16, psm: u16, scid: u16) -> (u16, SocketId) {
        self.signal(handle, 1, L2capSignal::ConnectionRequest { psm, scid });
        let pending = self.signal_in();
        let L2capSignal::ConnectionResponse {
            dcid,
            scid: s,
            result: ConnectionResult::Pending,
            ..
        } = pending.signal
        else {
            panic!("expected pending, got {pending:?}");
        };
        assert_eq!(s, scid);
        let HostAction::Connect {
            socket,
            remote,
            psm: p,
            imtu,
            security,
        } = self.action()
        else {
            panic!("expected a socket connect");
        };
        assert_eq!((remote, p, imtu), (addr(REMOTE), psm, l2cap::DEFAULT_MTU));
        assert_eq!(security, SecurityLevel::Low);
        (dcid, socket)
    }

    /// Opens a channel all the way; the remote's MTU is `omtu`. Returns our cid and socket.
    fn open_channel(&mut self, handle: u16, psm: u16, scid: u16, omtu: u16) -> (u16, SocketId) {
        let (dcid, socket) = self.request_channel(handle, psm, scid);
        self.link(|l| l.handle_connected(socket, omtu));
        let ok = self.signal_in();
        assert!(matches!(
            ok.signal,
            L2capSignal::ConnectionResponse {
                result: ConnectionResult::Success,
                ..
            }
        ));
        let our_req = self.signal_in();
        let L2capSignal::ConfigurationRequest {
            dcid: d, options, ..
        } = our_req.signal
        else {
            panic!("expected our configuration request, got {our_req:?}");
        };
        assert_eq!(d, scid);
        assert_eq!(
            ConfigOption::parse_all(&options).unwrap(),
            vec![ConfigOption::Mtu(omtu)]
        );
        self.signal(
            handle,
            2,
            L2capSignal::ConfigurationRequest {
                dcid,
                flags: 0,
                options: ConfigOption::emit_all(&[ConfigOption::Mtu(1013)]),
            },
        );
        let rsp = self.signal_in();
        assert!(matches!(
            rsp.signal,
            L2capSignal::ConfigurationResponse {
                scid: s,
                result: config_result::SUCCESS,
                ..
            } if s == scid
        ));
        self.signal(
            handle,
            our_req.identifier,
            L2capSignal::ConfigurationResponse {
                scid: dcid,
                flags: 0,
                result: config_result::SUCCESS,
                options: Vec::new(),
            },
        );
        // The link asks for a window of reads at once.
        for _ in 0..READ_AHEAD_FRAGMENTS {
            assert_eq!(self.action(), HostAction::Read { socket });
        }
        (dcid, socket)
    }
}

#[test]
fn an_unreachable_remote_fails_create_connection_with_the_hosts_reason() {
    let mut bed = Bed::new(BTreeMap::new());
    bed.command(w::CreateConnection {
        bd_addr: addr(REMOTE),
        packet_type: 0xcc18,
        page_scan_repetition_mode: 1,
        reserved: 0,
        clock_offset: 0,
        allow_role_switch: 1,
    });
    assert!(matches!(bed.action(), HostAction::Page { .. }));
    bed.link(|l| l.handle_page_result(addr(REMOTE), Err(ErrorCode::PageTimeout)));
    let status = bed.event(|e| match e {
        HciEvent::ConnectionComplete(c) => Some(c.status),
        _ => None,
    });
    assert_eq!(status, ErrorCode::PageTimeout);
    assert!(bed.adapter.controller().links().is_empty());
}

#[test]
fn signalling_information_and_echo_are_answered_locally() {
    let mut bed = Bed::new(BTreeMap::new());
    let h = bed.connect();
    bed.signal(
        h,
        9,
        L2capSignal::InformationRequest {
            info_type: info_type::EXTENDED_FEATURES,
        },
    );
    let rsp = bed.signal_in();
    assert_eq!(rsp.identifier, 9);
    assert!(matches!(
        rsp.signal,
        L2capSignal::InformationResponse {
            info_type: 2,
            result: 0,
            ..
        }
    ));
    bed.signal(h, 10, L2capSignal::EchoRequest(b"ping".to_vec()));
    assert_eq!(
        bed.signal_in().signal,
        L2capSignal::EchoResponse(b"ping".to_vec())
    );
    bed.signal(
        h,
        11,
        L2capSignal::Unknown {
            code: 0x14,
            data: vec![1, 2],
        },
    );
    assert!(matches!(
        bed.signal_in().signal,
        L2capSignal::CommandReject { reason: 0, .. }
    ));
    // Every fragment the guest sent was freed.
    assert_eq!(bed.completed_packets(), 3);
    assert!(bed.actions.is_empty(), "{:?}", bed.actions);
}

#[test]
fn a_channel_carries_sdus_both_ways_with_flow_control() {
    let mut bed = Bed::new(BTreeMap::new());
    let h = bed.connect();
    let (cid, socket) = bed.open_channel(h, 0x1011, 0x0040, 672);
    bed.completed_packets();

    // Guest → remote: one SDU of 200 bytes, four fragments; its buffers come back only once
    // the socket took it.
    let sdu: Vec<u8> = (0..200u8).collect();
    bed.send_frame(h, cid, &sdu);
    assert_eq!(
        bed.action(),
        HostAction::Send {
            socket,
            sdu: sdu.clone()
        }
    );
    assert_eq!(bed.completed_packets(), 0);
    bed.link(|l| l.handle_sent(socket));
    assert_eq!(bed.completed_packets(), 4);

    // Remote → guest: one read, one SDU, then the next read.
    bed.link(|l| l.handle_received(socket, &[5u8; 150]));
    let frame = bed.frames.pop_front().expect("data frame");
    assert_eq!(BasicHeader::parse(&frame).unwrap().cid, 0x0040);
    assert_eq!(&frame[4..], &[5u8; 150]);
    assert_eq!(bed.action(), HostAction::Read { socket });

    let info = bed.adapter.link().channels();
    assert_eq!(info.len(), 1);
    assert_eq!((info[0].psm, info[0].open), (0x1011, true));
    assert_eq!(
        (info[0].bytes_to_remote, info[0].bytes_to_guest),
        (200, 150)
    );
}

#[test]
fn a_remote_that_does_not_listen_is_refused_with_psm_not_supported() {
    let mut bed = Bed::new(BTreeMap::new());
    let h = bed.connect();
    let (_, socket) = bed.request_channel(h, 0x1013, 0x0041);
    bed.link(|l| l.handle_connect_failed(socket, ConnectFailure::NoListener));
    let rsp = bed.signal_in();
    assert_eq!(
        rsp.signal,
        L2capSignal::ConnectionResponse {
            dcid: 0,
            scid: 0x0041,
            result: ConnectionResult::PsmNotSupported,
            status: 0
        }
    );
    assert!(bed.adapter.link().channels().is_empty());
}

#[test]
fn closing_either_side_closes_the_other() {
    let mut bed = Bed::new(BTreeMap::new());
    let h = bed.connect();
    let (cid, socket) = bed.open_channel(h, 0x1011, 0x0040, 672);
    // The remote closes: the guest gets a Disconnection Request.
    bed.link(|l| l.handle_closed(socket));
    let req = bed.signal_in();
    assert_eq!(
        req.signal,
        L2capSignal::DisconnectionRequest {
            dcid: 0x0040,
            scid: cid
        }
    );
    assert_eq!(bed.action(), HostAction::Close { socket });

    // The guest closes: its socket is closed and the request answered.
    let (cid, socket) = bed.open_channel(h, 0x1011, 0x0042, 672);
    bed.signal(
        h,
        7,
        L2capSignal::DisconnectionRequest {
            dcid: cid,
            scid: 0x0042,
        },
    );
    assert_eq!(
        bed.signal_in().signal,
        L2capSignal::DisconnectionResponse {
            dcid: cid,
            scid: 0x0042
        }
    );
    assert_eq!(bed.action(), HostAction::Close { socket });

    // The guest drops the whole link: every socket closes and the link is released.
    let (_, socket) = bed.open_channel(h, 0x1011, 0x0043, 672);
    bed.command(w::Disconnect {
        connection_handle: h,
        reason: ErrorCode::RemoteUserTerminatedConnection,
    });
    assert_eq!(bed.action(), HostAction::Close { socket });
    assert_eq!(
        bed.action(),
        HostAction::ReleaseLink {
            remote: addr(REMOTE)
        }
    );
}

#[test]
fn pairing_runs_on_the_host_and_the_proxy_key_authenticates_later_links() {
    let mut bed = Bed::new(BTreeMap::new());
    let h = bed.connect();
    bed.command(w::AuthenticationRequested {
        connection_handle: h,
    });
    bed.event(|e| matches!(e, HciEvent::LinkKeyRequest(_)).then_some(()));
    bed.command(w::LinkKeyRequestNegativeReply {
        bd_addr: addr(REMOTE),
    });
    bed.event(|e| matches!(e, HciEvent::IoCapabilityRequest(_)).then_some(()));
    bed.command(w::IoCapabilityRequestReply {
        bd_addr: addr(REMOTE),
        io_capability: 0x01,
        oob_data_present: 0,
        authentication_requirements: 0x03,
    });
    let io = bed.event(|e| match e {
        HciEvent::IoCapabilityResponse(r) => Some(r.io_capability),
        _ => None,
    });
    assert_eq!(io, 0x03, "the proxy is NoInputNoOutput");
    bed.event(|e| matches!(e, HciEvent::UserConfirmationRequest(_)).then_some(()));
    bed.command(w::UserConfirmationRequestReply {
        bd_addr: addr(REMOTE),
    });
    // The host pairs for real before the guest's pairing completes.
    assert_eq!(
        bed.action(),
        HostAction::Secure {
            remote: addr(REMOTE),
            level: SecurityLevel::Medium
        }
    );
    bed.link(|l| l.handle_secured(addr(REMOTE), true));
    let key = bed.event(|e| match e {
        HciEvent::LinkKeyNotification(n) => Some(n.link_key),
        _ => None,
    });
    let HostAction::StoreKey {
        remote,
        key: Some(stored),
    } = bed.action()
    else {
        panic!("the proxy key is stored");
    };
    assert_eq!((remote, stored), (addr(REMOTE), key));
    let status = bed.event(|e| match e {
        HciEvent::AuthenticationComplete(a) => Some(a.status),
        _ => None,
    });
    assert_eq!(status, ErrorCode::Success);
    // Channels opened after authentication ask the host for security too.
    bed.signal(
        h,
        1,
        L2capSignal::ConnectionRequest {
            psm: 0x1011,
            scid: 0x0040,
        },
    );
    bed.signal_in();
    assert!(matches!(
        bed.action(),
        HostAction::Connect {
            security: SecurityLevel::Medium,
            ..
        }
    ));

    // A new adapter session with the stored key: authentication with it needs no pairing.
    let mut keys = BTreeMap::new();
    keys.insert(addr(REMOTE), key);
    let mut bed = Bed::new(keys);
    let h = bed.connect();
    bed.command(w::AuthenticationRequested {
        connection_handle: h,
    });
    bed.event(|e| matches!(e, HciEvent::LinkKeyRequest(_)).then_some(()));
    bed.command(w::LinkKeyRequestReply {
        bd_addr: addr(REMOTE),
        link_key: key,
    });
    assert!(matches!(bed.action(), HostAction::Secure { .. }));
    bed.link(|l| l.handle_secured(addr(REMOTE), true));
    let status = bed.event(|e| match e {
        HciEvent::AuthenticationComplete(a) => Some(a.status),
        _ => None,
    });
    assert_eq!(status, ErrorCode::Success);

    // A wrong key is refused without touching the host: the guest must pair again.
    let mut bed = Bed::new(BTreeMap::new());
    let h = bed.connect();
    bed.command(w::AuthenticationRequested {
        connection_handle: h,
    });
    bed.event(|e| matches!(e, HciEvent::LinkKeyRequest(_)).then_some(()));
    bed.command(w::LinkKeyRequestReply {
        bd_addr: addr(REMOTE),
        link_key: [9; 16],
    });
    let status = bed.event(|e| match e {
        HciEvent::AuthenticationComplete(a) => Some(a.status),
        _ => None,
    });
    assert_eq!(status, ErrorCode::PinOrKeyMissing);
    assert!(bed.actions.is_empty());
}

#[test]
fn a_slow_guest_stops_the_socket_reads() {
    let mut bed = Bed::new(BTreeMap::new());
    let h = bed.connect();
    let (_, socket) = bed.open_channel(h, 0x1011, 0x0040, 672);
    // With the guest's host not reading, every SDU (11 fragments of at most 64 bytes) stays
    // in the controller; reads stop once the read-ahead is used.
    let mut reads = 0;
    loop {
        bed.adapter
            .with_link(bed.now, |l| l.handle_received(socket, &[1u8; 600]));
        let mut again = false;
        while let Some(a) = bed.adapter.poll_action() {
            again |= a == HostAction::Read { socket };
        }
        if !again {
            break;
        }
        reads += 1;
        assert!(reads < 100, "reads never stopped");
    }
    // Once the guest reads, the socket is read again.
    bed.drain();
    assert_eq!(bed.actions.pop_front(), Some(HostAction::Read { socket }));
}

impl Bed {
    /// A remote connects on the host to `psm`; the guest's host (page scanning) accepts the
    /// link. Returns the handle, the socket and the Connection Request the guest got.
    fn incoming(&mut self, psm: u16) -> (u16, SocketId, SignalCommand) {
        self.command(w::WriteScanEnable { scan_enable: 0x02 });
        let now = self.now;
        let socket = self.link(|l| l.handle_incoming(now, addr(REMOTE), psm, 900));
        let bd_addr = self.event(|e| match e {
            HciEvent::ConnectionRequest(r) => Some(r.bd_addr),
            _ => None,
        });
        assert_eq!(bd_addr, addr(REMOTE));
        self.command(w::AcceptConnectionRequest { bd_addr, role: 1 });
        let handle = self.event(|e| match e {
            HciEvent::ConnectionComplete(c) if c.status == ErrorCode::Success => {
                Some(c.connection_handle)
            }
            _ => None,
        });
        // Before offering the channel the link secures the guest's link: by pairing it, the
        // guest's host answering as BlueZ does for Just Works.
        if self.adapter.link().keys.contains_key(&addr(REMOTE)) {
            self.event(|e| matches!(e, HciEvent::LinkKeyRequest(_)).then_some(()));
            let key = self.adapter.link().keys[&addr(REMOTE)];
            self.command(w::LinkKeyRequestReply {
                bd_addr,
                link_key: key,
            });
        } else {
            self.event(|e| matches!(e, HciEvent::IoCapabilityRequest(_)).then_some(()));
            self.command(w::IoCapabilityRequestReply {
                bd_addr,
                io_capability: 3,
                oob_data_present: 0,
                authentication_requirements: 0x04,
            });
            self.event(|e| matches!(e, HciEvent::UserConfirmationRequest(_)).then_some(()));
            self.command(w::UserConfirmationRequestReply { bd_addr });
            assert_eq!(
                self.action(),
                HostAction::Secure {
                    remote: bd_addr,
                    level: SecurityLevel::Medium
                }
            );
            assert!(
                self.frames.is_empty(),
                "no channel before the link is secure"
            );
            self.link(|l| l.handle_secured(bd_addr, true));
            let key = self.event(|e| match e {
                HciEvent::LinkKeyNotification(n) => Some(n.link_key),
                _ => None,
            });
            assert_eq!(
                self.actions.pop_front(),
                Some(HostAction::StoreKey {
                    remote: bd_addr,
                    key: Some(key)
                })
            );
        }
        let encrypted = self.event(|e| match e {
            HciEvent::EncryptionChange(c) => Some(c.encryption_enabled),
            _ => None,
        });
        assert_eq!(encrypted, 1);
        // Linux reads the key size before it accepts a channel; the offer waits for that.
        assert!(
            self.frames.is_empty(),
            "no channel offered before the key size is read"
        );
        self.command(w::ReadEncryptionKeySize {
            connection_handle: handle,
        });
        let req = self.signal_in();
        (handle, socket, req)
    }
}

#[test]
fn an_incoming_connection_pages_the_guest_and_opens_a_channel_it_accepts() {
    let mut bed = Bed::new(BTreeMap::new());
    let (h, socket, req) = bed.incoming(0x1021);
    let L2capSignal::ConnectionRequest { psm, scid: ours } = req.signal else {
        panic!("expected a connection request, got {req:?}");
    };
    assert_eq!(psm, 0x1021);
    assert!(
        bed.actions.is_empty(),
        "nothing read before the guest accepts"
    );
    bed.signal(
        h,
        req.identifier,
        L2capSignal::ConnectionResponse {
            dcid: 0x0050,
            scid: ours,
            result: ConnectionResult::Success,
            status: 0,
        },
    );
    let our_config = bed.signal_in();
    assert!(matches!(
        our_config.signal,
        L2capSignal::ConfigurationRequest { dcid: 0x0050, .. }
    ));
    bed.signal(
        h,
        3,
        L2capSignal::ConfigurationRequest {
            dcid: ours,
            flags: 0,
            options: Vec::new(),
        },
    );
    assert!(matches!(
        bed.signal_in().signal,
        L2capSignal::ConfigurationResponse {
            scid: 0x0050,
            result: config_result::SUCCESS,
            ..
        }
    ));
    bed.signal(
        h,
        our_config.identifier,
        L2capSignal::ConfigurationResponse {
            scid: ours,
            flags: 0,
            result: config_result::SUCCESS,
            options: Vec::new(),
        },
    );
    assert_eq!(bed.action(), HostAction::Read { socket });
    let info = bed.adapter.link().channels();
    assert_eq!(
        (info[0].psm, info[0].open, info[0].incoming),
        (0x1021, true, true)
    );
    // Data both ways, as on a channel the guest opened.
    bed.actions.clear();
    bed.send_frame(h, ours, b"hello");
    assert_eq!(
        bed.action(),
        HostAction::Send {
            socket,
            sdu: b"hello".to_vec()
        }
    );
    bed.link(|l| l.handle_received(socket, b"world"));
    let frame = bed.frames.pop_front().expect("data frame");
    assert_eq!(BasicHeader::parse(&frame).unwrap().cid, 0x0050);
    assert_eq!(&frame[4..], b"world");
}

#[test]
fn an_incoming_channel_the_guest_refuses_closes_its_socket() {
    let mut bed = Bed::new(BTreeMap::new());
    let (h, socket, req) = bed.incoming(0x1023);
    let L2capSignal::ConnectionRequest { scid: ours, .. } = req.signal else {
        panic!("expected a connection request, got {req:?}");
    };
    bed.signal(
        h,
        req.identifier,
        L2capSignal::ConnectionResponse {
            dcid: 0,
            scid: ours,
            result: ConnectionResult::PsmNotSupported,
            status: 0,
        },
    );
    assert_eq!(bed.action(), HostAction::Close { socket });
    assert!(bed.adapter.link().channels().is_empty());
}

#[test]
fn an_incoming_connection_the_guest_never_takes_is_given_up() {
    let mut bed = Bed::new(BTreeMap::new());
    // Page scan off: the guest's controller never reports the page.
    let now = bed.now;
    let socket = bed.link(|l| l.handle_incoming(now, addr(REMOTE), 0x1025, 672));
    assert!(bed.actions.is_empty());
    let deadline = bed.adapter.poll_timeout().expect("a deadline");
    assert!(deadline > bed.now);
    bed.now = deadline;
    bed.adapter.handle_timeout(deadline);
    bed.drain();
    assert_eq!(bed.actions.pop_front(), Some(HostAction::Close { socket }));
    assert!(bed.adapter.link().channels().is_empty());
}

#[test]
fn a_remote_that_gives_up_before_the_guest_accepts_leaves_no_channel() {
    let mut bed = Bed::new(BTreeMap::new());
    let (h, socket, req) = bed.incoming(0x1027);
    let L2capSignal::ConnectionRequest { scid: ours, .. } = req.signal else {
        panic!("expected a connection request, got {req:?}");
    };
    bed.link(|l| l.handle_closed(socket));
    assert_eq!(bed.action(), HostAction::Close { socket });
    // The guest accepts late: it is told to disconnect the channel nobody serves.
    bed.signal(
        h,
        req.identifier,
        L2capSignal::ConnectionResponse {
            dcid: 0x0060,
            scid: ours,
            result: ConnectionResult::Success,
            status: 0,
        },
    );
    assert_eq!(
        bed.signal_in().signal,
        L2capSignal::DisconnectionRequest {
            dcid: 0x0060,
            scid: ours
        }
    );
}

#[test]
fn an_incoming_connection_authenticates_with_the_stored_proxy_key() {
    let mut keys = BTreeMap::new();
    keys.insert(addr(REMOTE), [7u8; 16]);
    let mut bed = Bed::new(keys);
    let (_, _, req) = bed.incoming(0x1029);
    assert!(matches!(
        req.signal,
        L2capSignal::ConnectionRequest { psm: 0x1029, .. }
    ));
    assert!(
        !bed.actions
            .iter()
            .any(|a| matches!(a, HostAction::Secure { .. } | HostAction::StoreKey { .. })),
        "no pairing with a known key: {:?}",
        bed.actions
    );
}

#[test]
fn an_incoming_channel_is_offered_to_a_guest_that_never_reads_the_key_size() {
    let mut bed = Bed::new(BTreeMap::new());
    bed.command(w::WriteScanEnable { scan_enable: 0x02 });
    let now = bed.now;
    bed.link(|l| l.handle_incoming(now, addr(REMOTE), 0x102b, 672));
    let bd_addr = addr(REMOTE);
    bed.command(w::AcceptConnectionRequest { bd_addr, role: 1 });
    bed.command(w::IoCapabilityRequestReply {
        bd_addr,
        io_capability: 3,
        oob_data_present: 0,
        authentication_requirements: 0x04,
    });
    bed.command(w::UserConfirmationRequestReply { bd_addr });
    bed.link(|l| l.handle_secured(bd_addr, true));
    assert!(bed.frames.is_empty());
    let deadline = bed.adapter.poll_timeout().expect("the key size deadline");
    bed.now = deadline;
    bed.adapter.handle_timeout(deadline);
    assert!(matches!(
        bed.signal_in().signal,
        L2capSignal::ConnectionRequest { psm: 0x102b, .. }
    ));
}

#[test]
fn advertising_data_splits_between_structures_into_data_and_scan_response() {
    let flags = [2u8, 0x01, 0x06];
    let name = {
        let mut n = vec![21u8, 0x09];
        n.extend_from_slice(b"a remote with a name");
        n
    };
    let uuids = [
        17u8, 0x07, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
    ];
    let all = [&flags[..], &name, &uuids].concat();
    let (data, response) = split_advertising_data(&all);
    assert_eq!(data, [&flags[..], &name].concat());
    assert_eq!(response, uuids);
    // A structure running past the end is dropped, not read beyond.
    let (data, response) = split_advertising_data(&[2, 0x01, 0x06, 9, 0x09, b'x']);
    assert_eq!((data, response), (flags.to_vec(), Vec::new()));
}

#[test]
fn an_le_scan_of_the_guest_reports_what_the_host_found() {
    let mut bed = Bed::new(BTreeMap::new());
    bed.command(w::LeSetScanEnable {
        le_scan_enable: 1,
        filter_duplicates: 0,
    });
    assert_eq!(bed.action(), HostAction::LeScan);
    let found = addr("C0:11:22:33:44:55");
    bed.link(|l| l.handle_le_found(found, 1, &[2, 0x01, 0x06, 4, 0x09, b'a', b'b', b'c']));
    let report = bed.event(|e| match e {
        HciEvent::LeMeta(m) => Some(format!("{m:?}")),
        _ => None,
    });
    assert!(report.contains("AdvertisingReport"), "{report}");
    bed.link(|l| l.handle_le_scan_complete());
}

/// The guest's SDU on one channel, as one ACL packet (it must fit the 64-byte fragments).
fn one_fragment(handle: u16, cid: u16, payload: &[u8]) -> Vec<u8> {
    let frame = BasicHeader::frame(cid, payload);
    AclRepr {
        handle,
        packet_boundary: PacketBoundary::FirstNonFlushable,
        broadcast_flag: 0,
        data: &frame,
    }
    .to_packet()
}

#[test]
fn a_sockets_own_work_is_taken_in_order_and_completions_share_an_event() {
    let mut bed = Bed::new(BTreeMap::new());
    let h = bed.connect();
    let (cid_a, a) = bed.open_channel(h, 0x1011, 0x0040, 672);
    let (cid_b, b) = bed.open_channel(h, 0x1013, 0x0041, 672);
    bed.completed_packets();
    bed.actions.clear();
    for (cid, byte) in [(cid_a, 1u8), (cid_b, 2), (cid_a, 3)] {
        let packet = one_fragment(h, cid, &[byte; 10]);
        bed.adapter.handle_acl(bed.now, &packet).unwrap();
    }
    let send = |socket, byte| HostAction::Send {
        socket,
        sdu: vec![byte; 10],
    };
    assert_eq!(bed.adapter.take_socket_actions(a), [send(a, 1), send(a, 3)]);
    assert!(bed.adapter.take_socket_actions(a).is_empty());
    assert_eq!(bed.adapter.poll_action(), Some(send(b, 2)));
    assert_eq!(bed.adapter.poll_action(), None);

    // Three packets done while the guest's host takes nothing: one event counts them all.
    bed.adapter.with_link(bed.now, |l| {
        l.handle_sent(a);
        l.handle_sent(b);
        l.handle_sent(a);
    });
    bed.drain();
    let completions: Vec<u16> = bed
        .events
        .iter()
        .filter_map(|e| match e {
            HciEvent::NumberOfCompletedPackets(p) => Some(p.handles.0[0].num_completed_packets),
            _ => None,
        })
        .collect();
    assert_eq!(completions, [3]);
}
