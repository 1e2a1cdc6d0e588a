//! What the fuzz target (`fuzz/fuzz_targets/usbredir_host.rs`) runs, kept here so that unit
//! tests run it too and it cannot rot.

use super::host::{Event, HostLimits, TransferKind, TransferResult, UsbHost};
use super::{Caps, Codec, Limits, Packet, Role, Speed, Status};

/// A keyboard-and-storage device's descriptors, for the scripted device.
const DEVICE: [u8; 18] = [
    18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x6b, 0x1d, 0x04, 0x01, 0x00, 0x01, 1, 2, 3, 1,
];
const CONFIG: [u8; 48] = [
    9, 2, 48, 0, 2, 1, 0, 0xa0, 50, 9, 4, 0, 0, 1, 3, 1, 1, 0, 7, 5, 0x81, 3, 8, 0, 10, 9, 4, 1, 0,
    2, 8, 6, 80, 0, 7, 5, 0x02, 2, 0, 2, 0, 7, 5, 0x82, 2, 0, 2, 0,
];

/// Decodes `data` under the capability set and role its first byte picks, checking that
/// whatever decodes re-encodes to bytes that decode to the same message; then feeds the rest
/// to a usb-host, after a hello, with a device that completes every transfer at once.
pub fn exercise(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let caps = Caps(u32::from(selector));
    let limits = Limits {
        max_bulk_length: 1 << 20,
        max_filter_length: 4096,
    };
    for role in [Role::Host, Role::Guest] {
        let mut codec = Codec::new(role, limits);
        codec.negotiate(caps, caps);
        let sender_role = match role {
            Role::Host => Role::Guest,
            Role::Guest => Role::Host,
        };
        let mut sender = Codec::new(sender_role, limits);
        sender.negotiate(caps, caps);
        let mut at = 0;
        while let Ok(Some((frame, n))) = codec.decode(&rest[at..]) {
            at += n;
            let mut again = Vec::new();
            sender.encode(frame.id, &frame.packet, &mut again);
            let (decoded, used) = codec
                .decode(&again)
                .expect("a re-encoded message decodes")
                .expect("a re-encoded message is whole");
            assert_eq!(used, again.len());
            assert_eq!(decoded, frame);
        }
    }
    drive_host(caps, rest);
}

fn drive_host(caps: Caps, input: &[u8]) {
    let limits = HostLimits {
        wire: Limits {
            max_bulk_length: 1 << 20,
            max_filter_length: 4096,
        },
        max_packets_in_flight: 64,
        max_bytes_in_flight: 4 << 20,
    };
    let mut host = UsbHost::new("fuzz", Speed::High, limits);
    let mut hello = Vec::new();
    Codec::new(Role::Guest, limits.wire).encode(
        0,
        &Packet::Hello {
            version: "fuzz guest".into(),
            capabilities: vec![caps.0],
        },
        &mut hello,
    );
    let mut buf = hello;
    buf.extend_from_slice(input);
    let mut at = 0;
    let mut sink = Vec::new();
    // Every round either consumes input or completes transfers; stop when neither happens,
    // or after a bounded number of rounds (a polled endpoint completes forever).
    for _ in 0..256 {
        let used = match host.handle_input(&buf[at..]) {
            Ok(n) => n,
            Err(_) => return,
        };
        at += used;
        let mut completed = false;
        // Only the events there are now: completing a polled interrupt endpoint submits its
        // next poll, which waits for the next round (as a real device's next report would).
        let events: Vec<Event> = std::iter::from_fn(|| host.poll_event()).collect();
        for event in events {
            if let Event::Submit { id, transfer } = event {
                let data = match transfer.kind {
                    TransferKind::Control { setup } if setup[1] == 6 && setup[3] == 1 => {
                        DEVICE.to_vec()
                    }
                    TransferKind::Control { setup } if setup[1] == 6 && setup[3] == 2 => {
                        CONFIG.to_vec()
                    }
                    TransferKind::Control { setup } if setup[1] == 8 => vec![1],
                    _ if transfer.endpoint & 0x80 != 0 => {
                        vec![0x5a; transfer.length.min(4096) as usize]
                    }
                    _ => Vec::new(),
                };
                let result = TransferResult {
                    status: Status::Success,
                    actual_length: transfer.length,
                    data,
                };
                if host.handle_completion(id, result).is_err() {
                    return;
                }
                completed = true;
            }
        }
        sink.clear();
        host.poll_transmit(&mut sink);
        if used == 0 && !completed {
            break;
        }
    }
    host.disconnect();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exercises_a_scripted_session_without_panicking() {
        // A start of interrupt receiving and a bulk IN after the hello the driver adds.
        let mut input = vec![0xff];
        let mut codec = Codec::new(Role::Guest, Limits::default());
        codec.negotiate(Caps(0xff), Caps(0xff));
        codec.encode(
            0,
            &Packet::StartInterruptReceiving { endpoint: 0x81 },
            &mut input,
        );
        exercise(&input);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_input_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            exercise(&data);
        }
    }
}
