//! Request settings checked and turned into what the engine takes: every
//! out-of-range value is a 400 naming its field.

use mm_engine::constrain::{Constraint, Guide};
use mm_engine::SamplingParams;
use serde_json::Value;

use crate::error::ApiError;
use crate::protocol::{SamplingFields, StopField};

/// Most choices one request may ask for.
pub const MAX_N: usize = 128;
/// Most alternatives per position (`top_logprobs`, legacy `logprobs`).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A request's generation settings, checked.
#[derive(Clone, Debug)]
pub struct GenParams {
    /// `None`: up to the context length.
    pub max_tokens: Option<usize>,
    /// Sampling of choice 0; choice `i` uses seed `seed + i`.
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
    /// Report log-probabilities with this many alternatives.
    pub logprobs: Option<usize>,
    /// Structured output asked for by `response_format`.
    pub constraint: Option<Constraint>,
    /// `constraint` compiled for the model's tokenizer
    /// ([`crate::gen::compile_guide`]); every choice starts from a copy.
    pub guide: Option<Guide>,
}

impl GenParams {
    /// The sampling of choice `i` (its own seed).
    pub fn sampling_for(&self, i: usize) -> SamplingParams {
        SamplingParams {
            seed: self.sampling.seed.wrapping_add(i as u64),
            ..self.sampling.clone()
        }
    }
}

fn finite(name: &str, v: f64) -> Result<f32, ApiError> {
    if v.is_finite() {
        Ok(v as f32)
    } else {
        Err(ApiError::invalid_param(
            name,
            format!("`{name}` must be a finite number"),
        ))
    }
}

/// Checks the shared fields; `vocab` bounds `logit_bias` ids.
pub fn gen_params(f: &SamplingFields, vocab: usize) -> Result<GenParams, ApiError> {
    let mut s = SamplingParams {
        temperature: 1.0,
        // Over the whole prompt and output, as vLLM applies it.
        repeat_last_n: usize::MAX,
        ..Default::default()
    };
    if let Some(t) = f.temperature {
        let t = finite("temperature", t)?;
        if t < 0.0 {
            return Err(ApiError::invalid_param(
                "temperature",
                format!("`temperature` must be >= 0, got {t}"),
            ));
        }
        s.temperature = t;
    }
    if let Some(p) = f.top_p {
        let p = finite("top_p", p)?;
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::invalid_param(
                "top_p",
                format!("`top_p` must be in (0, 1], got {p}"),
            ));
        }
        s.top_p = p;
    }
    if let Some(k) = f.top_k {
        if k < -1 {
            return Err(ApiError::invalid_param(
                "top_k",
                format!("`top_k` must be -1 (disabled), 0 (disabled) or positive, got {k}"),
            ));
        }
        s.top_k = k.max(0) as usize;
    }
    if let Some(p) = f.min_p {
        let p = finite("min_p", p)?;
        if !(0.0..=1.0).contains(&p) {
            return Err(ApiError::invalid_param(
                "min_p",
                format!("`min_p` must be in [0, 1], got {p}"),
            ));
        }
        s.min_p = p;
    }
    if let Some(r) = f.repetition_penalty {
        let r = finite("repetition_penalty", r)?;
        if r <= 0.0 {
            return Err(ApiError::invalid_param(
                "repetition_penalty",
                format!("`repetition_penalty` must be > 0, got {r}"),
            ));
        }
        s.repeat_penalty = r;
    }
    for (name, v, slot) in [
        (
            "presence_penalty",
            f.presence_penalty,
            &mut s.presence_penalty,
        ),
        (
            "frequency_penalty",
            f.frequency_penalty,
            &mut s.frequency_penalty,
        ),
    ] {
        if let Some(v) = v {
            let v = finite(name, v)?;
            if !(-2.0..=2.0).contains(&v) {
                return Err(ApiError::invalid_param(
                    name,
                    format!("`{name}` must be in [-2, 2], got {v}"),
                ));
            }
            *slot = v;
        }
    }
    if let Some(bias) = &f.logit_bias {
        for (k, &v) in bias {
            let id: u32 = k.trim().parse().map_err(|_| {
                ApiError::invalid_param(
                    "logit_bias",
                    format!("`logit_bias` keys must be token ids, got {k:?}"),
                )
            })?;
            if id as usize >= vocab {
                return Err(ApiError::invalid_param(
                    "logit_bias",
                    format!("`logit_bias` token id {id} is outside the vocabulary of {vocab}"),
                ));
            }
            let v = finite("logit_bias", v)?;
            if !(-100.0..=100.0).contains(&v) {
                return Err(ApiError::invalid_param(
                    "logit_bias",
                    format!("`logit_bias` values must be in [-100, 100], got {v} for token {id}"),
                ));
            }
            s.logit_bias.push((id, v));
        }
    }
    s.seed = match f.seed {
        Some(v) => v as u64,
        None => rand::random(),
    };
    let max_tokens = match (f.max_completion_tokens, f.max_tokens) {
        (Some(v), _) => Some(("max_completion_tokens", v)),
        (None, Some(v)) => Some(("max_tokens", v)),
        (None, None) => None,
    };
    let max_tokens = match max_tokens {
        Some((name, v)) if v < 1 => {
            return Err(ApiError::invalid_param(
                name,
                format!("`{name}` must be at least 1, got {v}"),
            ))
        }
        Some((_, v)) => Some(usize::try_from(v).unwrap_or(usize::MAX)),
        None => None,
    };
    let n = f.n.unwrap_or(1);
    if n < 1 || n as usize > MAX_N {
        return Err(ApiError::invalid_param(
            "n",
            format!("`n` must be in [1, {MAX_N}], got {n}"),
        ));
    }
    let stop = match &f.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s.clone()],
        Some(StopField::Many(v)) => v.clone(),
    };
    let stop: Vec<String> = stop.into_iter().filter(|s| !s.is_empty()).collect();
    let stream = f.stream.unwrap_or(false);
    let include_usage = f
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    if f.stream_options.is_some() && !stream {
        return Err(ApiError::invalid_param(
            "stream_options",
            "`stream_options` is only allowed when `stream` is true",
        ));
    }
    s.validate()
        .map_err(|e| ApiError::bad_request(format!("Invalid sampling settings: {e}")))?;
    let constraint = match &f.response_format {
        None => None,
        Some(v) => response_format(v)?,
    };
    Ok(GenParams {
        max_tokens,
        sampling: s,
        stop,
        n: n as usize,
        stream,
        include_usage,
        ignore_eos: f.ignore_eos.unwrap_or(false),
        logprobs: None,
        constraint,
        guide: None,
    })
}

/// OpenAI's `response_format`: `text` (no constraint), `json_object`, or
/// `json_schema` with its schema under `json_schema.schema` (absent: any
/// JSON object).
fn response_format(v: &Value) -> Result<Option<Constraint>, ApiError> {
    let bad = |param: &str, msg: String| Err(ApiError::invalid_param(param, msg));
    let Some(kind) = v.get("type").and_then(Value::as_str) else {
        return bad(
            "response_format.type",
            "`response_format` must be an object with a string `type`: text, json_object or json_schema".into(),
        );
    };
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(Constraint::JsonObject)),
        "json_schema" => {
            let Some(js) = v.get("json_schema").filter(|j| j.is_object()) else {
                return bad(
                    "response_format.json_schema",
                    "`response_format.json_schema` must be an object with the `schema`".into(),
                );
            };
            match js.get("schema") {
                None | Some(Value::Null) => Ok(Some(Constraint::JsonObject)),
                Some(s) if s.is_object() || s.is_boolean() => {
                    Ok(Some(Constraint::JsonSchema(s.clone())))
                }
                Some(s) => bad(
                    "response_format.json_schema.schema",
                    format!("`response_format.json_schema.schema` must be a JSON schema object, got {s}"),
                ),
            }
        }
        other => bad(
            "response_format.type",
            format!("Unsupported `response_format.type` {other:?}: use text, json_object or json_schema"),
        ),
    }
}

/// Checks a number of alternatives per position.
pub fn top_logprobs(name: &str, v: i64) -> Result<usize, ApiError> {
    if v < 0 || v as usize > MAX_TOP_LOGPROBS {
        return Err(ApiError::invalid_param(
            name,
            format!("`{name}` must be in [0, {MAX_TOP_LOGPROBS}], got {v}"),
        ));
    }
    Ok(v as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> SamplingFields {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_and_aliases() {
        let p = gen_params(&fields(r#"{"max_tokens": 5, "seed": 3, "n": 2}"#), 100).unwrap();
        assert_eq!(p.max_tokens, Some(5));
        assert_eq!(p.sampling.temperature, 1.0);
        assert_eq!(p.sampling_for(1).seed, 4);
        let p = gen_params(
            &fields(r#"{"max_tokens": 5, "max_completion_tokens": 7, "stop": "x"}"#),
            100,
        )
        .unwrap();
        assert_eq!((p.max_tokens, p.stop), (Some(7), vec!["x".to_string()]));
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        for (json, param) in [
            (r#"{"temperature": -1}"#, "temperature"),
            (r#"{"top_p": 0}"#, "top_p"),
            (r#"{"top_p": 1.5}"#, "top_p"),
            (r#"{"n": 0}"#, "n"),
            (r#"{"max_tokens": 0}"#, "max_tokens"),
            (r#"{"presence_penalty": 3}"#, "presence_penalty"),
            (r#"{"logit_bias": {"abc": 1}}"#, "logit_bias"),
            (r#"{"logit_bias": {"100": 1}}"#, "logit_bias"),
            (r#"{"logit_bias": {"1": 101}}"#, "logit_bias"),
            (r#"{"top_k": -2}"#, "top_k"),
            (
                r#"{"response_format": {"type": "xml"}}"#,
                "response_format.type",
            ),
            (r#"{"response_format": "json"}"#, "response_format.type"),
            (
                r#"{"response_format": {"type": "json_schema"}}"#,
                "response_format.json_schema",
            ),
            (
                r#"{"response_format": {"type": "json_schema", "json_schema": {"schema": 3}}}"#,
                "response_format.json_schema.schema",
            ),
            (
                r#"{"stream_options": {"include_usage": true}}"#,
                "stream_options",
            ),
        ] {
            let e = gen_params(&fields(json), 100).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{json}");
        }
    }
}
