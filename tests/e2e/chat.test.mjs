// End-to-end test of the chat page in a real browser (Debian's Chromium through playwright-core)
// against the real relay and a standalone fm-sim, both started here from the built binaries.
//
// Run by scripts/test.sh after `trunk build`; env FM_RELAY_BIN and FM_SIM_BIN name the binaries,
// FM_WEB_DIR the built UI. Screenshots go to tests/artifacts/. Exits non-zero on any failure.

import { join } from 'node:path';
import assert from 'node:assert/strict';
import { artifacts, launchBrowser, relayBin, run, simBin, simStats, start, until, webDir } from './harness.mjs';

async function main() {
  // 15 tokens per second: an answer takes seconds, so its growth and a Stop can be seen.
  const simUrl = await start(simBin, ['--port', '0', '--first-token-ms', '150', '--tokens-per-second', '15'], 'endpoint');
  const relayUrl = await start(relayBin, ['serve', '--port', '0', '--bedrock-endpoint', simUrl, '--web-dir', webDir], 'url');

  const browser = await launchBrowser();
  try {
    const context = await browser.newContext({
      viewport: { width: 1000, height: 800 },
      permissions: ['clipboard-read', 'clipboard-write'],
    });
    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (err) => errors.push(String(err)));
    page.on('console', (message) => {
      if (message.type() === 'error') console.error(`page console: ${message.text()}`);
    });
    await page.goto(relayUrl);
    await until('the model list', async () => (await page.locator('select[aria-label=Model] option').count()) > 0);
    const turns = page.locator('article.turn');
    const send = async (prompt) => {
      await page.fill('#prompt', prompt);
      await page.press('#prompt', 'Enter');
      return turns.last();
    };
    const finished = (turn, what) =>
      until(what, async () => (await turn.getAttribute('data-state')) === 'done', 60000);

    // A prompt: the answer appears in several states before it completes.
    await page.fill('#prompt', 'Tell me how a relay streams tokens');
    await page.press('#prompt', 'Enter');
    const answer = turns.last().locator('.answer');
    const seen = new Set();
    await until('the first answer to finish', async () => {
      const text = (await answer.textContent()) ?? '';
      if (text) seen.add(text);
      return (await page.locator('article.turn').last().getAttribute('data-state')) === 'done';
    }, 60000);
    const finalText = (await answer.textContent()) ?? '';
    assert.ok(finalText.length > 20, `a whole answer, got ${JSON.stringify(finalText)}`);
    const partial = [...seen].filter((text) => text !== finalText && finalText.startsWith(text));
    assert.ok(partial.length >= 3, `the answer grew in steps (${partial.length} intermediate states seen)`);
    const facts = (await page.locator('article.turn').last().locator('.facts').first().textContent()) ?? '';
    assert.match(facts, /TTFT \d+ ms/, `TTFT shown: ${facts}`);
    assert.match(facts, /model claude-3-5-haiku/, `model shown: ${facts}`);
    assert.match(facts, /tokens\/s/, `token rate shown: ${facts}`);
    assert.match(facts, /TTFT \d+ ms \(relay \d+ ms\)/, `the relay's TTFT beside it: ${facts}`);
    assert.match(facts, /via SSE/, `transport shown: ${facts}`);
    assert.match(facts, /route: \S+/, `route reason shown: ${facts}`);

    // The routing hints are a picker of the relay's configured hints; "fast" routes to the fast model.
    const hintOptions = await page.locator('select[aria-label="Routing hint"] option').allTextContents();
    assert.deepEqual(hintOptions, ['None', 'balanced', 'fast', 'quality'], `hint picker: ${hintOptions}`);
    assert.equal(await page.locator('select[aria-label=Model]').inputValue(), '', 'no model named: the relay routes');
    await page.selectOption('select[aria-label="Routing hint"]', 'fast');
    const hinted = await send('hello');
    await finished(hinted, 'the hinted answer to finish');
    const hintedFacts = (await hinted.locator('.facts').first().textContent()) ?? '';
    assert.match(hintedFacts, /model nova-lite/, `the fast hint's model: ${hintedFacts}`);
    assert.match(hintedFacts, /hint-fast/, `the rule named: ${hintedFacts}`);
    await page.selectOption('select[aria-label="Routing hint"]', '');

    // An answer about code: Markdown with a fenced block, its language, and a working copy button.
    const coded = await send('Show me code that reads the first token');
    await finished(coded, 'the code answer to finish');
    const block = coded.locator('figure.code-block');
    assert.equal(await block.count(), 1, 'one code block');
    const language = await block.locator('.language').textContent();
    assert.ok(['rust', 'python', 'sh'].includes(language), `language label: ${language}`);
    const code = await block.locator('pre code').textContent();
    assert.ok(code.length > 5, `code shown: ${code}`);
    assert.equal(await block.locator('pre code').evaluate((el) => getComputedStyle(el).fontFamily.includes('mono')), true, 'monospace');
    await block.locator('button.copy').click();
    await until('the copy to be confirmed', async () => (await block.locator('button.copy').textContent()) === 'Copied');
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), code, 'the clipboard holds the code');
    await page.screenshot({ path: join(artifacts, 'chat.png'), fullPage: true });

    // Stop mid-stream: the answer stops growing, the turn says so, the upstream saw the cancel.
    const cancelledBefore = (await simStats(simUrl)).streams_cancelled;
    const second = await send('Explain failover across regions in detail');
    await until('text in the second answer', async () => ((await second.locator('.answer').textContent()) ?? '').length > 0);
    await page.click('button.stop');
    await until('the stopped state', async () => (await second.getAttribute('data-state')) === 'stopped');
    const stoppedText = await second.locator('.answer').textContent();
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(await second.locator('.answer').textContent(), stoppedText, 'no text after Stop');
    await until('the simulator to see the cancel', async () => (await simStats(simUrl)).streams_cancelled > cancelledBefore);

    // The WebSocket transport: a whole answer, then a Stop that reaches the upstream too.
    await page.selectOption('select[aria-label=Transport]', 'websocket');
    const overSocket = await send('How does a websocket answer arrive?');
    await finished(overSocket, 'the WebSocket answer to finish');
    const socketFacts = (await overSocket.locator('.facts').first().textContent()) ?? '';
    assert.match(socketFacts, /via WebSocket/, `transport shown: ${socketFacts}`);
    assert.match(socketFacts, /TTFT \d+ ms \(relay \d+ ms\)/, `TTFT over WebSocket: ${socketFacts}`);
    assert.ok(((await overSocket.locator('.answer').textContent()) ?? '').length > 20, 'a whole answer over WebSocket');
    const socketCancelsBefore = (await simStats(simUrl)).streams_cancelled;
    const stoppedSocket = await send('Explain circuit breakers at length');
    await until('text over the WebSocket', async () => ((await stoppedSocket.locator('.answer').textContent()) ?? '').length > 0);
    await page.click('button.stop');
    await until('the stopped WebSocket turn', async () => (await stoppedSocket.getAttribute('data-state')) === 'stopped');
    await until('the simulator to see the WebSocket cancel', async () => (await simStats(simUrl)).streams_cancelled > socketCancelsBefore);

    // Shift+Enter adds a line instead of sending.
    await page.fill('#prompt', 'first line');
    await page.press('#prompt', 'Shift+Enter');
    assert.equal(await turns.count(), 6, 'Shift+Enter does not send');
    await page.fill('#prompt', '');

    // The dashboard: the requests are there with browser and relay TTFT, and the charts are drawn.
    await page.click('nav a[href="#/dashboard"]');
    const row = page.locator('table.summary tr[data-model^="claude-3-5-haiku"]');
    await until('the model row with both TTFTs', async () =>
      (await row.count()) === 1 &&
      /\d+ \/ \d+ \/ \d+ ms/.test((await row.locator('.ttft-browser').textContent()) ?? '') &&
      /\d+ \/ \d+ \/ \d+ ms/.test((await row.locator('.ttft-relay').textContent()) ?? ''));
    const counts = (await row.locator('td').first().textContent()) ?? '';
    assert.match(counts, /^5 \/ \d+$/, `five requests in the browser's history: ${counts}`);
    assert.match((await row.locator('.gap').textContent()) ?? '', /^-?\d+\.\d ms$/, 'the median gap');
    assert.ok((await page.locator('.dashboard svg rect.bar').count()) > 0, 'the histogram has bars');
    assert.ok((await page.locator('.dashboard svg circle.point').count()) >= 4, 'the time series has the requests');
    assert.equal(await page.locator('.page').first().isHidden(), true, 'the chat is hidden');
    await page.screenshot({ path: join(artifacts, 'dashboard.png'), fullPage: true });

    // The conversation, the dashboard history and the transport survive a reload.
    await page.reload();
    await until('the dashboard after reload', async () => (await row.count()) === 1);
    await page.click('nav a[href="#/"]');
    await until('the restored conversation', async () => (await turns.count()) === 6);
    assert.equal(await turns.first().locator('.answer').textContent(), finalText);
    assert.equal(await turns.last().getAttribute('data-state'), 'stopped');
    assert.equal(await page.locator('select[aria-label=Transport]').inputValue(), 'websocket');
    await page.screenshot({ path: join(artifacts, 'chat-after-reload.png'), fullPage: true });

    assert.deepEqual(errors, [], 'no errors in the page');
    console.log('e2e: chat page and dashboard ok (streaming, Markdown and copy, TTFT, Stop, SSE and WebSocket, dashboard, reload); screenshots in tests/artifacts/');
  } catch (err) {
    // What the page looked like when it failed, and what it logged.
    await Promise.all(browser.contexts().flatMap((context) => context.pages()).map((page, index) =>
      page.screenshot({ path: join(artifacts, `failure-${index}.png`), fullPage: true }).catch(() => {})));
    throw err;
  } finally {
    await browser.close();
  }
}

run(main);
