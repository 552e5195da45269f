//! How byte-level BPE vocabularies split text into words before merging,
//! by their `tokenizer.ggml.pre` name.
//!
//! The regexes are llama.cpp's (`src/llama-vocab.cpp`, `llm_tokenizer_bpe`).
//! Each regex of a list splits every piece the previous ones left, keeping
//! both the matches and the text between them, which is what a `Split`
//! pre-tokenizer with the `Isolated` behavior does. Where llama.cpp rewrote a
//! regex for `std::regex` (no `\p{Lu}`), the original of the model's
//! `tokenizer.json` is used instead; fancy-regex handles it.

/// GPT-2's split (as in HF's ByteLevel pre-tokenizer).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Contractions, case-insensitively, without an inline flag group.
macro_rules! contractions {
    () => {
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
    };
}

const LLAMA3: &str = concat!(
    contractions!(),
    r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

const QWEN2: &str = concat!(
    contractions!(),
    r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

const QWEN35: &str = concat!(
    contractions!(),
    r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

const TEKKEN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*",
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

const GPT4O: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+",
    contractions!(),
    r"?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*",
    contractions!(),
    r"?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

/// Cased letters, as llama.cpp lists them (code points spelled out: several
/// are canonical singletons, like U+212A KELVIN SIGN, that normalization of
/// the source text would silently change).
const DEEPSEEK_LLM_LETTERS: &str = concat!(
    r"\s?[",
    r"A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}",
    r"\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}",
    r"\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}",
    r"\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}",
    r"\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}",
    r"\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}",
    r"\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}",
    r"\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}",
    r"\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}",
    r"\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}",
    r"\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}",
    r"\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}",
    r"\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}",
    r"\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}",
    r"\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}",
    r"\x{1E900}-\x{1E943}",
    r"]+"
);

const DEEPSEEK3_MAIN: &str = concat!(
    r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"##,
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

const BLOOM: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";

/// How a `tokenizer.ggml.pre` vocabulary splits and merges.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PreSplit {
    /// The name this was resolved to (for messages).
    pub name: &'static str,
    /// Regexes applied in turn, each isolating its matches.
    pub regexes: &'static [&'static str],
    /// A word that is itself in the vocabulary is one token, merges or not.
    pub ignore_merges: bool,
    /// llama.cpp adds BOS by default for these (when the GGUF does not say).
    pub add_bos: bool,
}

const fn split(name: &'static str, regexes: &'static [&'static str]) -> PreSplit {
    PreSplit {
        name,
        regexes,
        ignore_merges: false,
        add_bos: false,
    }
}

/// llama.cpp's split for vocabularies that name no pre-tokenizer.
const DEFAULT_SPLIT: PreSplit = split(
    "default",
    &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
);

const GPT2_SPLIT: PreSplit = split("gpt2", &[GPT2]);

/// The split of `pre`, or `None` for a name llama.cpp does not define or
/// that needs code rather than regexes.
pub(crate) fn lookup(pre: &str) -> Option<PreSplit> {
    let s = match pre {
        "default" => DEFAULT_SPLIT,
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => PreSplit {
            ignore_merges: true,
            add_bos: true,
            ..split("llama3", &[LLAMA3])
        },
        "dbrx" | "smaug-bpe" | "glm4" | "chatglm-bpe" => split("llama3", &[LLAMA3]),
        "deepseek-llm" => split(
            "deepseek-llm",
            &[
                r"[\r\n]",
                DEEPSEEK_LLM_LETTERS,
                r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
                r"\s+$",
                r"[一-龥ࠀ-一가-퟿]+",
                r"\p{N}+",
            ],
        ),
        "deepseek-coder" => split(
            "deepseek-coder",
            &[
                r"[\r\n]",
                r"\s?\p{L}+",
                r"\s?\p{P}+",
                r"[一-龥ࠀ-一가-퟿]+",
                r"\p{N}",
            ],
        ),
        "deepseek-v3" | "hunyuan-dense" | "joyai-llm" | "hy_v4" => split(
            "deepseek-v3",
            &[r"\p{N}{1,3}", r"[一-龥぀-ゟ゠-ヿ]+", DEEPSEEK3_MAIN],
        ),
        "falcon" => split(
            "falcon",
            &[
                r"[\p{P}\$\+<=>\^~\|`]+",
                r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
                r"[0-9][0-9][0-9]",
            ],
        ),
        "gpt2" | "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
        | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "exaone4" | "mpt" | "olmo"
        | "jais" | "trillion" | "granite-docling" | "jina-v1-en" | "jina-v2-code"
        | "roberta-bpe" => GPT2_SPLIT,
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b"
        | "mellum2" => split("smollm", &[r"\p{N}", GPT2]),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" | "hunyuan"
        | "solar-open" | "grok-2" => split("qwen2", &[QWEN2]),
        "qwen35" => split("qwen35", &[QWEN35]),
        "poro-chat" | "bloom" | "gpt3-finnish" => split("bloom", &[BLOOM]),
        "viking" => split("viking", &[BLOOM, r"\p{N}"]),
        "tekken" => PreSplit {
            ignore_merges: true,
            add_bos: true,
            ..split("tekken", &[TEKKEN])
        },
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => split("gpt-4o", &[GPT4O]),
        "seed-coder" => split(
            "seed-coder",
            &[concat!(
                contractions!(),
                r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"
            )],
        ),
        "bailingmoe" | "bailingmoe2" | "llada-moe" => split(
            "bailingmoe",
            &[
                r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
            ],
        ),
        _ => return None,
    };
    Some(s)
}

/// The split for a vocabulary: its `pre` if known; llama.cpp's "default" when
/// the GGUF names none; GPT-2's, with a warning, for a name we do not know.
pub(crate) fn resolve(pre: Option<&str>) -> PreSplit {
    match pre.map(str::trim).filter(|p| !p.is_empty()) {
        None => {
            tracing::warn!(
                "GGUF has no tokenizer.ggml.pre; using llama.cpp's default pre-tokenizer, tokenization may be degraded"
            );
            DEFAULT_SPLIT
        }
        Some(p) => lookup(p).unwrap_or_else(|| {
            tracing::warn!(
                "unknown tokenizer.ggml.pre '{p}'; falling back to the GPT-2 pre-tokenizer"
            );
            GPT2_SPLIT
        }),
    }
}

/// Every name [`lookup`] knows (for tests).
#[cfg(test)]
pub(crate) const KNOWN: &[&str] = &[
    "default",
    "llama3",
    "llama-bpe",
    "dbrx",
    "deepseek-llm",
    "deepseek-coder",
    "deepseek-v3",
    "falcon",
    "gpt2",
    "smollm",
    "qwen2",
    "qwen35",
    "bloom",
    "viking",
    "tekken",
    "gpt-4o",
    "seed-coder",
    "bailingmoe",
];

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::{
        OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, SplitDelimiterBehavior,
    };

    fn pieces(pre: &str, text: &str) -> Vec<String> {
        let split = lookup(pre).unwrap_or_else(|| panic!("{pre} unknown"));
        let mut s = PreTokenizedString::from(text);
        for re in split.regexes {
            Split::new(
                SplitPattern::Regex(re.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .unwrap_or_else(|e| panic!("{pre}: {re}: {e}"))
            .pre_tokenize(&mut s)
            .unwrap();
        }
        s.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(p, _, _)| p.to_string())
            .collect()
    }

    #[test]
    fn every_regex_compiles() {
        for name in KNOWN {
            pieces(name, "x");
        }
    }

    #[test]
    fn splits() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "gpt2",
                "Hello world's  test 123!!",
                &["Hello", " world", "'s", " ", " test", " 123", "!!"],
            ),
            ("smollm", "abc123 4", &["abc", "1", "2", "3", " ", "4"]),
            (
                "llama3",
                "I'M 12345 done\n\n",
                &["I", "'M", " ", "123", "45", " done", "\n\n"],
            ),
            ("qwen2", "x12 ,y", &["x", "1", "2", " ,", "y"]),
            ("deepseek-v3", "12345中文abc", &["123", "45", "中文", "abc"]),
            ("gpt-4o", "HelloWorld it's", &["Hello", "World", " it's"]),
            ("tekken", "HelloWorld", &["Hello", "World"]),
            // The punctuation regex's `:-~` range takes ASCII letters too, so
            // runs of them split off non-ASCII letters (as in llama.cpp).
            (
                "deepseek-llm",
                "Hello 世界 123\nÅngström",
                &[
                    "Hello", " ", "世界", " ", "123", "\n", "Å", "ngstr", "ö", "m",
                ],
            ),
            ("default", "a+b 1234", &["a", "+", "b", " ", "123", "4"]),
            ("bloom", "hi, there.", &["hi", ",", " there", "."]),
        ];
        for (pre, text, want) in cases {
            assert_eq!(pieces(pre, text), *want, "{pre}: {text:?}");
        }
    }

    #[test]
    fn resolve_falls_back() {
        assert_eq!(resolve(Some("smollm")).name, "smollm");
        assert_eq!(resolve(Some(" llama-bpe ")).name, "llama3");
        assert_eq!(resolve(Some("nope")).name, "gpt2");
        assert_eq!(resolve(None).name, "default");
        assert_eq!(resolve(Some("")).name, "default");
    }
}
