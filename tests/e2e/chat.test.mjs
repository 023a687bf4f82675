// End-to-end test of the chat page in a real browser (Debian's Chromium through playwright-core)
// against the real relay and a standalone fm-sim, both started here from the built binaries.
//
// Run by scripts/test.sh after `trunk build`; env FM_RELAY_BIN and FM_SIM_BIN name the binaries,
// FM_WEB_DIR the built UI. Screenshots go to tests/artifacts/. Exits non-zero on any failure.

import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const artifacts = join(root, 'tests', 'artifacts');
mkdirSync(artifacts, { recursive: true });
const relayBin = process.env.FM_RELAY_BIN ?? join(root, 'target', 'debug', 'fm-relay');
const simBin = process.env.FM_SIM_BIN ?? join(root, 'target', 'debug', 'fm-sim');
const webDir = process.env.FM_WEB_DIR ?? join(root, 'web', 'dist');
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';

const children = [];

/// Starts a binary and resolves with the first URL its log announces under `field`.
function start(bin, args, field) {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { env: { ...process.env, RUST_LOG: 'info', NO_COLOR: '1' } });
    children.push(child);
    let log = '';
    const timer = setTimeout(() => reject(new Error(`${bin} did not start:\n${log}`)), 30000);
    child.stderr.on('data', (chunk) => {
      log += chunk;
      const match = log.match(new RegExp(`${field}=(http://[0-9.:]+)`));
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
    child.on('exit', (code) => reject(new Error(`${bin} exited with ${code}:\n${log}`)));
  });
}

async function simStats(simUrl) {
  const response = await fetch(`${simUrl}/_sim/stats`);
  return response.json();
}

/// Waits until `check` returns a truthy value, polling every 20 ms, for at most `ms`.
async function until(what, check, ms = 20000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function main() {
  // 15 tokens per second: an answer takes seconds, so its growth and a Stop can be seen.
  const simUrl = await start(simBin, ['--port', '0', '--first-token-ms', '150', '--tokens-per-second', '15'], 'endpoint');
  const relayUrl = await start(relayBin, ['serve', '--port', '0', '--bedrock-endpoint', simUrl, '--web-dir', webDir], 'url');

  const browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1000, height: 800 } });
    const errors = [];
    page.on('pageerror', (err) => errors.push(String(err)));
    await page.goto(relayUrl);
    await until('the model list', async () => (await page.locator('select option').count()) > 0);

    // A prompt: the answer appears in several states before it completes.
    await page.fill('#prompt', 'Tell me how a relay streams tokens');
    await page.press('#prompt', 'Enter');
    const answer = page.locator('article.turn').last().locator('.answer');
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
    await page.screenshot({ path: join(artifacts, 'chat.png'), fullPage: true });

    // Stop mid-stream: the answer stops growing, the turn says so, the upstream saw the cancel.
    const cancelledBefore = (await simStats(simUrl)).streams_cancelled;
    await page.fill('#prompt', 'Explain failover across regions in detail');
    await page.press('#prompt', 'Enter');
    const second = page.locator('article.turn').last();
    await until('text in the second answer', async () => ((await second.locator('.answer').textContent()) ?? '').length > 0);
    await page.click('button.stop');
    await until('the stopped state', async () => (await second.getAttribute('data-state')) === 'stopped');
    const stoppedText = await second.locator('.answer').textContent();
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(await second.locator('.answer').textContent(), stoppedText, 'no text after Stop');
    await until('the simulator to see the cancel', async () => (await simStats(simUrl)).streams_cancelled > cancelledBefore);

    // Shift+Enter adds a line instead of sending.
    await page.fill('#prompt', 'first line');
    await page.press('#prompt', 'Shift+Enter');
    assert.equal(await page.locator('article.turn').count(), 2, 'Shift+Enter does not send');
    await page.fill('#prompt', '');

    // The conversation survives a reload.
    await page.reload();
    await until('the restored conversation', async () => (await page.locator('article.turn').count()) === 2);
    assert.equal(await page.locator('article.turn').first().locator('.answer').textContent(), finalText);
    assert.equal(await page.locator('article.turn').last().getAttribute('data-state'), 'stopped');
    await page.screenshot({ path: join(artifacts, 'chat-after-reload.png'), fullPage: true });

    assert.deepEqual(errors, [], 'no errors in the page');
    console.log('e2e: chat page ok (streaming, TTFT, Stop, reload); screenshots in tests/artifacts/');
  } finally {
    await browser.close();
  }
}

main()
  .then(() => {
    children.forEach((child) => child.kill());
    process.exit(0);
  })
  .catch((err) => {
    console.error(err);
    children.forEach((child) => child.kill());
    process.exit(1);
  });
