// The answer panel's page: renders the blocks the extension posts as they stream (prose as
// text, code in <pre> with its language), puts Insert / Replace selection / Show diff on a code
// block once it is complete, and shows the answer's figures or its error at the end.
(function () {
  const vscode = acquireVsCodeApi();
  const question = document.getElementById('question');
  const answer = document.getElementById('answer');
  const facts = document.getElementById('facts');

  function button(label, type, index) {
    const element = document.createElement('button');
    element.textContent = label;
    element.addEventListener('click', () => vscode.postMessage({ type, index }));
    return element;
  }

  function render(block) {
    let element = answer.children[block.index];
    if (!element) {
      element = document.createElement('section');
      answer.appendChild(element);
    }
    element.className = `block ${block.kind}${block.complete ? ' complete' : ''}`;
    element.replaceChildren();
    if (block.kind === 'code') {
      const label = document.createElement('div');
      label.className = 'language';
      label.textContent = block.language || 'code';
      const pre = document.createElement('pre');
      const code = document.createElement('code');
      code.textContent = block.text;
      pre.appendChild(code);
      element.append(label, pre);
      if (block.complete) {
        const actions = document.createElement('div');
        actions.className = 'actions';
        actions.append(
          button('Insert', 'insert', block.index),
          button('Replace selection', 'replace', block.index),
          button('Show diff', 'diff', block.index),
        );
        element.appendChild(actions);
      }
    } else {
      element.textContent = block.text;
    }
  }

  function clear() {
    answer.replaceChildren();
    facts.textContent = '';
  }

  window.addEventListener('message', ({ data }) => {
    switch (data.type) {
      case 'question':
        question.textContent = data.title;
        clear();
        facts.append(button('Stop', 'cancel'));
        break;
      case 'start':
        answer.dataset.model = data.model;
        break;
      case 'delta':
        data.changed.forEach(render);
        // `changed` runs to the answer's last block: anything past it is gone.
        while (answer.children.length > (data.changed.at(-1)?.index ?? -1) + 1) answer.lastChild.remove();
        break;
      case 'failover':
        if (data.discardPartial) clear();
        facts.textContent = `${data.model} took over: ${data.reason}`;
        break;
      case 'done': {
        const s = data.summary;
        s.blocks.forEach((block, index) => render({ index, ...block }));
        const ttft = s.ttftMs == null ? '' : `TTFT ${Math.round(s.ttftMs)} ms · `;
        const rate = s.tokensPerSecond == null ? '' : `${s.tokensPerSecond.toFixed(1)} tokens/s · `;
        facts.textContent = `${ttft}${rate}${s.model}${s.degraded ? ' (degraded)' : ''}`;
        break;
      }
      case 'error':
        facts.textContent = data.error.kind === 'cancelled' ? 'Stopped.' : `Error: ${data.error.message}`;
        facts.className = data.error.kind === 'cancelled' ? '' : 'error';
        break;
      case 'applied':
        if (!data.ok) facts.textContent = `The ${data.action} could not be applied.`;
        break;
    }
  });
})();
