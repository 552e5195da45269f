//! BPE merges of a GGUF vocabulary: parsed from `tokenizer.ggml.merges`, or,
//! for sentencepiece vocabularies that list none, derived from token scores.

use std::collections::{HashMap, HashSet};

pub(crate) type Merges = Vec<(String, String)>;

/// Parses `"left right"` merges in rank order. As llama.cpp does, the split
/// is at the first space after the first byte. Merges whose parts or result
/// are not in `vocab` cannot apply and are dropped; repeats keep their
/// first (best) rank.
pub(crate) fn parse(merges: &[String], vocab: &HashMap<String, u32>) -> Merges {
    let mut out = Vec::with_capacity(merges.len());
    let mut seen: HashSet<(&str, &str)> = HashSet::with_capacity(merges.len());
    let (mut malformed, mut unknown) = (0usize, 0usize);
    for m in merges {
        let Some(pos) = m
            .as_bytes()
            .iter()
            .skip(1)
            .position(|&b| b == b' ')
            .map(|p| p + 1)
        else {
            malformed += 1;
            continue;
        };
        let (left, right) = (&m[..pos], &m[pos + 1..]);
        if right.is_empty() {
            malformed += 1;
            continue;
        }
        if !vocab.contains_key(left)
            || !vocab.contains_key(right)
            || !vocab.contains_key(&format!("{left}{right}"))
        {
            unknown += 1;
            continue;
        }
        if seen.insert((left, right)) {
            out.push((left.to_string(), right.to_string()));
        }
    }
    if malformed > 0 {
        tracing::warn!("ignored {malformed} malformed BPE merges (expected \"left right\")");
    }
    if unknown > 0 {
        tracing::warn!("ignored {unknown} BPE merges whose tokens are not in the vocabulary");
    }
    out
}

/// Merges implied by a scored vocabulary, the way `transformers` rebuilds
/// them for sentencepiece models (`generate_merges`): every split of a
/// token into two tokens is a merge; merges producing higher-scored tokens
/// come first, then longer left parts, then longer right parts.
pub(crate) fn from_scores(
    tokens: &[String],
    scores: &[f32],
    vocab: &HashMap<String, u32>,
) -> Merges {
    struct Cand<'a> {
        left: &'a str,
        right: &'a str,
        score: f32,
        left_chars: usize,
        right_chars: usize,
    }
    let mut all: Vec<Cand> = Vec::new();
    let mut local: Vec<Cand> = Vec::new();
    for (token, &score) in tokens.iter().zip(scores) {
        local.clear();
        let total_chars = token.chars().count();
        for (n, (at, _)) in token.char_indices().enumerate().skip(1) {
            let (left, right) = token.split_at(at);
            if let (Some(_), Some(_)) = (vocab.get(left), vocab.get(right)) {
                local.push(Cand {
                    left,
                    right,
                    score,
                    left_chars: n,
                    right_chars: total_chars - n,
                });
            }
        }
        local.sort_by_key(|c| (vocab[c.left], vocab[c.right]));
        all.append(&mut local);
    }
    // Stable, descending: equal keys keep their order, as Python's sort does.
    all.sort_by(|a, b| {
        b.score
            .partial_cmp(&a.score)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.left_chars.cmp(&a.left_chars))
            .then(b.right_chars.cmp(&a.right_chars))
    });
    let mut seen: HashSet<(&str, &str)> = HashSet::with_capacity(all.len());
    all.into_iter()
        .filter(|c| seen.insert((c.left, c.right)))
        .map(|c| (c.left.to_string(), c.right.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(tokens: &[&str]) -> HashMap<String, u32> {
        tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect()
    }

    #[test]
    fn parses_and_filters_merges() {
        let v = vocab(&["a", "b", "ab", "c", "abc", " ", "x"]);
        let merges: Vec<String> = ["a b", "ab c", "a b", "nospace", "a x", "", "a ", "b c"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            parse(&merges, &v),
            vec![("a".into(), "b".into()), ("ab".into(), "c".into())]
        );
    }

    #[test]
    fn split_is_after_the_first_byte() {
        // A left part that starts with a space, as some vocabularies have.
        let v = vocab(&[" ", "  ", "a"]);
        let merges = vec!["  ".to_string(), "   ".to_string()];
        assert_eq!(parse(&merges, &v), vec![(" ".into(), " ".into())]);
    }

    #[test]
    fn scores_order_merges() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -0.5];
        let v: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let m = from_scores(&tokens, &scores, &v);
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        // "abc" (-0.5): "ab"+"c" (longer left first), then "a"+"bc"; then "ab" (-1), "bc" (-2).
        assert_eq!(m, vec![("ab", "c"), ("a", "bc"), ("a", "b"), ("b", "c")]);
    }
}
