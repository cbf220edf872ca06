// graft for the web: the PEFT guide's API (transformers' PeftAdapterMixin, transformers.js
// habits) over graft's WebAssembly build. Works from the main thread and from Web Workers.
import init, { loadModel } from "./wasm/graft_wasm.js";

let ready = null;

/** Loads the WebAssembly module once (also done lazily by every call). */
export function initialize(module_or_path) {
  if (!ready) {
    ready = init(
      module_or_path ? { module_or_path } : { module_or_path: new URL("./wasm/graft_wasm_bg.wasm", import.meta.url) },
    );
  }
  return ready;
}

/** Defaults for every call; each call's options override them. */
export const env = {
  /** The Hub's address (a local Hub in tests). */
  endpoint: "https://huggingface.co",
  /** Only for private or gated repositories. */
  token: undefined,
  /** The Cache API cache downloads are kept in (`false`: no caching). */
  cache: "graft-hub",
};

function hubOptions(options = {}) {
  return {
    endpoint: options.endpoint ?? env.endpoint,
    token: options.token ?? env.token,
    cache: options.cache ?? env.cache,
    revision: options.revision,
    device: options.device ?? "auto",
    dtype: options.dtype,
    gguf_file: options.gguf_file,
    max_context: options.max_context,
    base_model: options.base_model,
  };
}

/** Streams generated text: `new TextStreamer(tokenizer, { callback_function, skip_special_tokens })`. */
export class TextStreamer {
  constructor(tokenizer, { callback_function, skip_special_tokens = true } = {}) {
    this.tokenizer = tokenizer;
    this.callback_function = callback_function ?? ((text) => console.log(text));
    this.skip_special_tokens = skip_special_tokens;
    this.ids = [];
    this.printed = "";
  }
  put(id) {
    this.ids.push(id);
    const text = this.tokenizer.decode(this.ids, { skip_special_tokens: this.skip_special_tokens });
    if (text.startsWith(this.printed) && text.length > this.printed.length) {
      const fresh = text.slice(this.printed.length);
      this.printed = text;
      this.callback_function(fresh);
    }
  }
  end() {}
}

/** The tokenizer that came with a model (tokenizer.json or the GGUF's vocabulary). */
export class PreTrainedTokenizer {
  constructor(model) {
    this._m = model;
  }
  encode(text, { add_special_tokens = true } = {}) {
    return Array.from(this._m.encode(text, add_special_tokens));
  }
  decode(ids, { skip_special_tokens = true } = {}) {
    return this._m.decode(Uint32Array.from(ids), skip_special_tokens);
  }
  /** As transformers: returns the prompt text, or ids with `tokenize: true`. */
  apply_chat_template(messages, { add_generation_prompt = false, tokenize = false } = {}) {
    const text = this._m.apply_chat_template(messages, add_generation_prompt);
    return tokenize ? this.encode(text, { add_special_tokens: false }) : text;
  }
  get eos_token_ids() {
    return Array.from(this._m.eos_token_ids());
  }
}

/** A causal LM with PEFT adapters (the mixin's calls, same names). */
export class PreTrainedModel {
  constructor(inner) {
    this._m = inner;
    this.tokenizer = inner.has_tokenizer() ? new PreTrainedTokenizer(inner) : null;
  }
  /** "webgpu" or "cpu". */
  get device() {
    return this._m.device;
  }
  /** Why that device runs (the WebGPU adapter, or why WebGPU was not used). */
  get device_note() {
    return this._m.device_note;
  }
  get name_or_path() {
    return this._m.name_or_path;
  }
  /** `load_adapter(repo_id, { adapter_name, revision, token, subfolder })`; resolves to load warnings. */
  async load_adapter(repo_id, options = {}) {
    const o = { adapter_name: "default", ...options };
    return this._m.load_adapter(repo_id, o);
  }
  /** `add_adapter(config, adapter_name)` with a PEFT config object (`{ peft_type: "LORA", r, … }`). */
  async add_adapter(config, adapter_name = "default", { seed = 0 } = {}) {
    this._m.add_adapter(config, adapter_name, seed);
  }
  set_adapter(names) {
    this._m.set_adapter(names);
  }
  enable_adapters() {
    this._m.enable_adapters();
  }
  disable_adapters() {
    this._m.disable_adapters();
  }
  active_adapters() {
    return Array.from(this._m.active_adapters());
  }
  delete_adapter(names) {
    this._m.delete_adapter(names);
  }
  /** name → { dtype, shape, data: Float32Array } */
  get_adapter_state_dict(adapter_name) {
    return this._m.get_adapter_state_dict(adapter_name ?? null);
  }
  /** The files PEFT's `save_pretrained` writes, as Blobs by relative path. */
  async save_pretrained(adapter_names) {
    const files = this._m.save_pretrained(adapter_names ?? null);
    const out = {};
    for (const [path, bytes] of Object.entries(files)) {
      const type = path.endsWith(".json") ? "application/json" : "application/octet-stream";
      out[path] = new Blob([bytes], { type });
    }
    return out;
  }
  /** One forward pass: `{ data: Float32Array, dims: [tokens, vocab] }`. */
  async logits(input_ids) {
    return this._m.logits(Uint32Array.from(input_ids));
  }
  /**
   * Generation. `input` is token ids, a prompt string, or chat messages (the chat template is
   * applied). Resolves to the new text (or the new ids when `input` was ids).
   * Options: max_new_tokens, do_sample, temperature, top_k, top_p, seed, streamer, on_token.
   */
  async generate(input, options = {}) {
    const { streamer, on_token, ...gen } = options;
    let ids;
    let asText = true;
    if (typeof input === "string") {
      ids = this._needTokenizer().encode(input);
    } else if (Array.isArray(input) && input.length && typeof input[0] === "object") {
      ids = this._needTokenizer().apply_chat_template(input, { add_generation_prompt: true, tokenize: true });
    } else {
      ids = Array.from(input);
      asText = false;
    }
    const cb = (id) => {
      if (streamer) streamer.put(id);
      if (on_token) on_token(id);
    };
    const out = await this._m.generate(Uint32Array.from(ids), gen, cb);
    if (streamer) streamer.end();
    return asText && this.tokenizer ? this.tokenizer.decode(Array.from(out)) : Array.from(out);
  }
  _needTokenizer() {
    if (!this.tokenizer) throw new Error("this model has no tokenizer; pass token ids");
    return this.tokenizer;
  }
  /** Frees the model's memory (wasm and GPU) now rather than at garbage collection. */
  dispose() {
    this._m.free();
  }
}

export class AutoModelForCausalLM {
  /**
   * `from_pretrained(repo_id, { device, dtype, revision, token, endpoint, progress_callback })`:
   * a base model, or an adapter repo whose `base_model_name_or_path` names the base.
   */
  static async from_pretrained(repo_id, options = {}) {
    await initialize();
    const inner = await loadModel(repo_id, hubOptions(options), options.progress_callback ?? null);
    return new PreTrainedModel(inner);
  }
}

export class AutoTokenizer {
  /** The tokenizer of a repository (loads its files; for a GGUF repo, the GGUF's vocabulary). */
  static async from_pretrained(repo_id, options = {}) {
    const model = await AutoModelForCausalLM.from_pretrained(repo_id, { ...options, device: "cpu" });
    return model._needTokenizer();
  }
}
