//! huggingface_hub's cache layout, so that a file Python downloaded is found by graft and
//! the reverse:
//!
//! ```text
//! $HF_HUB_CACHE/
//!   .locks/models--org--name/<etag>.lock
//!   models--org--name/
//!     blobs/<etag>                       (sha256 for LFS files, git sha1 otherwise)
//!     refs/<revision>                    (the commit, no newline)
//!     snapshots/<commit>/<path>          (relative symlink to ../../blobs/<etag>)
//!     .no_exist/<commit>/<path>          (empty: the file is absent at that commit)
//! ```

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::info::{RepoInfo, Sibling};
use crate::repo::{is_commit_hash, validate_path, validate_revision, Repo};

/// A huggingface_hub cache folder.
#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Cache { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn repo_dir(&self, repo: &Repo) -> PathBuf {
        self.root.join(repo.folder_name())
    }

    pub fn blob_path(&self, repo: &Repo, etag: &str) -> PathBuf {
        self.repo_dir(repo).join("blobs").join(etag)
    }

    pub fn lock_path(&self, repo: &Repo, etag: &str) -> PathBuf {
        self.root
            .join(".locks")
            .join(repo.folder_name())
            .join(format!("{etag}.lock"))
    }

    /// `snapshots/<commit>/<path>`. `path` must have been validated.
    pub fn pointer_path(&self, repo: &Repo, commit: &str, path: &str) -> PathBuf {
        join_repo_path(&self.repo_dir(repo).join("snapshots").join(commit), path)
    }

    pub fn snapshot_dir(&self, repo: &Repo, commit: &str) -> PathBuf {
        self.repo_dir(repo).join("snapshots").join(commit)
    }

    fn no_exist_path(&self, repo: &Repo, commit: &str, path: &str) -> PathBuf {
        join_repo_path(&self.repo_dir(repo).join(".no_exist").join(commit), path)
    }

    fn ref_path(&self, repo: &Repo, revision: &str) -> PathBuf {
        join_repo_path(&self.repo_dir(repo).join("refs"), revision)
    }

    /// The commit the repo's revision points to in the cache: the revision itself when it is
    /// a commit hash, else `refs/<revision>`.
    pub fn cached_commit(&self, repo: &Repo) -> Option<String> {
        if repo.is_commit() {
            return Some(repo.revision.clone());
        }
        validate_revision(&repo.revision).ok()?;
        let text = std::fs::read_to_string(self.ref_path(repo, &repo.revision)).ok()?;
        let c = text.trim();
        is_commit_hash(c).then(|| c.to_string())
    }

    /// The cached copy of `path` at the repo's revision. `Ok(None)`: not cached;
    /// `Err(EntryNotFound)`: the cache knows the file does not exist there.
    pub fn cached_file(&self, repo: &Repo, path: &str) -> Result<Option<PathBuf>> {
        validate_path(path)?;
        let Some(commit) = self.cached_commit(repo) else {
            return Ok(None);
        };
        let p = self.pointer_path(repo, &commit, path);
        if p.is_file() {
            return Ok(Some(p));
        }
        if self.no_exist_path(repo, &commit, path).is_file() {
            return Err(Error::EntryNotFound {
                repo: repo.to_string(),
                revision: repo.revision.clone(),
                path: path.to_string(),
            });
        }
        Ok(None)
    }

    /// The files of a cached snapshot, for offline listing (sizes from the blobs; the
    /// hashes are not needed since nothing is downloaded).
    pub fn cached_info(&self, repo: &Repo) -> Option<RepoInfo> {
        let commit = self.cached_commit(repo)?;
        let dir = self.snapshot_dir(repo, &commit);
        let mut siblings = Vec::new();
        walk(&dir, "", &mut siblings, 0);
        if siblings.is_empty() {
            return None;
        }
        siblings.sort_by(|a, b| a.path.cmp(&b.path));
        Some(RepoInfo { commit, siblings })
    }

    /// Records `refs/<revision>` → commit (atomically: temporary file, then rename).
    pub fn write_ref(&self, repo: &Repo, commit: &str) -> Result<()> {
        if repo.revision == commit {
            return Ok(());
        }
        let p = self.ref_path(repo, &repo.revision);
        if std::fs::read_to_string(&p).is_ok_and(|c| c.trim() == commit) {
            return Ok(());
        }
        let dir = p.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
        let tmp = dir.join(format!(".tmp-ref-{}-{}", std::process::id(), unique()));
        std::fs::write(&tmp, commit).map_err(|e| Error::io(tmp.display(), e))?;
        std::fs::rename(&tmp, &p).map_err(|e| Error::io(p.display(), e))
    }

    /// Marks `path` as absent at `commit` (what huggingface_hub writes on EntryNotFound).
    pub fn mark_missing(&self, repo: &Repo, commit: &str, path: &str) {
        let p = self.no_exist_path(repo, commit, path);
        if let Some(d) = p.parent() {
            // Only an optimisation for later offline runs: failing to write it is harmless.
            if std::fs::create_dir_all(d).is_ok() {
                let _ = std::fs::write(&p, b"");
            }
        }
    }

    /// Points `snapshots/<commit>/<path>` at the blob: a relative symlink as huggingface_hub
    /// makes (a copy where symlinks are unavailable). Another process making the same link
    /// at the same time is fine.
    pub fn link(&self, repo: &Repo, commit: &str, path: &str, etag: &str) -> Result<PathBuf> {
        let pointer = self.pointer_path(repo, commit, path);
        if pointer.is_file() {
            return Ok(pointer);
        }
        let dir = pointer.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
        let depth = path.split('/').count(); // snapshots/<commit>/<a>/<b> → ../../../blobs
        let mut target = PathBuf::new();
        for _ in 0..depth + 1 {
            target.push("..");
        }
        target.push("blobs");
        target.push(etag);
        // Build the link under a unique name, then rename over: never a half-made pointer.
        let tmp = dir.join(format!(".tmp-link-{}-{}", std::process::id(), unique()));
        let made = make_link(&target, &self.blob_path(repo, etag), &tmp);
        made.map_err(|e| Error::io(tmp.display(), e))?;
        std::fs::rename(&tmp, &pointer).map_err(|e| Error::io(pointer.display(), e))?;
        Ok(pointer)
    }
}

#[cfg(unix)]
fn make_link(target: &Path, _blob: &Path, at: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, at)
}

#[cfg(not(unix))]
fn make_link(_target: &Path, blob: &Path, at: &Path) -> std::io::Result<()> {
    std::fs::copy(blob, at).map(|_| ())
}

/// A name part that differs between threads and calls of one process.
pub(crate) fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    (N.fetch_add(1, Ordering::Relaxed) << 32) ^ t
}

/// Joins a validated `a/b/c` path segment by segment (so `/` works on every platform).
fn join_repo_path(base: &Path, path: &str) -> PathBuf {
    let mut p = base.to_path_buf();
    for seg in path.split('/') {
        p.push(seg);
    }
    p
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<Sibling>, depth: usize) {
    if depth > 16 || out.len() > 100_000 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with(".tmp-") {
            continue;
        }
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let p = e.path();
        if p.is_dir() {
            walk(&p, &rel, out, depth + 1);
        } else if let Ok(m) = std::fs::metadata(&p) {
            out.push(Sibling {
                path: rel,
                size: Some(m.len()),
                expected: None,
            });
        }
    }
}
