//! Repositories on disk: config, branches, file listings, hashes and commit ids.
//! Everything is read at request time so tests can change the folder while the server runs.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Deserialize;
use sha1::{Digest, Sha1};
use sha2::Sha256;

use crate::http::percent_decode;

/// Extensions the Hub's default `.gitattributes` stores in LFS (the subset we care about).
const LFS_EXTENSIONS: &[&str] = &[
    "safetensors",
    "gguf",
    "bin",
    "pt",
    "pth",
    "ckpt",
    "onnx",
    "h5",
    "msgpack",
    "parquet",
    "arrow",
    "zip",
    "gz",
];

/// Symlinked folders could loop; real repos are nowhere near this deep.
const MAX_DEPTH: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RepoType {
    Model,
    Dataset,
}

impl RepoType {
    /// Accepts the singular ("model") and the plural/URL ("models") spellings.
    pub fn parse(s: &str) -> Option<RepoType> {
        match s {
            "model" | "models" => Some(RepoType::Model),
            "dataset" | "datasets" => Some(RepoType::Dataset),
            _ => None,
        }
    }
    pub fn plural(self) -> &'static str {
        match self {
            RepoType::Model => "models",
            RepoType::Dataset => "datasets",
        }
    }
    pub fn singular(self) -> &'static str {
        match self {
            RepoType::Model => "model",
            RepoType::Dataset => "dataset",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub(crate) struct RepoConfig {
    pub private: bool,
    pub gated: bool,
    pub readers: Vec<String>,
    pub approved: Vec<String>,
    pub tags: BTreeMap<String, String>,
    pub lfs_threshold: u64,
}

impl Default for RepoConfig {
    fn default() -> Self {
        RepoConfig {
            private: false,
            gated: false,
            readers: Vec::new(),
            approved: Vec::new(),
            tags: BTreeMap::new(),
            lfs_threshold: 10 * 1024 * 1024,
        }
    }
}

pub(crate) struct Repo {
    pub ty: RepoType,
    pub org: String,
    pub name: String,
    pub dir: PathBuf,
    pub config: RepoConfig,
}

/// A repo id segment must stay inside its folder.
pub(crate) fn valid_segment(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\', '\0'])
}

/// Repo-relative file path: no empty, `.` or `..` segments, no backslashes.
pub(crate) fn valid_repo_path(p: &str) -> bool {
    !p.is_empty() && p.split('/').all(valid_segment)
}

impl Repo {
    /// Ok(None) when the repo folder does not exist; Err when repo.json is unreadable.
    pub fn open(root: &Path, ty: RepoType, org: &str, name: &str) -> Result<Option<Repo>, String> {
        if !valid_segment(org) || !valid_segment(name) {
            return Ok(None);
        }
        let dir = root.join(ty.plural()).join(org).join(name);
        if !dir.is_dir() {
            return Ok(None);
        }
        let config = match fs::read(dir.join("repo.json")) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| format!("invalid repo.json: {e}"))?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => RepoConfig::default(),
            Err(e) => return Err(format!("cannot read repo.json: {e}")),
        };
        Ok(Some(Repo {
            ty,
            org: org.to_string(),
            name: name.to_string(),
            dir,
            config,
        }))
    }

    pub fn id(&self) -> String {
        format!("{}/{}", self.org, self.name)
    }

    /// (branch name, folder), sorted by name. Folder names are percent-encoded branch names.
    pub fn branches(&self) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(self.dir.join("branches")) else {
            return out;
        };
        for entry in rd.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let Some(raw) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let name = percent_decode(&raw).unwrap_or(raw);
            out.push((name, path));
        }
        out.sort();
        out
    }

    pub fn branch_dir(&self, branch: &str) -> Option<PathBuf> {
        self.branches()
            .into_iter()
            .find(|(n, _)| n == branch)
            .map(|(_, p)| p)
    }

    pub fn is_lfs(&self, path: &str, len: u64) -> bool {
        let ext = path
            .rsplit('/')
            .next()
            .and_then(|base| base.rsplit_once('.'))
            .map(|(_, e)| e.to_ascii_lowercase());
        len >= self.config.lfs_threshold
            || ext.is_some_and(|e| LFS_EXTENSIONS.contains(&e.as_str()))
    }

    /// Hashes every file of the branch and derives its commit id.
    pub fn snapshot(&self, branch_dir: &Path, cache: &HashCache) -> io::Result<Snapshot> {
        let mut files = Vec::new();
        for (path, fs_path) in list_files(branch_dir) {
            let h = cache.get(&fs_path)?;
            let lfs = self.is_lfs(&path, h.len);
            files.push(FileMeta {
                path,
                fs_path,
                lfs,
                hashes: h,
            });
        }
        let mut commit = Sha1::new();
        commit.update(b"graft-hub-commit\n");
        for f in &files {
            commit.update(f.path.as_bytes());
            commit.update(b"\0");
            commit.update(f.blob_oid().as_bytes());
            commit.update(b"\n");
        }
        Ok(Snapshot {
            commit: hex::encode(commit.finalize()),
            files,
        })
    }
}

pub(crate) struct FileMeta {
    /// Repo path, `/`-separated.
    pub path: String,
    pub fs_path: PathBuf,
    pub lfs: bool,
    pub hashes: Hashes,
}

impl FileMeta {
    pub fn pointer(&self) -> String {
        lfs_pointer(&self.hashes.sha256, self.hashes.len)
    }
    /// The oid git stores for this path: the pointer's blob for LFS files, the content's otherwise.
    pub fn blob_oid(&self) -> String {
        if self.lfs {
            crate::git_blob_sha1(self.pointer().as_bytes())
        } else {
            self.hashes.git_sha1.clone()
        }
    }
}

pub(crate) fn lfs_pointer(sha256: &str, len: u64) -> String {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len}\n")
}

pub(crate) struct Snapshot {
    pub commit: String,
    /// Sorted by path.
    pub files: Vec<FileMeta>,
}

impl Snapshot {
    pub fn file(&self, path: &str) -> Option<&FileMeta> {
        self.files.iter().find(|f| f.path == path)
    }
}

/// All regular files under `dir` (symlinks followed), as (repo path, fs path), sorted by repo path.
pub(crate) fn list_files(dir: &Path) -> Vec<(String, PathBuf)> {
    fn walk(dir: &Path, prefix: &str, depth: usize, out: &mut Vec<(String, PathBuf)>) {
        if depth > MAX_DEPTH {
            return;
        }
        let Ok(rd) = fs::read_dir(dir) else { return };
        for entry in rd.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let path = entry.path();
            // fs::metadata follows symlinks (tests link large GGUFs in).
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if meta.is_dir() {
                walk(&path, &rel, depth + 1, out);
            } else if meta.is_file() {
                out.push((rel, path));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, "", 0, &mut out);
    out.sort();
    out
}

#[derive(Clone, Debug)]
pub(crate) struct Hashes {
    pub len: u64,
    pub git_sha1: String,
    pub sha256: String,
}

/// Files below this size are cheap to hash and are never cached, so same-size
/// rewrites within one mtime tick cannot serve stale hashes.
const CACHE_MIN_LEN: u64 = 1024 * 1024;
const CACHE_MAX_ENTRIES: usize = 4096;

type CacheKey = (PathBuf, u64, Option<SystemTime>);

#[derive(Default)]
pub(crate) struct HashCache {
    map: Mutex<HashMap<CacheKey, Hashes>>,
}

impl HashCache {
    pub fn get(&self, path: &Path) -> io::Result<Hashes> {
        let meta = fs::metadata(path)?;
        let key = (path.to_path_buf(), meta.len(), meta.modified().ok());
        let cacheable = meta.len() >= CACHE_MIN_LEN;
        if cacheable {
            if let Some(h) = self.map.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
                return Ok(h.clone());
            }
        }
        let h = hash_file(path)?;
        if cacheable && h.len == meta.len() {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            if map.len() >= CACHE_MAX_ENTRIES {
                map.clear();
            }
            map.insert(key, h.clone());
        }
        Ok(h)
    }
}

/// Streams the file once for both hashes. The git hash needs the length up front,
/// so a file that changes size mid-read is hashed again.
fn hash_file(path: &Path) -> io::Result<Hashes> {
    for _ in 0..3 {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        let mut sha1 = Sha1::new();
        sha1.update(format!("blob {len}\0").as_bytes());
        let mut sha256 = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut read: u64 = 0;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sha1.update(&buf[..n]);
            sha256.update(&buf[..n]);
            read += n as u64;
        }
        if read == len {
            return Ok(Hashes {
                len,
                git_sha1: hex::encode(sha1.finalize()),
                sha256: hex::encode(sha256.finalize()),
            });
        }
    }
    Err(io::Error::other("file keeps changing while being hashed"))
}
