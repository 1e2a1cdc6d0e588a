//! The usbredir server's driver over an in-memory stream, against a scripted usb-guest: the
//! handshake, a configuration, bulk and interrupt data, the disconnect on stop, refusals.
//! QEMU's own `usb-redir` drives the same server in `crates/periwire/tests/guest_usbredir.rs`.

use std::sync::Arc;
use std::time::Duration;

use periwire_server::usbredir::{serve_stream, UsbredirConfig, UsbredirError};
use periwire_server::{Export, Registry};
use periwire_usb::source_sink::{SourceSink, SourceSinkHandle, EP_INTERRUPT, EP_SOURCE};
use periwire_wire::usbip::BusId;
use periwire_wire::usbredir::{
    BulkHeader, Caps, Codec, EndpointType, Frame, Limits, Packet, Role, Status,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::oneshot;

const TIMEOUT: Duration = Duration::from_secs(10);

struct TestGuest {
    stream: DuplexStream,
    codec: Codec,
    buf: Vec<u8>,
}

impl TestGuest {
    async fn send(&mut self, id: u64, packet: Packet) {
        let mut out = Vec::new();
        self.codec.encode(id, &packet, &mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next frame, or `None` at the end of the stream.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, n)) = self.codec.decode(&self.buf).unwrap() {
                self.buf.drain(..n);
                return Some(frame);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(TIMEOUT, self.stream.read(&mut chunk))
                .await
                .expect("the server answers")
                .unwrap();
            if n == 0 {
                assert!(self.buf.is_empty(), "stream ended inside a packet");
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn expect(&mut self) -> Frame {
        self.next().await.expect("a packet")
    }
}

fn registry() -> (Registry, BusId, SourceSinkHandle) {
    let registry = Registry::new();
    let (device, handle) = SourceSink::new();
    let busid = BusId::new("1-1").unwrap();
    registry
        .add(Export {
            busid: busid.clone(),
            busnum: 1,
            devnum: 2,
            name: "ss".into(),
            device: Arc::new(device),
        })
        .unwrap();
    (registry, busid, handle)
}

/// Starts the server on one end of a pipe; returns the guest's end, the stop switch and the
/// server's task.
fn start(
    registry: &Registry,
    busid: &BusId,
) -> (
    TestGuest,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), UsbredirError>>,
) {
    start_with(registry, busid, UsbredirConfig::default())
}

/// [`start`] with `config`.
fn start_with(
    registry: &Registry,
    busid: &BusId,
    config: UsbredirConfig,
) -> (
    TestGuest,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), UsbredirError>>,
) {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let (stop, stopped) = oneshot::channel::<()>();
    let (registry, busid) = (registry.clone(), busid.clone());
    let task = tokio::spawn(async move {
        serve_stream(theirs, "test guest", &registry, &busid, config, async {
            let _ = stopped.await;
        })
        .await
    });
    let guest = TestGuest {
        stream: ours,
        codec: Codec::new(Role::Guest, Limits::default()),
        buf: Vec::new(),
    };
    (guest, stop, task)
}

/// Takes the server's hello and answers with one that has every capability.
async fn hello(g: &mut TestGuest) {
    let Packet::Hello { capabilities, .. } = g.expect().await.packet else {
        panic!("the hello comes first");
    };
    let all = Caps(0xff);
    g.codec.negotiate(all, Caps(capabilities[0]));
    g.send(
        0,
        Packet::Hello {
            version: "test guest".into(),
            capabilities: vec![all.0],
        },
    )
    .await;
}

#[tokio::test]
async fn a_guest_configures_the_device_moves_data_and_is_told_when_the_server_stops() {
    let (registry, busid, handle) = registry();
    let (mut g, stop, task) = start(&registry, &busid);
    hello(&mut g).await;
    let kinds: Vec<u32> = [g.expect().await, g.expect().await, g.expect().await]
        .iter()
        .map(|f| f.packet.kind())
        .collect();
    assert_eq!(kinds, [4, 5, 1], "interface_info, ep_info, device_connect");
    assert!(registry.is_claimed(&busid));

    g.send(1, Packet::SetConfiguration { configuration: 1 })
        .await;
    let Packet::InterfaceInfo(interfaces) = g.expect().await.packet else {
        panic!("new interface_info first");
    };
    assert_eq!(interfaces.len(), 1);
    let Packet::EpInfo(eps) = g.expect().await.packet else {
        panic!("then ep_info");
    };
    assert_eq!(eps[16 + 1].kind, EndpointType::Bulk, "0x81 is bulk IN");
    let status = g.expect().await;
    assert_eq!(
        (status.id, status.packet),
        (
            1,
            Packet::ConfigurationStatus {
                status: Status::Success,
                configuration: 1
            }
        )
    );

    g.send(
        7,
        Packet::Bulk(
            BulkHeader {
                endpoint: EP_SOURCE,
                status: Status::Success,
                length: 100_000,
                stream_id: 0,
            },
            Vec::new(),
        ),
    )
    .await;
    let reply = g.expect().await;
    let Packet::Bulk(h, data) = reply.packet else {
        panic!("a bulk reply");
    };
    assert_eq!(
        (reply.id, h.status, h.length, data.len()),
        (7, Status::Success, 100_000, 100_000)
    );

    g.send(
        0,
        Packet::StartInterruptReceiving {
            endpoint: EP_INTERRUPT,
        },
    )
    .await;
    assert!(matches!(
        g.expect().await.packet,
        Packet::InterruptReceivingStatus {
            status: Status::Success,
            ..
        }
    ));
    handle.send_interrupt(vec![1, 2, 3, 4]).await.unwrap();
    let report = g.expect().await;
    assert_eq!(report.id, 0);
    let Packet::Interrupt(h, data) = report.packet else {
        panic!("an interrupt packet");
    };
    assert_eq!((h.endpoint, data), (EP_INTERRUPT, vec![1, 2, 3, 4]));

    // The next poll is pending when the server stops: the guest is told the device is gone.
    stop.send(()).unwrap();
    assert_eq!(g.expect().await.packet, Packet::DeviceDisconnect);
    g.send(0, Packet::DeviceDisconnectAck).await;
    assert!(
        g.next().await.is_none(),
        "the connection closes after the ack"
    );
    task.await.unwrap().unwrap();
    assert!(!registry.is_claimed(&busid), "the device is released");
}

#[tokio::test]
async fn a_device_withdrawn_while_held_is_announced_gone_and_its_holder_shown_until_then() {
    let (registry, busid, _handle) = registry();
    let (mut g, _stop, task) = start(&registry, &busid);
    hello(&mut g).await;
    // interface_info and ep_info, then device_connect.
    while g.expect().await.packet.kind() != 1 {}
    let holder = registry.claim_info(&busid).expect("claimed").client;
    assert_eq!(
        holder.address, "test guest",
        "status names the usbredir guest"
    );

    // Unbound (the device manager withdraws it): to the guest, as if unplugged.
    registry.remove(&busid).expect("the export");
    assert_eq!(g.expect().await.packet, Packet::DeviceDisconnect);
    g.send(0, Packet::DeviceDisconnectAck).await;
    assert!(g.next().await.is_none(), "closed after the ack");
    task.await.unwrap().unwrap();
    assert!(!registry.is_claimed(&busid));
}

#[tokio::test]
async fn a_device_another_client_holds_is_refused() {
    let (registry, busid, _handle) = registry();
    let _claim = registry.claim(&busid).unwrap();
    let (mut g, _stop, task) = start(&registry, &busid);
    assert!(g.next().await.is_none(), "closed without a word");
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_guest_that_skips_the_hello_loses_its_connection_and_the_device_is_freed() {
    let (registry, busid, _handle) = registry();
    let (mut g, _stop, task) = start(&registry, &busid);
    g.expect().await;
    g.send(1, Packet::Reset).await;
    let result = tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
    assert!(
        matches!(result, Err(UsbredirError::Protocol(_))),
        "{result:?}"
    );
    assert!(!registry.is_claimed(&busid));
}

#[tokio::test]
async fn a_guest_that_never_says_hello_is_dropped_and_the_device_freed() {
    let (registry, busid, _handle) = registry();
    let config = UsbredirConfig {
        hello_timeout: Duration::from_millis(200),
        ..UsbredirConfig::default()
    };
    let (mut g, _stop, task) = start_with(&registry, &busid, config);
    // The server's hello comes once it has claimed the device; the guest stays silent.
    g.expect().await;
    assert!(
        registry.is_claimed(&busid),
        "held while the guest may still speak"
    );
    let result = tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
    assert!(
        matches!(result, Err(UsbredirError::NoHello(_))),
        "{result:?}"
    );
    assert!(!registry.is_claimed(&busid));
}
