//! graft's Hugging Face Hub client.
//!
//! - Repo ids, revisions (branch, tag, commit), subfolders, model and dataset repos; every
//!   name is validated before it reaches a URL or a path ([`repo`]).
//! - Natively ([`Hub`]): huggingface_hub's cache layout and environment variables, so
//!   graft and Python share downloads; every download is verified against the Hub's ETag
//!   (sha256 for LFS files, git blob sha1 otherwise) before it enters the cache, resumes
//!   with `Range` after an interruption, and is serialised between processes by the blob's
//!   lock file.
//! - In the browser (`browser`, wasm32 only): the same protocol over `fetch`, with the file
//!   list from the JSON API and files kept in the Cache API under their commit.

pub mod error;
pub mod info;
pub mod options;
pub mod repo;
pub mod verify;

#[cfg(not(target_arch = "wasm32"))]
mod bar;
#[cfg(not(target_arch = "wasm32"))]
pub mod cache;
#[cfg(not(target_arch = "wasm32"))]
mod native;

#[cfg(target_arch = "wasm32")]
pub mod browser;

pub use error::{Error, Result};
pub use info::{ModelLayout, RepoInfo, Sibling};
pub use options::{HubOptions, Progress, ProgressFn, DEFAULT_ENDPOINT};
pub use repo::{looks_like_repo_id, Repo, RepoType, Token, DEFAULT_REVISION};

#[cfg(not(target_arch = "wasm32"))]
pub use cache::Cache;
#[cfg(not(target_arch = "wasm32"))]
pub use native::{FileMetadata, Hub};
