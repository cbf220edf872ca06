//! Rotary position embeddings: the parameters, read from either transformers spelling, and
//! the inverse frequencies every backend uses.
//!
//! transformers ≤ 4 writes a top-level `rope_theta` and `rope_scaling` (`{"type"|"rope_type": …,
//! "factor": …}`); transformers 5 writes one `rope_parameters` object carrying `rope_theta` and
//! `rope_type`, nested per layer type (`{"full_attention": {…}, "sliding_attention": {…}}`) for
//! models whose layers differ (Gemma 3). Both are read, with transformers 5's precedence
//! (`rope_scaling` over `rope_parameters`, the object's `rope_theta` over the top-level one),
//! and where the two spellings in one file would give different numbers under transformers 4
//! and 5, the file is refused rather than read one way.

use serde_json::{Map, Value};

use crate::config::{finite, positive_int, show, ConfigReader, Source};
use crate::error::Result;

/// How the frequencies are scaled.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// `rope_type: linear`: every frequency divided by `factor`.
    Linear {
        factor: f64,
    },
    /// `rope_type: llama3` (Llama 3.1+): low frequencies divided by `factor`, high ones kept, a
    /// smooth ramp between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// `rope_type: longrope` (Phi-3/3.5's `su`): per-frequency divisors, `short_factor` for a
    /// forward pass within `original_max_position_embeddings`, `long_factor` past it; cos and
    /// sin scaled by `attention_factor`.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: usize,
        attention_factor: f64,
    },
}

/// The RoPE of one attention layer: base and scaling, over the whole head.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl Rope {
    /// The `head_dim / 2` inverse frequencies, as transformers' `ROPE_INIT_FUNCTIONS` compute
    /// them (in f64, then rounded once to f32).
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f32> {
        let d = head_dim;
        let base = (0..d / 2).map(|i| 1.0 / self.theta.powf((2 * i) as f64 / d as f64));
        let scaled: Vec<f64> = match &self.scaling {
            RopeScaling::None => base.collect(),
            RopeScaling::LongRope { short_factor, .. } => {
                base.zip(short_factor).map(|(f, s)| f / s).collect()
            }
            RopeScaling::Linear { factor } => base.map(|x| x / factor).collect(),
            &RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: orig,
            } => {
                let low_wl = orig / low_freq_factor;
                let high_wl = orig / high_freq_factor;
                base.map(|f| {
                    let wl = 2.0 * std::f64::consts::PI / f;
                    if wl > low_wl {
                        f / factor
                    } else if wl < high_wl {
                        f
                    } else {
                        let s =
                            (orig / wl - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - s) * f / factor + s * f
                    }
                })
                .collect()
            }
        };
        scaled.into_iter().map(|f| f as f32).collect()
    }

    /// What multiplies cos and sin.
    pub fn attention_scaling(&self) -> f64 {
        match &self.scaling {
            RopeScaling::LongRope {
                attention_factor, ..
            } => *attention_factor,
            _ => 1.0,
        }
    }

    /// LongRoPE's second set: the position past which it applies, and its frequencies.
    pub fn long_inv_freq(&self, head_dim: usize) -> Option<(usize, Vec<f32>)> {
        let RopeScaling::LongRope {
            long_factor,
            original_max_position_embeddings,
            ..
        } = &self.scaling
        else {
            return None;
        };
        let d = head_dim;
        let f = (0..d / 2)
            .zip(long_factor)
            .map(|(i, l)| (1.0 / (l * self.theta.powf((2 * i) as f64 / d as f64))) as f32)
            .collect();
        Some((*original_max_position_embeddings, f))
    }

    /// The number of frequencies the scaling carries per head (LongRoPE's factor lists), to
    /// check against `head_dim / 2`.
    pub fn factor_len(&self) -> Option<usize> {
        match &self.scaling {
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                ..
            } => Some(short_factor.len().min(long_factor.len())),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match &self.scaling {
            RopeScaling::None => format!("default, theta {}", self.theta),
            RopeScaling::Linear { factor } => {
                format!("linear, theta {}, factor {factor}", self.theta)
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => format!(
                "llama3, theta {}, factor {factor}, low_freq_factor {low_freq_factor}, high_freq_factor {high_freq_factor}, original_max_position_embeddings {original_max_position_embeddings}",
                self.theta
            ),
            RopeScaling::LongRope {
                short_factor,
                original_max_position_embeddings,
                attention_factor,
                ..
            } => format!(
                "longrope, theta {}, {} short and long factors, original_max_position_embeddings {original_max_position_embeddings}, attention_factor {attention_factor}",
                self.theta,
                short_factor.len()
            ),
        }
    }
}

/// The RoPE of a whole model: one for every layer, or one per layer type (`None`: that type
/// of layer has no RoPE).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeParams {
    Global(Rope),
    PerLayerType(Vec<(String, Option<Rope>)>),
}

/// What an architecture allows.
#[derive(Debug, Clone, Copy)]
pub struct RopeOptions {
    /// The class's `default_theta` (10000 for the architectures graft runs).
    pub default_theta: f64,
    /// `max_position_embeddings`: LongRoPE without a `factor` takes the ratio of this to
    /// `original_max_position_embeddings` (Phi-3).
    pub max_positions: usize,
    /// The class's default `original_max_position_embeddings` (Phi-3: 4096).
    pub default_original_max: Option<usize>,
}

const TYPES: &str = "default, linear, llama3, longrope";

/// Reads the RoPE parameters. The architecture's key list must name `rope_theta`,
/// `rope_scaling`, `rope_parameters`, `partial_rotary_factor` and
/// `original_max_position_embeddings` as read.
pub fn read(r: &mut ConfigReader, opts: &RopeOptions) -> Result<RopeParams> {
    let scaling = r.raw("rope_scaling")?;
    let params = r.raw("rope_parameters")?;
    let top_theta = match r.raw("rope_theta")? {
        None => None,
        Some(v) => Some(finite(v).filter(|t| *t > 0.0).ok_or_else(|| {
            r.bad(
                "rope_theta",
                format!("= {} must be a positive number", show(v)),
            )
        })?),
    };
    let partial = r.raw("partial_rotary_factor")?;
    check_partial(r, "partial_rotary_factor", partial)?;
    let top_orig = r.raw("original_max_position_embeddings")?;
    let (key, dict) = match (scaling, params) {
        (Some(s), Some(p)) if s != p => {
            return Err(r.unsupported(
                "rope_scaling",
                s,
                &format!(
                    "the file also has `rope_parameters` = {}, and the two disagree; keep one (transformers 5 writes only `rope_parameters`)",
                    show(p)
                ),
            ))
        }
        (Some(s), _) => ("rope_scaling", Some(s)),
        (None, Some(p)) => ("rope_parameters", Some(p)),
        (None, None) => ("rope_parameters", None),
    };
    let Some(dict) = dict else {
        let theta = top_theta.unwrap_or(opts.default_theta);
        let src = match top_theta {
            Some(_) => Source::File("rope_theta".into()),
            None => Source::Default,
        };
        let rope = Rope {
            theta,
            scaling: RopeScaling::None,
        };
        r.record("rope", rope.describe(), src);
        return Ok(RopeParams::Global(rope));
    };
    let obj = dict
        .as_object()
        .ok_or_else(|| r.bad(key, format!("= {} must be an object", show(dict))))?;
    if is_nested(obj) {
        let mut out = Vec::new();
        for (layer_type, v) in obj {
            let path = format!("{key}.{layer_type}");
            let rope = match v {
                Value::Null => None,
                Value::Object(o) => Some(one(r, &path, o, top_theta, top_orig, opts, false)?),
                other => return Err(r.bad(&path, format!("= {} must be an object", show(other)))),
            };
            let shown = rope.as_ref().map_or("none".to_string(), Rope::describe);
            r.record(&format!("rope ({layer_type})"), shown, Source::File(path));
            out.push((layer_type.clone(), rope));
        }
        return Ok(RopeParams::PerLayerType(out));
    }
    let rope = one(r, key, obj, top_theta, top_orig, opts, true)?;
    Ok(RopeParams::Global(rope))
}

/// `{"full_attention": {…}, …}`: every value an object (or null), none a number or a string.
fn is_nested(obj: &Map<String, Value>) -> bool {
    !obj.is_empty()
        && obj.values().all(|v| v.is_object() || v.is_null())
        && obj.values().any(Value::is_object)
}

fn check_partial(r: &ConfigReader, key: &str, v: Option<&Value>) -> Result<()> {
    match v {
        None => Ok(()),
        Some(v) if v.as_f64() == Some(1.0) => Ok(()),
        Some(v) => Err(r.unsupported(
            key,
            v,
            "rotary embeddings over part of the head are not implemented for this architecture (transformers' own Llama-family code rotates the whole head)",
        )),
    }
}

/// One flat RoPE object at `path`.
fn one(
    r: &mut ConfigReader,
    path: &str,
    o: &Map<String, Value>,
    top_theta: Option<f64>,
    top_orig: Option<&Value>,
    opts: &RopeOptions,
    record: bool,
) -> Result<Rope> {
    let sub = |k: &str| format!("{path}.{k}");
    let num = |r: &ConfigReader, k: &str| -> Result<Option<f64>> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => finite(v)
                .filter(|x| *x > 0.0)
                .map(Some)
                .ok_or_else(|| r.bad(&sub(k), format!("= {} must be a positive number", show(v)))),
        }
    };
    let need = |r: &ConfigReader, k: &str, ty: &str| -> Result<f64> {
        num(r, k)?.ok_or_else(|| {
            r.bad(
                &sub(k),
                format!("is missing; rope_type `{ty}` requires it (transformers refuses the config too)"),
            )
        })
    };
    // `rope_type` and its transformers-4 spelling `type`: transformers 4 lets `type` win,
    // 5 lets `rope_type` win, so two different values are refused.
    let ty = match (o.get("rope_type"), o.get("type")) {
        (Some(a), Some(b)) if a != b => {
            return Err(r.unsupported(
                &sub("rope_type"),
                a,
                &format!(
                "`{}` = {} disagrees with it (transformers 4 reads `type`, 5 reads `rope_type`)",
                sub("type"),
                show(b)
            ),
            ))
        }
        (Some(v), _) | (None, Some(v)) => v
            .as_str()
            .ok_or_else(|| r.bad(&sub("rope_type"), format!("= {} must be a string", show(v))))?
            .to_string(),
        (None, None) => "default".to_string(),
    };
    check_partial(
        r,
        &sub("partial_rotary_factor"),
        o.get("partial_rotary_factor").filter(|v| !v.is_null()),
    )?;
    let inner_theta = num(r, "rope_theta")?;
    let theta = match (inner_theta, top_theta) {
        (Some(a), Some(b)) if a != b => {
            return Err(r.unsupported(
                &sub("rope_theta"),
                &Value::from(a),
                &format!("the top-level `rope_theta` = {b} disagrees with it (transformers 4 reads the top-level one, 5 the one in `{path}`)"),
            ))
        }
        (Some(a), _) => a,
        (None, Some(b)) => b,
        (None, None) => opts.default_theta,
    };
    let mut used = vec!["rope_type", "type", "rope_theta", "partial_rotary_factor"];
    let scaling = match ty.as_str() {
        "default" => RopeScaling::None,
        "linear" => {
            used.push("factor");
            RopeScaling::Linear {
                factor: need(r, "factor", "linear")?,
            }
        }
        "llama3" => {
            used.extend([
                "factor",
                "low_freq_factor",
                "high_freq_factor",
                "original_max_position_embeddings",
            ]);
            let low = need(r, "low_freq_factor", "llama3")?;
            let high = need(r, "high_freq_factor", "llama3")?;
            if high <= low {
                return Err(r.bad(
                    &sub("high_freq_factor"),
                    format!("= {high} must be greater than low_freq_factor = {low}"),
                ));
            }
            // transformers 5 moves a top-level value into the object; 4 requires it inside.
            let orig = match num(r, "original_max_position_embeddings")? {
                Some(x) => x,
                None => match top_orig.and_then(positive_int) {
                    Some(x) => x as f64,
                    None => {
                        return Err(r.bad(
                            &sub("original_max_position_embeddings"),
                            "is missing; rope_type `llama3` requires it (transformers 4 refuses the config, 5 would assume max_position_embeddings)",
                        ))
                    }
                },
            };
            RopeScaling::Llama3 {
                factor: need(r, "factor", "llama3")?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: orig,
            }
        }
        "longrope" | "su" => {
            used.extend([
                "short_factor",
                "long_factor",
                "factor",
                "attention_factor",
                "original_max_position_embeddings",
            ]);
            let list = |r: &ConfigReader, k: &str| -> Result<Vec<f64>> {
                let v = o.get(k).ok_or_else(|| {
                    r.bad(&sub(k), "is missing; rope_type `longrope` requires it")
                })?;
                v.as_array()
                    .and_then(|a| {
                        a.iter()
                            .map(|x| finite(x).filter(|f| *f > 0.0))
                            .collect::<Option<Vec<f64>>>()
                    })
                    .ok_or_else(|| {
                        r.bad(
                            &sub(k),
                            format!("= {} must be a list of positive numbers", show(v)),
                        )
                    })
            };
            let short_factor = list(r, "short_factor")?;
            let long_factor = list(r, "long_factor")?;
            let orig = match num(r, "original_max_position_embeddings")? {
                Some(x) => positive_int(&Value::from(x)),
                None => top_orig
                    .and_then(positive_int)
                    .or(opts.default_original_max),
            }
            .ok_or_else(|| {
                r.bad(
                    &sub("original_max_position_embeddings"),
                    "is missing; rope_type `longrope` requires it",
                )
            })?;
            let ratio = opts.max_positions as f64 / orig as f64;
            let factor = match num(r, "factor")? {
                // transformers 4 takes the ratio whenever the top-level original length is
                // there, 5 takes `factor`: refused where they differ
                Some(f) if top_orig.is_some() && f != ratio => {
                    return Err(r.unsupported(
                        &sub("factor"),
                        &Value::from(f),
                        &format!("max_position_embeddings / original_max_position_embeddings = {ratio} disagrees with it (transformers 4 uses the ratio, 5 the factor)"),
                    ))
                }
                Some(f) => f,
                None => ratio,
            };
            let attention_factor = match num(r, "attention_factor")? {
                Some(a) => a,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / (orig as f64).ln()).sqrt(),
            };
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings: orig,
                attention_factor,
            }
        }
        other => {
            return Err(r.unsupported(
                &sub("rope_type"),
                &Value::String(other.into()),
                &format!("RoPE type `{other}` is not implemented ({TYPES} are)"),
            ))
        }
    };
    for k in o.keys().filter(|k| !used.contains(&k.as_str())) {
        r.note_unused(&sub(k));
    }
    let rope = Rope { theta, scaling };
    if record {
        // the keys the values came from: the object, and the top-level base if it was used
        let from = if inner_theta.is_none() && top_theta.is_some() {
            format!("{path}, rope_theta")
        } else {
            path.to_string()
        };
        r.record("rope", rope.describe(), Source::File(from));
    }
    Ok(rope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{read as rd, ConfigReader, Key};
    use serde_json::json;

    const KEYS: &[Key] = &[
        rd("rope_theta"),
        rd("rope_scaling"),
        rd("rope_parameters"),
        rd("partial_rotary_factor"),
        rd("original_max_position_embeddings"),
    ];
    const OPTS: RopeOptions = RopeOptions {
        max_positions: 2048,
        default_original_max: None,
        default_theta: 10000.0,
    };

    fn rope(cfg: serde_json::Value) -> Result<RopeParams> {
        let mut r = ConfigReader::new(&cfg, "config.json", "LlamaConfig", KEYS)?;
        read(&mut r, &OPTS)
    }

    fn global(theta: f64, scaling: RopeScaling) -> RopeParams {
        RopeParams::Global(Rope { theta, scaling })
    }

    #[test]
    fn both_spellings_give_the_same_rope() {
        let v4 = rope(json!({"rope_theta": 5000.0, "rope_scaling": null})).unwrap();
        let v5 = rope(json!({"rope_parameters": {"rope_theta": 5000.0, "rope_type": "default"}}))
            .unwrap();
        assert_eq!(v4, v5);
        assert_eq!(v4, global(5000.0, RopeScaling::None));
        let v4 =
            rope(json!({"rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}}))
                .unwrap();
        let v5 = rope(
            json!({"rope_parameters": {"rope_theta": 5e5, "rope_type": "linear", "factor": 2.0}}),
        )
        .unwrap();
        assert_eq!(v4, v5);
        assert_eq!(v4, global(5e5, RopeScaling::Linear { factor: 2.0 }));
    }

    #[test]
    fn no_rope_keys_is_the_class_default() {
        assert_eq!(rope(json!({})).unwrap(), global(10000.0, RopeScaling::None));
    }

    #[test]
    fn llama3_takes_a_top_level_original_length_and_requires_the_rest() {
        let cfg = json!({"rope_theta": 5e5, "original_max_position_embeddings": 64,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}});
        assert_eq!(
            rope(cfg).unwrap(),
            global(
                5e5,
                RopeScaling::Llama3 {
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 64.0
                }
            )
        );
        let e = rope(json!({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("original_max_position_embeddings` is missing"),
            "{e}"
        );
        let e = rope(json!({"rope_parameters": {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rope_parameters.factor` is missing"), "{e}");
    }

    #[test]
    fn the_per_layer_type_form_is_read() {
        let cfg = json!({"rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}});
        let RopeParams::PerLayerType(v) = rope(cfg).unwrap() else {
            panic!("not nested")
        };
        assert_eq!(v.len(), 2);
        assert_eq!(
            v[0],
            (
                "full_attention".to_string(),
                Some(Rope {
                    theta: 1e6,
                    scaling: RopeScaling::Linear { factor: 8.0 }
                })
            )
        );
        assert_eq!(v[1].1.as_ref().unwrap().theta, 1e4);
    }

    #[test]
    fn disagreements_and_unknown_types_are_refused() {
        for (cfg, needle) in [
            (
                json!({"rope_theta": 1e4, "rope_parameters": {"rope_theta": 5e3}}),
                "rope_parameters.rope_theta` = 5000",
            ),
            (
                json!({"rope_scaling": {"type": "linear", "rope_type": "dynamic", "factor": 2.0}}),
                "rope_scaling.rope_type` = \"dynamic\"",
            ),
            (
                json!({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}),
                "RoPE type `yarn` is not implemented",
            ),
            (
                json!({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}}),
                "partial_rotary_factor` = 0.5",
            ),
            (
                json!({"partial_rotary_factor": 0.25}),
                "`partial_rotary_factor` = 0.25",
            ),
            (
                json!({"rope_scaling": {"type": "linear", "factor": 2.0}, "rope_parameters": {"rope_type": "default"}}),
                "`rope_scaling` = ",
            ),
        ] {
            let e = rope(cfg.clone()).unwrap_err().to_string();
            assert!(e.contains(needle), "{cfg}: {e}");
        }
    }

    #[test]
    fn unread_keys_of_the_object_are_reported() {
        let cfg = json!({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "attention_factor": 2.0}});
        let mut r = ConfigReader::new(&cfg, "config.json", "LlamaConfig", KEYS).unwrap();
        read(&mut r, &OPTS).unwrap();
        let u = r.finish();
        assert_eq!(
            u.unused,
            vec!["rope_parameters.attention_factor".to_string()]
        );
    }

    #[test]
    fn llama3_frequencies_follow_the_three_regimes() {
        let r = Rope {
            theta: 10000.0,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64.0,
            },
        };
        let plain = Rope {
            theta: 10000.0,
            scaling: RopeScaling::None,
        }
        .inv_freq(8);
        let f = r.inv_freq(8);
        // wavelengths 2π·[1, 10, 100, 1000]: kept (< 16), smoothed, divided (> 64), divided
        assert_eq!(f[0], plain[0]);
        assert!(f[1] < plain[1] && f[1] > plain[1] / 8.0);
        assert!((f[2] - plain[2] / 8.0).abs() < 1e-9);
    }
}
