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

    with urllib.request.urlopen(base + "/metrics", timeout=5) as m:
        text = m.read().decode()
    for name in ("vllm:num_requests_running", "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket"):
        check(f"metrics has {name}", name in text)


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
            "--num-kv-blocks", "512", "--block-size", "32", "--max-num-seqs", "8",
        ]
        print("starting:", " ".join(cmd))
        proc = subprocess.Popen(cmd)
        base = f"http://127.0.0.1:{port}"
        wait_health(base, proc)
    try:
        run_checks(base, key)
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
