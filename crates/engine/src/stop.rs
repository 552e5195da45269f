//! Stop strings over streamed text: what can be shown now, and whether a
//! stop string appeared.
//!
//! Text arrives in pieces (one per decoded token), and a stop string may
//! span pieces, so the tail that could still become a stop string is held
//! back until the next piece decides it. The stop string itself, and
//! anything after it, is never shown. Used by the single-request loop
//! ([`crate::generate`]) and by the server's batched loop.

/// Holds back the tail of the text that could start a stop string.
#[derive(Clone, Debug, Default)]
pub struct StopFilter {
    stops: Vec<String>,
    pending: String,
}

impl StopFilter {
    /// A filter for `stops`; empty strings are ignored (they would match
    /// everywhere).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    /// Whether there are stop strings at all.
    pub fn is_active(&self) -> bool {
        !self.stops.is_empty()
    }

    /// Adds text; returns what can be shown and whether a stop string hit
    /// (then the returned text ends right before it, and the filter is
    /// empty).
    pub fn push(&mut self, s: &str) -> (String, bool) {
        self.pending.push_str(s);
        if let Some(i) = self
            .stops
            .iter()
            .filter_map(|st| self.pending.find(st.as_str()))
            .min()
        {
            let out = self.pending[..i].to_string();
            self.pending.clear();
            return (out, true);
        }
        let hold = self
            .stops
            .iter()
            .flat_map(|st| {
                (1..st.len())
                    .rev()
                    .filter(|&k| st.is_char_boundary(k))
                    .map(move |k| &st[..k])
            })
            .filter(|pre| self.pending.ends_with(pre))
            .map(|pre| pre.len())
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// Ends the text: returns what was held back (it did not become a stop
    /// string).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::StopFilter;

    #[test]
    fn stop_filter_holds_back_prefixes_and_cuts_at_stop() {
        let stops = vec!["</s>".to_string(), "User:".to_string()];
        let mut f = StopFilter::new(stops.clone());
        assert_eq!(f.push("Hello <"), ("Hello ".to_string(), false));
        assert_eq!(f.push("/"), (String::new(), false));
        assert_eq!(f.push("b> ok Us"), ("</b> ok ".to_string(), false));
        assert_eq!(f.push("er: hi"), (String::new(), true));
        let mut f = StopFilter::new(stops);
        assert_eq!(f.push("abc"), ("abc".to_string(), false));
        assert_eq!(f.flush(), "");
    }

    #[test]
    fn empty_stop_strings_are_ignored() {
        let mut f = StopFilter::new(vec![String::new()]);
        assert!(!f.is_active());
        assert_eq!(f.push("abc"), ("abc".to_string(), false));
    }

    #[test]
    fn earliest_stop_wins_and_multibyte_prefixes_are_held() {
        let mut f = StopFilter::new(vec!["cd".into(), "bc".into()]);
        assert_eq!(f.push("abcd"), ("a".to_string(), true));
        let mut f = StopFilter::new(vec!["é!".into()]);
        assert_eq!(f.push("caf\u{e9}"), ("caf".to_string(), false));
        assert_eq!(f.push("?"), ("\u{e9}?".to_string(), false));
    }
}
