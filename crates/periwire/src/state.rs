//! The persisted bindings: which host devices `periwire bind` shares, kept in the data
//! directory (`bindings.toml`) beside the configuration, which stays as the user wrote it.
//!
//! ```toml
//! [[bind]]
//! busid = "3-2"               # whatever is plugged into that port
//!
//! [[bind]]
//! hardware_id = "46f4:0001"   # that device, wherever it is plugged in
//! serial = "1234"             # optional: only the one with this serial number
//! force = true                # taken from its local drivers at once, not at import
//! ```
//!
//! Every change is a read-modify-write under an exclusive lock on `bindings.lock`, and the
//! new file replaces the old one by rename after it has reached the disk, so a crash leaves
//! the old or the new list, never a torn one, and two writers never lose each other's change.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the bindings inside the data directory.
pub const BINDINGS_FILE: &str = "bindings.toml";
/// File name of the lock that serialises writers of the bindings.
const LOCK_FILE: &str = "bindings.lock";

/// Why the bindings cannot be read, changed or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file (or its lock, or its directory) could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for the bindings schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        message: String,
    },
    /// A binding or a request is not valid.
    #[error("{0}")]
    Invalid(String),
}

/// A USB vendor and product id pair, as `VID:PID` in hex (`46f4:0001`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HardwareId {
    /// idVendor.
    pub vendor_id: u16,
    /// idProduct.
    pub product_id: u16,
}

impl std::str::FromStr for HardwareId {
    type Err = StateError;
    fn from_str(s: &str) -> Result<Self, StateError> {
        let bad = || {
            StateError::Invalid(format!(
                "hardware id {s:?} is not VID:PID, four hex digits each (like 46f4:0001)"
            ))
        };
        let (v, p) = s.split_once(':').ok_or_else(bad)?;
        let hex = |x: &str| {
            (x.len() == 4 && x.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u16::from_str_radix(x, 16).ok())
                .flatten()
        };
        Ok(Self {
            vendor_id: hex(v).ok_or_else(bad)?,
            product_id: hex(p).ok_or_else(bad)?,
        })
    }
}

impl fmt::Display for HardwareId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:04x}", self.vendor_id, self.product_id)
    }
}

/// What a binding shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Whatever is plugged in at this bus id (port).
    BusId(String),
    /// The devices with these ids (and serial number), wherever they are plugged in.
    Hardware {
        /// The ids.
        id: HardwareId,
        /// Only the device with this serial number.
        serial: Option<String>,
    },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::BusId(b) => write!(f, "bus id {b}"),
            Target::Hardware { id, serial: None } => write!(f, "hardware id {id}"),
            Target::Hardware {
                id,
                serial: Some(s),
            } => write!(f, "hardware id {id} serial {s}"),
        }
    }
}

/// One `periwire bind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// What it shares.
    pub target: Target,
    /// Whether the device is taken from its local drivers at once (else at import).
    pub force: bool,
}

/// The identity of a plugged device a binding is matched against.
#[derive(Debug, Clone, Copy)]
pub struct Plugged<'a> {
    /// Its bus id.
    pub busid: &'a str,
    /// Its ids.
    pub id: HardwareId,
    /// Its serial number string.
    pub serial: Option<&'a str>,
}

impl Binding {
    /// Whether this binding shares `device`.
    pub fn matches(&self, device: &Plugged<'_>) -> bool {
        match &self.target {
            Target::BusId(b) => b == device.busid,
            Target::Hardware { id, serial } => {
                *id == device.id && serial.as_deref().is_none_or(|s| Some(s) == device.serial)
            }
        }
    }
}

/// Which bindings `periwire unbind` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unbind {
    /// The binding of this port, and those that share the device plugged in there now.
    BusId(String),
    /// The bindings by these ids (with any serial number).
    Hardware(HardwareId),
    /// Every binding.
    All,
}

/// A binding as the file spells it.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    #[serde(skip_serializing_if = "Option::is_none")]
    busid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hardware_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    serial: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    force: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileForm {
    #[serde(default)]
    bind: Vec<Record>,
}

/// Checks a bus id as `usbip` accepts one (`1-2`, `3-1.4`).
pub fn check_busid(busid: &str) -> Result<(), StateError> {
    let (bus, ports) = busid.split_once('-').unwrap_or((busid, ""));
    let number = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
    if number(bus) && !ports.is_empty() && ports.split('.').all(number) {
        Ok(())
    } else {
        Err(StateError::Invalid(format!(
            "bus id {busid:?} is not BUS-PORT[.PORT...] (like 1-2 or 3-1.4)"
        )))
    }
}

impl Binding {
    fn from_record(r: Record) -> Result<Self, StateError> {
        let target = match (r.busid, r.hardware_id) {
            (Some(b), None) => {
                if r.serial.is_some() {
                    return Err(StateError::Invalid(format!(
                        "binding of bus id {b}: serial goes with hardware_id only"
                    )));
                }
                check_busid(&b)?;
                Target::BusId(b)
            }
            (None, Some(h)) => Target::Hardware {
                id: h.parse()?,
                serial: r.serial,
            },
            _ => {
                return Err(StateError::Invalid(
                    "a binding has exactly one of busid and hardware_id".into(),
                ))
            }
        };
        Ok(Self {
            target,
            force: r.force,
        })
    }

    fn to_record(&self) -> Record {
        let mut r = Record {
            force: self.force,
            ..Record::default()
        };
        match &self.target {
            Target::BusId(b) => r.busid = Some(b.clone()),
            Target::Hardware { id, serial } => {
                r.hardware_id = Some(id.to_string());
                r.serial = serial.clone();
            }
        }
        r
    }
}

/// Parses the text of a bindings file (`path` names it in errors).
pub fn parse(text: &str, path: &Path) -> Result<Vec<Binding>, StateError> {
    let form: FileForm = toml::from_str(text).map_err(|e| StateError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    form.bind
        .into_iter()
        .map(Binding::from_record)
        .collect::<Result<_, _>>()
        .map_err(|e| StateError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

/// The text of a bindings file.
pub fn render(bindings: &[Binding]) -> String {
    let form = FileForm {
        bind: bindings.iter().map(Binding::to_record).collect(),
    };
    let body = toml::to_string(&form).unwrap_or_default();
    format!("# Written by `periwire bind` and `periwire unbind`.\n\n{body}")
}

/// Adds `binding` to `list`; one that replaces an equal target keeps its place. Returns
/// whether anything changed.
pub fn add(list: &mut Vec<Binding>, binding: Binding) -> bool {
    match list.iter_mut().find(|b| b.target == binding.target) {
        Some(existing) if *existing == binding => false,
        Some(existing) => {
            *existing = binding;
            true
        }
        None => {
            list.push(binding);
            true
        }
    }
}

/// Removes what `which` names from `list`; `plugged` are the devices plugged in now (a bus
/// id unbinds a hardware-id binding of the device there too). Returns the bindings removed.
pub fn remove(list: &mut Vec<Binding>, which: &Unbind, plugged: &[Plugged<'_>]) -> Vec<Binding> {
    let (removed, kept): (Vec<Binding>, Vec<Binding>) =
        std::mem::take(list).into_iter().partition(|b| match which {
            Unbind::All => true,
            Unbind::Hardware(id) => matches!(&b.target, Target::Hardware { id: i, .. } if i == id),
            Unbind::BusId(busid) => {
                b.target == Target::BusId(busid.clone())
                    || plugged.iter().any(|p| {
                        p.busid == busid
                            && matches!(b.target, Target::Hardware { .. })
                            && b.matches(p)
                    })
            }
        });
    *list = kept;
    removed
}

/// The bindings file of a data directory.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
    lock: PathBuf,
}

impl StateFile {
    /// The bindings file in `data_dir`.
    pub fn in_dir(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(BINDINGS_FILE),
            lock: data_dir.join(LOCK_FILE),
        }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
        let path = path.to_owned();
        move |source| StateError::Io { path, source }
    }

    /// The bindings; none if the file does not exist.
    pub fn load(&self) -> Result<Vec<Binding>, StateError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => parse(&text, &self.path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(self.io(&self.path)(e)),
        }
    }

    /// Reads the bindings, lets `change` edit them, and writes them back if it says they
    /// changed, all under the writers' lock. Returns what `change` returned.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut Vec<Binding>) -> Result<(T, bool), StateError>,
    ) -> Result<T, StateError> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(self.io(dir))?;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .map_err(self.io(&self.lock))?;
        lock.lock().map_err(self.io(&self.lock))?;
        let mut bindings = self.load()?;
        let (result, changed) = change(&mut bindings)?;
        if changed {
            self.write(&bindings)?;
        }
        // The lock goes with the file handle.
        drop(lock);
        Ok(result)
    }

    /// Replaces the file with `bindings`: written beside it, synced, renamed over it, and the
    /// directory synced, so the rename itself survives a crash.
    fn write(&self, bindings: &[Binding]) -> Result<(), StateError> {
        let tmp = self.path.with_extension("toml.tmp");
        let mut file = File::create(&tmp).map_err(self.io(&tmp))?;
        file.write_all(render(bindings).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(self.io(&tmp))?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(self.io(&self.path))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(self.io(dir))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hw(s: &str) -> HardwareId {
        s.parse().unwrap()
    }

    fn by_busid(b: &str) -> Binding {
        Binding {
            target: Target::BusId(b.into()),
            force: false,
        }
    }

    fn by_hw(id: &str, serial: Option<&str>) -> Binding {
        Binding {
            target: Target::Hardware {
                id: hw(id),
                serial: serial.map(str::to_owned),
            },
            force: false,
        }
    }

    #[test]
    fn hardware_ids_parse_strictly() {
        assert_eq!(
            hw("46F4:0001"),
            HardwareId {
                vendor_id: 0x46f4,
                product_id: 1
            }
        );
        assert_eq!(hw("046d:c52b").to_string(), "046d:c52b");
        for bad in [
            "46f4",
            "46f4:1",
            "46f4:00001",
            "zzzz:0001",
            ":",
            "+6f4:0001",
            "",
        ] {
            let e = bad.parse::<HardwareId>().unwrap_err().to_string();
            assert!(e.contains("VID:PID"), "{bad}: {e}");
        }
    }

    #[test]
    fn bus_ids_are_checked() {
        for good in ["1-1", "3-1.4", "12-3.2.1"] {
            check_busid(good).unwrap();
        }
        for bad in [
            "", "1", "1-", "-1", "1-1.", "a-1", "1-1:1.0", "../x", "1-1 ",
        ] {
            assert!(check_busid(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_file_round_trips_and_bad_files_say_where() {
        let list = vec![
            by_busid("1-2"),
            Binding {
                force: true,
                ..by_hw("46f4:0001", Some("S1"))
            },
        ];
        let text = render(&list);
        assert_eq!(parse(&text, Path::new("b.toml")).unwrap(), list);
        let path = Path::new("/d/bindings.toml");
        for (bad, says) in [
            (
                "[[bind]]\nbusid = \"1-2\"\nhardware_id = \"1:2\"\n",
                "exactly one",
            ),
            ("[[bind]]\n", "exactly one"),
            ("[[bind]]\nbusid = \"x\"\n", "bus id \"x\""),
            (
                "[[bind]]\nbusid = \"1-1\"\nserial = \"s\"\n",
                "serial goes with",
            ),
            ("[[bind]]\nhardware_id = \"46f4\"\n", "VID:PID"),
            ("[[bind]]\nbusid = \"1-1\"\ncolour = 1\n", "colour"),
            ("[[bind]\n", "bindings.toml"),
        ] {
            let e = parse(bad, path).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
            assert!(e.starts_with("/d/bindings.toml"), "{e}");
        }
    }

    #[test]
    fn add_is_idempotent_and_replaces_the_force_flag() {
        let mut list = Vec::new();
        assert!(add(&mut list, by_busid("1-2")));
        assert!(!add(&mut list, by_busid("1-2")));
        assert!(add(&mut list, by_hw("46f4:0001", None)));
        assert!(add(
            &mut list,
            Binding {
                force: true,
                ..by_busid("1-2")
            }
        ));
        assert_eq!(list.len(), 2);
        assert!(list[0].force, "replaced in place");
    }

    #[test]
    fn unbind_by_port_also_drops_the_hardware_binding_of_the_device_there() {
        let mut list = vec![
            by_busid("1-2"),
            by_hw("46f4:0001", None),
            by_hw("0627:0001", None),
        ];
        let plugged = [Plugged {
            busid: "1-3",
            id: hw("46f4:0001"),
            serial: None,
        }];
        let removed = remove(&mut list, &Unbind::BusId("1-3".into()), &plugged);
        assert_eq!(removed, [by_hw("46f4:0001", None)]);
        assert_eq!(
            remove(&mut list, &Unbind::Hardware(hw("0627:0001")), &[]).len(),
            1
        );
        assert_eq!(list, [by_busid("1-2")]);
        assert_eq!(remove(&mut list, &Unbind::All, &[]).len(), 1);
        assert!(list.is_empty());
    }

    #[test]
    fn serial_narrows_a_hardware_binding() {
        let any = by_hw("46f4:0001", None);
        let one = by_hw("46f4:0001", Some("A"));
        let dev = |serial| Plugged {
            busid: "1-1",
            id: hw("46f4:0001"),
            serial,
        };
        assert!(any.matches(&dev(None)) && any.matches(&dev(Some("B"))));
        assert!(one.matches(&dev(Some("A"))));
        assert!(!one.matches(&dev(Some("B"))) && !one.matches(&dev(None)));
    }

    #[test]
    fn updates_are_atomic_and_keep_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::in_dir(&dir.path().join("new"));
        assert!(state.load().unwrap().is_empty(), "no file is no bindings");
        state.update(|l| Ok(((), add(l, by_busid("1-1"))))).unwrap();
        // A second writer (another process, say) adds its own: both are kept.
        let other = StateFile::in_dir(&dir.path().join("new"));
        other
            .update(|l| Ok(((), add(l, by_hw("46f4:0001", None)))))
            .unwrap();
        assert_eq!(
            state.load().unwrap(),
            [by_busid("1-1"), by_hw("46f4:0001", None)]
        );
        assert!(!state.path().with_extension("toml.tmp").exists());
        // A change that fails writes nothing.
        let err = state.update(|l| {
            l.clear();
            Err::<((), bool), _>(StateError::Invalid("no".into()))
        });
        assert!(err.is_err());
        assert_eq!(state.load().unwrap().len(), 2);
        // Many writers at once: every change survives the lock.
        let threads: Vec<_> = (0..8)
            .map(|n| {
                let s = state.clone();
                std::thread::spawn(move || {
                    s.update(|l| Ok(((), add(l, by_busid(&format!("2-{n}"))))))
                        .unwrap()
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(state.load().unwrap().len(), 10);
    }
}
