//! USB Mass Storage Class Bulk-Only Transport 1.0 ("BOT"): the Command Block Wrapper and
//! Command Status Wrapper (§5.1, §5.2) and a sans-IO state machine for the command / data /
//! status cycle (§5.3) with the error handling of §6.
//!
//! [`BulkOnlyTransport`] takes the bytes of each bulk OUT transfer
//! ([`handle_bulk_out`](BulkOnlyTransport::handle_bulk_out)) and gives the bytes of each
//! bulk IN transfer ([`poll_bulk_in`](BulkOnlyTransport::poll_bulk_in)); it runs the SCSI
//! commands against a [`BlockStore`]. It has no runtime, no URB type and no file: the
//! [`MassStorage`](super::MassStorage) device is the glue between it and USB/IP.
//!
//! A data phase may be split over any number of transfers of any size, in both directions.
//! Data goes straight between the transfer buffers and the store: the machine never holds
//! more than the one small response (INQUIRY, MODE SENSE, ...) it is sending.
//!
//! How host/device disagreements are resolved (the thirteen cases of §6.7):
//! - the device sends less than the host asked (cases 4, 5): the data is sent and the last
//!   transfer is short (a zero-length one if the data ended on a transfer boundary); the
//!   CSW carries the residue. No STALL, so Linux needs no CLEAR_FEATURE round trip.
//!   (Linux only ever gets short data on small single-buffer commands — MODE SENSE 192,
//!   REQUEST SENSE 96, VPD pages — which travel as one URB. A host that split such a phase
//!   over several URBs with `URB_SHORT_NOT_OK` would expect the short one to fail with
//!   EREMOTEIO, which the session now reports with the data: see `Completion::short_not_ok`.)
//! - the host sends more than the device wants (cases 9, 11): the rest is accepted and
//!   discarded (§6.7.3 recommends it); the CSW carries the residue.
//! - the device would move more than the host asked, or the other way (cases 2, 3, 7, 8, 10,
//!   13): at most the host's length is moved (nothing is written for 13), then a CSW with
//!   Phase Error, after which the host does a Reset Recovery.
//! - a CBW that is not valid (§6.6.1: wrong length or signature): both pipes STALL until a
//!   Bulk-Only Mass Storage Reset (§3.1); CLEAR_FEATURE alone does not end that state.
//! - bulk OUT traffic while the device owes data or a CSW (a host that broke the protocol):
//!   the OUT pipe STALLs.

use std::io;

use super::scsi::{DataTransfer, Identity, LogicalUnit, SenseData};
use super::store::{BlockStore, BLOCK_SIZE};

/// Length of a Command Block Wrapper (§5.1).
pub const CBW_LEN: usize = 31;
/// Length of a Command Status Wrapper (§5.2).
pub const CSW_LEN: usize = 13;
/// dCBWSignature, "USBC" little-endian (§5.1).
pub const CBW_SIGNATURE: u32 = 0x4342_5355;
/// dCSWSignature, "USBS" little-endian (§5.2).
pub const CSW_SIGNATURE: u32 = 0x5342_5355;
/// bRequest of the class request Bulk-Only Mass Storage Reset (§3.1), bmRequestType 0x21.
pub const BULK_ONLY_MASS_STORAGE_RESET: u8 = 0xff;
/// bRequest of the class request Get Max LUN (§3.2), bmRequestType 0xA1.
pub const GET_MAX_LUN: u8 = 0xfe;
/// The highest LUN, answered to Get Max LUN: this device has LUN 0 only.
pub const MAX_LUN: u8 = 0;
/// Most bytes one bulk IN transfer carries; a longer transfer completes short at this
/// length (the host then sees a residue and retries the rest). Linux asks for at most
/// 120 KiB (`max_sectors` 240) per command on a high-speed device.
pub const MAX_IN_TRANSFER: usize = 1 << 20;

/// bmCBWFlags Direction bit: data-in, device to host (§5.1).
const CBW_FLAG_DATA_IN: u8 = 0x80;

fn le32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
        _ => 0,
    }
}

/// Why a transfer is not a valid CBW (§6.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CbwError {
    /// A CBW is exactly 31 bytes.
    #[error("a CBW is 31 bytes, this transfer has {0}")]
    Length(usize),
    /// dCBWSignature is not 0x43425355.
    #[error("CBW signature {0:#010x}, expected 0x43425355")]
    Signature(u32),
}

/// Command Block Wrapper (§5.1, table 5.1): the 31 bytes a command arrives in. Fields keep
/// their raw bytes, reserved bits included, so a parsed CBW emits the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandBlockWrapper {
    /// dCBWTag, echoed in the CSW.
    pub tag: u32,
    /// dCBWDataTransferLength: bytes the host expects to move in the data phase.
    pub data_transfer_length: u32,
    /// bmCBWFlags: bit 7 is the direction (1 = data-in), the rest reserved.
    pub flags: u8,
    /// bCBWLUN: LUN in bits 3..0, the rest reserved.
    pub lun: u8,
    /// bCBWCBLength: valid length of `cb` in bits 4..0 (1 to 16), the rest reserved.
    pub cb_length: u8,
    /// CBWCB: the command block (a SCSI CDB), 16 bytes whatever its valid length.
    pub cb: [u8; 16],
}

impl CommandBlockWrapper {
    /// Parses a CBW, checking what makes it valid (§6.2.1): 31 bytes and the signature.
    pub fn parse(bytes: &[u8]) -> Result<Self, CbwError> {
        let b: &[u8; CBW_LEN] = bytes
            .try_into()
            .map_err(|_| CbwError::Length(bytes.len()))?;
        let signature = le32(b, 0);
        if signature != CBW_SIGNATURE {
            return Err(CbwError::Signature(signature));
        }
        let mut cb = [0u8; 16];
        cb.copy_from_slice(&b[15..]);
        Ok(Self {
            tag: le32(b, 4),
            data_transfer_length: le32(b, 8),
            flags: b[12],
            lun: b[13],
            cb_length: b[14],
            cb,
        })
    }

    /// The 31 bytes.
    pub fn emit(&self) -> [u8; CBW_LEN] {
        let mut b = [0u8; CBW_LEN];
        b[0..4].copy_from_slice(&CBW_SIGNATURE.to_le_bytes());
        b[4..8].copy_from_slice(&self.tag.to_le_bytes());
        b[8..12].copy_from_slice(&self.data_transfer_length.to_le_bytes());
        b[12] = self.flags;
        b[13] = self.lun;
        b[14] = self.cb_length;
        b[15..].copy_from_slice(&self.cb);
        b
    }

    /// Whether the data phase, if any, goes device to host.
    pub fn is_data_in(&self) -> bool {
        self.flags & CBW_FLAG_DATA_IN != 0
    }

    /// The LUN addressed.
    pub fn lun_number(&self) -> u8 {
        self.lun & 0x0f
    }

    /// Whether the CBW is meaningful (§6.2.2) as far as the transport can tell: no reserved
    /// bit set and a command block length of 1 to 16. (The LUN is checked by the caller.)
    pub fn is_meaningful(&self) -> bool {
        self.flags & !CBW_FLAG_DATA_IN == 0
            && self.lun & 0xf0 == 0
            && self.cb_length & 0xe0 == 0
            && (1..=16).contains(&self.cb_length)
    }
}

/// bCSWStatus (§5.2, table 5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CswStatus {
    /// 00h Command Passed ("good status").
    Passed,
    /// 01h Command Failed: the host asks REQUEST SENSE.
    Failed,
    /// 02h Phase Error: the host performs a Reset Recovery.
    PhaseError,
}

impl CswStatus {
    /// The byte on the wire.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Passed => 0,
            Self::Failed => 1,
            Self::PhaseError => 2,
        }
    }

    /// The status for a byte, `None` for the reserved values 03h..FFh.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Passed),
            1 => Some(Self::Failed),
            2 => Some(Self::PhaseError),
            _ => None,
        }
    }
}

/// Why 13 bytes are not a valid CSW (§6.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CswError {
    /// A CSW is exactly 13 bytes.
    #[error("a CSW is 13 bytes, this transfer has {0}")]
    Length(usize),
    /// dCSWSignature is not 0x53425355.
    #[error("CSW signature {0:#010x}, expected 0x53425355")]
    Signature(u32),
    /// bCSWStatus is reserved.
    #[error("reserved CSW status {0:#04x}")]
    Status(u8),
}

/// Command Status Wrapper (§5.2, table 5.2): the 13 bytes that end every command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandStatusWrapper {
    /// dCSWTag: the dCBWTag of the command.
    pub tag: u32,
    /// dCSWDataResidue: for data-out, dCBWDataTransferLength minus the bytes the device
    /// processed; for data-in, minus the relevant bytes it sent (§5.2).
    pub data_residue: u32,
    /// bCSWStatus.
    pub status: CswStatus,
}

impl CommandStatusWrapper {
    /// The 13 bytes.
    pub fn emit(&self) -> [u8; CSW_LEN] {
        let mut b = [0u8; CSW_LEN];
        b[0..4].copy_from_slice(&CSW_SIGNATURE.to_le_bytes());
        b[4..8].copy_from_slice(&self.tag.to_le_bytes());
        b[8..12].copy_from_slice(&self.data_residue.to_le_bytes());
        b[12] = self.status.to_u8();
        b
    }

    /// Parses a CSW, checking that it is valid (§6.3.1) and its status defined.
    pub fn parse(bytes: &[u8]) -> Result<Self, CswError> {
        let b: &[u8; CSW_LEN] = bytes
            .try_into()
            .map_err(|_| CswError::Length(bytes.len()))?;
        let signature = le32(b, 0);
        if signature != CSW_SIGNATURE {
            return Err(CswError::Signature(signature));
        }
        Ok(Self {
            tag: le32(b, 4),
            data_residue: le32(b, 8),
            status: CswStatus::from_u8(b[12]).ok_or(CswError::Status(b[12]))?,
        })
    }
}

/// What a bulk IN transfer gets from [`BulkOnlyTransport::poll_bulk_in`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkIn {
    /// Complete the transfer with these bytes (at most the length asked; fewer ends the
    /// host's transfer short).
    Data(Vec<u8>),
    /// Nothing to send yet: keep the transfer pending until the next bulk OUT or reset.
    Pending,
    /// STALL the bulk IN pipe.
    Stall,
}

/// The bulk OUT pipe stalls: the transfer fails with a STALL (EPIPE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bulk OUT pipe stalled")]
pub struct Stalled;

#[derive(Debug)]
enum Phase {
    /// Ready for a CBW (§5.3, "Command Transport").
    Command,
    /// Sending data to the host.
    DataIn(DataIn),
    /// Receiving data from the host.
    DataOut(DataOut),
    /// The CSW waits for the host to read it.
    Status(CommandStatusWrapper),
    /// A CBW was not valid: both pipes stall until a Reset Recovery (§6.6.1).
    AwaitingReset,
}

#[derive(Debug)]
enum Source {
    /// A response built by the SCSI layer.
    Bytes { data: Vec<u8>, pos: usize },
    /// Blocks read from the store as the host asks for them.
    Blocks { offset: u64, remaining: u64 },
}

#[derive(Debug)]
struct DataIn {
    tag: u32,
    /// dCBWDataTransferLength.
    expected: u64,
    sent: u64,
    source: Source,
    status: CswStatus,
}

#[derive(Debug)]
enum Sink {
    Discard,
    Blocks {
        offset: u64,
        remaining: u64,
        fua: bool,
    },
}

#[derive(Debug)]
struct DataOut {
    tag: u32,
    /// dCBWDataTransferLength.
    expected: u64,
    received: u64,
    /// Bytes written to the store.
    processed: u64,
    sink: Sink,
    status: CswStatus,
}

fn residue(expected: u64, done: u64) -> u32 {
    u32::try_from(expected.saturating_sub(done)).unwrap_or(u32::MAX)
}

fn lba_of(offset: u64) -> u64 {
    offset / BLOCK_SIZE as u64
}

/// Runs `op` on `len` bytes from `offset`, first in one go and, if that fails, block by
/// block, so that the good front part is kept and the failing block found. Returns how
/// many bytes from the front succeeded and the error that stopped it.
fn salvage(
    len: usize,
    offset: u64,
    mut op: impl FnMut(std::ops::Range<usize>, u64) -> io::Result<()>,
) -> Result<(), (usize, io::Error)> {
    let Err(first) = op(0..len, offset) else {
        return Ok(());
    };
    let mut done = 0;
    while done < len {
        let here = offset + done as u64;
        let to_boundary = BLOCK_SIZE - (here % BLOCK_SIZE as u64) as usize;
        let end = len.min(done + to_boundary);
        if let Err(e) = op(done..end, here) {
            return Err((done, e));
        }
        done = end;
    }
    // Every block succeeded on its own: a transient error.
    tracing::debug!(error = %first, "storage: I/O error did not recur block by block");
    Ok(())
}

/// The Bulk-Only Transport of one mass-storage interface with one logical unit, as a
/// sans-IO state machine over a [`BlockStore`].
///
/// Drive it with the bytes of each bulk OUT transfer and by asking it for each bulk IN
/// transfer. Everything it writes reaches the store before the CSW that reports it is
/// produced.
#[derive(Debug)]
pub struct BulkOnlyTransport<S> {
    store: S,
    unit: LogicalUnit,
    phase: Phase,
}

impl<S: BlockStore> BulkOnlyTransport<S> {
    /// A transport, ready for a CBW, serving `store` as a unit that reports `identity`.
    pub fn new(store: S, identity: Identity) -> Self {
        Self {
            store,
            unit: LogicalUnit::new(identity),
            phase: Phase::Command,
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, to change.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// The logical unit (its sense data, ...).
    pub fn unit(&self) -> &LogicalUnit {
        &self.unit
    }

    /// Makes every completed write durable.
    pub fn flush(&mut self) -> io::Result<()> {
        self.store.flush()
    }

    /// Whether both pipes stall until a Reset Recovery, after a CBW that was not valid.
    pub fn is_awaiting_reset(&self) -> bool {
        matches!(self.phase, Phase::AwaitingReset)
    }

    /// Whether the transport waits for a CBW.
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Command)
    }

    /// Bulk-Only Mass Storage Reset (§3.1), or a USB reset / new configuration: the
    /// transport readies for the next CBW. Halt conditions of the pipes are the caller's
    /// (§3.1: they survive this reset until CLEAR_FEATURE).
    pub fn reset(&mut self) {
        if !self.is_idle() {
            tracing::debug!(phase = ?self.phase, "storage: bulk-only reset");
        }
        self.phase = Phase::Command;
    }

    /// Takes the bytes of one bulk OUT transfer: a CBW, or (part of) a data-out phase.
    /// Returns how many bytes were accepted (all of them, except past the end of a data
    /// phase), or [`Stalled`] when the OUT pipe must stall.
    pub fn handle_bulk_out(&mut self, data: &[u8]) -> Result<usize, Stalled> {
        match &mut self.phase {
            Phase::Command => {
                self.command(data);
                Ok(data.len())
            }
            Phase::DataOut(out) => {
                let (taken, csw) = out.consume(data, &mut self.store, &mut self.unit);
                if let Some(csw) = csw {
                    self.phase = Phase::Status(csw);
                }
                Ok(taken)
            }
            Phase::AwaitingReset => Err(Stalled),
            Phase::DataIn(_) | Phase::Status(_) => {
                tracing::debug!("storage: bulk OUT while the device owes data or status");
                Err(Stalled)
            }
        }
    }

    /// Gives the bytes for one bulk IN transfer of up to `max_len` bytes: data of the
    /// data-in phase, or the CSW.
    pub fn poll_bulk_in(&mut self, max_len: usize) -> BulkIn {
        match &mut self.phase {
            Phase::Command | Phase::DataOut(_) => BulkIn::Pending,
            Phase::AwaitingReset => BulkIn::Stall,
            Phase::Status(_) if max_len == 0 => BulkIn::Data(Vec::new()),
            Phase::Status(csw) => {
                let bytes = csw.emit();
                self.phase = Phase::Command;
                BulkIn::Data(bytes[..CSW_LEN.min(max_len)].to_vec())
            }
            Phase::DataIn(d) => {
                let (data, csw) = d.produce(max_len, &mut self.store, &mut self.unit);
                if let Some(csw) = csw {
                    self.phase = Phase::Status(csw);
                }
                BulkIn::Data(data)
            }
        }
    }

    /// Takes a CBW and sets up the data and status phases (§6.7).
    fn command(&mut self, bytes: &[u8]) {
        let cbw = match CommandBlockWrapper::parse(bytes) {
            Ok(cbw) => cbw,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "storage: CBW not valid; both pipes stall until reset recovery"
                );
                self.phase = Phase::AwaitingReset;
                return;
            }
        };
        let outcome = if cbw.lun_number() != 0 {
            Err(self.unit.reject_lun())
        } else if !cbw.is_meaningful() {
            self.unit.fail(SenseData::INVALID_FIELD_IN_CDB);
            Err(SenseData::INVALID_FIELD_IN_CDB)
        } else {
            self.unit.execute(&cbw.cb, &mut self.store)
        };
        let (intent, status) = match outcome {
            Ok(intent) => (intent, CswStatus::Passed),
            Err(sense) => {
                tracing::debug!(
                    opcode = cbw.cb[0],
                    key = sense.key,
                    asc = sense.asc,
                    ascq = sense.ascq,
                    "storage: command failed"
                );
                (DataTransfer::None, CswStatus::Failed)
            }
        };
        let expected = u64::from(cbw.data_transfer_length);
        let device = intent.len();
        tracing::trace!(
            tag = cbw.tag,
            cdb = ?cbw.cb.get(..usize::from(cbw.cb_length)).unwrap_or(&cbw.cb),
            expected,
            data_in = cbw.is_data_in(),
            device,
            ?status,
            "storage: CBW"
        );
        let tag = cbw.tag;
        self.phase = if expected == 0 {
            // Cases 1 (Hn = Dn), 2 (Hn < Di) and 3 (Hn < Do).
            let status = if device == 0 {
                status
            } else {
                CswStatus::PhaseError
            };
            Phase::Status(CommandStatusWrapper {
                tag,
                data_residue: 0,
                status,
            })
        } else if cbw.is_data_in() {
            let phase_error = device > expected;
            let (source, status) = match intent {
                // Case 4 (Hi > Dn).
                DataTransfer::None => (Source::empty(), status),
                // Cases 5, 6, 7 (Hi > Di, Hi = Di, Hi < Di).
                DataTransfer::In(mut data) => {
                    data.truncate(usize::try_from(expected).unwrap_or(usize::MAX));
                    (Source::Bytes { data, pos: 0 }, status)
                }
                DataTransfer::Read { offset, length } => (
                    Source::Blocks {
                        offset,
                        remaining: length.min(expected),
                    },
                    status,
                ),
                // Case 8 (Hi <> Do).
                DataTransfer::Write { .. } => (Source::empty(), CswStatus::PhaseError),
            };
            Phase::DataIn(DataIn {
                tag,
                expected,
                sent: 0,
                source,
                status: if phase_error {
                    CswStatus::PhaseError
                } else {
                    status
                },
            })
        } else {
            let (sink, status) = match intent {
                // Case 9 (Ho > Dn).
                DataTransfer::None => (Sink::Discard, status),
                // Case 10 (Ho <> Di).
                DataTransfer::In(_) | DataTransfer::Read { .. } => {
                    (Sink::Discard, CswStatus::PhaseError)
                }
                // Cases 11, 12 (Ho > Do, Ho = Do).
                DataTransfer::Write {
                    offset,
                    length,
                    fua,
                } if length <= expected => (
                    Sink::Blocks {
                        offset,
                        remaining: length,
                        fua,
                    },
                    status,
                ),
                // Case 13 (Ho < Do): nothing is written.
                DataTransfer::Write { .. } => (Sink::Discard, CswStatus::PhaseError),
            };
            Phase::DataOut(DataOut {
                tag,
                expected,
                received: 0,
                processed: 0,
                sink,
                status,
            })
        };
    }
}

impl Source {
    fn empty() -> Self {
        Self::Bytes {
            data: Vec::new(),
            pos: 0,
        }
    }
}

impl DataIn {
    /// The next up to `max_len` bytes, and the CSW if the data phase ended with them.
    fn produce<S: BlockStore>(
        &mut self,
        max_len: usize,
        store: &mut S,
        unit: &mut LogicalUnit,
    ) -> (Vec<u8>, Option<CommandStatusWrapper>) {
        let host_left = usize::try_from(self.expected - self.sent).unwrap_or(usize::MAX);
        let want = host_left.min(max_len).min(MAX_IN_TRANSFER);
        let data = match &mut self.source {
            Source::Bytes { data, pos } => {
                let end = data.len().min(pos.saturating_add(want));
                let chunk = data.get(*pos..end).unwrap_or_default().to_vec();
                *pos = end;
                chunk
            }
            Source::Blocks { offset, remaining } => {
                let n = want.min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                let mut buf = vec![0u8; n];
                // Synchronous I/O of at most one transfer (MAX_IN_TRANSFER).
                let result = salvage(n, *offset, |range, at| match buf.get_mut(range) {
                    Some(part) => store.read_at(part, at),
                    None => Err(io::Error::other("range outside the buffer")),
                });
                match result {
                    Ok(()) => {
                        *offset += n as u64;
                        *remaining -= n as u64;
                    }
                    Err((good, e)) => {
                        let lba = lba_of(*offset + good as u64);
                        tracing::warn!(error = %e, lba, "storage: read failed");
                        unit.fail(SenseData::UNRECOVERED_READ_ERROR.at_lba(lba));
                        self.status = CswStatus::Failed;
                        *remaining = 0;
                        buf.truncate(good);
                    }
                }
                buf
            }
        };
        self.sent += data.len() as u64;
        // The data phase ends when the host has all it asked for, or with a short transfer.
        let csw =
            (self.sent == self.expected || data.len() < max_len).then(|| CommandStatusWrapper {
                tag: self.tag,
                data_residue: residue(self.expected, self.sent),
                status: self.status,
            });
        (data, csw)
    }
}

impl DataOut {
    /// Takes one transfer of the data-out phase. Returns the bytes accepted and the CSW if
    /// the data phase is complete.
    fn consume<S: BlockStore>(
        &mut self,
        data: &[u8],
        store: &mut S,
        unit: &mut LogicalUnit,
    ) -> (usize, Option<CommandStatusWrapper>) {
        let host_left = usize::try_from(self.expected - self.received).unwrap_or(usize::MAX);
        let taken = data.len().min(host_left);
        if taken < data.len() {
            tracing::debug!(
                extra = data.len() - taken,
                "storage: host sent more than dCBWDataTransferLength; extra bytes ignored"
            );
        }
        if let Sink::Blocks {
            offset, remaining, ..
        } = &mut self.sink
        {
            let n = taken.min(usize::try_from(*remaining).unwrap_or(usize::MAX));
            let part = data.get(..n).unwrap_or_default();
            // Synchronous I/O of one transfer's worth of data, already in memory.
            let result = salvage(n, *offset, |range, at| match part.get(range) {
                Some(bytes) => store.write_at(bytes, at),
                None => Err(io::Error::other("range outside the buffer")),
            });
            match result {
                Ok(()) => {
                    *offset += n as u64;
                    *remaining -= n as u64;
                    self.processed += n as u64;
                }
                Err((good, e)) => {
                    let lba = lba_of(*offset + good as u64);
                    tracing::warn!(error = %e, lba, "storage: write failed");
                    unit.fail(SenseData::WRITE_ERROR.at_lba(lba));
                    self.processed += good as u64;
                    self.status = CswStatus::Failed;
                    self.sink = Sink::Discard;
                }
            }
        }
        self.received += taken as u64;
        if self.received < self.expected {
            return (taken, None);
        }
        if let Sink::Blocks { fua: true, .. } = self.sink {
            if self.status == CswStatus::Passed {
                if let Err(e) = store.flush() {
                    tracing::warn!(error = %e, "storage: FUA flush failed");
                    unit.fail(SenseData::WRITE_ERROR);
                    self.status = CswStatus::Failed;
                }
            }
        }
        let csw = CommandStatusWrapper {
            tag: self.tag,
            data_residue: residue(self.expected, self.processed),
            status: self.status,
        };
        (taken, Some(csw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// INQUIRY of 36 bytes as Linux `usb-storage` sends it at attach (tag 1).
    const INQUIRY_CBW: [u8; CBW_LEN] = [
        0x55, 0x53, 0x42, 0x43, // dCBWSignature
        0x01, 0x00, 0x00, 0x00, // dCBWTag
        0x24, 0x00, 0x00, 0x00, // dCBWDataTransferLength 36
        0x80, // bmCBWFlags: data-in
        0x00, // bCBWLUN
        0x06, // bCBWCBLength
        0x12, 0x00, 0x00, 0x00, 0x24, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00,
    ];

    /// A CSW with Command Failed and a residue of 96.
    const FAILED_CSW: [u8; CSW_LEN] = [
        0x55, 0x53, 0x42, 0x53, 0x07, 0x00, 0x00, 0x00, 0x60, 0x00, 0x00, 0x00, 0x01,
    ];

    #[test]
    fn cbw_deconstruct() {
        let cbw = CommandBlockWrapper::parse(&INQUIRY_CBW).unwrap();
        assert_eq!(cbw.tag, 1);
        assert_eq!(cbw.data_transfer_length, 36);
        assert!(cbw.is_data_in());
        assert_eq!(cbw.lun_number(), 0);
        assert_eq!(cbw.cb_length, 6);
        assert_eq!(&cbw.cb[..6], &[0x12, 0, 0, 0, 0x24, 0]);
        assert!(cbw.is_meaningful());
    }

    #[test]
    fn cbw_construct_and_emit() {
        let mut cb = [0u8; 16];
        cb[..6].copy_from_slice(&[0x12, 0, 0, 0, 0x24, 0]);
        let cbw = CommandBlockWrapper {
            tag: 1,
            data_transfer_length: 36,
            flags: 0x80,
            lun: 0,
            cb_length: 6,
            cb,
        };
        assert_eq!(cbw.emit(), INQUIRY_CBW);
    }

    #[test]
    fn cbw_not_valid() {
        assert_eq!(
            CommandBlockWrapper::parse(&INQUIRY_CBW[..30]),
            Err(CbwError::Length(30))
        );
        let mut long = INQUIRY_CBW.to_vec();
        long.push(0);
        assert_eq!(CommandBlockWrapper::parse(&long), Err(CbwError::Length(32)));
        let mut bad = INQUIRY_CBW;
        bad[3] = 0x44;
        assert_eq!(
            CommandBlockWrapper::parse(&bad),
            Err(CbwError::Signature(0x4442_5355))
        );
        let mut reserved = INQUIRY_CBW;
        reserved[12] = 0x81;
        assert!(!CommandBlockWrapper::parse(&reserved)
            .unwrap()
            .is_meaningful());
        reserved = INQUIRY_CBW;
        reserved[14] = 17;
        assert!(!CommandBlockWrapper::parse(&reserved)
            .unwrap()
            .is_meaningful());
    }

    #[test]
    fn csw_parse_and_emit() {
        let csw = CommandStatusWrapper::parse(&FAILED_CSW).unwrap();
        assert_eq!(
            csw,
            CommandStatusWrapper {
                tag: 7,
                data_residue: 96,
                status: CswStatus::Failed
            }
        );
        assert_eq!(csw.emit(), FAILED_CSW);
        let mut bad = FAILED_CSW;
        bad[12] = 3;
        assert_eq!(CommandStatusWrapper::parse(&bad), Err(CswError::Status(3)));
        assert_eq!(
            CommandStatusWrapper::parse(&FAILED_CSW[1..]),
            Err(CswError::Length(12))
        );
    }
}
