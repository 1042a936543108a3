//! Helpers shared by the unit tests of several modules.

use std::path::Path;

use crate::KeyRing;

/// A fresh key directory and the ring loaded from it.
pub(crate) fn ring() -> (tempfile::TempDir, KeyRing) {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    KeyRing::generate(&keys).unwrap();
    let ring = KeyRing::load(&keys).unwrap();
    (dir, ring)
}

/// The DER of the first certificate in a PEM file.
pub(crate) fn pem_file_to_der(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    assert_eq!(pem.label, "CERTIFICATE");
    pem.contents
}

#[cfg(unix)]
pub(crate) fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}
