//! USB mass storage, Bulk-Only Transport with SCSI (work in progress).
