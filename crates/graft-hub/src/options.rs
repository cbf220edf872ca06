//! Client settings, read from huggingface_hub's environment variables so that graft and Python
//! share endpoint, cache, token and offline mode.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::repo::Token;

/// The Hub's address when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// A download's progress, for a bar or a JavaScript callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A file starts (or resumes, `done > 0`).
    Start { file: String, total: u64, done: u64 },
    /// Bytes have arrived.
    Advance { file: String, done: u64, total: u64 },
    /// The file is complete and verified.
    Done { file: String },
}

/// Receives [`Progress`] events.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// How the Hub client behaves.
#[derive(Clone)]
pub struct HubOptions {
    /// `HF_ENDPOINT`, default `https://huggingface.co` (no trailing slash).
    pub endpoint: String,
    /// Sent as `Authorization: Bearer …` to the endpoint only, never to another host.
    pub token: Option<Token>,
    /// `HF_HUB_CACHE` (or `$HF_HOME/hub`): huggingface_hub's cache layout.
    pub cache_dir: PathBuf,
    /// `HF_HUB_OFFLINE`: serve from the cache only, never touch the network.
    pub offline: bool,
    /// Attempts per request before a transient failure (network, 5xx, 429) is an error.
    pub max_attempts: u32,
    /// Longest a metadata request may take (`HF_HUB_ETAG_TIMEOUT`, 10 s).
    pub etag_timeout: Duration,
    /// Longest a download may wait for the next bytes (`HF_HUB_DOWNLOAD_TIMEOUT`, 10 s);
    /// a stalled transfer is then resumed where it stopped.
    pub read_timeout: Duration,
    /// Upper bound on one wait between attempts (a server's `Retry-After` included).
    pub max_retry_wait: Duration,
    /// Progress events; `None` shows a bar on a terminal for files of 1 MiB or more.
    pub progress: Option<ProgressFn>,
    /// No progress bar even on a terminal.
    pub quiet: bool,
}

impl std::fmt::Debug for HubOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubOptions")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token)
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .finish_non_exhaustive()
    }
}

fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_uppercase().as_str(),
        "1" | "ON" | "YES" | "TRUE"
    )
}

impl HubOptions {
    /// From the process environment (huggingface_hub's variables and precedence).
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// From any variable lookup (tests pass a map).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Self {
        let home_dir = get("HOME").map(PathBuf::from).unwrap_or_default();
        let hf_home = get("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            get("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| home_dir.join(".cache"))
                .join("huggingface")
        });
        let cache_dir = get("HF_HUB_CACHE")
            .or_else(|| get("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let offline = get("HF_HUB_OFFLINE")
            .or_else(|| get("TRANSFORMERS_OFFLINE"))
            .is_some_and(|v| truthy(&v));
        let implicit = !get("HF_HUB_DISABLE_IMPLICIT_TOKEN").is_some_and(|v| truthy(&v));
        let token = if implicit {
            get("HF_TOKEN")
                .or_else(|| get("HUGGING_FACE_HUB_TOKEN"))
                .and_then(|t| Token::new(&t))
                .or_else(|| {
                    let path = get("HF_TOKEN_PATH")
                        .map(PathBuf::from)
                        .unwrap_or_else(|| hf_home.join("token"));
                    read_token_file(&path)
                })
        } else {
            None
        };
        let secs = |k: &str, d: u64| {
            Duration::from_secs_f64(
                get(k)
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .filter(|v| v.is_finite() && *v > 0.0)
                    .unwrap_or(d as f64),
            )
        };
        HubOptions {
            endpoint: get("HF_ENDPOINT")
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
                .trim_end_matches('/')
                .to_string(),
            token,
            cache_dir,
            offline,
            max_attempts: 5,
            etag_timeout: secs("HF_HUB_ETAG_TIMEOUT", 10),
            read_timeout: secs("HF_HUB_DOWNLOAD_TIMEOUT", 10),
            max_retry_wait: Duration::from_secs(60),
            progress: None,
            quiet: false,
        }
    }
}

/// The token file holds the token on its first line; a file over 4 KiB is not a token.
fn read_token_file(path: &std::path::Path) -> Option<Token> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > 4096 {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    Token::new(text.lines().next().unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn opts(vars: &[(&str, &str)]) -> HubOptions {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubOptions::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn environment_precedence_follows_huggingface_hub() {
        let o = opts(&[("HOME", "/h")]);
        assert_eq!(o.cache_dir, PathBuf::from("/h/.cache/huggingface/hub"));
        assert_eq!(o.endpoint, DEFAULT_ENDPOINT);
        assert!(!o.offline && o.token.is_none());
        let o = opts(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]);
        assert_eq!(o.cache_dir, PathBuf::from("/x/huggingface/hub"));
        let o = opts(&[("HF_HOME", "/hf"), ("HUGGINGFACE_HUB_CACHE", "/legacy")]);
        assert_eq!(o.cache_dir, PathBuf::from("/legacy"));
        let o = opts(&[
            ("HF_HOME", "/hf"),
            ("HF_HUB_CACHE", "/c"),
            ("HUGGINGFACE_HUB_CACHE", "/l"),
        ]);
        assert_eq!(o.cache_dir, PathBuf::from("/c"));
        let o = opts(&[
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
            ("HF_HUB_OFFLINE", "yes"),
        ]);
        assert_eq!(o.endpoint, "http://127.0.0.1:9");
        assert!(o.offline);
        assert!(opts(&[("TRANSFORMERS_OFFLINE", "1")]).offline);
        assert!(!opts(&[("HF_HUB_OFFLINE", "0")]).offline);
        let o = opts(&[("HF_TOKEN", "a"), ("HUGGING_FACE_HUB_TOKEN", "b")]);
        assert_eq!(o.token, Token::new("a"));
        let o = opts(&[("HF_TOKEN", "a"), ("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")]);
        assert!(o.token.is_none());
    }

    #[test]
    fn token_file_is_read() {
        let dir = std::env::temp_dir().join(format!("graft-hub-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "hf_file\n").unwrap();
        let home = dir.to_string_lossy().to_string();
        assert_eq!(opts(&[("HF_HOME", &home)]).token, Token::new("hf_file"));
        let custom = dir.join("t2");
        std::fs::write(&custom, "hf_custom").unwrap();
        let o = opts(&[
            ("HF_HOME", &home),
            ("HF_TOKEN_PATH", &custom.to_string_lossy()),
        ]);
        assert_eq!(o.token, Token::new("hf_custom"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
