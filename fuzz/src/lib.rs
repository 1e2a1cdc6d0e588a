//! periwire's fuzz targets, one function per decoder that takes bytes from a peer. The
//! libFuzzer binaries in `fuzz_targets/` call them; `tests/corpus.rs` replays the corpus
//! through them as ordinary tests, so the targets build and run on every test run.
//!
//! A target fails (panics) only where periwire would: a decoder that panics, or a property
//! that must hold for any input (what is decoded encodes back to what decodes the same, a
//! malformed request gets its failure reply, replies the server builds decode on the client).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::sync::OnceLock;

use periwire_hci::wire::{
    AclPacket, CommandPacket, EventPacket, H4Decoder, H4Limits, HciCommand, HciEvent, PacketType,
};
use periwire_server::front_door::{classify, Protocol};
use periwire_server::secure::{tls, Identity, TrustStore};
use periwire_usb::storage::bot::CommandBlockWrapper;
use periwire_usb::storage::{Identity as ScsiIdentity, LogicalUnit, MemoryStore};
use periwire_wire::usbip::{
    encode_op_failure, Direction, Event, Limits, OpReply, OpRequest, OpStatus, PendingUrb,
    ServerConnection, UrbCommand, UrbDone, UrbReply,
};

/// The TOML configuration of `periwire serve`, compiled from the binary's own source: the
/// binary crate has no library to link.
#[allow(dead_code, missing_docs)]
#[path = "../../crates/periwire/src/config.rs"]
mod config;

/// The operation phase, both sides: requests as the server decodes them (and the failure
/// reply a malformed one gets), replies as the client decodes them.
pub fn usbip_op(data: &[u8]) {
    match OpRequest::decode(data) {
        Ok(Some((request, n))) => {
            assert!(n <= data.len());
            let mut out = Vec::new();
            request.encode(&mut out);
            assert_eq!(OpRequest::decode_exact(&out), Ok(request));
        }
        Ok(None) => {}
        Err(_) => {
            let mut out = Vec::new();
            if encode_op_failure(data, OpStatus::Error, &mut out) {
                let reply = OpReply::decode(&out, &Limits::default());
                assert!(
                    matches!(reply, Ok(Some((OpReply::Import(Err(_)), 8))) | Err(_)),
                    "a failure reply reads as a failure: {reply:?}"
                );
            }
        }
    }
    if let Ok(Some((reply, _))) = OpReply::decode(data, &Limits::default()) {
        let mut out = Vec::new();
        reply.encode(&mut out);
        let again = OpReply::decode(&out, &Limits::default());
        assert!(
            matches!(again, Ok(Some(_))),
            "{reply:?} re-encoded: {again:?}"
        );
    }
}

/// The URB phase: a stream of client commands as the server decodes them, fed to the
/// server's state machine, whose replies the client's decoder must accept; and server
/// replies as the client decodes them.
pub fn usbip_urb(data: &[u8]) {
    let limits = Limits {
        max_transfer_length: 1 << 16,
        max_iso_packets: 64,
        max_devices: 16,
    };
    let devid = 0x0001_0002;
    let mut connection = ServerConnection::new(devid);
    // What the client would remember: the URBs in flight, by sequence number (a number is
    // free again once its URB is answered or unlinked).
    let mut pending = std::collections::BTreeMap::new();
    let mut at = 0;
    while let Ok(Some((command, n))) = UrbCommand::decode(&data[at..], &limits) {
        at += n;
        let mut out = Vec::new();
        command.encode(&mut out);
        let again = UrbCommand::decode_exact(&out, &limits).expect("what decoded encodes back");
        let mut out2 = Vec::new();
        again.encode(&mut out2);
        assert_eq!(out, out2, "encoding is stable");
        match command {
            UrbCommand::Submit(s) => {
                if connection.handle_submit(&s.header).is_ok() {
                    let urb = PendingUrb {
                        direction: s.header.direction,
                        transfer_buffer_length: s.header.transfer_buffer_length,
                    };
                    pending.insert(s.header.seqnum, urb);
                }
            }
            UrbCommand::Unlink(u) => {
                let _ = connection.handle_unlink(&u);
            }
        }
        while let Some(Event::Cancel { seqnum }) = connection.poll_event() {
            pending.remove(&seqnum);
        }
    }
    // Complete what is in flight: IN with as many bytes as asked, so payloads are cut.
    for (&seqnum, &urb) in &pending {
        let done = match urb.direction {
            Direction::In => UrbDone {
                data: vec![0x5a; urb.transfer_buffer_length as usize + 3],
                actual_length: urb.transfer_buffer_length,
                ..UrbDone::default()
            },
            Direction::Out => UrbDone::failed(-32),
        };
        connection.handle_completion(seqnum, done);
    }
    let mut wire = Vec::new();
    while connection.poll_transmit(&mut wire) {}
    let mut at = 0;
    while at < wire.len() {
        let lookup = |s: u32| pending.get(&s).copied();
        let (_, n) = UrbReply::decode(&wire[at..], &limits, lookup)
            .expect("the server's replies decode")
            .expect("whole replies");
        at += n;
    }
    // Replies from a server, for URBs of both directions.
    let guess = |seqnum: u32| {
        Some(PendingUrb {
            direction: if seqnum & 1 == 1 {
                Direction::In
            } else {
                Direction::Out
            },
            transfer_buffer_length: seqnum & 0xffff,
        })
    };
    let _ = UrbReply::decode(data, &limits, guess);
}

/// HCI over H4 as a host sends it: the framing decoder (fed in two pieces), then each packet
/// parsed by its type.
pub fn hci_h4(data: &[u8]) {
    let mut decoder = H4Decoder::new(H4Limits::default());
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    decoder.push(&data[..split]);
    decoder.push(&data[split..]);
    while let Some(next) = decoder.next_packet() {
        let Ok(packet) = next else { continue };
        match packet.packet_type {
            PacketType::Command => {
                if let Ok(p) = CommandPacket::new_checked(&packet.bytes[..]) {
                    let _ = HciCommand::parse(&p);
                }
            }
            PacketType::Event => {
                if let Ok(p) = EventPacket::new_checked(&packet.bytes[..]) {
                    let _ = HciEvent::parse(&p);
                }
            }
            PacketType::Acl => {
                if let Ok(p) = AclPacket::new_checked(&packet.bytes[..]) {
                    let _ = periwire_hci::l2cap::BasicHeader::parse(p.data());
                }
            }
            PacketType::Sco | PacketType::Iso => {}
        }
    }
}

/// USB mass storage: a Bulk-Only CBW, then SCSI commands (16 bytes each) run against a
/// small in-memory disk.
pub fn scsi(data: &[u8]) {
    let _ = CommandBlockWrapper::parse(data.get(..31).unwrap_or(data));
    let mut unit = LogicalUnit::new(ScsiIdentity {
        vendor: "periwire".into(),
        product: "fuzz".into(),
        revision: "0001".into(),
        serial: "000000000001".into(),
    });
    let mut store = MemoryStore::new(64);
    for cdb in data.chunks(16) {
        let mut block = [0u8; 16];
        block[..cdb.len()].copy_from_slice(cdb);
        let _ = unit.execute(&block, &mut store);
    }
}

/// `periwire serve`'s configuration file.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = toml::from_str::<config::Config>(text) {
        let _ = c.check();
    }
}

/// The server's identity for [`front_door`], made once.
fn server_identity() -> &'static Identity {
    static IDENTITY: OnceLock<(Identity, tempfile::TempDir)> = OnceLock::new();
    let (identity, _) = IDENTITY.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let id = Identity::load_or_create(dir.path(), "fuzz").expect("identity");
        (id, dir)
    });
    identity
}

/// The front door: the first byte picks the protocol; TLS bytes go into the server's rustls
/// session with the pinned-client verifier, USB/IP bytes into the operation-phase decoder.
pub fn front_door(data: &[u8]) {
    let Some(&first) = data.first() else {
        return;
    };
    match classify(first) {
        Protocol::PlainUsbip => usbip_op(data),
        Protocol::Tls => {
            let (config, _) =
                tls::server_config(server_identity(), TrustStore::default()).expect("config");
            let mut session = rustls::ServerConnection::new(config).expect("session");
            let mut rest = data;
            while !rest.is_empty() {
                match session.read_tls(&mut rest) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if session.process_new_packets().is_err() {
                            break;
                        }
                    }
                }
            }
        }
    }
}
