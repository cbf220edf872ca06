//! The terminal progress bar (indicatif), shown only when stderr is a terminal.

use std::io::IsTerminal;
use std::sync::Arc;

use crate::options::{Progress, ProgressFn};

/// A bar for one file, or `None` when stderr is not a terminal.
pub fn terminal_bar(file: &str, total: u64) -> Option<ProgressFn> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(file.rsplit('/').next().unwrap_or(file).to_string());
    Some(Arc::new(move |ev: &Progress| match ev {
        Progress::Start { done, .. } | Progress::Advance { done, .. } => bar.set_position(*done),
        Progress::Done { .. } => bar.finish(),
    }))
}
