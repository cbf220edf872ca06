// Types of graft's JavaScript API (the PEFT guide's names).

export declare function initialize(module_or_path?: string | URL | Request | BufferSource | WebAssembly.Module): Promise<unknown>;

export declare const env: {
  endpoint: string;
  token: string | undefined;
  cache: string | false;
};

/** A graft error: `kind` names it (e.g. "RepoNotFound", "EntryNotFound", "NetworkError", "AdapterError"). */
export interface GraftError extends Error {
  name: "GraftError";
  kind: string;
  /** What to change in the call's options, where there is such a fix (also in `message`). */
  hint?: string;
}

export interface ProgressInfo {
  status: "initiate" | "progress" | "done";
  file: string;
  loaded?: number;
  total?: number;
  progress?: number;
}

export interface FromPretrainedOptions {
  device?: "webgpu" | "cpu" | "auto";
  /** A GGUF quantization to pick among a repo's files (e.g. "q4_1"), or int8/nf4/q8_0/q4_0 to quantize safetensors while loading. */
  dtype?: string;
  gguf_file?: string;
  revision?: string;
  token?: string;
  endpoint?: string;
  cache?: string | false;
  max_context?: number;
  /** The base for an adapter whose base_model_name_or_path is missing. */
  base_model?: string;
  progress_callback?: (info: ProgressInfo) => void;
}

export interface LoadAdapterOptions {
  adapter_name?: string;
  revision?: string;
  token?: string;
  subfolder?: string;
  is_trainable?: boolean;
}

export interface TensorEntry {
  dtype: string;
  shape: number[];
  data: Float32Array;
}

export interface GenerateOptions {
  max_new_tokens?: number;
  do_sample?: boolean;
  temperature?: number;
  top_k?: number;
  top_p?: number;
  seed?: number;
  streamer?: { put(id: number): void; end(): void };
  on_token?: (id: number) => void;
}

export interface ChatMessage {
  role: string;
  content: string;
}

export declare class TextStreamer {
  constructor(tokenizer: PreTrainedTokenizer, options?: { callback_function?: (text: string) => void; skip_special_tokens?: boolean });
  put(id: number): void;
  end(): void;
}

export declare class PreTrainedTokenizer {
  encode(text: string, options?: { add_special_tokens?: boolean }): number[];
  decode(ids: ArrayLike<number>, options?: { skip_special_tokens?: boolean }): string;
  apply_chat_template(messages: ChatMessage[], options?: { add_generation_prompt?: boolean; tokenize?: false }): string;
  apply_chat_template(messages: ChatMessage[], options: { add_generation_prompt?: boolean; tokenize: true }): number[];
  readonly eos_token_ids: number[];
}

export declare class PreTrainedModel {
  readonly device: "webgpu" | "cpu";
  readonly device_note: string;
  readonly name_or_path: string;
  readonly tokenizer: PreTrainedTokenizer | null;
  load_adapter(repo_id: string, options?: LoadAdapterOptions): Promise<string[]>;
  add_adapter(config: Record<string, unknown>, adapter_name?: string, options?: { seed?: number }): Promise<void>;
  set_adapter(names: string | string[]): void;
  enable_adapters(): void;
  disable_adapters(): void;
  active_adapters(): string[];
  delete_adapter(names: string | string[]): void;
  get_adapter_state_dict(adapter_name?: string): Record<string, TensorEntry>;
  save_pretrained(adapter_names?: string[]): Promise<Record<string, Blob>>;
  logits(input_ids: ArrayLike<number>): Promise<{ data: Float32Array; dims: number[] }>;
  generate(input: string | ChatMessage[], options?: GenerateOptions): Promise<string>;
  generate(input: ArrayLike<number>, options?: GenerateOptions): Promise<number[]>;
  dispose(): void;
}

export declare class AutoModelForCausalLM {
  static from_pretrained(repo_id: string, options?: FromPretrainedOptions): Promise<PreTrainedModel>;
}

export declare class AutoTokenizer {
  static from_pretrained(repo_id: string, options?: FromPretrainedOptions): Promise<PreTrainedTokenizer>;
}
