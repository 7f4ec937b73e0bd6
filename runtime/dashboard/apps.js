// The apps page: every app with its active revision, ready and desired instances, route
// weights, maintenance and running rollout, refreshed every two seconds.

import { call } from './api.js';
import { h, badge, percent, every, swatch } from './dom.js';

export function appsPage(main, signal) {
  const body = h('tbody');
  const empty = h('p', { class: 'muted', hidden: true }, 'No apps yet. Deploy one with ', h('code', {}, 'slipway deploy slipway.toml'), ' or PUT /v1/apps/NAME.');
  main.append(
    h('h1', {}, 'Apps'),
    empty,
    h(
      'div',
      { class: 'scroll' },
      h(
        'table',
        { class: 'cards', id: 'apps' },
        h('caption', { class: 'visually-hidden' }, 'Apps on this runner'),
        h('thead', {}, h('tr', {}, ['App', 'Active revision', 'Ready / desired', 'Route weights', 'Maintenance', 'Rollout'].map((t) => h('th', { scope: 'col' }, t)))),
        body,
      ),
    ),
  );
  every(2000, signal, async () => {
    const { apps } = await call('GET', '/v1/apps', { signal });
    empty.hidden = apps.length > 0;
    body.replaceChildren(...apps.map(row));
  });
}

function row(app) {
  const revisions = Object.entries(app.instances?.revisions ?? {});
  const ready = revisions.reduce((n, [, r]) => n + r.ready, 0);
  const desired = revisions.reduce((n, [, r]) => n + r.desired, 0);
  const total = revisions.reduce((n, [, r]) => n + r.weight, 0);
  const weights = revisions.filter(([, r]) => r.weight > 0);
  return h(
    'tr',
    { dataset: { app: app.name } },
    h('th', { scope: 'row', 'data-label': 'App' }, h('a', { href: `#/apps/${encodeURIComponent(app.name)}` }, app.name), app.notice ? h('p', { class: 'warning' }, app.notice) : null),
    h('td', { 'data-label': 'Active revision' }, app.active_revision ?? '—'),
    h(
      'td',
      { 'data-label': 'Ready / desired', class: ready < desired ? 'short' : null },
      app.instances ? `${ready} / ${desired}` : 'in the cluster',
      revisions.length > 1 ? h('span', { class: 'muted' }, ` (${revisions.map(([n, r]) => `r${n}: ${r.ready}/${r.desired}`).join(', ')})`) : null,
    ),
    h(
      'td',
      { 'data-label': 'Route weights' },
      weights.length === 0
        ? '—'
        : weights.map(([n, r]) => h('span', { class: 'weight' }, swatch(n), `r${n} ${percent(r.weight, total)}`)),
    ),
    h('td', { 'data-label': 'Maintenance' }, app.maintenance ? badge('maintenance') : 'off'),
    h(
      'td',
      { 'data-label': 'Rollout' },
      app.running_rollout
        ? [badge(app.rollout_paused ? 'paused' : 'running'), ' ', h('a', { href: `#/apps/${encodeURIComponent(app.name)}` }, app.running_rollout)]
        : 'none running',
    ),
  );
}

