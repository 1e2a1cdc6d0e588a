//! Writes the hand-made seeds of each target's corpus (`cargo test -p periwire-fuzz --test
//! seeds -- --ignored`): real messages of each protocol, for fuzzing to start from.

use std::path::Path;

use periwire_server::secure::{tls, Identity, TrustStore};
use periwire_wire::usbip::{
    BusId, CmdSubmit, CmdUnlink, DeviceRecord, Direction, ExportedDevice, InterfaceRecord, OpReply,
    OpRequest, Speed, SubmitHeader,
};

/// Writes `corpus/<target>/seed-<name>`. Keep seeds when minimising the corpus (`cargo fuzz
/// cmin` drops them): run this again after it.
fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

fn record() -> DeviceRecord {
    DeviceRecord {
        path: "/sys/devices/platform/periwire/usb1/1-1".into(),
        busid: BusId::new("1-1").unwrap(),
        busnum: 1,
        devnum: 2,
        speed: Speed::High,
        id_vendor: 0x1209,
        id_product: 0x7702,
        bcd_device: 0x0100,
        device_class: 0,
        device_subclass: 0,
        device_protocol: 0,
        configuration_value: 1,
        num_configurations: 1,
        num_interfaces: 1,
    }
}

fn submit(seqnum: u32, direction: Direction, ep: u8, len: u32, setup: [u8; 8]) -> SubmitHeader {
    SubmitHeader {
        seqnum,
        devid: 0x0001_0002,
        direction,
        ep,
        transfer_flags: 0,
        transfer_buffer_length: len,
        start_frame: 0,
        number_of_packets: 0,
        non_iso_marker: false,
        interval: 0,
        setup,
    }
}

#[test]
#[ignore = "writes the seeds; run by hand"]
fn write_seeds() {
    let mut b = Vec::new();
    OpRequest::Devlist.encode(&mut b);
    write("usbip_op", "devlist", &b);
    write("front_door", "devlist", &b);
    b.clear();
    OpRequest::Import {
        busid: BusId::new("1-1").unwrap(),
    }
    .encode(&mut b);
    write("usbip_op", "import", &b);
    let mut no_nul = b[..8].to_vec();
    no_nul.extend_from_slice(&[b'1'; 32]);
    write("usbip_op", "import-no-nul", &no_nul);
    b.clear();
    OpReply::Import(Ok(record())).encode(&mut b);
    write("usbip_op", "import-reply", &b);
    b.clear();
    OpReply::Devlist(vec![ExportedDevice {
        device: record(),
        interfaces: vec![InterfaceRecord {
            class: 8,
            subclass: 6,
            protocol: 0x50,
        }],
    }])
    .encode(&mut b);
    write("usbip_op", "devlist-reply", &b);

    b.clear();
    let descriptor = [0x80, 6, 0, 1, 0, 0, 18, 0];
    CmdSubmit {
        header: submit(1, Direction::In, 0, 18, descriptor),
        data: &[],
        iso_packets: Vec::new(),
    }
    .encode(&mut b);
    CmdSubmit {
        header: submit(2, Direction::Out, 2, 8, [0; 8]),
        data: &[1, 2, 3, 4, 5, 6, 7, 8],
        iso_packets: Vec::new(),
    }
    .encode(&mut b);
    CmdUnlink {
        seqnum: 3,
        devid: 0x0001_0002,
        unlink_seqnum: 1,
    }
    .encode(&mut b);
    write("usbip_urb", "submit-submit-unlink", &b);
    // What fuzzing found in the harness: a sequence number used again after its URB was
    // unlinked must be looked up as its latest URB.
    b.clear();
    for (seqnum, len) in [(1, 18), (1, 64)] {
        CmdSubmit {
            header: submit(seqnum, Direction::In, 0, len, descriptor),
            data: &[],
            iso_packets: Vec::new(),
        }
        .encode(&mut b);
        if len == 18 {
            CmdUnlink {
                seqnum: 2,
                devid: 0x0001_0002,
                unlink_seqnum: 1,
            }
            .encode(&mut b);
        }
    }
    write("usbip_urb", "seqnum-reused-after-unlink", &b);

    write("hci_h4", "reset", &[0x01, 0x03, 0x0c, 0x00]);
    write(
        "hci_h4",
        "command-complete",
        &[0x04, 0x0e, 0x04, 0x01, 0x03, 0x0c, 0x00],
    );
    write(
        "hci_h4",
        "acl-l2cap-echo",
        &[
            0x02, 0x01, 0x20, 0x0c, 0x00, 0x08, 0x00, 0x01, 0x00, 0x08, 0x01, 0x04, 0x00, 1, 2, 3,
            4,
        ],
    );

    let mut cbw = b"USBC".to_vec();
    cbw.extend_from_slice(&[1, 0, 0, 0, 36, 0, 0, 0, 0x80, 0, 6]);
    cbw.extend_from_slice(&[0x12, 0, 0, 0, 36, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut cdbs = cbw.clone();
    for cdb in [
        [0x00u8; 16],
        [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0x28, 0, 0, 0, 0, 1, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0],
        [0x2a, 0, 0, 0, 0, 2, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0],
        [0x1a, 0, 0x3f, 0, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ] {
        cdbs.extend_from_slice(&cdb);
    }
    write("scsi", "inquiry-and-io", &cdbs);

    let readme = include_str!("../../README.md");
    let start = readme.find("```toml\n").unwrap() + 8;
    let end = start + readme[start..].find("```").unwrap();
    write("config", "readme", &readme.as_bytes()[start..end]);

    let dir = tempfile::tempdir().unwrap();
    let id = Identity::load_or_create(dir.path(), "seed").unwrap();
    let (config, _) = tls::client_config(&id, TrustStore::default(), "seed", false).unwrap();
    let mut client = rustls::ClientConnection::new(config, tls::server_name()).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    write("front_door", "client-hello", &hello);
}
