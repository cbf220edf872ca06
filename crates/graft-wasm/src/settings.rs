//! The options JavaScript passes, parsed from JSON (so the parsing is testable natively).

use serde_json::Value;

/// `from_pretrained(id, options)`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadSettings {
    pub endpoint: Option<String>,
    pub token: Option<String>,
    pub revision: Option<String>,
    /// `"webgpu"`, `"cpu"` or `"auto"` (default: WebGPU when the browser has it).
    pub device: String,
    /// A GGUF file name, or a dtype (`q4_1`, `q8_0`, … picks the GGUF whose name has it;
    /// `int8`, `nf4`, `q8_0`, `q4_0` quantize a safetensors model while loading).
    pub dtype: Option<String>,
    pub gguf_file: Option<String>,
    /// Positions the GPU's KV cache holds (default 2048).
    pub max_context: Option<usize>,
    /// The Cache API cache's name (`null` disables caching).
    pub cache_name: Option<String>,
    /// For an adapter repo whose `base_model_name_or_path` is missing: the base to use.
    pub base_model: Option<String>,
}

fn str_field(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string)
}

impl LoadSettings {
    pub fn from_json(v: &Value) -> Result<Self, String> {
        if !(v.is_object() || v.is_null()) {
            return Err("options must be an object".into());
        }
        let device = str_field(v, "device").unwrap_or_else(|| "auto".into());
        if !["auto", "webgpu", "cpu", "wasm"].contains(&device.as_str()) {
            return Err(format!(
                "device `{device}` is not one of \"webgpu\", \"cpu\", \"auto\""
            ));
        }
        let cache_name = match v.get("cache") {
            Some(Value::Bool(false)) | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            _ => Some("graft-hub".to_string()),
        };
        Ok(LoadSettings {
            endpoint: str_field(v, "endpoint"),
            token: str_field(v, "token"),
            revision: str_field(v, "revision"),
            device: if device == "wasm" {
                "cpu".into()
            } else {
                device
            },
            dtype: str_field(v, "dtype"),
            gguf_file: str_field(v, "gguf_file"),
            max_context: v
                .get("max_context")
                .and_then(Value::as_u64)
                .map(|n| n as usize),
            cache_name,
            base_model: str_field(v, "base_model"),
        })
    }

    /// Which GGUF to take among `names`: the explicit file, else the one whose name contains
    /// the dtype (case-insensitive), else the only one.
    pub fn pick_gguf<'a>(&self, names: &[&'a str]) -> Result<Option<&'a str>, String> {
        if let Some(f) = &self.gguf_file {
            return names
                .iter()
                .find(|n| *n == f)
                .map(|n| Some(*n))
                .ok_or_else(|| format!("the repository has no GGUF file `{f}`"));
        }
        if names.len() <= 1 {
            return Ok(names.first().copied());
        }
        let Some(d) = &self.dtype else {
            return Err(format!(
                "the repository has several GGUF files ({}); choose one with the `dtype` or `gguf_file` option",
                names.join(", ")
            ));
        };
        let d = d.to_ascii_lowercase();
        let hits: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| n.to_ascii_lowercase().contains(&d))
            .collect();
        match hits.as_slice() {
            [one] => Ok(Some(one)),
            [] => Err(format!(
                "no GGUF file matches dtype `{d}` ({})",
                names.join(", ")
            )),
            many => Err(format!(
                "several GGUF files match dtype `{d}` ({}); pass `gguf_file`",
                many.join(", ")
            )),
        }
    }
}

/// `generate(ids, options)`.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateSettings {
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub seed: u64,
}

impl GenerateSettings {
    pub fn from_json(v: &Value) -> Result<Self, String> {
        let num = |k: &str| v.get(k).and_then(Value::as_f64);
        let do_sample = v.get("do_sample").and_then(Value::as_bool).unwrap_or(false);
        let temperature = num("temperature").unwrap_or(if do_sample { 1.0 } else { 0.0 }) as f32;
        let s = GenerateSettings {
            max_new_tokens: num("max_new_tokens").unwrap_or(20.0).max(0.0) as usize,
            temperature: if do_sample || v.get("temperature").is_some() {
                temperature
            } else {
                0.0
            },
            top_k: num("top_k").unwrap_or(0.0).max(0.0) as usize,
            top_p: num("top_p").unwrap_or(1.0) as f32,
            seed: num("seed").unwrap_or(0.0).max(0.0) as u64,
        };
        if !s.temperature.is_finite() || s.temperature < 0.0 {
            return Err("temperature must be ≥ 0".into());
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return Err("top_p must be in (0, 1]".into());
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn options_parse_with_defaults_and_errors() {
        let s = LoadSettings::from_json(&json!({"device": "webgpu", "dtype": "q4_1"})).unwrap();
        assert_eq!(s.device, "webgpu");
        assert_eq!(s.cache_name.as_deref(), Some("graft-hub"));
        assert!(LoadSettings::from_json(&json!({"device": "tpu"})).is_err());
        assert_eq!(
            LoadSettings::from_json(&json!({"cache": false}))
                .unwrap()
                .cache_name,
            None
        );
        let names = ["m.Q4_1.gguf", "m.Q8_0.gguf"];
        assert_eq!(s.pick_gguf(&names).unwrap(), Some("m.Q4_1.gguf"));
        let none = LoadSettings::default();
        assert!(none.pick_gguf(&names).unwrap_err().contains("dtype"));
        assert_eq!(none.pick_gguf(&["a.gguf"]).unwrap(), Some("a.gguf"));
        let g = GenerateSettings::from_json(&json!({"max_new_tokens": 5})).unwrap();
        assert_eq!((g.max_new_tokens, g.temperature), (5, 0.0));
        assert!(GenerateSettings::from_json(&json!({"top_p": 0})).is_err());
    }
}
