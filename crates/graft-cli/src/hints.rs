//! What to do about an error, in this tool's terms. The libraries describe the problem; the
//! flags that fix it are the CLI's to name (the browser package names its own options).

use std::error::Error as StdError;
use std::fmt;

/// An error with the context the CLI added and the hint for its cause.
#[derive(Debug)]
pub struct Hinted {
    msg: String,
    hint: Option<String>,
}

impl fmt::Display for Hinted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl StdError for Hinted {}

impl Hinted {
    /// `e`'s message with `extra` added to its hint (or as its hint, where it has none).
    pub fn adding(e: &(dyn StdError + 'static), extra: String) -> Hinted {
        Hinted {
            msg: e.to_string(),
            hint: Some(match hint(e) {
                Some(h) => format!("{h}; or {extra}"),
                None => extra,
            }),
        }
    }
}

/// `context: e`, keeping the hint for `e` (which the new message's type would lose).
pub fn context(context: impl fmt::Display, e: &(dyn StdError + 'static)) -> Hinted {
    Hinted {
        msg: format!("{context}: {e}"),
        hint: hint(e),
    }
}

/// The hint for an error, looking through the chain of sources.
pub fn hint(e: &(dyn StdError + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(e) = cur {
        if let Some(h) = one(e) {
            return Some(h);
        }
        cur = e.source();
    }
    None
}

fn one(e: &(dyn StdError + 'static)) -> Option<String> {
    if let Some(h) = e.downcast_ref::<Hinted>() {
        return h.hint.clone();
    }
    if let Some(e) = e.downcast_ref::<graft_models::Error>() {
        use graft_models::Error as E;
        return match e {
            E::Gpu(g) => one(g),
            E::Hub(h) => one(h),
            E::Core(c) => one(c),
            E::BaseModel(m) if m.contains("base_model_name_or_path") => {
                Some("pass the base model with --model PATH_OR_REPO".into())
            }
            E::BaseModel(m) if m.contains("quantizing while loading") => {
                Some("--quantize is for safetensors models; drop it for a GGUF file".into())
            }
            E::TooLong { .. } => Some("use a shorter prompt".into()),
            E::NoGpu(_) => Some("run with --device cpu or --device auto".into()),
            _ => None,
        };
    }
    if let Some(e) = e.downcast_ref::<graft_gpu::Error>() {
        use graft_gpu::Error as E;
        return match e {
            E::NoAdapter(_) => Some("run with --device cpu (or --device auto), or install a Vulkan, Metal or DX12 driver; Mesa's lavapipe gives a software one (apt-get install mesa-vulkan-drivers)".into()),
            E::Unsupported(_) => Some("run with --device cpu".into()),
            E::LimitExceeded { what, .. } if what.contains("KV cache") => {
                Some("raise --max-context".into())
            }
            E::OutOfMemory(_) | E::LimitExceeded { .. } => {
                Some("a smaller --max-context, or --device cpu".into())
            }
            _ => None,
        };
    }
    if let Some(e) = e.downcast_ref::<graft_hub::Error>() {
        use graft_hub::Error as E;
        return match e {
            E::RepoNotFound { .. } | E::GatedRepo { .. } | E::InvalidToken { .. } => {
                Some("pass a token with --token (or set HF_TOKEN)".into())
            }
            E::NotCached { repo, path, .. } => Some(format!(
                "run once without --offline (e.g. `graft download {repo} {path}`)"
            )),
            E::Server { .. } | E::Network { .. } => {
                Some("--offline runs from the files already cached".into())
            }
            E::Files { what, .. } if what.contains("several GGUF files") => {
                Some("choose one with --gguf-file NAME".into())
            }
            _ => None,
        };
    }
    if let Some(graft_text::Error::NoChatTemplate) = e.downcast_ref::<graft_text::Error>() {
        return Some(
            "a base model takes plain text: pass the prompt without --chat/--system, or ids with --tokens"
                .into(),
        );
    }
    if let Some(e) = e.downcast_ref::<graft_adapters::Error>() {
        return match e {
            graft_adapters::Error::AdapterMismatch { .. } => {
                Some("--allow-partial loads what fits, with warnings".into())
            }
            _ => None,
        };
    }
    if let Some(e) = e.downcast_ref::<graft_train::Error>() {
        return match e {
            graft_train::Error::BadLine { .. } => {
                Some("--skip-bad-lines reports such lines and skips them".into())
            }
            graft_train::Error::NonFiniteLoss { .. } => Some(
                "--resume continues from the last checkpoint (with a lower --lr); --save-steps saves them more often".into(),
            ),
            graft_train::Error::Model(m) => one(m.as_ref()),
            _ => None,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_the_flag_and_survive_context() {
        let e = graft_models::Error::Gpu(graft_gpu::Error::Unsupported("x".into()));
        assert_eq!(hint(&e).as_deref(), Some("run with --device cpu"));
        let wrapped = context("adapter `a`", &e);
        assert_eq!(hint(&wrapped).as_deref(), Some("run with --device cpu"));
        let hub = graft_hub::Error::InvalidRepoId("x".into());
        assert_eq!(hint(&hub), None);
    }

    #[test]
    fn added_hints_keep_the_cause_and_its_hint() {
        let e = graft_hub::Error::InvalidRepoId("x".into());
        let h = Hinted::adding(&e, "fetch it".into());
        assert_eq!(h.to_string(), e.to_string());
        assert_eq!(hint(&h).as_deref(), Some("fetch it"));
        let e = graft_models::Error::NoGpu("none".into());
        let h = Hinted::adding(&e, "fetch it".into());
        assert_eq!(
            hint(&h).as_deref(),
            Some("run with --device cpu or --device auto; or fetch it")
        );
        let h = hint(&graft_text::Error::NoChatTemplate).unwrap_or_default();
        assert!(h.contains("--chat") && h.contains("--tokens"), "{h}");
    }
}
