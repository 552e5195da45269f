#!/usr/bin/env python3
"""Fixtures for reasoning ("thinking") chat: templates and a scripted model.

Writes, deterministically (re-running reproduces every byte):

tests/fixtures/tokenizer/reasoning-template-cases.json
    Four chat templates written for these tests. They imitate the thinking
    logic of published templates -- GLM-4.5 (model opens <think>; thinking
    off writes an empty block; `/nothink`), GLM-4.7 (the generation prompt
    opens <think>, or closes it when thinking is off; earlier reasoning
    kept), Qwen3 (hybrid: `enable_thinking` false writes an empty block;
    reasoning kept only after the last user query) and Qwen3 thinking-only
    (the prompt always opens <think>) -- but they are NOT those templates.
    Each is rendered over several conversations (assistant turns with
    `reasoning_content`, with reasoning inline in `content`, `/nothink`,
    `enable_thinking` unset/true/false) by transformers'
    `apply_chat_template` (jinja2), the expected output of our renderer.

tests/fixtures/think/
    A tiny Llama whose greedy output is scripted: one layer whose attention
    and MLP write nothing, one-hot embeddings, and an lm_head that maps each
    token to the one that follows it in the script (with weaker second and
    third choices, reached by banning the first with a logit bias). After
    `<|assistant|>` it writes
        <think>Let me think.</think>\\n\\nThe answer is 42!<eos>
    after a `<think>` that the prompt opened it writes the same without the
    first tag, and after a prompt that closed an empty block it answers
    directly. Banning `</think>` makes it close the block with the two
    tokens `</thi` `nk>`; banning those too, it never closes. Its vocabulary
    is word-level (32 entries; user text becomes <unk>); `<think>` and
    `</think>` are added tokens that are not special (as in Qwen3 and GLM).
    `reference.json` holds, for each scenario, the prompt transformers
    renders and tokenizes, the ids and text `generate` (greedy) returns, and
    the reasoning and content that text splits into (`reference_split`, the
    splitter's rules written again in Python).

Needs torch, transformers, tokenizers, safetensors (CPU is enough; runs in
seconds):  /work/venv/bin/python scripts/make_reasoning_fixtures.py
"""

import json
import os

import torch
from tokenizers import AddedToken, Tokenizer, decoders
from tokenizers.models import WordLevel
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
CASES_OUT = os.path.join(ROOT, "tests/fixtures/tokenizer/reasoning-template-cases.json")
MODEL_OUT = os.path.join(ROOT, "tests/fixtures/think")

# ---------------------------------------------------------------- templates
# Written for these tests (see the module docstring); not the real ones.

GLM45_LIKE = """[gMASK]<sop>
{%- set no_think = enable_thinking is defined and not enable_thinking -%}
{%- set ns = namespace(last_user=-1) -%}
{%- for m in messages -%}
{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}
{%- endfor -%}
{%- for m in messages -%}
{%- if m.role == 'system' -%}
<|system|>
{{ m.content }}
{%- elif m.role == 'user' -%}
<|user|>
{{ m.content }}{{ '/nothink' if no_think and not m.content.rstrip().endswith('/nothink') else '' }}
{%- elif m.role == 'assistant' -%}
{%- set content = m.content -%}
{%- set reasoning = '' -%}
{%- if m.reasoning_content is string -%}
{%- set reasoning = m.reasoning_content -%}
{%- elif '</think>' in content -%}
{%- set reasoning = content.split('</think>')[0].split('<think>')[-1] -%}
{%- set content = content.split('</think>')[-1] -%}
{%- endif -%}
<|assistant|>
{%- if loop.index0 > ns.last_user and reasoning.strip() -%}
{{ '\\n<think>' + reasoning.strip() + '</think>' }}
{%- else -%}
{{ '\\n<think></think>' }}
{%- endif -%}
{%- if content.strip() -%}
{{ '\\n' + content.strip() }}
{%- endif -%}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|assistant|>
{%- set last = messages[-1].content if messages[-1].role == 'user' else '' -%}
{{ '\\n<think></think>' if no_think or last.rstrip().endswith('/nothink') else '' }}
{%- endif -%}
"""

GLM47_LIKE = """[gMASK]<sop>
{%- set no_think = enable_thinking is defined and enable_thinking is false -%}
{%- for m in messages -%}
{%- if m.role in ['system', 'user'] -%}
<|{{ m.role }}|>{{ m.content }}
{%- elif m.role == 'assistant' -%}
<|assistant|>
{%- if m.reasoning_content is defined and m.reasoning_content is not none -%}
<think>{{ m.reasoning_content | trim }}</think>
{%- elif '</think>' in m.content -%}
<think>{{ (m.content.split('</think>') | first).replace('<think>', '') | trim }}</think>
{%- else -%}
</think>
{%- endif -%}
{{ m.content.split('</think>') | last | trim }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|assistant|>{{ '</think>' if no_think else '<think>' }}
{%- endif -%}
"""

QWEN3_LIKE = """{%- if messages[0].role == 'system' -%}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' -}}
{%- endif -%}
{%- set ns = namespace(found=false, last_query=0) -%}
{%- for m in messages[::-1] -%}
{%- if not ns.found and m.role == 'user' -%}
{%- set ns.found = true -%}
{%- set ns.last_query = messages | length - 1 - loop.index0 -%}
{%- endif -%}
{%- endfor -%}
{%- for m in messages -%}
{%- if m.role == 'system' and loop.first -%}
{%- elif m.role in ('system', 'user') -%}
{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' -}}
{%- elif m.role == 'assistant' -%}
{%- set content = m.content -%}
{%- set reasoning = m.reasoning_content if m.reasoning_content is string else '' -%}
{%- if not reasoning and '</think>' in content -%}
{%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') -%}
{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}
{%- endif -%}
{%- if loop.index0 > ns.last_query and (loop.last or reasoning) -%}
{{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') -}}
{%- else -%}
{{- '<|im_start|>assistant\\n' + content -}}
{%- endif -%}
{{- '<|im_end|>\\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\\n' -}}
{%- if enable_thinking is defined and enable_thinking is false -%}
{{- '<think>\\n\\n</think>\\n\\n' -}}
{%- endif -%}
{%- endif -%}
"""

QWEN3_THINKING_LIKE = """{%- for m in messages -%}
{%- if m.role == 'assistant' -%}
{%- set content = m.content.split('</think>')[-1].lstrip('\\n') if '</think>' in m.content else m.content -%}
{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' -}}
{%- else -%}
{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\\n<think>\\n' -}}
{%- endif -%}
"""

TEMPLATES = {
    "glm45-like": GLM45_LIKE,
    "glm47-like": GLM47_LIKE,
    "qwen3-like": QWEN3_LIKE,
    "qwen3-thinking-like": QWEN3_THINKING_LIKE,
}

Q = {"role": "user", "content": "What is 6 x 7?"}
CONVERSATIONS = {
    "one-turn": [Q],
    "system-and-turn": [{"role": "system", "content": "Be brief."}, Q],
    "nothink-suffix": [{"role": "user", "content": "What is 6 x 7? /nothink"}],
    "history-with-reasoning": [
        {"role": "system", "content": "Be brief."},
        Q,
        {"role": "assistant", "content": "42.", "reasoning_content": "\nSix sevens.\n"},
        {"role": "user", "content": "And 7 x 8?"},
    ],
    "history-inline-think": [
        Q,
        {"role": "assistant", "content": "<think>\nSix sevens.\n</think>\n\n42."},
        {"role": "user", "content": "And 7 x 8?"},
    ],
    "last-turn-assistant": [
        Q,
        {"role": "assistant", "content": "42.", "reasoning_content": "Six sevens."},
    ],
    "tool-loop-like": [
        Q,
        {"role": "assistant", "content": "Let me check.", "reasoning_content": "Multiply."},
        {"role": "assistant", "content": "42.", "reasoning_content": "Checked."},
    ],
}
KWARGS = {"default": {}, "thinking-on": {"enable_thinking": True}, "thinking-off": {"enable_thinking": False}}


# ---------------------------------------------------------------- the model

SPECIAL = ["<unk>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>"]
TAGS = ["<think>", "</think>"]
WORDS = ["Let", " me", " think", ".", "Hmm", "</thi", "nk>", "\n\n", "The", " answer", " is", " 42", "!", "\n"]
VOCAB = SPECIAL + TAGS + WORDS
VOCAB += [f"<unused{i}>" for i in range(32 - len(VOCAB))]
ID = {t: i for i, t in enumerate(VOCAB)}

# token -> [(next token, lm_head weight)], strongest first.
SCRIPT = {
    "<|assistant|>": [("<think>", 2.0), ("The", 1.0)],
    "<think>": [("Let", 2.0)],
    "Let": [(" me", 2.0)],
    " me": [(" think", 2.0)],
    " think": [(".", 2.0)],
    ".": [("</think>", 2.0), ("</thi", 1.0), ("Hmm", 0.5)],
    "Hmm": [(".", 2.0)],
    "</thi": [("nk>", 2.0)],
    "nk>": [("\n\n", 2.0)],
    "</think>": [("\n\n", 2.0)],
    "\n\n": [("The", 2.0)],
    "The": [(" answer", 2.0)],
    " answer": [(" is", 2.0)],
    " is": [(" 42", 2.0)],
    " 42": [("!", 2.0)],
}


def build_tokenizer():
    tok = Tokenizer(WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL])
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in TAGS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>"
    )
    fast.chat_template = GLM45_LIKE
    return fast


def build_model():
    n = len(VOCAB)
    cfg = LlamaConfig(
        vocab_size=n,
        hidden_size=n,
        intermediate_size=n,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=n // 2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=ID["<eos>"],
        pad_token_id=ID["<eos>"],
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(n))
        for layer in model.model.layers:
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
        model.model.norm.weight.fill_(1.0)
        head = model.lm_head.weight  # [next, current]
        for cur in range(n):
            head[ID["<eos>"], cur] = 2.0  # anything off the script ends
        for cur, nexts in SCRIPT.items():
            head[ID["<eos>"], ID[cur]] = 0.0
            for nxt, w in nexts:
                head[ID[nxt], ID[cur]] = w
    return model.to(torch.bfloat16).eval()


# (name, template, messages, kwargs, banned tokens, max_new_tokens)
SCENARIOS = [
    ("model-opens", "glm45-like", [Q], {}, [], 32),
    ("thinking-off", "glm45-like", [Q], {"enable_thinking": False}, [], 32),
    ("nothink-suffix", "glm45-like", CONVERSATIONS["nothink-suffix"], {}, [], 32),
    ("split-close-tag", "glm45-like", [Q], {}, ["</think>"], 32),
    ("never-closes", "glm45-like", [Q], {}, ["</think>", "</thi"], 12),
    ("no-tags", "glm45-like", [Q], {}, ["<think>"], 32),
    ("prompt-opens", "glm47-like", [Q], {}, [], 32),
    ("prompt-closes", "glm47-like", [Q], {"enable_thinking": False}, [], 32),
]


def reference_split(prompt, text, default_start="content"):
    """The (reasoning, content) metal-marlin's splitter must give for `text`
    generated after `prompt` (its rules, written again here over the whole
    text: mm_engine::reasoning documents them)."""
    o, c = prompt.rfind("<think>"), prompt.rfind("</think>")
    if o >= 0 and o > c:
        start = "reasoning"
    elif c >= 0 and not prompt[c + len("</think>"):].strip():
        start = "content"
    else:
        start = default_start
    text = text.lstrip()
    if text.startswith("<think>"):
        text, start = text[len("<think>"):], "reasoning"
    if start == "content":
        return "", text
    reasoning, closed, content = text.partition("</think>")
    return reasoning.strip(), content.lstrip() if closed else ""


def main():
    tok = build_tokenizer()

    cases = []
    for tname, template in TEMPLATES.items():
        for cname, messages in CONVERSATIONS.items():
            for kname, kwargs in KWARGS.items():
                for add in (True, False):
                    if add and messages[-1]["role"] == "assistant":
                        continue
                    text = tok.apply_chat_template(
                        messages,
                        chat_template=template,
                        tokenize=False,
                        add_generation_prompt=add,
                        **kwargs,
                    )
                    cases.append(
                        {
                            "template": tname,
                            "conversation": cname,
                            "kwargs": kwargs,
                            "add_generation_prompt": add,
                            "expected": text,
                        }
                    )
    with open(CASES_OUT, "w") as f:
        json.dump(
            {
                "note": "templates written for metal-marlin's tests, imitating the thinking logic of "
                "GLM-4.5, GLM-4.7 and Qwen3 templates; not the real templates",
                "special_tokens": {"eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<eos>"},
                "templates": TEMPLATES,
                "conversations": CONVERSATIONS,
                "cases": cases,
            },
            f,
            indent=1,
            ensure_ascii=False,
        )
        f.write("\n")

    os.makedirs(MODEL_OUT, exist_ok=True)
    torch.manual_seed(0)
    model = build_model()
    model.save_pretrained(MODEL_OUT)
    tok.save_pretrained(MODEL_OUT)

    # Reload what was written, as a user would, and script the scenarios.
    model = LlamaForCausalLM.from_pretrained(MODEL_OUT, dtype=torch.float32).eval()
    tok = PreTrainedTokenizerFast.from_pretrained(MODEL_OUT)
    scenarios = []
    for name, tname, messages, kwargs, banned, max_new in SCENARIOS:
        prompt = tok.apply_chat_template(
            messages,
            chat_template=TEMPLATES[tname],
            tokenize=False,
            add_generation_prompt=True,
            **kwargs,
        )
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        bias = {(ID[b],): -100.0 for b in banned} or None
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]),
                max_new_tokens=max_new,
                do_sample=False,
                sequence_bias=bias,
                eos_token_id=ID["<eos>"],
                pad_token_id=ID["<eos>"],
            )[0, len(ids):].tolist()
        text = tok.decode(out, skip_special_tokens=True)
        reasoning, content = reference_split(prompt, text)
        scenarios.append(
            {
                "name": name,
                "template": tname,
                "messages": messages,
                "kwargs": kwargs,
                "banned": banned,
                "max_new_tokens": max_new,
                "prompt": prompt,
                "prompt_ids": ids,
                "greedy_ids": out,
                "greedy_text": text,
                "reasoning": reasoning,
                "content": content,
            }
        )
        print(f"{name:16} {prompt[-24:]!r:30} -> {text!r} = {reasoning!r} + {content!r}")
    with open(os.path.join(MODEL_OUT, "reference.json"), "w") as f:
        json.dump({"vocab": VOCAB, "scenarios": scenarios}, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
