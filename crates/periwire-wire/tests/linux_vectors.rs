//! Messages captured on loopback between Linux 6.1's `usbip` tool / `vhci-hcd` (in a QEMU
//! guest) and periwire, during the serial-port guest scenario. Each is parsed field by field
//! and encoded back to the same bytes.

use periwire_wire::usbip::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// `usbip attach -b 1-4`: the tool writes the 8-byte header and the 32-byte bus id separately.
const OP_REQ_IMPORT_1_4: &str =
    "01118003 00000000 312d3400 00000000 00000000 00000000 00000000 00000000 00000000 00000000";

/// vhci-hcd's first control transfer: GET_DESCRIPTOR(DEVICE), 64 bytes, seqnum 1, devid 1-5.
const CMD_SUBMIT_GET_DEVICE_DESCRIPTOR: &str = "00000001 00000001 00010005 00000001 00000000 00000200 00000040 00000000 00000000 00000000 80060001 00004000";

/// cdc-acm's SET_LINE_CODING: a control OUT carrying 7 bytes (115200 8N1).
const CMD_SUBMIT_SET_LINE_CODING: &str = "00000001 0000000a 00010005 00000000 00000000 00000000 00000007 00000000 00000000 00000000 21200000 00000700 00c20100 000008";

/// cdc-acm closing the tty: unlink of seqnum 11.
const CMD_UNLINK_11: &str = "00000002 0000001f 00010005 00000000 00000000 0000000b 00000000 00000000 00000000 00000000 00000000 00000000";

/// periwire's answer: the URB was pending, so −ECONNRESET.
const RET_UNLINK_ECONNRESET: &str = "00000004 0000001f 00000000 00000000 00000000 ffffff98 00000000 00000000 00000000 00000000 00000000 00000000";

#[test]
fn op_req_import_from_the_usbip_tool() {
    let bytes = hex(OP_REQ_IMPORT_1_4);
    let req = OpRequest::decode_exact(&bytes).unwrap();
    assert_eq!(
        req,
        OpRequest::Import {
            busid: BusId::new("1-4").unwrap()
        }
    );
    let mut out = Vec::new();
    req.encode(&mut out);
    assert_eq!(out, bytes);
}

#[test]
fn cmd_submit_control_in_from_vhci() {
    let bytes = hex(CMD_SUBMIT_GET_DEVICE_DESCRIPTOR);
    let cmd = UrbCommand::decode_exact(&bytes, &Limits::default()).unwrap();
    let UrbCommand::Submit(s) = &cmd else {
        panic!("not a submit")
    };
    assert_eq!(
        (
            s.header.seqnum,
            s.header.devid,
            s.header.direction,
            s.header.ep
        ),
        (1, 0x0001_0005, Direction::In, 0)
    );
    assert_eq!(s.header.transfer_flags, 0x200, "URB_DIR_IN");
    assert_eq!(s.header.transfer_buffer_length, 64);
    assert!(
        !s.header.non_iso_marker,
        "Linux sends 0 packets for non-ISO"
    );
    assert_eq!(
        s.header.setup,
        [0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 0x40, 0x00]
    );
    assert!(s.data.is_empty());
    let mut out = Vec::new();
    cmd.encode(&mut out);
    assert_eq!(out, bytes);
}

#[test]
fn cmd_submit_control_out_with_data_from_vhci() {
    let bytes = hex(CMD_SUBMIT_SET_LINE_CODING);
    let cmd = UrbCommand::decode_exact(&bytes, &Limits::default()).unwrap();
    let UrbCommand::Submit(s) = &cmd else {
        panic!("not a submit")
    };
    assert_eq!(
        (
            s.header.seqnum,
            s.header.direction,
            s.header.transfer_buffer_length
        ),
        (10, Direction::Out, 7)
    );
    assert_eq!(s.header.setup[..2], [0x21, 0x20]);
    assert_eq!(
        s.data,
        [0x00, 0xc2, 0x01, 0x00, 0x00, 0x00, 0x08],
        "115200 baud, 8 data bits"
    );
    let mut out = Vec::new();
    cmd.encode(&mut out);
    assert_eq!(out, bytes);
}

#[test]
fn cmd_unlink_and_ret_unlink() {
    let bytes = hex(CMD_UNLINK_11);
    let cmd = UrbCommand::decode_exact(&bytes, &Limits::default()).unwrap();
    assert_eq!(
        cmd,
        UrbCommand::Unlink(CmdUnlink {
            seqnum: 31,
            devid: 0x0001_0005,
            unlink_seqnum: 11
        })
    );
    let mut out = Vec::new();
    cmd.encode(&mut out);
    assert_eq!(out, bytes);

    let reply = hex(RET_UNLINK_ECONNRESET);
    let mut out = Vec::new();
    RetUnlink {
        seqnum: 31,
        status: -104,
    }
    .encode(&mut out);
    assert_eq!(out, reply);
    let decoded = UrbReply::decode(&reply, &Limits::default(), |_| None).unwrap();
    assert_eq!(
        decoded,
        Some((
            UrbReply::Unlink(RetUnlink {
                seqnum: 31,
                status: -104
            }),
            48
        ))
    );
}
