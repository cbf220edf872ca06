//! `graft generate`: text (or ids) streamed to stdout, speeds to stderr.

use std::io::Write;
use std::time::Instant;

use graft_models::Sampling;
use graft_text::Message;

use super::model::{open, to_device, tokenizer_for, ModelArgs};
use crate::CliResult;

pub struct GenArgs<'a> {
    pub max_new: usize,
    pub tokens: Option<&'a [u32]>,
    pub chat: Option<&'a str>,
    pub system: Option<&'a str>,
    pub prompt: Option<&'a str>,
    pub sampling: Sampling,
}

pub fn generate(args: &ModelArgs, g: GenArgs) -> CliResult<()> {
    let (mut model, base_dir) = open(args)?;
    to_device(args, &mut model)?;
    let mut eos = model.eos_token_ids();
    let tokenizer = match g.tokens {
        Some(_) => None,
        None => Some(tokenizer_for(&model, &base_dir)?),
    };
    let ids: Vec<u32> = match (g.tokens, &tokenizer) {
        (Some(t), _) => t.to_vec(),
        (None, Some(tk)) => {
            if let Some(e) = tk.eos_id {
                if !eos.contains(&e) {
                    eos.push(e);
                }
            }
            match (g.chat, g.prompt) {
                (Some(user), _) => {
                    let mut msgs = Vec::new();
                    if let Some(sys) = g.system {
                        msgs.push(Message::new("system", sys));
                    }
                    msgs.push(Message::new("user", user));
                    // apply_chat_template(tokenize=True) encodes without adding special tokens.
                    tk.encode(&tk.apply_chat_template(&msgs, true)?, false)?
                }
                (None, Some(p)) => tk.encode(p, true)?,
                (None, None) => return Err("nothing to generate from".into()),
            }
        }
        _ => return Err("nothing to generate from".into()),
    };
    let t0 = Instant::now();
    let mut first_token_at = None;
    let mut stdout = std::io::stdout();
    let mut produced: Vec<u32> = Vec::new();
    let mut printed = String::new();
    let on_token = |tok: u32| {
        first_token_at.get_or_insert_with(|| t0.elapsed());
        produced.push(tok);
        match &tokenizer {
            // Stream text: decode everything so far and print what is new.
            Some(tk) => {
                if let Ok(text) = tk.decode(&produced, true) {
                    if let Some(new) = text.strip_prefix(printed.as_str()) {
                        let _ = write!(stdout, "{new}");
                        printed = text;
                    }
                }
            }
            None => {
                let sep = if produced.len() == 1 { "" } else { "," };
                let _ = write!(stdout, "{sep}{tok}");
            }
        }
        let _ = stdout.flush();
    };
    let out = model.generate_with(&ids, g.max_new, &eos, &g.sampling, on_token)?;
    println!();
    let total = t0.elapsed().as_secs_f64();
    let prefill = first_token_at.map(|d| d.as_secs_f64()).unwrap_or(total);
    let decode_n = out.len().saturating_sub(1);
    eprintln!(
        "graft: prompt {} tokens in {:.3} s ({:.1} tokens/s); {} new tokens, decode {:.1} tokens/s",
        ids.len(),
        prefill,
        ids.len() as f64 / prefill.max(1e-9),
        out.len(),
        decode_n as f64 / (total - prefill).max(1e-9),
    );
    Ok(())
}
