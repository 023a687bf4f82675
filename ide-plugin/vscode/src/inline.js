// Inline suggestions (ghost text): when typing pauses, the code before and after the cursor goes
// to the relay as a `complete` request; the suggestion is the answer's first code block, or its
// text. A new keystroke cancels the request in flight (VS Code cancels the provider's token, and
// the core closes the stream, so the relay cancels the upstream call too).
'use strict';

const vscode = require('vscode');
const { core, startAnswer } = require('./core.js');

/** Lines before and after the cursor sent with a completion (the core cuts to 4000 characters). */
const CONTEXT_LINES = 60;

function sleep(ms, token) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    token.onCancellationRequested(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

class InlineSuggestions {
  /** `makeClient` resolves to a `core.RelayClient` for the current settings. */
  constructor(makeClient, status) {
    this.makeClient = makeClient;
    this.status = status;
    /** The answer in flight, for the tests and for a cancel when the next one starts. */
    this.inFlight = null;
  }

  async provideInlineCompletionItems(document, position, _context, token) {
    const settings = vscode.workspace.getConfiguration('fmRelay');
    if (!settings.get('inlineSuggestions.enabled')) return [];
    await sleep(settings.get('inlineSuggestions.debounceMs') ?? 250, token);
    if (token.isCancellationRequested) return [];
    const first = Math.max(0, position.line - CONTEXT_LINES);
    const last = Math.min(document.lineCount - 1, position.line + CONTEXT_LINES);
    const prefix = document.getText(new vscode.Range(new vscode.Position(first, 0), position));
    if (prefix.trim() === '') return [];
    const suffix = document.getText(new vscode.Range(position, document.lineAt(last).range.end));
    let answer;
    try {
      const request = core.buildRequest(
        JSON.stringify({
          task: 'complete',
          prefix,
          suffix,
          language: document.languageId,
          path: vscode.workspace.asRelativePath(document.uri),
          model: settings.get('model') || undefined,
        }),
      );
      this.inFlight?.cancel();
      answer = startAnswer(await this.makeClient(), request);
    } catch (error) {
      // A setting the user must fix; ghost text cannot show it, the output of a command would.
      console.warn(`FM Relay inline suggestion: ${error.message}`);
      return [];
    }
    this.inFlight = answer;
    const cancelled = token.onCancellationRequested(() => answer.cancel());
    try {
      const outcome = await answer.finished;
      if (!outcome.ok || token.isCancellationRequested) return [];
      this.status.answered(outcome.summary);
      const code = outcome.summary.blocks.find((block) => block.kind === 'code');
      const text = (code ? code.text.replace(/\n$/, '') : outcome.summary.text).trimEnd();
      if (text === '') return [];
      return [new vscode.InlineCompletionItem(text, new vscode.Range(position, position))];
    } finally {
      cancelled.dispose();
      if (this.inFlight === answer) this.inFlight = null;
    }
  }
}

module.exports = { InlineSuggestions };
