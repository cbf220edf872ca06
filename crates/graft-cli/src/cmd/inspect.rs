//! `graft inspect`: a model's configuration as graft understood it, and an adapter's load
//! report.

use graft_adapters::files::read_adapter_dir;
use graft_models::{LoadAdapterOptions, Model};

use super::model::HubArgs;
use crate::CliResult;

pub fn inspect(
    spec: Option<&str>,
    model: Option<&str>,
    allow_partial: bool,
    hub_args: &HubArgs,
) -> CliResult<()> {
    let hub = hub_args.hub();
    let Some(spec) = spec else {
        let Some(model) = model else {
            return Err("inspect needs an adapter, or --model".into());
        };
        let base = graft_models::hub::resolve(&hub, model, hub_args.revision.as_deref(), None)?;
        let m = Model::open_base(&base.base)?;
        println!("model: {}", base.base.display());
        print!("{}", m.understood());
        return Ok(());
    };
    let adapter = graft_models::hub::adapter_dir(&hub, spec, hub_args.revision.as_deref(), None)?;
    let files = read_adapter_dir(&adapter, None)?;
    let cfg = &files.config;
    println!("adapter: {spec}");
    if adapter.display().to_string() != spec {
        println!("files: {}", adapter.display());
    }
    println!("peft_type: {}", cfg.peft_type.as_str());
    println!(
        "base_model_name_or_path: {}",
        cfg.base_model_name_or_path.as_deref().unwrap_or("null")
    );
    if !cfg.unknown_keys.is_empty() {
        println!(
            "unknown config keys (kept, ignored): {:?}",
            cfg.unknown_keys
        );
    }
    println!("tensors in file: {}", files.tensors.len());
    let base = match model {
        Some(m) => Some(graft_models::hub::resolve(&hub, m, None, None)?.base),
        // Only a local or cached base: inspecting should not start a model download.
        None => {
            let offline = hub.with_offline(true);
            graft_models::hub::resolve_base(
                &offline,
                &adapter,
                cfg.base_model_name_or_path.as_deref(),
                None,
            )
            .ok()
        }
    };
    let Some(base) = base else {
        println!(
            "(no local base model: pass --model to see which modules the adapter attaches to)"
        );
        for (k, t) in &files.tensors {
            println!("  {k} {:?} {:?}", t.tensor.dims(), t.dtype);
        }
        return Ok(());
    };
    let mut m = Model::open_base(&base)?;
    println!("base: {}", base.display());
    print!("{}", m.understood());
    let opts = LoadAdapterOptions {
        allow_partial,
        ..Default::default()
    };
    let report = m.load_adapter_from_state(files.config.clone(), files.tensors.clone(), opts)?;
    print!("{report}");
    Ok(())
}
