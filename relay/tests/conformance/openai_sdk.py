"""The official `openai` SDK against the relay (relay/tests/conformance.rs runs it with the
relay's base URL, an API key and a model id): models listed and retrieved, a chat completion, a stream with
its usage, and the typed errors for a model the relay does not have and for what the relay
cannot honour. Exits non-zero, with the reason, on the first difference."""

import sys

import openai

base_url, key, model = sys.argv[1:4]
client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0)

# Models: OpenAI's list shape, and one by id.
listed = client.models.list()
ids = [entry.id for entry in listed.data]
assert model in ids, f"{model} not in {ids}"
assert all(entry.object == "model" for entry in listed.data), listed
retrieved = client.models.retrieve(model)
assert retrieved.id == model and retrieved.owned_by, retrieved
try:
    client.models.retrieve("no-such-model")
    raise AssertionError("an unknown model was retrieved")
except openai.NotFoundError as err:
    assert "no-such-model" in str(err), err

# A chat completion.
completion = client.chat.completions.create(
    model=model,
    messages=[
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Say hello."},
    ],
    max_tokens=64,
)
assert completion.object == "chat.completion", completion
choice = completion.choices[0]
assert choice.message.role == "assistant" and choice.message.content, choice
assert choice.finish_reason in ("stop", "length"), choice
assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0, completion

# A stream, with its usage in the last chunk.
chunks = list(
    client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Tell me a short story."}],
        stream=True,
        stream_options={"include_usage": True},
    )
)
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert len(text) > 10, chunks
finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
assert finishes == ["stop"] or finishes == ["length"], finishes
assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0, chunks[-1]

# Errors: typed, naming what is wrong.
for kwargs, named in [
    ({"model": "no-such-model"}, "model"),
    ({"model": model, "n": 2}, "n"),
    ({"model": model, "messages": []}, "messages"),
]:
    request = {"messages": [{"role": "user", "content": "Hi"}], **kwargs}
    try:
        client.chat.completions.create(**request)
        raise AssertionError(f"{kwargs} was answered")
    except openai.BadRequestError as err:
        assert err.status_code == 400, err
        assert err.body.get("param") == named, (kwargs, err.body)
        assert err.body.get("type") == "invalid_request_error", (kwargs, err.body)

print("openai SDK", openai.__version__, "ok")
