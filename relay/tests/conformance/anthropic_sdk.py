"""The official `anthropic` SDK against the relay's `/v1/messages` (relay/tests/conformance.rs
runs it with the relay's base URL, an API key and a model id): a message, a stream read both as
the SDK's helper and as raw events in Anthropic's order, a tool call and its result (also
streamed), and the typed errors. Exits non-zero,
with the reason, on the first difference."""

import sys

import anthropic

base_url, key, model = sys.argv[1:4]
client = anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0)

# A message.
message = client.messages.create(
    model=model,
    max_tokens=64,
    system="Answer briefly.",
    messages=[{"role": "user", "content": "Say hello."}],
)
assert message.type == "message" and message.role == "assistant", message
assert message.content[0].type == "text" and message.content[0].text, message
assert message.stop_reason in ("end_turn", "max_tokens"), message
assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0, message

# A stream through the SDK's helper: the text as it comes, and the message it makes.
with client.messages.stream(
    model=model,
    max_tokens=200,
    messages=[{"role": "user", "content": "Tell me a short story."}],
) as stream:
    pieces = list(stream.text_stream)
    final = stream.get_final_message()
assert len(pieces) > 1 and "".join(pieces) == final.content[0].text, pieces
assert final.stop_reason in ("end_turn", "max_tokens") and final.usage.output_tokens > 0, final

# The same as raw events: Anthropic's names, in Anthropic's order.
events = [
    event.type
    for event in client.messages.create(
        model=model,
        max_tokens=200,
        messages=[{"role": "user", "content": "Another story."}],
        stream=True,
    )
]
assert events[:2] == ["message_start", "content_block_start"], events
assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"], events
assert "content_block_delta" in events, events

# A tool call: the model asks for `search` with the JSON object in the prompt.
tools = [
    {"name": "search", "description": "Searches the web",
     "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}},
    {"name": "get_weather", "input_schema": {"type": "object"}},
]
ask = [{"role": "user", "content": 'Use search with {"query": "relays"}'}]
message = client.messages.create(model=model, max_tokens=200, messages=ask, tools=tools)
assert message.stop_reason == "tool_use", message
call = next(block for block in message.content if block.type == "tool_use")
assert call.name == "search" and call.input == {"query": "relays"}, call
# Its result goes back in a `tool_result` block; the model answers it.
answered = client.messages.create(
    model=model,
    max_tokens=200,
    tools=tools,
    messages=ask
    + [
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in message.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "3 pages"}]},
    ],
)
assert answered.stop_reason == "end_turn", answered
assert answered.content[0].text.startswith("The tool returned 3 pages."), answered
# Streamed: the SDK's helper assembles the `tool_use` block from its input_json_delta.
with client.messages.stream(
    model=model, max_tokens=200, messages=ask, tools=tools, tool_choice={"type": "tool", "name": "search"}
) as stream:
    final = stream.get_final_message()
streamed = next(block for block in final.content if block.type == "tool_use")
assert streamed.name == "search" and streamed.input == {"query": "relays"}, final
assert final.stop_reason == "tool_use", final

# Errors: typed.
try:
    client.messages.create(
        model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
    )
    raise AssertionError("an unknown model answered")
except anthropic.BadRequestError as err:
    assert err.status_code == 400 and "no-such-model" in str(err), err
    assert err.body["error"]["type"] == "invalid_request_error", err.body
try:
    client.messages.create(model=model, max_tokens=10, messages=[])
    raise AssertionError("no messages were answered")
except anthropic.BadRequestError as err:
    assert "messages" in err.body["error"]["message"], err.body
bad_key = anthropic.Anthropic(base_url=base_url, api_key="fmr_wrong", max_retries=0)
try:
    bad_key.messages.create(model=model, max_tokens=10, messages=[{"role": "user", "content": "Hi"}])
    raise AssertionError("a wrong key was served")
except anthropic.AuthenticationError as err:
    assert err.status_code == 401, err

print("anthropic SDK", anthropic.__version__, "ok")
