"""boto3's `bedrock-runtime` client against the relay (relay/tests/conformance.rs runs it with
the relay's base URL, an API key, a relay model id, that model's Bedrock model id and a key
whose limit allows one request a minute): Converse, ConverseStream, InvokeModel and
InvokeModelWithResponseStream, the model named by either id, a tool call and its result (Converse,
ConverseStream and InvokeModel), and Bedrock's typed errors — a relay rate limit is a
ThrottlingException. The relay key is the access key id. Exits non-zero,
with the reason, on the first difference."""

import json
import sys

import boto3
import botocore
from botocore.config import Config

base_url, key, model, bedrock_model, limited_key = sys.argv[1:6]


def client(access_key):
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=base_url,
        aws_access_key_id=access_key,
        aws_secret_access_key="not-checked",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


bedrock = client(key)
hello = [{"role": "user", "content": [{"text": "Say hello."}]}]

# Converse, by the relay's id and by Bedrock's.
for model_id in (model, bedrock_model):
    answer = bedrock.converse(
        modelId=model_id,
        messages=hello,
        system=[{"text": "Answer briefly."}],
        inferenceConfig={"maxTokens": 64, "temperature": 0.5},
    )
    assert answer["output"]["message"]["role"] == "assistant", answer
    assert answer["output"]["message"]["content"][0]["text"], answer
    assert answer["stopReason"] in ("end_turn", "max_tokens"), answer
    usage = answer["usage"]
    assert usage["inputTokens"] > 0 and usage["outputTokens"] > 0, usage
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"], usage

# ConverseStream: Bedrock's events in Bedrock's order.
events = list(bedrock.converse_stream(modelId=model, messages=hello)["stream"])
kinds = [next(iter(event)) for event in events]
assert kinds[0] == "messageStart" and kinds[-3:] == ["contentBlockStop", "messageStop", "metadata"], kinds
text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
assert len(text) > 10 and kinds.count("contentBlockDelta") > 1, kinds
assert events[-1]["metadata"]["usage"]["outputTokens"] > 0, events[-1]

# InvokeModel with an Anthropic Messages body.
body = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Say hello."}],
}
answer = json.loads(bedrock.invoke_model(modelId=bedrock_model, body=json.dumps(body))["body"].read())
assert answer["type"] == "message" and answer["content"][0]["text"], answer
assert answer["usage"]["output_tokens"] > 0, answer

# InvokeModelWithResponseStream: Anthropic's events inside `chunk`s.
stream = bedrock.invoke_model_with_response_stream(modelId=model, body=json.dumps(body))["body"]
types = [json.loads(event["chunk"]["bytes"])["type"] for event in stream]
assert types[0] == "message_start" and types[-1] == "message_stop", types
assert "content_block_delta" in types, types


# A tool call: the model asks for `search` with the JSON object in the prompt.
ask = [{"role": "user", "content": [{"text": 'Use search with {"query": "relays"}'}]}]
tool_config = {
    "tools": [
        {"toolSpec": {"name": "search", "description": "Searches the web",
                      "inputSchema": {"json": {"type": "object", "properties": {"query": {"type": "string"}}}}}},
        {"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}},
    ],
    "toolChoice": {"auto": {}},
}
answer = bedrock.converse(modelId=model, messages=ask, toolConfig=tool_config)
assert answer["stopReason"] == "tool_use", answer
content = answer["output"]["message"]["content"]
call = next(block["toolUse"] for block in content if "toolUse" in block)
assert call["name"] == "search" and call["input"] == {"query": "relays"}, call
# Its result goes back; the model answers it.
answered = bedrock.converse(
    modelId=model,
    toolConfig=tool_config,
    messages=ask
    + [
        answer["output"]["message"],
        {"role": "user", "content": [{"toolResult": {"toolUseId": call["toolUseId"], "content": [{"json": {"pages": 3}}]}}]},
    ],
)
assert answered["stopReason"] == "end_turn", answered
assert answered["output"]["message"]["content"][0]["text"].startswith('The tool returned {"pages":3}'), answered
# Streamed: a toolUse block after the text, its input whole.
events = list(bedrock.converse_stream(modelId=model, messages=ask, toolConfig=tool_config)["stream"])
starts = [e["contentBlockStart"] for e in events if "contentBlockStart" in e]
assert len(starts) == 1 and starts[0]["start"]["toolUse"]["name"] == "search", events
inputs = "".join(
    e["contentBlockDelta"]["delta"]["toolUse"]["input"]
    for e in events
    if "contentBlockDelta" in e and "toolUse" in e["contentBlockDelta"]["delta"]
)
assert json.loads(inputs) == {"query": "relays"}, inputs
assert next(e["messageStop"] for e in events if "messageStop" in e)["stopReason"] == "tool_use", events
# InvokeModel takes Anthropic's tools.
tool_body = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 200,
    "messages": [{"role": "user", "content": 'Use search with {"query": "relays"}'}],
    "tools": [{"name": "search", "input_schema": {"type": "object"}}],
}
answer = json.loads(bedrock.invoke_model(modelId=model, body=json.dumps(tool_body))["body"].read())
assert answer["stop_reason"] == "tool_use", answer
assert answer["content"][-1]["type"] == "tool_use" and answer["content"][-1]["input"] == {"query": "relays"}, answer


def refused(call, code):
    try:
        call()
    except botocore.exceptions.ClientError as err:
        got = err.response["Error"]["Code"]
        assert got == code, (code, err.response)
        assert err.response["Error"]["Message"], err.response
        return err
    raise AssertionError(f"{code} expected, the call was answered")


# Errors, typed as Bedrock types them.
refused(lambda: bedrock.converse(modelId="no-such-model", messages=hello), "ResourceNotFoundException")
err = refused(
    lambda: bedrock.converse(
        modelId=model,
        messages=hello,
        toolConfig={"tools": [{"toolSpec": {"name": "weather", "inputSchema": {"json": {"type": "array"}}}}]},
    ),
    "ValidationException",
)
assert "input_schema" in err.response["Error"]["Message"], err.response
refused(lambda: bedrock.converse(modelId=model, messages=[]), "ValidationException")
refused(lambda: client("fmr_wrong").converse(modelId=model, messages=hello), "UnrecognizedClientException")
limited = client(limited_key)
limited.converse(modelId=model, messages=hello)
try:
    limited.converse(modelId=model, messages=hello)
    raise AssertionError("the key's limit let a second request through")
except limited.exceptions.ThrottlingException as err:
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 429, err.response

print("boto3", boto3.__version__, "ok")
