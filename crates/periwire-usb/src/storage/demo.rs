//! A ready-made FAT disk image to export, for demos and tests.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::store::{is_whole_blocks, BLOCK_SIZE};

/// Volume label of demo images (11 bytes, space padded, as the FAT boot sector holds it).
pub const DEMO_VOLUME_LABEL: [u8; 11] = *b"PERIWIRE   ";

/// Creates a FAT-formatted image of `size_bytes` at `path` holding `files`, unless a file
/// already exists there (then nothing is done and `Ok` is returned).
///
/// The image has no partition table (a "superfloppy": Linux mounts it as `/dev/sda` itself);
/// `fatfs` picks FAT12, FAT16 or FAT32 from the size. The volume label is
/// [`DEMO_VOLUME_LABEL`]. Files go in the root directory (long names are fine); a name with
/// `/` is refused, because `fatfs` 0.3 writes long-name entries in front of the `.` and `..`
/// entries of every directory it creates, which `fsck.fat` reports as corruption.
/// `size_bytes` must be a multiple of 512 and large enough for a FAT volume (a few hundred
/// KiB at least). A half-made image is removed if anything fails.
pub fn create_demo_image(
    path: impl AsRef<Path>,
    size_bytes: u64,
    files: &[(&str, &[u8])],
) -> io::Result<()> {
    let path = path.as_ref();
    if !is_whole_blocks(size_bytes) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("image size {size_bytes} is not a non-zero multiple of {BLOCK_SIZE} bytes"),
        ));
    }
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    };
    let result = (|| {
        file.set_len(size_bytes)?;
        format_and_fill(&file, files)?;
        file.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn format_and_fill(file: &std::fs::File, files: &[(&str, &[u8])]) -> io::Result<()> {
    // A volume serial number that differs between images, as mkfs.fat's does.
    let volume_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs() as u32) ^ d.subsec_nanos().rotate_left(16))
        .unwrap_or(0x5057_4952);
    fatfs::format_volume(
        file,
        fatfs::FormatVolumeOptions::new()
            .volume_label(DEMO_VOLUME_LABEL)
            .volume_id(volume_id),
    )?;
    // `&File` reads, writes and seeks through one shared file position; format_volume left
    // it at 0, where FileSystem::new wants it.
    let fs = fatfs::FileSystem::new(file, fatfs::FsOptions::new())?;
    {
        let root = fs.root_dir();
        for (name, contents) in files {
            if name.is_empty() || name.contains('/') {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("demo image file name {name:?}: must be non-empty, without '/'"),
                ));
            }
            let mut f = root.create_file(name)?;
            f.truncate()?;
            f.write_all(contents)?;
            f.flush()?;
        }
    }
    fs.unmount()
}
