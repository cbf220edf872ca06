//! `graft download`: files of a Hub repository into the cache shared with huggingface_hub.

use graft_hub::{Repo, RepoType};

use super::model::HubArgs;
use crate::CliResult;

pub fn download(
    spec: &str,
    files: &[String],
    repo_type: &str,
    quiet: bool,
    hub_args: &HubArgs,
) -> CliResult<()> {
    let (id, rev) = graft_models::hub::split_revision(spec);
    let rtype = RepoType::parse(repo_type).unwrap_or_default();
    let repo = Repo::new(id, rtype, rev.or(hub_args.revision.as_deref()))?;
    let mut hub = hub_args.hub();
    if quiet {
        hub = hub.with_quiet(true);
    }
    if files.is_empty() {
        println!("{}", hub.snapshot(&repo)?.display());
        return Ok(());
    }
    for f in files {
        println!("{}", hub.download(&repo, f)?.display());
    }
    Ok(())
}
