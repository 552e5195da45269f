//! Chat templates: Jinja templates that turn a conversation into a prompt,
//! rendered with minijinja the way `transformers` renders them with jinja2.
//!
//! Matching `transformers` (`utils/chat_template_utils.py`):
//! * `trim_blocks` and `lstrip_blocks` on; a single trailing newline of the
//!   template dropped (jinja2's `keep_trailing_newline=False`);
//! * `raise_exception(msg)`, `strftime_now(fmt)`, and a `tojson` filter that
//!   is Python's `json.dumps` (no HTML escaping; `indent`, `separators`,
//!   `sort_keys`, `ensure_ascii`);
//! * Python string/dict/list methods (`.strip()`, `.items()`, ...), loop
//!   controls, `namespace`;
//! * values print as Python prints them (`True`, `None`, `['a', 1]`);
//! * the `{% generation %}` tag (assistant-token tracking) renders its body;
//! * variables: `messages` (each with `role`, `content` and, when given,
//!   `reasoning_content`), `add_generation_prompt`, `tools`, `documents`,
//!   the special tokens `bos_token`, `eos_token`, `unk_token`, `pad_token`,
//!   and any extra ones (`enable_thinking`, ...).

use std::collections::BTreeMap;

use minijinja::value::{ArgType, Kwargs, Rest, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use mm_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::pyfmt::{self, JsonOpts};
use super::strftime::DateTime;

const NAME: &str = "chat_template";

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant turn's reasoning, as the template sees it
    /// (`message.reasoning_content`, which Qwen3 and GLM templates read);
    /// absent from the message when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            reasoning_content: None,
        }
    }
    /// The message with `reasoning_content` set.
    pub fn with_reasoning(mut self, reasoning: impl Into<String>) -> Self {
        self.reasoning_content = Some(reasoning.into());
        self
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Everything a render takes besides the messages.
#[derive(Debug, Clone, Default)]
pub struct ChatTemplateOptions {
    /// End with the header of an assistant turn, for the model to complete.
    pub add_generation_prompt: bool,
    /// Tool definitions (JSON schemas), as the template's `tools`. Object keys
    /// come in `serde_json`'s order (sorted unless its `preserve_order` is on).
    pub tools: Option<Vec<serde_json::Value>>,
    /// Documents for retrieval-augmented templates, as `documents`.
    pub documents: Option<Vec<serde_json::Value>>,
    /// More template variables (`enable_thinking`, `date_string`, ...); they
    /// override the special tokens of the same name.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The special tokens a template sees as `bos_token`, `eos_token`, `unk_token`, `pad_token`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub unk: Option<String>,
    pub pad: Option<String>,
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .finish()
    }
}

fn template_err(e: minijinja::Error) -> Error {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    Error::Template(msg)
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is an [`Error::Template`].
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.set_formatter(|out, state, value| match pyfmt::py_str(value) {
            Some(s) => Ok(out.write_str(&s)?),
            None => minijinja::escape_formatter(out, state, value),
        });
        env.add_template_owned(NAME, strip_generation_tags(source))
            .map_err(template_err)?;
        Ok(Self {
            env,
            source: source.to_string(),
        })
    }

    /// The template as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        tokens: &TemplateTokens,
        opts: &ChatTemplateOptions,
    ) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::Template(
                "cannot apply a chat template to an empty conversation".into(),
            ));
        }
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        for (name, token) in [
            ("bos_token", &tokens.bos),
            ("eos_token", &tokens.eos),
            ("unk_token", &tokens.unk),
            ("pad_token", &tokens.pad),
        ] {
            if let Some(t) = token {
                ctx.insert(name.to_string(), Value::from(t.as_str()));
            }
        }
        for (k, v) in &opts.extra {
            ctx.insert(k.clone(), Value::from_serialize(v));
        }
        ctx.insert("messages".into(), Value::from_serialize(messages));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(opts.add_generation_prompt),
        );
        let opt = |v: &Option<Vec<serde_json::Value>>| {
            v.as_ref().map_or(Value::from(()), Value::from_serialize)
        };
        ctx.insert("tools".into(), opt(&opts.tools));
        ctx.insert("documents".into(), opt(&opts.documents));

        let template = self.env.get_template(NAME).map_err(template_err)?;
        template.render(Value::from(ctx)).map_err(template_err)
    }
}

/// `raise_exception(message)`: fails the render with the template's message.
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`: the current time (UTC) formatted.
fn strftime_now(format: String) -> String {
    DateTime::now().format(&format)
}

/// `tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`,
/// Python's `json.dumps` with those arguments, positional or by keyword.
fn tojson(value: &Value, args: Rest<Value>) -> std::result::Result<Value, minijinja::Error> {
    let mut args: Vec<Value> = args.0;
    let kwargs = match args.last() {
        Some(last) if last.is_kwargs() => {
            let k = Kwargs::from_value(Some(last))?;
            args.pop();
            Some(k)
        }
        _ => None,
    };
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if args.len() > NAMES.len() {
        return Err(minijinja::Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 arguments",
        ));
    }
    let mut params: [Value; 4] = Default::default();
    for (i, a) in args.into_iter().enumerate() {
        params[i] = a;
    }
    if let Some(k) = &kwargs {
        for (i, name) in NAMES.iter().enumerate() {
            if let Some(v) = k.get::<Option<Value>>(name)? {
                params[i] = v;
            }
        }
        k.assert_all_used()?;
    }
    let [ensure_ascii, indent, separators, sort_keys] = params;
    let indent = match indent.kind() {
        ValueKind::Undefined | ValueKind::None => None,
        ValueKind::String => Some(indent.as_str().unwrap_or_default().to_string()),
        ValueKind::Number | ValueKind::Bool => {
            let n = i64::try_from(indent.clone()).unwrap_or(0).clamp(0, 64);
            Some(" ".repeat(n as usize))
        }
        other => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: indent must be an int or a string, not {other}"),
            ))
        }
    };
    let separators = match separators.kind() {
        ValueKind::Undefined | ValueKind::None => None,
        _ => {
            let parts: Vec<Value> = separators.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => Some((
                    a.as_str().unwrap_or_default().to_string(),
                    b.as_str().unwrap_or_default().to_string(),
                )),
                _ => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    ))
                }
            }
        }
    };
    let opts = JsonOpts::new(
        ensure_ascii.is_true(),
        indent,
        separators,
        sort_keys.is_true(),
    );
    Ok(Value::from_safe_string(pyfmt::json_dumps(value, &opts)?))
}

/// Turns `{% generation %}`/`{% endgeneration %}` (a `transformers` extension
/// marking assistant text) into `{% if true %}`/`{% endif %}`, keeping any
/// whitespace control, so the body renders as jinja2 renders it.
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let after_open = &tag[2..];
        let ctrl = after_open
            .chars()
            .next()
            .filter(|c| *c == '-' || *c == '+')
            .map_or(0, |c| c.len_utf8());
        let body = &after_open[ctrl..];
        let word_start = body.len() - body.trim_start().len();
        let word: String = body[word_start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let replacement = match word.as_str() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => {
                out.push_str("{%");
                out.push_str(&after_open[..ctrl]);
                out.push_str(&body[..word_start]);
                out.push_str(r);
                rest = &body[word_start + word.len()..];
            }
            None => {
                out.push_str("{%");
                rest = after_open;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_become_ifs() {
        assert_eq!(
            strip_generation_tags(
                "a{% generation %}b{%- endgeneration -%}c{%generation%}{% if x %}{% endif %}"
            ),
            "a{% if true %}b{%- endif -%}c{%if true%}{% if x %}{% endif %}"
        );
        assert_eq!(
            strip_generation_tags("{% generations %}{%"),
            "{% generations %}{%"
        );
    }
}
