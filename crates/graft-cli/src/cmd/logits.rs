//! `graft logits`: one forward pass, the logits written to a safetensors file.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::DType;
use graft_adapters::tensors::{serialize_safetensors, LoadedTensor};

use super::model::{open, to_device, ModelArgs};
use crate::CliResult;

pub fn logits(args: &ModelArgs, tokens: &[u32], out: &Path) -> CliResult<()> {
    let (mut model, _) = open(args)?;
    to_device(args, &mut model)?;
    let t0 = Instant::now();
    let logits = model.logits(tokens)?;
    let mut map = BTreeMap::new();
    map.insert(
        "logits".to_string(),
        LoadedTensor {
            tensor: logits.clone(),
            dtype: DType::F32,
        },
    );
    std::fs::write(out, serialize_safetensors(&map)?)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    eprintln!(
        "graft: logits {:?} written to {} ({:.1} ms)",
        logits.dims(),
        out.display(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
