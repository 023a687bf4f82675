// The fm-ide WASM core (built by ide-plugin/build.sh into dist/core) and the one thing the
// extension adds to it: an answer as an async iterator as well as callbacks.
'use strict';

const core = require('../dist/core/fm_ide.js');

/**
 * Starts `request` (JSON from `core.buildRequest`) on `client` (a `core.RelayClient`).
 * Returns the core's `Answer` (`cancel()`, `finished`, `text`) that can also be iterated:
 * `for await (const update of answer)` yields `{type: 'start' | 'delta' | 'failover' | 'done'}`
 * updates in order and throws the answer's error (`kind`: relay, network, protocol, cancelled…).
 * `callbacks` (optional) are called as well, before the update is queued.
 */
function startAnswer(client, request, callbacks = {}) {
  // Updates not yet taken by the iterator; an answer is bounded by its max_tokens, and the
  // iterator drains it as fast as the relay sends.
  const queued = [];
  let waiting = null;
  let end = null;
  const push = (item) => {
    if (waiting) {
      const resolve = waiting;
      waiting = null;
      resolve(item);
    } else {
      queued.push(item);
    }
  };
  const relay = (name, type) => (value) => {
    callbacks[name]?.(value);
    if (type === 'start') push({ value: { type, model: value } });
    else if (type === 'done') push({ value: { type, summary: value } });
    else push({ value });
  };
  const answer = client.start(request, {
    onStart: relay('onStart', 'start'),
    onDelta: relay('onDelta', 'delta'),
    onFailover: relay('onFailover', 'failover'),
    onDone: relay('onDone', 'done'),
    onError: (error) => {
      callbacks.onError?.(error);
      push({ error });
    },
  });
  answer[Symbol.asyncIterator] = () => ({
    async next() {
      if (end) return end;
      const item = queued.length > 0 ? queued.shift() : await new Promise((resolve) => (waiting = resolve));
      if (item.error) {
        end = { done: true, value: undefined };
        throw item.error;
      }
      if (item.value.type === 'done') {
        end = { done: true, value: undefined };
      }
      return { done: false, value: item.value };
    },
    async return() {
      if (!end) answer.cancel();
      end = { done: true, value: undefined };
      return end;
    },
  });
  return answer;
}

module.exports = { core, startAnswer };
