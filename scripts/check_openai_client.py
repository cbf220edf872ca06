#!/usr/bin/env python3
"""The official `openai` Python client against `graft serve` (not needed by CI; the Rust tests in
tests/tests/serve.rs cover the same ground with a Rust client).

Starts `graft serve` on the default SmolLM2-135M-Instruct with the project's pirate adapter and an
API key, then uses the client as applications do: models.list, chat completions whole and
streamed (with include_usage), legacy completions, a seeded sampled answer twice, and the errors
the client turns into exceptions (404 NotFoundError, 400 BadRequestError, 401
AuthenticationError). Pinned: openai 2.8.1.

    cargo build --release -p graft-cli && scripts/fetch_default_model.sh
    /work/py5/bin/python scripts/check_openai_client.py
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import openai
from openai import OpenAI

ROOT = Path(__file__).resolve().parent.parent
PIN = "2.8.1"
PORT = int(os.environ.get("GRAFT_PORT", "8765"))
KEY = "check-key"


def main():
    if openai.__version__ != PIN:
        sys.exit(f"openai {openai.__version__} installed, this script is pinned to {PIN}")
    graft = ROOT / "target/release/graft"
    server = subprocess.Popen(
        [str(graft), "serve", "--port", str(PORT), "--api-key", KEY,
         "--adapter", f"pirate={ROOT / 'adapters/smollm2-pirate'}"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stderr.readline()
        print(line.strip())
        assert line.startswith("graft serve: http://"), line
        client = OpenAI(base_url=f"http://127.0.0.1:{PORT}/v1", api_key=KEY)
        models = [m.id for m in client.models.list().data]
        print("models:", models)
        base = models[0]
        assert "pirate" in models

        q = [{"role": "user", "content": "What is the capital of France?"}]
        whole = client.chat.completions.create(model="pirate", messages=q, max_tokens=24, temperature=0)
        text = whole.choices[0].message.content
        print("pirate, whole:", repr(text), whole.usage)
        assert whole.usage.completion_tokens > 0 and whole.choices[0].finish_reason in ("stop", "length")

        parts, usage = [], None
        for chunk in client.chat.completions.create(model="pirate", messages=q, max_tokens=24, temperature=0,
                                                    stream=True, stream_options={"include_usage": True}):
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            if chunk.usage:
                usage = chunk.usage
        print("pirate, streamed:", repr("".join(parts)), usage)
        assert "".join(parts) == text, "streamed and whole answers differ"
        assert usage.completion_tokens == whole.usage.completion_tokens

        base_text = client.chat.completions.create(model=base, messages=q, max_tokens=24, temperature=0).choices[0].message.content
        print("base:", repr(base_text))
        assert base_text != text

        c = client.completions.create(model=base, prompt="The capital of France is", max_tokens=8, temperature=0)
        print("completions:", repr(c.choices[0].text), c.usage)

        s1 = client.chat.completions.create(model="pirate", messages=q, max_tokens=16, temperature=0.9, seed=42)
        s2 = client.chat.completions.create(model="pirate", messages=q, max_tokens=16, temperature=0.9, seed=42)
        assert s1.choices[0].message.content == s2.choices[0].message.content, "seeded answers differ"
        print("seeded twice, same:", repr(s1.choices[0].message.content))

        for call, exc in [
            (lambda: client.chat.completions.create(model="nobody", messages=q), openai.NotFoundError),
            (lambda: client.chat.completions.create(model=base, messages=q, n=2), openai.BadRequestError),
            (lambda: OpenAI(base_url=f"http://127.0.0.1:{PORT}/v1", api_key="wrong").models.list(),
             openai.AuthenticationError),
        ]:
            try:
                call()
                raise AssertionError(f"expected {exc.__name__}")
            except exc as e:
                print(f"{exc.__name__}: {e.status_code} {e.body.get('message') if isinstance(e.body, dict) else e.body}")
        print("ok: the openai client works against graft serve")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
