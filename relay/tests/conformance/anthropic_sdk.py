"""The official `anthropic` SDK against the relay's `/v1/messages` (relay/tests/conformance.rs
runs it with the relay's base URL, an API key and a model id): a message, a stream read both as
the SDK's helper and as raw events in Anthropic's order, and the typed errors. Exits non-zero,
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
