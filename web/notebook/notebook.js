// graft's notebook: the steps of transformers' "Load adapters with 🤗 PEFT" guide as cells that
// run live in the browser through graft's npm package (../npm/index.js).
//
// Every cell's code is the body of an async function; cells share state through `ctx`, and get
// `print`, `stream`, `table`, `progress_callback`, graft's exports and the page's constants.
// Tests drive the page with `window.runCell(n)` / `window.runAll()` and read `window.notebook`.

// The package is imported dynamically (same relative path as `import * as graft from
// "../npm/index.js"`) so that the page still renders, and says why, if the WebAssembly build
// is missing.
const graftReady = import("../npm/index.js");

// ---------------------------------------------------------------------------------------------
// Parameters: URL query overrides (what the tests use), substituted into the cells' code.

const query = new URLSearchParams(location.search);
const param = (name, fallback) => {
  const v = query.get(name);
  return v === null || v.trim() === "" ? fallback : v.trim();
};
const positiveInt = (v, fallback) => {
  const n = Number.parseInt(v, 10);
  return Number.isFinite(n) && n > 0 ? n : fallback;
};

const P = {
  ENDPOINT: param("endpoint", "https://huggingface.co"),
  BASE: param("base", "HuggingFaceTB/SmolLM2-135M-Instruct"),
  ADAPTER: param("adapter", "graft-rs/smollm2-pirate-lora"),
  TINY: param("tiny", "graft-rs/tiny-llama"),
  DEVICE: param("device", "auto"),
  MAX_NEW_TOKENS: positiveInt(query.get("max_new_tokens"), 24),
  PROMPT: query.get("prompt") ?? "What is the capital of France?",
};
P.SHORT_NEW_TOKENS = Math.min(P.MAX_NEW_TOKENS, 12);

// ---------------------------------------------------------------------------------------------
// The cells. `@NAME@` in the code is replaced by the JSON literal of P.NAME on load, so the
// code on the page is exactly what runs.

const CELLS = [
  {
    title: "Load a base model and a PEFT adapter",
    about:
      "Fetch a 4-bit GGUF of the base model from the Hub, then put a LoRA adapter on top of it with load_adapter, under the name \u201cpirate\u201d.",
    code: `// Re-running this cell starts over with a fresh model.
ctx.model?.dispose();

ctx.model = await AutoModelForCausalLM.from_pretrained(@BASE@, {
  device: @DEVICE@,
  dtype: "q4_1",
  progress_callback,
});
const warnings = await ctx.model.load_adapter(@ADAPTER@, {
  adapter_name: "pirate",
});
if (warnings.length) print("warnings:", warnings);

print("active adapters:", ctx.model.active_adapters());
print("device:", ctx.model.device, "\u2014", ctx.model.device_note);`,
  },
  {
    title: "Or load straight from the adapter repo",
    about:
      "An adapter repo is enough: its adapter_config.json names the base (base_model_name_or_path), which is loaded first and the adapter put on it.",
    code: `const fromAdapter = await AutoModelForCausalLM.from_pretrained(@ADAPTER@, {
  device: @DEVICE@,
  dtype: "q4_1",
  progress_callback,
});
print("name_or_path:", fromAdapter.name_or_path);
print("active adapters:", fromAdapter.active_adapters());

// The next cells keep using cell 1's ctx.model: free this one.
fromAdapter.dispose();`,
  },
  {
    title: "Generate with the adapter",
    about:
      "Chat messages go through the model's chat template; a TextStreamer hands each new piece of text to the output as it is generated.",
    code: `ctx.messages = [{ role: "user", content: @PROMPT@ }];
print("user:", ctx.messages[0].content);
print("pirate:");

const streamer = new TextStreamer(ctx.model.tokenizer, { callback_function: stream });
ctx.answer = await ctx.model.generate(ctx.messages, {
  max_new_tokens: @MAX_NEW_TOKENS@,
  streamer,
});`,
  },
  {
    title: "Disable and enable adapters",
    about:
      "disable_adapters() runs the base model alone; enable_adapters() switches the adapter back on \u2014 same prompt, two answers.",
    code: `ctx.messages ??= [{ role: "user", content: @PROMPT@ }];
const max_new_tokens = @MAX_NEW_TOKENS@;
const streamer = () => new TextStreamer(ctx.model.tokenizer, { callback_function: stream });

ctx.model.disable_adapters();
print("base:");
await ctx.model.generate(ctx.messages, { max_new_tokens, streamer: streamer() });

ctx.model.enable_adapters();
print("pirate:");
await ctx.model.generate(ctx.messages, { max_new_tokens, streamer: streamer() });`,
  },
  {
    title: "Load the base in 8-bit / 4-bit",
    about:
      "Safetensors weights can be quantized while loading, like bitsandbytes' load_in_8bit / load_in_4bit: int8 and NF4, compared here with the f32 load on a tiny model.",
    code: `const ids = [1, 5, 17, 42];
const fmt = (xs) => Array.from(xs, (x) => x.toFixed(3).padStart(7)).join(" ");

const tiny = @TINY@;
const opts = { device: @DEVICE@, progress_callback };
const f32 = await AutoModelForCausalLM.from_pretrained(tiny, opts);
const int8 = await AutoModelForCausalLM.from_pretrained(tiny, { ...opts, dtype: "int8" });
const nf4 = await AutoModelForCausalLM.from_pretrained(tiny, { ...opts, dtype: "nf4" });

const ref = await f32.logits(ids);
print("logits dims:", ref.dims);
print("f32  first logits:", fmt(ref.data.slice(0, 5)));
for (const [name, m] of [["int8", int8], ["nf4", nf4]]) {
  const { data } = await m.logits(ids);
  let maxDiff = 0;
  for (let i = 0; i < data.length; i++) {
    maxDiff = Math.max(maxDiff, Math.abs(data[i] - ref.data[i]));
  }
  print(name.padEnd(4), "first logits:", fmt(data.slice(0, 5)),
    "  max |\u0394| vs f32:", maxDiff.toFixed(4));
}
for (const m of [f32, int8, nf4]) m.dispose();`,
  },
  {
    title: "Add a new adapter",
    about:
      "add_adapter takes a PEFT config and creates a fresh, trainable adapter (init_lora_weights: false makes it non-zero, so it changes the output).",
    code: `await ctx.model.add_adapter({
  peft_type: "LORA",
  r: 8,
  lora_alpha: 16,
  target_modules: ["q_proj", "k_proj"],
  init_lora_weights: false,
}, "adapter_1");

print("active adapters:", ctx.model.active_adapters());`,
  },
  {
    title: "Switch between adapters with set_adapter",
    about:
      "Two adapters are loaded now: the pirate LoRA and cell 6's fresh adapter_1. set_adapter picks which one runs; the base and both adapters stay in memory.",
    code: `ctx.messages ??= [{ role: "user", content: @PROMPT@ }];
const max_new_tokens = @SHORT_NEW_TOKENS@;
const streamer = () => new TextStreamer(ctx.model.tokenizer, { callback_function: stream });

ctx.model.set_adapter("pirate");
print("pirate:");
await ctx.model.generate(ctx.messages, { max_new_tokens, streamer: streamer() });

// adapter_1 is untrained (random A and B): expect a different, not a better, answer.
ctx.model.set_adapter("adapter_1");
print("adapter_1:");
await ctx.model.generate(ctx.messages, { max_new_tokens, streamer: streamer() });

print("active adapters:", ctx.model.active_adapters());`,
  },
  {
    title: "get_adapter_state_dict",
    about:
      "The adapter's own tensors, named as PEFT names them in adapter_model.safetensors: each with its dtype, shape and data.",
    code: `const sd = ctx.model.get_adapter_state_dict("pirate");
const keys = Object.keys(sd);

table(["key", "dtype", "shape"],
  keys.slice(0, 8).map((k) => [k, sd[k].dtype, "[" + sd[k].shape.join(", ") + "]"]));

const params = keys.reduce((n, k) => n + sd[k].shape.reduce((a, b) => a * b, 1), 0);
print(keys.length, "tensors in all,", params.toLocaleString("en-US"), "parameters");`,
  },
  {
    title: "save_pretrained",
    about:
      "save_pretrained returns the files PEFT would write (adapter_config.json and adapter_model.safetensors per adapter) as Blobs you can download.",
    code: `const files = await ctx.model.save_pretrained();
const size = (n) => n < 1024 ? n + " B"
  : n < 1048576 ? (n / 1024).toFixed(1) + " KiB" : (n / 1048576).toFixed(2) + " MiB";

table(["file", "size"], Object.entries(files).map(([path, blob]) => {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = path.replaceAll("/", "_");
  link.textContent = path;
  return [link, size(blob.size)];
}));
print(Object.keys(files).length, "files");`,
  },
];

function fillCode(code) {
  return code.replace(/@([A-Z_0-9]+)@/g, (m, name) => (name in P ? JSON.stringify(P[name]) : m));
}

// ---------------------------------------------------------------------------------------------
// State.

const ctx = {};
const page = {
  device: null,
  deviceNote: null,
};
const cells = CELLS.map((c, i) => ({
  n: i + 1,
  title: c.title,
  about: c.about,
  code: fillCode(c.code),
  status: "idle",
  ms: null,
  text: "",
  error: null,
  downloads: [],
  el: null,
}));

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, props = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k in e) e[k] = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
};

// ---------------------------------------------------------------------------------------------
// Rendering.

function renderCell(cell) {
  const textarea = el("textarea", {
    class: "code",
    spellcheck: false,
    autocomplete: "off",
    autocapitalize: "off",
    value: cell.code,
    "aria-label": `Code of cell ${cell.n}`,
  });
  textarea.setAttribute("spellcheck", "false");
  textarea.addEventListener("input", () => autosize(textarea));
  textarea.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.shiftKey || ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      runCell(cell.n);
    } else if (ev.key === "Tab" && !ev.shiftKey) {
      ev.preventDefault();
      textarea.setRangeText("  ", textarea.selectionStart, textarea.selectionEnd, "end");
      autosize(textarea);
    }
  });

  const runBtn = el("button", { class: "btn btn-run", type: "button", title: "Run this cell (Shift+Enter)" },
    el("span", { class: "btn-icon", "aria-hidden": "true", textContent: "▶" }), " Run");
  runBtn.addEventListener("click", () => runCell(cell.n));

  const section = el("section", { class: "cell", id: `cell-${cell.n}`, dataset: { status: "idle" } },
    el("div", { class: "cell-head" },
      el("span", { class: "cell-num", textContent: String(cell.n) }),
      el("div", { class: "cell-titles" },
        el("h2", { class: "cell-title", textContent: cell.title }),
        el("p", { class: "cell-about", textContent: cell.about })),
      el("div", { class: "cell-actions" },
        el("span", { class: "badge", textContent: "idle" }),
        runBtn)),
    el("div", { class: "code-wrap" }, textarea),
    el("div", { class: "progress", hidden: true },
      el("div", { class: "progress-head" },
        el("span", { class: "progress-file" }),
        el("span", { class: "progress-size" }),
        el("span", { class: "progress-pct" })),
      el("div", { class: "progress-track" }, el("div", { class: "progress-fill" }))),
    el("div", { class: "output", "aria-live": "polite" }));
  cell.el = section;
  return section;
}

function autosize(textarea) {
  textarea.style.height = "auto";
  textarea.style.height = `${textarea.scrollHeight + 2}px`;
}

function setStatus(cell, status, label) {
  cell.status = status;
  cell.el.dataset.status = status;
  $(".badge", cell.el).textContent = label ?? status;
  $(".btn-run", cell.el).disabled = status === "running";
}

function formatMs(ms) {
  return `done in ${ms.toLocaleString("en-US")} ms`;
}

// ---------------------------------------------------------------------------------------------
// Output helpers given to the cells.

function formatValue(v) {
  if (typeof v === "string") return v;
  if (v === undefined) return "undefined";
  if (v instanceof Error) return `${v.name}: ${v.message}`;
  if (ArrayBuffer.isView(v)) return `[${Array.from(v).join(", ")}]`;
  if (typeof v === "object" && v !== null) {
    try {
      return JSON.stringify(v);
    } catch {
      return String(v);
    }
  }
  return String(v);
}

function makeOutput(cell) {
  const out = $(".output", cell.el);
  let streamBlock = null;

  const appendText = (t) => {
    cell.text += t;
  };
  const endStream = () => {
    if (streamBlock) {
      streamBlock = null;
      if (!cell.text.endsWith("\n")) appendText("\n");
    }
  };

  const print = (...args) => {
    endStream();
    const line = el("div", { class: "line" });
    const parts = [];
    args.forEach((a, i) => {
      if (i > 0) line.append(" ");
      if (a instanceof Node) {
        line.append(a);
        parts.push(a.textContent);
      } else {
        const s = formatValue(a);
        line.append(s);
        parts.push(s);
      }
    });
    // Lines like "pirate:" label the streamed text that follows.
    if (args.length === 1 && typeof args[0] === "string" && /^[\w .-]{1,24}:$/.test(args[0])) {
      line.classList.add("label");
    }
    out.append(line);
    appendText(parts.join(" ") + "\n");
    out.classList.add("has-content");
  };

  const stream = (text) => {
    if (text == null) return;
    text = String(text);
    if (!streamBlock) {
      streamBlock = el("div", { class: "stream" });
      out.append(streamBlock);
    }
    streamBlock.append(text);
    appendText(text);
    out.classList.add("has-content");
  };

  const table = (headers, rows) => {
    endStream();
    const cellOf = (v) => (v instanceof Node ? v : formatValue(v));
    const t = el("table", { class: "out-table" },
      el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { textContent: String(h) })))),
      el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((v) => el("td", {}, cellOf(v)))))));
    out.append(el("div", { class: "table-wrap" }, t));
    appendText(headers.join("\t") + "\n");
    for (const r of rows) appendText(r.map((v) => (v instanceof Node ? v.textContent : formatValue(v))).join("\t") + "\n");
    out.classList.add("has-content");
  };

  const showError = (kind, message, hint) => {
    endStream();
    const box = el("div", { class: "error-box", role: "alert" },
      el("div", { class: "error-kind", textContent: kind }),
      el("div", { class: "error-message", textContent: message }));
    if (hint) box.append(el("div", { class: "error-hint", textContent: hint }));
    out.append(box);
    appendText(`${kind}: ${message}\n`);
    out.classList.add("has-content");
  };

  const reset = () => {
    out.replaceChildren();
    out.classList.remove("has-content");
    streamBlock = null;
    cell.text = "";
  };

  return { print, stream, table, showError, reset };
}

// The download progress bar of one cell, driven by `progress_callback` events.
function makeProgress(cell) {
  const box = $(".progress", cell.el);
  const fileEl = $(".progress-file", box);
  const sizeEl = $(".progress-size", box);
  const pctEl = $(".progress-pct", box);
  const fill = $(".progress-fill", box);
  const files = new Map();

  const reset = () => {
    files.clear();
    cell.downloads = [];
    box.hidden = true;
    box.classList.remove("complete");
    fill.style.width = "0%";
  };

  const render = (current) => {
    box.hidden = false;
    const all = [...files.values()];
    const allDone = all.length > 0 && all.every((f) => f.done);
    if (allDone) {
      const bytes = all.reduce((s, f) => s + (f.total || f.loaded || 0), 0);
      box.classList.add("complete");
      fileEl.textContent = `✓ Downloaded ${all.length} file${all.length === 1 ? "" : "s"}`;
      fileEl.title = all.map((f) => f.file).join("\n");
      sizeEl.textContent = formatBytes(bytes);
      pctEl.textContent = "100%";
      fill.style.width = "100%";
      return;
    }
    box.classList.remove("complete");
    const f = current;
    let pct = f.total > 0 ? (f.loaded / f.total) * 100 : f.done ? 100 : 0;
    if (typeof f.progress === "number" && !(f.total > 0)) pct = f.progress;
    pct = Math.max(0, Math.min(100, pct));
    const index = [...files.keys()].indexOf(f.file) + 1;
    fileEl.textContent = f.file.split("/").pop();
    fileEl.title = f.file;
    const count = files.size > 1 ? `  ·  file ${index} of ${files.size}` : "";
    sizeEl.textContent = (f.total > 0 ? `${formatBytes(f.loaded, f.total)} / ${formatBytes(f.total)}` : formatBytes(f.loaded)) + count;
    pctEl.textContent = `${pct.toFixed(0)}%`;
    fill.style.width = `${pct.toFixed(1)}%`;
  };

  const callback = (info) => {
    try {
      if (!info || !info.file) return;
      let f = files.get(info.file);
      if (!f) {
        f = { file: info.file, loaded: 0, total: 0, done: false };
        files.set(info.file, f);
        cell.downloads.push(f);
      }
      if (typeof info.loaded === "number") f.loaded = info.loaded;
      if (typeof info.total === "number") f.total = info.total;
      if (typeof info.progress === "number") f.progress = info.progress;
      if (info.status === "initiate") f.done = false;
      if (info.status === "done") {
        f.done = true;
        if (f.total > 0) f.loaded = f.total;
      }
      render(f);
    } catch (e) {
      console.warn("progress display:", e);
    }
  };
  return { callback, reset };
}

function formatBytes(b, scaleBy = b) {
  if (!Number.isFinite(b)) return "?";
  if (scaleBy >= 1e6) return `${(b / 1e6).toFixed(1)} MB`;
  if (scaleBy >= 1e3) return `${(b / 1e3).toFixed(1)} kB`;
  return `${b} B`;
}

// ---------------------------------------------------------------------------------------------
// Device line.

function noteDevice(model) {
  try {
    if (!model) return;
    const device = model.device;
    const note = model.device_note;
    if (!device) return;
    page.device = device;
    page.deviceNote = note ?? "";
    const where = device === "webgpu" ? "WebGPU" : device === "cpu" ? "the CPU" : device;
    $("#device-text").textContent = `Running on ${where}${note ? ` (${note})` : ""}`;
    $("#device").dataset.device = device;
  } catch {
    // A disposed model: keep the last line.
  }
}

// ---------------------------------------------------------------------------------------------
// Running cells.

const AsyncFunction = Object.getPrototypeOf(async function () {}).constructor;
let queue = Promise.resolve();
let graftModule = null;
let graftError = null;

graftReady.then(
  (m) => {
    graftModule = m;
    m.env.endpoint = endpointValue();
  },
  (e) => {
    graftError = e;
    showBanner("error",
      `Could not load graft's package (../npm/index.js): ${e?.message ?? e}. ` +
        "Is the WebAssembly build (web/npm/wasm/) there?");
  },
);

function endpointValue() {
  const v = $("#endpoint").value.trim().replace(/\/+$/, "");
  return v || "https://huggingface.co";
}

function publish() {
  window.notebook = {
    cells: cells.map((c) => ({
      id: c.n,
      title: c.title,
      status: c.status,
      ms: c.ms,
      output: c.text,
      error: c.error,
      downloads: c.downloads.map(({ file, loaded, total, done }) => ({ file, loaded, total, done })),
    })),
    device: page.device,
    deviceNote: page.deviceNote,
    state: document.body.dataset.state,
    endpoint: endpointValue(),
    params: { ...P },
  };
  return window.notebook;
}

function summaryOf(cell) {
  return publish().cells[cell.n - 1];
}

/** Runs cell n (1-based) after whatever is running; resolves to its summary (never rejects). */
function runCell(n) {
  const cell = cells[n - 1];
  if (!cell) return Promise.reject(new RangeError(`no cell ${n} (cells are 1..${cells.length})`));
  if (cell.status !== "running") setStatus(cell, cell.status, "queued");
  const p = queue.then(() => execute(cell));
  queue = p.catch(() => {});
  return p;
}

async function execute(cell) {
  const out = cell.out ?? (cell.out = makeOutput(cell));
  const progress = cell.progress ?? (cell.progress = makeProgress(cell));
  out.reset();
  progress.reset();
  cell.error = null;
  cell.ms = null;
  setStatus(cell, "running");
  publish();
  const t0 = performance.now();
  try {
    let graft;
    try {
      graft = graftModule ?? (await graftReady);
    } catch (e) {
      const err = new Error(`graft's package did not load: ${e?.message ?? e}`);
      err.kind = "PackageNotLoaded";
      throw err;
    }
    graft.env.endpoint = endpointValue();

    // The real class; from_pretrained also notes the device for the header.
    const AutoModelForCausalLM = {
      from_pretrained: async (repo_id, options) => {
        const m = await graft.AutoModelForCausalLM.from_pretrained(repo_id, options);
        noteDevice(m);
        return m;
      },
    };
    const scope = {
      ctx,
      print: out.print,
      stream: out.stream,
      table: out.table,
      progress_callback: progress.callback,
      graft,
      AutoModelForCausalLM,
      AutoTokenizer: graft.AutoTokenizer,
      TextStreamer: graft.TextStreamer,
      env: graft.env,
      BASE: P.BASE,
      ADAPTER: P.ADAPTER,
      TINY: P.TINY,
      DEVICE: P.DEVICE,
      device: P.DEVICE,
      MAX_NEW_TOKENS: P.MAX_NEW_TOKENS,
      max_new_tokens: P.MAX_NEW_TOKENS,
      PROMPT: P.PROMPT,
    };
    const code = $("textarea.code", cell.el).value;
    let fn;
    try {
      // The code runs in a block of its own, so that it may declare names the scope has.
      fn = new AsyncFunction(...Object.keys(scope), `"use strict";\n{\n${code}\n}`);
    } catch (e) {
      e.kind = e.kind ?? "SyntaxError";
      throw e;
    }
    await fn(...Object.values(scope));
    cell.ms = Math.round(performance.now() - t0);
    noteDevice(ctx.model);
    setStatus(cell, "done", formatMs(cell.ms));
  } catch (e) {
    cell.ms = Math.round(performance.now() - t0);
    const kind = (e && (e.kind || e.name)) || "Error";
    const message = (e && (e.message ?? String(e))) || String(e);
    cell.error = { kind: String(kind), message: String(message) };
    let hint = null;
    if (cell.n > 1 && !ctx.model && /ctx\.model/.test($("textarea.code", cell.el).value)) {
      hint = "ctx.model is not loaded yet: run cell 1 first.";
    } else if (kind === "NetworkError" || kind === "RepoNotFound") {
      hint = `Hub endpoint: ${endpointValue()}`;
    }
    out.showError(cell.error.kind, cell.error.message, hint);
    setStatus(cell, "error", "error");
    console.error(`cell ${cell.n} (${cell.title}):`, e);
    noteDevice(ctx.model);
  }
  return summaryOf(cell);
}

function showBanner(kind, text) {
  const b = $("#banner");
  b.hidden = false;
  b.dataset.kind = kind;
  b.textContent = text;
}

let runAllPromise = null;

/** Runs cells 1..9 in order, stopping at the first error; resolves to window.notebook. */
function runAll() {
  if (runAllPromise) return runAllPromise;
  runAllPromise = (async () => {
    const btn = $("#run-all");
    btn.disabled = true;
    document.body.dataset.state = "running";
    $("#banner").hidden = true;
    for (const c of cells) {
      c.out ??= makeOutput(c);
      c.progress ??= makeProgress(c);
      c.out.reset();
      c.progress.reset();
      c.error = null;
      c.ms = null;
      setStatus(c, "idle", "queued");
    }
    publish();
    const t0 = performance.now();
    let failed = null;
    for (const c of cells) {
      const r = await runCell(c.n);
      if (r.status === "error") {
        failed = c;
        break;
      }
    }
    for (const c of cells) if (c.status === "idle") setStatus(c, "idle", "idle");
    const secs = ((performance.now() - t0) / 1000).toFixed(1);
    if (failed) {
      document.body.dataset.state = "error";
      showBanner("error",
        `Run all stopped at cell ${failed.n} \u201c${failed.title}\u201d: ${failed.error.kind}: ${failed.error.message}`);
    } else {
      document.body.dataset.state = "done";
      showBanner("done", `All ${cells.length} cells ran in ${secs} s.`);
    }
    btn.disabled = false;
    return publish();
  })().finally(() => {
    runAllPromise = null;
  });
  return runAllPromise;
}

// ---------------------------------------------------------------------------------------------
// Page setup.

function setup() {
  $("#endpoint").value = P.ENDPOINT;
  $("#endpoint").addEventListener("change", () => {
    if (graftModule) graftModule.env.endpoint = endpointValue();
    publish();
  });
  $("#run-all").addEventListener("click", () => runAll());

  const main = $("#cells");
  for (const c of cells) {
    main.append(renderCell(c));
    c.out = makeOutput(c);
    c.progress = makeProgress(c);
  }
  const textareas = [...document.querySelectorAll("textarea.code")];
  textareas.forEach(autosize);
  let lastWidth = window.innerWidth;
  window.addEventListener("resize", () => {
    if (window.innerWidth !== lastWidth) {
      lastWidth = window.innerWidth;
      textareas.forEach(autosize);
    }
  });
  // Fonts or layout can settle after the first frame.
  requestAnimationFrame(() => textareas.forEach(autosize));

  window.runCell = runCell;
  window.runAll = runAll;
  publish();
}

setup();
