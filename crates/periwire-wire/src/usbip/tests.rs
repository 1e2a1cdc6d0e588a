use super::*;

fn record() -> DeviceRecord {
    DeviceRecord {
        path: "/sys/devices/periwire/1-1".into(),
        busid: BusId::new("1-1").unwrap(),
        busnum: 1,
        devnum: 2,
        speed: Speed::High,
        id_vendor: 0x1d6b,
        id_product: 0x0104,
        bcd_device: 0x0100,
        device_class: 0,
        device_subclass: 0,
        device_protocol: 0,
        configuration_value: 1,
        num_configurations: 1,
        num_interfaces: 1,
    }
}

#[test]
fn devlist_request_bytes() {
    let mut out = Vec::new();
    OpRequest::Devlist.encode(&mut out);
    assert_eq!(out, [0x01, 0x11, 0x80, 0x05, 0, 0, 0, 0]);
    assert_eq!(OpRequest::decode_exact(&out), Ok(OpRequest::Devlist));
}

#[test]
fn import_reply_is_320_bytes_and_round_trips() {
    let mut out = Vec::new();
    OpReply::Import(Ok(record())).encode(&mut out);
    assert_eq!(out.len(), 320);
    assert_eq!(&out[..8], &[0x01, 0x11, 0x00, 0x03, 0, 0, 0, 0]);
    assert_eq!(&out[8 + 256..8 + 256 + 4], b"1-1\0");
    let back = OpReply::decode_exact(&out, &Limits::default()).unwrap();
    assert_eq!(back, OpReply::Import(Ok(record())));
}

#[test]
fn refused_import_is_8_bytes() {
    let mut out = Vec::new();
    OpReply::Import(Err(OpStatus::DeviceBusy)).encode(&mut out);
    assert_eq!(out, [0x01, 0x11, 0x00, 0x03, 0, 0, 0, 2]);
}

#[test]
fn a_malformed_request_gets_the_failure_reply_of_its_code() {
    // An import whose bus id fills its 32 bytes with no NUL.
    let mut import = vec![0x01, 0x11, 0x80, 0x03, 0, 0, 0, 0];
    import.extend_from_slice(&[b'1'; BUSID_LEN]);
    assert_eq!(OpRequest::decode(&import), Err(WireError::InvalidBusId));
    let mut out = Vec::new();
    assert!(encode_op_failure(&import, OpStatus::Error, &mut out));
    assert_eq!(out, [0x01, 0x11, 0x00, 0x03, 0, 0, 0, 5]);
    assert_eq!(
        OpReply::decode_exact(&out, &Limits::default()),
        Ok(OpReply::Import(Err(OpStatus::Error)))
    );
    // A device list of another version: its reply code, with the failure.
    let devlist = [0x01, 0x00, 0x80, 0x05, 0, 0, 0, 0];
    assert!(OpRequest::decode(&devlist).is_err());
    out.clear();
    assert!(encode_op_failure(&devlist, OpStatus::Error, &mut out));
    assert_eq!(out, [0x01, 0x11, 0x00, 0x05, 0, 0, 0, 5]);
    assert_eq!(
        OpReply::decode(&out, &Limits::default()),
        Err(WireError::RequestFailed(OpStatus::Error))
    );
    // No reply answers an unknown code or a partial header.
    out.clear();
    assert!(!encode_op_failure(
        &[0x01, 0x11, 0x12, 0x34, 0, 0, 0, 0],
        OpStatus::Error,
        &mut out
    ));
    assert!(!encode_op_failure(
        &[0x01, 0x11, 0x80],
        OpStatus::Error,
        &mut out
    ));
    assert!(out.is_empty());
}

#[test]
fn devlist_reply_size_follows_interfaces() {
    let mut dev = record();
    dev.num_interfaces = 2;
    let list = OpReply::Devlist(vec![ExportedDevice {
        device: dev,
        interfaces: vec![
            InterfaceRecord {
                class: 3,
                subclass: 1,
                protocol: 1,
            },
            InterfaceRecord {
                class: 8,
                subclass: 6,
                protocol: 0x50,
            },
        ],
    }]);
    let mut out = Vec::new();
    list.encode(&mut out);
    assert_eq!(out.len(), 12 + 312 + 2 * 4);
    assert_eq!(OpReply::decode_exact(&out, &Limits::default()), Ok(list));
}

#[test]
fn submit_out_with_payload_round_trips() {
    let cmd = UrbCommand::Submit(CmdSubmit {
        header: SubmitHeader {
            seqnum: 7,
            devid: 0x0001_0002,
            direction: Direction::Out,
            ep: 2,
            transfer_flags: 0,
            transfer_buffer_length: 3,
            start_frame: 0,
            non_iso_marker: false,
            interval: 0,
            setup: [0; 8],
            number_of_packets: 0,
        },
        data: &[1, 2, 3],
        iso_packets: vec![],
    });
    let mut out = Vec::new();
    cmd.encode(&mut out);
    assert_eq!(out.len(), 48 + 3);
    assert_eq!(UrbCommand::decode_exact(&out, &Limits::default()), Ok(cmd));
    // Every proper prefix is incomplete, never an error.
    for n in 0..out.len() {
        assert_eq!(UrbCommand::decode(&out[..n], &Limits::default()), Ok(None));
    }
}

#[test]
fn documented_non_iso_marker_is_accepted() {
    let mut out = Vec::new();
    UrbCommand::Submit(CmdSubmit {
        header: SubmitHeader {
            seqnum: 1,
            devid: 1,
            direction: Direction::In,
            ep: 0,
            transfer_flags: 0,
            transfer_buffer_length: 18,
            start_frame: 0,
            non_iso_marker: true,
            interval: 0,
            setup: [0x80, 6, 0, 1, 0, 0, 18, 0],
            number_of_packets: 0,
        },
        data: &[],
        iso_packets: vec![],
    })
    .encode(&mut out);
    assert_eq!(&out[0x20..0x24], &[0xff; 4]);
    let UrbCommand::Submit(s) = UrbCommand::decode_exact(&out, &Limits::default()).unwrap() else {
        panic!("not a submit")
    };
    assert!(s.iso_packets.is_empty());
}

#[test]
fn oversized_transfer_is_refused_from_the_header_alone() {
    let mut hdr = vec![0u8; 48];
    hdr[3] = 1; // CMD_SUBMIT
    hdr[0x18..0x1c].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        UrbCommand::decode(&hdr, &Limits::default()),
        Err(WireError::TransferTooLong { .. })
    ));
}

#[test]
fn too_many_iso_packets_is_refused() {
    let mut hdr = vec![0u8; 48];
    hdr[3] = 1;
    hdr[0x0f] = 1; // IN
    hdr[0x20..0x24].copy_from_slice(&1025u32.to_be_bytes());
    assert!(matches!(
        UrbCommand::decode(&hdr, &Limits::default()),
        Err(WireError::TooManyIsoPackets { count: 1025, .. })
    ));
}

#[test]
fn ret_submit_in_with_iso_round_trips() {
    let reply = UrbReply::Submit(RetSubmit {
        seqnum: 9,
        status: 0,
        actual_length: 5,
        start_frame: 3,
        number_of_packets: 2,
        error_count: 0,
        data: &[1, 2, 3, 4, 5],
        iso_packets: vec![
            IsoPacket {
                offset: 0,
                length: 4,
                actual_length: 3,
                status: 0,
            },
            IsoPacket {
                offset: 4,
                length: 4,
                actual_length: 2,
                status: 0,
            },
        ],
    });
    let mut out = Vec::new();
    reply.encode(&mut out);
    assert_eq!(out.len(), 48 + 5 + 32);
    let pending = |s| {
        (s == 9).then_some(PendingUrb {
            direction: Direction::In,
            transfer_buffer_length: 8,
        })
    };
    assert_eq!(
        UrbReply::decode(&out, &Limits::default(), pending),
        Ok(Some((reply, out.len())))
    );
}

#[test]
fn ret_submit_for_unknown_seqnum_is_an_error() {
    let mut out = Vec::new();
    RetUnlink {
        seqnum: 1,
        status: -104,
    }
    .encode(&mut out);
    assert_eq!(out.len(), 48);
    let mut sub = Vec::new();
    RetSubmit {
        seqnum: 5,
        status: 0,
        actual_length: 0,
        start_frame: 0,
        number_of_packets: 0,
        error_count: 0,
        data: &[],
        iso_packets: vec![],
    }
    .encode(&mut sub);
    assert_eq!(
        UrbReply::decode(&sub, &Limits::default(), |_| None),
        Err(WireError::UnknownSeqnum(5))
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
                let limits = Limits::default();
                let _ = OpRequest::decode(&bytes);
                let _ = OpReply::decode(&bytes, &limits);
                let _ = UrbCommand::decode(&bytes, &limits);
                let _ = UrbReply::decode(&bytes, &limits, |_| Some(PendingUrb { direction: Direction::In, transfer_buffer_length: 4096 }));
            }

            #[test]
            fn submit_round_trips_and_truncations_are_typed(
                seqnum in any::<u32>(), devid in any::<u32>(), out_dir in any::<bool>(), ep in 0u8..16,
                flags in any::<u32>(), data in proptest::collection::vec(any::<u8>(), 0..300),
                setup in any::<[u8; 8]>(), n_iso in 0usize..4,
            ) {
                let direction = if out_dir { Direction::Out } else { Direction::In };
                let len = data.len() as u32;
                let iso_packets: Vec<IsoPacket> = (0..n_iso).map(|i| IsoPacket {
                    offset: 0, length: len.min(i as u32), actual_length: 0, status: 0 }).collect();
                let cmd = UrbCommand::Submit(CmdSubmit {
    header: SubmitHeader {seqnum, devid, direction, ep, transfer_flags: flags, transfer_buffer_length: len, start_frame: 0, non_iso_marker: false, interval: 0, setup, number_of_packets: u32::try_from(iso_packets.len()).unwrap_or(u32::MAX)},
    data: if out_dir { &data } else { &[] },
    iso_packets,
    });
                let mut out = Vec::new();
                cmd.encode(&mut out);
                let limits = Limits::default();
                prop_assert_eq!(UrbCommand::decode_exact(&out, &limits), Ok(cmd.clone()));
                for n in 0..out.len() {
                    prop_assert_eq!(UrbCommand::decode_exact(&out[..n], &limits), Err(WireError::Truncated));
                }
                out.push(0);
                prop_assert_eq!(UrbCommand::decode_exact(&out, &limits), Err(WireError::TrailingBytes(1)));
            }

            #[test]
            fn devlist_round_trips(n in 0usize..4, nif in 0u8..4, busnum in any::<u32>()) {
                let devices: Vec<ExportedDevice> = (0..n).map(|i| {
                    let mut d = record();
                    d.busid = BusId::new(&format!("{}-{}", busnum % 10, i)).unwrap();
                    d.busnum = busnum;
                    d.num_interfaces = nif;
                    ExportedDevice { device: d, interfaces: (0..nif).map(|k| InterfaceRecord { class: k, subclass: 1, protocol: 2 }).collect() }
                }).collect();
                let reply = OpReply::Devlist(devices);
                let mut out = Vec::new();
                reply.encode(&mut out);
                let limits = Limits::default();
                prop_assert_eq!(OpReply::decode_exact(&out, &limits), Ok(reply));
                for k in 0..out.len() {
                    prop_assert_eq!(OpReply::decode_exact(&out[..k], &limits), Err(WireError::Truncated));
                }
            }
        }
}

#[test]
fn submit_header_tells_what_follows_and_rebuilds_the_command() {
    let iso = vec![IsoPacket {
        offset: 0,
        length: 3,
        actual_length: 0,
        status: 0,
    }];
    let cmd = CmdSubmit {
        header: SubmitHeader {
            seqnum: 11,
            devid: 0x0001_0002,
            direction: Direction::Out,
            ep: 4,
            transfer_flags: 0x200,
            transfer_buffer_length: 3,
            start_frame: 5,
            non_iso_marker: false,
            interval: 1,
            setup: [0; 8],
            number_of_packets: u32::try_from(iso.clone().len()).unwrap_or(u32::MAX),
        },
        data: &[9, 8, 7],
        iso_packets: iso.clone(),
    };
    let mut out = Vec::new();
    cmd.encode(&mut out);
    let limits = Limits::default();
    assert_eq!(UrbCommandHeader::decode(&out[..47], &limits), Ok(None));
    let Some(UrbCommandHeader::Submit(h)) = UrbCommandHeader::decode(&out, &limits).unwrap() else {
        panic!("not a submit header")
    };
    assert_eq!((h.data_len(), h.iso_len()), (3, 16));
    assert_eq!(out.len(), URB_HEADER_LEN + h.data_len() + h.iso_len());
    let packets = h.decode_iso_packets(&out[51..]).unwrap();
    assert_eq!(packets, iso);
    assert_eq!(h.with_payload(&out[48..51], packets), cmd);
    assert_eq!(
        h.decode_iso_packets(&out[52..]),
        Err(WireError::Truncated),
        "a short descriptor list"
    );
}

#[test]
fn iso_packet_outside_the_buffer_is_refused() {
    let mut h = vec![0u8; 48];
    h[3] = 1; // CMD_SUBMIT
    h[0x0f] = 1; // IN
    h[0x18..0x1c].copy_from_slice(&8u32.to_be_bytes());
    h[0x20..0x24].copy_from_slice(&1u32.to_be_bytes());
    let mut iso = Vec::new();
    encode_iso_packets(
        &[IsoPacket {
            offset: 4,
            length: 8,
            actual_length: 0,
            status: 0,
        }],
        &mut iso,
    );
    h.extend_from_slice(&iso);
    assert!(matches!(
        UrbCommand::decode(&h, &Limits::default()),
        Err(WireError::IsoPacketOutOfBounds { index: 0, .. })
    ));
}

#[test]
fn ret_submit_header_then_payload_is_the_whole_reply() {
    let iso = vec![IsoPacket {
        offset: 0,
        length: 4,
        actual_length: 2,
        status: 0,
    }];
    let whole = RetSubmit {
        seqnum: 3,
        status: 0,
        actual_length: 2,
        start_frame: 1,
        number_of_packets: 1,
        error_count: 0,
        data: &[5, 6],
        iso_packets: iso.clone(),
    };
    let mut expected = Vec::new();
    whole.encode(&mut expected);
    let mut parts = Vec::new();
    RetSubmit {
        iso_packets: Vec::new(),
        ..whole.clone()
    }
    .encode_header(&mut parts);
    assert_eq!(parts.len(), URB_HEADER_LEN);
    parts.extend_from_slice(whole.data);
    encode_iso_packets(&iso, &mut parts);
    assert_eq!(parts, expected);
}
