// End-to-end test of the documents page (#/documents) in Debian's Chromium against the real relay
// and a standalone fm-sim: refused files are named with the relay's reason, a PDF with a text
// layer is uploaded through the file picker and its job followed live to COMPLETED (progress in
// chunks, the result as Markdown), an extraction is dropped on the drop zone and shows its fields
// as JSON, a job is cancelled while the model is slow, and the list survives a reload.
//
// The relay runs with a temporary data_dir, `jobs.chunk_chars = 1000` (so the PDF is read in
// several chunks and progress has steps to show) and `jobs.max_document_bytes = 50000` (so a
// too-large file is quick to make). Run by scripts/test.sh after `trunk build`, with the same
// environment as chat.test.mjs. Screenshots go to tests/artifacts/.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { artifacts, launchBrowser, relayBin, run, simBin, start, until, webDir } from './harness.mjs';

/// A one-page PDF whose text layer is `lines` in Helvetica (BT / Tf / Tj), with a correct
/// cross-reference table — what the relay reads with the `pdf-extract` crate.
function pdf(lines) {
  const escape = (text) => text.replace(/[\\()]/g, (c) => `\\${c}`);
  const content = ['BT', '/F1 10 Tf', '14 TL', '40 800 Td',
    ...lines.map((line) => `(${escape(line)}) Tj T*`), 'ET'].join('\n');
  const objects = [
    '<< /Type /Catalog /Pages 2 0 R >>',
    '<< /Type /Pages /Kids [3 0 R] /Count 1 >>',
    '<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>',
    `<< /Length ${Buffer.byteLength(content, 'latin1')} >>\nstream\n${content}\nendstream`,
    '<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>',
  ];
  let out = '%PDF-1.4\n';
  const offsets = objects.map((body, index) => {
    const offset = Buffer.byteLength(out, 'latin1');
    out += `${index + 1} 0 obj\n${body}\nendobj\n`;
    return offset;
  });
  const xref = Buffer.byteLength(out, 'latin1');
  out += `xref\n0 ${objects.length + 1}\n0000000000 65535 f \n`;
  out += offsets.map((offset) => `${String(offset).padStart(10, '0')} 00000 n \n`).join('');
  out += `trailer\n<< /Size ${objects.length + 1} /Root 1 0 R >>\nstartxref\n${xref}\n%%EOF\n`;
  return Buffer.from(out, 'latin1');
}

/// Forty lines of a report (about 3,400 characters: four chunks of at most 1,000).
const reportLines = Array.from({ length: 40 }, (_, i) =>
  `Line ${i + 1} of the quarterly report: revenue grew in region ${i % 7} while costs held steady.`);

async function main() {
  const dir = mkdtempSync(join(tmpdir(), 'fm-relay-documents-'));
  const config = execFileSync(relayBin, ['--print-config']).toString()
    .replace('data_dir = "data"', `data_dir = ${JSON.stringify(join(dir, 'data'))}`)
    .replace('keys_file = "data/keys.toml"', `keys_file = ${JSON.stringify(join(dir, 'keys.toml'))}`)
    .replace('chunk_chars = 24000', 'chunk_chars = 1000')
    .replace('max_document_bytes = 10485760', 'max_document_bytes = 50000');
  assert.match(config, /chunk_chars = 1000/);
  assert.match(config, /max_document_bytes = 50000/);
  assert.match(config, /\[jobs\]\nenabled = true/, 'jobs are on by default');
  const configFile = join(dir, 'relay.toml');
  writeFileSync(configFile, config);

  // A model call takes about a second: a job of several chunks moves in visible steps.
  const simUrl = await start(simBin, ['--port', '0', '--first-token-ms', '300', '--tokens-per-second', '150'], 'endpoint');
  const relayUrl = await start(relayBin, ['serve', '--config', configFile, '--port', '0', '--bedrock-endpoint', simUrl, '--web-dir', webDir], 'url');
  const api = async (path) => (await fetch(`${relayUrl}${path}`)).json();

  const browser = await launchBrowser();
  try {
    const page = await (await browser.newContext({ viewport: { width: 1000, height: 900 } })).newPage();
    const errors = [];
    page.on('pageerror', (err) => errors.push(String(err)));
    page.on('console', (message) => {
      if (message.type() === 'error') console.error(`page console: ${message.text()}`);
    });
    await page.goto(`${relayUrl}/#/documents`);
    await until('the empty job list', async () => page.locator('section.documents .empty').isVisible());
    assert.equal(await page.locator('nav a[href="#/documents"]').getAttribute('aria-current'), 'page');
    const upload = page.locator('section.documents input[type=file]');
    const submit = page.locator('form.upload button[type=submit]');
    const uploadError = page.locator('.upload-error');
    const jobs = page.locator('li.job');

    // Files the relay refuses (empty, too large, not a PDF inside) and one the page does not send
    // (a type the relay does not read): each named, with the reason, next to the drop zone.
    await upload.setInputFiles([
      { name: 'empty.txt', mimeType: 'text/plain', buffer: Buffer.alloc(0) },
      { name: 'huge.txt', mimeType: 'text/plain', buffer: Buffer.alloc(60000, 'a') },
      { name: 'broken.pdf', mimeType: 'application/pdf', buffer: Buffer.from('not a pdf at all') },
      { name: 'setup.exe', mimeType: 'application/x-msdownload', buffer: Buffer.from('MZ') },
    ]);
    assert.equal(await submit.textContent(), 'Analyse 4 documents');
    await submit.click();
    await until('the refusals', async () => (await uploadError.isVisible()) && /setup\.exe/.test(await uploadError.textContent()));
    const refusals = (await uploadError.textContent()).split('\n');
    assert.equal(refusals.length, 4, `one line per file: ${refusals.join(' | ')}`);
    assert.match(refusals[0], /^“empty\.txt” was refused: the document has no text to analyse \(400\)$/);
    assert.match(refusals[1], /^“huge\.txt” was refused: the document is 60000 bytes, more than the 50000 bytes .* allows \(413\)$/);
    assert.match(refusals[2], /^“broken\.pdf” was refused: the document cannot be read as pdf: .*\(400\)$/);
    assert.match(refusals[3], /^“setup\.exe” was not sent: .*application\/x-msdownload/);
    assert.equal(await uploadError.getAttribute('role'), 'alert');
    assert.equal(await jobs.count(), 0, 'no job for a refused file');
    await page.screenshot({ path: join(artifacts, 'documents-refused.png'), fullPage: true });

    // A PDF through the file picker: summarized in chunks, followed live to COMPLETED.
    const report = pdf(reportLines);
    await upload.setInputFiles({ name: 'quarterly-report.pdf', mimeType: 'application/pdf', buffer: report });
    assert.match(await page.locator('.drop-zone .chosen').textContent(), /^quarterly-report\.pdf \(PDF, \d+(\.\d)? KB\)$/);
    await submit.click();
    const first = jobs.filter({ hasText: 'quarterly-report.pdf' });
    await until('the PDF job in the list', async () => (await first.count()) === 1);
    assert.equal(await uploadError.isVisible(), false, 'no error for an accepted file');
    assert.match(await first.locator('.kind').textContent(), /^summarize · PDF · normal priority$/);
    const statuses = new Set();
    const progress = new Set();
    await until('the PDF job to complete', async () => {
      statuses.add(await first.getAttribute('data-status'));
      progress.add(await first.locator('.progress-text').textContent());
      return (await first.getAttribute('data-status')) === 'COMPLETED';
    }, 60000);
    assert.ok(statuses.has('RUNNING'), `seen running: ${[...statuses]}`);
    const steps = [...progress].filter((text) => /^\d+\/\d+ chunks/.test(text));
    assert.ok(steps.length >= 2, `progress in steps: ${[...progress].join(' | ')}`);
    const between = [...progress].map((text) => text.match(/^(\d+)\/(\d+) chunks$/)).filter(Boolean)
      .filter(([, done, total]) => Number(done) > 0 && Number(done) < Number(total));
    assert.ok(between.length > 0, `a step in between: ${[...progress].join(' | ')}`);
    await until('the result', async () => ((await first.locator('.result').textContent()) ?? '').trim().length > 20);
    const facts = await first.locator('.facts').textContent();
    const [, chunks, characters] = facts.match(/^(\d+) chunks covered \((\d+) characters\) · model \S+ · \d+ in \/ \d+ out tokens$/) ?? [];
    assert.ok(Number(chunks) >= Math.ceil(reportLines.join('\n').length / 1000), `chunks of at most 1000 characters: ${facts}`);
    assert.equal(await first.locator('.progress-text').textContent(), `${chunks}/${chunks} chunks`);
    // The relay read the PDF's text layer: every line, nothing invented.
    const expected = reportLines.join('\n').length;
    assert.ok(Math.abs(Number(characters) - expected) < expected * 0.05, `${characters} characters read, ${expected} written`);
    assert.equal(await first.locator('button.cancel').isVisible(), false, 'nothing to cancel');
    assert.match(await first.locator('.times').textContent(), /^submitted (just now|\d+ s ago) · waited \d+\.\d s · ran \d+(\.\d)? s$/);
    const firstId = await first.getAttribute('data-job-id');
    assert.equal((await api(`/v1/jobs/${firstId}/result`)).chunks, Number(chunks));

    // An extraction dropped on the drop zone: its fields as JSON.
    await page.selectOption('select[name=analysis_type]', 'extract');
    await page.fill('input[name=detail]', 'tenant, rent');
    const dropped = await page.evaluateHandle(() => {
      const transfer = new DataTransfer();
      transfer.items.add(new File(['# Lease\n\nACME Ltd rents the flat from 1 March for 900 EUR a month.\n'], 'lease.md', { type: '' }));
      return transfer;
    });
    await page.dispatchEvent('.drop-zone', 'drop', { dataTransfer: dropped });
    assert.match(await page.locator('.drop-zone .chosen').textContent(), /^lease\.md \(Markdown, \d+ B\)$/);
    await submit.click();
    const lease = jobs.filter({ hasText: 'lease.md' });
    await until('the extraction to complete', async () =>
      (await lease.count()) === 1 && (await lease.getAttribute('data-status')) === 'COMPLETED', 60000);
    const json = lease.locator('.result figure.code-block[data-language=json] pre code');
    await until('the extracted fields', async () => (await json.count()) === 1);
    const fields = JSON.parse(await json.textContent());
    assert.deepEqual(Object.keys(fields).sort(), ['rent', 'tenant'], `the fields asked for: ${JSON.stringify(fields)}`);
    assert.equal(await jobs.first().getAttribute('data-job-id') !== firstId, true, 'newest first');

    // Cancel while the model is slow: the row says CANCELLED, and so does the relay.
    const slow = await fetch(`${simUrl}/_sim/faults`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ rules: [{ fault: 'slow@60000' }] }),
    });
    assert.equal(slow.status, 200);
    await page.selectOption('select[name=analysis_type]', 'qa');
    await page.fill('input[name=detail]', 'How much did revenue grow?');
    await upload.setInputFiles({ name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('Revenue grew by 12% this quarter.') });
    await submit.click();
    const notes = jobs.filter({ hasText: 'notes.txt' });
    await until('the slow job to be queued or running', async () =>
      (await notes.count()) === 1 && ['QUEUED', 'RUNNING'].includes(await notes.getAttribute('data-status')));
    await notes.locator('button.cancel').click();
    await until('the cancelled job', async () => (await notes.getAttribute('data-status')) === 'CANCELLED', 20000);
    assert.equal(await notes.locator('.status').textContent(), 'CANCELLED');
    assert.equal(await notes.locator('button.cancel').isVisible(), false);
    const notesId = await notes.getAttribute('data-job-id');
    assert.equal((await api(`/v1/jobs/${notesId}`)).status, 'CANCELLED');
    await fetch(`${simUrl}/_sim/faults`, { method: 'DELETE' });
    await page.screenshot({ path: join(artifacts, 'documents.png'), fullPage: true });

    // A reload: the jobs come back from the relay, with their file names and results.
    await page.reload();
    await until('the list after a reload', async () => (await jobs.count()) === 3);
    assert.deepEqual(await jobs.locator('.file').allTextContents(), ['notes.txt', 'lease.md', 'quarterly-report.pdf']);
    assert.deepEqual(await jobs.evaluateAll((items) => items.map((item) => item.dataset.status)), ['CANCELLED', 'COMPLETED', 'COMPLETED']);
    await until('the result after a reload', async () => ((await first.locator('.result').textContent()) ?? '').trim().length > 20);
    assert.equal(await page.locator('section.documents .empty').isVisible(), false);

    assert.deepEqual(errors, [], 'no errors in the page');
    console.log('e2e: documents page ok (refusals named, PDF followed to COMPLETED in chunks, extraction by drop, cancel, reload); screenshots in tests/artifacts/');
  } catch (err) {
    await Promise.all(browser.contexts().flatMap((context) => context.pages()).map((page, index) =>
      page.screenshot({ path: join(artifacts, `documents-failure-${index}.png`), fullPage: true }).catch(() => {})));
    throw err;
  } finally {
    await browser.close();
  }
}

run(main);
