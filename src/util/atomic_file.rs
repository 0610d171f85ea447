//! Replacing a file atomically (temp file, fsync, rename, fsync of the directory), keeping
//! its mode and owner, and keeping a backup copy beside it.
//!
//! Owns the file system steps only; must not know what the file holds. Any failure before
//! the rename leaves the original untouched and no temp file behind.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A failed file system step: the file the caller named (never the hidden temp file), what
/// was being done, the OS error once, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot {op}: {err}{}", path.display(), fix(err))]
pub struct AtomicFileError {
    pub path: PathBuf,
    pub op: &'static str,
    pub err: io::Error,
}

/// What the operator can do about an OS error, when there is something to say.
fn fix(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => {
            "; run as root (or as the file's owner), and check the directory's permissions \
             and attributes (lsattr)"
        }
        Some(libc::EROFS) => "; the file system is read-only: remount it read-write",
        Some(libc::ENOSPC | libc::EDQUOT) => "; free space on its file system",
        _ => "",
    }
}

/// A backup made by [`backup`]: where the copy is, and where an older, different copy that
/// was there before was moved (never overwritten).
#[derive(Debug)]
pub struct Backup {
    pub path: PathBuf,
    pub previous: Option<PathBuf>,
}

/// Replaces `path` with `bytes` atomically: a temp file `.NAME.apilb-tmp-PID` is
/// created in the same directory with `O_EXCL`, given the original's mode and owner
/// (a new file gets 0600), written and fsynced, renamed over `path`, and the directory
/// is fsynced. If `path` is a symlink, its target is replaced. On any error before the
/// rename the temp file is removed and the original is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AtomicFileError> {
    let target = resolve_symlink(path)?;
    let owner = match fs::metadata(&target) {
        Ok(meta) => Some(Owner::of(&meta)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(err) => return Err(io_err(&target, "read metadata", err)),
    };
    write_atomic_with(&target, bytes, owner, &|_| Ok(()))
}

/// Copies `path` to `path` + `suffix` (atomically, with the same mode and owner). An older
/// copy with the same content is kept as it is; one with other content is first moved to
/// `path` + `suffix` + `.UNIXTIME`, never overwritten.
pub fn backup(path: &Path, suffix: &str) -> Result<Backup, AtomicFileError> {
    let meta = fs::metadata(path).map_err(|e| io_err(path, "read metadata", e))?;
    let bytes = fs::read(path).map_err(|e| io_err(path, "read", e))?;
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    let dest = PathBuf::from(name);
    let previous = match fs::read(&dest) {
        Ok(old) if old == bytes => {
            return Ok(Backup {
                path: dest,
                previous: None,
            })
        }
        Ok(_) => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut aside = OsString::from(dest.as_os_str());
            aside.push(format!(".{secs}"));
            let aside = PathBuf::from(aside);
            fs::rename(&dest, &aside)
                .map_err(|e| io_err(&dest, "move the older backup aside", e))?;
            Some(aside)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(&dest, "read the older backup", e)),
    };
    write_atomic_with(&dest, &bytes, Some(Owner::of(&meta)), &|_| Ok(()))?;
    Ok(Backup {
        path: dest,
        previous,
    })
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Owner {
    mode: u32,
    uid: u32,
    gid: u32,
}

impl Owner {
    pub(crate) fn of(meta: &fs::Metadata) -> Owner {
        Owner {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }
}

fn io_err(path: &Path, op: &'static str, err: io::Error) -> AtomicFileError {
    AtomicFileError {
        path: path.to_path_buf(),
        op,
        err,
    }
}

fn resolve_symlink(path: &Path) -> Result<PathBuf, AtomicFileError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            fs::canonicalize(path).map_err(|e| io_err(path, "resolve symlink", e))
        }
        _ => Ok(path.to_path_buf()),
    }
}

fn temp_path(target: &Path) -> Result<PathBuf, AtomicFileError> {
    let name = target.file_name().ok_or_else(|| {
        io_err(
            target,
            "choose a temp file",
            io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
        )
    })?;
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".apilb-tmp-{}", std::process::id()));
    Ok(target.with_file_name(tmp))
}

fn open_exclusive(tmp: &Path) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)
    };
    match open() {
        // A leftover of an earlier run with the same pid (e.g. before a reboot).
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(tmp)?;
            open()
        }
        other => other,
    }
}

/// The body of [`write_atomic`]; `before_rename` lets tests inject a failure.
pub(crate) fn write_atomic_with(
    target: &Path,
    bytes: &[u8],
    owner: Option<Owner>,
    before_rename: &dyn Fn(&Path) -> io::Result<()>,
) -> Result<(), AtomicFileError> {
    let tmp = temp_path(target)?;
    let mut file =
        open_exclusive(&tmp).map_err(|e| io_err(target, "create a temp file beside it", e))?;
    let result = (|| -> Result<(), AtomicFileError> {
        // A new file (no original) keeps our uid/gid and gets 0600: kubeconfigs hold
        // credentials.
        let mode = owner.map_or(0o600, |o| o.mode);
        if let Some(owner) = owner {
            let meta = file
                .metadata()
                .map_err(|e| io_err(target, "read the temp file's metadata", e))?;
            if meta.uid() != owner.uid || meta.gid() != owner.gid {
                std::os::unix::fs::fchown(&file, Some(owner.uid), Some(owner.gid))
                    .map_err(|e| io_err(target, "give the temp file its owner", e))?;
            }
        }
        // After fchown, which may clear set-id bits.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| io_err(target, "give the temp file its mode", e))?;
        file.write_all(bytes)
            .map_err(|e| io_err(target, "write the temp file", e))?;
        file.sync_all()
            .map_err(|e| io_err(target, "fsync the temp file", e))?;
        before_rename(&tmp).map_err(|e| io_err(target, "prepare the rename", e))?;
        fs::rename(&tmp, target).map_err(|e| io_err(target, "rename the temp file over it", e))
    })();
    drop(file);
    if let Err(err) = result {
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| {
        io_err(
            dir,
            "fsync directory (the new file is in place but may not survive a crash)",
            e,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // --- files ----------------------------------------------------------------------

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o7777
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".apilb-tmp-"))
            .collect()
    }

    #[test]
    fn write_atomic_replaces_and_keeps_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubelet.conf");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(mode_of(&path), 0o600);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&path, b"newer").unwrap();
        assert_eq!(mode_of(&path), 0o640);
        let meta = fs::metadata(&path).unwrap();
        let (uid, gid) = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        assert_eq!((meta.uid(), meta.gid()), (uid, gid));
        assert!(leftovers(dir.path()).is_empty());
        // A new file is private.
        let fresh = dir.path().join("fresh.conf");
        write_atomic(&fresh, b"x").unwrap();
        assert_eq!(mode_of(&fresh), 0o600);
    }

    #[test]
    fn write_atomic_copies_owner_when_root() {
        let euid = rustix::process::geteuid().as_raw();
        assert_eq!(
            euid, 0,
            "copying an owner needs root: run the tests as root"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubelet.conf");
        fs::write(&path, "old").unwrap();
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        write_atomic(&path, b"new").unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
        let b = backup(&path, ".apilb-backup").unwrap().path;
        let meta = fs::metadata(&b).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    }

    #[test]
    fn write_atomic_failure_leaves_original_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubelet.conf");
        fs::write(&path, "original").unwrap();
        let owner = Owner::of(&fs::metadata(&path).unwrap());
        let e = write_atomic_with(&path, b"new", Some(owner), &|tmp| {
            assert!(tmp.exists(), "temp file should exist before the rename");
            Err(io::Error::other("injected"))
        })
        .unwrap_err();
        assert!(e.to_string().contains("injected"), "{e}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "original");
        assert!(leftovers(dir.path()).is_empty());

        // A real failure that happens even as root: the rename target is a non-empty
        // directory.
        let target = dir.path().join("dir.conf");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep"), "x").unwrap();
        let e = write_atomic(&target, b"new").unwrap_err();
        assert!(e.op == "rename the temp file over it", "{e:?}");
        assert_eq!(fs::read_to_string(target.join("keep")).unwrap(), "x");
        assert!(leftovers(dir.path()).is_empty());

        // A stale temp file from an earlier run is replaced, not followed.
        let stale = temp_path(&path).unwrap();
        fs::write(&stale, "stale").unwrap();
        write_atomic(&path, b"fresh").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "fresh");
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn write_atomic_follows_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.conf");
        let link = dir.path().join("link.conf");
        fs::write(&real, "old").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(&real).unwrap(), "new");
    }

    #[test]
    fn backup_copies_content_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubelet.conf");
        fs::write(&path, "original").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let b = backup(&path, ".apilb-backup").unwrap();
        assert_eq!(b.path, dir.path().join("kubelet.conf.apilb-backup"));
        assert_eq!(b.previous, None);
        assert_eq!(fs::read_to_string(&b.path).unwrap(), "original");
        assert_eq!(mode_of(&b.path), 0o600);
        let e = backup(&dir.path().join("missing.conf"), ".apilb-backup").unwrap_err();
        assert_eq!(e.op, "read metadata", "{e:?}");
    }

    #[test]
    fn backup_never_overwrites_a_different_older_backup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubelet.conf");
        fs::write(&path, "first").unwrap();
        let first = backup(&path, ".apilb-backup").unwrap();
        // The same content again: the backup is kept as it is, nothing moved.
        let again = backup(&path, ".apilb-backup").unwrap();
        assert_eq!(again.previous, None);
        // Other content: the older backup is moved aside, not lost.
        fs::write(&path, "second").unwrap();
        let b = backup(&path, ".apilb-backup").unwrap();
        let aside = b.previous.expect("the older backup was moved aside");
        assert_eq!(fs::read_to_string(&aside).unwrap(), "first");
        assert_eq!(fs::read_to_string(&first.path).unwrap(), "second");
    }

    #[test]
    fn errors_name_the_given_file_once_and_the_fix() {
        let e = io_err(
            Path::new("/etc/kubernetes/kubelet.conf"),
            "create a temp file beside it",
            io::Error::from_raw_os_error(libc::EROFS),
        );
        let text = e.to_string();
        assert!(
            text.starts_with("/etc/kubernetes/kubelet.conf: cannot create a temp file"),
            "{text}"
        );
        assert_eq!(text.matches("Read-only file system").count(), 1, "{text}");
        assert!(text.ends_with("remount it read-write"), "{text}");
        // Nothing chained: anyhow's `{:#}` prints the same text.
        assert_eq!(format!("{:#}", anyhow::Error::from(e)), text);
    }
}
