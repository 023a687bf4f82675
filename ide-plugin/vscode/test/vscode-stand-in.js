// A small stand-in for the `vscode` module, for the extension's tests under Node's test runner:
// the parts of the API the extension calls, over in-memory documents, with what the extension did
// recorded in `state` (commands, panels and the messages posted to them, edits, status text).
// Documents behave as VS Code's do: offsets, positions, line access and edits applied in place.
'use strict';

class Position {
  constructor(line, character) {
    this.line = line;
    this.character = character;
  }
}

class Range {
  constructor(start, end) {
    this.start = start;
    this.end = end;
  }

  get isEmpty() {
    return this.start.line === this.end.line && this.start.character === this.end.character;
  }
}

class Selection extends Range {
  constructor(anchor, active) {
    const before = anchor.line < active.line || (anchor.line === active.line && anchor.character <= active.character);
    super(before ? anchor : active, before ? active : anchor);
    this.anchor = anchor;
    this.active = active;
  }
}

class Uri {
  constructor(scheme, path, query = '') {
    this.scheme = scheme;
    this.path = path;
    this.query = query;
  }

  static file(path) {
    return new Uri('file', path);
  }

  static from({ scheme, path = '', query = '' }) {
    return new Uri(scheme, path, query);
  }

  static joinPath(base, ...parts) {
    return new Uri(base.scheme, [base.path, ...parts].join('/'));
  }

  get fsPath() {
    return this.path;
  }

  toString() {
    return `${this.scheme}://${this.path}${this.query ? `?${this.query}` : ''}`;
  }
}

class TextDocument {
  constructor(uri, text, languageId) {
    this.uri = uri;
    this.text = text;
    this.languageId = languageId;
  }

  get lineCount() {
    return this.text.split('\n').length;
  }

  offsetAt(position) {
    const lines = this.text.split('\n');
    let offset = 0;
    for (let line = 0; line < position.line && line < lines.length; line += 1) offset += lines[line].length + 1;
    return Math.min(offset + position.character, this.text.length);
  }

  positionAt(offset) {
    const before = this.text.slice(0, Math.max(0, Math.min(offset, this.text.length))).split('\n');
    return new Position(before.length - 1, before.at(-1).length);
  }

  getText(range) {
    if (!range) return this.text;
    return this.text.slice(this.offsetAt(range.start), this.offsetAt(range.end));
  }

  lineAt(line) {
    const text = this.text.split('\n')[line];
    return { text, range: new Range(new Position(line, 0), new Position(line, text.length)) };
  }
}

class WorkspaceEdit {
  constructor() {
    this.edits = [];
  }

  insert(uri, position, text) {
    this.edits.push({ uri, range: new Range(position, position), text });
  }

  replace(uri, range, text) {
    this.edits.push({ uri, range, text });
  }
}

class InlineCompletionItem {
  constructor(insertText, range) {
    this.insertText = insertText;
    this.range = range;
  }
}

class CancellationTokenSource {
  constructor() {
    const listeners = [];
    this.listeners = listeners;
    this.token = {
      isCancellationRequested: false,
      onCancellationRequested(listener) {
        listeners.push(listener);
        return { dispose: () => listeners.splice(listeners.indexOf(listener) >>> 0, 1) };
      },
    };
  }

  cancel() {
    if (this.token.isCancellationRequested) return;
    this.token.isCancellationRequested = true;
    [...this.listeners].forEach((listener) => listener());
  }
}

const disposable = (dispose = () => {}) => ({ dispose });

/** What the extension did, and what the test arranges for it. */
const state = {
  commands: new Map(),
  executed: [],
  documents: new Map(),
  contentProviders: new Map(),
  inlineProviders: [],
  panels: [],
  statusItems: [],
  messages: [],
  /** Answers for `showInputBox`, taken in order. */
  inputs: [],
  config: {},
  activeTextEditor: undefined,
};

/** Opens `text` as a document and makes it the active editor, with `selection` selected. */
function openEditor(path, text, languageId, selection) {
  const document = new TextDocument(Uri.file(path), text, languageId);
  state.documents.set(document.uri.toString(), document);
  const editor = { document, selection: selection ?? new Selection(new Position(0, 0), new Position(0, 0)) };
  state.activeTextEditor = editor;
  return editor;
}

function createWebviewPanel(viewType, title, showOptions, options) {
  const received = [];
  const disposed = [];
  const panel = {
    viewType,
    title,
    options,
    posted: [],
    webview: {
      html: '',
      cspSource: 'vscode-resource:',
      asWebviewUri: (uri) => uri,
      postMessage(message) {
        panel.posted.push({ message: structuredClone(message), at: performance.now() });
        return Promise.resolve(true);
      },
      onDidReceiveMessage(listener) {
        received.push(listener);
        return disposable();
      },
    },
    reveal() {},
    onDidDispose(listener) {
      disposed.push(listener);
      return disposable();
    },
    dispose() {
      disposed.forEach((listener) => listener());
    },
    /** What the page's script does when a button is clicked. */
    click: (message) => Promise.all(received.map((listener) => listener(message))),
  };
  state.panels.push(panel);
  return panel;
}

const vscode = {
  Position,
  Range,
  Selection,
  Uri,
  WorkspaceEdit,
  InlineCompletionItem,
  CancellationTokenSource,
  ViewColumn: { Active: -1, Beside: -2, One: 1 },
  StatusBarAlignment: { Left: 1, Right: 2 },
  window: {
    get activeTextEditor() {
      return state.activeTextEditor;
    },
    get visibleTextEditors() {
      return state.activeTextEditor ? [state.activeTextEditor] : [];
    },
    createWebviewPanel,
    createStatusBarItem() {
      const item = { text: '', tooltip: '', show() {}, dispose() {} };
      state.statusItems.push(item);
      return item;
    },
    async showInputBox() {
      return state.inputs.shift();
    },
    showWarningMessage: (message) => state.messages.push({ level: 'warning', message }),
    showErrorMessage: (message) => state.messages.push({ level: 'error', message }),
  },
  workspace: {
    getConfiguration(section) {
      return { get: (key) => state.config[`${section}.${key}`] };
    },
    asRelativePath: (uri) => uri.path.replace(/^\/workspace\//, ''),
    async openTextDocument(uri) {
      const document = state.documents.get(uri.toString());
      if (!document) throw new Error(`no document ${uri}`);
      return document;
    },
    async applyEdit(edit) {
      // From the end of each document backwards, so earlier offsets stay valid.
      const placed = edit.edits.map((change) => {
        const document = state.documents.get(change.uri.toString());
        return { document, from: document.offsetAt(change.range.start), to: document.offsetAt(change.range.end), text: change.text };
      });
      placed.sort((a, b) => b.from - a.from);
      for (const { document, from, to, text } of placed) {
        document.text = document.text.slice(0, from) + text + document.text.slice(to);
      }
      return true;
    },
    registerTextDocumentContentProvider(scheme, provider) {
      state.contentProviders.set(scheme, provider);
      return disposable(() => state.contentProviders.delete(scheme));
    },
  },
  commands: {
    registerCommand(id, handler) {
      state.commands.set(id, handler);
      return disposable(() => state.commands.delete(id));
    },
    async executeCommand(id, ...args) {
      const handler = state.commands.get(id);
      if (handler) return handler(...args);
      state.executed.push({ id, args });
      return undefined;
    },
  },
  languages: {
    registerInlineCompletionItemProvider(selector, provider) {
      state.inlineProviders.push({ selector, provider });
      return disposable();
    },
  },
};

/** An extension context: secret storage in memory, the extension's folder, subscriptions. */
function extensionContext(extensionPath) {
  const secrets = new Map();
  return {
    extensionUri: Uri.file(extensionPath),
    subscriptions: [],
    secrets: {
      get: async (key) => secrets.get(key),
      store: async (key, value) => void secrets.set(key, value),
      delete: async (key) => void secrets.delete(key),
    },
  };
}

module.exports = { ...vscode, standIn: { state, openEditor, extensionContext } };
