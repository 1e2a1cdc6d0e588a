//! The SCSI direct-access block device behind the Bulk-Only Transport: the commands of
//! SPC-4 (primary commands) and SBC-3 (block commands) that Linux `sd` and `usb-storage`
//! send, answered from a [`BlockStore`].
//!
//! [`LogicalUnit::execute`] decides, from the CDB alone, what the data phase must carry: a
//! small response built here, blocks to read from the store, or blocks to write to it. The
//! transport ([`super::bot`]) moves the data; this module never touches a URB.

use super::store::{BlockStore, BLOCK_SIZE};

/// Operation codes this logical unit knows (SPC-4 §D.3.1, SBC-3 §5).
pub mod opcode {
    /// TEST UNIT READY (SPC-4 §6.37).
    pub const TEST_UNIT_READY: u8 = 0x00;
    /// REQUEST SENSE (SPC-4 §6.29).
    pub const REQUEST_SENSE: u8 = 0x03;
    /// READ(6) (SBC-3 §5.10).
    pub const READ_6: u8 = 0x08;
    /// WRITE(6) (SBC-3 §5.34).
    pub const WRITE_6: u8 = 0x0a;
    /// INQUIRY (SPC-4 §6.4).
    pub const INQUIRY: u8 = 0x12;
    /// MODE SENSE(6) (SPC-4 §6.11).
    pub const MODE_SENSE_6: u8 = 0x1a;
    /// START STOP UNIT (SBC-3 §5.25).
    pub const START_STOP_UNIT: u8 = 0x1b;
    /// PREVENT ALLOW MEDIUM REMOVAL (SBC-3 §5.5).
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1e;
    /// READ FORMAT CAPACITIES (USB MSC UFI 1.0 §4.10; Windows sends it).
    pub const READ_FORMAT_CAPACITIES: u8 = 0x23;
    /// READ CAPACITY(10) (SBC-3 §5.15).
    pub const READ_CAPACITY_10: u8 = 0x25;
    /// READ(10) (SBC-3 §5.11).
    pub const READ_10: u8 = 0x28;
    /// WRITE(10) (SBC-3 §5.35).
    pub const WRITE_10: u8 = 0x2a;
    /// VERIFY(10) (SBC-3 §5.28).
    pub const VERIFY_10: u8 = 0x2f;
    /// SYNCHRONIZE CACHE(10) (SBC-3 §5.22).
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    /// MODE SENSE(10) (SPC-4 §6.12).
    pub const MODE_SENSE_10: u8 = 0x5a;
    /// READ(16) (SBC-3 §5.13).
    pub const READ_16: u8 = 0x88;
    /// WRITE(16) (SBC-3 §5.37).
    pub const WRITE_16: u8 = 0x8a;
    /// VERIFY(16) (SBC-3 §5.30).
    pub const VERIFY_16: u8 = 0x8f;
    /// SYNCHRONIZE CACHE(16) (SBC-3 §5.23).
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    /// SERVICE ACTION IN(16) (SBC-3 §5.16: READ CAPACITY(16) is service action 0x10).
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    /// REPORT LUNS (SPC-4 §6.33).
    pub const REPORT_LUNS: u8 = 0xa0;

    /// SERVICE ACTION IN(16) service action READ CAPACITY(16).
    pub const SA_READ_CAPACITY_16: u8 = 0x10;
}

/// Sense keys (SPC-4 §4.5.6, table 27).
pub mod sense_key {
    /// NO SENSE.
    pub const NO_SENSE: u8 = 0x0;
    /// NOT READY.
    pub const NOT_READY: u8 = 0x2;
    /// MEDIUM ERROR.
    pub const MEDIUM_ERROR: u8 = 0x3;
    /// ILLEGAL REQUEST.
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    /// UNIT ATTENTION.
    pub const UNIT_ATTENTION: u8 = 0x6;
    /// DATA PROTECT.
    pub const DATA_PROTECT: u8 = 0x7;
}

/// Sense data of the last command (SPC-4 §4.5): sense key, additional sense code and
/// qualifier, and the optional INFORMATION field (the first failing LBA of a medium error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenseData {
    /// SENSE KEY.
    pub key: u8,
    /// ADDITIONAL SENSE CODE.
    pub asc: u8,
    /// ADDITIONAL SENSE CODE QUALIFIER.
    pub ascq: u8,
    /// INFORMATION field; `Some` sets the VALID bit.
    pub information: Option<u32>,
}

impl SenseData {
    /// Length of fixed-format sense data (SPC-4 §4.5.3).
    pub const FIXED_LEN: usize = 18;

    const fn new(key: u8, asc: u8, ascq: u8) -> Self {
        Self {
            key,
            asc,
            ascq,
            information: None,
        }
    }

    /// Nothing to report.
    pub const NO_SENSE: Self = Self::new(sense_key::NO_SENSE, 0, 0);
    /// ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE.
    pub const INVALID_COMMAND_OPERATION_CODE: Self =
        Self::new(sense_key::ILLEGAL_REQUEST, 0x20, 0x00);
    /// ILLEGAL REQUEST / LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const LBA_OUT_OF_RANGE: Self = Self::new(sense_key::ILLEGAL_REQUEST, 0x21, 0x00);
    /// ILLEGAL REQUEST / INVALID FIELD IN CDB.
    pub const INVALID_FIELD_IN_CDB: Self = Self::new(sense_key::ILLEGAL_REQUEST, 0x24, 0x00);
    /// ILLEGAL REQUEST / LOGICAL UNIT NOT SUPPORTED.
    pub const LOGICAL_UNIT_NOT_SUPPORTED: Self = Self::new(sense_key::ILLEGAL_REQUEST, 0x25, 0x00);
    /// ILLEGAL REQUEST / SAVING PARAMETERS NOT SUPPORTED.
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Self =
        Self::new(sense_key::ILLEGAL_REQUEST, 0x39, 0x00);
    /// DATA PROTECT / WRITE PROTECTED.
    pub const WRITE_PROTECTED: Self = Self::new(sense_key::DATA_PROTECT, 0x27, 0x00);
    /// MEDIUM ERROR / UNRECOVERED READ ERROR.
    pub const UNRECOVERED_READ_ERROR: Self = Self::new(sense_key::MEDIUM_ERROR, 0x11, 0x00);
    /// MEDIUM ERROR / WRITE ERROR.
    pub const WRITE_ERROR: Self = Self::new(sense_key::MEDIUM_ERROR, 0x0c, 0x00);

    /// The same sense with the INFORMATION field set to `lba` (saturated to 32 bits).
    pub fn at_lba(self, lba: u64) -> Self {
        Self {
            information: Some(u32::try_from(lba).unwrap_or(u32::MAX)),
            ..self
        }
    }

    /// Fixed-format sense data, response code 70h "current" (SPC-4 §4.5.3, table 26).
    pub fn to_fixed(&self) -> [u8; Self::FIXED_LEN] {
        let mut b = [0u8; Self::FIXED_LEN];
        b[0] = 0x70;
        if let Some(info) = self.information {
            b[0] |= 0x80; // VALID
            b[3..7].copy_from_slice(&info.to_be_bytes());
        }
        b[2] = self.key & 0x0f;
        b[7] = (Self::FIXED_LEN - 8) as u8; // ADDITIONAL SENSE LENGTH
        b[12] = self.asc;
        b[13] = self.ascq;
        b
    }

    /// Parses fixed-format sense data (for tests and tools).
    pub fn from_fixed(b: &[u8]) -> Option<Self> {
        let head: &[u8; 14] = b.get(..14)?.try_into().ok()?;
        if head[0] & 0x7e != 0x70 {
            return None;
        }
        let information =
            (head[0] & 0x80 != 0).then(|| u32::from_be_bytes([head[3], head[4], head[5], head[6]]));
        Some(Self {
            key: head[2] & 0x0f,
            asc: head[12],
            ascq: head[13],
            information,
        })
    }
}

/// What a command's data phase carries, as the device intends it (the "Dn / Di / Do" of
/// USB MSC BOT 1.0 §6.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataTransfer {
    /// No data phase.
    None,
    /// Send this response, already cut to the CDB's allocation length.
    In(Vec<u8>),
    /// Send `length` bytes read from the store at byte `offset`.
    Read {
        /// Byte offset in the store.
        offset: u64,
        /// Bytes to send.
        length: u64,
    },
    /// Receive `length` bytes and write them to the store at byte `offset`.
    Write {
        /// Byte offset in the store.
        offset: u64,
        /// Bytes to receive.
        length: u64,
        /// Force Unit Access: make the data durable before reporting success.
        fua: bool,
    },
}

impl DataTransfer {
    /// Bytes the device intends to move.
    pub fn len(&self) -> u64 {
        match self {
            Self::None => 0,
            Self::In(data) => data.len() as u64,
            Self::Read { length, .. } | Self::Write { length, .. } => *length,
        }
    }

    /// Whether the device intends no data phase.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The identity a logical unit reports in INQUIRY and its VPD pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// T10 VENDOR IDENTIFICATION; cut or space-padded to 8 ASCII characters.
    pub vendor: String,
    /// PRODUCT IDENTIFICATION; cut or space-padded to 16 ASCII characters.
    pub product: String,
    /// PRODUCT REVISION LEVEL; cut or space-padded to 4 ASCII characters.
    pub revision: String,
    /// PRODUCT SERIAL NUMBER (Unit Serial Number VPD page).
    pub serial: String,
}

/// VPD pages this unit answers (SPC-4 §7.8, SBC-3 §6.6), ascending.
const VPD_PAGES: [u8; 5] = [
    VPD_SUPPORTED_PAGES,
    VPD_UNIT_SERIAL_NUMBER,
    VPD_DEVICE_IDENTIFICATION,
    VPD_BLOCK_LIMITS,
    VPD_BLOCK_DEVICE_CHARACTERISTICS,
];
const VPD_SUPPORTED_PAGES: u8 = 0x00;
const VPD_UNIT_SERIAL_NUMBER: u8 = 0x80;
const VPD_DEVICE_IDENTIFICATION: u8 = 0x83;
const VPD_BLOCK_LIMITS: u8 = 0xb0;
const VPD_BLOCK_DEVICE_CHARACTERISTICS: u8 = 0xb1;

/// Mode pages (SPC-4 §7.5, SBC-3 §6.4).
const MODE_PAGE_READ_WRITE_ERROR_RECOVERY: u8 = 0x01;
const MODE_PAGE_CACHING: u8 = 0x08;
const MODE_PAGE_CONTROL: u8 = 0x0a;
const MODE_PAGE_ALL: u8 = 0x3f;

/// The one logical unit (LUN 0) of a mass-storage device: a direct-access block device
/// (SBC-3) with 512-byte blocks, removable (RMB), keeping the sense data of the last
/// command for REQUEST SENSE (BOT has no autosense).
#[derive(Debug)]
pub struct LogicalUnit {
    identity: Identity,
    sense: SenseData,
    prevent_removal: bool,
}

impl LogicalUnit {
    /// A unit that reports `identity`.
    pub fn new(identity: Identity) -> Self {
        Self {
            identity,
            sense: SenseData::NO_SENSE,
            prevent_removal: false,
        }
    }

    /// The sense data REQUEST SENSE would return now.
    pub fn sense(&self) -> SenseData {
        self.sense
    }

    /// Whether PREVENT ALLOW MEDIUM REMOVAL last asked to prevent removal.
    pub fn removal_prevented(&self) -> bool {
        self.prevent_removal
    }

    /// Records that the command failed during its data phase (a medium error).
    pub fn fail(&mut self, sense: SenseData) {
        self.sense = sense;
    }

    /// Decides what the command in `cdb` does. Side effects that need no data phase
    /// (SYNCHRONIZE CACHE) happen here. On `Err` the command ends in CHECK CONDITION with
    /// that sense data, which is also kept for REQUEST SENSE.
    pub fn execute<S: BlockStore + ?Sized>(
        &mut self,
        cdb: &[u8; 16],
        store: &mut S,
    ) -> Result<DataTransfer, SenseData> {
        let result = self.dispatch(cdb, store);
        match &result {
            // REQUEST SENSE reports (and so clears) the previous sense itself.
            Ok(_) if cdb[0] == opcode::REQUEST_SENSE => {}
            Ok(_) => self.sense = SenseData::NO_SENSE,
            Err(sense) => self.sense = *sense,
        }
        result
    }

    /// Records the sense data for a command addressed to a LUN that does not exist and
    /// returns it.
    pub fn reject_lun(&mut self) -> SenseData {
        self.sense = SenseData::LOGICAL_UNIT_NOT_SUPPORTED;
        self.sense
    }

    fn dispatch<S: BlockStore + ?Sized>(
        &mut self,
        cdb: &[u8; 16],
        store: &mut S,
    ) -> Result<DataTransfer, SenseData> {
        let blocks = store.block_count();
        match cdb[0] {
            opcode::TEST_UNIT_READY | opcode::START_STOP_UNIT => Ok(DataTransfer::None),
            opcode::PREVENT_ALLOW_MEDIUM_REMOVAL => {
                self.prevent_removal = cdb[4] & 0x03 != 0;
                Ok(DataTransfer::None)
            }
            opcode::REQUEST_SENSE => {
                // Only fixed format; SPC-4 §6.29 lets a unit without descriptor format
                // answer a DESC=1 request with fixed format.
                let sense = std::mem::replace(&mut self.sense, SenseData::NO_SENSE);
                Ok(respond(&sense.to_fixed(), usize::from(cdb[4])))
            }
            opcode::INQUIRY => self.inquiry(cdb),
            opcode::READ_CAPACITY_10 => {
                let last = u32::try_from(blocks.saturating_sub(1)).unwrap_or(u32::MAX);
                let mut r = [0u8; 8];
                r[..4].copy_from_slice(&last.to_be_bytes());
                r[4..].copy_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
                Ok(DataTransfer::In(r.to_vec()))
            }
            opcode::SERVICE_ACTION_IN_16 if cdb[1] & 0x1f == opcode::SA_READ_CAPACITY_16 => {
                let mut r = [0u8; 32];
                r[..8].copy_from_slice(&blocks.saturating_sub(1).to_be_bytes());
                r[8..12].copy_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
                Ok(respond(&r, be32(cdb, 10) as usize))
            }
            opcode::SERVICE_ACTION_IN_16 => Err(SenseData::INVALID_FIELD_IN_CDB),
            opcode::READ_FORMAT_CAPACITIES => {
                let mut r = [0u8; 12];
                r[3] = 8; // CAPACITY LIST LENGTH: one descriptor
                r[4..8].copy_from_slice(&u32::try_from(blocks).unwrap_or(u32::MAX).to_be_bytes());
                r[8] = 0x02; // formatted media
                r[9..12].copy_from_slice(&(BLOCK_SIZE as u32).to_be_bytes()[1..]);
                Ok(respond(&r, usize::from(be16(cdb, 7))))
            }
            opcode::MODE_SENSE_6 => self.mode_sense(cdb, false, store.is_read_only()),
            opcode::MODE_SENSE_10 => self.mode_sense(cdb, true, store.is_read_only()),
            opcode::REPORT_LUNS => {
                let allocation = be32(cdb, 6) as usize;
                if allocation < 16 {
                    return Err(SenseData::INVALID_FIELD_IN_CDB);
                }
                let mut r = [0u8; 16];
                r[3] = 8; // LUN LIST LENGTH: LUN 0 only
                Ok(respond(&r, allocation))
            }
            opcode::READ_6 => {
                let lba = u64::from(be32(cdb, 0) & 0x001f_ffff);
                let count = transfer_length_6(cdb[4]);
                let (offset, length) = block_range(lba, count, blocks)?;
                Ok(DataTransfer::Read { offset, length })
            }
            opcode::READ_10 | opcode::READ_16 => {
                if cdb[1] & 0xe0 != 0 {
                    return Err(SenseData::INVALID_FIELD_IN_CDB); // RDPROTECT: no protection info
                }
                let (lba, count) = lba_and_count(cdb);
                let (offset, length) = block_range(lba, count, blocks)?;
                Ok(DataTransfer::Read { offset, length })
            }
            opcode::WRITE_6 => {
                let lba = u64::from(be32(cdb, 0) & 0x001f_ffff);
                let count = transfer_length_6(cdb[4]);
                let (offset, length) = block_range(lba, count, blocks)?;
                writable(store)?;
                Ok(DataTransfer::Write {
                    offset,
                    length,
                    fua: false,
                })
            }
            opcode::WRITE_10 | opcode::WRITE_16 => {
                if cdb[1] & 0xe0 != 0 {
                    return Err(SenseData::INVALID_FIELD_IN_CDB); // WRPROTECT
                }
                let (lba, count) = lba_and_count(cdb);
                let (offset, length) = block_range(lba, count, blocks)?;
                writable(store)?;
                Ok(DataTransfer::Write {
                    offset,
                    length,
                    fua: cdb[1] & 0x08 != 0,
                })
            }
            opcode::VERIFY_10 | opcode::VERIFY_16 => {
                // Only BYTCHK=0 (check the medium, no data-out): the image is always
                // readable, so only the range is checked.
                if cdb[1] & 0xe6 != 0 {
                    return Err(SenseData::INVALID_FIELD_IN_CDB);
                }
                let (lba, count) = lba_and_count(cdb);
                block_range(lba, count, blocks)?;
                Ok(DataTransfer::None)
            }
            opcode::SYNCHRONIZE_CACHE_10 | opcode::SYNCHRONIZE_CACHE_16 => {
                // The range is checked but the whole image is flushed.
                let (lba, count) = lba_and_count(cdb);
                block_range(lba, count, blocks)?;
                match store.flush() {
                    Ok(()) => Ok(DataTransfer::None),
                    Err(e) => {
                        tracing::warn!(error = %e, "storage: SYNCHRONIZE CACHE failed");
                        Err(SenseData::WRITE_ERROR)
                    }
                }
            }
            _ => Err(SenseData::INVALID_COMMAND_OPERATION_CODE),
        }
    }

    /// INQUIRY (SPC-4 §6.4): standard data (§6.4.2) or a VPD page (§7.8).
    fn inquiry(&self, cdb: &[u8; 16]) -> Result<DataTransfer, SenseData> {
        let evpd = cdb[1] & 0x01 != 0;
        let page = cdb[2];
        let allocation = usize::from(be16(cdb, 3));
        if cdb[1] & 0x02 != 0 || (!evpd && page != 0) {
            return Err(SenseData::INVALID_FIELD_IN_CDB); // CMDDT, or a page without EVPD
        }
        if !evpd {
            return Ok(respond(&self.standard_inquiry(), allocation));
        }
        let body = match page {
            VPD_SUPPORTED_PAGES => VPD_PAGES.to_vec(),
            VPD_UNIT_SERIAL_NUMBER => ascii(&self.identity.serial, None),
            VPD_DEVICE_IDENTIFICATION => {
                // One T10 vendor ID based designator (SPC-4 §7.8.6.4): vendor, then
                // product and serial as the vendor-specific identifier.
                let mut id = ascii(&self.identity.vendor, Some(8));
                id.extend(ascii(&self.identity.product, Some(16)));
                id.extend(ascii(&self.identity.serial, None));
                id.truncate(255 - 4);
                let mut d = vec![0x02, 0x01, 0x00, id.len() as u8]; // ASCII, LU, T10 vendor ID
                d.extend(id);
                d
            }
            VPD_BLOCK_LIMITS => {
                // SBC-3 §6.6.3: optimal transfer length granularity 8 blocks (a 4 KiB
                // page); no maximum; no UNMAP.
                let mut d = vec![0u8; 0x3c];
                d[2..4].copy_from_slice(&8u16.to_be_bytes());
                d
            }
            VPD_BLOCK_DEVICE_CHARACTERISTICS => {
                // SBC-3 §6.6.2: MEDIUM ROTATION RATE 1 = non-rotating medium.
                let mut d = vec![0u8; 0x3c];
                d[0..2].copy_from_slice(&1u16.to_be_bytes());
                d
            }
            _ => return Err(SenseData::INVALID_FIELD_IN_CDB),
        };
        let mut body = body;
        body.truncate(usize::from(u16::MAX)); // only a huge configured serial gets here
        let mut r = vec![0x00, page];
        r.extend_from_slice(&(body.len() as u16).to_be_bytes());
        r.extend(body);
        Ok(respond(&r, allocation))
    }

    /// Standard INQUIRY data, 36 bytes (SPC-4 §6.4.2, table 142).
    fn standard_inquiry(&self) -> Vec<u8> {
        let mut r = vec![
            0x00, // PERIPHERAL QUALIFIER 0, DEVICE TYPE 0: direct access block device
            0x80, // RMB: removable medium
            0x06, // VERSION: SPC-4
            0x02, // RESPONSE DATA FORMAT 2
            31,   // ADDITIONAL LENGTH: bytes after byte 4
            0x00, 0x00, 0x00,
        ];
        r.extend(ascii(&self.identity.vendor, Some(8)));
        r.extend(ascii(&self.identity.product, Some(16)));
        r.extend(ascii(&self.identity.revision, Some(4)));
        r
    }

    /// MODE SENSE(6) / MODE SENSE(10) (SPC-4 §6.11, §6.12): mode parameter header with
    /// WP set for a read-only image, no block descriptors, then the pages asked for.
    fn mode_sense(
        &self,
        cdb: &[u8; 16],
        ten: bool,
        read_only: bool,
    ) -> Result<DataTransfer, SenseData> {
        let control = cdb[2] >> 6; // PC: 0 current, 1 changeable, 2 default, 3 saved
        let page = cdb[2] & 0x3f;
        let subpage = cdb[3];
        if control == 3 {
            return Err(SenseData::SAVING_PARAMETERS_NOT_SUPPORTED);
        }
        let changeable = control == 1;
        let pages: &[u8] = match (page, subpage) {
            (MODE_PAGE_ALL, 0x00 | 0xff) => &[
                MODE_PAGE_READ_WRITE_ERROR_RECOVERY,
                MODE_PAGE_CACHING,
                MODE_PAGE_CONTROL,
            ],
            (MODE_PAGE_READ_WRITE_ERROR_RECOVERY, 0x00) => &[MODE_PAGE_READ_WRITE_ERROR_RECOVERY],
            (MODE_PAGE_CACHING, 0x00) => &[MODE_PAGE_CACHING],
            (MODE_PAGE_CONTROL, 0x00) => &[MODE_PAGE_CONTROL],
            _ => return Err(SenseData::INVALID_FIELD_IN_CDB),
        };
        let mut body = Vec::new();
        for &p in pages {
            body.extend(mode_page(p, changeable));
        }
        // DEVICE-SPECIFIC PARAMETER (SBC-3 §6.4.1): WP bit; DPOFUA stays 0.
        let device_specific = if read_only { 0x80 } else { 0x00 };
        let (mut r, allocation) = if ten {
            let len = (body.len() + 8 - 2) as u16;
            let mut h = vec![0u8; 8];
            h[..2].copy_from_slice(&len.to_be_bytes());
            h[3] = device_specific;
            (h, usize::from(be16(cdb, 7)))
        } else {
            let len = u8::try_from(body.len() + 4 - 1).unwrap_or(u8::MAX);
            (vec![len, 0, device_specific, 0], usize::from(cdb[4]))
        };
        r.extend(body);
        Ok(respond(&r, allocation))
    }
}

/// One mode page with its current (or, if `changeable`, its changeable-mask) values.
fn mode_page(page: u8, changeable: bool) -> Vec<u8> {
    let mut p = match page {
        // Read-Write Error Recovery (SBC-3 §6.4.7): 12 bytes.
        MODE_PAGE_READ_WRITE_ERROR_RECOVERY => vec![page, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        // Caching (SBC-3 §6.4.5): 20 bytes, WCE set. Writes reach the image file (the host
        // page cache) before the CSW; they become durable on SYNCHRONIZE CACHE, which is
        // what the host sends when it sees WCE.
        MODE_PAGE_CACHING => {
            let mut p = vec![0u8; 20];
            p[0] = page;
            p[1] = 0x12;
            p[2] = 0x04; // WCE
            p
        }
        // Control (SPC-4 §7.5.8): 12 bytes, D_SENSE 0 (fixed-format sense).
        _ => vec![page, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    };
    if changeable {
        for b in p.iter_mut().skip(2) {
            *b = 0; // nothing can be changed (no MODE SELECT)
        }
    }
    p
}

/// A response cut to the CDB's allocation length.
fn respond(data: &[u8], allocation: usize) -> DataTransfer {
    DataTransfer::In(data[..data.len().min(allocation)].to_vec())
}

/// `text` as printable ASCII (anything else becomes `?`), cut or space-padded to `width`.
fn ascii(text: &str, width: Option<usize>) -> Vec<u8> {
    let mut v: Vec<u8> = text
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c as u8
            } else {
                b'?'
            }
        })
        .collect();
    if let Some(w) = width {
        v.resize(w, b' ');
    }
    v
}

fn be16(cdb: &[u8; 16], at: usize) -> u16 {
    match cdb.get(at..at + 2) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => 0,
    }
}

fn be32(cdb: &[u8; 16], at: usize) -> u32 {
    match cdb.get(at..at + 4) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    }
}

fn be64(cdb: &[u8; 16], at: usize) -> u64 {
    (u64::from(be32(cdb, at)) << 32) | u64::from(be32(cdb, at + 4))
}

/// TRANSFER LENGTH of a 6-byte READ/WRITE: 0 means 256 blocks (SBC-3 §5.10).
fn transfer_length_6(n: u8) -> u64 {
    if n == 0 {
        256
    } else {
        u64::from(n)
    }
}

/// LOGICAL BLOCK ADDRESS and TRANSFER LENGTH (or NUMBER OF LOGICAL BLOCKS) of a 10- or
/// 16-byte block command: opcodes 0x80..=0x9f are the 16-byte group (SPC-4 §4.3.2).
fn lba_and_count(cdb: &[u8; 16]) -> (u64, u64) {
    if cdb[0] >= 0x80 {
        (be64(cdb, 2), u64::from(be32(cdb, 10)))
    } else {
        (u64::from(be32(cdb, 2)), u64::from(be16(cdb, 7)))
    }
}

/// Checks `count` blocks from `lba` against a medium of `blocks` blocks (SBC-3 §4.5) and
/// returns the byte offset and length.
fn block_range(lba: u64, count: u64, blocks: u64) -> Result<(u64, u64), SenseData> {
    let end = lba.checked_add(count).ok_or(SenseData::LBA_OUT_OF_RANGE)?;
    if lba >= blocks || end > blocks {
        return Err(SenseData::LBA_OUT_OF_RANGE);
    }
    Ok((lba * BLOCK_SIZE as u64, count * BLOCK_SIZE as u64))
}

fn writable<S: BlockStore + ?Sized>(store: &S) -> Result<(), SenseData> {
    if store.is_read_only() {
        Err(SenseData::WRITE_PROTECTED)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::store::MemoryStore;

    fn unit() -> LogicalUnit {
        LogicalUnit::new(Identity {
            vendor: "periwire".into(),
            product: "Virtual Disk".into(),
            revision: "0100".into(),
            serial: "0123456789ABCDEF".into(),
        })
    }

    fn cdb(bytes: &[u8]) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..bytes.len()].copy_from_slice(bytes);
        c
    }

    fn data_in(t: DataTransfer) -> Vec<u8> {
        match t {
            DataTransfer::In(d) => d,
            other => panic!("expected data in, got {other:?}"),
        }
    }

    #[test]
    fn sense_fixed_format_round_trips() {
        let s = SenseData::UNRECOVERED_READ_ERROR.at_lba(0x1234);
        let b = s.to_fixed();
        assert_eq!(b[0], 0xf0);
        assert_eq!(&b[3..7], &[0, 0, 0x12, 0x34]);
        assert_eq!(b[7], 10);
        assert_eq!((b[2], b[12], b[13]), (3, 0x11, 0));
        assert_eq!(SenseData::from_fixed(&b), Some(s));
        assert_eq!(SenseData::from_fixed(&b[..10]), None);
    }

    #[test]
    fn standard_inquiry_is_36_bytes() {
        let mut u = unit();
        let mut s = MemoryStore::new(64);
        let r = data_in(u.execute(&cdb(&[0x12, 0, 0, 0, 36, 0]), &mut s).unwrap());
        assert_eq!(r.len(), 36);
        assert_eq!(r[4] as usize + 5, 36);
        assert_eq!(&r[8..16], b"periwire");
        assert_eq!(&r[16..32], b"Virtual Disk    ");
        assert_eq!(&r[32..36], b"0100");
        let r = data_in(u.execute(&cdb(&[0x12, 0, 0, 0, 5, 0]), &mut s).unwrap());
        assert_eq!(r.len(), 5, "cut to the allocation length");
    }

    #[test]
    fn vpd_pages() {
        let mut u = unit();
        let mut s = MemoryStore::new(64);
        let r = data_in(
            u.execute(&cdb(&[0x12, 1, 0x00, 0, 255, 0]), &mut s)
                .unwrap(),
        );
        assert_eq!(r, vec![0, 0, 0, 5, 0x00, 0x80, 0x83, 0xb0, 0xb1]);
        let r = data_in(
            u.execute(&cdb(&[0x12, 1, 0x80, 0, 255, 0]), &mut s)
                .unwrap(),
        );
        assert_eq!(&r[4..], b"0123456789ABCDEF");
        let r = data_in(
            u.execute(&cdb(&[0x12, 1, 0x83, 0, 255, 0]), &mut s)
                .unwrap(),
        );
        assert_eq!(usize::from(r[3]) + 4, r.len());
        assert_eq!(r[7] as usize + 8, r.len());
        assert_eq!(&r[8..16], b"periwire");
        let r = data_in(
            u.execute(&cdb(&[0x12, 1, 0xb1, 0, 255, 0]), &mut s)
                .unwrap(),
        );
        assert_eq!(r.len(), 64);
        assert_eq!(&r[4..6], &[0, 1]);
        for bad in [[0x12, 1, 0xb2, 0, 255, 0], [0x12, 0, 0x80, 0, 255, 0]] {
            assert_eq!(
                u.execute(&cdb(&bad), &mut s),
                Err(SenseData::INVALID_FIELD_IN_CDB)
            );
        }
    }

    #[test]
    fn capacity() {
        let mut u = unit();
        let mut s = MemoryStore::new(2048);
        let r = data_in(u.execute(&cdb(&[0x25]), &mut s).unwrap());
        assert_eq!(r, vec![0, 0, 0x07, 0xff, 0, 0, 2, 0]);
        let r = data_in(
            u.execute(
                &cdb(&[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32]),
                &mut s,
            )
            .unwrap(),
        );
        assert_eq!(r.len(), 32);
        assert_eq!(&r[..12], &[0, 0, 0, 0, 0, 0, 0x07, 0xff, 0, 0, 2, 0]);
        let r = data_in(
            u.execute(&cdb(&[0x23, 0, 0, 0, 0, 0, 0, 0, 252]), &mut s)
                .unwrap(),
        );
        assert_eq!(r, vec![0, 0, 0, 8, 0, 0, 0x08, 0, 2, 0, 2, 0]);
    }

    #[test]
    fn mode_sense_all_pages_and_write_protect() {
        let mut u = unit();
        let mut s = MemoryStore::new(64);
        let r = data_in(
            u.execute(&cdb(&[0x1a, 0, 0x3f, 0, 192, 0]), &mut s)
                .unwrap(),
        );
        assert_eq!(r.len(), 48);
        assert_eq!(usize::from(r[0]) + 1, r.len());
        assert_eq!(r[2] & 0x80, 0, "writable");
        assert_eq!(r[3], 0, "no block descriptors");
        // Pages in order, each header + length.
        let mut at = 4;
        let mut codes = vec![];
        while at < r.len() {
            codes.push(r[at]);
            at += 2 + usize::from(r[at + 1]);
        }
        assert_eq!(at, r.len());
        assert_eq!(codes, vec![0x01, 0x08, 0x0a]);
        let cache = data_in(
            u.execute(&cdb(&[0x5a, 0, 0x08, 0, 0, 0, 0, 0, 255]), &mut s)
                .unwrap(),
        );
        assert_eq!(cache.len(), 8 + 20);
        assert_eq!(
            u16::from_be_bytes([cache[0], cache[1]]) as usize + 2,
            cache.len()
        );
        assert_eq!(&cache[8..11], &[0x08, 0x12, 0x04], "caching page, WCE");

        let mut ro = MemoryStore::new(64).read_only();
        let r = data_in(u.execute(&cdb(&[0x1a, 0, 0x3f, 0, 4, 0]), &mut ro).unwrap());
        assert_eq!(r.len(), 4);
        assert_eq!(r[0], 47, "length of all data, not of what was sent");
        assert_eq!(r[2], 0x80, "WP");
        assert_eq!(
            u.execute(&cdb(&[0x1a, 0, 0xc8, 0, 192, 0]), &mut s),
            Err(SenseData::SAVING_PARAMETERS_NOT_SUPPORTED)
        );
        assert_eq!(
            u.execute(&cdb(&[0x1a, 0, 0x1c, 0, 192, 0]), &mut s),
            Err(SenseData::INVALID_FIELD_IN_CDB)
        );
    }

    #[test]
    fn block_commands() {
        let mut u = unit();
        let mut s = MemoryStore::new(100);
        assert_eq!(
            u.execute(&cdb(&[0x28, 0, 0, 0, 0, 99, 0, 0, 1, 0]), &mut s),
            Ok(DataTransfer::Read {
                offset: 99 * 512,
                length: 512
            })
        );
        assert_eq!(
            u.execute(&cdb(&[0x28, 0, 0, 0, 0, 99, 0, 0, 2, 0]), &mut s),
            Err(SenseData::LBA_OUT_OF_RANGE)
        );
        assert_eq!(
            u.execute(&cdb(&[0x28, 0, 0, 0, 0, 100, 0, 0, 0, 0]), &mut s),
            Err(SenseData::LBA_OUT_OF_RANGE)
        );
        assert_eq!(
            u.execute(&cdb(&[0x28, 0, 0, 0, 0, 5, 0, 0, 0, 0]), &mut s),
            Ok(DataTransfer::Read {
                offset: 5 * 512,
                length: 0
            })
        );
        let mut c = cdb(&[0x8a, 0x08]);
        c[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
        c[13] = 1;
        assert_eq!(u.execute(&c, &mut s), Err(SenseData::LBA_OUT_OF_RANGE));
        c[2..10].copy_from_slice(&3u64.to_be_bytes());
        assert_eq!(
            u.execute(&c, &mut s),
            Ok(DataTransfer::Write {
                offset: 3 * 512,
                length: 512,
                fua: true
            })
        );
        // READ(6) TRANSFER LENGTH 0 means 256 blocks, more than this medium has.
        assert_eq!(
            u.execute(&cdb(&[0x08, 0, 0, 0, 0, 0]), &mut s),
            Err(SenseData::LBA_OUT_OF_RANGE)
        );
        assert_eq!(
            u.execute(&cdb(&[0x0a, 0, 0, 10, 4, 0]), &mut s),
            Ok(DataTransfer::Write {
                offset: 10 * 512,
                length: 4 * 512,
                fua: false
            })
        );
        assert_eq!(
            u.execute(&cdb(&[0x2f, 0x02, 0, 0, 0, 0, 0, 0, 1, 0]), &mut s),
            Err(SenseData::INVALID_FIELD_IN_CDB),
            "VERIFY with BYTCHK"
        );
        assert_eq!(
            u.execute(&cdb(&[0x2f, 0, 0, 0, 0, 0, 0, 0, 1, 0]), &mut s),
            Ok(DataTransfer::None)
        );
        assert_eq!(u.execute(&cdb(&[0x35]), &mut s), Ok(DataTransfer::None));
        assert_eq!(s.flushes(), 1);
    }

    #[test]
    fn read_only_rejects_writes() {
        let mut u = unit();
        let mut s = MemoryStore::new(100).read_only();
        assert_eq!(
            u.execute(&cdb(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0]), &mut s),
            Err(SenseData::WRITE_PROTECTED)
        );
        assert_eq!(u.sense(), SenseData::WRITE_PROTECTED);
        assert!(u
            .execute(&cdb(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]), &mut s)
            .is_ok());
        assert_eq!(
            u.sense(),
            SenseData::NO_SENSE,
            "a good command clears the sense"
        );
    }

    #[test]
    fn unknown_opcode_and_request_sense() {
        let mut u = unit();
        let mut s = MemoryStore::new(100);
        assert_eq!(
            u.execute(&cdb(&[0xa1]), &mut s),
            Err(SenseData::INVALID_COMMAND_OPERATION_CODE)
        );
        let r = data_in(u.execute(&cdb(&[0x03, 0, 0, 0, 96, 0]), &mut s).unwrap());
        assert_eq!(r.len(), 18);
        assert_eq!((r[2], r[12], r[13]), (5, 0x20, 0));
        let r = data_in(u.execute(&cdb(&[0x03, 0, 0, 0, 18, 0]), &mut s).unwrap());
        assert_eq!((r[2], r[12], r[13]), (0, 0, 0), "sense is reported once");
    }
}
