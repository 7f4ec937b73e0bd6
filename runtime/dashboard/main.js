// The dashboard's entry: sign-in, and one page at a time by the address's #fragment
// (#/ apps, #/apps/NAME an app, #/apps/NAME/logs its output, #/modules modules).

import { ApiError, session, signIn } from './api.js';
import { h, field, report, clearReport } from './dom.js';
import { appsPage } from './apps.js';
import { appPage } from './app.js';
import { modulesPage } from './modules.js';
import { logsPage } from './logs.js';

const main = document.getElementById('main');
let leaving = new AbortController();

function route() {
  const path = decodeURIComponent(location.hash.replace(/^#/, '') || '/');
  const parts = path.split('/').filter(Boolean);
  if (parts.length === 0) return { page: 'apps', show: appsPage };
  if (parts[0] === 'modules' && parts.length === 1) return { page: 'modules', show: modulesPage };
  if (parts[0] === 'apps' && parts.length === 2) return { page: 'apps', show: (m, s) => appPage(m, s, parts[1]) };
  if (parts[0] === 'apps' && parts.length === 3 && parts[2] === 'logs') {
    return { page: 'apps', show: (m, s) => logsPage(m, s, parts[1]) };
  }
  return { page: null, show: (m) => m.replaceChildren(h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '#/' }, 'Back to the apps'))) };
}

function render() {
  leaving.abort();
  leaving = new AbortController();
  clearReport();
  const signedIn = Boolean(session.token);
  document.getElementById('nav').hidden = !signedIn;
  document.getElementById('who').hidden = !signedIn;
  if (!signedIn) {
    signInPage();
    return;
  }
  const scope = document.getElementById('scope');
  scope.textContent = `${session.scope} token`;
  scope.title = session.allows('deploy') ? 'This token may deploy and change apps' : 'This token may only read';
  const { page, show } = route();
  for (const link of document.querySelectorAll('#nav a')) {
    if (link.dataset.page === page) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  main.replaceChildren();
  show(main, leaving.signal);
}

function signInPage() {
  const input = h('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'off', required: true, spellcheck: 'false' });
  const messages = h('p', { class: 'notice', role: 'alert', hidden: true });
  const form = h(
    'form',
    { class: 'sign-in', 'aria-labelledby': 'sign-in-title' },
    h('h1', { id: 'sign-in-title' }, 'Sign in'),
    h('p', {}, 'Paste an API token. ', h('code', {}, 'slipway serve'), ' writes an admin token to ', h('code', {}, 'DATA/admin.token'), '; a read token shows everything and changes nothing. The token is kept only for this browser session.'),
    field('API token', input),
    messages,
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearReport(messages);
    try {
      await signIn(input.value.trim());
      render();
    } catch (error) {
      report(error instanceof ApiError && error.status === 401 ? new Error('The runner does not know that token.') : error, messages);
    }
  });
  main.replaceChildren(form);
  input.focus();
}

document.getElementById('sign-out').addEventListener('click', () => {
  session.forget();
  render();
});
window.addEventListener('slipway:signed-out', (event) => {
  render();
  report(new Error(`Signed out: ${event.detail}`));
});
window.addEventListener('hashchange', render);
render();
