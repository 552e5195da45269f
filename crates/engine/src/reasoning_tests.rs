//! Unit and property tests of the reasoning splitter.

use proptest::prelude::*;

use super::*;

fn think(start: Section) -> ReasoningSplitter {
    ReasoningSplitter::new(DEFAULT_OPEN.into(), DEFAULT_CLOSE.into(), start)
}

fn whole(start: Section, text: &str) -> (String, String) {
    let s = think(start).split_all(text);
    (s.reasoning, s.content)
}

/// Pushes `text` cut at `cuts` (byte offsets, moved back to char
/// boundaries), then finishes.
fn pieces(mut sp: ReasoningSplitter, text: &str, cuts: &[usize]) -> Split {
    let mut bounds: Vec<usize> = cuts
        .iter()
        .map(|&c| {
            let mut c = c % (text.len() + 1);
            while !text.is_char_boundary(c) {
                c -= 1;
            }
            c
        })
        .collect();
    bounds.push(0);
    bounds.push(text.len());
    bounds.sort_unstable();
    let mut out = Split::default();
    for w in bounds.windows(2) {
        out.add(sp.push(&text[w[0]..w[1]]));
    }
    out.add(sp.finish());
    out
}

use Section::{Content, Reasoning};

#[test]
fn the_cases_of_the_module_documentation() {
    let cases: &[(Section, &str, &str, &str)] = &[
        // The template opened the block (Qwen3-Thinking, GLM-4.7).
        (
            Reasoning,
            "Let me think.\n</think>\n\nThe answer.",
            "Let me think.",
            "The answer.",
        ),
        // The model opens it (Qwen3 hybrid, GLM-4.5).
        (Content, "<think>\nhmm\n</think>\n\nAnswer", "hmm", "Answer"),
        (Content, "\n<think>a</think>b", "a", "b"),
        // No tags at all.
        (Content, "Just an answer.", "", "Just an answer."),
        (Content, "  two\nlines ", "", "two\nlines "),
        // A closing tag without an opening one (DeepSeek-R1).
        (
            Reasoning,
            "reasoning here</think>answer",
            "reasoning here",
            "answer",
        ),
        // Never closed: all reasoning.
        (Reasoning, "thinking forever...", "thinking forever...", ""),
        (Content, "<think>still thinking \n", "still thinking", ""),
        // One block, at the start; later tags are content.
        (
            Content,
            "<think>a</think>b<think>c</think>",
            "a",
            "b<think>c</think>",
        ),
        (Reasoning, "a</think>b</think>c", "a", "b</think>c"),
        (Content, "Hi <think>x</think>", "", "Hi <think>x</think>"),
        // A repeated opening tag after the template's is dropped.
        (Reasoning, " <think>x</think>y", "x", "y"),
        // Partial tags at the end are text.
        (Reasoning, "abc</thi", "abc</thi", ""),
        (Reasoning, "abc  </thi", "abc  </thi", ""),
        (Content, "<thi", "", "<thi"),
        (Reasoning, "<thi", "<thi", ""),
        (Content, "<think", "", "<think"),
        // Empty blocks.
        (Content, "<think></think>answer", "", "answer"),
        (Content, "<think>\n\n</think>\n\nanswer", "", "answer"),
        (Reasoning, "</think>answer", "", "answer"),
        // Whitespace only, or nothing.
        (Content, " \n ", "", ""),
        (Reasoning, " \n ", "", ""),
        (Content, "", "", ""),
        // Multibyte text around the tags.
        (Content, "<think>é…</think>ü", "é…", "ü"),
        (Reasoning, "naïve 思考</think>答え", "naïve 思考", "答え"),
    ];
    for &(start, text, reasoning, content) in cases {
        assert_eq!(
            whole(start, text),
            (reasoning.to_string(), content.to_string()),
            "{start:?} {text:?}"
        );
        // One character at a time gives the same.
        let cuts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let s = pieces(think(start), text, &cuts);
        assert_eq!(
            (s.reasoning.as_str(), s.content.as_str()),
            (reasoning, content),
            "{start:?} {text:?} char by char"
        );
    }
}

#[test]
fn tags_split_across_deltas_are_held_back() {
    let mut sp = think(Content);
    assert_eq!(sp.push("<th"), Split::default());
    assert_eq!(sp.push("ink>\nI am"), split("I am", ""));
    assert_eq!(sp.push(" sure </"), split(" sure", ""));
    assert_eq!(sp.push("thin"), Split::default());
    assert_eq!(sp.push("g"), split(" </thing", ""));
    assert_eq!(sp.push(" ok</think"), split(" ok", ""));
    assert_eq!(sp.push(">\n\n"), Split::default());
    assert_eq!(sp.push("Yes"), split("", "Yes"));
    assert_eq!(sp.push("</think> <think>"), split("", "</think> <think>"));
    assert_eq!(sp.finish(), Split::default());
}

fn split(r: &str, c: &str) -> Split {
    Split {
        reasoning: r.into(),
        content: c.into(),
    }
}

#[test]
fn content_streams_at_once_after_the_lead() {
    // Once past the lead, content is never held back.
    let mut sp = think(Content);
    assert_eq!(sp.push("A"), split("", "A"));
    assert_eq!(sp.push(" <"), split("", " <"));
    assert_eq!(sp.push("/think>"), split("", "/think>"));
}

#[test]
fn finish_resets_for_the_next_output() {
    let mut sp = think(Reasoning);
    assert_eq!(sp.push("a</think>b"), split("a", "b"));
    assert_eq!(sp.finish(), Split::default());
    assert_eq!(sp.push("c</think>d"), split("c", "d"));
}

#[test]
fn multibyte_tags() {
    let sp = || ReasoningSplitter::new("◁think▷".into(), "◁/think▷".into(), Content);
    let text = "◁think▷ 考え ◁/think▷答";
    assert_eq!(sp().split_all(text), split("考え", "答"));
    for cut in 0..=text.len() {
        assert_eq!(pieces(sp(), text, &[cut]), split("考え", "答"), "cut {cut}");
    }
}

#[test]
fn empty_tags_never_match() {
    let sp = ReasoningSplitter::new(String::new(), String::new(), Reasoning);
    assert_eq!(sp.split_all("a</think>b"), split("a</think>b", ""));
    let sp = ReasoningSplitter::new(String::new(), String::new(), Content);
    assert_eq!(sp.split_all(" a"), split("", "a"));
}

#[test]
fn start_is_read_from_the_prompt() {
    let cfg = ReasoningConfig::think(Content);
    let r1 = ReasoningConfig::think(Reasoning);
    let cases: &[(&str, Section, Section)] = &[
        // Nothing said: the parser's default.
        ("<|user|>hi<|assistant|>", Content, Reasoning),
        // The template opened a block.
        ("<|user|>hi<|assistant|><think>", Reasoning, Reasoning),
        ("<|im_start|>assistant\n<think>\n", Reasoning, Reasoning),
        // The template closed an empty block: thinking off.
        ("<|user|>hi<|assistant|>\n<think></think>", Content, Content),
        (
            "<|im_start|>assistant\n<think>\n\n</think>\n\n",
            Content,
            Content,
        ),
        ("<|user|>hi<|assistant|></think>", Content, Content),
        // A closed block of an earlier turn says nothing about this one.
        (
            "<|assistant|><think>a</think>b<|user|>q<|assistant|>",
            Content,
            Reasoning,
        ),
        // An earlier turn's block and a new opening tag.
        (
            "<|assistant|><think>a</think>b<|user|>q<|assistant|><think>",
            Reasoning,
            Reasoning,
        ),
    ];
    for &(prompt, auto, deepseek) in cases {
        assert_eq!(cfg.start_for(prompt), auto, "{prompt:?}");
        assert_eq!(r1.start_for(prompt), deepseek, "{prompt:?} (deepseek_r1)");
    }
    let mut sp = cfg.splitter("<|assistant|><think>");
    assert_eq!(sp.push("x</think>y"), split("x", "y"));
}

#[test]
fn parser_names() {
    for (name, want) in [
        ("auto", ReasoningParser::Auto),
        ("none", ReasoningParser::None),
        ("qwen3", ReasoningParser::Think),
        ("glm45", ReasoningParser::Think),
        ("deepseek_r1", ReasoningParser::DeepSeekR1),
    ] {
        assert_eq!(name.parse::<ReasoningParser>(), Ok(want));
        assert!(ReasoningParser::NAMES.contains(&name));
    }
    let e = "deepseek".parse::<ReasoningParser>().unwrap_err();
    assert!(
        e.contains("deepseek_r1") && e.contains("\"deepseek\""),
        "{e}"
    );
}

/// Text made of fragments that form, break and repeat tags.
fn text() -> impl Strategy<Value = String> {
    let frags = prop::sample::select(vec![
        "<think>", "</think>", "<th", "ink>", "</", "think", ">", "<", "/", "a", "bc", " ", "\n",
        "\t", "é", "思", "🙂", "</think", "<think",
    ]);
    prop::collection::vec(frags, 0..24).prop_map(|v| v.concat())
}

fn section() -> impl Strategy<Value = Section> {
    prop_oneof![Just(Reasoning), Just(Content)]
}

proptest! {
    /// Any split of a text into deltas gives what the whole text gives.
    #[test]
    fn any_split_equals_the_whole(
        t in text(),
        start in section(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let want = think(start).split_all(&t);
        prop_assert_eq!(pieces(think(start), &t, &cuts), want);
    }

    /// A block at the start: reasoning and content come back trimmed, and
    /// the reasoning never holds a closing tag.
    #[test]
    fn a_leading_block_is_taken_apart(
        lead in "[ \n]{0,3}",
        r in text(),
        c in text(),
        start in section(),
    ) {
        prop_assume!(!r.contains(DEFAULT_CLOSE));
        let t = format!("{lead}<think>{r}</think>{c}");
        let got = think(start).split_all(&t);
        prop_assert_eq!(got.reasoning, r.trim());
        prop_assert_eq!(got.content, c.trim_start());
    }

    /// Without tags the text is content (leading whitespace dropped) or,
    /// starting inside reasoning, reasoning (trimmed).
    #[test]
    fn text_without_tags(t in "[a-z <>/\n]{0,30}", start in section()) {
        prop_assume!(!t.contains(DEFAULT_OPEN) && !t.contains(DEFAULT_CLOSE));
        let got = think(start).split_all(&t);
        match start {
            Content => {
                prop_assert_eq!(got.content, t.trim_start());
                prop_assert_eq!(got.reasoning, "");
            }
            Reasoning => {
                prop_assert_eq!(got.reasoning, t.trim());
                prop_assert_eq!(got.content, "");
            }
        }
    }
}
