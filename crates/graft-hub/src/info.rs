//! A repository's file list at a commit (`/api/{type}s/{id}/revision/{rev}?blobs=true`), and
//! which of its files a model or an adapter needs. Shared by the native and browser clients.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::repo::{is_commit_hash, validate_path, Repo};
use crate::verify::Expected;

/// One file of a repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sibling {
    pub path: String,
    /// Size in bytes (absent when the listing came without `blobs=true`).
    pub size: Option<u64>,
    /// What its content hashes to: sha256 for LFS files, git blob sha1 otherwise.
    pub expected: Option<Expected>,
}

/// The commit a revision points to and the files there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoInfo {
    pub commit: String,
    pub siblings: Vec<Sibling>,
}

/// Most files a listing may hold: bounds what a hostile server can make us allocate.
const MAX_SIBLINGS: usize = 100_000;

impl RepoInfo {
    /// Parses the revision API's JSON. Every path is validated: one unsafe name rejects the
    /// whole listing (the server is not trusted).
    pub fn from_json(url: &str, v: &Value) -> Result<Self> {
        let proto = |what: &str| Error::Protocol {
            url: url.to_string(),
            what: what.to_string(),
        };
        let commit = v
            .get("sha")
            .and_then(Value::as_str)
            .ok_or_else(|| proto("no `sha` (commit) in the repository info"))?;
        if !is_commit_hash(commit) {
            return Err(proto("`sha` is not a 40-character commit hash"));
        }
        let list = v
            .get("siblings")
            .and_then(Value::as_array)
            .ok_or_else(|| proto("no `siblings` list in the repository info"))?;
        if list.len() > MAX_SIBLINGS {
            return Err(proto("more than 100000 files listed"));
        }
        let mut siblings = Vec::with_capacity(list.len());
        for s in list {
            let path = s
                .get("rfilename")
                .and_then(Value::as_str)
                .ok_or_else(|| proto("a sibling without `rfilename`"))?;
            validate_path(path)?;
            let size = s.get("size").and_then(Value::as_u64);
            let lfs = s.get("lfs");
            let expected = match lfs {
                Some(l) if !l.is_null() => l
                    .get("sha256")
                    .and_then(Value::as_str)
                    .and_then(Expected::from_etag)
                    .filter(|e| matches!(e, Expected::Sha256(_))),
                _ => s
                    .get("blobId")
                    .and_then(Value::as_str)
                    .and_then(Expected::from_etag)
                    .filter(|e| matches!(e, Expected::GitSha1(_))),
            };
            let size = match lfs.and_then(|l| l.get("size")).and_then(Value::as_u64) {
                Some(n) => Some(n),
                None => size,
            };
            siblings.push(Sibling {
                path: path.to_string(),
                size,
                expected,
            });
        }
        Ok(RepoInfo {
            commit: commit.to_string(),
            siblings,
        })
    }

    pub fn has(&self, path: &str) -> bool {
        self.siblings.iter().any(|s| s.path == path)
    }

    pub fn get(&self, path: &str) -> Option<&Sibling> {
        self.siblings.iter().find(|s| s.path == path)
    }
}

/// Joins a subfolder and a file name as the Hub does (`subfolder/filename`).
pub fn in_subfolder(subfolder: Option<&str>, file: &str) -> String {
    match subfolder
        .map(|s| s.trim_matches('/'))
        .filter(|s| !s.is_empty())
    {
        Some(s) => format!("{s}/{file}"),
        None => file.to_string(),
    }
}

/// The files that make a PEFT adapter, in the order to fetch them.
pub fn adapter_files(repo: &Repo, info: &RepoInfo, subfolder: Option<&str>) -> Result<Vec<String>> {
    let cfg = in_subfolder(subfolder, "adapter_config.json");
    if !info.has(&cfg) {
        return Err(Error::Files {
            repo: repo.to_string(),
            what: format!("no `{cfg}`: this is not a PEFT adapter repository (or the adapter is in a subfolder: pass it)"),
        });
    }
    let st = in_subfolder(subfolder, "adapter_model.safetensors");
    let bin = in_subfolder(subfolder, "adapter_model.bin");
    let mut files = vec![cfg];
    if info.has(&st) {
        files.push(st);
    } else if info.has(&bin) {
        // Fetched so that the loader can name the conversion; a pickle is never executed.
        files.push(bin);
    } else {
        return Err(Error::Files {
            repo: repo.to_string(),
            what: format!("the adapter has no weights (`{st}`)"),
        });
    }
    Ok(files)
}

/// What a base model repository holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelLayout {
    /// `config.json` + `model.safetensors` (+ tokenizer files).
    Safetensors { files: Vec<String> },
    /// `config.json` + `model.safetensors.index.json`: the shards come from the index.
    Sharded { files: Vec<String>, index: String },
    /// One GGUF file.
    Gguf { file: String },
}

/// Tokenizer and generation files fetched with a safetensors model when the repo has them.
const SIDE_FILES: &[&str] = &[
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// Picks a base model's files: safetensors (single or sharded) first, else a GGUF file —
/// `gguf_file` when given (transformers' `gguf_file=`), else the only one.
pub fn model_layout(repo: &Repo, info: &RepoInfo, gguf_file: Option<&str>) -> Result<ModelLayout> {
    if let Some(g) = gguf_file {
        validate_path(g)?;
        if !info.has(g) {
            return Err(Error::EntryNotFound {
                repo: repo.to_string(),
                revision: repo.revision.clone(),
                path: g.to_string(),
            });
        }
        return Ok(ModelLayout::Gguf {
            file: g.to_string(),
        });
    }
    let side = || {
        SIDE_FILES
            .iter()
            .filter(|f| info.has(f))
            .map(|f| f.to_string())
    };
    if info.has("config.json") {
        let mut files = vec!["config.json".to_string()];
        if info.has("model.safetensors") {
            files.push("model.safetensors".into());
            files.extend(side());
            return Ok(ModelLayout::Safetensors { files });
        }
        if info.has("model.safetensors.index.json") {
            files.extend(side());
            return Ok(ModelLayout::Sharded {
                files,
                index: "model.safetensors.index.json".into(),
            });
        }
    }
    let ggufs: Vec<&str> = info
        .siblings
        .iter()
        .map(|s| s.path.as_str())
        .filter(|p| p.ends_with(".gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => Ok(ModelLayout::Gguf {
            file: one.to_string(),
        }),
        [] => {
            let what = if info.has("pytorch_model.bin") {
                "only `pytorch_model.bin` (a pickle) is there; graft reads safetensors or GGUF. Convert it (transformers: `model.save_pretrained(dir, safe_serialization=True)`)"
            } else {
                "no model weights (config.json + model.safetensors, a sharded index, or a .gguf file)"
            };
            Err(Error::Files {
                repo: repo.to_string(),
                what: what.to_string(),
            })
        }
        many => Err(Error::Files {
            repo: repo.to_string(),
            what: format!(
                "several GGUF files ({}); choose one by name",
                many.join(", ")
            ),
        }),
    }
}

/// The shard file names of a `model.safetensors.index.json`, validated as plain names.
pub fn shard_names(repo: &Repo, index: &Value) -> Result<Vec<String>> {
    let bad = |what: String| Error::Files {
        repo: repo.to_string(),
        what,
    };
    let map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("model.safetensors.index.json has no `weight_map`".into()))?;
    let mut shards: Vec<String> = Vec::new();
    for v in map.values() {
        let f = v
            .as_str()
            .ok_or_else(|| bad("weight_map values must be file names".into()))?;
        validate_path(f)?;
        if f.contains('/') {
            return Err(bad(format!("shard `{f}` is not in the model's folder")));
        }
        if !shards.iter().any(|s| s == f) {
            shards.push(f.to_string());
        }
    }
    shards.sort();
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info(files: &[&str]) -> RepoInfo {
        RepoInfo {
            commit: "0".repeat(40),
            siblings: files
                .iter()
                .map(|f| Sibling {
                    path: f.to_string(),
                    size: None,
                    expected: None,
                })
                .collect(),
        }
    }

    #[test]
    fn parses_the_revision_api() {
        let v = json!({"id": "o/n", "sha": "a".repeat(40), "siblings": [
            {"rfilename": "config.json", "size": 10, "blobId": "b".repeat(40)},
            {"rfilename": "model.safetensors", "size": 99, "blobId": "c".repeat(40),
             "lfs": {"sha256": "d".repeat(64), "size": 1000, "pointerSize": 134}}]});
        let i = RepoInfo::from_json("u", &v).unwrap();
        assert_eq!(
            i.siblings[0].expected,
            Some(Expected::GitSha1("b".repeat(40)))
        );
        assert_eq!(
            i.siblings[1].expected,
            Some(Expected::Sha256("d".repeat(64)))
        );
        assert_eq!(i.siblings[1].size, Some(1000));
        let evil = json!({"sha": "a".repeat(40), "siblings": [{"rfilename": "../../x"}]});
        assert!(matches!(
            RepoInfo::from_json("u", &evil),
            Err(Error::UnsafePath { .. })
        ));
        let nosha = json!({"sha": "zz", "siblings": []});
        assert!(matches!(
            RepoInfo::from_json("u", &nosha),
            Err(Error::Protocol { .. })
        ));
    }

    #[test]
    fn picks_model_and_adapter_files() {
        let r = Repo::model("o/n").unwrap();
        let i = info(&[
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "README.md",
        ]);
        assert_eq!(
            model_layout(&r, &i, None).unwrap(),
            ModelLayout::Safetensors {
                files: vec![
                    "config.json".into(),
                    "model.safetensors".into(),
                    "tokenizer.json".into()
                ]
            }
        );
        let i = info(&["a.Q4_1.gguf", "b.Q8_0.gguf"]);
        assert!(model_layout(&r, &i, None)
            .unwrap_err()
            .to_string()
            .contains("choose one by name"));
        assert_eq!(
            model_layout(&r, &i, Some("b.Q8_0.gguf")).unwrap(),
            ModelLayout::Gguf {
                file: "b.Q8_0.gguf".into()
            }
        );
        let i = info(&["sub/adapter_config.json", "sub/adapter_model.safetensors"]);
        assert_eq!(adapter_files(&r, &i, Some("sub")).unwrap().len(), 2);
        assert!(adapter_files(&r, &i, None).is_err());
        let idx = json!({"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors", "c": "m-1.safetensors"}});
        assert_eq!(
            shard_names(&r, &idx).unwrap(),
            vec!["m-1.safetensors", "m-2.safetensors"]
        );
        let idx = json!({"weight_map": {"a": "../m.safetensors"}});
        assert!(shard_names(&r, &idx).is_err());
    }
}
