// The extension's glue under Node's test runner, against the stand-in for the `vscode` API
// (test/vscode-stand-in.js) and a real relay (requiring API keys) and fm-sim started from the
// built binaries (env FM_RELAY_BIN, FM_SIM_BIN, as scripts/test.sh sets them), with the WASM core
// built by ide-plugin/build.sh: commands registered, the key taken from secret storage, the
// panel fed deltas as they stream, insert / replace / show diff applied to the document, the
// inline provider's suggestion and its cancel on a new keystroke. With FM_IDE_EXTENSION_DIR set
// (scripts/test.sh sets it to the unpacked .vsix) the extension is loaded from there: the package
// users install is what is tested.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import Module, { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { keyedRelayConfig, relayBin, simBin, simStats, start, stopAll, until } from '../../../tests/e2e/harness.mjs';

const require = createRequire(import.meta.url);
const standInPath = require.resolve('./vscode-stand-in.js');
const resolveFilename = Module._resolveFilename;
Module._resolveFilename = function (request, ...rest) {
  return request === 'vscode' ? standInPath : resolveFilename.call(this, request, ...rest);
};
const vscode = require('vscode');
const { state, openEditor, extensionContext } = vscode.standIn;
const extensionDir = process.env.FM_IDE_EXTENSION_DIR ?? join(dirname(fileURLToPath(import.meta.url)), '..');
const extension = require(join(extensionDir, 'src', 'extension.js'));
const FILE = 'use std::fmt;\nfn first(xs: &[i32]) -> i32 {\n    xs[0]\n}\nfn main() {}\n';
let simUrl;
let key;

before(async () => {
  const keyed = keyedRelayConfig('vscode');
  key = keyed.key;
  simUrl = await start(simBin, ['--port', '0', '--first-token-ms', '200', '--tokens-per-second', '30'], 'endpoint');
  const relayUrl = await start(relayBin, ['serve', '--config', keyed.configFile, '--port', '0', '--bedrock-endpoint', simUrl], 'url');
  Object.assign(state.config, {
    'fmRelay.relayUrl': relayUrl,
    'fmRelay.routeHint': '',
    'fmRelay.completionRouteHint': 'fast',
    'fmRelay.model': '',
    'fmRelay.transport': 'sse',
    'fmRelay.inlineSuggestions.enabled': true,
    'fmRelay.inlineSuggestions.debounceMs': 50,
  });
  extension.activate(extensionContext(extensionDir));
});
after(stopAll);

/** Opens FILE with `first`'s body (lines 1 to 3) selected. */
function selectFunction() {
  return openEditor('/workspace/src/lib.rs', FILE, 'rust', new vscode.Selection(new vscode.Position(1, 0), new vscode.Position(3, 1)));
}

/** The messages posted to the panel since its last `question`. */
function lastAnswerMessages() {
  const posted = state.panels[0].posted;
  const start = posted.findLastIndex((entry) => entry.message.type === 'question');
  return posted.slice(start);
}

test('activation registers the commands, the inline provider and the status item', () => {
  for (const command of ['fmRelay.askAboutSelection', 'fmRelay.fixSelection', 'fmRelay.cancel', 'fmRelay.setApiKey', 'fmRelay.clearApiKey']) {
    assert.ok(state.commands.has(command), command);
  }
  assert.equal(state.inlineProviders.length, 1);
  assert.deepEqual(state.inlineProviders[0].selector, { pattern: '**' });
  assert.equal(state.statusItems[0].text, 'FM Relay');
});

test('without a key the panel shows the relay’s refusal; the key set by the command is used', async () => {
  selectFunction();
  state.inputs.push('What does this code do?');
  const refused = await (await vscode.commands.executeCommand('fmRelay.askAboutSelection')).finished;
  assert.equal(refused.ok, false);
  assert.equal(refused.error.kind, 'relay');
  assert.equal(refused.error.code, 'unauthorized');
  const shown = lastAnswerMessages().at(-1).message;
  assert.equal(shown.type, 'error');
  assert.equal(shown.error.code, 'unauthorized');

  state.inputs.push(key);
  await vscode.commands.executeCommand('fmRelay.setApiKey');
  state.inputs.push('What does this code do, with a key?');
  const answered = await (await vscode.commands.executeCommand('fmRelay.askAboutSelection')).finished;
  assert.equal(answered.ok, true, JSON.stringify(answered.error?.message));
});

test('ask about selection streams the answer into the panel progressively and shows the TTFT', async () => {
  selectFunction();
  state.inputs.push('Why would this panic on an empty slice?');
  const outcome = await (await vscode.commands.executeCommand('fmRelay.askAboutSelection')).finished;
  assert.equal(outcome.ok, true, JSON.stringify(outcome.error?.message));
  const panel = state.panels[0];
  assert.equal(state.panels.length, 1, 'one panel, reused');
  assert.match(panel.webview.html, /Content-Security-Policy/);
  assert.match(panel.webview.html, /media\/panel\.js/);
  const messages = lastAnswerMessages();
  assert.deepEqual(messages.map((entry) => entry.message.type).filter((type, i, all) => type !== all[i - 1]), ['question', 'start', 'delta', 'done']);
  assert.equal(messages[0].message.title, 'Why would this panic on an empty slice?');
  const deltas = messages.filter((entry) => entry.message.type === 'delta');
  assert.ok(deltas.length >= 5, `deltas: ${deltas.length}`);
  assert.ok(deltas.at(-1).at - deltas[0].at > 500, 'the first delta long before the last');
  const summary = messages.at(-1).message.summary;
  assert.ok(summary.ttftMs > 150, `TTFT ${summary.ttftMs}`);
  assert.equal(state.statusItems[0].text, `FM Relay: TTFT ${Math.round(summary.ttftMs)} ms`);
});

test('fix selection: show diff, replace and insert apply the complete code block', async () => {
  const editor = selectFunction();
  const outcome = await (await vscode.commands.executeCommand('fmRelay.fixSelection')).finished;
  assert.equal(outcome.ok, true, JSON.stringify(outcome.error?.message));
  const index = outcome.summary.blocks.findIndex((block) => block.kind === 'code');
  assert.ok(index >= 0, `a code block in ${JSON.stringify(outcome.summary.text)}`);
  const code = outcome.summary.blocks[index].text.replace(/\n$/, '');
  const panel = state.panels[0];
  const expected = FILE.slice(0, FILE.indexOf('fn first')) + code + FILE.slice(FILE.indexOf('}\n') + 1);

  await panel.click({ type: 'diff', index });
  const diff = state.executed.find((call) => call.id === 'vscode.diff');
  assert.ok(diff, 'vscode.diff was opened');
  assert.equal(diff.args[0].toString(), editor.document.uri.toString());
  const proposal = state.contentProviders.get(diff.args[1].scheme).provideTextDocumentContent(diff.args[1]);
  assert.equal(proposal, expected, 'the diff shows the file with the selection replaced');
  assert.equal(editor.document.text, FILE, 'a diff changes nothing');

  await panel.click({ type: 'replace', index });
  assert.equal(editor.document.text, expected);

  editor.selection = new vscode.Selection(new vscode.Position(0, 0), new vscode.Position(0, 0));
  await panel.click({ type: 'insert', index });
  assert.equal(editor.document.text, outcome.summary.blocks[index].text + expected, 'inserted at the cursor');
  assert.deepEqual(
    panel.posted.filter((entry) => entry.message.type === 'applied').map((entry) => [entry.message.action, entry.message.ok]),
    [['diff', true], ['replace', true], ['insert', true]],
  );

  const warnings = state.messages.length;
  await panel.click({ type: 'insert', index: 99 });
  assert.equal(state.messages.length, warnings + 1, 'no such block: a warning, no edit');
  assert.equal(editor.document.text, outcome.summary.blocks[index].text + expected);
});

test('the panel’s Stop cancels the answer and the upstream call', async () => {
  selectFunction();
  const cancelledBefore = (await simStats(simUrl)).streams_cancelled;
  state.inputs.push('Explain this code at length, please.');
  const answer = await vscode.commands.executeCommand('fmRelay.askAboutSelection');
  await until('a delta', async () => lastAnswerMessages().some((entry) => entry.message.type === 'delta'));
  await state.panels[0].click({ type: 'cancel' });
  const outcome = await answer.finished;
  assert.equal(outcome.error?.kind, 'cancelled');
  assert.equal(lastAnswerMessages().at(-1).message.error.kind, 'cancelled');
  await until('the simulator to see the cancel', async () => (await simStats(simUrl)).streams_cancelled > cancelledBefore);
});

test('the inline provider suggests code at the cursor, and a new keystroke cancels the request in flight', async () => {
  const editor = openEditor('/workspace/src/main.rs', 'fn main() {\n    let total = \n}\n', 'rust');
  const position = new vscode.Position(1, 16);
  const { provider } = state.inlineProviders[0];

  const stats = await simStats(simUrl);
  const typing = new vscode.CancellationTokenSource();
  const pending = provider.provideInlineCompletionItems(editor.document, position, {}, typing.token);
  await until('the upstream stream to start', async () => (await simStats(simUrl)).streams_started > stats.streams_started);
  typing.cancel();
  assert.deepEqual(await pending, [], 'nothing to show once the user typed on');
  await until('the simulator to see the cancel', async () => (await simStats(simUrl)).streams_cancelled > stats.streams_cancelled);
  assert.equal(provider.inFlight, null);

  const paused = new vscode.CancellationTokenSource();
  const items = await provider.provideInlineCompletionItems(editor.document, position, {}, paused.token);
  assert.equal(items.length, 1);
  assert.ok(items[0].insertText.trim().length > 0, 'a suggestion');
  assert.ok(!items[0].insertText.includes('```'), 'without fences');
  assert.deepEqual(items[0].range, new vscode.Range(position, position));
  assert.match(state.statusItems[0].text, /^FM Relay: TTFT \d+ ms$/);

  state.config['fmRelay.inlineSuggestions.enabled'] = false;
  const started = (await simStats(simUrl)).streams_started;
  assert.deepEqual(await provider.provideInlineCompletionItems(editor.document, position, {}, new vscode.CancellationTokenSource().token), []);
  assert.equal((await simStats(simUrl)).streams_started, started, 'turned off: nothing asked');
  state.config['fmRelay.inlineSuggestions.enabled'] = true;
});
