//! Kernel module lookup: `modules.dep` parsing and dependency ordering, the way `modprobe`
//! does it (`kmod`'s `libkmod-module.c`), but on the host, for an initramfs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::Error;

/// Modules that a named module needs at run time to be useful but that `modules.dep` does not
/// list, because the kernel would request them later by alias (through udev or
/// `request_module`), which the small guest does not do.
const COMPANIONS: &[(&str, &[&str])] = &[
    // A HID interface needs a HID driver bound to create its input devices.
    ("usbhid", &["hid_generic"]),
    // A SCSI disk behind usb-storage appears as /dev/sdX only with the disk driver.
    ("usb_storage", &["sd_mod"]),
    ("uas", &["sd_mod"]),
    // FAT mounts load the code page (437) and I/O character set by name.
    (
        "vfat",
        &["nls_cp437", "nls_ascii", "nls_iso8859_1", "nls_utf8"],
    ),
    ("msdos", &["nls_cp437", "nls_ascii"]),
];

/// Modules every guest loads: the virtio network card the harness uses.
pub(crate) const BASE_MODULES: &[&str] = &["virtio_pci", "virtio_net"];

/// Normalises a module name as the kernel does: `-` and `_` are the same.
pub fn normalize(name: &str) -> String {
    name.trim().replace('-', "_")
}

/// The module index of one kernel (`/lib/modules/<version>`).
#[derive(Debug)]
pub struct ModuleIndex {
    root: PathBuf,
    /// Normalised name -> (path relative to root, dependency names).
    deps: BTreeMap<String, (String, Vec<String>)>,
    builtin: BTreeSet<String>,
}

/// One module to put in the image, in load order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModule {
    /// Normalised name (`usb_storage`).
    pub name: String,
    /// Path on the host, possibly compressed (`.ko.xz`, `.ko.zst`, `.ko.gz`).
    pub host_path: PathBuf,
    /// Path inside the guest, relative to `/`, always ending in `.ko` (decompressed).
    pub guest_path: String,
}

/// The module name a `modules.dep` path stands for: the file stem, compression suffix removed.
fn name_of(rel: &str) -> String {
    let file = rel.rsplit('/').next().unwrap_or(rel);
    let stem = file.split_once(".ko").map(|(stem, _)| stem).unwrap_or(file);
    normalize(stem)
}

impl ModuleIndex {
    /// Reads `modules.dep` and `modules.builtin` from `root` (`/lib/modules/<version>`).
    pub fn load(root: &Path) -> Result<Self, Error> {
        let dep_path = root.join("modules.dep");
        let text = std::fs::read_to_string(&dep_path)
            .map_err(|e| Error::io(format!("reading {}", dep_path.display()), e))?;
        let mut deps = BTreeMap::new();
        for line in text.lines() {
            let Some((module, rest)) = line.split_once(':') else {
                continue;
            };
            let module = module.trim();
            let list = rest
                .split_whitespace()
                .map(name_of)
                .collect::<Vec<String>>();
            deps.insert(name_of(module), (module.to_owned(), list));
        }
        let builtin_path = root.join("modules.builtin");
        let builtin = match std::fs::read_to_string(&builtin_path) {
            Ok(text) => text.lines().map(name_of).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(Error::io(format!("reading {}", builtin_path.display()), e)),
        };
        Ok(ModuleIndex {
            root: root.to_owned(),
            deps,
            builtin,
        })
    }

    /// Resolves `requested` (plus their companions and the base modules) into a load order:
    /// every module after all of its dependencies, each once. Built-in modules are skipped.
    pub fn resolve<S: AsRef<str>>(&self, requested: &[S]) -> Result<Vec<ResolvedModule>, Error> {
        let mut wanted: Vec<String> = BASE_MODULES.iter().map(|m| normalize(m)).collect();
        for name in requested {
            let name = normalize(name.as_ref());
            let companions = COMPANIONS
                .iter()
                .filter(|(m, _)| *m == name)
                .flat_map(|(_, extra)| extra.iter())
                .map(|m| normalize(m))
                // A kernel built without one has nothing to load for it.
                .filter(|m| self.deps.contains_key(m) || self.builtin.contains(m));
            wanted.push(name.clone());
            wanted.extend(companions);
        }
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in &wanted {
            self.visit(name, &mut seen, &mut order, 0)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<ResolvedModule>,
        depth: usize,
    ) -> Result<(), Error> {
        if seen.contains(name) {
            return Ok(());
        }
        let Some((rel, deps)) = self.deps.get(name) else {
            if self.builtin.contains(name) {
                seen.insert(name.to_owned());
                return Ok(());
            }
            return Err(Error::ModuleNotFound {
                name: name.to_owned(),
                dir: self.root.clone(),
            });
        };
        // modules.dep has no cycles; the depth limit only guards against a corrupt file.
        if depth > 64 {
            return Err(Error::ModuleNotFound {
                name: format!("{name} (dependency loop)"),
                dir: self.root.clone(),
            });
        }
        for dep in deps {
            self.visit(dep, seen, order, depth + 1)?;
        }
        seen.insert(name.to_owned());
        let guest_rel = match rel.split_once(".ko") {
            Some((stem, _)) => format!("{stem}.ko"),
            None => rel.clone(),
        };
        order.push(ResolvedModule {
            name: name.to_owned(),
            host_path: self.root.join(rel),
            guest_path: guest_rel,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(dep: &str, builtin: &str) -> (tempfile::TempDir, ModuleIndex) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules.dep"), dep).unwrap();
        std::fs::write(dir.path().join("modules.builtin"), builtin).unwrap();
        let idx = ModuleIndex::load(dir.path()).unwrap();
        (dir, idx)
    }

    const DEP: &str = "\
kernel/drivers/usb/usbip/vhci-hcd.ko.xz: kernel/drivers/usb/usbip/usbip-core.ko.xz kernel/drivers/usb/core/usbcore.ko.xz kernel/drivers/usb/common/usb-common.ko.xz
kernel/drivers/usb/usbip/usbip-core.ko.xz: kernel/drivers/usb/core/usbcore.ko.xz kernel/drivers/usb/common/usb-common.ko.xz
kernel/drivers/usb/core/usbcore.ko.xz: kernel/drivers/usb/common/usb-common.ko.xz
kernel/drivers/usb/common/usb-common.ko.xz:
kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio.ko.xz
kernel/drivers/virtio/virtio.ko.xz:
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/virtio/virtio.ko.xz
";

    #[test]
    fn resolves_in_dependency_order_with_normalised_names() {
        let (_d, idx) = index(DEP, "kernel/drivers/hid/hid.ko\n");
        let order = idx.resolve(&["vhci_hcd", "usbip-core", "hid"]).unwrap();
        let names: Vec<&str> = order.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "virtio",
                "virtio_pci",
                "virtio_net",
                "usb_common",
                "usbcore",
                "usbip_core",
                "vhci_hcd"
            ]
        );
        assert_eq!(order[6].guest_path, "kernel/drivers/usb/usbip/vhci-hcd.ko");
        assert!(order[6].host_path.ends_with("vhci-hcd.ko.xz"));
    }

    #[test]
    fn unknown_module_is_an_error() {
        let (_d, idx) = index(DEP, "");
        assert!(matches!(
            idx.resolve(&["no-such-module"]),
            Err(Error::ModuleNotFound { .. })
        ));
    }
}
