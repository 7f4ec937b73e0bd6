// Small helpers for building the page: elements, text formats, confirmation, messages.

import { ApiError, session } from './api.js';

/**
 * An element: `h('a', {href: '#/'}, 'Apps')`. Attributes starting with `on` are listeners;
 * `null`, `undefined` and `false` attributes and children are left out.
 */
export function h(tag, attributes = {}, ...children) {
  const svg = ['svg', 'g', 'path', 'line', 'rect', 'text', 'polyline', 'title'].includes(tag);
  const element = svg ? document.createElementNS('http://www.w3.org/2000/svg', tag) : document.createElement(tag);
  for (const [name, value] of Object.entries(attributes ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on')) element.addEventListener(name.slice(2), value);
    else if (name === 'dataset') Object.assign(element.dataset, value);
    else element.setAttribute(name, value === true ? '' : String(value));
  }
  element.append(...present(children));
  return element;
}

const present = (children) => children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false);

/** Replaces `element`'s children, as `h` takes them (nested arrays, left-out values). */
export function fill(element, ...children) {
  element.replaceChildren(...present(children));
  return element;
}

/** "3 s ago", "5 min ago", "2 h ago", "4 d ago". */
export function age(ms, now = Date.now()) {
  const seconds = Math.max(0, Math.round((now - ms) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

/** A time with its age: the age shown, the exact time on hover. */
export function when(ms) {
  return h('time', { datetime: new Date(ms).toISOString(), title: new Date(ms).toLocaleString() }, age(ms));
}

/** "1.2 s", "350 ms", "2 min 5 s". */
export function duration(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
}

/** `sha256:0123456789ab…`, the whole digest on hover. */
export function digest(value) {
  if (!value) return '—';
  const short = value.replace(/^sha256:/, '').slice(0, 12);
  return h('code', { title: value, class: 'digest' }, short);
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/** A state as a coloured badge (`succeeded`, `rolled-back`, `running`, …). */
export function badge(state) {
  return h('span', { class: `badge state-${state}` }, state);
}

const COLOURS = ['#2563eb', '#16a34a', '#d97706', '#9333ea', '#dc2626', '#0891b2'];

/** The colour a revision is drawn in, the same for a revision everywhere on the page. */
export function colour(revision) {
  return COLOURS[Number(revision) % COLOURS.length];
}

/** A small square in a revision's colour. */
export function swatch(revision) {
  const square = h('span', { class: 'swatch', 'aria-hidden': 'true' });
  square.style.background = colour(revision);
  return square;
}

/** A route weight (0–256) as a share of traffic. */
export function percent(weight, total = 256) {
  return total ? `${Math.round((weight / total) * 100)}%` : '0%';
}

/** Shows the API's refusal (or any error) in the page's message area. */
export function report(error, where = document.getElementById('notice')) {
  const text =
    error instanceof ApiError
      ? `${error.message} (${error.status === 0 ? 'no answer' : `${error.status} ${error.code}`})`
      : String(error?.message ?? error);
  where.replaceChildren(text);
  where.hidden = false;
  where.classList.add('error');
}

export function clearReport(where = document.getElementById('notice')) {
  where.hidden = true;
  where.replaceChildren();
}

/** Asks before something that changes traffic; resolves true when the user confirms. */
export function confirmed(title, text) {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text;
  const ok = document.getElementById('confirm-ok');
  const cancel = document.getElementById('confirm-cancel');
  return new Promise((resolve) => {
    const done = (answer) => {
      ok.removeEventListener('click', yes);
      cancel.removeEventListener('click', no);
      dialog.removeEventListener('cancel', no);
      dialog.close();
      resolve(answer);
    };
    const yes = () => done(true);
    const no = () => done(false);
    ok.addEventListener('click', yes);
    cancel.addEventListener('click', no);
    dialog.addEventListener('cancel', no);
    dialog.showModal();
    cancel.focus();
  });
}

/**
 * A button for an operation that needs `scope`: disabled, saying why, when the signed-in
 * token's scope does not allow it. `run` is awaited with the button busy; its refusal is
 * reported in `messages` (the page's message area by default).
 */
export function action(label, scope, run, { messages, title, kind = '' } = {}) {
  const allowed = session.allows(scope);
  const reason = allowed ? title : `Needs a ${scope} token; this one is ${session.scope}.`;
  const button = h('button', { type: 'button', class: kind, title: reason, disabled: !allowed }, label);
  button.addEventListener('click', async () => {
    button.disabled = true;
    const where = messages ?? document.getElementById('notice');
    clearReport(where);
    try {
      await run();
    } catch (error) {
      if (error?.name !== 'AbortError') report(error, where);
    } finally {
      button.disabled = !session.allows(scope);
    }
  });
  return button;
}

/** A labelled field: `<label>Text <input …></label>`. */
export function field(label, input) {
  return h('label', { class: 'field' }, h('span', {}, label), input);
}

/** Calls `tick` now and every `ms` until `signal` aborts; a failed tick is reported, not fatal. */
export function every(ms, signal, tick) {
  let timer;
  const run = async () => {
    try {
      await tick();
    } catch (error) {
      if (error?.name !== 'AbortError' && !signal.aborted) report(error);
    }
    if (!signal.aborted) timer = setTimeout(run, ms);
  };
  signal.addEventListener('abort', () => clearTimeout(timer));
  run();
}
