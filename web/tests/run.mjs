// graft's browser tests: Debian's Chromium (driven by playwright-core, never a downloaded
// browser) with WebGPU on SwiftShader, against the local Hub (graft-hub-server) serving the
// tiny fixtures and the real SmolLM2 GGUF with the demo adapter.
//
//   node web/tests/run.mjs            (after scripts/build_web.sh and `cargo build -p graft-cli -p graft-hub-server`)
//
// Writes web/tests/output/: notebook.png (the finished notebook), budgets.json.
import { chromium } from "playwright-core";
import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import zlib from "node:zlib";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const OUT = path.join(ROOT, "web/tests/output");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const GGUF = path.join(ROOT, process.env.GRAFT_DEFAULT_MODEL ?? "models/SmolLM2-135M-Instruct.Q4_1.gguf");
// SwiftShader runs WebGPU on the CPU, slowly (docs/benchmarks.md): the WebGPU run of SmolLM2
// is kept to a short raw prompt and a few tokens; the notebook runs on the wasm CPU path.
const GPU_PROMPT = "The capital of France is";
const GPU_NEW_TOKENS = 3;
const NEW_TOKENS = 8;
const PROMPT = "What is the capital of France?";
const ONLY = process.env.GRAFT_WEB_ONLY; // run only the tests whose name contains this
// Qwen2.5-Coder-0.5B-Instruct Q4_K_M (scripts/fetch_models.sh) with the demo adapter
// adapters/qwen-graft-guide. It is ~3.7× SmolLM2's work per token, so on SwiftShader its
// WebGPU run is one short raw prompt and two tokens (prefill, then one decode step).
const QWEN = path.join(ROOT, "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
const QWEN_PROMPT = "How do I train a LoRA adapter with graft?";
const QWEN_NEW_TOKENS = 12;
const QWEN_GPU_PROMPT = "graft generate --adapter";
const QWEN_GPU_NEW_TOKENS = 2;
fs.mkdirSync(OUT, { recursive: true });

// ---------------------------------------------------------------- the local Hub's repos
const hubRoot = fs.mkdtempSync(path.join(os.tmpdir(), "graft-web-hub-"));
function repo(id, files, repoJson) {
  const dir = path.join(hubRoot, "models", id);
  const main = path.join(dir, "branches", "main");
  fs.mkdirSync(main, { recursive: true });
  if (repoJson) fs.writeFileSync(path.join(dir, "repo.json"), JSON.stringify(repoJson));
  for (const [name, src] of Object.entries(files)) {
    const dst = path.join(main, name);
    fs.mkdirSync(path.dirname(dst), { recursive: true });
    if (typeof src === "string") fs.symlinkSync(path.resolve(ROOT, src), dst);
    else fs.writeFileSync(dst, src.text);
  }
}
function adapterConfig(srcDir, base) {
  const cfg = JSON.parse(fs.readFileSync(path.join(ROOT, srcDir, "adapter_config.json"), "utf8"));
  cfg.base_model_name_or_path = base;
  return { text: JSON.stringify(cfg, null, 2) };
}
const haveGguf = fs.existsSync(GGUF);
if (haveGguf) {
  repo("HuggingFaceTB/SmolLM2-135M-Instruct", { "SmolLM2-135M-Instruct.Q4_1.gguf": GGUF });
  repo("graft-rs/smollm2-pirate-lora", {
    "adapter_config.json": adapterConfig("adapters/smollm2-pirate", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    "adapter_model.safetensors": "adapters/smollm2-pirate/adapter_model.safetensors",
  });
}
const haveQwen = fs.existsSync(QWEN);
if (haveQwen) {
  repo("Qwen/Qwen2.5-Coder-0.5B-Instruct", { "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf": QWEN });
  repo("graft-rs/qwen-graft-guide", {
    "adapter_config.json": adapterConfig("adapters/qwen-graft-guide", "Qwen/Qwen2.5-Coder-0.5B-Instruct"),
    "adapter_model.safetensors": "adapters/qwen-graft-guide/adapter_model.safetensors",
  });
}
repo("graft-rs/tiny-llama", {
  "config.json": "tests/fixtures/models/llama/config.json",
  "model.safetensors": "tests/fixtures/models/llama/model.safetensors",
});
repo("graft-rs/tiny-lora", {
  "adapter_config.json": adapterConfig("tests/fixtures/cases/lora_qv/adapters/default", "graft-rs/tiny-llama"),
  "adapter_model.safetensors": "tests/fixtures/cases/lora_qv/adapters/default/adapter_model.safetensors",
});
repo("graft-rs/no-weights", {
  "adapter_config.json": adapterConfig("tests/fixtures/cases/lora_qv/adapters/default", "graft-rs/tiny-llama"),
});

// ---------------------------------------------------------------- servers
function startHub() {
  const bin = path.join(ROOT, "target/debug/graft-hub-server");
  const p = spawn(bin, ["--root", hubRoot], { stdio: ["ignore", "pipe", "inherit"] });
  return new Promise((resolve, reject) => {
    let buf = "";
    p.stdout.on("data", (d) => {
      buf += d;
      const m = buf.match(/graft-hub-server: (\S+) cdn (\S+)/);
      if (m) resolve({ proc: p, endpoint: m[1], cdn: m[2] });
    });
    p.on("exit", (c) => reject(new Error(`graft-hub-server exited with ${c}`)));
  });
}

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".wasm": "application/wasm", ".json": "application/json", ".png": "image/png" };
function startStatic() {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    const file = path.join(ROOT, decodeURIComponent(url.pathname));
    if (!file.startsWith(ROOT + path.sep) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      res.writeHead(404).end("not found");
      return;
    }
    res.writeHead(200, { "content-type": TYPES[path.extname(file)] ?? "application/octet-stream" });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

// ---------------------------------------------------------------- reference numbers
function readSafetensors(file) {
  const b = fs.readFileSync(file);
  const n = Number(b.readBigUInt64LE(0));
  const header = JSON.parse(b.subarray(8, 8 + n).toString("utf8"));
  const out = {};
  for (const [k, v] of Object.entries(header)) {
    if (k === "__metadata__") continue;
    const [s, e] = v.data_offsets;
    const bytes = b.subarray(8 + n + s, 8 + n + e);
    out[k] = { shape: v.shape, data: new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length)) };
  }
  return out;
}
function nativeGenerate(n, prompt, extra, model = GGUF) {
  const bin = path.join(ROOT, "target/debug/graft");
  const out = execFileSync(bin, ["generate", "--device", "cpu", "--max-new-tokens", String(n), ...prompt, ...extra], { cwd: ROOT, env: { ...process.env, GRAFT_DEFAULT_MODEL: model }, stdio: ["ignore", "pipe", "ignore"] });
  return out.toString().replace(/\n$/, "");
}

// ---------------------------------------------------------------- the tests
const results = [];
async function test(name, fn) {
  if (ONLY && !name.includes(ONLY)) return;
  const t0 = Date.now();
  try {
    await fn();
    results.push({ name, ok: true, ms: Date.now() - t0 });
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    results.push({ name, ok: false, ms: Date.now() - t0, error: String(e?.stack ?? e) });
    console.log(`FAIL ${name}\n     ${String(e?.stack ?? e).replace(/\n/g, "\n     ")}`);
  }
}
function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

const ARGS = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage"];
async function browser(webgpu) {
  return chromium.launch({ executablePath: CHROMIUM, args: webgpu ? [...ARGS, "--enable-unsafe-webgpu"] : ARGS });
}

const hub = await startHub();
const web = await startStatic();
const site = `http://127.0.0.1:${web.address().port}`;
const budgets = {};
try {
  const wasm = path.join(ROOT, "web/npm/wasm/graft_wasm_bg.wasm");
  budgets.wasm_bytes = fs.statSync(wasm).size;
  budgets.wasm_gzip_bytes = zlib.gzipSync(fs.readFileSync(wasm), { level: 9 }).length;

  const caseDir = path.join(ROOT, "tests/fixtures/cases/lora_qv");
  const tokens = JSON.parse(fs.readFileSync(path.join(caseDir, "case.json"), "utf8")).tokens;
  const want = readSafetensors(path.join(caseDir, "logits.safetensors"));

  const gpuBrowser = await browser(true);
  const page = await gpuBrowser.newPage();
  page.on("console", (m) => m.type() === "error" && console.log(`     [browser] ${m.text()}`));
  await page.goto(`${site}/web/tests/blank.html`);

  for (const device of ["webgpu", "cpu"]) {
    await test(`the package's API on the tiny fixtures gives native graft's logits (${device})`, async () => {
      const got = await page.evaluate(async ({ endpoint, tokens, device }) => {
        const g = await import("/web/npm/index.js");
        const m = await g.AutoModelForCausalLM.from_pretrained("graft-rs/tiny-lora", { endpoint, device, cache: false });
        const on = await m.logits(tokens);
        m.disable_adapters();
        const off = await m.logits(tokens);
        const r = { device: m.device, note: m.device_note, active: m.active_adapters(), on: Array.from(on.data), off: Array.from(off.data), dims: on.dims };
        m.dispose();
        return r;
      }, { endpoint: hub.endpoint, tokens, device });
      assert(got.device === device, `ran on ${got.device} (${got.note}), wanted ${device}`);
      for (const run of ["on", "off"]) {
        const ref = want[run].data;
        assert(got[run].length === ref.length, `${run}: ${got[run].length} values, native has ${ref.length}`);
        let worst = 0;
        for (let i = 0; i < ref.length; i++) worst = Math.max(worst, Math.abs(got[run][i] - ref[i]) / Math.max(1, Math.abs(ref[i])));
        assert(worst <= 1e-3, `${run}: max relative difference ${worst}`);
      }
    });
  }

  await test("the package works from a module Web Worker (WebGPU there too)", async () => {
    const r = await page.evaluate(({ endpoint, tokens }) => new Promise((resolve) => {
      const w = new Worker("/web/tests/worker.js", { type: "module" });
      w.onmessage = (e) => { resolve(e.data); w.terminate(); };
      w.onerror = (e) => resolve({ ok: false, error: `worker error: ${e.message}` });
      w.postMessage({ endpoint, device: "webgpu", tokens });
    }), { endpoint: hub.endpoint, tokens });
    assert(r.ok, r.error);
    assert(r.device === "webgpu", `in the worker: ${r.device} (${r.note})`);
    const ref = want.on.data;
    let worst = 0;
    for (let i = 0; i < ref.length; i++) worst = Math.max(worst, Math.abs(r.data[i] - ref[i]) / Math.max(1, Math.abs(ref[i])));
    assert(worst <= 1e-3, `max relative difference ${worst}`);
  });

  await test("save_pretrained, get_adapter_state_dict and add_adapter round-trip", async () => {
    const r = await page.evaluate(async ({ endpoint }) => {
      const g = await import("/web/npm/index.js");
      const m = await g.AutoModelForCausalLM.from_pretrained("graft-rs/tiny-lora", { endpoint, device: "cpu", cache: false });
      await m.add_adapter({ peft_type: "LORA", r: 8, lora_alpha: 16, target_modules: ["q_proj", "k_proj"], init_lora_weights: false }, "adapter_1");
      const sd = m.get_adapter_state_dict("default");
      const files = await m.save_pretrained();
      const out = { active: m.active_adapters(), keys: Object.keys(sd).length, first: Object.values(sd)[0].shape, files: {} };
      for (const [k, b] of Object.entries(files)) out.files[k] = b.size;
      const cfg = JSON.parse(await files["adapter_config.json"].text());
      out.base = cfg.base_model_name_or_path;
      m.dispose();
      return out;
    }, { endpoint: hub.endpoint });
    assert(r.active.join() === "adapter_1", `active ${r.active}`);
    assert(r.keys > 0 && r.first.length === 2, `state dict ${JSON.stringify(r)}`);
    assert(r.files["adapter_config.json"] > 0 && r.files["adapter_model.safetensors"] > 0, `files ${JSON.stringify(r.files)}`);
    assert(r.files["adapter_1/adapter_config.json"] > 0, `adapter_1 saved in its subfolder: ${JSON.stringify(r.files)}`);
    assert(r.base === "graft-rs/tiny-llama", `base ${r.base}`);
  });

  await test("files stay in the Cache API under their commit: a second visit downloads nothing", async () => {
    const log = async () => (await (await fetch(`${hub.endpoint}/_graft/requests`)).json());
    await fetch(`${hub.endpoint}/_graft/requests`, { method: "DELETE" });
    const load = () =>
      page.evaluate(async ({ endpoint }) => {
        const g = await import("/web/npm/index.js");
        const m = await g.AutoModelForCausalLM.from_pretrained("graft-rs/tiny-lora", { endpoint, device: "cpu", cache: "graft-test-cache" });
        const l = await m.logits([1, 2, 3]);
        m.dispose();
        return l.data.slice(0, 4).join();
      }, { endpoint: hub.endpoint });
    const first = await load();
    const firstLog = await log();
    await fetch(`${hub.endpoint}/_graft/requests`, { method: "DELETE" });
    const second = await load();
    const secondLog = await log();
    const files = (l) => l.filter((r) => r.path.includes("/resolve/") || r.origin === "Cdn").length;
    assert(files(firstLog) >= 4, `the first visit fetched ${files(firstLog)} files`);
    assert(files(secondLog) === 0, `the second visit fetched files again: ${JSON.stringify(secondLog.map((r) => r.path))}`);
    assert(first === second, "same numbers from the cached files");
  });

  await test("errors are typed JavaScript errors and the page keeps working", async () => {
    const r = await page.evaluate(async ({ endpoint }) => {
      const g = await import("/web/npm/index.js");
      const kinds = {};
      for (const [label, id] of [["bad id", "not a/valid//id"], ["missing repo", "graft-rs/does-not-exist"], ["missing file", "graft-rs/no-weights"]]) {
        try {
          await g.AutoModelForCausalLM.from_pretrained(id, { endpoint, device: "cpu", cache: false });
          kinds[label] = "no error";
        } catch (e) {
          kinds[label] = `${e.name}:${e.kind}:${e.message}`;
        }
      }
      const m = await g.AutoModelForCausalLM.from_pretrained("graft-rs/tiny-lora", { endpoint, device: "cpu", cache: false });
      kinds.after = m.active_adapters().join();
      m.dispose();
      return kinds;
    }, { endpoint: hub.endpoint });
    assert(r["bad id"].startsWith("GraftError:InvalidRepoId:"), r["bad id"]);
    assert(r["missing repo"].startsWith("GraftError:RepoNotFound:"), r["missing repo"]);
    assert(r["missing file"].startsWith("GraftError:RepoFiles:"), r["missing file"]);
    assert(r.after === "default", `after errors: ${r.after}`);
  });

  await test("a dropped connection resumes, and one that keeps dropping is a NetworkError", async () => {
    const fault = (body) => fetch(`${hub.endpoint}/_graft/faults`, { method: body ? "POST" : "DELETE", body: body && JSON.stringify(body) });
    await fault({ path_contains: "/repos/", origin: "Cdn", times: 1, kind: { DropAfter: { bytes: 1000 } } });
    const once = await page.evaluate(async ({ endpoint }) => {
      const g = await import("/web/npm/index.js");
      const m = await g.AutoModelForCausalLM.from_pretrained("graft-rs/tiny-llama", { endpoint, device: "cpu", cache: false });
      const l = await m.logits([1, 2, 3]);
      m.dispose();
      return l.dims;
    }, { endpoint: hub.endpoint });
    assert(once[0] === 3, `dims ${once}`);
    await fault({ path_contains: "/repos/", origin: "Cdn", times: 0, kind: { DropAfter: { bytes: 1000 } } });
    const err = await page.evaluate(async ({ endpoint }) => {
      const g = await import("/web/npm/index.js");
      try {
        await g.AutoModelForCausalLM.from_pretrained("graft-rs/tiny-llama", { endpoint, device: "cpu", cache: false });
        return "no error";
      } catch (e) {
        return `${e.kind}: ${e.message}`;
      }
    }, { endpoint: hub.endpoint });
    await fault(null);
    assert(err.startsWith("NetworkError"), err);
  });

  if (haveGguf) {
    const pirate = ["--adapter", "adapters/smollm2-pirate"];
    const gpuPirate = nativeGenerate(GPU_NEW_TOKENS, [GPU_PROMPT], pirate);
    const gpuBase = nativeGenerate(GPU_NEW_TOKENS, [GPU_PROMPT], []);
    const chatPirate = nativeGenerate(NEW_TOKENS, ["--chat", PROMPT], pirate);
    const chatBase = nativeGenerate(NEW_TOKENS, ["--chat", PROMPT], []);
    const run = (device, prompt, n) =>
      page.evaluate(async ({ endpoint, prompt, n, device }) => {
        const g = await import("/web/npm/index.js");
        const wasm = await g.initialize();
        const t0 = performance.now();
        const m = await g.AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct", { endpoint, device, dtype: "q4_1" });
        const loadMs = performance.now() - t0;
        await m.load_adapter("graft-rs/smollm2-pirate-lora", { adapter_name: "pirate" });
        let first = null;
        const t1 = performance.now();
        const pirate = await m.generate(prompt, { max_new_tokens: n, on_token: () => (first ??= performance.now()) });
        const t2 = performance.now();
        m.disable_adapters();
        const base = await m.generate(prompt, { max_new_tokens: n });
        const r = { device: m.device, note: m.device_note, pirate, base, load_ms: loadMs, ttft_ms: first - t1, decode_tok_per_s: (n - 1) / ((t2 - first) / 1000), wasm_memory_bytes: wasm.memory.buffer.byteLength };
        m.dispose();
        return r;
      }, { endpoint: hub.endpoint, prompt, n, device });

    await test("SmolLM2 + the demo adapter on WebGPU: the same tokens as native graft", async () => {
      const r = await run("webgpu", GPU_PROMPT, GPU_NEW_TOKENS);
      budgets.webgpu = { prompt: GPU_PROMPT, new_tokens: GPU_NEW_TOKENS, ...r };
      assert(r.device === "webgpu", `device ${r.device}: ${r.note}`);
      assert(r.pirate === gpuPirate, `pirate answer differs:\n browser: ${JSON.stringify(r.pirate)}\n native:  ${JSON.stringify(gpuPirate)}`);
      assert(r.base === gpuBase, `base answer differs:\n browser: ${JSON.stringify(r.base)}\n native:  ${JSON.stringify(gpuBase)}`);
    });

    await test("SmolLM2 + the demo adapter on the wasm CPU path: the same answers as native graft", async () => {
      const r = await run("cpu", [{ role: "user", content: PROMPT }], NEW_TOKENS);
      budgets.cpu = { prompt: PROMPT, new_tokens: NEW_TOKENS, ...r };
      assert(r.device === "cpu", `device ${r.device}`);
      assert(r.pirate === chatPirate, `pirate answer differs:\n browser: ${JSON.stringify(r.pirate)}\n native:  ${JSON.stringify(chatPirate)}`);
      assert(r.base === chatBase, `base answer differs:\n browser: ${JSON.stringify(r.base)}\n native:  ${JSON.stringify(chatBase)}`);
      assert(r.pirate !== r.base, "the adapter changes the answer");
    });

    await test("the notebook's Run all completes and every cell's output is right; screenshot", async () => {
      const nb = await gpuBrowser.newPage({ viewport: { width: 1280, height: 2000 } });
      const q = new URLSearchParams({ endpoint: hub.endpoint, device: "cpu", max_new_tokens: String(NEW_TOKENS), prompt: PROMPT, tiny: "graft-rs/tiny-llama" });
      await nb.goto(`${site}/web/notebook/index.html?${q}`);
      await nb.evaluate(() => window.runAll());
      await nb.waitForFunction(() => ["done", "error"].includes(document.body.dataset.state), null, { timeout: 600_000 });
      const state = await nb.evaluate(() => ({ state: document.body.dataset.state, nb: window.notebook }));
      await nb.screenshot({ path: path.join(OUT, "notebook.png"), fullPage: true });
      const failed = state.nb.cells.filter((c) => c.status !== "done");
      assert(state.state === "done" && failed.length === 0, `cells not done: ${JSON.stringify(failed.map((c) => [c.id, c.status, c.error]))}`);
      const out = (i) => state.nb.cells[i - 1].output;
      assert(out(1).includes("pirate"), `cell 1: ${out(1)}`);
      assert(out(3).includes(chatPirate), `cell 3 should show the native pirate answer ${JSON.stringify(chatPirate)}: ${out(3)}`);
      assert(out(4).includes(chatBase) && out(4).includes(chatPirate), `cell 4 should show both native answers: ${out(4)}`);
      assert(out(6).includes("adapter_1"), `cell 6: ${out(6)}`);
      assert(out(8).includes("lora_A"), `cell 8: ${out(8)}`);
      assert(out(9).includes("adapter_model.safetensors"), `cell 9: ${out(9)}`);
      budgets.notebook_run_all_ms = state.nb.cells.reduce((a, c) => a + (c.ms ?? 0), 0);
      await nb.close();
    });
  }
  if (haveQwen) {
    const guide = ["--adapter", "adapters/qwen-graft-guide"];
    const gpuGuide = nativeGenerate(QWEN_GPU_NEW_TOKENS, [QWEN_GPU_PROMPT], guide, QWEN);
    const chatGuide = nativeGenerate(QWEN_NEW_TOKENS, ["--chat", QWEN_PROMPT], guide, QWEN);
    const chatBase = nativeGenerate(QWEN_NEW_TOKENS, ["--chat", QWEN_PROMPT], [], QWEN);
    // Download (until the GGUF's last byte), load (parse, tokenizer, weights to the device),
    // first token and decode, with the adapter; then the base on the CPU path.
    const runQwen = (device, prompt, n, withBase) =>
      page.evaluate(async ({ endpoint, prompt, n, device, withBase }) => {
        const g = await import("/web/npm/index.js");
        const wasm = await g.initialize();
        let downloaded = null;
        const t0 = performance.now();
        const progress_callback = (p) => {
          if (p.status === "done" && p.file.endsWith(".gguf")) downloaded = performance.now();
        };
        const m = await g.AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-Coder-0.5B-Instruct", { endpoint, device, dtype: "q4_k_m", cache: false, progress_callback });
        const t1 = performance.now();
        await m.load_adapter("graft-rs/qwen-graft-guide", { adapter_name: "graft-guide" });
        let first = null;
        const t2 = performance.now();
        const guide = await m.generate(prompt, { max_new_tokens: n, on_token: () => (first ??= performance.now()) });
        const t3 = performance.now();
        let base = null;
        if (withBase) {
          m.disable_adapters();
          base = await m.generate(prompt, { max_new_tokens: n });
        }
        const r = {
          device: m.device, note: m.device_note, guide, base,
          download_ms: downloaded - t0, load_ms: t1 - downloaded, ttft_ms: first - t2,
          decode_tok_per_s: n > 1 ? (n - 1) / ((t3 - first) / 1000) : null,
          wasm_memory_bytes: wasm.memory.buffer.byteLength,
        };
        m.dispose();
        return r;
      }, { endpoint: hub.endpoint, prompt, n, device, withBase });

    await test("Qwen2.5-Coder-0.5B Q4_K_M + the graft-guide adapter on the wasm CPU path: the same answers as native graft", async () => {
      const r = await runQwen("cpu", [{ role: "user", content: QWEN_PROMPT }], QWEN_NEW_TOKENS, true);
      budgets.qwen_cpu = { prompt: QWEN_PROMPT, new_tokens: QWEN_NEW_TOKENS, ...r };
      assert(r.device === "cpu", `device ${r.device}`);
      assert(r.guide === chatGuide, `adapter answer differs:\n browser: ${JSON.stringify(r.guide)}\n native:  ${JSON.stringify(chatGuide)}`);
      assert(r.base === chatBase, `base answer differs:\n browser: ${JSON.stringify(r.base)}\n native:  ${JSON.stringify(chatBase)}`);
      assert(r.guide !== r.base, "the adapter changes the answer");
    });

    await test("Qwen2.5-Coder-0.5B Q4_K_M + the graft-guide adapter on WebGPU: the same tokens as native graft", async () => {
      const r = await runQwen("webgpu", QWEN_GPU_PROMPT, QWEN_GPU_NEW_TOKENS, false);
      budgets.qwen_webgpu = { prompt: QWEN_GPU_PROMPT, new_tokens: QWEN_GPU_NEW_TOKENS, ...r };
      assert(r.device === "webgpu", `device ${r.device}: ${r.note}`);
      assert(r.guide === gpuGuide, `adapter answer differs:\n browser: ${JSON.stringify(r.guide)}\n native:  ${JSON.stringify(gpuGuide)}`);
    });
  }
  await gpuBrowser.close();

  await test("without WebGPU the CPU path runs and the page says so", async () => {
    const b = await browser(false);
    const p = await b.newPage();
    await p.goto(`${site}/web/notebook/index.html?${new URLSearchParams({ endpoint: hub.endpoint, tiny: "graft-rs/tiny-llama" })}`);
    await p.evaluate(() => window.runCell(5));
    const r = await p.evaluate(() => ({ cell: window.notebook.cells[4], device: window.notebook.device, note: window.notebook.deviceNote, header: document.body.innerText }));
    await b.close();
    assert(r.cell.status === "done", `cell 5: ${JSON.stringify(r.cell)}`);
    assert(r.device === "cpu", `device ${r.device}`);
    assert(/cpu/i.test(r.header) && /webgpu/i.test(r.note), `the page should say it runs on the CPU and why: ${r.note}`);
  });

  await test("a bad repo id, a missing file and a dropped connection show readable errors in their cells; the page keeps working", async () => {
    const b = await browser(true);
    const p = await b.newPage();
    const q = new URLSearchParams({ endpoint: hub.endpoint, base: "graft-rs/does-not-exist", adapter: "graft-rs/no-weights", tiny: "graft-rs/tiny-llama", device: "cpu" });
    await p.goto(`${site}/web/notebook/index.html?${q}`);
    const cell = (n) => p.evaluate((n) => window.runCell(n).then(() => ({ c: window.notebook.cells[n - 1], shown: document.querySelector(`#cell-${n} .output`).innerText })), n);
    const bad = await cell(1);
    const missing = await cell(2);
    const fault = (body) => fetch(`${hub.endpoint}/_graft/faults`, { method: body ? "POST" : "DELETE", body: body && JSON.stringify(body) });
    await fault({ path_contains: "/repos/", origin: "Cdn", times: 0, kind: { DropAfter: { bytes: 1000 } } });
    const dropped = await cell(5);
    await fault(null);
    const after = await cell(5);
    await b.close();
    assert(bad.c.status === "error" && bad.c.error.kind === "RepoNotFound" && /not found/i.test(bad.shown), `bad repo: ${JSON.stringify(bad)}`);
    assert(missing.c.status === "error" && missing.c.error.kind === "RepoFiles" && /no weights/i.test(missing.shown), `missing file: ${JSON.stringify(missing)}`);
    assert(dropped.c.status === "error" && dropped.c.error.kind === "NetworkError" && /broke off|closed early|network/i.test(dropped.shown), `dropped: ${JSON.stringify(dropped)}`);
    assert(after.c.status === "done", `after the errors: ${JSON.stringify(after.c)}`);
  });
} finally {
  hub.proc.kill();
  web.close();
  fs.rmSync(hubRoot, { recursive: true, force: true });
  fs.writeFileSync(path.join(OUT, "budgets.json"), JSON.stringify(budgets, null, 2));
  console.log(`budgets: ${JSON.stringify(budgets)}`);
}
const failed = results.filter((r) => !r.ok);
console.log(`\n${results.length - failed.length} passed, ${failed.length} failed`);
process.exit(failed.length ? 1 : 0);
