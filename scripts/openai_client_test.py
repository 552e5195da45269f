#!/usr/bin/env python3
"""`metal-marlin serve` against the official `openai` Python client.

Starts the server binary (``--bin``, default ``target/ci/metal-marlin``) on a
free port with the default model, waits for ``/health``, runs the checks,
then sends SIGTERM and expects a clean exit (code 0). With ``--url`` it uses
a server that is already running instead (``--api-key`` if it needs one).

Skips (exit 0, saying so) when the ``openai`` package is not importable or
the binary is missing, so CI can run it before its venv exists.
"""

import argparse
import concurrent.futures as cf
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

try:
    import openai
except ImportError:
    print("SKIP: the `openai` package is not importable (pip install openai)")
    sys.exit(0)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUESTION = "What is the capital of France?"
failures = []
passed = 0


def check(name, cond, detail=""):
    global passed
    if cond:
        passed += 1
        print(f"ok   {name}")
    else:
        failures.append(name)
        print(f"FAIL {name} {detail}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(base, proc, secs=300):
    t = time.time()
    while time.time() - t < secs:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become healthy")


def run_checks(base, key):
    c = openai.OpenAI(base_url=base + "/v1", api_key=key or "unused", max_retries=0)
    model = c.models.list().data[0].id
    check("models.list", bool(model))

    r = c.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=24,
    )
    text = r.choices[0].message.content
    check("chat answer names Paris", "Paris" in text, repr(text))
    check("chat usage", r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens)
    check("chat finish_reason", r.choices[0].finish_reason in ("stop", "length"))

    chunks = list(
        c.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": QUESTION}],
            temperature=0,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    check("stream text equals whole text", streamed == text, f"{streamed!r} vs {text!r}")
    check("first delta has the role", chunks[0].choices[0].delta.role == "assistant")
    check(
        "usage chunk has choices []",
        chunks[-1].choices == [] and chunks[-1].usage is not None
        and chunks[-1].usage.completion_tokens == r.usage.completion_tokens,
    )

    def sample():
        return [
            ch.message.content
            for ch in c.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "Write a word."}],
                temperature=1.0,
                seed=7,
                n=2,
                max_tokens=12,
            ).choices
        ]

    a = sample()
    check("n=2 gives two choices", len(a) == 2)
    check("seeds reproducible", a == sample(), repr(a))

    at = text.find("Paris")
    if at >= 0:
        r = c.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": QUESTION}],
            temperature=0,
            max_tokens=24,
            stop=["Paris"],
        )
        check("stop string cuts", r.choices[0].message.content == text[:at], repr(r.choices[0].message.content))
        check("stop finish_reason", r.choices[0].finish_reason == "stop")

    r = c.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=5,
        logprobs=True,
        top_logprobs=2,
    )
    lp = r.choices[0].logprobs.content
    check("chat logprobs", len(lp) == r.usage.completion_tokens and all(len(e.top_logprobs) == 2 for e in lp))

    r = c.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0, echo=True)
    check("completions echo", r.choices[0].text.startswith("The capital of France is"))
    r = c.completions.create(model=model, prompt="Hello", max_tokens=4, temperature=0, logprobs=2)
    check("completions logprobs", len(r.choices[0].logprobs.tokens) == r.usage.completion_tokens)

    try:
        c.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], temperature=-1)
        check("bad temperature is 400", False)
    except openai.BadRequestError as e:
        check("bad temperature is 400", e.status_code == 400 and "temperature" in str(e))
    try:
        c.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        check("unknown model is 404", False)
    except openai.NotFoundError as e:
        check("unknown model is 404", e.status_code == 404)
    if key:
        bad = openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)
        try:
            bad.models.list()
            check("wrong key is 401", False)
        except openai.AuthenticationError as e:
            check("wrong key is 401", e.status_code == 401)

    text = metrics(base)
    for name in ("vllm:num_requests_running", "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket"):
        check(f"metrics has {name}", name in text)

    structured_checks(c, model)
    bad_request_checks(base, key, model)
    disconnect_checks(base, key, model)
    prefix_cache_checks(c, model, base)
    concurrency_checks(c, model)
    chunked_prefill_checks(c, model)


def raw(base, method, path, body=None, key=None, content_type="application/json"):
    """(status, parsed JSON or text, headers) of one plain HTTP request."""
    import http.client

    conn = http.client.HTTPConnection(base.split("//")[1], timeout=120)
    headers = {"Content-Type": content_type}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers=headers)
    r = conn.getresponse()
    text = r.read().decode(errors="replace")
    conn.close()
    try:
        return r.status, json.loads(text), dict(r.getheaders())
    except ValueError:
        return r.status, text, dict(r.getheaders())


def error_shaped(b):
    e = isinstance(b, dict) and b.get("error")
    return bool(e) and all(k in e for k in ("message", "type", "param", "code"))


def bad_request_checks(base, key, model):
    """Every class of bad request gets its status and OpenAI's error shape,
    and the server keeps answering."""
    msgs = [{"role": "user", "content": "Hi"}]
    chat = "/v1/chat/completions"
    cases = [
        ("malformed JSON", chat, b'{"messages": [', 400, None),
        ("a JSON array body", chat, [1, 2], 400, None),
        ("missing messages", chat, {"model": model}, 400, None),
        ("mistyped messages", chat, {"messages": "hi"}, 400, "messages"),
        ("mistyped temperature", chat, {"messages": msgs, "temperature": "hot"}, 400, "temperature"),
        ("top_p out of range", chat, {"messages": msgs, "top_p": 1.5}, 400, "top_p"),
        ("n = 0", chat, {"messages": msgs, "n": 0}, 400, "n"),
        ("max_tokens = 0", chat, {"messages": msgs, "max_tokens": 0}, 400, "max_tokens"),
        ("logit_bias id outside the vocabulary", chat, {"messages": msgs, "logit_bias": {"99999999": 1}}, 400, "logit_bias"),
        ("unknown role", chat, {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
        ("prompt past the context", "/v1/completions", {"prompt": "hello " * 9000, "max_tokens": 4}, 400, None),
        ("max_tokens past the context", "/v1/completions", {"prompt": "hello", "max_tokens": 10_000_000}, 400, None),
        ("unknown model", chat, {"model": "nope", "messages": msgs}, 404, None),
        ("unknown route", "/v1/nothing", {}, 404, None),
        ("oversized body", chat, {"messages": [{"role": "user", "content": "x" * (5 << 20)}]}, 413, None),
    ]
    for name, path, body, want, param in cases:
        st, b, _ = raw(base, "POST", path, body, key)
        ok = st == want and error_shaped(b) and (param is None or b["error"]["param"] == param)
        check(f"{name} is {want}", ok, f"{st} {str(b)[:200]}")
    st, b, _ = raw(base, "POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2}, key=None)
    check("no API key is 401", st == 401 and error_shaped(b), f"{st} {b}")
    st, b, _ = raw(base, "POST", "/v1/completions", {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}, key)
    check("still serving after bad requests", st == 200 and b["choices"][0]["text"], f"{st} {b}")


def disconnect_checks(base, key, model):
    """A client that goes away mid-stream has its sequence cancelled and
    its slot freed within a step or so."""
    import http.client

    m0 = metrics(base)
    aborted0 = metric_labelled(m0, "vllm:request_success_total", 'finished_reason="abort"')
    conn = http.client.HTTPConnection(base.split("//")[1], timeout=60)
    body = json.dumps({"model": model, "prompt": "Once upon a time", "max_tokens": 4000, "stream": True,
                       "ignore_eos": True, "temperature": 0}).encode()
    conn.request("POST", "/v1/completions", body=body,
                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    r = conn.getresponse()
    got = 0
    while got < 3:
        line = r.fp.readline()
        if line.startswith(b"data: {"):
            got += 1
    conn.sock.close()
    conn.close()
    deadline = time.time() + 10
    running, aborted = None, aborted0
    while time.time() < deadline:
        m = metrics(base)
        running = metric(m, "vllm:num_requests_running")
        aborted = metric_labelled(m, "vllm:request_success_total", 'finished_reason="abort"')
        if running == 0 and aborted > aborted0:
            break
        time.sleep(0.1)
    check("a vanished client frees its slot", running == 0 and aborted > aborted0, f"running {running}, aborted {aborted0} -> {aborted}")


def metric_labelled(text, name, label):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def metrics(base):
    with urllib.request.urlopen(base + "/metrics", timeout=5) as m:
        return m.read().decode()


def metric(text, name):
    """The sum of a counter or gauge over its label sets."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
            seen = True
    return total if seen else None


def structured_checks(c, model):
    """response_format through the official client, including its pydantic
    `parse` helper (strict JSON schema made from a model class)."""
    import pydantic

    class Person(pydantic.BaseModel):
        name: str
        age: int
        city: str

    msgs = [{"role": "user", "content": "Describe a fictional person as JSON with name, age and city."}]
    r = c.chat.completions.parse(model=model, messages=msgs, response_format=Person, temperature=0, max_tokens=100)
    parsed = r.choices[0].message.parsed
    check("json_schema via parse() validates", isinstance(parsed, Person), repr(r.choices[0].message.content))
    schema = {
        "type": "object",
        "properties": {"capital": {"type": "string"}, "population_millions": {"type": "number"}},
        "required": ["capital", "population_millions"],
        "additionalProperties": False,
    }
    r = c.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Give the capital of France and its population as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}},
        temperature=0.7,
        seed=3,
        n=2,
        max_tokens=60,
    )
    ok = True
    for ch in r.choices:
        try:
            v = json.loads(ch.message.content)
            ok &= set(v) == {"capital", "population_millions"} and isinstance(v["capital"], str)
            ok &= isinstance(v["population_millions"], (int, float))
        except ValueError:
            ok = False
    check("json_schema sampled n=2 validates", ok, repr([ch.message.content for ch in r.choices]))
    r = c.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Give me a JSON object describing Paris."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=120,
    )
    try:
        ok = r.choices[0].finish_reason == "stop" and isinstance(json.loads(r.choices[0].message.content), dict)
    except ValueError:
        ok = False
    check("json_object parses", ok, repr(r.choices[0].message.content))
    try:
        c.chat.completions.create(
            model=model, messages=msgs, max_tokens=10,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
        )
        check("invalid schema is 400", False)
    except openai.BadRequestError as e:
        check("invalid schema is 400", e.status_code == 400 and "response_format" in str(e), str(e))


def prefix_cache_checks(c, model, base):
    """A shared system prompt is served from the prefix cache: the second
    request reports cached tokens and /metrics counts the hits."""
    system = "You are a meticulous geography tutor. " * 12
    before = metric(metrics(base), "vllm:prefix_cache_hits_total") or 0.0
    cached = []
    for q in ("What is the capital of Italy?", "What is the capital of Spain?"):
        r = c.chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": q}],
            temperature=0,
            max_tokens=4,
        )
        cached.append(r.usage.prompt_tokens_details.cached_tokens)
    after = metric(metrics(base), "vllm:prefix_cache_hits_total") or 0.0
    check("shared system prompt is cached", cached[1] >= 64, repr(cached))
    check("prefix-cache hits in /metrics", after - before >= cached[1], f"{before} -> {after}, cached {cached}")


def greedy(c, model, prompt, n=32):
    r = c.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0, extra_body={"ignore_eos": True})
    return r.choices[0].text


PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "def fibonacci(n):",
    "Water boils at a temperature of",
    "The largest planet in the solar system is",
    "My favourite recipe for pancakes starts with",
    "In 1969, the first humans",
]


def concurrency_checks(c, model, solo=None, label="32 concurrent greedy"):
    """32 greedy requests at once each answer what they answer alone."""
    solo = solo or [greedy(c, model, p) for p in PROMPTS]
    with cf.ThreadPoolExecutor(32) as pool:
        got = list(pool.map(lambda i: greedy(c, model, PROMPTS[i % len(PROMPTS)]), range(32)))
    bad = [i for i, g in enumerate(got) if g != solo[i % len(PROMPTS)]]
    check(f"{label} equal their solo runs", not bad, f"differ: {bad}")
    return solo


def chunked_prefill_checks(c, model):
    """A 3000-token prompt is prefilled in chunks while two streams keep
    receiving tokens."""
    stamps = {0: [], 1: []}
    started = cf.ThreadPoolExecutor(3)

    def stream(i):
        for ch in c.completions.create(
            model=model, prompt=PROMPTS[i], max_tokens=400, temperature=0, stream=True,
            extra_body={"ignore_eos": True},
        ):
            stamps[i].append(time.time())

    futs = [started.submit(stream, i) for i in (0, 1)]
    while min(len(v) for v in stamps.values()) < 3:
        time.sleep(0.01)
    long_prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 300)
    t0 = time.time()
    r = c.completions.create(model=model, prompt=long_prompt, max_tokens=1, temperature=0)
    t1 = time.time()
    for f in futs:
        f.result()
    started.shutdown()
    during = [[t for t in v if t0 <= t <= t1] for v in stamps.values()]
    gaps = [max(b - a for a, b in zip([t0] + v, v + [t1])) for v in during]
    check("3000-token prompt accepted", r.usage.prompt_tokens >= 3000, repr(r.usage))
    check(
        "streams decode during the long prefill",
        all(len(v) >= 3 for v in during) and max(gaps) < (t1 - t0) / 2,
        f"prefill {t1 - t0:.2f} s, tokens during it {[len(v) for v in during]}, largest gap {max(gaps):.2f} s",
    )


class Server:
    """A server process of our own on a free port, stopped with SIGTERM."""

    def __init__(self, args, flags):
        self.port = free_port()
        cmd = [args.bin, "serve"] + ([args.model] if args.model else []) + ["--port", str(self.port)] + flags
        print("starting:", " ".join(cmd))
        self.proc = subprocess.Popen(cmd)
        self.base = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        wait_health(self.base, self.proc)
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def tiny_cache_checks(args):
    """Under a deliberately tiny KV cache (preemption by recompute), 32
    concurrent greedy requests still each answer what they answer alone."""
    flags = ["--num-kv-blocks", "24", "--block-size", "16", "--max-num-seqs", "32", "--max-num-batched-tokens", "64"]
    with Server(args, flags) as s:
        c = openai.OpenAI(base_url=s.base + "/v1", api_key="unused", max_retries=0)
        model = c.models.list().data[0].id
        concurrency_checks(c, model, None, "32 concurrent greedy on 24 KV blocks")
        m = metrics(s.base)
        check("tiny cache preempts", (metric(m, "vllm:num_preemptions_total") or 0) > 0)
        check("tiny cache ends empty", metric(m, "vllm:kv_cache_usage_perc") == 0.0)


def queue_checks(args):
    """Past --max-queue waiting sequences, requests are told to retry (503
    with Retry-After), and the server keeps serving."""
    with Server(args, ["--max-num-seqs", "2", "--max-queue", "4"]) as s:
        body = {"prompt": "Tell me a story.", "max_tokens": 48, "ignore_eos": True}
        with cf.ThreadPoolExecutor(24) as pool:
            res = list(pool.map(lambda _: raw(s.base, "POST", "/v1/completions", body), range(24)))
        busy = [r for r in res if r[0] == 503]
        check(
            "a full queue answers 503 with Retry-After",
            busy and all(error_shaped(b) and "retry-after" in {k.lower() for k in h} for _, b, h in busy)
            and all(st in (200, 503) for st, _, _ in res),
            f"statuses {sorted(set(st for st, _, _ in res))}, 503s {len(busy)}",
        )
        st, b, _ = raw(s.base, "POST", "/v1/completions", body)
        check("serving after the queue was full", st == 200, f"{st} {b}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="use this running server (http://HOST:PORT) instead of starting one")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "ci", "metal-marlin"))
    ap.add_argument("--model", help="model for the started server (default: the default model)")
    ap.add_argument("--api-key", default=None)
    args = ap.parse_args()

    proc = None
    if args.url:
        base = args.url.rstrip("/")
        key = args.api_key
        wait_health(base, None)
    else:
        if not os.path.exists(args.bin):
            print(f"SKIP: no server binary at {args.bin} (cargo build --profile ci -p metal-marlin)")
            return 0
        port = free_port()
        key = args.api_key or "test-key"
        cmd = [args.bin, "serve"] + ([args.model] if args.model else []) + [
            "--port", str(port), "--api-key", key, "--enable-batching",
            "--num-kv-blocks", "512", "--block-size", "32", "--max-num-seqs", "32",
            "--max-num-batched-tokens", "256",
        ]
        print("starting:", " ".join(cmd))
        proc = subprocess.Popen(cmd)
        base = f"http://127.0.0.1:{port}"
        wait_health(base, proc)
    try:
        run_checks(base, key)
        if proc is not None:
            tiny_cache_checks(args)
            queue_checks(args)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = None
            check("SIGTERM exits 0", code == 0, f"exit code {code}")
    print(f"{passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
