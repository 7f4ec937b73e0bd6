// The modules page: uploaded strategies and hooks with their digest, world, host API
// version, size and upload time; upload by choosing or dropping a .wasm file.

import { call } from './api.js';
import { h, fill, when, digest, bytes, badge, clearReport, confirmed, action, field, every } from './dom.js';

export function modulesPage(main, signal) {
  const body = h('tbody');
  const builtins = h('p', { class: 'muted', id: 'builtins' });
  const messages = h('div', { id: 'module-messages', class: 'notice', role: 'alert', hidden: true });
  const refresh = async () => {
    const list = await call('GET', '/v1/modules', { signal });
    fill(builtins, 'Built in: ', list.builtin.map((name, i) => [i ? ', ' : '', h('code', {}, name)]));
    body.replaceChildren(
      ...(list.modules.length ? list.modules.map((m) => row(m, messages, refresh)) : [h('tr', {}, h('td', { colspan: 8, class: 'muted' }, 'No uploaded modules yet.'))]),
    );
  };

  main.append(
    h('h1', {}, 'Modules'),
    uploadForm(messages, refresh),
    messages,
    builtins,
    h(
      'div',
      { class: 'scroll' },
      h(
        'table',
        { id: 'modules', class: 'cards' },
        h('thead', {}, h('tr', {}, ['Name', 'Digest', 'World', 'API version', 'Size', 'Uploaded', 'Compiled', ''].map((t) => h('th', { scope: 'col' }, t)))),
        body,
      ),
    ),
  );
  every(5000, signal, refresh);
}

function row(module, messages, refresh) {
  const pins = module.pinned_by ?? [];
  return h(
    'tr',
    { dataset: { module: module.name } },
    h('th', { scope: 'row', 'data-label': 'Name' }, module.name),
    h('td', { 'data-label': 'Digest' }, digest(module.digest)),
    h('td', { 'data-label': 'World' }, module.world),
    h('td', { 'data-label': 'API version' }, module.api_version ?? 'unknown'),
    h('td', { 'data-label': 'Size' }, bytes(module.size)),
    h('td', { 'data-label': 'Uploaded' }, when(module.uploaded_at)),
    h('td', { 'data-label': 'Compiled', title: module.compile_error ?? null }, badge(module.compile), module.compile_error ? h('span', { class: 'failure' }, ` ${module.compile_error}`) : null),
    h(
      'td',
      { 'data-label': 'Used by' },
      pins.length ? h('span', { class: 'muted' }, `used by ${pins.map((p) => `${p.app} r${p.revision}`).join(', ')} `) : null,
      action('Delete', 'deploy', async () => {
        const reference = `${module.name}@${module.digest}`;
        if (!(await confirmed('Delete module', `Delete ${reference}? Specs naming it can no longer deploy it.`))) return;
        await call('DELETE', `/v1/modules/${encodeURIComponent(reference)}`);
        await refresh();
      }, { messages, kind: 'quiet' }),
    ),
  );
}

function uploadForm(messages, refresh) {
  const file = h('input', { type: 'file', id: 'module-file', accept: '.wasm,application/wasm' });
  const name = h('input', { type: 'text', id: 'module-name', autocomplete: 'off', spellcheck: 'false', placeholder: 'my-strategy' });
  const drop = h('div', { class: 'drop', id: 'module-drop' }, 'Drop a .wasm component here, or choose one below.');
  const chosen = () => file.files?.[0] ?? null;
  const nameFrom = (f) => f.name.replace(/\.wasm$/, '').toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 63);
  file.addEventListener('change', () => {
    if (chosen() && !name.value) name.value = nameFrom(chosen());
  });
  drop.addEventListener('dragover', (event) => {
    event.preventDefault();
    drop.classList.add('over');
  });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (event) => {
    event.preventDefault();
    drop.classList.remove('over');
    const dropped = event.dataTransfer?.files?.[0];
    if (!dropped) return;
    const list = new DataTransfer();
    list.items.add(dropped);
    file.files = list.files;
    if (!name.value) name.value = nameFrom(dropped);
    drop.textContent = `${dropped.name} (${bytes(dropped.size)})`;
  });

  const upload = action('Upload', 'deploy', async () => {
    clearReport(messages);
    const component = chosen();
    if (!component) throw new Error('Choose a .wasm component to upload first.');
    if (!name.value.trim()) throw new Error('Name the module: specs use it as module = "NAME".');
    const uploaded = await call('POST', `/v1/modules?name=${encodeURIComponent(name.value.trim())}`, { body: component });
    messages.classList.remove('error');
    messages.replaceChildren(`Uploaded ${uploaded.name} (${uploaded.world}, ${bytes(uploaded.size)}); specs can use module = "${uploaded.name}".`);
    messages.hidden = false;
    await refresh();
  }, { messages, kind: 'primary' });

  return h(
    'section',
    { class: 'upload', 'aria-labelledby': 'upload-title' },
    h('h2', { id: 'upload-title' }, 'Upload a module'),
    drop,
    h('div', { class: 'row' }, field('Component (.wasm)', file), field('Name', name), upload),
  );
}


