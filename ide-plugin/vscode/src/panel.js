// The answer panel: a webview that shows the streamed answer block by block (media/panel.js
// renders it) and offers, on every complete code block, "Insert" (at the cursor of the file the
// question was about), "Replace selection" (the code that was selected when asking) and "Show
// diff" (the file against the file with the selection replaced, in VS Code's diff editor).
'use strict';

const vscode = require('vscode');
const { startAnswer } = require('./core.js');

const PROPOSAL_SCHEME = 'fm-relay-proposal';
/** Proposed files kept for open diff editors; the oldest goes first. */
const MAX_PROPOSALS = 16;

class AnswerPanel {
  constructor(context, status) {
    this.context = context;
    this.status = status;
    this.panel = null;
    this.answer = null;
    this.target = null;
    this.blocks = [];
    this.proposals = new Map();
    this.proposalCount = 0;
    this.provider = vscode.workspace.registerTextDocumentContentProvider(PROPOSAL_SCHEME, {
      provideTextDocumentContent: (uri) => this.proposals.get(uri.toString()) ?? '',
    });
  }

  /** Streams `request` on `client` into the panel; returns the core's answer. */
  show(title, editor, client, request) {
    this.cancel();
    this.ensurePanel();
    this.target = { uri: editor.document.uri, selection: editor.selection };
    this.blocks = [];
    this.post({ type: 'question', title });
    this.answer = startAnswer(client, request, {
      onStart: (model) => this.post({ type: 'start', model }),
      onDelta: ({ changed }) => {
        // `changed` holds every block from the first one that changed to the last.
        if (changed.length > 0) this.blocks = this.blocks.slice(0, changed[0].index).concat(changed);
        this.post({ type: 'delta', changed });
      },
      onFailover: (failover) => {
        if (failover.discardPartial) this.blocks = [];
        this.post({ type: 'failover', ...failover });
      },
      onDone: (summary) => {
        this.blocks = summary.blocks.map((block, index) => ({ index, ...block }));
        this.status.answered(summary);
        this.post({ type: 'done', summary });
      },
      onError: (error) => this.post({ type: 'error', error: { kind: error.kind, code: error.code, message: error.message } }),
    });
    return this.answer;
  }

  /** Stops the answer being streamed, if any. */
  cancel() {
    this.answer?.cancel();
  }

  ensurePanel() {
    if (this.panel) {
      this.panel.reveal(vscode.ViewColumn.Beside, true);
      return;
    }
    const media = vscode.Uri.joinPath(this.context.extensionUri, 'media');
    this.panel = vscode.window.createWebviewPanel(
      'fmRelay.answer',
      'FM Relay',
      { viewColumn: vscode.ViewColumn.Beside, preserveFocus: true },
      { enableScripts: true, localResourceRoots: [media] },
    );
    const webview = this.panel.webview;
    const nonce = Math.random().toString(36).slice(2) + Date.now().toString(36);
    const script = webview.asWebviewUri(vscode.Uri.joinPath(media, 'panel.js'));
    const style = webview.asWebviewUri(vscode.Uri.joinPath(media, 'panel.css'));
    webview.html = `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src ${webview.cspSource}; script-src 'nonce-${nonce}';">
<link rel="stylesheet" href="${style}"><title>FM Relay</title></head>
<body><header id="question"></header><main id="answer" aria-live="polite"></main><footer id="facts"></footer>
<script nonce="${nonce}" src="${script}"></script></body></html>`;
    webview.onDidReceiveMessage((message) => this.apply(message));
    this.panel.onDidDispose(() => {
      this.cancel();
      this.panel = null;
    });
  }

  post(message) {
    this.panel?.webview.postMessage(message);
  }

  /** A button of the panel: `{type: 'insert' | 'replace' | 'diff', index}`. */
  async apply(message) {
    if (message?.type === 'cancel') return this.cancel();
    const block = this.blocks[message?.index];
    if (!block || block.kind !== 'code' || !block.complete || !this.target) {
      vscode.window.showWarningMessage('FM Relay: that code block is not complete yet.');
      return false;
    }
    const { uri, selection } = this.target;
    const document = await vscode.workspace.openTextDocument(uri);
    // A selection that stops at the end of a line gets the code without its last newline.
    const selected = document.getText(selection);
    const code = selected.endsWith('\n') ? block.text : block.text.replace(/\n$/, '');
    switch (message.type) {
      case 'insert': {
        const editor = vscode.window.visibleTextEditors.find((e) => e.document.uri.toString() === uri.toString());
        const edit = new vscode.WorkspaceEdit();
        edit.insert(uri, editor ? editor.selection.active : selection.end, block.text);
        return this.applied(message, await vscode.workspace.applyEdit(edit));
      }
      case 'replace': {
        const edit = new vscode.WorkspaceEdit();
        edit.replace(uri, selection, code);
        const ok = await vscode.workspace.applyEdit(edit);
        if (ok) {
          // The replaced code is the selection now.
          const end = document.positionAt(document.offsetAt(selection.start) + code.length);
          this.target.selection = new vscode.Range(selection.start, end);
        }
        return this.applied(message, ok);
      }
      case 'diff': {
        const text = document.getText();
        const proposal =
          text.slice(0, document.offsetAt(selection.start)) + code + text.slice(document.offsetAt(selection.end));
        const proposalUri = vscode.Uri.from({ scheme: PROPOSAL_SCHEME, path: uri.path, query: String(++this.proposalCount) });
        this.proposals.set(proposalUri.toString(), proposal);
        while (this.proposals.size > MAX_PROPOSALS) this.proposals.delete(this.proposals.keys().next().value);
        const name = uri.path.split('/').pop();
        await vscode.commands.executeCommand('vscode.diff', uri, proposalUri, `${name} ↔ FM Relay`);
        return this.applied(message, true);
      }
      default:
        return false;
    }
  }

  applied(message, ok) {
    this.post({ type: 'applied', action: message.type, index: message.index, ok });
    return ok;
  }

  dispose() {
    this.cancel();
    this.provider.dispose();
    this.panel?.dispose();
  }
}

module.exports = { AnswerPanel, PROPOSAL_SCHEME };
