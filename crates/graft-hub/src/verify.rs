//! Content verification: the Hub's ETag is the sha256 of an LFS file's content, or the git
//! blob sha1 of a file stored in git. No reference client checks it; graft does, on every
//! download, before a file enters the cache.

use sha1::Digest as _;

/// What the bytes must hash to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    /// 64 hex digits: sha256 of the content (LFS).
    Sha256(String),
    /// 40 hex digits: sha1 of `blob {len}\0` + content (git).
    GitSha1(String),
}

impl Expected {
    /// From an ETag (quotes and `W/` already stripped); `None` if it is neither form.
    pub fn from_etag(etag: &str) -> Option<Self> {
        let e = etag.to_ascii_lowercase();
        if !crate::repo::valid_etag(&e) {
            return None;
        }
        Some(if e.len() == 64 {
            Expected::Sha256(e)
        } else {
            Expected::GitSha1(e)
        })
    }

    pub fn hex(&self) -> &str {
        match self {
            Expected::Sha256(h) | Expected::GitSha1(h) => h,
        }
    }
}

/// Strips `W/` and the quotes from an ETag header value.
pub fn clean_etag(v: &str) -> String {
    v.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

/// An incremental hasher for one file of known size.
pub struct Hasher {
    kind: Expected,
    size: u64,
    seen: u64,
    sha256: sha2::Sha256,
    sha1: sha1::Sha1,
}

impl Hasher {
    /// Starts hashing a file that should be `size` bytes and hash to `expected`.
    pub fn new(expected: Expected, size: u64) -> Self {
        let mut sha1 = sha1::Sha1::new();
        if matches!(expected, Expected::GitSha1(_)) {
            sha1.update(format!("blob {size}\0").as_bytes());
        }
        Hasher {
            kind: expected,
            size,
            seen: 0,
            sha256: sha2::Sha256::new(),
            sha1,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.seen += bytes.len() as u64;
        match self.kind {
            Expected::Sha256(_) => self.sha256.update(bytes),
            Expected::GitSha1(_) => self.sha1.update(bytes),
        }
    }

    pub fn bytes_seen(&self) -> u64 {
        self.seen
    }

    /// Checks size and hash. `Err` carries a description of the mismatch.
    pub fn finish(self) -> Result<(), String> {
        if self.seen != self.size {
            return Err(format!(
                "{} bytes received where the Hub announced {}",
                self.seen, self.size
            ));
        }
        let (name, got) = match self.kind {
            Expected::Sha256(_) => ("sha256", hex::encode(self.sha256.finalize())),
            Expected::GitSha1(_) => ("git blob sha1", hex::encode(self.sha1.finalize())),
        };
        if got != self.kind.hex() {
            return Err(format!(
                "its {name} is {got}, the Hub's ETag says {}",
                self.kind.hex()
            ));
        }
        Ok(())
    }
}

/// `sha1("blob {len}\0" + bytes)`, git's object id.
pub fn git_blob_sha1(bytes: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex::encode(h.finalize())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_test_vector() {
        // huggingface_hub utils/sha.py: git_hash(b"Hello, World!")
        assert_eq!(
            git_blob_sha1(b"Hello, World!"),
            "b45ef6fec89518d314f546fd6c3025367b721684"
        );
    }

    #[test]
    fn hasher_checks_size_and_content() {
        let data = b"some file content";
        for exp in [
            Expected::from_etag(&sha256_hex(data)).unwrap(),
            Expected::from_etag(&git_blob_sha1(data)).unwrap(),
        ] {
            let mut h = Hasher::new(exp.clone(), data.len() as u64);
            h.update(&data[..5]);
            h.update(&data[5..]);
            assert!(h.finish().is_ok());
            let mut h = Hasher::new(exp.clone(), data.len() as u64);
            let mut bad = data.to_vec();
            bad[3] ^= 1;
            h.update(&bad);
            assert!(h.finish().unwrap_err().contains("ETag"));
            let mut h = Hasher::new(exp, data.len() as u64);
            h.update(&data[..4]);
            assert!(h.finish().unwrap_err().contains("bytes received"));
        }
        assert_eq!(clean_etag("W/\"abc\""), "abc");
        assert!(Expected::from_etag("xyz").is_none());
    }
}
