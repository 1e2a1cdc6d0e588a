//! periwire as the usb-host of a libvirt domain's `<redirdev bus='usb' type='tcp'>`: Debian's
//! libvirtd starts a TCG domain (tests/data/usbredir-domain.xml, the README's example) whose
//! QEMU dials periwire's usbredir listener; the guest's stock usb-storage mounts the disk.
//!
//! The test runs its own libvirtd in session mode (`qemu:///session`) on a private directory:
//! its own socket, configuration, logs and state, no system daemon, no host network. Run as
//! root (as CI does), the daemon and its QEMU run as `nobody`, since a root libvirtd is the
//! system instance.

mod common;

use std::fs;
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{
    check_storage_io, check_written_image, prepare_fat_disk, Server, GUEST_WAIT_HELPERS, STEP,
    STORAGE_IO_SCENARIO,
};
use periwire_guest::{BootImage, Guest, GuestConfig};

/// The domain, with `@WORDS@` for what the test fills in.
const DOMAIN_TEMPLATE: &str = include_str!("data/usbredir-domain.xml");

/// The user a root test runs the session daemon as.
const DAEMON_UID: u32 = 65534;

/// The longest libvirtd may take to report it is ready: a failure limit.
const DAEMON_READY: Duration = Duration::from_secs(60);

/// A session libvirtd on a private directory, stopped (with its domains) when dropped.
struct Libvirtd {
    dir: tempfile::TempDir,
    child: Child,
    /// The words that run a command as the daemon's user (empty when not root).
    as_daemon_user: Vec<String>,
    uri: String,
}

impl Libvirtd {
    /// Starts the daemon and waits for it to report readiness (`READY=1` on the
    /// `NOTIFY_SOCKET` it is given, as it tells systemd).
    fn start() -> Libvirtd {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = fs::metadata("/proc/self").expect("/proc/self").uid() == 0;
        let as_daemon_user: Vec<String> = if root {
            let id = DAEMON_UID.to_string();
            vec![
                "setpriv".into(),
                format!("--reuid={id}"),
                format!("--regid={id}"),
                "--clear-groups".into(),
            ]
        } else {
            Vec::new()
        };
        let config = dir.path().join("config/libvirt");
        fs::create_dir_all(&config).expect("config dir");
        // QEMU's output to a log file of its own rather than through virtlogd, which the
        // daemon would start and leave running after it.
        fs::write(config.join("qemu.conf"), "stdio_handler = \"file\"\n").expect("qemu.conf");
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
        notify
            .set_read_timeout(Some(DAEMON_READY))
            .expect("notify timeout");
        if root {
            for path in [dir.path(), &dir.path().join("config"), &config] {
                chown(path, Some(DAEMON_UID), Some(DAEMON_UID)).expect("chown to the daemon");
            }
            fs::set_permissions(&notify_path, fs::Permissions::from_mode(0o777))
                .expect("notify socket mode");
        }
        let log = fs::File::create(dir.path().join("libvirtd.log")).expect("daemon log");
        let (program, args) = match as_daemon_user.split_first() {
            Some((program, args)) => (program.as_str(), args.to_vec()),
            None => ("libvirtd", Vec::new()),
        };
        let mut cmd = Command::new(program);
        cmd.args(&args);
        if root {
            cmd.arg("libvirtd");
        }
        let child = Self::session_env(&mut cmd, dir.path())
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("daemon log"))
            .stderr(log)
            .spawn()
            .expect("libvirtd (scripts/install-test-deps installs libvirt-daemon)");
        let socket = dir.path().join("run/libvirt/libvirt-sock");
        let uri = format!("qemu+unix:///session?socket={}", socket.display());
        let mut daemon = Libvirtd {
            dir,
            child,
            as_daemon_user,
            uri,
        };
        let mut buf = [0u8; 512];
        loop {
            let n = notify.recv(&mut buf).unwrap_or_else(|e| {
                panic!("libvirtd did not report ready ({e}): {}", daemon.log_tail())
            });
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                break;
            }
        }
        assert!(
            daemon.child.try_wait().expect("libvirtd status").is_none(),
            "libvirtd runs: {}",
            daemon.log_tail()
        );
        daemon
    }

    /// The environment of a session daemon and its clients: everything under `dir`.
    fn session_env<'c>(cmd: &'c mut Command, dir: &Path) -> &'c mut Command {
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", dir)
            .env("XDG_RUNTIME_DIR", dir.join("run"))
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("XDG_CACHE_HOME", dir.join("cache"))
            .env("XDG_DATA_HOME", dir.join("data"))
    }

    /// Runs `virsh` on this daemon, as its user.
    fn virsh(&self, args: &[&str]) -> Output {
        let mut words = self.as_daemon_user.clone();
        words.extend(["virsh".into(), "-c".into(), self.uri.clone()]);
        words.extend(args.iter().map(|a| a.to_string()));
        Self::session_env(&mut Command::new(&words[0]), self.dir.path())
            .args(&words[1..])
            .output()
            .expect("virsh (scripts/install-test-deps installs libvirt-clients)")
    }

    /// Puts a copy of `file` in the daemon's directory, readable by its QEMU, and returns its
    /// path there (the harness's files may be where the daemon's user cannot read).
    fn give(&self, file: &Path, name: &str) -> PathBuf {
        let copy = self.dir.path().join(name);
        fs::copy(file, &copy).expect("copy a boot file");
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o644)).expect("boot file mode");
        copy
    }

    /// A unix socket in the daemon's directory its QEMU may connect to.
    fn listen(&self, name: &str) -> (UnixListener, PathBuf) {
        let path = self.dir.path().join(name);
        let listener = UnixListener::bind(&path).expect("bind a unix socket");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).expect("socket mode");
        (listener, path)
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("libvirtd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        // A domain still running (a failed test) goes first, then the daemon.
        if let Ok(out) = String::from_utf8(self.virsh(&["list", "--name"]).stdout) {
            for name in out.lines().filter(|l| !l.is_empty()) {
                let _ = self.virsh(&["destroy", name]);
            }
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Replaces the template's `@WORDS@`; the values are paths, a port and a kernel command line,
/// none with XML's special characters.
fn domain_xml(words: &[(&str, &str)]) -> String {
    let mut xml = DOMAIN_TEMPLATE.to_owned();
    for (word, value) in words {
        assert!(
            !value.contains(['<', '>', '&', '\'', '"']),
            "no XML escaping needed: {value}"
        );
        xml = xml.replace(&format!("@{word}@"), value);
    }
    assert!(!xml.contains("@"), "every word filled in: {xml}");
    xml
}

#[test]
fn libvirt_domain_with_a_usbredir_redirdev_mounts_a_periwire_disk() {
    let mut server = Server::start(
        r#"
[[device]]
kind = "storage"
busid = "1-1"
image = "disk.img"
usbredir = "127.0.0.1:0"
"#,
        prepare_fat_disk,
    );
    let port = server.usbredir_port("1-1").to_string();
    let libvirtd = Libvirtd::start();

    let boot = BootImage::build(
        &GuestConfig::new(format!(
            "{GUEST_WAIT_HELPERS}\nwait_for /dev/sda 90\n{STORAGE_IO_SCENARIO}\nmark WRITTEN\nread -r _\n"
        ))
        .modules(["xhci-pci", "usb-storage", "sd_mod", "vfat"])
        .without_network(),
    )
    .expect("boot image");
    let kernel = libvirtd.give(boot.kernel(), "vmlinux");
    let initrd = libvirtd.give(boot.initrd(), "initrd.cpio");
    let (console, console_path) = libvirtd.listen("console.sock");
    let name = "periwire-usbredir";
    let xml = domain_xml(&[
        ("NAME", name),
        ("KERNEL", &kernel.to_string_lossy()),
        ("INITRD", &initrd.to_string_lossy()),
        ("CMDLINE", boot.cmdline()),
        ("CONSOLE", &console_path.to_string_lossy()),
        ("PORT", &port),
    ]);
    let xml_path = libvirtd.dir.path().join("domain.xml");
    fs::write(&xml_path, xml).expect("domain xml");

    let started = libvirtd.virsh(&["create", &xml_path.to_string_lossy()]);
    assert!(
        started.status.success(),
        "virsh create: {}\n{}",
        String::from_utf8_lossy(&started.stderr),
        libvirtd.log_tail()
    );
    // QEMU connected the serial port while starting, before `virsh create` returned: the
    // connection is already queued, so a non-blocking accept cannot hang the test.
    console
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let (console, _) = console
        .accept()
        .expect("QEMU connected the domain's console before `virsh create` returned");
    console.set_nonblocking(false).expect("blocking console");
    let mut guest = Guest::attach(boot, console).expect("attach to the console");

    let new = check_storage_io(&mut guest, " through a libvirt redirdev");
    guest.expect_line("WRITTEN", STEP).expect("written");
    assert!(server.imported("1-1"), "the libvirt guest holds the disk");
    let live = libvirtd.virsh(&["dumpxml", name]);
    let live = String::from_utf8_lossy(&live.stdout);
    assert!(
        live.contains("<redirdev bus='usb' type='tcp'>")
            && live.contains(&format!("service='{port}'")),
        "the running domain has the redirdev to periwire: {live}"
    );

    guest.send_line("done").expect("console");
    guest.wait_success(STEP).expect("scenario succeeds");

    assert!(server.stop(), "server stops cleanly on SIGTERM");
    check_written_image(&server.data_dir.join("disk.img"), &new);
}

/// The README's libvirt example is the tested domain, with example values for its words.
#[test]
fn readme_shows_the_tested_domain() {
    let readme = include_str!("../../../README.md");
    let section = &readme[readme
        .find("### libvirt")
        .expect("README has a libvirt section")..];
    let start = section.find("<domain").expect("the section has a domain");
    let end = section.find("</domain>").expect("the domain ends") + "</domain>".len();
    let expected = domain_xml(&[
        ("NAME", "periwire-usbredir"),
        ("KERNEL", "/path/to/vmlinux"),
        ("INITRD", "/path/to/initrd.cpio"),
        ("CMDLINE", "console=ttyS0 ..."),
        ("CONSOLE", "/path/to/console.sock"),
        ("PORT", "4000"),
    ]);
    let expected = &expected[expected.find("<domain").expect("template has a domain")..];
    assert_eq!(&section[start..end], expected.trim_end());
}
