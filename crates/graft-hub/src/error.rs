//! The one error type of the Hub client. Every variant's message says what to do next.

/// A Hub or cache failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("repository `{repo}` was not found on {endpoint}: check the id; if it is private, use a token that can read it (HF_TOKEN or the token file)")]
    RepoNotFound { repo: String, endpoint: String },

    #[error("revision `{revision}` does not exist in `{repo}`: use a branch, a tag or a full 40-character commit hash of that repository")]
    RevisionNotFound { repo: String, revision: String },

    #[error("`{path}` does not exist in `{repo}` at revision `{revision}`: check the file name (and the subfolder)")]
    EntryNotFound {
        repo: String,
        revision: String,
        path: String,
    },

    #[error("`{repo}` is a gated repository: {}", gated_hint(*authenticated, endpoint, repo))]
    GatedRepo {
        repo: String,
        endpoint: String,
        /// Whether a token was sent (then it is not on the repository's authorized list).
        authenticated: bool,
    },

    #[error("{endpoint} rejected the token (invalid credentials in the Authorization header): check the token (HF_TOKEN or the token file), or send none for public repositories")]
    InvalidToken { endpoint: String },

    #[error("{endpoint} is rate-limiting these requests (HTTP 429) and still was after {attempts} attempts{}: wait a while and run again", retry_after.map(|s| format!(" (it asked to wait {s} s)")).unwrap_or_default())]
    RateLimited {
        endpoint: String,
        attempts: u32,
        retry_after: Option<u64>,
    },

    #[error("{url} answered HTTP {status} (a server error) {attempts} times{}: the Hub may be down; run again later, or work offline if the files are cached", fmt_message(message))]
    Server {
        url: String,
        status: u16,
        attempts: u32,
        message: Option<String>,
    },

    #[error("{url} answered HTTP {status}{}", fmt_message(message))]
    Http {
        url: String,
        status: u16,
        message: Option<String>,
    },

    #[error("could not reach {url} ({message}) after {attempts} attempts: check the network and HF_ENDPOINT, or work offline (HF_HUB_OFFLINE=1) from the cache")]
    Network {
        url: String,
        message: String,
        attempts: u32,
    },

    #[error("`{path}` of `{repo}` is corrupt: {what}; it was discarded and nothing was added to the cache. Run again; if it keeps failing, the server or a proxy is altering the file")]
    Integrity {
        repo: String,
        path: String,
        what: String,
    },

    #[error("offline mode: `{path}` of `{repo}` at revision `{revision}` is not in the cache {cache}; fetch it once with the network, or point HF_HUB_CACHE at a cache that has it")]
    NotCached {
        repo: String,
        revision: String,
        path: String,
        cache: String,
    },

    #[error(
        "unsafe path `{path}` ({why}): only relative paths inside the repository are accepted"
    )]
    UnsafePath { path: String, why: &'static str },

    #[error("`{0}` is not a valid repo id: use `name` or `namespace/name` (letters, digits, `-`, `_`, `.`; no `--` or `..`)")]
    InvalidRepoId(String),

    #[error("`{0}` is not a valid revision (it must be a branch, tag or commit name without `..`, control characters or a leading `/`)")]
    InvalidRevision(String),

    #[error("{url}: the answer does not follow the Hub's protocol: {what} (is HF_ENDPOINT a Hugging Face Hub?)")]
    Protocol { url: String, what: String },

    #[error("`{repo}`: {what}")]
    Files { repo: String, what: String },

    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn gated_hint(authenticated: bool, endpoint: &str, repo: &str) -> String {
    if authenticated {
        format!("your token is not on its authorized list; ask for access at {endpoint}/{repo} and run again once it is granted")
    } else {
        format!("accept its conditions at {endpoint}/{repo}, then use a token with access (HF_TOKEN or the token file)")
    }
}

fn fmt_message(m: &Option<String>) -> String {
    match m {
        Some(m) if !m.is_empty() => format!(": {m}"),
        _ => String::new(),
    }
}

impl Error {
    /// A stable name for the kind of error (used as the JavaScript exception's `kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::RepoNotFound { .. } => "RepoNotFound",
            Error::RevisionNotFound { .. } => "RevisionNotFound",
            Error::EntryNotFound { .. } => "EntryNotFound",
            Error::GatedRepo { .. } => "GatedRepo",
            Error::InvalidToken { .. } => "InvalidToken",
            Error::RateLimited { .. } => "RateLimited",
            Error::Server { .. } => "ServerError",
            Error::Http { .. } => "HttpError",
            Error::Network { .. } => "NetworkError",
            Error::Integrity { .. } => "IntegrityError",
            Error::NotCached { .. } => "NotCached",
            Error::UnsafePath { .. } => "UnsafePath",
            Error::InvalidRepoId(_) => "InvalidRepoId",
            Error::InvalidRevision(_) => "InvalidRevision",
            Error::Protocol { .. } => "ProtocolError",
            Error::Files { .. } => "RepoFiles",
            Error::Io { .. } => "IoError",
        }
    }

    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_string(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// What an error answer carried.
pub struct Refusal<'a> {
    pub url: &'a str,
    pub status: u16,
    /// `X-Error-Code`.
    pub code: Option<&'a str>,
    /// `X-Error-Message`, or the JSON body's `error`.
    pub message: Option<String>,
    /// Whether the request carried a token.
    pub authenticated: bool,
}

/// The typed error for a Hub refusal, mapped in the order of huggingface_hub's
/// `hf_raise_for_status` (shared by the native and browser clients).
pub fn refusal_error(
    repo: &crate::Repo,
    path: Option<&str>,
    endpoint: &str,
    r: Refusal<'_>,
) -> Error {
    match r.code {
        Some("RevisionNotFound") => Error::RevisionNotFound {
            repo: repo.to_string(),
            revision: repo.revision.clone(),
        },
        Some("EntryNotFound") => Error::EntryNotFound {
            repo: repo.to_string(),
            revision: repo.revision.clone(),
            path: path.unwrap_or("").to_string(),
        },
        Some("GatedRepo") => Error::GatedRepo {
            repo: repo.to_string(),
            endpoint: endpoint.to_string(),
            authenticated: r.authenticated,
        },
        _ if r.status == 401
            && r.message.as_deref() == Some("Invalid credentials in Authorization header") =>
        {
            Error::InvalidToken {
                endpoint: endpoint.to_string(),
            }
        }
        // The Hub answers 401 for a missing repository to anonymous callers.
        Some("RepoNotFound") | None if r.status == 401 || r.code.is_some() => Error::RepoNotFound {
            repo: repo.to_string(),
            endpoint: endpoint.to_string(),
        },
        _ => Error::Http {
            url: r.url.to_string(),
            status: r.status,
            message: r.message,
        },
    }
}
