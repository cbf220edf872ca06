//! Text as it streams: the new text of each token (held back while it may still become a stop
//! string or is an unfinished UTF-8 sequence), and where a stop string ends the answer.

/// What a sequence has produced as text so far and how much of it was sent.
#[derive(Debug, Default)]
pub struct TextStream {
    /// The text sent to the client.
    sent: String,
}

/// The outcome of one token's text.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Text safe to send now (perhaps empty).
    Send(String),
    /// A stop string appeared: send this last piece (the text before it) and finish.
    Stop(String),
}

impl TextStream {
    /// `text` is the decoded text of every token so far.
    pub fn push(&mut self, text: &str, stops: &[String]) -> Step {
        // Decoding the whole sequence again may re-space earlier text (rare); wait until
        // what was sent is a prefix again.
        if !text.starts_with(&self.sent) {
            return Step::Send(String::new());
        }
        // A stop string can only begin at or after the earliest position not yet safe.
        if let Some(at) = stops.iter().filter_map(|s| text.find(s.as_str())).min() {
            let piece = text.get(self.sent.len()..at).unwrap_or("").to_string();
            self.sent.push_str(&piece);
            return Step::Stop(piece);
        }
        let mut safe = text.len();
        // a partial UTF-8 sequence decodes to U+FFFD: wait for its next bytes
        if text.ends_with('\u{FFFD}') {
            safe -= '\u{FFFD}'.len_utf8();
        }
        // the longest suffix that is a prefix of some stop string stays back
        let end = safe;
        for s in stops {
            for k in (1..s.len()).rev() {
                if k <= end && s.is_char_boundary(k) && text[..end].ends_with(&s[..k]) {
                    safe = safe.min(end - k);
                    break;
                }
            }
        }
        while !text.is_char_boundary(safe) {
            safe -= 1;
        }
        let piece = text
            .get(self.sent.len()..safe.max(self.sent.len()))
            .unwrap_or("")
            .to_string();
        self.sent.push_str(&piece);
        Step::Send(piece)
    }

    /// At the end (EOS, length): whatever was held back, except an unfinished character.
    pub fn flush(&mut self, text: &str) -> String {
        if !text.starts_with(&self.sent) {
            return String::new();
        }
        let rest = text[self.sent.len()..]
            .trim_end_matches('\u{FFFD}')
            .to_string();
        self.sent.push_str(&rest);
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_a_possible_stop_and_stops_before_it() {
        let stops = vec!["END".to_string()];
        let mut t = TextStream::default();
        assert_eq!(t.push("Hello E", &stops), Step::Send("Hello ".into()));
        assert_eq!(t.push("Hello EN", &stops), Step::Send("".into()));
        assert_eq!(t.push("Hello ENX", &stops), Step::Send("ENX".into()));
        assert_eq!(
            t.push("Hello ENX and END more", &stops),
            Step::Stop(" and ".into())
        );
    }

    #[test]
    fn holds_back_a_possible_stop_before_an_unfinished_character() {
        let stops = vec!["ab".to_string()];
        let mut t = TextStream::default();
        assert_eq!(t.push("xa\u{FFFD}", &stops), Step::Send("x".into()));
        assert_eq!(t.push("xab", &stops), Step::Stop("".into()));
    }

    #[test]
    fn waits_for_a_whole_character() {
        let mut t = TextStream::default();
        assert_eq!(t.push("a\u{FFFD}", &[]), Step::Send("a".into()));
        assert_eq!(t.push("aé", &[]), Step::Send("é".into()));
        assert_eq!(t.flush("aé!"), "!");
    }
}
