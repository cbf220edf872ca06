//! Writing files so that a failure (a full disk, a killed process) never leaves a half-written
//! adapter or checkpoint: everything goes to a temporary folder next to the target first, and
//! only complete files are renamed into place.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes one file completely and flushes it to disk.
pub fn write_file_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn temp_dir_in(parent: &Path, stem: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    for n in 0..1000u32 {
        let p = parent.join(format!(".{stem}.tmp-{}-{n}", std::process::id()));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(&p)(e)),
        }
    }
    Err(Error::Config(format!(
        "could not create a temporary folder in {}",
        parent.display()
    )))
}

/// Writes `files` (relative paths with `/`, no `..`) under `dir`: all into a temporary folder
/// first (with `write`, a parameter so tests can make it fail), then each renamed into place.
/// On any failure the temporary folder is removed and `dir` keeps what it held before.
pub fn write_files_atomic_with(
    dir: &Path,
    files: &[(String, Vec<u8>)],
    write: &dyn Fn(&Path, &[u8]) -> std::io::Result<()>,
) -> Result<()> {
    for (rel, _) in files {
        if rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
            || rel.starts_with('/')
        {
            return Err(Error::Config(format!("refusing to write the path `{rel}`")));
        }
    }
    let tmp = temp_dir_in(dir, "save")?;
    let staged = (|| -> Result<()> {
        for (rel, bytes) in files {
            let p = tmp.join(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            write(&p, bytes).map_err(io(&p))?;
        }
        Ok(())
    })();
    if let Err(e) = staged {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    for (rel, _) in files {
        let dest = dir.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        if let Err(e) = std::fs::rename(tmp.join(rel), &dest) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(io(&dest)(e));
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// [`write_files_atomic_with`] with real, synced writes.
pub fn write_files_atomic(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<()> {
    write_files_atomic_with(dir, files, &write_file_synced)
}

/// Writes a whole folder `dest` (e.g. `checkpoint-100`) atomically: it is built under a
/// temporary name and renamed, so a folder with that name is always complete.
pub fn write_dir_atomic_with(
    dest: &Path,
    files: &[(String, Vec<u8>)],
    write: &dyn Fn(&Path, &[u8]) -> std::io::Result<()>,
) -> Result<()> {
    let parent = dest
        .parent()
        .ok_or_else(|| Error::Config(format!("{} has no parent folder", dest.display())))?;
    let stem = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dir".into());
    let tmp = temp_dir_in(parent, &stem)?;
    let staged = write_files_atomic_with(&tmp, files, write);
    if let Err(e) = staged {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(io(dest))?;
    }
    std::fs::rename(&tmp, dest).map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        io(dest)(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_disk_after(n: usize) -> impl Fn(&Path, &[u8]) -> std::io::Result<()> {
        let count = std::sync::atomic::AtomicUsize::new(0);
        move |p, b| {
            if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= n {
                // What a full disk does: part of the file, then ENOSPC.
                std::fs::write(p, &b[..b.len() / 2])?;
                return Err(std::io::Error::from_raw_os_error(28));
            }
            write_file_synced(p, b)
        }
    }

    fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for e in walk(dir) {
            let rel = e.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            out.push((rel, std::fs::read(&e).unwrap()));
        }
        out.sort();
        out
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                v.extend(walk(&p));
            } else {
                v.push(p);
            }
        }
        v
    }

    #[test]
    fn a_full_disk_leaves_the_previous_files_untouched() {
        let d = tempfile::tempdir().unwrap();
        let old = vec![
            ("adapter_config.json".to_string(), b"{\"old\": 1}".to_vec()),
            ("adapter_model.safetensors".to_string(), vec![1u8; 100]),
        ];
        write_files_atomic(d.path(), &old).unwrap();
        let before = listing(d.path());
        let new = vec![
            ("adapter_config.json".to_string(), b"{\"new\": 2}".to_vec()),
            ("adapter_model.safetensors".to_string(), vec![2u8; 100]),
        ];
        let err = write_files_atomic_with(d.path(), &new, &full_disk_after(1)).unwrap_err();
        assert!(
            err.to_string().contains("adapter_model.safetensors"),
            "{err}"
        );
        assert_eq!(
            listing(d.path()),
            before,
            "nothing half-written, nothing left behind"
        );
        write_files_atomic(d.path(), &new).unwrap();
        assert_eq!(listing(d.path()), {
            let mut n = new.clone();
            n.sort();
            n
        });
    }

    #[test]
    fn a_checkpoint_folder_is_complete_or_absent() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("checkpoint-4");
        let files = vec![
            ("a".to_string(), vec![1u8; 10]),
            ("sub/b".to_string(), vec![2u8; 10]),
        ];
        assert!(write_dir_atomic_with(&dest, &files, &full_disk_after(1)).is_err());
        assert!(!dest.exists());
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "no temp left"
        );
        write_dir_atomic_with(&dest, &files, &write_file_synced).unwrap();
        assert_eq!(std::fs::read(dest.join("sub/b")).unwrap(), vec![2u8; 10]);
    }

    #[test]
    fn paths_that_leave_the_folder_are_refused() {
        let d = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/x", "a//b", "a/./b"] {
            assert!(
                write_files_atomic(d.path(), &[(bad.to_string(), vec![])]).is_err(),
                "{bad}"
            );
        }
    }
}
