//! The server against periwire's own client over loopback TCP: the URB-phase rules (pipelining,
//! per-endpoint independence, unlink races, release on disconnect, caps, misbehaving clients).
//! The same rules are proven against the Linux kernel's vhci-hcd by the guest scenarios in
//! `crates/periwire/tests`.

use std::sync::Arc;
use std::time::Duration;

use periwire_server::client::{import, list_devices, UrbClient, UrbRequest};
use periwire_server::{serve, Export, Registry, ServerConfig};
use periwire_usb::source_sink::{
    SourceSink, SourceSinkHandle, EP_INTERRUPT, EP_LOOP_IN, EP_LOOP_OUT, EP_SINK, EP_SOURCE,
};
use periwire_usb::{BoxFuture, Completion, Urb};
use periwire_wire::usbip::{BusId, Direction, OpStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const TIMEOUT: Duration = Duration::from_secs(10);
const ECONNRESET: i32 = -104;
const ESHUTDOWN: i32 = -108;

struct TestServer {
    addr: String,
    registry: Registry,
    handles: Vec<SourceSinkHandle>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(devices: usize, config: ServerConfig) -> TestServer {
    let registry = Registry::new();
    let mut handles = Vec::new();
    for i in 0..devices {
        let (dev, handle) = SourceSink::new();
        registry
            .add(Export {
                busid: BusId::new(&format!("1-{}", i + 1)).unwrap(),
                busnum: 1,
                devnum: (i + 2) as u32,
                name: format!("ss{i}"),
                device: Arc::new(dev),
            })
            .unwrap();
        handles.push(handle);
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, registry.clone(), config, async {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        registry,
        handles,
        stop: Some(stop),
        task,
    }
}

fn busid(s: &str) -> BusId {
    BusId::new(s).unwrap()
}

async fn attach(server: &TestServer, id: &str) -> UrbClient {
    let (stream, record) = import(&server.addr, &busid(id), TIMEOUT).await.unwrap();
    UrbClient::new(stream, &record)
}

fn bulk_in(ep: u8, length: u32) -> UrbRequest {
    UrbRequest {
        ep: ep & 0x0f,
        direction: Direction::In,
        setup: [0; 8],
        data: Vec::new(),
        length,
    }
}

fn bulk_out(ep: u8, data: Vec<u8>) -> UrbRequest {
    UrbRequest {
        ep,
        direction: Direction::Out,
        setup: [0; 8],
        data,
        length: 0,
    }
}

fn get_device_descriptor() -> UrbRequest {
    UrbRequest {
        ep: 0,
        direction: Direction::In,
        setup: [0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 18, 0],
        data: Vec::new(),
        length: 18,
    }
}

#[tokio::test]
async fn lists_and_imports_and_refuses_a_busy_device() {
    let server = start(2, ServerConfig::default()).await;
    let list = list_devices(&server.addr, TIMEOUT).await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].device.busid.as_str(), "1-1");
    assert_eq!(list[0].device.id_vendor, 0x1209);
    assert_eq!(list[0].interfaces.len(), 1);
    assert_eq!(list[0].interfaces[0].class, 0xff);

    let client = attach(&server, "1-1").await;
    let desc = client.transfer(&get_device_descriptor()).await.unwrap();
    assert_eq!(desc.status, 0);
    assert_eq!(desc.data.len(), 18);
    assert_eq!(&desc.data[8..12], &[0x09, 0x12, 0xff, 0x77]);

    let busy = import(&server.addr, &busid("1-1"), TIMEOUT).await;
    assert!(matches!(
        busy,
        Err(periwire_server::client::ClientError::Refused(
            OpStatus::DeviceBusy
        ))
    ));
    let missing = import(&server.addr, &busid("9-9"), TIMEOUT).await;
    assert!(matches!(
        missing,
        Err(periwire_server::client::ClientError::Refused(
            OpStatus::NoDevice
        ))
    ));
    // The other device is free.
    let other = attach(&server, "1-2").await;
    assert_eq!(
        other
            .transfer(&get_device_descriptor())
            .await
            .unwrap()
            .status,
        0
    );
}

#[tokio::test]
async fn pipelined_urbs_complete_in_order_per_endpoint() {
    let server = start(1, ServerConfig::default()).await;
    let client = attach(&server, "1-1").await;
    let mut outs = Vec::new();
    for i in 0..32u8 {
        outs.push(
            client
                .submit(&bulk_out(EP_LOOP_OUT, vec![i; 100]))
                .await
                .unwrap()
                .1,
        );
    }
    let mut ins = Vec::new();
    for _ in 0..32 {
        ins.push(client.submit(&bulk_in(EP_LOOP_IN, 100)).await.unwrap().1);
    }
    for rx in outs {
        let r = rx.await.unwrap();
        assert_eq!((r.status, r.actual_length), (0, 100));
    }
    for (i, rx) in ins.into_iter().enumerate() {
        let r = rx.await.unwrap();
        assert_eq!(r.data, vec![i as u8; 100], "loopback IN {i} out of order");
    }
}

#[tokio::test]
async fn idle_interrupt_in_blocks_nothing_and_unlink_cancels_it() {
    let server = start(1, ServerConfig::default()).await;
    let client = attach(&server, "1-1").await;
    let (irq_seq, mut irq) = client.submit(&bulk_in(EP_INTERRUPT, 8)).await.unwrap();

    // Bulk traffic on other endpoints flows while the interrupt IN waits.
    for _ in 0..10 {
        let r = client.transfer(&bulk_in(EP_SOURCE, 4096)).await.unwrap();
        assert_eq!(r.data.len(), 4096);
        let r = client
            .transfer(&bulk_out(EP_SINK, vec![7; 4096]))
            .await
            .unwrap();
        assert_eq!(r.actual_length, 4096);
    }
    assert_eq!(server.handles[0].bytes_sunk(), 40960);
    assert!(
        irq.try_recv().is_err(),
        "an idle interrupt IN must stay pending"
    );

    // Unlink while pending: ECONNRESET, and no RET_SUBMIT ever follows (an unexpected
    // RET_SUBMIT would make the client's decoder fail and close the connection).
    assert_eq!(client.unlink(irq_seq).await.unwrap(), ECONNRESET);
    assert_eq!(
        client
            .transfer(&get_device_descriptor())
            .await
            .unwrap()
            .status,
        0
    );
    assert!(!client.is_closed());

    // A report sent after the cancellation goes to the next URB, not to the cancelled one.
    server.handles[0]
        .send_interrupt(vec![1, 2, 3])
        .await
        .unwrap();
    let r = client.transfer(&bulk_in(EP_INTERRUPT, 8)).await.unwrap();
    assert_eq!(r.data, vec![1, 2, 3]);
}

#[tokio::test]
async fn unlink_after_completion_answers_zero() {
    let server = start(1, ServerConfig::default()).await;
    let client = attach(&server, "1-1").await;
    let (seq, rx) = client.submit(&bulk_in(EP_SOURCE, 64)).await.unwrap();
    assert_eq!(rx.await.unwrap().data.len(), 64);
    assert_eq!(client.unlink(seq).await.unwrap(), 0);
    assert!(!client.is_closed());
}

#[tokio::test]
async fn disconnect_with_pending_urbs_frees_the_device() {
    let server = start(1, ServerConfig::default()).await;
    let client = attach(&server, "1-1").await;
    let _pending = client.submit(&bulk_in(EP_INTERRUPT, 8)).await.unwrap();
    let _pending2 = client.submit(&bulk_in(EP_LOOP_IN, 8)).await.unwrap();
    assert!(server.registry.is_claimed(&busid("1-1")));
    drop(client);
    tokio::time::timeout(TIMEOUT, server.registry.wait_until_free(&busid("1-1")))
        .await
        .expect("device released after disconnect");
    let again = attach(&server, "1-1").await;
    assert_eq!(
        again
            .transfer(&get_device_descriptor())
            .await
            .unwrap()
            .status,
        0
    );
}

#[tokio::test]
async fn a_device_that_goes_away_ends_the_connection_after_its_reply() {
    let mut server = start(1, ServerConfig::default()).await;
    let client = attach(&server, "1-1").await;
    // The source/sink's interrupt endpoint reports the device gone once its handle is
    // dropped, as a passed-through device does when it is unplugged.
    drop(server.handles.remove(0));
    let reply = client.transfer(&bulk_in(EP_INTERRUPT, 8)).await.unwrap();
    assert_eq!(reply.status, ESHUTDOWN);
    tokio::time::timeout(TIMEOUT, client.closed())
        .await
        .expect("the server closes the connection")
        .expect("cleanly, after the reply");
    tokio::time::timeout(TIMEOUT, server.registry.wait_until_free(&busid("1-1")))
        .await
        .expect("device released");
}

#[tokio::test]
async fn a_client_breaking_the_protocol_is_dropped_and_others_go_on() {
    let server = start(2, ServerConfig::default()).await;
    let good = attach(&server, "1-2").await;
    let (mut stream, _) = import(&server.addr, &busid("1-1"), TIMEOUT).await.unwrap();
    // A header with command 9: not a USB/IP command.
    let mut garbage = vec![0u8; 48];
    garbage[3] = 9;
    stream.write_all(&garbage).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(TIMEOUT, stream.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "server closes the offender's connection"
    );
    tokio::time::timeout(TIMEOUT, server.registry.wait_until_free(&busid("1-1")))
        .await
        .unwrap();
    assert_eq!(
        good.transfer(&get_device_descriptor())
            .await
            .unwrap()
            .status,
        0
    );
}

#[tokio::test]
async fn oversized_transfer_is_refused_before_its_payload() {
    let config = ServerConfig {
        limits: periwire_wire::usbip::Limits {
            max_transfer_length: 1024,
            ..Default::default()
        },
        ..ServerConfig::default()
    };
    let server = start(1, config).await;
    let (mut stream, _) = import(&server.addr, &busid("1-1"), TIMEOUT).await.unwrap();
    let mut hdr = vec![0u8; 48];
    hdr[3] = 1; // CMD_SUBMIT, OUT, ep 0
    hdr[0x18..0x1c].copy_from_slice(&(1u32 << 30).to_be_bytes());
    stream.write_all(&hdr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(TIMEOUT, stream.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)));
}

#[tokio::test]
async fn in_flight_cap_applies_backpressure_not_disconnection() {
    let config = ServerConfig {
        max_urbs_in_flight: 4,
        ..ServerConfig::default()
    };
    let server = start(1, config).await;
    let client = attach(&server, "1-1").await;
    // Four idle interrupt INs fill the cap; a fifth URB then waits in the server, unread.
    let mut pending = Vec::new();
    for _ in 0..4 {
        pending.push(client.submit(&bulk_in(EP_INTERRUPT, 8)).await.unwrap().1);
    }
    let (_, desc) = client.submit(&get_device_descriptor()).await.unwrap();
    tokio::pin!(desc);
    // Completing one interrupt IN frees a slot, and the waiting request goes through.
    server.handles[0].send_interrupt(vec![9]).await.unwrap();
    let r = tokio::time::timeout(TIMEOUT, &mut desc)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 0);
    assert_eq!(pending.remove(0).await.unwrap().data, vec![9]);
    assert!(!client.is_closed());
}

#[tokio::test]
async fn arbitrary_bytes_never_take_the_server_down() {
    let server = start(1, ServerConfig::default()).await;
    let mut seed = 0x1234_5678_u32;
    for round in 0..64 {
        let mut stream = TcpStream::connect(&server.addr).await.unwrap();
        let len = 1 + (round * 37) % 700;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect();
        let _ = stream.write_all(&bytes).await;
        drop(stream);
    }
    assert_eq!(list_devices(&server.addr, TIMEOUT).await.unwrap().len(), 1);
}

#[tokio::test]
async fn shutdown_closes_clients_and_returns() {
    let mut server = start(1, ServerConfig::default()).await;
    let client = attach(&server, "1-1").await;
    let _pending = client.submit(&bulk_in(EP_INTERRUPT, 8)).await.unwrap();
    server.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(TIMEOUT, &mut server.task)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
    tokio::time::timeout(TIMEOUT, client.closed())
        .await
        .unwrap()
        .unwrap();
}

/// A source/sink that can refuse imports and be unplugged, as a host device can.
struct Unpluggable {
    inner: SourceSink,
    refuse: std::sync::atomic::AtomicBool,
    unplugged: tokio::sync::watch::Receiver<bool>,
}

impl periwire_usb::UsbDevice for Unpluggable {
    fn info(&self) -> periwire_usb::DeviceInfo {
        self.inner.info()
    }

    fn submit(
        &self,
        urb: periwire_usb::Urb,
    ) -> periwire_usb::BoxFuture<'_, periwire_usb::Completion> {
        self.inner.submit(urb)
    }

    fn attached(&self) -> Result<(), periwire_usb::AttachError> {
        if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(periwire_usb::AttachError("its driver keeps it".into()));
        }
        Ok(())
    }

    fn present(&self) -> bool {
        !*self.unplugged.borrow()
    }

    fn gone(&self) -> periwire_usb::BoxFuture<'_, ()> {
        let mut unplugged = self.unplugged.clone();
        Box::pin(async move {
            // A dropped sender means nobody can unplug it any more.
            if unplugged.wait_for(|gone| *gone).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

#[tokio::test]
async fn a_refused_attach_is_a_device_error_and_an_unplug_ends_an_idle_session() {
    let server = start(0, ServerConfig::default()).await;
    let (inner, _handle) = SourceSink::new();
    let (unplug, unplugged) = tokio::sync::watch::channel(false);
    let device = Arc::new(Unpluggable {
        inner,
        refuse: std::sync::atomic::AtomicBool::new(true),
        unplugged,
    });
    server
        .registry
        .add(Export {
            busid: busid("2-1"),
            busnum: 2,
            devnum: 2,
            name: "host".into(),
            device: device.clone(),
        })
        .unwrap();
    let refused = import(&server.addr, &busid("2-1"), TIMEOUT).await;
    assert!(matches!(
        refused,
        Err(periwire_server::client::ClientError::Refused(
            OpStatus::DeviceError
        ))
    ));
    assert!(!server.registry.is_claimed(&busid("2-1")), "stays free");

    device
        .refuse
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let client = attach(&server, "2-1").await;
    // Idle: nothing in flight would notice the unplug.
    unplug.send(true).unwrap();
    tokio::time::timeout(TIMEOUT, client.closed())
        .await
        .expect("the server closes the connection of an unplugged device")
        .expect("cleanly");
    tokio::time::timeout(TIMEOUT, server.registry.wait_until_free(&busid("2-1")))
        .await
        .expect("device released");

    // While unplugged it is not listed, and an import is refused as no such device.
    let listed = list_devices(&server.addr, TIMEOUT).await.unwrap();
    assert!(listed.is_empty(), "{listed:?}");
    let gone = import(&server.addr, &busid("2-1"), TIMEOUT).await;
    assert!(matches!(
        gone,
        Err(periwire_server::client::ClientError::Refused(
            OpStatus::NoDevice
        ))
    ));
}

/// The server over an in-memory stream rather than TCP: what a TLS or Unix-socket listener
/// hands it.
#[tokio::test]
async fn serves_any_byte_stream() {
    use periwire_wire::usbip::{Limits, OpReply, OpRequest, PendingUrb, SubmitHeader, UrbReply};
    let server = start(1, ServerConfig::default()).await;
    let (mut client, stream) = tokio::io::duplex(64 * 1024);
    let registry = server.registry.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        periwire_server::serve_stream(
            stream,
            "duplex",
            &registry,
            ServerConfig::default(),
            async {
                let _ = stopped.await;
            },
        )
        .await
    });
    let mut out = Vec::new();
    OpRequest::Import {
        busid: busid("1-1"),
    }
    .encode(&mut out);
    SubmitHeader {
        seqnum: 1,
        devid: 0x0001_0002,
        direction: Direction::In,
        ep: EP_SOURCE & 0x0f,
        transfer_flags: 0,
        transfer_buffer_length: 100,
        start_frame: 0,
        number_of_packets: 0,
        non_iso_marker: false,
        interval: 0,
        setup: [0; 8],
    }
    .with_payload(&[], Vec::new())
    .encode(&mut out);
    client.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    let limits = Limits::default();
    let pending = |_| {
        Some(PendingUrb {
            direction: Direction::In,
            transfer_buffer_length: 100,
        })
    };
    let (reply, used) = loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(TIMEOUT, client.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the server closed early");
        got.extend_from_slice(&chunk[..n]);
        let Some((op, op_len)) = OpReply::decode(&got, &limits).unwrap() else {
            continue;
        };
        assert!(matches!(op, OpReply::Import(Ok(_))));
        if let Some((reply, n)) = UrbReply::decode(&got[op_len..], &limits, pending).unwrap() {
            let UrbReply::Submit(r) = reply else {
                panic!("RET_SUBMIT expected, got {reply:?}")
            };
            break ((r.seqnum, r.status, r.data.to_vec()), op_len + n);
        }
    };
    assert_eq!(used, got.len(), "nothing but the two replies");
    assert_eq!(reply, (1, 0, periwire_usb::source_sink::pattern(100)));
    assert!(server.registry.is_claimed(&busid("1-1")));
    stop.send(()).unwrap();
    tokio::time::timeout(TIMEOUT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        !server.registry.is_claimed(&busid("1-1")),
        "released on stop"
    );
}

/// An isochronous loop: what an ISO OUT URB carries (each packet where the client put it)
/// comes back from the next ISO IN URB, one stored packet per IN packet, cut to its length.
/// Its model completions hold IN data compacted, the packets' bytes end to end.
struct IsoLoop {
    inner: SourceSink,
    packets: std::sync::Mutex<std::collections::VecDeque<Vec<u8>>>,
}

impl periwire_usb::UsbDevice for IsoLoop {
    fn info(&self) -> periwire_usb::DeviceInfo {
        // Any descriptors do: the test only submits ISO URBs.
        self.inner.info()
    }

    fn submit(&self, urb: Urb) -> BoxFuture<'_, Completion> {
        use periwire_usb::device::Direction as Dir;
        if urb.iso_packets.is_empty() {
            return self.inner.submit(urb);
        }
        let mut stored = self.packets.lock().unwrap();
        let mut done = Completion {
            start_frame: 7,
            ..Default::default()
        };
        for p in &urb.iso_packets {
            let mut p = *p;
            match urb.direction {
                Dir::Out => {
                    let at = p.offset as usize;
                    stored.push_back(urb.data[at..at + p.length as usize].to_vec());
                    p.actual_length = p.length;
                }
                Dir::In => {
                    let mut bytes = stored.pop_front().unwrap_or_default();
                    bytes.truncate(p.length as usize);
                    p.actual_length = bytes.len() as u32;
                    done.data.extend_from_slice(&bytes);
                }
            }
            done.actual_length += p.actual_length;
            done.iso_packets.push(p);
        }
        Box::pin(std::future::ready(done))
    }
}

/// ISO through the session and both directions of the wire, in the Linux layout: an OUT
/// URB's packets are read at their offsets; an IN URB's data comes back compacted (only the
/// bytes each packet received, end to end, as `usbip_pack_iso` sends them and
/// `usbip_pad_iso` spreads them out again) with `actual_length` their sum and one descriptor
/// per packet carrying the client's offsets.
#[tokio::test]
async fn iso_out_and_compacted_iso_in_travel_with_their_descriptors() {
    use periwire_wire::usbip::{
        IsoPacket, Limits, OpReply, OpRequest, PendingUrb, SubmitHeader, UrbReply,
    };
    let server = start(0, ServerConfig::default()).await;
    let (inner, _handle) = SourceSink::new();
    server
        .registry
        .add(Export {
            busid: busid("3-1"),
            busnum: 3,
            devnum: 2,
            name: "iso".into(),
            device: Arc::new(IsoLoop {
                inner,
                packets: Default::default(),
            }),
        })
        .unwrap();
    let mut stream = TcpStream::connect(&server.addr).await.unwrap();
    let packet = |offset, length| IsoPacket {
        offset,
        length,
        actual_length: 0,
        status: 0,
    };
    let header = |seqnum, direction, length, packets: u32| SubmitHeader {
        seqnum,
        devid: 0x0003_0002,
        direction,
        ep: 1,
        transfer_flags: 0x0002, // URB_ISO_ASAP
        transfer_buffer_length: length,
        start_frame: 0,
        number_of_packets: packets,
        non_iso_marker: false,
        interval: 1,
        setup: [0; 8],
    };
    let mut out = Vec::new();
    OpRequest::Import {
        busid: busid("3-1"),
    }
    .encode(&mut out);
    // OUT: 16 bytes, packet A (5 bytes) at 8, packet B (3 bytes) at 0; the rest is padding.
    let mut payload = vec![0xee_u8; 16];
    payload[8..13].copy_from_slice(b"AAAAA");
    payload[0..3].copy_from_slice(b"BBB");
    header(1, Direction::Out, 16, 2)
        .with_payload(&payload, vec![packet(8, 5), packet(0, 3)])
        .encode(&mut out);
    // IN: three 4-byte packets in a 12-byte buffer; A comes back cut to 4, B whole, and the
    // third finds nothing.
    header(2, Direction::In, 12, 3)
        .with_payload(&[], vec![packet(0, 4), packet(4, 4), packet(8, 4)])
        .encode(&mut out);
    stream.write_all(&out).await.unwrap();

    let limits = Limits::default();
    let pending = |seqnum| {
        Some(match seqnum {
            1 => PendingUrb {
                direction: Direction::Out,
                transfer_buffer_length: 16,
            },
            _ => PendingUrb {
                direction: Direction::In,
                transfer_buffer_length: 12,
            },
        })
    };
    let mut got = Vec::new();
    let mut replies = Vec::new();
    while replies.len() < 2 {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(TIMEOUT, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the server closed early");
        got.extend_from_slice(&chunk[..n]);
        let Some((op, mut at)) = OpReply::decode(&got, &limits).unwrap() else {
            continue;
        };
        assert!(matches!(op, OpReply::Import(Ok(_))));
        replies.clear();
        while let Some((reply, n)) = UrbReply::decode(&got[at..], &limits, pending).unwrap() {
            let UrbReply::Submit(r) = reply else {
                panic!("RET_SUBMIT expected, got {reply:?}")
            };
            let results: Vec<(u32, u32, u32)> = r
                .iso_packets
                .iter()
                .map(|p| (p.offset, p.length, p.actual_length))
                .collect();
            replies.push((
                r.seqnum,
                r.status,
                r.actual_length,
                r.start_frame,
                r.data.to_vec(),
                results,
            ));
            at += n;
        }
    }
    assert_eq!(
        replies[0],
        (1, 0, 8, 7, Vec::new(), vec![(8, 5, 5), (0, 3, 3)]),
        "ISO OUT: every packet's bytes taken from its offset"
    );
    assert_eq!(
        replies[1],
        (
            2,
            0,
            7,
            7,
            b"AAAABBB".to_vec(),
            vec![(0, 4, 4), (4, 4, 3), (8, 4, 0)]
        ),
        "ISO IN: the received bytes compacted, actual_length their sum, the client's offsets"
    );
}
