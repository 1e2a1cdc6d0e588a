//! Scripts a host would run against the mass-storage device: the state machine alone (with a
//! small `usb-storage`-like host), then the `UsbDevice` glue over a real image file, then
//! property tests, then the demo image.

use super::bot::{CBW_LEN, CSW_LEN};
use super::*;
use crate::device::Direction;
use crate::setup::request;

fn identity() -> Identity {
    Identity {
        vendor: DEFAULT_VENDOR.into(),
        product: DEFAULT_PRODUCT.into(),
        revision: "0100".into(),
        serial: "0123456789ABCDEF".into(),
    }
}

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// A store of `blocks` blocks whose every byte tells its offset.
fn patterned(blocks: usize) -> MemoryStore {
    let mut s = MemoryStore::new(blocks);
    for (i, b) in s.bytes_mut().iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    s
}

fn cdb10(opcode: u8, lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![opcode, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.push(0);
    c.extend_from_slice(&blocks.to_be_bytes());
    c.push(0);
    c
}

/// Drives a [`BulkOnlyTransport`] the way Linux `usb-storage` does: CBW, data phase in
/// transfers of the sizes given, CSW.
struct Host {
    bot: BulkOnlyTransport<MemoryStore>,
    tag: u32,
}

impl Host {
    fn new(store: MemoryStore) -> Self {
        Self {
            bot: BulkOnlyTransport::new(store, identity()),
            tag: 0,
        }
    }

    fn cbw(&mut self, cdb: &[u8], data_in: bool, length: u32) -> [u8; CBW_LEN] {
        self.tag += 1;
        let mut cb = [0u8; 16];
        cb[..cdb.len()].copy_from_slice(cdb);
        CommandBlockWrapper {
            tag: self.tag,
            data_transfer_length: length,
            flags: if data_in { 0x80 } else { 0 },
            lun: 0,
            cb_length: cdb.len() as u8,
            cb,
        }
        .emit()
    }

    fn send(&mut self, bytes: &[u8]) {
        assert_eq!(self.bot.handle_bulk_out(bytes), Ok(bytes.len()));
    }

    fn read(&mut self, max_len: usize) -> Vec<u8> {
        match self.bot.poll_bulk_in(max_len) {
            BulkIn::Data(d) => {
                assert!(d.len() <= max_len);
                d
            }
            other => panic!("bulk IN of {max_len}: {other:?}"),
        }
    }

    fn csw(&mut self) -> CommandStatusWrapper {
        let bytes = self.read(CSW_LEN);
        let csw = CommandStatusWrapper::parse(&bytes).unwrap();
        assert_eq!(csw.tag, self.tag, "CSW echoes the CBW tag");
        assert!(self.bot.is_idle());
        csw
    }

    /// A data-in command read in one transfer of exactly the CBW length, as Linux does.
    fn data_in(&mut self, cdb: &[u8], length: u32) -> (Vec<u8>, CommandStatusWrapper) {
        self.data_in_split(cdb, length, length as usize)
    }

    /// A data-in command read in transfers of `urb` bytes until one is short or all the
    /// data came.
    fn data_in_split(
        &mut self,
        cdb: &[u8],
        length: u32,
        urb: usize,
    ) -> (Vec<u8>, CommandStatusWrapper) {
        let cbw = self.cbw(cdb, true, length);
        self.send(&cbw);
        let mut data = Vec::new();
        loop {
            let want = urb.min(length as usize - data.len());
            let chunk = self.read(want);
            let short = chunk.len() < want;
            data.extend(chunk);
            if short || data.len() == length as usize {
                break;
            }
        }
        (data, self.csw())
    }

    fn data_out(&mut self, cdb: &[u8], data: &[u8]) -> CommandStatusWrapper {
        self.data_out_split(cdb, data, data.len().max(1))
    }

    fn data_out_split(&mut self, cdb: &[u8], data: &[u8], urb: usize) -> CommandStatusWrapper {
        let cbw = self.cbw(cdb, false, data.len() as u32);
        self.send(&cbw);
        for chunk in data.chunks(urb) {
            self.send(chunk);
        }
        self.csw()
    }

    fn no_data(&mut self, cdb: &[u8]) -> CommandStatusWrapper {
        let cbw = self.cbw(cdb, false, 0);
        self.send(&cbw);
        self.csw()
    }

    /// Raw CBW bytes, then a data-in transfer of `data_in` bytes if not 0, then the CSW.
    fn exchange(&mut self, cbw: &str, data_in: usize) -> (Vec<u8>, CommandStatusWrapper) {
        self.send(&hex(cbw));
        let data = if data_in > 0 {
            self.read(data_in)
        } else {
            vec![]
        };
        let csw = CommandStatusWrapper::parse(&self.read(CSW_LEN)).unwrap();
        (data, csw)
    }

    fn sense(&mut self) -> SenseData {
        let (d, csw) = self.data_in(&[0x03, 0, 0, 0, 18, 0], 18);
        assert_eq!(csw.status, CswStatus::Passed);
        SenseData::from_fixed(&d).unwrap()
    }
}

fn passed(residue: u32) -> (CswStatus, u32) {
    (CswStatus::Passed, residue)
}

fn status(csw: CommandStatusWrapper) -> (CswStatus, u32) {
    (csw.status, csw.data_residue)
}

/// The CBWs Linux 6.1 (Debian) `usb-storage` + `sd` send when the disk is attached through
/// vhci-hcd and then opened, byte for byte as captured from a guest, with the data-in
/// length and the status each must get.
const LINUX_ATTACH: &[(&str, usize, u32)] = &[
    // INQUIRY, 36 bytes (scsi_probe_lun).
    (
        "55534243 01000000 24000000 80 00 06 120000002400 00000000000000000000",
        36,
        0,
    ),
    // TEST UNIT READY (sd_spinup_disk).
    (
        "55534243 02000000 00000000 00 00 06 000000000000 00000000000000000000",
        0,
        0,
    ),
    // READ CAPACITY(10).
    (
        "55534243 03000000 08000000 80 00 0a 25000000000000000000 000000000000",
        8,
        0,
    ),
    // READ(10) of block 0, one block.
    (
        "55534243 04000000 00020000 80 00 0a 28000000000000000100 000000000000",
        512,
        0,
    ),
    // MODE SENSE(6), all pages, 192 bytes (write protect; usb-storage sets
    // use_192_bytes_for_3f), twice (cache type: skip_ms_page_8 makes sd look for page 8 here).
    (
        "55534243 05000000 c0000000 80 00 06 1a003f00c000 00000000000000000000",
        192,
        144,
    ),
    (
        "55534243 06000000 c0000000 80 00 06 1a003f00c000 00000000000000000000",
        192,
        144,
    ),
    // Revalidation on open: TUR, TUR, READ CAPACITY(10), READ(10), MODE SENSE(6) twice.
    (
        "55534243 07000000 00000000 00 00 06 000000000000 00000000000000000000",
        0,
        0,
    ),
    (
        "55534243 08000000 00000000 00 00 06 000000000000 00000000000000000000",
        0,
        0,
    ),
    (
        "55534243 09000000 08000000 80 00 0a 25000000000000000000 000000000000",
        8,
        0,
    ),
    (
        "55534243 0a000000 00020000 80 00 0a 28000000000000000100 000000000000",
        512,
        0,
    ),
    (
        "55534243 0b000000 c0000000 80 00 06 1a003f00c000 00000000000000000000",
        192,
        144,
    ),
    (
        "55534243 0c000000 c0000000 80 00 06 1a003f00c000 00000000000000000000",
        192,
        144,
    ),
    // PREVENT ALLOW MEDIUM REMOVAL (prevent), READ(10) of 4 KiB (partition scan), allow.
    (
        "55534243 0d000000 00000000 00 00 06 1e0000000100 00000000000000000000",
        0,
        0,
    ),
    (
        "55534243 0e000000 00100000 80 00 0a 28000000000000000800 000000000000",
        4096,
        0,
    ),
    (
        "55534243 0f000000 00000000 00 00 06 1e0000000000 00000000000000000000",
        0,
        0,
    ),
];

#[test]
fn linux_attach_sequence() {
    let mut h = Host::new(patterned(131_072));
    let mut answers = Vec::new();
    for (i, &(cbw, data_in, residue)) in LINUX_ATTACH.iter().enumerate() {
        let (data, csw) = h.exchange(cbw, data_in);
        assert_eq!(
            (csw.tag as usize, csw.status, csw.data_residue),
            (i + 1, CswStatus::Passed, residue),
            "CBW {cbw}"
        );
        assert_eq!(data.len() as u32, data_in as u32 - residue, "CBW {cbw}");
        answers.push(data);
    }
    // INQUIRY: 36 bytes exactly and residue 0 (a residue here makes Linux ignore residues
    // for good); direct access, removable, SPC-4.
    let inquiry = &answers[0];
    assert_eq!(&inquiry[..5], &[0x00, 0x80, 0x06, 0x02, 31]);
    assert_eq!(&inquiry[8..36], b"periwireVirtual Disk    0100");
    assert_eq!(answers[2], hex("0001ffff 00000200"), "131072 blocks of 512");
    assert_eq!(answers[3], h.bot.store().bytes()[..512].to_vec());
    assert_eq!(answers[13], h.bot.store().bytes()[..4096].to_vec());
    // Mode parameter header as sd prints it ("Mode Sense: 2f 00 00 00"), then the caching
    // page with WCE found the way sd_read_cache_type walks the pages.
    let mode = &answers[4];
    assert_eq!(&mode[..4], &[0x2f, 0x00, 0x00, 0x00]);
    let mut offset = 4 + usize::from(mode[3]);
    let mut wce = None;
    while offset + 2 < mode.len() {
        if mode[offset] & 0x3f == 0x08 {
            wce = Some(mode[offset + 2] & 0x04 != 0);
            break;
        }
        offset += 2 + usize::from(mode[offset + 1]);
    }
    assert_eq!(wce, Some(true), "Write cache: enabled");
    assert!(
        !h.bot.unit().removal_prevented(),
        "allowed again at the end"
    );

    // SYNCHRONIZE CACHE(10), as sd sends it on fsync.
    let (_, csw) = h.exchange(
        "55534243 10000000 00000000 00 00 0a 35000000000000000000 000000000000",
        0,
    );
    assert_eq!(status(csw), passed(0));
    assert_eq!(h.bot.store().flushes(), 1);
}

#[test]
fn every_linux_command_is_answered() {
    let mut h = Host::new(MemoryStore::new(4096));
    // READ CAPACITY(16), 32 bytes.
    let (d, csw) = h.data_in(&hex("9e10 0000000000000000 00000020 0000"), 32);
    assert_eq!(status(csw), passed(0));
    assert_eq!(&d[..12], &hex("0000000000000fff 00000200")[..]);
    // MODE SENSE(10) caching page.
    let (d, csw) = h.data_in(&hex("5a000800 00000000 ff00"), 255);
    assert_eq!(status(csw), passed(255 - 28));
    assert_eq!(&d[8..11], &[0x08, 0x12, 0x04]);
    // READ FORMAT CAPACITIES.
    let (d, csw) = h.data_in(&hex("23000000 000000fc 0000 00000000"), 252);
    assert_eq!(status(csw), passed(252 - 12));
    assert_eq!(d[8], 2);
    // START STOP UNIT, VERIFY(10), SYNCHRONIZE CACHE(16), REPORT LUNS.
    assert_eq!(status(h.no_data(&hex("1b000000 0100"))), passed(0));
    assert_eq!(status(h.no_data(&cdb10(0x2f, 0, 8))), passed(0));
    assert_eq!(
        status(h.no_data(&hex("91000000000000000000 00000000 0000"))),
        passed(0)
    );
    let (d, csw) = h.data_in(&hex("a0000000 0000 00000100 0000"), 256);
    assert_eq!(status(csw), passed(240));
    assert_eq!(d, hex("00000008 00000000 0000000000000000"));
    // VPD pages as udev's scsi_id asks them.
    for page in [0x00u8, 0x80, 0x83, 0xb0, 0xb1] {
        let (d, csw) = h.data_in(&[0x12, 1, page, 0, 0xff, 0], 255);
        assert_eq!(csw.status, CswStatus::Passed, "page {page:#x}");
        assert_eq!(d[1], page);
        assert_eq!(usize::from(u16::from_be_bytes([d[2], d[3]])) + 4, d.len());
        assert_eq!(csw.data_residue as usize, 255 - d.len());
    }
}

#[test]
fn unsupported_and_failing_commands_leave_sense() {
    let mut h = Host::new(MemoryStore::new(64));
    // ATA PASS-THROUGH(12) IDENTIFY, as hdparm/udev may try: case 4 (Hi > Dn).
    let (d, csw) = h.data_in(&hex("a1 08 2e 00 01 00 00 00 ec 00 00 00"), 512);
    assert!(d.is_empty(), "zero-length data-in");
    assert_eq!(status(csw), (CswStatus::Failed, 512));
    assert_eq!(h.sense(), SenseData::INVALID_COMMAND_OPERATION_CODE);
    assert_eq!(h.sense(), SenseData::NO_SENSE, "sense reported once");

    // READ(10) past the end.
    let (d, csw) = h.data_in(&cdb10(0x28, 60, 8), 4096);
    assert!(d.is_empty());
    assert_eq!(status(csw), (CswStatus::Failed, 4096));
    // usb-storage asks 96 bytes of sense for an SPC-3+ device: 18 come, residue 78.
    let (d, csw) = h.data_in(&[0x03, 0, 0, 0, 96, 0], 96);
    assert_eq!(status(csw), passed(78));
    assert_eq!(SenseData::from_fixed(&d), Some(SenseData::LBA_OUT_OF_RANGE));

    // VPD page not supported.
    let (_, csw) = h.data_in(&[0x12, 1, 0xb2, 0, 0xff, 0], 255);
    assert_eq!(status(csw), (CswStatus::Failed, 255));
    assert_eq!(h.sense(), SenseData::INVALID_FIELD_IN_CDB);

    // A LUN that does not exist.
    let mut cbw = h.cbw(&[0x00; 6], false, 0);
    cbw[13] = 1;
    h.send(&cbw);
    assert_eq!(h.csw().status, CswStatus::Failed);
    assert_eq!(h.sense(), SenseData::LOGICAL_UNIT_NOT_SUPPORTED);
}

#[test]
fn read_only_image_is_protected() {
    let mut h = Host::new(patterned(64).read_only());
    let (d, _) = h.data_in(&[0x1a, 0, 0x3f, 0, 0xc0, 0], 192);
    assert_eq!(d[2] & 0x80, 0x80, "WP in the mode parameter header");
    let before = h.bot.store().bytes().to_vec();
    // WRITE(10): the host still sends its data (case 9), which is dropped.
    let csw = h.data_out(&cdb10(0x2a, 0, 2), &[0xee; 1024]);
    assert_eq!(status(csw), (CswStatus::Failed, 1024));
    assert_eq!(
        h.sense(),
        SenseData {
            key: 0x07,
            asc: 0x27,
            ascq: 0,
            information: None
        }
    );
    assert_eq!(h.bot.store().bytes(), &before[..]);
    // Reading still works.
    let (d, csw) = h.data_in(&cdb10(0x28, 1, 1), 512);
    assert_eq!(status(csw), passed(0));
    assert_eq!(d, before[512..1024].to_vec());
}

#[test]
fn large_transfers_span_urbs_of_any_size() {
    let mut h = Host::new(patterned(4096));
    let expected = h.bot.store().bytes()[512 * 100..512 * 340].to_vec();
    for urb in [512, 513, 4096, 16 * 1024, 100_000, 1 << 20] {
        let (d, csw) = h.data_in_split(&cdb10(0x28, 100, 240), 240 * 512, urb);
        assert_eq!(status(csw), passed(0), "URBs of {urb}");
        assert!(d == expected, "URBs of {urb}: data differ");
    }

    // WRITE(10) of 120 KiB and of 1 MiB in URBs of odd sizes.
    let payload: Vec<u8> = (0..2048 * 512).map(|i| (i * 7 % 256) as u8).collect();
    for (blocks, urb) in [(240usize, 1000usize), (240, 7 * 512 + 3), (2048, 16 * 1024)] {
        let data = &payload[..blocks * 512];
        let csw = h.data_out_split(&cdb10(0x2a, 1000, blocks as u16), data, urb);
        assert_eq!(status(csw), passed(0), "{blocks} blocks in URBs of {urb}");
        assert!(h.bot.store().bytes()[1000 * 512..(1000 + blocks) * 512] == *data);
    }

    // READ(16) / WRITE(16) too.
    let mut write16 = vec![0x8a, 0x08];
    write16.extend_from_slice(&5u64.to_be_bytes());
    write16.extend_from_slice(&2u32.to_be_bytes());
    write16.extend_from_slice(&[0, 0]);
    let flushes = h.bot.store().flushes();
    assert_eq!(status(h.data_out(&write16, &[0x5a; 1024])), passed(0));
    assert_eq!(h.bot.store().flushes(), flushes + 1, "FUA flushes");
    let mut read16 = write16.clone();
    read16[0] = 0x88;
    read16[1] = 0;
    let (d, csw) = h.data_in_split(&read16, 1024, 300);
    assert_eq!(status(csw), passed(0));
    assert_eq!(d, vec![0x5a; 1024]);
}

#[test]
fn short_data_in_ends_with_a_short_transfer() {
    let mut h = Host::new(MemoryStore::new(64));
    // 48 bytes of mode data read in transfers of 32: one full, one short of 16.
    let (d, csw) = h.data_in_split(&[0x1a, 0, 0x3f, 0, 0xc0, 0], 192, 32);
    assert_eq!(d.len(), 48);
    assert_eq!(status(csw), passed(144));

    // 36 bytes of INQUIRY asked as 72 in transfers of 36: the data ends on a transfer
    // boundary, so the next transfer is zero-length, then the CSW.
    let cbw = h.cbw(&[0x12, 0, 0, 0, 72, 0], true, 72);
    h.send(&cbw);
    assert_eq!(h.read(36).len(), 36);
    assert_eq!(h.read(36), Vec::<u8>::new());
    assert_eq!(status(h.csw()), passed(36));
}

/// Host and device disagreeing (BOT §6.7), as far as the device side goes.
#[test]
fn thirteen_cases() {
    let mut h = Host::new(patterned(64));
    // Case 2 (Hn < Di): READ(10) of one block with no data phase.
    assert_eq!(
        status(h.no_data(&cdb10(0x28, 0, 1))),
        (CswStatus::PhaseError, 0)
    );
    // Case 3 (Hn < Do): WRITE(10) with no data phase writes nothing.
    let before = h.bot.store().bytes().to_vec();
    assert_eq!(h.no_data(&cdb10(0x2a, 0, 1)).status, CswStatus::PhaseError);
    // Case 7 (Hi < Di): READ(10) of 8 blocks, host wants 2048 bytes.
    let (d, csw) = h.data_in(&cdb10(0x28, 0, 8), 2048);
    assert_eq!(d, before[..2048].to_vec());
    assert_eq!(csw.status, CswStatus::PhaseError);
    // Case 8 (Hi <> Do): WRITE(10) with a data-in phase.
    let (d, csw) = h.data_in(&cdb10(0x2a, 0, 1), 512);
    assert!(d.is_empty());
    assert_eq!(csw.status, CswStatus::PhaseError);
    // Case 9 (Ho > Dn): TEST UNIT READY with data: accepted and dropped.
    assert_eq!(status(h.data_out(&[0; 6], &[1; 100])), passed(100));
    // Case 10 (Ho <> Di): READ(10) with a data-out phase.
    assert_eq!(
        h.data_out(&cdb10(0x28, 0, 1), &[1; 512]).status,
        CswStatus::PhaseError
    );
    // Case 11 (Ho > Do): WRITE(10) of 1 block, host sends 1024: 512 written.
    assert_eq!(
        status(h.data_out(&cdb10(0x2a, 3, 1), &[9; 1024])),
        passed(512)
    );
    assert_eq!(&h.bot.store().bytes()[3 * 512..4 * 512], &[9; 512][..]);
    assert_eq!(h.bot.store().bytes()[4 * 512], before[4 * 512]);
    // Case 13 (Ho < Do): WRITE(10) of 2 blocks, host sends 512: nothing written.
    assert_eq!(
        h.data_out(&cdb10(0x2a, 10, 2), &[7; 512]).status,
        CswStatus::PhaseError
    );
    assert_eq!(
        &h.bot.store().bytes()[10 * 512..12 * 512],
        &before[10 * 512..12 * 512]
    );
    // A zero-length READ is case 1.
    assert_eq!(status(h.no_data(&cdb10(0x28, 0, 0))), passed(0));
}

#[test]
fn invalid_cbw_stalls_both_pipes_until_reset() {
    let mut h = Host::new(MemoryStore::new(64));
    let mut cbw = h.cbw(&[0; 6], false, 0);
    cbw[0] = b'X';
    h.send(&cbw); // the transfer itself is accepted
    assert!(h.bot.is_awaiting_reset());
    assert_eq!(h.bot.poll_bulk_in(13), BulkIn::Stall);
    assert_eq!(h.bot.handle_bulk_out(&cbw), Err(Stalled));
    h.bot.reset();
    let (d, csw) = h.data_in(&[0x12, 0, 0, 0, 36, 0], 36);
    assert_eq!((d.len(), status(csw)), (36, passed(0)));

    // A 30-byte and a 32-byte "CBW" are not valid either.
    for len in [30, 32] {
        h.send(&vec![0x55; len]);
        assert_eq!(h.bot.poll_bulk_in(13), BulkIn::Stall);
        h.bot.reset();
    }
}

#[test]
fn out_of_phase_traffic() {
    let mut h = Host::new(MemoryStore::new(64));
    assert_eq!(h.bot.poll_bulk_in(512), BulkIn::Pending, "no CBW yet");
    let cbw = h.cbw(&[0x12, 0, 0, 0, 36, 0], true, 36);
    h.send(&cbw);
    // A new CBW before the data and CSW were read: the OUT pipe stalls.
    assert_eq!(h.bot.handle_bulk_out(&cbw), Err(Stalled));
    assert_eq!(h.read(36).len(), 36);
    assert_eq!(h.bot.handle_bulk_out(&cbw), Err(Stalled), "CSW still owed");
    assert_eq!(status(h.csw()), passed(0));
    // During a data-out phase a bulk IN waits.
    let cbw = h.cbw(&cdb10(0x2a, 0, 1), false, 512);
    h.send(&cbw);
    assert_eq!(h.bot.poll_bulk_in(13), BulkIn::Pending);
    h.send(&[0; 512]);
    assert_eq!(status(h.csw()), passed(0));
}

#[test]
fn medium_errors_are_reported_with_the_failing_block() {
    let mut store = patterned(64);
    store.fail_block(5);
    let mut h = Host::new(store);
    // The good blocks before the bad one still come, short; the CSW fails.
    let (d, csw) = h.data_in(&cdb10(0x28, 0, 8), 4096);
    assert_eq!(d, h.bot.store().bytes()[..5 * 512].to_vec());
    assert_eq!(status(csw), (CswStatus::Failed, 4096 - 5 * 512));
    assert_eq!(h.sense(), SenseData::UNRECOVERED_READ_ERROR.at_lba(5));
    let (d, _) = h.data_in(&[0x03, 0, 0, 0, 18, 0], 18);
    assert_eq!(d[0], 0x70, "sense cleared after it was read");

    // A write across it: blocks before it are written; the rest of the data is taken.
    let csw = h.data_out_split(&cdb10(0x2a, 2, 6), &[0xab; 6 * 512], 1024);
    assert_eq!(status(csw), (CswStatus::Failed, 3 * 512));
    assert_eq!(h.sense(), SenseData::WRITE_ERROR.at_lba(5));
    assert_eq!(
        &h.bot.store().bytes()[2 * 512..5 * 512],
        &[0xab; 3 * 512][..]
    );
    assert_ne!(
        h.bot.store().bytes()[6 * 512],
        0xab,
        "nothing after the failure"
    );
}

// --- The UsbDevice glue over a real image file. ---

fn urb_out(endpoint: u8, data: Vec<u8>) -> Urb {
    Urb {
        endpoint,
        direction: Direction::Out,
        setup: SetupPacket::default(),
        transfer_flags: 0,
        length: data.len() as u32,
        data,
        iso_packets: vec![],
        start_frame: 0,
        interval: 0,
    }
}

fn urb_in(endpoint: u8, length: u32) -> Urb {
    Urb {
        direction: Direction::In,
        length,
        ..urb_out(endpoint, vec![])
    }
}

fn control(setup: [u8; 8]) -> Urb {
    let setup = SetupPacket::from_bytes(setup);
    Urb {
        direction: if setup.is_in() {
            Direction::In
        } else {
            Direction::Out
        },
        length: u32::from(setup.length),
        setup,
        ..urb_out(0, vec![])
    }
}

const GET_MAX_LUN: [u8; 8] = [0xa1, 0xfe, 0, 0, 0, 0, 1, 0];
const BULK_ONLY_RESET: [u8; 8] = [0x21, 0xff, 0, 0, 0, 0, 0, 0];

fn clear_halt(endpoint: u8) -> [u8; 8] {
    [0x02, request::CLEAR_FEATURE, 0, 0, endpoint, 0, 0, 0]
}

fn cbw_bytes(tag: u32, cdb: &[u8], data_in: bool, length: u32) -> Vec<u8> {
    let mut cb = [0u8; 16];
    cb[..cdb.len()].copy_from_slice(cdb);
    CommandBlockWrapper {
        tag,
        data_transfer_length: length,
        flags: if data_in { 0x80 } else { 0 },
        lun: 0,
        cb_length: cdb.len() as u8,
        cb,
    }
    .emit()
    .to_vec()
}

async fn csw_of(dev: &MassStorage, tag: u32) -> CommandStatusWrapper {
    let c = dev.submit(urb_in(1, 13)).await.into_result().unwrap();
    let csw = CommandStatusWrapper::parse(&c.data).unwrap();
    assert_eq!(csw.tag, tag);
    csw
}

fn open(dir: &tempfile::TempDir, read_only: bool) -> MassStorage {
    MassStorage::open(StorageConfig {
        path: dir.path().join("disk.img"),
        size: Some(1 << 20),
        read_only,
        ..StorageConfig::default()
    })
    .unwrap()
}

#[test]
fn descriptors_and_device_info() {
    let dir = tempfile::tempdir().unwrap();
    let dev = open(&dir, false);
    let info = dev.info();
    assert_eq!((info.vendor_id, info.product_id), (0x1209, 0x7702));
    assert_eq!(info.speed, Speed::High);
    assert_eq!(info.interfaces.len(), 1);
    let i = &info.interfaces[0];
    assert_eq!((i.class, i.subclass, i.protocol), (0x08, 0x06, 0x50));
    let config = dev.descriptors().configuration_descriptor();
    assert_eq!(config.len(), 9 + 9 + 7 + 7);
    assert_eq!(&config[18..25], &[7, 5, 0x81, 2, 0x00, 0x02, 0]);
    assert_eq!(&config[25..32], &[7, 5, 0x02, 2, 0x00, 0x02, 0]);
    let serial = &dev.descriptors().serial;
    assert_eq!(serial.len(), 16);
    assert!(serial.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(dev.block_count(), 2048);
    assert_eq!(serial_number("1-1"), serial_number("1-1"));
    assert_ne!(serial_number("1-1"), serial_number("1-2"));
}

#[tokio::test]
async fn commands_through_urbs_reach_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let dev = open(&dir, false);
    dev.attached().unwrap();
    let lun = dev
        .submit(control(GET_MAX_LUN))
        .await
        .into_result()
        .unwrap();
    assert_eq!(lun.data, vec![0]);

    // WRITE(10) of 2 blocks at LBA 7, in two URBs.
    let payload: Vec<u8> = (0..1024).map(|i| (i % 256) as u8).collect();
    let c = dev
        .submit(urb_out(2, cbw_bytes(1, &cdb10(0x2a, 7, 2), false, 1024)))
        .await
        .into_result()
        .unwrap();
    assert_eq!(c.actual_length, 31);
    for half in payload.chunks(600) {
        let c = dev
            .submit(urb_out(2, half.to_vec()))
            .await
            .into_result()
            .unwrap();
        assert_eq!(c.actual_length as usize, half.len());
    }
    assert_eq!(status(csw_of(&dev, 1).await), passed(0));
    // The data is in the file as soon as the CSW says so.
    let file = std::fs::read(dir.path().join("disk.img")).unwrap();
    assert_eq!(&file[7 * 512..9 * 512], &payload[..]);

    // Read it back.
    dev.submit(urb_out(2, cbw_bytes(2, &cdb10(0x28, 7, 2), true, 1024)))
        .await
        .into_result()
        .unwrap();
    let c = dev.submit(urb_in(1, 1024)).await.into_result().unwrap();
    assert_eq!(c.data, payload);
    assert_eq!(status(csw_of(&dev, 2).await), passed(0));

    // SYNCHRONIZE CACHE, detach, shutdown all flush without error.
    dev.submit(urb_out(
        2,
        cbw_bytes(3, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], false, 0),
    ))
    .await
    .into_result()
    .unwrap();
    assert_eq!(status(csw_of(&dev, 3).await), passed(0));
    dev.detached();
    dev.shutdown();
}

#[tokio::test]
async fn bulk_in_waits_for_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let dev = open(&dir, false);
    let (data, _) = tokio::join!(dev.submit(urb_in(1, 36)), async {
        tokio::task::yield_now().await;
        dev.submit(urb_out(2, cbw_bytes(9, &[0x12, 0, 0, 0, 36, 0], true, 36)))
            .await
    });
    assert_eq!(data.into_result().unwrap().data.len(), 36);
    assert_eq!(status(csw_of(&dev, 9).await), passed(0));

    // A pending bulk IN that is dropped (unlinked) loses nothing.
    let pending = dev.submit(urb_in(1, 13));
    let timeout = tokio::time::timeout(std::time::Duration::from_millis(20), pending).await;
    assert!(timeout.is_err(), "no CBW, so the bulk IN stays pending");
    dev.submit(urb_out(2, cbw_bytes(10, &[0; 6], false, 0)))
        .await
        .into_result()
        .unwrap();
    assert_eq!(status(csw_of(&dev, 10).await), passed(0));
}

#[tokio::test]
async fn reset_recovery_after_an_invalid_cbw() {
    let dir = tempfile::tempdir().unwrap();
    let dev = open(&dir, false);
    let ok = dev.submit(urb_out(2, vec![0; 31])).await;
    assert!(ok.is_ok(), "the bad CBW itself is taken");
    assert_eq!(
        dev.submit(urb_in(1, 13)).await,
        Completion::failed(TransferError::Stall)
    );
    assert_eq!(
        dev.submit(urb_out(2, cbw_bytes(1, &[0; 6], false, 0)))
            .await,
        Completion::failed(TransferError::Stall)
    );
    // GET_STATUS shows the halt.
    let st = dev
        .submit(control([0x82, request::GET_STATUS, 0, 0, 0x81, 0, 2, 0]))
        .await
        .into_result()
        .unwrap();
    assert_eq!(st.data, vec![1, 0]);
    // Clearing the halts alone is not enough (BOT §6.6.1).
    for ep in [0x81, 0x02] {
        dev.submit(control(clear_halt(ep)))
            .await
            .into_result()
            .unwrap();
    }
    assert_eq!(
        dev.submit(urb_out(2, cbw_bytes(1, &[0; 6], false, 0)))
            .await,
        Completion::failed(TransferError::Stall)
    );
    // Reset Recovery as usb-storage does it: class reset, then clear both halts.
    dev.submit(control(BULK_ONLY_RESET))
        .await
        .into_result()
        .unwrap();
    for ep in [0x81, 0x02] {
        dev.submit(control(clear_halt(ep)))
            .await
            .into_result()
            .unwrap();
    }
    dev.submit(urb_out(2, cbw_bytes(2, &[0; 6], false, 0)))
        .await
        .into_result()
        .unwrap();
    assert_eq!(status(csw_of(&dev, 2).await), passed(0));
    // Other class requests stall.
    assert_eq!(
        dev.submit(control([0xa1, 0xfc, 0, 0, 0, 0, 1, 0])).await,
        Completion::failed(TransferError::Stall)
    );
}

#[tokio::test]
async fn read_only_file() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&dir, false)); // create it
    let dev = open(&dir, true);
    assert!(dev.is_read_only());
    dev.submit(urb_out(2, cbw_bytes(1, &cdb10(0x2a, 0, 1), false, 512)))
        .await
        .into_result()
        .unwrap();
    dev.submit(urb_out(2, vec![1; 512]))
        .await
        .into_result()
        .unwrap();
    assert_eq!(status(csw_of(&dev, 1).await), (CswStatus::Failed, 512));
    dev.submit(urb_out(2, cbw_bytes(2, &[0x03, 0, 0, 0, 18, 0], true, 18)))
        .await
        .into_result()
        .unwrap();
    let sense = dev.submit(urb_in(1, 18)).await.into_result().unwrap();
    assert_eq!(
        (sense.data[2], sense.data[12], sense.data[13]),
        (0x07, 0x27, 0)
    );
    csw_of(&dev, 2).await;
    dev.shutdown();
}

#[test]
fn open_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = MassStorage::open(StorageConfig::new(dir.path().join("none.img")));
    assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
    let odd = MassStorage::open(StorageConfig {
        size: Some(1000),
        ..StorageConfig::new(dir.path().join("odd.img"))
    });
    assert_eq!(odd.unwrap_err().kind(), io::ErrorKind::InvalidInput);
}

// --- Property tests. ---

mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Out(Vec<u8>),
        Fill(usize, u8),
        Cbw {
            len: u32,
            flags: u8,
            lun: u8,
            cb_length: u8,
            cdb: [u8; 16],
        },
        In(usize),
        Reset,
    }

    const OPCODES: [u8; 24] = [
        0x00, 0x03, 0x08, 0x0a, 0x12, 0x1a, 0x1b, 0x1e, 0x23, 0x25, 0x28, 0x2a, 0x2f, 0x35, 0x5a,
        0x88, 0x8a, 0x8f, 0x91, 0x9e, 0xa0, 0xa1, 0x15, 0xff,
    ];

    fn cdb() -> impl Strategy<Value = [u8; 16]> {
        (
            prop::sample::select(&OPCODES[..]),
            any::<[u8; 16]>(),
            0u8..4,
        )
            .prop_map(|(op, mut rest, shape)| {
                rest[0] = op;
                if shape > 0 {
                    // Mostly small LBAs and lengths, so transfers really happen.
                    for b in &mut rest[2..6] {
                        *b = 0;
                    }
                    rest[2 + 3] %= 80;
                    rest[7] = 0;
                    rest[8] %= 16;
                    if op >= 0x80 {
                        rest[2..13].fill(0);
                        rest[9] %= 80;
                        rest[13] %= 16;
                    }
                }
                rest
            })
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..40).prop_map(Op::Out),
            (0usize..70_000, any::<u8>()).prop_map(|(n, b)| Op::Fill(n, b)),
            (
                prop_oneof![0u32..600, 0u32..70_000, any::<u32>()],
                prop_oneof![Just(0x80u8), Just(0), any::<u8>()],
                prop_oneof![Just(0u8), any::<u8>()],
                prop_oneof![Just(6u8), Just(10), Just(16), any::<u8>()],
                cdb(),
            )
                .prop_map(|(len, flags, lun, cb_length, cdb)| Op::Cbw {
                    len,
                    flags,
                    lun,
                    cb_length,
                    cdb
                }),
            prop_oneof![0usize..600, 0usize..70_000, Just(13)].prop_map(Op::In),
            Just(Op::Reset),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Whatever the host sends, the transport never panics, never sends more than asked,
        /// and comes back to life after a reset.
        #[test]
        fn arbitrary_traffic_never_panics(ops in prop::collection::vec(op(), 1..40)) {
            let mut store = patterned(80);
            store.fail_block(77);
            let mut bot = BulkOnlyTransport::new(store, identity());
            for op in ops {
                match op {
                    Op::Out(bytes) => {
                        if let Ok(n) = bot.handle_bulk_out(&bytes) {
                            prop_assert!(n <= bytes.len());
                        }
                    }
                    Op::Fill(n, b) => {
                        if let Ok(taken) = bot.handle_bulk_out(&vec![b; n]) {
                            prop_assert!(taken <= n);
                        }
                    }
                    Op::Cbw { len, flags, lun, cb_length, cdb } => {
                        let cbw = CommandBlockWrapper {
                            tag: 1, data_transfer_length: len, flags, lun, cb_length, cb: cdb,
                        };
                        let _ = bot.handle_bulk_out(&cbw.emit());
                    }
                    Op::In(n) => {
                        if let BulkIn::Data(d) = bot.poll_bulk_in(n) {
                            prop_assert!(d.len() <= n);
                        }
                    }
                    Op::Reset => bot.reset(),
                }
            }
            bot.reset();
            let mut h = Host { bot, tag: 100 };
            let (d, csw) = h.data_in(&[0x12, 0, 0, 0, 36, 0], 36);
            prop_assert_eq!(d.len(), 36);
            prop_assert_eq!(csw.status, CswStatus::Passed);
        }

        /// Random reads and writes split into random transfer sizes keep the disk equal to a
        /// plain byte array.
        #[test]
        fn split_transfers_match_a_model(
            cmds in prop::collection::vec(
                (any::<bool>(), 0u32..120, 0u16..16, 1usize..5000, any::<u8>()),
                1..20,
            )
        ) {
            let mut h = Host::new(MemoryStore::new(128));
            let mut model = vec![0u8; 128 * 512];
            for (write, lba, blocks, urb, fill) in cmds {
                let fits = (lba as usize + blocks as usize) <= 128;
                let range = lba as usize * 512..(lba as usize + blocks as usize) * 512;
                let len = u32::from(blocks) * 512;
                if write {
                    let data: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
                    let cbw = h.cbw(&cdb10(0x2a, lba, blocks), false, len);
                    h.send(&cbw);
                    for c in data.chunks(urb) {
                        h.send(c);
                    }
                    let csw = h.csw();
                    if fits {
                        prop_assert_eq!(status(csw), passed(0));
                        model[range].copy_from_slice(&data);
                    } else {
                        prop_assert_eq!(status(csw), (CswStatus::Failed, len));
                    }
                } else {
                    let (d, csw) = h.data_in_split(&cdb10(0x28, lba, blocks), len, urb);
                    if fits {
                        prop_assert_eq!(status(csw), passed(0));
                        prop_assert!(d == model[range]);
                    } else {
                        prop_assert_eq!(status(csw), (CswStatus::Failed, len));
                    }
                }
                prop_assert!(h.bot.store().bytes() == &model[..]);
            }
        }
    }
}

// --- The demo image. ---

fn fsck_fat() -> Option<std::path::PathBuf> {
    ["/usr/sbin/fsck.fat", "/sbin/fsck.fat", "/usr/bin/fsck.fat"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

fn read_back(path: &std::path::Path, name: &str) -> Vec<u8> {
    use std::io::Read;
    let file = std::fs::File::open(path).unwrap();
    let fs = fatfs::FileSystem::new(&file, fatfs::FsOptions::new()).unwrap();
    let mut f = fs.root_dir().open_file(name).unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    v
}

#[test]
fn demo_image_is_a_clean_fat_volume() {
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    for size in [16u64 << 20, 64 << 20] {
        let path = dir.path().join(format!("demo-{size}.img"));
        create_demo_image(
            &path,
            size,
            &[
                ("README.TXT", b"Hello from periwire!\n"),
                ("big file.bin", &big),
            ],
        )
        .unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);

        let file = std::fs::File::open(&path).unwrap();
        let fs = fatfs::FileSystem::new(&file, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label(), "PERIWIRE");
        drop(fs);
        assert_eq!(read_back(&path, "README.TXT"), b"Hello from periwire!\n");
        assert!(read_back(&path, "big file.bin") == big);

        match fsck_fat() {
            Some(fsck) => {
                let out = std::process::Command::new(fsck)
                    .arg("-n")
                    .arg(&path)
                    .output()
                    .unwrap();
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                eprintln!("{text}");
                assert!(out.status.success(), "fsck.fat -n: {text}");
                assert!(!text.contains("differ"), "fsck.fat -n: {text}");
            }
            // scripts/test installs dosfstools: a missing checker is a failure, not a skip.
            None => panic!("fsck.fat (dosfstools) is not installed"),
        }

        // Existing file: left alone.
        let before = std::fs::read(&path).unwrap();
        create_demo_image(&path, 1 << 20, &[("OTHER.TXT", b"x")]).unwrap();
        assert!(std::fs::read(&path).unwrap() == before);
    }
}

#[test]
fn demo_image_served_as_a_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("demo.img");
    create_demo_image(&path, 8 << 20, &[("A.TXT", b"a")]).unwrap();
    let dev = MassStorage::open(StorageConfig::new(&path)).unwrap();
    assert_eq!(dev.block_count(), 8 << 11);
    let mut boot = [0u8; 512];
    dev.with_store_mut(|s| s.read_at(&mut boot, 0)).unwrap();
    assert_eq!(
        &boot[510..],
        &[0x55, 0xaa],
        "boot sector at LBA 0: no partition table"
    );
}

#[test]
fn demo_image_bad_input_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.img");
    let e = create_demo_image(&path, 1000, &[]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(!path.exists());
    for name in ["", "docs/A.TXT", "bad*name"] {
        assert!(
            create_demo_image(&path, 4 << 20, &[(name, b"x")]).is_err(),
            "{name:?}"
        );
        assert!(!path.exists(), "a half-made image is removed");
    }
}
