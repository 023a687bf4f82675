// End-to-end test of the fm-ide WASM core in Node, as the VS Code extension host runs it: the
// core built by ide-plugin/build.sh streams real answers from the relay and a standalone fm-sim,
// both started here from the built binaries (env FM_RELAY_BIN, FM_SIM_BIN, as scripts/test.sh
// sets them). Run with `node --test --experimental-websocket` so the WebSocket transport is
// tried too (Node 22 has WebSocket without the flag).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { relayBin, root, simBin, simStats, start, stopAll, until } from '../../tests/e2e/harness.mjs';

const require = createRequire(import.meta.url);
const dist = join(root, 'ide-plugin', 'vscode', 'dist');
const core = require(join(dist, 'core', 'fm_ide.js'));
const { startAnswer } = require(join(root, 'ide-plugin', 'vscode', 'src', 'core.js'));

// 300 ms to the first token, then 25 tokens a second: an answer takes seconds.
const FIRST_TOKEN_MS = 300;
let simUrl;
let relayUrl;

before(async () => {
  simUrl = await start(simBin, ['--port', '0', '--first-token-ms', String(FIRST_TOKEN_MS), '--tokens-per-second', '25'], 'endpoint');
  relayUrl = await start(relayBin, ['serve', '--port', '0', '--bedrock-endpoint', simUrl], 'url');
});
after(stopAll);

// Each request differs (the relay's cache would answer a repeated one at once).
let asked = 0;
const fixRequest = () =>
  core.buildRequest(
    JSON.stringify({
      task: 'fix',
      question: `Fix this code, take ${++asked}.`,
      selection: 'fn first(xs: &[i32]) -> i32 { xs[0] }',
      fileText: 'mod util;\nfn first(xs: &[i32]) -> i32 { xs[0] }\n',
      selectionStartLine: 1,
      selectionEndLine: 1,
      language: 'rust',
      path: 'src/lib.rs',
      maxTokens: 120,
    }),
  );

/// Streams `request` over `transport`, recording each callback with the time it came.
async function stream(request, transport = 'sse') {
  const client = new core.RelayClient({ baseUrl: relayUrl, transport });
  const seen = [];
  const at = (name) => (value) => seen.push({ name, value, ms: performance.now() });
  const started = performance.now();
  const answer = client.start(request, {
    onStart: at('start'),
    onDelta: at('delta'),
    onFailover: at('failover'),
    onDone: at('done'),
    onError: at('error'),
  });
  const outcome = await answer.finished;
  return { seen, outcome, started, answer };
}

test('an answer streams progressively, with its TTFT, tokens per second and complete code blocks', async () => {
  const { seen, outcome, started, answer } = await stream(fixRequest());
  assert.equal(outcome.ok, true, `done: ${JSON.stringify(outcome.error?.message)}`);
  const deltas = seen.filter((entry) => entry.name === 'delta');
  assert.ok(deltas.length >= 10, `many deltas, got ${deltas.length}`);
  assert.equal(seen[0].name, 'start');
  assert.equal(seen.at(-1).name, 'done');
  assert.equal(seen.filter((entry) => entry.name === 'done' || entry.name === 'error').length, 1, 'one end');
  const spread = deltas.at(-1).ms - deltas[0].ms;
  assert.ok(spread > 1000, `the first delta long before the last (${spread.toFixed(0)} ms apart)`);
  const summary = outcome.summary;
  assert.ok(summary.ttftMs >= FIRST_TOKEN_MS * 0.9, `TTFT ${summary.ttftMs} ms, the simulator waits ${FIRST_TOKEN_MS}`);
  assert.ok(summary.ttftMs <= deltas[0].ms - started + 50, 'TTFT is the first delta');
  assert.ok(summary.tokensPerSecond > 5 && summary.tokensPerSecond < 200, `tokens/s ${summary.tokensPerSecond}`);
  assert.ok(summary.serverTtftMs > 0, 'the relay’s own TTFT beside it');
  assert.equal(summary.text, answer.text);
  assert.equal(summary.text, deltas.map((entry) => entry.value.text).join(''), 'the deltas make the text');
  // The fix comes as a code block, complete while the answer was still streaming.
  const code = summary.blocks.findIndex((block) => block.kind === 'code');
  assert.ok(code >= 0, `a code block in ${JSON.stringify(summary.text)}`);
  assert.equal(summary.blocks[code].complete, true);
  const completeAt = deltas.find((entry) => entry.value.changed.some((b) => b.index === code && b.kind === 'code' && b.complete));
  assert.ok(completeAt && completeAt !== deltas.at(-1), 'the block was complete before the answer was');
  assert.ok(!summary.blocks[code].text.includes('```'), 'no fence in the code');
});

test('cancel stops the answer at once and the relay cancels the upstream stream', async () => {
  const before = (await simStats(simUrl)).streams_cancelled;
  const client = new core.RelayClient({ baseUrl: relayUrl });
  const errors = [];
  let deltas = 0;
  let answer;
  answer = client.start(fixRequest(), {
    onDelta: () => {
      deltas += 1;
      if (deltas === 2) answer.cancel();
    },
    onError: (error) => errors.push(error),
  });
  const outcome = await answer.finished;
  assert.equal(outcome.ok, false);
  assert.equal(outcome.error.kind, 'cancelled');
  assert.equal(errors.length, 1);
  assert.equal(deltas, 2, 'no delta after the cancel');
  await until('the simulator to see the cancel', async () => (await simStats(simUrl)).streams_cancelled > before);
});

test('the async iterator yields the updates in order and return() cancels', async () => {
  const client = new core.RelayClient({ baseUrl: relayUrl });
  const types = [];
  for await (const update of startAnswer(client, fixRequest())) types.push(update.type);
  assert.equal(types[0], 'start');
  assert.equal(types.at(-1), 'done');
  assert.ok(types.filter((type) => type === 'delta').length >= 10);

  const before = (await simStats(simUrl)).streams_cancelled;
  const answer = startAnswer(client, fixRequest());
  for await (const update of answer) {
    if (update.type === 'delta') break;
  }
  const outcome = await answer.finished;
  assert.equal(outcome.error?.kind, 'cancelled', 'leaving the loop cancels');
  await until('the simulator to see the cancel', async () => (await simStats(simUrl)).streams_cancelled > before);
});

test('a stream cut upstream fails over mid-answer: the caller is told, and the answer is whole', async () => {
  // The next stream breaks after 5 tokens. The relay's default fallback takes the partial answer
  // as a prefill and continues it (`discardPartial: false`); one that cannot would restart it
  // (`true`, the core then drops the text: the wasm tests cover that).
  const faults = await fetch(`${simUrl}/_sim/faults`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ rules: [{ fault: 'cut@5', limit: 1 }] }),
  });
  assert.equal(faults.status, 200, await faults.text());
  try {
    const { seen, outcome } = await stream(fixRequest());
    assert.equal(outcome.ok, true, JSON.stringify(outcome.error?.message));
    const failover = seen.findIndex((entry) => entry.name === 'failover');
    assert.ok(failover > 1, `a failover event after text: ${seen.map((entry) => entry.name).join(' ')}`);
    assert.equal(seen[failover].value.discardPartial, false, 'continued from the partial answer');
    const deltas = seen.filter((entry) => entry.name === 'delta');
    assert.equal(outcome.summary.text, deltas.map((entry) => entry.value.text).join(''));
    assert.ok(outcome.summary.text.length > 40, 'more than the five tokens before the cut');
  } finally {
    await fetch(`${simUrl}/_sim/faults`, { method: 'DELETE' });
  }
});

test('the relay’s refusal is a typed error naming the field', async () => {
  const request = JSON.parse(fixRequest());
  request.model = 'no-such-model';
  const { outcome } = await stream(JSON.stringify(request));
  assert.equal(outcome.ok, false);
  assert.equal(outcome.error.kind, 'relay');
  assert.equal(outcome.error.code, 'unknown_model');
  assert.equal(outcome.error.retryable, false);
});

test('the WebSocket transport streams the same answer', { skip: typeof WebSocket === 'undefined' && 'this Node has no WebSocket' }, async () => {
  const { seen, outcome } = await stream(fixRequest(), 'websocket');
  assert.equal(outcome.ok, true, JSON.stringify(outcome.error?.message));
  assert.ok(seen.filter((entry) => entry.name === 'delta').length >= 10);
  assert.ok(outcome.summary.ttftMs >= FIRST_TOKEN_MS * 0.9);
});

test('the web build (for webviews) loads from its bytes and streams too', async () => {
  const web = await import(join(dist, 'core-web', 'fm_ide.js'));
  await web.default({ module_or_path: readFileSync(join(dist, 'core-web', 'fm_ide_bg.wasm')) });
  const client = new web.RelayClient({ baseUrl: relayUrl });
  const answer = client.start(web.buildRequest(JSON.stringify({ question: 'What is a relay?' })), {});
  const outcome = await answer.finished;
  assert.equal(outcome.ok, true, JSON.stringify(outcome.error?.message));
  assert.ok(outcome.summary.text.length > 20);
});
