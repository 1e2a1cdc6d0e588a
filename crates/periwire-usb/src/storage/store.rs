//! Where the blocks live: the [`BlockStore`] trait the protocol logic reads and writes
//! through, a raw image file ([`FileStore`]) and an in-memory store ([`MemoryStore`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Logical block size of every store, in bytes (SBC-3 §4.4).
pub const BLOCK_SIZE: usize = 512;

/// A medium of [`BLOCK_SIZE`]-byte blocks, addressed by byte offset.
///
/// The transport calls it with offsets and lengths inside `block_count() * BLOCK_SIZE`
/// (already checked against the CDB), but a piece of a data phase need not start or end on
/// a block boundary: data-phase URBs come in any size.
pub trait BlockStore {
    /// Number of blocks.
    fn block_count(&self) -> u64;

    /// Whether writes are refused (the SCSI layer answers DATA PROTECT).
    fn is_read_only(&self) -> bool;

    /// Fills `buf` from byte `offset`.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Writes all of `data` at byte `offset`; on success the data is visible to every later
    /// read, though not necessarily durable.
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()>;

    /// Makes every completed write durable.
    fn flush(&mut self) -> io::Result<()>;
}

impl<T: BlockStore + ?Sized> BlockStore for Box<T> {
    fn block_count(&self) -> u64 {
        (**self).block_count()
    }
    fn is_read_only(&self) -> bool {
        (**self).is_read_only()
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_at(data, offset)
    }
    fn flush(&mut self) -> io::Result<()> {
        (**self).flush()
    }
}

/// A raw disk image: a regular file (or a block device) whose size is a multiple of
/// [`BLOCK_SIZE`]. Reads and writes are positioned (`pread`/`pwrite`); [`flush`] is
/// `fdatasync`.
///
/// [`flush`]: BlockStore::flush
#[derive(Debug)]
pub struct FileStore {
    file: File,
    blocks: u64,
    read_only: bool,
}

impl FileStore {
    /// Opens the image at `path`. A missing file is created sparse with `size` bytes, or is
    /// an error if `size` is `None`. An existing file keeps its own size. Either way the size
    /// must be a non-zero multiple of [`BLOCK_SIZE`].
    pub fn open(path: &Path, size: Option<u64>, read_only: bool) -> io::Result<Self> {
        if let Some(size) = size {
            check_size(size)?;
        }
        let existing = path.try_exists()?;
        if !existing {
            let Some(size) = size else {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "disk image {} does not exist and no size was given to create it",
                        path.display()
                    ),
                ));
            };
            // `create_new` so that a file made meanwhile by someone else is not truncated.
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(file) => {
                    file.set_len(size)?;
                    tracing::info!(path = %path.display(), size, "storage: created sparse image");
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let mut file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        // Seeking to the end measures block devices too, where the metadata length is 0.
        let len = file.seek(SeekFrom::End(0))?;
        check_size(len)
            .map_err(|e| io::Error::new(e.kind(), format!("disk image {}: {e}", path.display())))?;
        if let Some(size) = size {
            if existing && size != len {
                tracing::warn!(
                    path = %path.display(),
                    asked = size,
                    actual = len,
                    "storage: image exists with another size; keeping its size"
                );
            }
        }
        Ok(Self {
            file,
            blocks: len / BLOCK_SIZE as u64,
            read_only,
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.blocks * BLOCK_SIZE as u64
    }
}

/// Whether `size` bytes are a non-zero whole number of blocks. (`checked_rem` rather than
/// `is_multiple_of`, which is newer than the workspace's rust-version.)
pub(crate) fn is_whole_blocks(size: u64) -> bool {
    size != 0 && size.checked_rem(BLOCK_SIZE as u64) == Some(0)
}

fn check_size(size: u64) -> io::Result<()> {
    if !is_whole_blocks(size) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("image size {size} is not a non-zero multiple of {BLOCK_SIZE} bytes"),
        ));
    }
    Ok(())
}

impl BlockStore for FileStore {
    fn block_count(&self) -> u64 {
        self.blocks
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "image is read-only",
            ));
        }
        self.file.write_all_at(data, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }
}

/// A store in memory, for tests and throw-away disks. It can be made read-only, and made to
/// fail reads or writes of chosen blocks to exercise error paths.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    data: Vec<u8>,
    read_only: bool,
    bad_blocks: Vec<u64>,
    flushes: u64,
}

impl MemoryStore {
    /// A zero-filled store of `blocks` blocks.
    pub fn new(blocks: usize) -> Self {
        Self {
            data: vec![0; blocks * BLOCK_SIZE],
            ..Self::default()
        }
    }

    /// The same store, read-only.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Makes every read or write that touches block `lba` fail with an I/O error.
    pub fn fail_block(&mut self, lba: u64) {
        self.bad_blocks.push(lba);
    }

    /// The bytes stored.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// The bytes stored, to change.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// How many times [`BlockStore::flush`] was called.
    pub fn flushes(&self) -> u64 {
        self.flushes
    }

    fn range(&self, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let end = start.checked_add(len).ok_or_else(out_of_range)?;
        if end > self.data.len() {
            return Err(out_of_range());
        }
        let first = offset / BLOCK_SIZE as u64;
        let last = (end as u64).div_ceil(BLOCK_SIZE as u64);
        if self.bad_blocks.iter().any(|b| (first..last).contains(b)) {
            return Err(io::Error::other("injected medium error"));
        }
        Ok(start..end)
    }
}

fn out_of_range() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "beyond the end of the store")
}

impl BlockStore for MemoryStore {
    fn block_count(&self) -> u64 {
        (self.data.len() / BLOCK_SIZE) as u64
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }

    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "store is read-only",
            ));
        }
        let r = self.range(offset, data.len())?;
        self.data[r].copy_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flushes += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_sparse_image_and_checks_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let err = FileStore::open(&path, None, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let err = FileStore::open(&path, Some(1000), false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(!path.exists());

        let mut s = FileStore::open(&path, Some(1 << 20), false).unwrap();
        assert_eq!(s.block_count(), 2048);
        s.write_at(b"hello", 513).unwrap();
        s.flush().unwrap();
        drop(s);

        // Reopened read-only, with another size asked: the file keeps its own.
        let mut s = FileStore::open(&path, Some(4096), true).unwrap();
        assert_eq!(s.size(), 1 << 20);
        let mut buf = [0u8; 7];
        s.read_at(&mut buf, 512).unwrap();
        assert_eq!(&buf, b"\0hello\0");
        assert!(s.write_at(b"x", 0).is_err());

        std::fs::write(dir.path().join("odd.img"), [0u8; 700]).unwrap();
        let err = FileStore::open(&dir.path().join("odd.img"), None, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn memory_store_injects_errors() {
        let mut s = MemoryStore::new(4);
        s.fail_block(2);
        assert!(s.write_at(&[1; 512], 512).is_ok());
        assert!(s.write_at(&[1; 2], 1023).is_err(), "touches block 2");
        assert!(s.read_at(&mut [0; 10], 2040).is_err(), "past the end");
    }
}
