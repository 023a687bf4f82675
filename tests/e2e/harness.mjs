// What the browser test and the browser benchmark share: starting the relay and fm-sim from
// their binaries (each announces its address in its log), polling for a condition, reading the
// simulator's counters, and launching Debian's Chromium through playwright-core.

import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

/// Where the tests find the built binaries and UI (env FM_RELAY_BIN, FM_SIM_BIN, FM_WEB_DIR, as
/// scripts/test.sh sets them) and put their screenshots.
export const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const artifacts = join(root, 'tests', 'artifacts');
mkdirSync(artifacts, { recursive: true });
export const relayBin = process.env.FM_RELAY_BIN ?? join(root, 'target', 'debug', 'fm-relay');
export const simBin = process.env.FM_SIM_BIN ?? join(root, 'target', 'debug', 'fm-sim');
export const webDir = process.env.FM_WEB_DIR ?? join(root, 'web', 'dist');

const children = [];

/// Starts a binary and resolves with the first URL its log announces under `field`.
export function start(bin, args, field) {
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

/// A relay configuration that requires API keys (auth.mode = "keys") with one key, made the way a
/// user makes one (`fm-relay keys add`), its keys file and data folder in a new temporary folder:
/// `{configFile, key}`.
export function keyedRelayConfig(keyName) {
  const dir = mkdtempSync(join(tmpdir(), 'fm-relay-keys-'));
  const keysFile = join(dir, 'keys.toml');
  const key = execFileSync(relayBin, ['keys', 'add', keyName, '--file', keysFile]).toString().trim();
  if (!/^fmr_[0-9a-f]{64}$/.test(key)) throw new Error(`keys add printed ${JSON.stringify(key)}, not a key`);
  const config = execFileSync(relayBin, ['--print-config']).toString()
    .replace('mode = "open"', 'mode = "keys"')
    .replace('keys_file = "data/keys.toml"', `keys_file = ${JSON.stringify(keysFile)}`)
    .replace('data_dir = "data"', `data_dir = ${JSON.stringify(join(dir, 'data'))}`);
  if (!config.includes('mode = "keys"')) throw new Error('the default configuration has no auth.mode to change');
  const configFile = join(dir, 'relay.toml');
  writeFileSync(configFile, config);
  return { configFile, key };
}

/// Stops everything `start` started.
export function stopAll() {
  children.forEach((child) => child.kill());
}

/// Runs `main`, then stops the binaries and exits 0, or prints the error and exits 1.
export function run(main) {
  main()
    .then(() => {
      stopAll();
      process.exit(0);
    })
    .catch((err) => {
      console.error(err);
      stopAll();
      process.exit(1);
    });
}

/// The simulator's counters (`GET /_sim/stats`).
export async function simStats(simUrl) {
  const response = await fetch(`${simUrl}/_sim/stats`);
  return response.json();
}

/// Waits until `check` returns a truthy value, polling every 20 ms, for at most `ms`.
export async function until(what, check, ms = 20000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/// Headless Chromium (Debian's, or $CHROMIUM).
export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}
