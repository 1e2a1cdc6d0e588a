//! The guest's kernel and initramfs: finding the installed Debian kernel, building the cached
//! base archive (busybox, usbip and its libraries, `/init`) and module archives, and the
//! per-boot scenario archive.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::UNIX_EPOCH;

use crate::cpio::CpioWriter;
use crate::modules::{ModuleIndex, ResolvedModule};
use crate::Error;

const INIT: &str = include_str!("guest/init.sh");
const LIB_SH: &str = include_str!("guest/lib.sh");

/// The static busybox from Debian's `busybox-static`.
const BUSYBOX: &str = "/bin/busybox";
/// Host tools copied into the guest with their libraries, and the Debian package of each:
/// the usbip tools, and BlueZ's (which talk to the kernel's Bluetooth sockets directly, no
/// daemon needed).
const GUEST_TOOLS: &[(&str, &str)] = &[
    ("/usr/sbin/usbip", "usbip"),
    ("/usr/sbin/usbipd", "usbip"),
    ("/usr/bin/btmgmt", "bluez"),
    ("/usr/bin/hciconfig", "bluez"),
    ("/usr/bin/hcitool", "bluez"),
    ("/usr/bin/l2ping", "bluez"),
    ("/usr/bin/l2test", "bluez"),
    ("/usr/bin/sg_reset", "sg3-utils"),
];
/// Where usbip reads USB names from (the Debian build reads `/usr/share/misc`; upstream
/// defaults to `/usr/share/hwdata`). Both are provided in the guest.
const USB_IDS: &[&str] = &["/usr/share/misc/usb.ids", "/usr/share/hwdata/usb.ids"];

/// First inode number of each archive, so the concatenated image has no duplicates.
const INO_BASE: u32 = 1;
const INO_MODULES: u32 = 0x2000_0000;
const INO_SCENARIO: u32 = 0x4000_0000;

/// The installed kernel the guest boots.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// Its release (`6.1.0-56-amd64`), as in `/boot/vmlinuz-<version>`.
    pub version: String,
    /// `/boot/vmlinuz-<version>`.
    pub image: PathBuf,
    /// `/lib/modules/<version>`.
    pub modules_dir: PathBuf,
}

impl Kernel {
    /// Finds the newest `/boot/vmlinuz-<version>` that has `/lib/modules/<version>/modules.dep`,
    /// or exactly `PERIWIRE_GUEST_KERNEL` (a version) if that is set. The host's running kernel
    /// (`uname -r`) plays no part.
    pub fn find() -> Result<Kernel, Error> {
        let wanted = std::env::var("PERIWIRE_GUEST_KERNEL").ok();
        let mut found = Vec::new();
        let entries = std::fs::read_dir("/boot").map_err(|e| Error::MissingTool {
            what: "a kernel in /boot".into(),
            detail: e.to_string(),
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(version) = name.strip_prefix("vmlinuz-") else {
                continue;
            };
            if wanted.as_deref().is_some_and(|w| w != version) {
                continue;
            }
            let modules_dir = Path::new("/lib/modules").join(version);
            if modules_dir.join("modules.dep").is_file() {
                found.push(Kernel {
                    version: version.to_owned(),
                    image: entry.path(),
                    modules_dir,
                });
            }
        }
        found.sort_by_key(|k| version_key(&k.version));
        found.pop().ok_or_else(|| Error::MissingTool {
            what: "a kernel (/boot/vmlinuz-<version> with /lib/modules/<version>)".into(),
            detail: match wanted {
                Some(w) => format!("PERIWIRE_GUEST_KERNEL={w} not found"),
                None => "none installed (Debian package linux-image-amd64)".into(),
            },
        })
    }
}

/// Orders versions numerically: `6.10.0` after `6.9.0`.
fn version_key(v: &str) -> Vec<(u64, String)> {
    let mut key = Vec::new();
    let mut rest = v;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (num, tail) = rest.split_at(digits);
        let text_len = tail.len() - tail.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
        let (text, tail) = tail.split_at(text_len);
        key.push((num.parse().unwrap_or(0), text.to_owned()));
        rest = tail;
    }
    key
}

/// The kernel image QEMU boots: the uncompressed ELF `vmlinux` extracted from the bzImage
/// (cached), booted through its PVH entry point, which saves the seconds TCG spends in the
/// bzImage's own decompressor. Falls back to the bzImage when the kernel has no PVH entry
/// (`CONFIG_PVH`) or the payload cannot be extracted.
pub fn boot_image(kernel: &Kernel) -> Result<PathBuf, Error> {
    let config = Path::new("/boot").join(format!("config-{}", kernel.version));
    let pvh = std::fs::read_to_string(&config)
        .map(|c| c.lines().any(|l| l == "CONFIG_PVH=y"))
        .unwrap_or(false);
    if !pvh {
        return Ok(kernel.image.clone());
    }
    let mut h = DefaultHasher::new();
    env!("CARGO_PKG_VERSION").hash(&mut h);
    hash_file_meta(&mut h, &kernel.image)?;
    let name = format!("vmlinux-{}-{:016x}", kernel.version, h.finish());
    match cached(&cache_dir(), &name, || extract_vmlinux(&kernel.image)) {
        Ok(path) => Ok(path),
        Err(Error::Io { .. }) => Ok(kernel.image.clone()),
        Err(e) => Err(e),
    }
}

/// Extracts the ELF kernel from a bzImage: the compressed payload is at `payload_offset`
/// (header offset 0x248) past the protected-mode code, which starts after `setup_sects`
/// (offset 0x1f1) + 1 sectors (`Documentation/x86/boot.rst`).
fn extract_vmlinux(bzimage: &Path) -> Result<Vec<u8>, Error> {
    let data = read(bzimage)?;
    let bad = |what: &str| {
        Error::io(
            format!("extracting vmlinux from {}", bzimage.display()),
            std::io::Error::other(what.to_owned()),
        )
    };
    let u32_at = |at: usize| {
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if data.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
        return Err(bad("not a bzImage"));
    }
    let setup_sects = match data.get(0x1f1) {
        Some(0) | None => 4,
        Some(&n) => usize::from(n),
    };
    let pm_start = (setup_sects + 1) * 512;
    let (Some(offset), Some(len)) = (u32_at(0x248), u32_at(0x24c)) else {
        return Err(bad("truncated header"));
    };
    let payload = data
        .get(pm_start + offset..pm_start + offset + len)
        .ok_or_else(|| bad("payload out of range"))?;
    let tool: &[&str] = if payload.starts_with(b"\xfd7zXZ\0") {
        &["xz", "-dc", "--single-stream"]
    } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        &["zstd", "-dc"]
    } else if payload.starts_with(&[0x1f, 0x8b]) {
        &["gzip", "-dc"]
    } else if payload.starts_with(&[0x02, 0x21, 0x4c, 0x18]) {
        &["lz4", "-dc"]
    } else {
        return Err(bad("unknown payload compression"));
    };
    let mut input =
        tempfile::tempfile().map_err(|e| Error::io("creating a temp file for the payload", e))?;
    input
        .write_all(payload)
        .and_then(|()| input.seek(SeekFrom::Start(0)).map(|_| ()))
        .map_err(|e| Error::io("writing the kernel payload", e))?;
    let out = Command::new(tool[0])
        .args(&tool[1..])
        .stdin(input)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("running {}", tool.join(" ")), e))?;
    // The payload is followed by its uncompressed size, which some tools call trailing
    // garbage; the output counts, not the exit status.
    if out.stdout.starts_with(b"\x7fELF") && out.stdout.len() > 1 << 20 {
        Ok(out.stdout)
    } else {
        Err(bad("payload did not decompress to an ELF image"))
    }
}

/// The directory for cached images and per-boot files: `PERIWIRE_GUEST_CACHE` if set, else
/// `guest/` in the cargo target directory of the running test binary (the first ancestor of
/// the executable holding `CACHEDIR.TAG`), else `periwire-guest` in the temp directory.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PERIWIRE_GUEST_CACHE") {
        return PathBuf::from(dir);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(target) = exe
            .ancestors()
            .skip(1)
            .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        {
            return target.join("guest");
        }
    }
    std::env::temp_dir().join("periwire-guest")
}

fn hash_file_meta(h: &mut DefaultHasher, path: &Path) -> Result<(), Error> {
    let meta =
        std::fs::metadata(path).map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
    path.hash(h);
    meta.len().hash(h);
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .hash(h);
    Ok(())
}

/// Returns `dir/name`, building it with `build` first unless it is already there. The file is
/// written under a temporary name and renamed, so concurrent builders never see half a file.
fn cached(
    dir: &Path,
    name: &str,
    build: impl FnOnce() -> Result<Vec<u8>, Error>,
) -> Result<PathBuf, Error> {
    let path = dir.join(name);
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let bytes = build()?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| Error::io(format!("creating a temp file in {}", dir.display()), e))?;
    tmp.write_all(&bytes)
        .map_err(|e| Error::io(format!("writing {}", tmp.path().display()), e))?;
    // Readable by everybody: the cache may be shared by the users of one target directory.
    let _ = tmp
        .as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    tmp.persist(&path)
        .map_err(|e| Error::io(format!("renaming to {}", path.display()), e.error))?;
    Ok(path)
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

fn require(path: &str, package: &str) -> Result<(), Error> {
    if Path::new(path).exists() {
        Ok(())
    } else {
        Err(Error::MissingTool {
            what: path.into(),
            detail: format!("Debian package {package}"),
        })
    }
}

/// The shared libraries (and dynamic loader) `binary` needs, as `ldd` lists them. Empty for a
/// static binary.
fn shared_libs(binary: &str) -> Result<Vec<PathBuf>, Error> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| Error::io(format!("running ldd {binary}"), e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; skip "linux-vdso.so.1 (0x...)".
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// Adds a host binary at the same path in the guest, with its libraries at theirs.
fn add_binary(
    w: &mut CpioWriter,
    host: &str,
    libs_done: &mut BTreeSet<PathBuf>,
) -> Result<(), Error> {
    w.file(host, 0o755, &read(Path::new(host))?);
    for lib in shared_libs(host)? {
        if libs_done.insert(lib.clone()) {
            // ldd names the path the loader uses (possibly a symlink); store the real bytes.
            let guest = lib.to_string_lossy().into_owned();
            w.file(&guest, 0o755, &read(&lib)?);
        }
    }
    Ok(())
}

/// The base archive: directories, device nodes, busybox and its applet links, the usbip and
/// BlueZ tools and their libraries, `usb.ids`, `/init` and the scenario helpers. Cached by its inputs.
pub fn base_archive() -> Result<PathBuf, Error> {
    require(BUSYBOX, "busybox-static")?;
    for (tool, package) in GUEST_TOOLS {
        require(tool, package)?;
    }
    let usb_ids = USB_IDS.iter().find(|p| Path::new(p).exists());

    let mut h = DefaultHasher::new();
    env!("CARGO_PKG_VERSION").hash(&mut h);
    INIT.hash(&mut h);
    LIB_SH.hash(&mut h);
    hash_file_meta(&mut h, Path::new(BUSYBOX))?;
    for (tool, _) in GUEST_TOOLS {
        hash_file_meta(&mut h, Path::new(tool))?;
    }
    if let Some(ids) = usb_ids {
        hash_file_meta(&mut h, Path::new(ids))?;
    }
    let name = format!("base-{:016x}.cpio", h.finish());

    cached(&cache_dir(), &name, || {
        let mut w = CpioWriter::new(INO_BASE);
        for dir in [
            "proc",
            "sys",
            "dev",
            "tmp",
            "run",
            "mnt",
            "root",
            "etc/periwire",
        ] {
            w.dir(dir);
        }
        // The kernel opens /dev/console for init before devtmpfs is mounted.
        w.char_dev("dev/console", 0o600, 5, 1);
        w.char_dev("dev/null", 0o666, 1, 3);
        let mut libs = BTreeSet::new();
        add_binary(&mut w, BUSYBOX, &mut libs)?;
        let list = Command::new(BUSYBOX)
            .arg("--list-full")
            .output()
            .map_err(|e| Error::io(format!("running {BUSYBOX} --list-full"), e))?;
        let skip: BTreeSet<&str> = GUEST_TOOLS
            .iter()
            .map(|(t, _)| t.trim_start_matches('/'))
            .collect();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let applet = applet.trim();
            if !applet.is_empty() && !skip.contains(applet) && applet != "bin/busybox" {
                w.symlink(applet, BUSYBOX);
            }
        }
        for (tool, _) in GUEST_TOOLS {
            add_binary(&mut w, tool, &mut libs)?;
        }
        if let Some(ids) = usb_ids {
            w.file(USB_IDS[0], 0o644, &read(Path::new(ids))?);
            w.symlink(USB_IDS[1], USB_IDS[0]);
        }
        w.file("init", 0o755, INIT.as_bytes());
        w.file("etc/periwire/lib.sh", 0o644, LIB_SH.as_bytes());
        Ok(w.finish())
    })
}

/// Reads a module, decompressing `.ko.xz`, `.ko.zst` and `.ko.gz` with the host's tools
/// (busybox `insmod` in the guest may not decompress).
fn module_bytes(path: &Path) -> Result<Vec<u8>, Error> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        return read(path);
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .map_err(|e| Error::io(format!("running {tool} -dc {name}"), e))?;
    if !out.status.success() {
        return Err(Error::io(
            format!("{tool} -dc {name}"),
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
        ));
    }
    Ok(out.stdout)
}

/// The module archive for one set of modules (in load order), cached by kernel version and
/// the set. Holds the modules under `/lib/modules/<version>/` and their load order in
/// `/etc/periwire/modules`.
pub fn modules_archive(
    kernel: &Kernel,
    requested: &[String],
) -> Result<(PathBuf, Vec<ResolvedModule>), Error> {
    let index = ModuleIndex::load(&kernel.modules_dir)?;
    let order = index.resolve(requested)?;
    let mut h = DefaultHasher::new();
    env!("CARGO_PKG_VERSION").hash(&mut h);
    for m in &order {
        hash_file_meta(&mut h, &m.host_path)?;
    }
    let name = format!("modules-{}-{:016x}.cpio", kernel.version, h.finish());
    let path = cached(&cache_dir(), &name, || {
        let mut w = CpioWriter::new(INO_MODULES);
        let mut list = String::new();
        for m in &order {
            let guest = format!("lib/modules/{}/{}", kernel.version, m.guest_path);
            w.file(&guest, 0o644, &module_bytes(&m.host_path)?);
            list.push('/');
            list.push_str(&guest);
            list.push('\n');
        }
        w.file("etc/periwire/modules", 0o644, list.as_bytes());
        Ok(w.finish())
    })?;
    Ok((path, order))
}

/// A file a test puts into the guest besides the scenario.
#[derive(Debug, Clone)]
pub struct GuestFile {
    /// Absolute path in the guest.
    pub path: String,
    /// Permission bits (`0o644`, `0o755`).
    pub mode: u32,
    /// Contents.
    pub contents: Vec<u8>,
}

/// The per-boot archive: the scenario script, the guest's time limit in seconds (after which
/// it powers off by itself) and any extra files.
pub fn scenario_archive(scenario: &str, limit_secs: u64, files: &[GuestFile]) -> Vec<u8> {
    let mut w = CpioWriter::new(INO_SCENARIO);
    w.file("etc/periwire/scenario.sh", 0o755, scenario.as_bytes());
    w.file(
        "etc/periwire/limit",
        0o644,
        format!("{limit_secs}\n").as_bytes(),
    );
    for f in files {
        w.file(&f.path, f.mode, &f.contents);
    }
    w.finish()
}
