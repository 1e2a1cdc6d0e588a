//! Wire tests over captured bytes (deconstruct, construct, parse, emit) and property tests.

use super::*;
use proptest::prelude::*;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("test vector"))
        .collect()
}

/// Splits an H4 capture into its single packet, checking the indicator.
fn one_packet(h4: &[u8], ty: PacketType) -> Vec<u8> {
    let mut d = H4Decoder::new(H4Limits {
        accept_events: true,
        ..H4Limits::controller()
    });
    d.push(h4);
    let p = d.next_packet().expect("a packet").expect("no garbage");
    assert_eq!(p.packet_type, ty);
    assert!(d.next_packet().is_none());
    p.bytes
}

// HCI_Reset as every host sends it, and the controller's Command Complete.
const RESET: &str = "01 03 0c 00";
const RESET_COMPLETE: &str = "04 0e 04 01 03 0c 00";

#[test]
fn reset_command_deconstruct() {
    let bytes = one_packet(&hex(RESET), PacketType::Command);
    let p = CommandPacket::new_checked(&bytes[..]).unwrap();
    assert_eq!(p.opcode(), Opcode(0x0c03));
    assert_eq!(p.opcode().ogf(), 0x03);
    assert_eq!(p.opcode().ocf(), 0x0003);
    assert_eq!(p.parameter_total_length(), 0);
    assert_eq!(p.parameters(), &[] as &[u8]);
}

#[test]
fn reset_command_parse_emit() {
    let bytes = one_packet(&hex(RESET), PacketType::Command);
    let cmd = HciCommand::parse(&CommandPacket::new_checked(&bytes[..]).unwrap()).unwrap();
    assert_eq!(cmd, HciCommand::Reset(Reset {}));
    assert_eq!(cmd.to_packet(), bytes);
    assert_eq!(Reset::CODE, Opcode::new(0x03, 0x0003));
}

#[test]
fn reset_complete_parse_emit() {
    let bytes = one_packet(&hex(RESET_COMPLETE), PacketType::Event);
    let p = EventPacket::new_checked(&bytes[..]).unwrap();
    assert_eq!(p.event_code(), 0x0e);
    assert_eq!(p.parameter_total_length(), 4);
    let ev = HciEvent::parse(&p).unwrap();
    let HciEvent::CommandComplete(cc) = &ev else {
        panic!("{ev:?}")
    };
    assert_eq!(cc.num_hci_command_packets, 1);
    assert_eq!(cc.command_opcode, Reset::CODE);
    assert_eq!(cc.status(), Some(ErrorCode::Success));
    // construct
    let built = HciEvent::command_complete(
        Reset::CODE,
        StatusReturn {
            status: ErrorCode::Success,
        }
        .to_bytes(),
    );
    assert_eq!(built, ev);
    assert_eq!(built.to_packet(), bytes);
}

#[test]
fn read_bd_addr_complete() {
    // Captured from a controller with address 00:1A:7D:DA:71:13.
    let bytes = one_packet(
        &hex("04 0e 0a 01 09 10 00 13 71 da 7d 1a 00"),
        PacketType::Event,
    );
    let ev = HciEvent::parse(&EventPacket::new_checked(&bytes[..]).unwrap()).unwrap();
    let HciEvent::CommandComplete(cc) = ev else {
        panic!()
    };
    assert_eq!(cc.command_opcode, ReadBdAddr::CODE);
    let ret = ReadBdAddrReturn::parse(&cc.return_parameters.0).unwrap();
    assert_eq!(ret.bd_addr.to_string(), "00:1A:7D:DA:71:13");
    assert_eq!(BdAddr::parse_str("00:1A:7D:DA:71:13"), Some(ret.bd_addr));
}

#[test]
fn inquiry_command() {
    // BlueZ's general inquiry: GIAC 0x9E8B33, 10.24 s, unlimited responses.
    let bytes = one_packet(&hex("01 01 04 05 33 8b 9e 08 00"), PacketType::Command);
    let cmd = HciCommand::parse(&CommandPacket::new_checked(&bytes[..]).unwrap()).unwrap();
    assert_eq!(
        cmd,
        HciCommand::Inquiry(Inquiry {
            lap: [0x33, 0x8b, 0x9e],
            inquiry_length: 8,
            num_responses: 0
        })
    );
    assert_eq!(cmd.to_packet(), bytes);
}

#[test]
fn command_status() {
    let bytes = one_packet(&hex("04 0f 04 00 01 01 04"), PacketType::Event);
    let ev = HciEvent::parse(&EventPacket::new_checked(&bytes[..]).unwrap()).unwrap();
    assert_eq!(
        ev,
        HciEvent::command_status(ErrorCode::Success, Inquiry::CODE)
    );
    assert_eq!(ev.to_packet(), bytes);
}

#[test]
fn le_connection_complete() {
    let bytes = one_packet(
        &hex("04 3e 13 01 00 40 00 00 01 c0 ee dd cc bb aa 18 00 00 00 f4 01 00"),
        PacketType::Event,
    );
    let ev = HciEvent::parse(&EventPacket::new_checked(&bytes[..]).unwrap()).unwrap();
    let expected = HciEvent::le_meta(LeConnectionComplete {
        status: ErrorCode::Success,
        connection_handle: 0x0040,
        role: 0,
        peer_address_type: 1,
        peer_address: BdAddr::parse_str("AA:BB:CC:DD:EE:C0").unwrap(),
        connection_interval: 0x18,
        peripheral_latency: 0,
        supervision_timeout: 0x1f4,
        central_clock_accuracy: 0,
    });
    assert_eq!(ev, expected);
    assert_eq!(expected.to_packet(), bytes);
}

#[test]
fn le_advertising_report() {
    // One ADV_IND from a random address with flags + complete local name "pw".
    let bytes = one_packet(
        &hex("04 3e 13 02 01 00 01 c0 ee dd cc bb aa 07 02 01 06 03 09 70 77 c5"),
        PacketType::Event,
    );
    let ev = HciEvent::parse(&EventPacket::new_checked(&bytes[..]).unwrap()).unwrap();
    let HciEvent::LeMeta(LeMeta {
        event: LeMetaEvent::LeAdvertisingReport(r),
    }) = &ev
    else {
        panic!("{ev:?}")
    };
    assert_eq!(r.reports.0.len(), 1);
    assert_eq!(r.reports.0[0].data.0, hex("02 01 06 03 09 70 77"));
    assert_eq!(r.reports.0[0].rssi, -59);
    assert_eq!(ev.to_packet(), bytes);
}

#[test]
fn disconnection_and_completed_packets() {
    let bytes = one_packet(&hex("04 05 04 00 40 00 13"), PacketType::Event);
    let ev = HciEvent::parse(&EventPacket::new_checked(&bytes[..]).unwrap()).unwrap();
    assert_eq!(
        ev,
        HciEvent::DisconnectionComplete(DisconnectionComplete {
            status: ErrorCode::Success,
            connection_handle: 0x40,
            reason: ErrorCode::RemoteUserTerminatedConnection
        })
    );
    let bytes = one_packet(&hex("04 13 05 01 40 00 01 00"), PacketType::Event);
    let ev = HciEvent::parse(&EventPacket::new_checked(&bytes[..]).unwrap()).unwrap();
    assert_eq!(
        ev,
        HciEvent::NumberOfCompletedPackets(NumberOfCompletedPackets {
            handles: Counted(vec![CompletedPackets {
                connection_handle: 0x40,
                num_completed_packets: 1
            }])
        })
    );
    assert_eq!(ev.to_packet(), bytes);
}

#[test]
fn inquiry_result_with_rssi_and_link_key() {
    let bytes = one_packet(
        &hex("04 22 0f 01 13 71 da 7d 1a 00 01 00 0c 01 1c 00 00 c4"),
        PacketType::Event,
    );
    let ev = HciEvent::parse(&EventPacket::new_checked(&bytes[..]).unwrap()).unwrap();
    let HciEvent::InquiryResultWithRssi(r) = &ev else {
        panic!("{ev:?}")
    };
    assert_eq!(r.responses.0[0].class_of_device, ClassOfDevice(0x1c010c));
    assert_eq!(r.responses.0[0].rssi, -60);
    assert_eq!(ev.to_packet(), bytes);

    let mut lkn = hex("04 18 17 13 71 da 7d 1a 00");
    lkn.extend(0u8..16);
    lkn.push(0x04);
    let bytes = one_packet(&lkn, PacketType::Event);
    let ev = HciEvent::parse(&EventPacket::new_checked(&bytes[..]).unwrap()).unwrap();
    let HciEvent::LinkKeyNotification(n) = &ev else {
        panic!("{ev:?}")
    };
    assert_eq!(n.key_type, 4);
    assert_eq!(n.link_key[15], 15);
    assert_eq!(ev.to_packet(), bytes);
}

#[test]
fn acl_deconstruct_construct() {
    // L2CAP signalling on LE-U: handle 0x040, first automatically flushable.
    let bytes = one_packet(
        &hex("02 40 20 09 00 05 00 05 00 0a 01 02 00 03"),
        PacketType::Acl,
    );
    let p = AclPacket::new_checked(&bytes[..]).unwrap();
    assert_eq!(p.handle(), 0x040);
    assert_eq!(p.packet_boundary(), PacketBoundary::FirstFlushable);
    assert_eq!(p.broadcast_flag(), 0);
    assert_eq!(p.data_total_length(), 9);
    let repr = AclRepr::parse(&p);
    assert_eq!(repr.data.len(), 9);
    assert_eq!(repr.to_packet(), bytes);
    assert_eq!(repr.buffer_len(), bytes.len());
}

#[test]
fn sco_and_iso_round_trip() {
    let bytes = one_packet(&hex("03 01 00 03 aa bb cc"), PacketType::Sco);
    let r = ScoRepr::parse_bytes(&bytes).unwrap();
    assert_eq!((r.handle, r.data), (1, &[0xaa, 0xbb, 0xcc][..]));
    let mut out = Vec::new();
    r.emit(&mut out);
    assert_eq!(out, bytes);

    let bytes = one_packet(&hex("05 60 20 02 00 01 02"), PacketType::Iso);
    let r = IsoRepr::parse_bytes(&bytes).unwrap();
    assert_eq!((r.handle, r.pb_flag, r.ts_flag), (0x060, 2, false));
    let mut out = Vec::new();
    r.emit(&mut out);
    assert_eq!(out, bytes);
}

#[test]
fn malformed_packets_are_errors() {
    assert_eq!(
        CommandPacket::new_checked(&[0x03, 0x0c][..]).unwrap_err(),
        PacketError::Truncated { have: 2, need: 3 }
    );
    assert_eq!(
        CommandPacket::new_checked(&[0x03, 0x0c, 0x01][..]).unwrap_err(),
        PacketError::Truncated { have: 3, need: 4 }
    );
    assert_eq!(
        EventPacket::new_checked(&[0x0e, 0x00, 0x00][..]).unwrap_err(),
        PacketError::TrailingBytes(1)
    );
    // Write Scan Enable with no parameter.
    assert_eq!(
        HciCommand::parse_parameters(WriteScanEnable::CODE, &[]),
        Err(ParamError::Truncated)
    );
    assert_eq!(
        HciCommand::parse_parameters(WriteScanEnable::CODE, &[3, 0]),
        Err(ParamError::TrailingBytes(1))
    );
}

#[test]
fn unknown_opcode_and_event_round_trip() {
    // A vendor command (OGF 0x3f) and a vendor event (0xff).
    let cmd = hex("01 fc 03 01 02 03");
    let parsed = HciCommand::parse(&CommandPacket::new_checked(&cmd[..]).unwrap()).unwrap();
    assert_eq!(
        parsed,
        HciCommand::Unknown {
            opcode: Opcode(0xfc01),
            parameters: vec![1, 2, 3]
        }
    );
    assert_eq!(parsed.to_packet(), cmd);
    let ev = hex("ff 02 aa bb");
    let parsed = HciEvent::parse(&EventPacket::new_checked(&ev[..]).unwrap()).unwrap();
    assert_eq!(parsed.event_code(), 0xff);
    assert_eq!(parsed.to_packet(), ev);
}

#[test]
fn h4_resynchronises_after_garbage() {
    let mut stream = hex("00 ff 42 02 40 00 ff ff"); // junk, then an ACL header claiming 65535
    stream.extend(hex(RESET));
    let mut d = H4Decoder::new(H4Limits::controller());
    d.push(&stream);
    assert_eq!(
        d.next_packet(),
        Some(Err(H4Error::Resynchronised { skipped: 8 }))
    );
    let p = d.next_packet().unwrap().unwrap();
    assert_eq!(p.packet_type, PacketType::Command);
    assert_eq!(p.bytes, hex("03 0c 00"));
    assert_eq!(d.next_packet(), None);
    assert_eq!(d.buffered(), 0);
}

#[test]
fn h4_waits_for_whole_packets() {
    let bytes = hex("01 13 0c 04 70 77 00 00");
    let mut d = H4Decoder::new(H4Limits::controller());
    for (i, b) in bytes.iter().enumerate() {
        assert_eq!(d.next_packet(), None, "at {i}");
        d.push(&[*b]);
    }
    let p = d.next_packet().unwrap().unwrap();
    assert_eq!(p.bytes, bytes[1..]);
    // A controller-side decoder refuses events from the host: it skips the event indicator,
    // code and length, and finds the Reset command inside the Command Complete.
    d.push(&hex(RESET_COMPLETE));
    assert_eq!(
        d.next_packet(),
        Some(Err(H4Error::Resynchronised { skipped: 3 }))
    );
    assert_eq!(d.next_packet().unwrap().unwrap().bytes, hex("03 0c 00"));
}

fn any_packet() -> impl Strategy<Value = H4Packet> {
    prop_oneof![
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..255)).prop_map(|(op, p)| {
            let mut b = op.to_le_bytes().to_vec();
            b.push(p.len() as u8);
            b.extend(p);
            H4Packet {
                packet_type: PacketType::Command,
                bytes: b,
            }
        }),
        (
            0u16..0x0fff,
            0u8..4,
            proptest::collection::vec(any::<u8>(), 0..1100)
        )
            .prop_map(|(h, pb, d)| H4Packet {
                packet_type: PacketType::Acl,
                bytes: AclRepr {
                    handle: h,
                    packet_boundary: PacketBoundary::from_bits(pb),
                    broadcast_flag: 0,
                    data: &d,
                }
                .to_packet(),
            }),
    ]
}

proptest! {
    #[test]
    fn h4_arbitrary_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
        let mut d = H4Decoder::new(H4Limits::controller());
        let mut total = 0usize;
        let mut accounted = 0usize;
        for c in &chunks {
            total += c.len();
            d.push(c);
            while let Some(item) = d.next_packet() {
                match item {
                    Ok(p) => {
                        accounted += 1 + p.bytes.len();
                        match p.packet_type {
                            PacketType::Command => {
                                let view = CommandPacket::new_checked(&p.bytes[..]);
                                prop_assert!(view.is_ok());
                                if let Ok(view) = view {
                                    let _ = HciCommand::parse(&view);
                                }
                            }
                            PacketType::Acl => prop_assert!(AclRepr::parse_bytes(&p.bytes).is_ok()),
                            PacketType::Sco => prop_assert!(ScoRepr::parse_bytes(&p.bytes).is_ok()),
                            PacketType::Iso => prop_assert!(IsoRepr::parse_bytes(&p.bytes).is_ok()),
                            PacketType::Event => prop_assert!(false, "event accepted"),
                        }
                    }
                    Err(H4Error::Resynchronised { skipped }) => accounted += skipped,
                }
            }
            prop_assert!(d.buffered() <= d.limits().max_frame_len());
        }
        prop_assert_eq!(accounted + d.buffered(), total);
    }

    #[test]
    fn h4_recovers_packets_after_garbage(
        garbage in proptest::collection::vec(prop_oneof![Just(0u8), 6u8..=255], 0..64),
        packets in proptest::collection::vec(any_packet(), 1..8),
        split in 1usize..64,
    ) {
        let mut stream = garbage.clone();
        for p in &packets {
            p.emit(&mut stream);
        }
        let mut d = H4Decoder::new(H4Limits::controller());
        let mut got = Vec::new();
        for chunk in stream.chunks(split) {
            d.push(chunk);
            while let Some(item) = d.next_packet() {
                if let Ok(p) = item {
                    got.push(p);
                }
            }
        }
        prop_assert_eq!(got, packets);
    }

    #[test]
    fn known_commands_round_trip(buf in proptest::collection::vec(any::<u8>(), 0..300), idx in any::<prop::sample::Index>()) {
        let opcode = HciCommand::KNOWN[idx.index(HciCommand::KNOWN.len())];
        for n in 0..=buf.len() {
            if let Ok(cmd) = HciCommand::parse_parameters(opcode, &buf[..n]) {
                let mut out = Vec::new();
                cmd.emit_parameters(&mut out);
                prop_assert_eq!(&out[..], &buf[..n]);
                prop_assert_eq!(cmd.opcode(), opcode);
            }
        }
    }

    #[test]
    fn known_events_round_trip(buf in proptest::collection::vec(any::<u8>(), 0..256), idx in any::<prop::sample::Index>()) {
        let code = HciEvent::KNOWN[idx.index(HciEvent::KNOWN.len())];
        for n in 0..=buf.len() {
            if let Ok(ev) = HciEvent::parse_parameters(code, &buf[..n]) {
                let mut out = Vec::new();
                ev.emit_parameters(&mut out);
                prop_assert_eq!(&out[..], &buf[..n]);
            }
        }
    }

    #[test]
    fn arbitrary_packets_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(p) = CommandPacket::new_checked(&bytes[..]) {
            if let Ok(c) = HciCommand::parse(&p) {
                prop_assert_eq!(c.to_packet(), bytes.clone());
            }
        }
        if let Ok(p) = EventPacket::new_checked(&bytes[..]) {
            if let Ok(e) = HciEvent::parse(&p) {
                prop_assert_eq!(e.to_packet(), bytes.clone());
            }
        }
        let _ = AclRepr::parse_bytes(&bytes);
        let _ = ScoRepr::parse_bytes(&bytes);
        let _ = IsoRepr::parse_bytes(&bytes);
    }
}
