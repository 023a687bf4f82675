// The VS Code extension: wires the fm-ide core (src/core.js) into the editor. Commands ask about
// or fix the selection, with the answer streamed into a panel (src/panel.js); inline suggestions
// come from src/inline.js; the status bar shows the last time to first token. Settings live
// under `fmRelay.*`; the API key lives in VS Code's secret storage, never in settings.
'use strict';

const vscode = require('vscode');
const { core } = require('./core.js');
const { AnswerPanel } = require('./panel.js');
const { InlineSuggestions } = require('./inline.js');

const API_KEY_SECRET = 'fmRelay.apiKey';

/** The relay client for the current settings and key; throws an invalid-setting error. */
async function relayClient(context, { completion = false } = {}) {
  const settings = vscode.workspace.getConfiguration('fmRelay');
  const routeHint = completion ? settings.get('completionRouteHint') : settings.get('routeHint');
  return new core.RelayClient({
    baseUrl: settings.get('relayUrl'),
    apiKey: (await context.secrets.get(API_KEY_SECRET)) ?? '',
    routeHint: routeHint ?? '',
    transport: settings.get('transport'),
  });
}

/** The last answer's figures, on the status bar. */
class StatusItem {
  constructor() {
    this.item = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
    this.item.text = 'FM Relay';
    this.item.tooltip = 'FM Relay: no answer yet';
    this.item.command = 'fmRelay.askAboutSelection';
    this.item.show();
  }

  answered(summary) {
    if (summary.ttftMs == null) return;
    this.item.text = `FM Relay: TTFT ${Math.round(summary.ttftMs)} ms`;
    const rate = summary.tokensPerSecond == null ? '' : `, ${summary.tokensPerSecond.toFixed(1)} tokens/s`;
    this.item.tooltip = `${summary.model}${rate} (the relay's TTFT: ${Math.round(summary.serverTtftMs ?? 0)} ms)`;
  }

  dispose() {
    this.item.dispose();
  }
}

/** The editor context of the active editor's selection, for `task`, or undefined (and a message). */
function selectionContext(task, question) {
  const editor = vscode.window.activeTextEditor;
  if (!editor) {
    vscode.window.showWarningMessage('FM Relay: open a file and select code first.');
    return undefined;
  }
  const { document, selection } = editor;
  const settings = vscode.workspace.getConfiguration('fmRelay');
  return {
    editor,
    context: {
      task,
      question,
      selection: document.getText(selection),
      fileText: document.getText(),
      selectionStartLine: selection.start.line,
      selectionEndLine: selection.end.line,
      language: document.languageId,
      path: vscode.workspace.asRelativePath(document.uri),
      model: settings.get('model') || undefined,
      routingHint: settings.get('routeHint') || undefined,
    },
  };
}

function activate(context) {
  const status = new StatusItem();
  const panel = new AnswerPanel(context, status);
  const inline = new InlineSuggestions(() => relayClient(context, { completion: true }), status);

  const ask = async (task) => {
    let question = '';
    if (task === 'ask') {
      question = await vscode.window.showInputBox({
        prompt: 'Ask about the selected code',
        placeHolder: 'What does this do? Why does it fail on an empty list?',
      });
      if (question === undefined) return undefined;
    }
    const target = selectionContext(task, question);
    if (!target) return undefined;
    let request;
    let client;
    try {
      request = core.buildRequest(JSON.stringify(target.context));
      client = await relayClient(context);
    } catch (error) {
      vscode.window.showErrorMessage(`FM Relay: ${error.message}`);
      return undefined;
    }
    const title = task === 'fix' ? 'Fix selection' : question;
    return panel.show(title, target.editor, client, request);
  };

  context.subscriptions.push(
    status,
    panel,
    vscode.commands.registerCommand('fmRelay.askAboutSelection', () => ask('ask')),
    vscode.commands.registerCommand('fmRelay.fixSelection', () => ask('fix')),
    vscode.commands.registerCommand('fmRelay.cancel', () => panel.cancel()),
    vscode.commands.registerCommand('fmRelay.setApiKey', async () => {
      const key = await vscode.window.showInputBox({
        prompt: "The relay's API key (kept in VS Code's secret storage)",
        password: true,
        ignoreFocusOut: true,
      });
      if (key) await context.secrets.store(API_KEY_SECRET, key.trim());
    }),
    vscode.commands.registerCommand('fmRelay.clearApiKey', () => context.secrets.delete(API_KEY_SECRET)),
    vscode.languages.registerInlineCompletionItemProvider({ pattern: '**' }, inline),
  );
  return { panel, inline, status };
}

function deactivate() {}

module.exports = { activate, deactivate };
