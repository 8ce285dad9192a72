"""The official `openai` Python client, unchanged, against a running shard-oracle.

Usage: python tests/python/openai_client.py BASE_URL [--expect-speculative] [--api-key KEY]
Exits non-zero on the first failed check. Run by tests/tests/openai_client.rs, and with an
operator key by tests/tests/trust.rs (then a wrong key must be refused with 401 too).
"""

import sys

import openai
from openai import OpenAI


def main(base_url: str, expect_speculative: bool, api_key: str | None) -> None:
    base = base_url.rstrip("/") + "/v1"
    client = OpenAI(base_url=base, api_key=api_key or "not-needed", max_retries=0, timeout=120)
    if api_key:
        wrong = OpenAI(base_url=base, api_key="sk-shard-" + "0" * 64, max_retries=0, timeout=120)
        try:
            wrong.models.list()
            raise AssertionError("a wrong API key was accepted")
        except openai.AuthenticationError as e:
            assert e.status_code == 401, e
        print("a wrong key: 401")

    models = client.models.list()
    model = models.data[0].id
    print("models:", [m.id for m in models.data])

    # Chat, unstreamed.
    chat = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something."}],
        max_tokens=12,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    msg = chat.choices[0].message
    assert msg.role == "assistant", msg
    assert isinstance(msg.content, str)
    assert chat.usage.prompt_tokens > 0 and chat.usage.completion_tokens > 0, chat.usage
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
    assert chat.choices[0].finish_reason in ("stop", "length")
    lp = chat.choices[0].logprobs.content
    assert len(lp) == chat.usage.completion_tokens and len(lp[0].top_logprobs) == 2, lp
    print("chat:", repr(msg.content))

    # Chat, streamed: the deltas add up to the unstreamed answer (greedy).
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something."}],
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                parts.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    assert "".join(parts) == msg.content, ("".join(parts), msg.content)
    assert finish in ("stop", "length") and usage is not None and usage.completion_tokens == chat.usage.completion_tokens
    print("chat stream: ok,", len(parts), "deltas")

    # Completions with logprobs and echo.
    comp = client.completions.create(model=model, prompt="In the beginning", max_tokens=8, temperature=0, logprobs=3, echo=True)
    c = comp.choices[0]
    assert c.text.startswith("In the beginning"), c.text
    assert c.logprobs.token_logprobs[0] is None
    assert len(c.logprobs.tokens) == comp.usage.prompt_tokens + comp.usage.completion_tokens
    assert all(len(t) == 3 for t in c.logprobs.top_logprobs[1:]), c.logprobs.top_logprobs
    print("completion:", repr(c.text))
    if expect_speculative:
        # Shard's usage extra, reached through the client's pass-through of unknown fields.
        spec = (comp.usage.model_extra or {}).get("speculative")
        assert spec and spec["verifications"] > 0 and spec["drafted_tokens"] >= spec["accepted_tokens"], comp.usage
        print("speculative:", spec)

    # Completions, streamed.
    text = "".join(ch.choices[0].text for ch in client.completions.create(model=model, prompt="In the beginning", max_tokens=8, temperature=0, stream=True) if ch.choices)
    assert "In the beginning" + text == c.text, (text, c.text)

    # Errors arrive as the client's typed exceptions.
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError as e:
        assert e.status_code == 404
    try:
        client.completions.create(model=model, prompt="x", temperature=7)
        raise AssertionError("bad temperature accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.body["param"] == "temperature", e.body
    print("openai client: all checks passed")


if __name__ == "__main__":
    args = sys.argv[2:]
    key = args[args.index("--api-key") + 1] if "--api-key" in args else None
    main(sys.argv[1], "--expect-speculative" in args, key)
