//! Codec tests: captured bytes, round trips under every capability set, truncation, caps.

use proptest::prelude::*;

use super::*;

fn negotiated(role: Role, caps: Caps) -> Codec {
    let mut c = Codec::new(role, Limits::default());
    c.negotiate(caps, caps);
    c
}

fn all_caps() -> Caps {
    Caps(0xff)
}

/// The hello QEMU 7.2.22 (Debian) sends as `usb-redir` on a socket chardev, captured from
/// the wire: version "qemu usb-redir guest 7.2.22", capability word 0xff (all eight).
const QEMU_HELLO: &str = "0000000044000000000000007165\
    6d75207573622d726564697220677565737420372e322e3232000000000000000000000000000000000000\
    00000000000000000000000000000000000000ff000000";

fn qemu_hello() -> Vec<u8> {
    let hex: String = QEMU_HELLO.split_whitespace().collect();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn decodes_a_hello() {
    let c = Codec::new(Role::Host, Limits::default());
    let (frame, n) = c.decode(&qemu_hello()).unwrap().unwrap();
    assert_eq!(n, 80);
    assert_eq!(frame.id, 0);
    let Packet::Hello {
        version,
        capabilities,
    } = frame.packet
    else {
        panic!("not a hello");
    };
    assert_eq!(version, "qemu usb-redir guest 7.2.22");
    let caps = Caps(capabilities[0]);
    assert_eq!(caps, Caps(0xff));
    assert!(caps.has(Cap::Ids64) && caps.has(Cap::BulkLength32) && caps.has(Cap::BulkStreams));
}

#[test]
fn ids_are_64_bits_after_negotiation_except_in_the_hello() {
    let c = negotiated(Role::Guest, Caps::of(&[Cap::Ids64]));
    let mut out = Vec::new();
    c.encode(0x1_0000_0002, &Packet::Reset, &mut out);
    assert_eq!(out, [3, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0]);
    out.clear();
    c.encode(
        7,
        &Packet::Hello {
            version: "x".into(),
            capabilities: vec![],
        },
        &mut out,
    );
    assert_eq!(&out[..12], [0, 0, 0, 0, 64, 0, 0, 0, 7, 0, 0, 0]);
}

#[test]
fn bulk_length_high_only_with_the_capability() {
    let header = BulkHeader {
        endpoint: 0x02,
        status: Status::Success,
        length: 3,
        stream_id: 0,
    };
    let mut plain = Vec::new();
    Codec::new(Role::Guest, Limits::default()).encode(
        1,
        &Packet::Bulk(header, vec![1, 2, 3]),
        &mut plain,
    );
    assert_eq!(
        plain,
        [101, 0, 0, 0, 11, 0, 0, 0, 1, 0, 0, 0, 2, 0, 3, 0, 0, 0, 0, 0, 1, 2, 3]
    );
    let mut wide = Vec::new();
    negotiated(Role::Guest, Caps::of(&[Cap::BulkLength32])).encode(
        1,
        &Packet::Bulk(
            BulkHeader {
                length: 0x1_0003,
                endpoint: 0x82,
                ..header
            },
            vec![],
        ),
        &mut wide,
    );
    assert_eq!(
        wide,
        [101, 0, 0, 0, 10, 0, 0, 0, 1, 0, 0, 0, 0x82, 0, 3, 0, 0, 0, 0, 0, 1, 0]
    );
}

#[test]
fn refuses_lengths_that_do_not_fit_before_the_body_arrives() {
    let c = Codec::new(Role::Host, Limits::default());
    // A set_configuration that claims 2 bytes.
    let bad = [6, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 1];
    assert_eq!(
        c.decode(&bad),
        Err(WireError::BadLength { kind: 6, length: 2 })
    );
    // A header announcing more than the cap fails with the 12 header bytes alone.
    let huge = [101, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0];
    assert!(matches!(c.decode(&huge), Err(WireError::TooLong { .. })));
    let unknown = [50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(c.decode(&unknown), Err(WireError::UnknownType(50)));
}

#[test]
fn data_must_match_length_and_direction() {
    let host = Codec::new(Role::Host, Limits::default());
    // A control IN request that carries data.
    let mut b = vec![100, 0, 0, 0, 11, 0, 0, 0, 5, 0, 0, 0];
    b.extend_from_slice(&[0x80, 6, 0x80, 0, 0, 1, 0, 0, 18, 0, 0xaa]);
    assert!(matches!(
        host.decode(&b),
        Err(WireError::DataMismatch { data: 1, .. })
    ));
    // A bulk OUT request with less data than its length.
    let mut b = vec![101, 0, 0, 0, 9, 0, 0, 0, 5, 0, 0, 0];
    b.extend_from_slice(&[0x02, 0, 2, 0, 0, 0, 0, 0, 0xaa]);
    assert!(matches!(
        host.decode(&b),
        Err(WireError::DataMismatch { length: 2, .. })
    ));
}

#[test]
fn bulk_lengths_are_capped() {
    let limits = Limits {
        max_bulk_length: 1000,
        ..Limits::default()
    };
    let mut c = Codec::new(Role::Host, limits);
    c.negotiate(all_caps(), all_caps());
    let mut b = vec![101, 0, 0, 0, 10, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
    b.extend_from_slice(&[0x81, 0, 0xe9, 0x03, 0, 0, 0, 0, 0, 0]); // 1001 bytes IN
    assert!(matches!(
        c.decode(&b),
        Err(WireError::TooLong { length: 1001, .. })
    ));
}

#[test]
fn filters_are_nul_terminated_text() {
    let c = Codec::new(Role::Host, Limits::default());
    let mut b = vec![23, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0];
    b.extend_from_slice(b"a|b\0");
    let (frame, _) = c.decode(&b).unwrap().unwrap();
    assert_eq!(
        frame.packet,
        Packet::FilterFilter {
            rules: "a|b".into()
        }
    );
    let last = b.len() - 1;
    b[last] = b'c';
    assert_eq!(c.decode(&b), Err(WireError::BadFilter));
}

fn status() -> impl Strategy<Value = Status> {
    any::<u8>().prop_map(Status::from_u8)
}

/// Packets the guest sends (data travels OUT), valid for `caps`.
fn guest_packet(caps: Caps) -> impl Strategy<Value = Packet> {
    let bulk32 = caps.has(Cap::BulkLength32);
    let bulk_len = if bulk32 {
        0..=200_000u32
    } else {
        0..=0xffffu32
    };
    prop_oneof![
        Just(Packet::Reset),
        Just(Packet::GetConfiguration),
        Just(Packet::CancelDataPacket),
        Just(Packet::FilterReject),
        Just(Packet::DeviceDisconnectAck),
        any::<u8>().prop_map(|configuration| Packet::SetConfiguration { configuration }),
        (any::<u8>(), any::<u8>())
            .prop_map(|(interface, alt)| Packet::SetAltSetting { interface, alt }),
        any::<u8>().prop_map(|interface| Packet::GetAltSetting { interface }),
        (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(endpoint, packets_per_urb, urbs)| {
            Packet::StartIsoStream {
                endpoint,
                packets_per_urb,
                urbs,
            }
        }),
        any::<u8>().prop_map(|endpoint| Packet::StopIsoStream { endpoint }),
        any::<u8>().prop_map(|endpoint| Packet::StartInterruptReceiving { endpoint }),
        any::<u8>().prop_map(|endpoint| Packet::StopInterruptReceiving { endpoint }),
        (any::<u32>(), any::<u32>())
            .prop_map(|(endpoints, streams)| Packet::AllocBulkStreams { endpoints, streams }),
        any::<u32>().prop_map(|endpoints| Packet::FreeBulkStreams { endpoints }),
        "[a-z0-9,|x-]{0,40}".prop_map(|rules| Packet::FilterFilter { rules }),
        (any::<u32>(), any::<u32>(), any::<u8>(), any::<u8>()).prop_map(
            |(stream_id, bytes_per_transfer, endpoint, transfers)| Packet::StartBulkReceiving {
                stream_id,
                bytes_per_transfer,
                endpoint,
                transfers
            }
        ),
        (any::<u32>(), any::<u8>()).prop_map(|(stream_id, endpoint)| Packet::StopBulkReceiving {
            stream_id,
            endpoint
        }),
        (
            any::<bool>(),
            any::<[u8; 2]>(),
            any::<u16>(),
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(is_in, [request, request_type], value, index, data)| {
                let endpoint = if is_in { 0x80 } else { 0 };
                let (length, data) = if is_in {
                    (data.len() as u16 * 7, Vec::new())
                } else {
                    (data.len() as u16, data)
                };
                Packet::Control(
                    ControlHeader {
                        endpoint,
                        request,
                        request_type,
                        status: Status::Success,
                        value,
                        index,
                        length,
                    },
                    data,
                )
            }),
        (any::<u8>(), bulk_len, any::<u32>()).prop_map(|(endpoint, length, stream_id)| {
            let data = if endpoint & 0x80 == 0 {
                vec![0x5a; length as usize]
            } else {
                Vec::new()
            };
            Packet::Bulk(
                BulkHeader {
                    endpoint,
                    status: Status::Success,
                    length,
                    stream_id,
                },
                data,
            )
        }),
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..100)).prop_map(
            |(endpoint, data)| {
                let endpoint = endpoint & 0x7f;
                Packet::Interrupt(
                    EndpointHeader {
                        endpoint,
                        status: Status::Success,
                        length: data.len() as u16,
                    },
                    data,
                )
            }
        ),
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..100)).prop_map(
            |(endpoint, data)| Packet::Iso(
                EndpointHeader {
                    endpoint,
                    status: Status::Success,
                    length: data.len() as u16,
                },
                data,
            )
        ),
    ]
}

/// Packets the host sends (data travels IN), valid for `caps`.
fn host_packet(caps: Caps) -> impl Strategy<Value = Packet> {
    let with_version = caps.has(Cap::ConnectDeviceVersion);
    let mps = caps.has(Cap::EpInfoMaxPacketSize);
    let streams = caps.has(Cap::BulkStreams);
    prop_oneof![
        Just(Packet::DeviceDisconnect),
        (any::<[u8; 4]>(), any::<[u16; 3]>()).prop_map(
            move |([speed, class, subclass, protocol], [vendor_id, product_id, version])| {
                Packet::DeviceConnect(DeviceConnect {
                    speed: Speed::from_u8(speed),
                    class,
                    subclass,
                    protocol,
                    vendor_id,
                    product_id,
                    device_version: if with_version { version } else { 0 },
                })
            }
        ),
        proptest::collection::vec(any::<[u8; 4]>(), 0..=32).prop_map(|list| {
            Packet::InterfaceInfo(
                list.into_iter()
                    .map(|[number, class, subclass, protocol]| InterfaceEntry {
                        number,
                        class,
                        subclass,
                        protocol,
                    })
                    .collect(),
            )
        }),
        proptest::collection::vec((any::<[u8; 3]>(), any::<u16>(), any::<u32>()), 32).prop_map(
            move |list| {
                let mut eps = Box::new([EndpointEntry::default(); ENDPOINTS]);
                for (e, ([kind, interval, interface], size, max_streams)) in
                    eps.iter_mut().zip(list)
                {
                    *e = EndpointEntry {
                        kind: EndpointType::from_u8(kind),
                        interval,
                        interface,
                        max_packet_size: if mps { size } else { 0 },
                        max_streams: if streams { max_streams } else { 0 },
                    };
                }
                Packet::EpInfo(eps)
            }
        ),
        (status(), any::<u8>()).prop_map(|(status, configuration)| {
            Packet::ConfigurationStatus {
                status,
                configuration,
            }
        }),
        (status(), any::<u8>(), any::<u8>()).prop_map(|(status, interface, alt)| {
            Packet::AltSettingStatus {
                status,
                interface,
                alt,
            }
        }),
        (status(), any::<u8>())
            .prop_map(|(status, endpoint)| Packet::IsoStreamStatus { status, endpoint }),
        (status(), any::<u8>()).prop_map(|(status, endpoint)| {
            Packet::InterruptReceivingStatus { status, endpoint }
        }),
        (any::<u32>(), any::<u32>(), status()).prop_map(|(endpoints, streams, status)| {
            Packet::BulkStreamsStatus {
                endpoints,
                streams,
                status,
            }
        }),
        (any::<u32>(), any::<u8>(), status()).prop_map(|(stream_id, endpoint, status)| {
            Packet::BulkReceivingStatus {
                stream_id,
                endpoint,
                status,
            }
        }),
        (status(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(status, data)| {
            Packet::Control(
                ControlHeader {
                    endpoint: 0x80,
                    request: 6,
                    request_type: 0x80,
                    status,
                    value: 0x100,
                    index: 0,
                    length: data.len() as u16,
                },
                data,
            )
        }),
        (
            status(),
            any::<u8>(),
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(status, endpoint, data)| {
                let endpoint = endpoint | 0x80;
                Packet::Interrupt(
                    EndpointHeader {
                        endpoint,
                        status,
                        length: data.len() as u16,
                    },
                    data,
                )
            }),
        (
            status(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(status, stream_id, data)| Packet::BufferedBulk(
                BufferedBulkHeader {
                    stream_id,
                    length: data.len() as u32,
                    endpoint: 0x81,
                    status,
                },
                data,
            )),
    ]
}

fn caps() -> impl Strategy<Value = Caps> {
    any::<u8>().prop_map(|b| Caps(u32::from(b)))
}

fn round_trip(sender: Role, receiver: Role, caps: Caps, id: u64, packet: &Packet) {
    let mut out = Vec::new();
    negotiated(sender, caps).encode(id, packet, &mut out);
    let receiver = negotiated(receiver, caps);
    let (frame, n) = receiver.decode(&out).unwrap().unwrap();
    assert_eq!(n, out.len());
    assert_eq!(&frame.packet, packet);
    let id = if caps.has(Cap::Ids64) {
        id
    } else {
        id & 0xffff_ffff
    };
    assert_eq!(frame.id, id);
    // Every strict prefix is incomplete, never an error or a packet.
    for cut in 0..out.len() {
        assert_eq!(receiver.decode(&out[..cut]), Ok(None), "cut at {cut}");
    }
}

proptest! {
    #[test]
    fn guest_packets_round_trip(
        (caps, packet) in caps().prop_flat_map(|c| (Just(c), guest_packet(c))),
        id in any::<u64>(),
    ) {
        round_trip(Role::Guest, Role::Host, caps, id, &packet);
    }

    #[test]
    fn host_packets_round_trip(
        (caps, packet) in caps().prop_flat_map(|c| (Just(c), host_packet(c))),
        id in any::<u64>(),
    ) {
        round_trip(Role::Host, Role::Guest, caps, id, &packet);
    }

    #[test]
    fn hellos_round_trip(
        version in "[ -~]{0,63}",
        capabilities in proptest::collection::vec(any::<u32>(), 0..=MAX_CAP_WORDS),
    ) {
        let packet = Packet::Hello { version, capabilities };
        round_trip(Role::Host, Role::Guest, Caps(0), 0, &packet);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        caps in caps(),
        role in prop_oneof![Just(Role::Host), Just(Role::Guest)],
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let _ = negotiated(role, caps).decode(&bytes);
    }
}
