//! A writer for the `newc` cpio format, the format Linux unpacks into the initramfs
//! (`Documentation/driver-api/early-userspace/buffer-format.rst`, `init/initramfs.c`).
//!
//! Every entry is a 110-byte ASCII header (`070701` and thirteen 8-digit hex fields), the
//! NUL-terminated name padded to 4 bytes, then the data padded to 4 bytes. The archive ends
//! with an entry named `TRAILER!!!`. The kernel accepts several archives one after the other,
//! so a scenario archive can be appended to a cached base image.

use std::collections::BTreeSet;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Builds one newc archive in memory.
///
/// Parent directories are emitted automatically before the first entry under them, because
/// the kernel does not create missing parents while unpacking.
#[derive(Debug)]
pub struct CpioWriter {
    buf: Vec<u8>,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

impl CpioWriter {
    /// Starts an empty archive; inode numbers start at `first_ino` (give appended archives
    /// distinct ranges so no two entries of the final image share one).
    pub fn new(first_ino: u32) -> Self {
        CpioWriter {
            buf: Vec::new(),
            next_ino: first_ino,
            dirs: BTreeSet::new(),
        }
    }

    /// Adds a directory (and its parents). `path` is relative to the root, without a leading `/`.
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.dirs.insert(path.to_owned());
        self.entry(path, S_IFDIR | 0o755, 2, 0, &[]);
    }

    /// Adds a regular file with the given permission bits (e.g. `0o755`).
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        let path = self.parent_of(path);
        self.entry(&path, S_IFREG | (perm & 0o7777), 1, 0, data);
    }

    /// Adds a symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        let path = self.parent_of(path);
        self.entry(&path, S_IFLNK | 0o777, 1, 0, target.as_bytes());
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        let path = self.parent_of(path);
        let rdev = (major << 16) | (minor & 0xffff);
        self.entry(&path, S_IFCHR | (perm & 0o7777), 1, rdev, &[]);
    }

    /// Ends the archive with the trailer and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry_raw("TRAILER!!!", 0, 0, 1, 0, &[]);
        self.buf
    }

    fn parent_of(&mut self, path: &str) -> String {
        let path = path.trim_start_matches('/').to_owned();
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        path
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: u32, data: &[u8]) {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.entry_raw(name, ino, mode, nlink, rdev, data);
    }

    fn entry_raw(&mut self, name: &str, ino: u32, mode: u32, nlink: u32, rdev: u32, data: &[u8]) {
        let namesize = name.len() + 1;
        let fields: [u32; 13] = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            u32::try_from(data.len()).unwrap_or(u32::MAX),
            0, // devmajor
            0, // devminor
            rdev >> 16,
            rdev & 0xffff,
            u32::try_from(namesize).unwrap_or(u32::MAX),
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_and_padding() {
        let mut w = CpioWriter::new(1);
        w.file("a/b", 0o644, b"xyz");
        let out = w.finish();
        // First entry: directory "a".
        assert_eq!(&out[..6], b"070701");
        let hex = |i: usize| &out[6 + 8 * i..6 + 8 * (i + 1)];
        assert_eq!(hex(1), b"000041ed"); // dir, 0755
        assert_eq!(hex(11), b"00000002"); // "a\0"
        assert_eq!(&out[110..112], b"a\0");
        // 110 + 2 = 112, already aligned; the file entry follows.
        let f = &out[112..];
        assert_eq!(&f[..6], b"070701");
        assert_eq!(&f[6 + 8..6 + 16], b"000081a4"); // file, 0644
        assert_eq!(&f[6 + 48..6 + 56], b"00000003"); // filesize
        assert_eq!(&f[110..114], b"a/b\0");
        // 110 + 4 = 114, padded to 116.
        assert_eq!(&f[116..119], b"xyz");
        assert_eq!(f[119], 0); // data padded to 4
        assert!(out.len().is_multiple_of(4));
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn parents_are_emitted_once() {
        let mut w = CpioWriter::new(1);
        w.file("x/y/z", 0o644, b"");
        w.symlink("x/y/l", "z");
        let out = w.finish();
        let count = |needle: &[u8]| out.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(count(b"x/y\0"), 1);
        assert_eq!(count(b"x\0"), 1);
    }
}
