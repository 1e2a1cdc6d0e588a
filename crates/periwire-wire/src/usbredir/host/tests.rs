//! The usb-host state machine driven by a scripted guest and a scripted device.

use super::*;
use crate::usbredir::{kind, BulkHeader, Cap, Caps};

/// A full-speed boot keyboard: device descriptor and its one configuration.
const DEVICE: [u8; 18] = [
    18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x6b, 0x1d, 0x04, 0x01, 0x00, 0x01, 1, 2, 3, 1,
];
const CONFIG: [u8; 50] = [
    9, 2, 50, 0, 2, 1, 0, 0xa0, 50, // configuration 1
    9, 4, 0, 0, 1, 3, 1, 1, 0, // interface 0 alt 0: boot keyboard
    7, 5, 0x81, 3, 8, 0, 10, // 0x81 interrupt IN, 8 bytes
    9, 4, 1, 0, 1, 8, 6, 80, 0, // interface 1 alt 0: mass storage, one endpoint
    7, 5, 0x02, 2, 0, 2, 0, // 0x02 bulk OUT
    9, 4, 1, 1, 0, 8, 6, 80, 0, // interface 1 alt 1: no endpoints
];

struct Guest {
    codec: Codec,
    host: UsbHost,
}

fn ok(data: &[u8]) -> TransferResult {
    TransferResult {
        status: Status::Success,
        data: data.to_vec(),
        actual_length: data.len() as u32,
    }
}

impl Guest {
    /// A host whose probe has finished and whose guest has said hello with `caps`.
    fn connected(caps: Caps) -> Self {
        let mut g = Guest {
            codec: Codec::new(Role::Guest, Limits::default()),
            host: UsbHost::new("periwire test", Speed::Full, HostLimits::default()),
        };
        let hello = g.received();
        assert!(matches!(hello[0].packet, Packet::Hello { .. }));
        g.codec.negotiate(caps, host_caps());
        // The probe: device descriptor, configuration header, configuration, active one.
        g.complete_next_control(&DEVICE);
        g.complete_next_control(&CONFIG[..9]);
        g.complete_next_control(&CONFIG);
        g.complete_next_control(&[1]);
        assert!(g.received().is_empty(), "nothing before the guest's hello");
        let mut hello = Vec::new();
        Codec::new(Role::Guest, Limits::default()).encode(
            0,
            &Packet::Hello {
                version: "test guest".into(),
                capabilities: vec![caps.0],
            },
            &mut hello,
        );
        assert_eq!(g.host.handle_input(&hello), Ok(hello.len()));
        g
    }

    fn send(&mut self, id: u64, packet: Packet) {
        let mut b = Vec::new();
        self.codec.encode(id, &packet, &mut b);
        assert_eq!(self.host.handle_input(&b), Ok(b.len()));
    }

    fn received(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        self.host.poll_transmit(&mut out);
        let mut frames = Vec::new();
        let mut at = 0;
        while at < out.len() {
            let (frame, n) = self.codec.decode(&out[at..]).unwrap().unwrap();
            at += n;
            frames.push(frame);
        }
        frames
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.host.poll_event()).collect()
    }

    fn next_submit(&mut self) -> (TransferId, Transfer) {
        match self.host.poll_event() {
            Some(Event::Submit { id, transfer }) => (id, transfer),
            other => panic!("expected a submit, got {other:?}"),
        }
    }

    fn complete_next_control(&mut self, data: &[u8]) -> Transfer {
        let (id, transfer) = self.next_submit();
        assert!(matches!(transfer.kind, TransferKind::Control { .. }));
        self.host.handle_completion(id, ok(data)).unwrap();
        transfer
    }
}

fn all() -> Caps {
    Caps(0xff)
}

#[test]
fn announces_interfaces_then_endpoints_then_the_device() {
    let mut g = Guest::connected(all());
    let frames = g.received();
    let kinds: Vec<u32> = frames.iter().map(|f| f.packet.kind()).collect();
    assert_eq!(
        kinds,
        [kind::INTERFACE_INFO, kind::EP_INFO, kind::DEVICE_CONNECT]
    );
    let Packet::InterfaceInfo(ifs) = &frames[0].packet else {
        unreachable!()
    };
    assert_eq!(ifs.len(), 2);
    assert_eq!((ifs[0].class, ifs[1].class), (3, 8));
    let Packet::EpInfo(eps) = &frames[1].packet else {
        unreachable!()
    };
    assert_eq!(eps[0].kind, EndpointType::Control);
    assert_eq!(eps[0].max_packet_size, 64);
    let int_in = eps[endpoint_index(0x81)];
    assert_eq!(
        (int_in.kind, int_in.interval, int_in.max_packet_size),
        (EndpointType::Interrupt, 10, 8)
    );
    assert_eq!(eps[endpoint_index(0x02)].kind, EndpointType::Bulk);
    assert_eq!(eps[endpoint_index(0x03)].kind, EndpointType::Invalid);
    let Packet::DeviceConnect(d) = frames[2].packet else {
        unreachable!()
    };
    assert_eq!(
        (d.speed, d.vendor_id, d.product_id, d.device_version),
        (Speed::Full, 0x1d6b, 0x0104, 0x0100)
    );
    assert!(g.host.codec().has(Cap::Ids64) && !g.host.codec().has(Cap::BulkStreams));
}

#[test]
fn control_packets_become_transfers_and_replies_keep_the_id() {
    let mut g = Guest::connected(all());
    g.received();
    let get_descriptor = ControlHeader {
        endpoint: 0x80,
        request: 6,
        request_type: 0x80,
        status: Status::Success,
        value: 0x0100,
        index: 0,
        length: 64,
    };
    g.send(1 << 40, Packet::Control(get_descriptor, Vec::new()));
    let (id, transfer) = g.next_submit();
    assert_eq!(id, TransferId::Packet(1 << 40));
    assert_eq!(
        transfer.kind,
        TransferKind::Control {
            setup: [0x80, 6, 0, 1, 0, 0, 64, 0]
        }
    );
    g.host.handle_completion(id, ok(&DEVICE)).unwrap();
    let reply = g.received();
    assert_eq!(reply[0].id, 1 << 40);
    let Packet::Control(h, data) = &reply[0].packet else {
        unreachable!()
    };
    assert_eq!(
        (h.status, h.length, data.as_slice()),
        (Status::Success, 18, &DEVICE[..])
    );
}

#[test]
fn interrupt_receiving_polls_until_stopped() {
    let mut g = Guest::connected(all());
    g.received();
    g.send(0, Packet::StartInterruptReceiving { endpoint: 0x81 });
    let status = g.received();
    assert_eq!(
        status[0].packet,
        Packet::InterruptReceivingStatus {
            status: Status::Success,
            endpoint: 0x81
        }
    );
    for n in 0..2u8 {
        let (id, transfer) = g.next_submit();
        assert_eq!((transfer.endpoint, transfer.length), (0x81, 8));
        g.host.handle_completion(id, ok(&[n; 8])).unwrap();
        let report = g.received();
        assert_eq!(report[0].id, u64::from(n), "interrupt packets count from 0");
        let Packet::Interrupt(h, data) = &report[0].packet else {
            unreachable!()
        };
        assert_eq!((h.endpoint, data.as_slice()), (0x81, &[n; 8][..]));
    }
    let (poll, _) = g.next_submit();
    g.send(0, Packet::StopInterruptReceiving { endpoint: 0x81 });
    assert_eq!(g.events(), [Event::Cancel { id: poll }]);
    // A poll that finishes after the stop is dropped.
    g.host.handle_completion(poll, ok(&[9; 8])).unwrap();
    let frames = g.received();
    assert_eq!(frames.len(), 1);
    assert!(matches!(
        frames[0].packet,
        Packet::InterruptReceivingStatus { .. }
    ));
    // An endpoint that is not interrupt IN is refused.
    g.send(0, Packet::StartInterruptReceiving { endpoint: 0x02 });
    assert_eq!(
        g.received()[0].packet,
        Packet::InterruptReceivingStatus {
            status: Status::Inval,
            endpoint: 0x02
        }
    );
}

#[test]
fn set_alt_setting_is_synchronous_and_sends_new_info_before_its_status() {
    let mut g = Guest::connected(all());
    g.received();
    let mut b = Vec::new();
    g.codec.encode(
        5,
        &Packet::SetAltSetting {
            interface: 1,
            alt: 1,
        },
        &mut b,
    );
    g.codec.encode(6, &Packet::GetConfiguration, &mut b);
    let used = g.host.handle_input(&b).unwrap();
    assert!(
        used < b.len(),
        "nothing is read while the device works on it"
    );
    assert!(!g.host.wants_input());
    let transfer = g.complete_next_control(&[]);
    assert_eq!(
        transfer.kind,
        TransferKind::Control {
            setup: [0x01, 0x0b, 1, 0, 1, 0, 0, 0]
        }
    );
    assert_eq!(g.host.handle_input(&b[used..]), Ok(b.len() - used));
    let frames = g.received();
    let kinds: Vec<u32> = frames.iter().map(|f| f.packet.kind()).collect();
    assert_eq!(
        kinds,
        [
            kind::INTERFACE_INFO,
            kind::EP_INFO,
            kind::ALT_SETTING_STATUS,
            kind::CONFIGURATION_STATUS
        ]
    );
    let Packet::EpInfo(eps) = &frames[1].packet else {
        unreachable!()
    };
    assert_eq!(
        eps[endpoint_index(0x02)].kind,
        EndpointType::Invalid,
        "alt 1 has no endpoints"
    );
    assert_eq!(
        frames[2].packet,
        Packet::AltSettingStatus {
            status: Status::Success,
            interface: 1,
            alt: 1
        }
    );
    assert_eq!(frames[2].id, 5);
    g.send(
        7,
        Packet::SetAltSetting {
            interface: 4,
            alt: 0,
        },
    );
    assert!(matches!(
        g.received()[0].packet,
        Packet::AltSettingStatus {
            status: Status::Inval,
            ..
        }
    ));
}

fn bulk_out(len: u32) -> Packet {
    Packet::Bulk(
        BulkHeader {
            endpoint: 0x02,
            status: Status::Success,
            length: len,
            stream_id: 0,
        },
        vec![0xab; len as usize],
    )
}

#[test]
fn a_cancelled_packet_is_answered_once_as_cancelled() {
    let mut g = Guest::connected(all());
    g.received();
    g.send(3, bulk_out(100));
    let (id, transfer) = g.next_submit();
    assert_eq!(transfer.data.len(), 100);
    g.send(3, Packet::CancelDataPacket);
    assert_eq!(g.events(), [Event::Cancel { id }]);
    let reply = g.received();
    let Packet::Bulk(h, _) = &reply[0].packet else {
        unreachable!()
    };
    assert_eq!((reply[0].id, h.status, h.length), (3, Status::Cancelled, 0));
    g.host.handle_completion(id, ok(&[])).unwrap();
    assert!(g.received().is_empty(), "the late completion is dropped");
    g.send(3, Packet::CancelDataPacket);
    assert!(g.received().is_empty() && g.events().is_empty());
}

#[test]
fn refuses_what_it_does_not_offer() {
    let mut g = Guest::connected(all());
    g.received();
    g.send(
        1,
        Packet::AllocBulkStreams {
            endpoints: 1 << endpoint_index(0x02),
            streams: 4,
        },
    );
    g.send(
        2,
        Packet::StartBulkReceiving {
            stream_id: 0,
            bytes_per_transfer: 512,
            endpoint: 0x82,
            transfers: 4,
        },
    );
    g.send(
        3,
        Packet::StartIsoStream {
            endpoint: 0x83,
            packets_per_urb: 8,
            urbs: 4,
        },
    );
    let mut bulk_in = bulk_out(0);
    if let Packet::Bulk(h, _) = &mut bulk_in {
        h.endpoint = 0x85;
        h.length = 64;
    }
    g.send(4, bulk_in);
    let statuses: Vec<Status> = g
        .received()
        .into_iter()
        .map(|f| match f.packet {
            Packet::BulkStreamsStatus { status, .. }
            | Packet::BulkReceivingStatus { status, .. }
            | Packet::IsoStreamStatus { status, .. } => status,
            Packet::Bulk(h, _) => h.status,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(statuses, [Status::Inval; 4]);
    assert!(g.events().is_empty(), "nothing reaches the device");
}

#[test]
fn disconnect_answers_pending_packets_then_waits_for_the_ack() {
    let mut g = Guest::connected(all());
    g.received();
    g.send(8, bulk_out(10));
    g.send(0, Packet::StartInterruptReceiving { endpoint: 0x81 });
    g.events();
    g.received();
    g.host.disconnect();
    let events = g.events();
    assert!(events.contains(&Event::Cancel {
        id: TransferId::Packet(8)
    }));
    assert_eq!(events.len(), 2, "the packet and the poll: {events:?}");
    let frames = g.received();
    assert!(matches!(&frames[0].packet, Packet::Bulk(h, _) if h.status == Status::Cancelled));
    assert_eq!(frames[1].packet, Packet::DeviceDisconnect);
    assert!(g.host.wants_input());
    g.send(0, Packet::DeviceDisconnectAck);
    assert_eq!(g.events(), [Event::Closed(CloseReason::Disconnected)]);
    assert!(!g.host.wants_input());
}

#[test]
fn without_the_ack_capability_disconnect_closes_at_once() {
    let mut g = Guest::connected(Caps::of(&[Cap::Ids64]));
    g.received();
    g.host.disconnect();
    assert_eq!(g.received()[0].packet, Packet::DeviceDisconnect);
    assert_eq!(g.events(), [Event::Closed(CloseReason::Disconnected)]);
}

#[test]
fn in_flight_caps_stop_reading() {
    let mut g = Guest {
        codec: Codec::new(Role::Guest, Limits::default()),
        host: UsbHost::new(
            "t",
            Speed::High,
            HostLimits {
                max_packets_in_flight: 2,
                ..HostLimits::default()
            },
        ),
    };
    g.received();
    g.codec.negotiate(all(), host_caps());
    g.complete_next_control(&DEVICE);
    g.complete_next_control(&CONFIG[..9]);
    g.complete_next_control(&CONFIG);
    g.complete_next_control(&[1]);
    let mut b = Vec::new();
    Codec::new(Role::Guest, Limits::default()).encode(
        0,
        &Packet::Hello {
            version: "g".into(),
            capabilities: vec![all().0],
        },
        &mut b,
    );
    for id in 1..=3 {
        g.codec.encode(id, &bulk_out(1), &mut b);
    }
    let used = g.host.handle_input(&b).unwrap();
    assert_eq!(g.host.packets_in_flight(), 2);
    assert!(!g.host.wants_input() && used < b.len());
    let (id, _) = g.next_submit();
    g.host.handle_completion(id, ok(&[])).unwrap();
    assert!(g.host.wants_input());
    assert_eq!(g.host.handle_input(&b[used..]), Ok(b.len() - used));
}

#[test]
fn packets_before_the_hello_and_host_only_packets_are_violations() {
    let mut host = UsbHost::new("t", Speed::Full, HostLimits::default());
    let mut b = Vec::new();
    Codec::new(Role::Guest, Limits::default()).encode(1, &Packet::Reset, &mut b);
    assert_eq!(
        host.handle_input(&b),
        Err(HostError::OutOfOrder(kind::RESET))
    );
    let mut g = Guest::connected(all());
    let mut b = Vec::new();
    g.codec.encode(0, &Packet::DeviceDisconnect, &mut b);
    assert_eq!(
        g.host.handle_input(&b),
        Err(HostError::Unexpected(kind::DEVICE_DISCONNECT))
    );
}
