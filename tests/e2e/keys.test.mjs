// End-to-end test of the chat page against a relay that requires API keys (auth.mode = "keys"),
// in Debian's Chromium: the page shows the 401 clearly, takes a key (kept in the browser), and
// then streams answers over SSE and over the WebSocket (whose key travels as a subprotocol).
//
// The key is made the way a user makes one: `fm-relay keys add`. Run by scripts/test.sh after
// `trunk build`, with the same environment as chat.test.mjs.

import { join } from 'node:path';
import assert from 'node:assert/strict';
import { artifacts, keyedRelayConfig, launchBrowser, relayBin, run, simBin, start, until, webDir } from './harness.mjs';

async function main() {
  const { configFile, key } = keyedRelayConfig('browser');

  const simUrl = await start(simBin, ['--port', '0', '--first-token-ms', '50', '--tokens-per-second', '100'], 'endpoint');
  const relayUrl = await start(relayBin, ['serve', '--config', configFile, '--port', '0', '--bedrock-endpoint', simUrl, '--web-dir', webDir], 'url');

  const browser = await launchBrowser();
  try {
    const page = await (await browser.newContext({ viewport: { width: 1000, height: 800 } })).newPage();
    await page.goto(relayUrl);
    // Without a key: the page says so, and a message fails with the reason.
    await until('the 401 notice', async () => (await page.locator('p.needs-key').count()) === 1);
    assert.match((await page.locator('p.needs-key').textContent()) ?? '', /API key/);
    await page.fill('#prompt', 'Hello without a key');
    await page.press('#prompt', 'Enter');
    const refused = page.locator('article.turn').last();
    await until('the refused turn', async () => (await refused.getAttribute('data-state')) === 'failed');
    assert.match((await refused.textContent()) ?? '', /API key/, 'the failure names the key');
    await page.screenshot({ path: join(artifacts, 'chat-needs-key.png'), fullPage: true });

    // With the key: the models load and answers stream, over SSE and over the WebSocket.
    await page.fill('form.api-key input', key);
    await page.click('form.api-key button');
    await until('the model list', async () => (await page.locator('select[aria-label=Model] option').count()) > 0);
    assert.equal(await page.locator('p.needs-key').count(), 0, 'the notice is gone');
    for (const transport of ['sse', 'websocket']) {
      await page.selectOption('select[aria-label=Transport]', transport);
      await page.fill('#prompt', `Hello with a key over ${transport}`);
      await page.press('#prompt', 'Enter');
      const turn = page.locator('article.turn').last();
      await until(`the answer over ${transport}`, async () => (await turn.getAttribute('data-state')) === 'done', 30000);
      assert.ok(((await turn.locator('.answer').textContent()) ?? '').length > 20, `a whole answer over ${transport}`);
    }
    // The key stays in this browser across a reload.
    await page.reload();
    await until('the model list after reload', async () => (await page.locator('select[aria-label=Model] option').count()) > 0);
    assert.equal(await page.locator('p.needs-key').count(), 0);
    console.log('e2e: keys mode ok (401 shown, key entered and kept, SSE and WebSocket with the key)');
  } catch (err) {
    await Promise.all(browser.contexts().flatMap((context) => context.pages()).map((page, index) =>
      page.screenshot({ path: join(artifacts, `keys-failure-${index}.png`), fullPage: true }).catch(() => {})));
    throw err;
  } finally {
    await browser.close();
  }
}

run(main);
