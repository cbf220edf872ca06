//! Repo ids, revisions and paths: validated before they reach a URL or the file system.

use crate::error::{Error, Result};

/// The kind of repository (the Hub's URL prefix and the cache folder's prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum RepoType {
    #[default]
    Model,
    Dataset,
}

impl RepoType {
    /// `"model"` / `"dataset"`, as huggingface_hub's `repo_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            RepoType::Model => "model",
            RepoType::Dataset => "dataset",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "model" | "models" => Some(RepoType::Model),
            "dataset" | "datasets" => Some(RepoType::Dataset),
            _ => None,
        }
    }

    /// The path prefix of resolve URLs (`""` for models, `"datasets/"`).
    fn url_prefix(self) -> &'static str {
        match self {
            RepoType::Model => "",
            RepoType::Dataset => "datasets/",
        }
    }

    /// The plural used by the JSON API and the cache (`models`, `datasets`).
    pub fn plural(self) -> &'static str {
        match self {
            RepoType::Model => "models",
            RepoType::Dataset => "datasets",
        }
    }
}

/// A repository at a revision: what every download names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Repo {
    pub id: String,
    pub repo_type: RepoType,
    pub revision: String,
}

/// The default revision, as everywhere on the Hub.
pub const DEFAULT_REVISION: &str = "main";

impl Repo {
    /// A model repository at `main`. The id is validated.
    pub fn model(id: &str) -> Result<Self> {
        Self::new(id, RepoType::Model, None)
    }

    /// A repository of the given type at `revision` (default `main`). Id and revision are validated.
    pub fn new(id: &str, repo_type: RepoType, revision: Option<&str>) -> Result<Self> {
        validate_repo_id(id)?;
        let revision = revision.unwrap_or(DEFAULT_REVISION);
        validate_revision(revision)?;
        Ok(Repo {
            id: id.to_string(),
            repo_type,
            revision: revision.to_string(),
        })
    }

    /// The same repository at another revision (e.g. pinned to the commit a revision resolved to).
    pub fn at(&self, revision: &str) -> Result<Self> {
        validate_revision(revision)?;
        Ok(Repo {
            revision: revision.to_string(),
            ..self.clone()
        })
    }

    /// `{endpoint}/{prefix}{id}/resolve/{revision}/{path}` (revision as one encoded segment).
    pub fn resolve_url(&self, endpoint: &str, path: &str) -> String {
        format!(
            "{}/{}{}/resolve/{}/{}",
            endpoint.trim_end_matches('/'),
            self.repo_type.url_prefix(),
            self.id,
            encode_segment(&self.revision),
            encode_path(path)
        )
    }

    /// `{endpoint}/api/{models|datasets}/{id}/revision/{revision}?blobs=true`: the commit and
    /// every file with its size and hashes (what the browser uses instead of headers).
    pub fn info_url(&self, endpoint: &str) -> String {
        format!(
            "{}/api/{}/{}/revision/{}?blobs=true",
            endpoint.trim_end_matches('/'),
            self.repo_type.plural(),
            self.id,
            encode_segment(&self.revision)
        )
    }

    /// The cache folder's name: `models--org--name` (huggingface_hub's `repo_folder_name`).
    pub fn folder_name(&self) -> String {
        format!(
            "{}--{}",
            self.repo_type.plural(),
            self.id.replace('/', "--")
        )
    }

    /// Whether the revision is a full commit hash (then a cached file needs no network).
    pub fn is_commit(&self) -> bool {
        is_commit_hash(&self.revision)
    }
}

impl std::fmt::Display for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.repo_type != RepoType::Model {
            write!(f, "{}s/", self.repo_type.as_str())?;
        }
        write!(f, "{}", self.id)
    }
}

/// `^[0-9a-f]{40}$`.
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// An ETag usable as a blob name: the 40-hex git sha1 or the 64-hex sha256 the Hub sends.
pub fn valid_etag(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && is_hex(s)
}

/// Repo ids are `name` or `namespace/name` with the Hub's characters; `--` and `..` are
/// forbidden (the first would make cache folder names ambiguous, the second escape them).
pub fn validate_repo_id(id: &str) -> Result<()> {
    let bad = || Error::InvalidRepoId(id.to_string());
    let parts: Vec<&str> = id.split('/').collect();
    if parts.is_empty() || parts.len() > 2 || id.len() > 96 {
        return Err(bad());
    }
    for p in &parts {
        let ok_chars = p
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if p.is_empty()
            || !ok_chars
            || p.starts_with(['-', '.'])
            || p.ends_with(['-', '.'])
            || p.contains("--")
            || p.contains("..")
        {
            return Err(bad());
        }
    }
    Ok(())
}

/// Whether a command-line string names a Hub repository rather than a local path: it is a
/// valid repo id and no such file or folder exists (the same rule transformers applies).
pub fn looks_like_repo_id(s: &str) -> bool {
    !std::path::Path::new(s).exists() && validate_repo_id(s).is_ok()
}

/// Splits `org/name@revision` into the id and the revision (repo ids cannot contain `@`);
/// anything else comes back whole.
pub fn split_revision(spec: &str) -> (&str, Option<&str>) {
    match spec.rsplit_once('@') {
        Some((id, rev)) if validate_repo_id(id).is_ok() && !rev.is_empty() => (id, Some(rev)),
        _ => (spec, None),
    }
}

/// `scheme://host:port` of a URL: the token goes only to the endpoint's origin.
pub(crate) fn url_origin(url: &str) -> &str {
    let after = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after..].find('/') {
        Some(i) => &url[..after + i],
        None => url,
    }
}

/// Revisions become `refs/<revision>` in the cache, so they must not climb out of it.
pub fn validate_revision(rev: &str) -> Result<()> {
    let bad = rev.is_empty()
        || rev.len() > 255
        || rev.starts_with('/')
        || rev.ends_with('/')
        || rev.contains('\\')
        || rev
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        || rev.chars().any(|c| c.is_control());
    if bad {
        return Err(Error::InvalidRevision(rev.to_string()));
    }
    Ok(())
}

/// A path inside a repository, from the user or from a server listing. Rejects what
/// huggingface_hub's `_validate_relative_filename` rejects: `..` segments (after `\`→`/`),
/// absolute paths, drive letters and UNC paths; also empty segments and control characters.
pub fn validate_path(path: &str) -> Result<()> {
    let unsafe_ = |why| {
        Err(Error::UnsafePath {
            path: path.chars().take(200).collect(),
            why,
        })
    };
    let p = path.replace('\\', "/");
    if p.is_empty() {
        return unsafe_("empty");
    }
    if p.starts_with('/') {
        return unsafe_("absolute");
    }
    let b = p.as_bytes();
    if b.len() >= 2 && b[1] == b':' && b[0].is_ascii_alphabetic() {
        return unsafe_("drive letter");
    }
    if p.len() > 1024 {
        return unsafe_("longer than 1024 bytes");
    }
    if p.chars().any(|c| c.is_control()) {
        return unsafe_("control character");
    }
    for seg in p.split('/') {
        match seg {
            ".." => return unsafe_("`..` segment"),
            "" | "." => return unsafe_("empty or `.` segment"),
            _ => {}
        }
    }
    Ok(())
}

/// Percent-encodes one URL path segment (`quote(s, safe="")`).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes a path, keeping its slashes (`quote(path)`).
pub fn encode_path(p: &str) -> String {
    p.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

/// A Hub token. Its `Debug` and `Display` never show it, so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A token, trimmed; `None` when empty.
    pub fn new(s: &str) -> Option<Self> {
        let t = s.trim();
        (!t.is_empty()).then(|| Token(t.to_string()))
    }

    /// The `Authorization` header's value.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_like_huggingface_hub() {
        let r = Repo::new("org/m", RepoType::Model, Some("refs/pr/1")).unwrap();
        assert_eq!(
            r.resolve_url("https://h.co/", "sub dir/file name #1.bin"),
            "https://h.co/org/m/resolve/refs%2Fpr%2F1/sub%20dir/file%20name%20%231.bin"
        );
        let d = Repo::new("org/d", RepoType::Dataset, Some("fix#123")).unwrap();
        assert_eq!(
            d.resolve_url("http://x", "a.json"),
            "http://x/datasets/org/d/resolve/fix%23123/a.json"
        );
        assert_eq!(d.folder_name(), "datasets--org--d");
        assert_eq!(
            d.info_url("http://x"),
            "http://x/api/datasets/org/d/revision/fix%23123?blobs=true"
        );
    }

    #[test]
    fn hostile_names_are_rejected() {
        for id in [
            "", "a/b/c", "../x", "a--b/c", "a/..", "/a", "a b/c", "a/b/", "-a/b",
        ] {
            assert!(validate_repo_id(id).is_err(), "{id}");
        }
        for id in [
            "gpt2",
            "org/name",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "a.b/c_d",
        ] {
            assert!(validate_repo_id(id).is_ok(), "{id}");
        }
        for p in [
            "../x",
            "a/../b",
            "/etc/passwd",
            "C:x",
            "c:/x",
            "a\\..\\b",
            "a//b",
            "",
            "a/./b",
            "\\\\server\\x",
            "a\u{0}b",
        ] {
            assert!(validate_path(p).is_err(), "{p:?}");
        }
        for p in ["config.json", "sub/adapter_config.json", "a..b/c"] {
            assert!(validate_path(p).is_ok(), "{p}");
        }
        for r in ["", "../main", "a/../b", "/x", "x/", "a\nb"] {
            assert!(validate_revision(r).is_err(), "{r:?}");
        }
        for r in [
            "main",
            "refs/pr/1",
            "v1.0",
            "0123456789abcdef0123456789abcdef01234567",
        ] {
            assert!(validate_revision(r).is_ok(), "{r}");
        }
    }

    #[test]
    fn tokens_never_print() {
        let t = Token::new(" hf_secret ").unwrap();
        assert_eq!(format!("{t:?} {t}"), "Token(***) ***");
        assert_eq!(t.bearer(), "Bearer hf_secret");
        assert!(Token::new("  ").is_none());
    }
}
