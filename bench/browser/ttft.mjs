// Browser TTFT minus relay TTFT (issue 3's budget: ≤ 10 ms median on loopback).
//
// Starts fm-sim and the relay (release builds) and drives the chat page in headless Chromium:
// for each transport (SSE over fetch, WebSocket) it sends BENCH_REQUESTS single-turn prompts
// (after BENCH_WARMUP unmeasured ones), then reads the page's own latency history from
// localStorage, where every request has the browser's TTFT (send → first text on the page) and
// the relay's TTFT for the same request (from its `done` event). Prints the figures as a
// Markdown table; exits 1 when a median gap is over the budget.
//
// Run with scripts/bench-web-ttft.sh (builds everything first).

import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { launchBrowser, run, start, until } from '../../tests/e2e/harness.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const relayBin = process.env.FM_RELAY_BIN ?? join(root, 'target', 'release', 'fm-relay');
const simBin = process.env.FM_SIM_BIN ?? join(root, 'target', 'release', 'fm-sim');
const webDir = process.env.FM_WEB_DIR ?? join(root, 'web', 'dist');
const requests = Number(process.env.BENCH_REQUESTS ?? 50);
const warmup = Number(process.env.BENCH_WARMUP ?? 5);
const budgetMs = 10;

function quantile(values, q) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

async function main() {
  // A first token after 50 ms and fast tokens: the measured part is the first token's trip.
  const simUrl = await start(simBin, ['--port', '0', '--first-token-ms', '50', '--tokens-per-second', '2000'], 'endpoint');
  const relayUrl = await start(relayBin, ['serve', '--port', '0', '--bedrock-endpoint', simUrl, '--web-dir', webDir], 'url');
  const browser = await launchBrowser();
  const rows = [];
  let overBudget = false;
  try {
    const page = await browser.newPage();
    await page.goto(relayUrl);
    await until('the model list', async () => (await page.locator('select[aria-label=Model] option').count()) > 0);
    await page.click('text=Clear history', { force: true }).catch(() => {});
    for (const transport of ['sse', 'websocket']) {
      await page.selectOption('select[aria-label=Transport]', transport);
      for (let i = 0; i < warmup + requests; i += 1) {
        await page.click('button:has-text("New conversation")');
        // Numbers in the prompt keep every request out of the semantic cache.
        await page.fill('#prompt', `Question ${transport} ${i}: how long until the first token?`);
        await page.press('#prompt', 'Enter');
        await until('the answer', async () => (await page.locator('article.turn').last().getAttribute('data-state')) === 'done', 30000);
      }
    }
    const history = JSON.parse(await page.evaluate(() => localStorage.getItem('fm-relay.ttft-history.v1')));
    for (const transport of ['sse', 'web_socket']) {
      const samples = history.filter((s) => s.transport === transport && s.ending === 'done').slice(warmup);
      const gaps = samples.map((s) => s.ttft_ms - s.server_ttft_ms);
      const row = {
        transport,
        requests: samples.length,
        browser: quantile(samples.map((s) => s.ttft_ms), 0.5),
        relay: quantile(samples.map((s) => s.server_ttft_ms), 0.5),
        gap50: quantile(gaps, 0.5),
        gap95: quantile(gaps, 0.95),
      };
      overBudget ||= !(row.gap50 <= budgetMs);
      rows.push(row);
    }
  } finally {
    await browser.close();
  }
  console.log('| transport | requests | browser TTFT p50 ms | relay TTFT p50 ms | gap p50 ms | gap p95 ms |');
  console.log('|---|---|---|---|---|---|');
  for (const r of rows) {
    console.log(`| ${r.transport === 'sse' ? 'SSE (fetch)' : 'WebSocket'} | ${r.requests} | ${r.browser.toFixed(1)} | ${r.relay.toFixed(1)} | ${r.gap50.toFixed(1)} | ${r.gap95.toFixed(1)} |`);
  }
  console.log(overBudget ? `OVER the ${budgetMs} ms budget` : `within the ${budgetMs} ms budget (median gap)`);
  if (overBudget) throw new Error('a median gap is over the budget');
}

run(main);
