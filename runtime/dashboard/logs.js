// An app's output: its instances' stdout and stderr, one revision or instance at a time if
// asked, followed live.

import { call, followLogs } from './api.js';
import { h, report, field } from './dom.js';

/** Most characters kept on the page while following; the oldest go first. */
const KEEP = 400_000;

export function logsPage(main, signal, name) {
  const app = encodeURIComponent(name);
  const revision = h('input', { type: 'number', id: 'logs-revision', min: 1, inputmode: 'numeric', placeholder: 'all' });
  const instance = h('input', { type: 'text', id: 'logs-instance', autocomplete: 'off', spellcheck: 'false', placeholder: 'all' });
  const tail = h('input', { type: 'number', id: 'logs-tail', min: 1, max: 10000, value: 200, inputmode: 'numeric' });
  const follow = h('input', { type: 'checkbox', id: 'logs-follow', checked: true });
  const messages = h('div', { class: 'notice', role: 'alert', hidden: true });
  const output = h('pre', { id: 'logs', class: 'logs', tabindex: 0, 'aria-label': `Output of ${name}` });
  const form = h(
    'form',
    { class: 'row', 'aria-label': 'Which output' },
    field('Revision', revision),
    field('Instance', instance),
    field('Last lines', tail),
    h('label', { class: 'check' }, follow, ' Follow'),
    h('button', { type: 'submit' }, 'Show'),
  );
  main.append(
    h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumbs' }, h('a', { href: '#/' }, 'Apps'), ' / ', h('a', { href: `#/apps/${app}` }, name), ' / logs'),
    h('h1', {}, `Logs of ${name}`),
    form,
    messages,
    output,
  );

  let reading = null;
  const show = async () => {
    reading?.abort();
    reading = new AbortController();
    signal.addEventListener('abort', () => reading.abort());
    messages.hidden = true;
    output.textContent = '';
    const query = { tail: tail.value || '200' };
    if (revision.value) query.revision = revision.value;
    if (instance.value.trim()) query.instance = instance.value.trim();
    const append = (text) => {
      const atBottom = output.scrollTop + output.clientHeight >= output.scrollHeight - 4;
      output.textContent = (output.textContent + text).slice(-KEEP);
      if (atBottom) output.scrollTop = output.scrollHeight;
    };
    try {
      if (follow.checked) {
        await followLogs(name, query, append, { signal: reading.signal });
      } else {
        append(await call('GET', `/v1/apps/${app}/logs?${new URLSearchParams({ ...query, follow: 'false' })}`, { accept: 'text/plain', signal: reading.signal }));
      }
      if (!output.textContent) output.textContent = 'No output yet.';
    } catch (error) {
      if (error.name !== 'AbortError') report(error, messages);
    }
  };
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    show();
  });
  show();
}
