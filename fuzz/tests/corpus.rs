//! The fuzz corpus replayed as tests: every file under `corpus/<target>/` through its target,
//! so the targets build and run with the other tests, and what fuzzing found stays fixed.

use std::path::{Path, PathBuf};

/// A fuzz target.
type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory.
const TARGETS: [(&str, Target); 6] = [
    ("usbip_op", periwire_fuzz::usbip_op),
    ("usbip_urb", periwire_fuzz::usbip_urb),
    ("hci_h4", periwire_fuzz::hci_h4),
    ("scsi", periwire_fuzz::scsi),
    ("config", periwire_fuzz::config),
    ("front_door", periwire_fuzz::front_door),
];

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

#[test]
fn every_corpus_file_replays_through_its_target() {
    for (name, target) in TARGETS {
        let dir = corpus(name);
        let files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").path())
            .collect();
        assert!(!files.is_empty(), "{name} has a corpus");
        for file in files {
            target(&std::fs::read(&file).expect("corpus file"));
        }
    }
}
