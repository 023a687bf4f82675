"""The official `openai` SDK against the relay (relay/tests/conformance.rs runs it with the
relay's base URL, an API key and a model id): models listed and retrieved, a chat completion, a
stream with its usage, a tool call and its result (also streamed), and the typed errors for a model the relay does not have and for what the relay
cannot honour. Exits non-zero, with the reason, on the first difference."""

import json
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

# A tool call: the model asks for `search` with the JSON object in the prompt.
tools = [
    {"type": "function", "function": {"name": "search", "description": "Searches the web",
                                      "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
]
ask = [{"role": "user", "content": 'Use search with {"query": "relays"}'}]
completion = client.chat.completions.create(model=model, messages=ask, tools=tools, tool_choice="auto")
choice = completion.choices[0]
assert choice.finish_reason == "tool_calls", choice
call = choice.message.tool_calls[0]
assert call.type == "function" and call.function.name == "search", call
assert json.loads(call.function.arguments) == {"query": "relays"}, call
# Its result goes back as a `tool` message; the model answers it.
answered = client.chat.completions.create(
    model=model,
    tools=tools,
    messages=ask
    + [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "3 pages"},
    ],
)
assert answered.choices[0].finish_reason == "stop", answered
assert answered.choices[0].message.content.startswith("The tool returned 3 pages."), answered
# Streamed: the SDK's stream helper assembles the call.
with client.chat.completions.stream(model=model, messages=ask, tools=tools) as stream:
    for _ in stream:
        pass
    final = stream.get_final_completion()
streamed = final.choices[0].message.tool_calls[0]
assert streamed.function.name == "search" and json.loads(streamed.function.arguments) == {"query": "relays"}, final
assert final.choices[0].finish_reason == "tool_calls", final

# Errors: typed, naming what is wrong.
for kwargs, named in [
    ({"model": "no-such-model"}, "model"),
    ({"model": model, "n": 2}, "n"),
    ({"model": model, "messages": []}, "messages"),
    ({"model": model, "tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].name"),
    ({"model": model, "tool_choice": "required"}, "tool_choice"),
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
