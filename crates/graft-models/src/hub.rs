//! Models and adapters by Hub repo id (native builds): `from_pretrained("org/adapter")` reads
//! the adapter's `base_model_name_or_path`, fetches that base and then the adapter, as the
//! PEFT guide's first example does in Python.

use std::path::{Path, PathBuf};

use graft_adapters::files::{is_adapter_dir, read_adapter_config};
use graft_adapters::LoadReport;
pub use graft_hub::{Hub, HubOptions, Repo, RepoType};

use crate::error::{Error, Result};
use crate::model::{
    known_model, local_base, local_known_model, named_base, LoadAdapterOptions, Model, OpenOptions,
};

/// What a model argument resolved to: the base (a folder or a GGUF file) and, when the
/// argument was an adapter, the adapter's folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub base: PathBuf,
    pub adapter: Option<PathBuf>,
    /// The base's Hub id when it came from the Hub or a known model's local stand-in: the
    /// `name_or_path` transformers records (and PEFT writes as an adapter's
    /// `base_model_name_or_path`), rather than a cache or `models/` path.
    pub base_id: Option<String>,
}

/// Splits `org/name@revision`; an existing local path is returned whole.
pub fn split_revision(spec: &str) -> (&str, Option<&str>) {
    if Path::new(spec).exists() {
        return (spec, None);
    }
    graft_hub::repo::split_revision(spec)
}

/// A local path, or a repo id fetched into the cache. A string that is neither an existing
/// path nor a valid repo id is reported as a missing path.
fn local_or_repo(spec: &str, revision: Option<&str>) -> Result<std::result::Result<PathBuf, Repo>> {
    let (id, rev) = split_revision(spec);
    let p = Path::new(id);
    if p.exists() {
        return Ok(Ok(p.to_path_buf()));
    }
    if graft_hub::repo::validate_repo_id(id).is_err() {
        return Err(Error::BaseModel(format!(
            "`{spec}` is neither an existing path nor a Hub repo id (`org/name`)"
        )));
    }
    Ok(Err(Repo::new(id, RepoType::Model, rev.or(revision))?))
}

/// The base an adapter names: `base_model_name_or_path` as a local path (absolute, relative to
/// the working directory or to the adapter), the embedded default model for its Hub id, else
/// that repo on the Hub.
pub fn resolve_base(
    hub: &Hub,
    adapter_dir: &Path,
    base: Option<&str>,
    gguf_file: Option<&str>,
) -> Result<PathBuf> {
    let base = named_base(adapter_dir, base)?;
    // A GGUF file asked for by name comes from the repository, not the local stand-in.
    if let Some(p) = local_base(adapter_dir, base) {
        let stand_in = known_model(base).is_some_and(|k| k.path() == p);
        if gguf_file.is_none() || !stand_in {
            return Ok(p);
        }
    }
    let (id, rev) = split_revision(base);
    if graft_hub::repo::validate_repo_id(id).is_err() {
        return Err(Error::BaseModel(format!(
            "the adapter's base_model_name_or_path `{base}` is neither a local model nor a Hub repo id; give the base explicitly"
        )));
    }
    let repo = Repo::new(id, RepoType::Model, rev)?;
    Ok(hub.fetch_model(&repo, gguf_file)?)
}

/// The local GGUF of a [`crate::model::KnownModel`] that a model argument names by its Hub id,
/// when it is there. A revision or a GGUF file asked for by name means the repository itself,
/// so neither is answered by the stand-in; nor is an id that is also an existing local path.
pub fn stand_in(spec: &str, revision: Option<&str>, gguf_file: Option<&str>) -> Option<PathBuf> {
    if revision.is_some() || gguf_file.is_some() || Path::new(spec).exists() {
        return None;
    }
    match graft_hub::repo::split_revision(spec) {
        (id, None) => local_known_model(id),
        (_, Some(_)) => None,
    }
}

/// Resolves a model argument (local path or repo id, optionally `@revision`). A repository or
/// folder holding `adapter_config.json` is an adapter: its base comes from
/// `base_model_name_or_path`. The Hub id of a known model whose GGUF has been fetched into
/// `models/` resolves to that file ([`stand_in`]).
pub fn resolve(
    hub: &Hub,
    spec: &str,
    revision: Option<&str>,
    gguf_file: Option<&str>,
) -> Result<Resolved> {
    if let Some(base) = stand_in(spec, revision, gguf_file) {
        return Ok(Resolved {
            base,
            adapter: None,
            base_id: Some(spec.to_string()),
        });
    }
    let adapter = match local_or_repo(spec, revision)? {
        Ok(path) if is_adapter_dir(&path) => path,
        Ok(path) => {
            return Ok(Resolved {
                base: path,
                adapter: None,
                base_id: None,
            })
        }
        Err(repo) => {
            if !hub.is_adapter_repo(&repo, None)? {
                return Ok(Resolved {
                    base: hub.fetch_model(&repo, gguf_file)?,
                    adapter: None,
                    base_id: Some(repo.id.clone()),
                });
            }
            hub.fetch_adapter(&repo, None)?
        }
    };
    let cfg = read_adapter_config(&adapter)?;
    let base = resolve_base(
        hub,
        &adapter,
        cfg.base_model_name_or_path.as_deref(),
        gguf_file,
    )?;
    // A base found as a local path (other than a known model's stand-in) keeps its path.
    let base_id = cfg.base_model_name_or_path.clone().filter(|b| {
        local_base(&adapter, b).is_none_or(|p| known_model(b).is_some_and(|k| k.path() == p))
    });
    Ok(Resolved {
        base,
        adapter: Some(adapter),
        base_id: base_id.map(|b| split_revision(&b).0.to_string()),
    })
}

/// The folder of an adapter argument: a local folder, or the repo (at `revision`, in
/// `subfolder`) fetched into the cache.
pub fn adapter_dir(
    hub: &Hub,
    spec: &str,
    revision: Option<&str>,
    subfolder: Option<&str>,
) -> Result<PathBuf> {
    match local_or_repo(spec, revision)? {
        Ok(path) => Ok(path),
        Err(repo) => Ok(hub.fetch_adapter(&repo, subfolder)?),
    }
}

impl Model {
    /// `AutoModelForCausalLM.from_pretrained(id_or_path, revision=…)`: a base model, or an
    /// adapter whose base is fetched from `base_model_name_or_path` (the adapter then loads
    /// as `"default"`).
    pub fn from_pretrained_hub(
        hub: &Hub,
        spec: &str,
        revision: Option<&str>,
        open: &OpenOptions,
    ) -> Result<Self> {
        let r = resolve(hub, spec, revision, None)?;
        let mut model = Model::open_base_with(&r.base, open)?;
        if let Some(a) = r.adapter {
            model.load_adapter(&a, LoadAdapterOptions::default())?;
        }
        Ok(model)
    }

    /// `load_adapter(id_or_path, revision=…, token=…)`: the token is the Hub client's
    /// (see [`Hub::with_token`]); `opts.subfolder` selects a subfolder of the repository.
    pub fn load_adapter_hub(
        &mut self,
        hub: &Hub,
        spec: &str,
        revision: Option<&str>,
        opts: LoadAdapterOptions,
    ) -> Result<LoadReport> {
        let (dir, opts) = adapter_folder(hub, spec, revision, opts)?;
        self.load_adapter(&dir, opts)
    }

    /// [`Model::load_adapter_hub`] without joining the registry (see
    /// [`Model::build_adapter_dir`]).
    pub fn build_adapter_hub(
        &self,
        hub: &Hub,
        spec: &str,
        revision: Option<&str>,
        opts: LoadAdapterOptions,
    ) -> Result<graft_adapters::Adapter> {
        let (dir, opts) = adapter_folder(hub, spec, revision, opts)?;
        self.build_adapter_dir(&dir, opts)
    }
}

/// The local folder of an adapter given as a path or a Hub repo id, and the options to load it
/// from there (a repository's subfolder is already applied to the fetched folder).
fn adapter_folder(
    hub: &Hub,
    spec: &str,
    revision: Option<&str>,
    opts: LoadAdapterOptions,
) -> Result<(std::path::PathBuf, LoadAdapterOptions)> {
    let dir = adapter_dir(hub, spec, revision, opts.subfolder.as_deref())?;
    let opts = if local_or_repo(spec, revision)?.is_err() {
        LoadAdapterOptions {
            subfolder: None,
            ..opts
        }
    } else {
        opts
    };
    Ok((dir, opts))
}
