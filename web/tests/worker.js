// The package from a module Web Worker (used by run.mjs).
import * as graft from "/web/npm/index.js";

self.onmessage = async (e) => {
  const { endpoint, device, tokens } = e.data;
  try {
    const m = await graft.AutoModelForCausalLM.from_pretrained("graft-rs/tiny-lora", { endpoint, device, cache: false });
    const l = await m.logits(tokens);
    self.postMessage({ ok: true, device: m.device, note: m.device_note, data: Array.from(l.data) });
    m.dispose();
  } catch (err) {
    self.postMessage({ ok: false, error: `${err.kind}: ${err.message}` });
  }
};
