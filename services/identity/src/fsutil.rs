//! Small filesystem helpers: atomic writes with explicit modes, and reads of
//! secret files that refuse lax permissions.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::IdentityError;

/// Mode for files holding secrets.
pub(crate) const SECRET_MODE: u32 = 0o600;
/// Mode for public material (certificates).
pub(crate) const PUBLIC_MODE: u32 = 0o644;
/// Mode for a directory holding secrets.
pub(crate) const SECRET_DIR_MODE: u32 = 0o700;

/// Largest secret file we are willing to read; every key we store is far
/// smaller, so anything bigger is not one of ours.
const MAX_SECRET_LEN: u64 = 64 * 1024;

/// Creates `dir` (and parents) and sets its own mode.
pub(crate) fn create_dir(dir: &Path, mode: u32) -> Result<(), IdentityError> {
    fs::create_dir_all(dir).map_err(|e| IdentityError::io("create directory", dir, e))?;
    set_mode(dir, mode)
}

/// Writes `bytes` to `path` so that a reader sees either the old file or the
/// whole new one, never a prefix: temp file in the same directory, fsync,
/// rename, fsync of the directory. The temp file is created with `mode`
/// already set, so a secret is never briefly world-readable.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    let dir = parent_dir(path);
    let tmp = temp_path(path)?;
    let result = write_new(&tmp, bytes, mode)
        .and_then(|()| {
            fs::rename(&tmp, path).map_err(|e| IdentityError::io("rename into", path, e))
        })
        .and_then(|()| sync_dir(&dir));
    if result.is_err() {
        // Best effort: the temp name is unique, leaving it would only be litter.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads a secret file after checking that neither group nor others can
/// access it (like ssh does for private keys).
pub(crate) fn read_secret(path: &Path) -> Result<Vec<u8>, IdentityError> {
    let file = File::open(path).map_err(|e| IdentityError::io("open", path, e))?;
    let meta = file
        .metadata()
        .map_err(|e| IdentityError::io("stat", path, e))?;
    check_private(path, &meta)?;
    if meta.len() > MAX_SECRET_LEN {
        return Err(IdentityError::KeyFile {
            path: path.to_path_buf(),
            reason: format!(
                "file is {} bytes, larger than any key ({MAX_SECRET_LEN} bytes max)",
                meta.len()
            ),
        });
    }
    let mut buf = Vec::new();
    file.take(MAX_SECRET_LEN)
        .read_to_end(&mut buf)
        .map_err(|e| IdentityError::io("read", path, e))?;
    Ok(buf)
}

fn write_new(tmp: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    let mut file = opts
        .open(tmp)
        .map_err(|e| IdentityError::io("create", tmp, e))?;
    // The umask may have cleared bits we asked for; set the mode explicitly.
    set_mode(tmp, mode)?;
    file.write_all(bytes)
        .map_err(|e| IdentityError::io("write", tmp, e))?;
    file.sync_all()
        .map_err(|e| IdentityError::io("fsync", tmp, e))
}

fn temp_path(path: &Path) -> Result<PathBuf, IdentityError> {
    let name = path
        .file_name()
        .ok_or_else(|| IdentityError::io("write", path, std::io::ErrorKind::InvalidInput.into()))?;
    let mut nonce = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| IdentityError::Random)?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", hex::encode(nonce)));
    Ok(parent_dir(path).join(tmp_name))
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| IdentityError::io("fsync directory", dir, e))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), IdentityError> {
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| IdentityError::io("set permissions of", path, e))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<(), IdentityError> {
    Ok(())
}

#[cfg(unix)]
fn check_private(path: &Path, meta: &fs::Metadata) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _meta: &fs::Metadata) -> Result<(), IdentityError> {
    Ok(())
}
