"""fm-relay-lambda's cold start, measured locally (bench/lambda/run.sh starts this; BENCHMARKS.md,
"On Lambda").

`cargo lambda watch --only-lambda-apis` serves Lambda's runtime API and a function URL and starts
no function: this script starts the function's process itself, as Lambda does when an instance
is cold, and sends a request through the function URL at the same moment. The request waits in
the emulator until the function has initialised and asked for its first event, so the time from
the process's start to the end of the answer is the cold start to the first answer: the binary
loaded, the configuration read, the relay assembled (the AWS job backend's queues looked up in
moto), the runtime polled, the request served through fm-sim. The same request again on the
warm instance is the floor it is compared with.

The function runs the deployment template's configuration (deploy/lambda/template.yaml): its
models, `bedrock.mode = "aws"` pointed at fm-sim, the AWS job backend on moto, limits and cache
in memory (the template's default), auth open.

Env: LAMBDA_BIN (the function's binary), LAMBDA_RUNTIME_API (the emulator's runtime API URL),
LAMBDA_URL (the emulator's function URL base), SIM_URL, MOTO_URL, RUNS (cold starts, default 10),
WARM (warm answers per instance, default 20), PY_TEMPLATE_JSON (the template, as JSON). Both
answer modes are measured: `stream` (the function URL's RESPONSE_STREAM, the template's) and
`buffered`.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

RUNS = int(os.environ.get("RUNS", "10"))
WARM = int(os.environ.get("WARM", "20"))


def config_toml(template: dict, moto_url: str, prefix: str, create: bool) -> str:
    """The template's configuration, its variables given local values, its AWS calls to moto."""
    text = template["Globals"]["Function"]["Environment"]["Variables"]["FM_RELAY_CONFIG_TOML"][
        "Fn::Sub"
    ]
    values = {
        "${AuthMode}": "open",
        "${SharedStateBackend}": "memory",
        "${RedisUrl}": "redis://127.0.0.1:6379/",
        "${AWS::Region}": "us-east-1",
        "${AWS::StackName}": prefix,
        "${ResultsBucket}": prefix,
        "${JobsTable}": prefix,
        "${NoticesTopic}": "arn:aws:sns:us-east-1:123456789012:" + prefix,
    }
    for name, value in values.items():
        text = text.replace(name, value)
    assert "${" not in text, text
    return text.replace(
        "[jobs.aws]\n",
        f'[jobs.aws]\nendpoint_url = "{moto_url}"\ncreate_resources = {str(create).lower()}\n',
    )


def function_env(config: str, mode: str) -> dict:
    return {
        "PATH": os.environ["PATH"],
        "AWS_LAMBDA_RUNTIME_API": os.environ["LAMBDA_RUNTIME_API"],
        "AWS_LAMBDA_FUNCTION_NAME": "fm-relay-lambda",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/fm-relay-lambda",
        "AWS_LAMBDA_LOG_STREAM_NAME": "local",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "_HANDLER": "http",
        "RUST_LOG": "info",
        "FM_RELAY_CONFIG_TOML": config,
        "FM_RELAY_BEDROCK_MODE": "endpoint",
        "FM_RELAY_BEDROCK_ENDPOINT": os.environ["SIM_URL"],
        "FM_LAMBDA_RESPONSE": mode,
    }


def chat(url: str) -> float:
    """Sends one chat request through the function URL; the seconds until its whole answer."""
    body = json.dumps(
        {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 32}
    ).encode()
    request = urllib.request.Request(
        url + "/v1/chat", data=body, headers={"content-type": "application/json"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert answer.status == 200, answer.status
        answer_json = json.loads(answer.read())
        assert answer_json["text"], answer_json
    return time.perf_counter() - started


def init_ms(log: str) -> float:
    """The function's own init time, from its log line `... the API function is ready`."""
    for line in log.splitlines():
        if "the API function is ready" in line and "init_ms=" in line:
            return float(line.split("init_ms=")[1].split()[0])
    raise AssertionError("the function did not log its init time:\n" + log)


def one_instance(binary: str, config: str, mode: str, url: str, warm: int):
    """Starts the function cold, sends the first request at once; then `warm` more."""
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            [binary], env=function_env(config, mode), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            chat(url)
            cold = time.perf_counter() - started
            warm_times = [chat(url) for _ in range(warm)]
        finally:
            process.kill()
            process.wait()
        log.seek(0)
        text = log.read().decode(errors="replace")
    return cold, init_ms(text), warm_times


def main() -> None:
    template = json.loads(os.environ["PY_TEMPLATE_JSON"])
    binary = os.environ["LAMBDA_BIN"]
    url = os.environ["LAMBDA_URL"]
    prefix = f"fm-cold-{os.getpid()}"
    moto_url = os.environ["MOTO_URL"]
    # Once, not measured: the queues, table and bucket the template would have made.
    one_instance(binary, config_toml(template, moto_url, prefix, True), "stream", url, 0)
    config = config_toml(template, moto_url, prefix, False)
    size = os.path.getsize(binary)
    print(f"binary            {size / 1e6:.1f} MB ({binary})")
    for mode in ("stream", "buffered"):
        colds, inits, warms = [], [], []
        for _ in range(RUNS):
            cold, init, warm = one_instance(binary, config, mode, url, WARM)
            colds.append(cold * 1000)
            inits.append(init)
            warms.extend(w * 1000 for w in warm)
        print(f"FM_LAMBDA_RESPONSE={mode}")
        print(
            f"  cold start      median {statistics.median(colds):.0f} ms, "
            f"max {max(colds):.0f} ms over {RUNS} starts (process start to the first whole answer)"
        )
        print(
            f"    of which init median {statistics.median(inits):.0f} ms "
            "(the function's own: configuration, assembly, until it polls its first event)"
        )
        print(
            f"  warm answer     median {statistics.median(warms):.1f} ms, "
            f"p99 {statistics.quantiles(warms, n=100)[98]:.1f} ms over {len(warms)} answers"
        )

if __name__ == "__main__":
    sys.exit(main())
