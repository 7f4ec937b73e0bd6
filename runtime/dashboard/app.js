// An app's page: its instances and traffic now, the actions an operator takes on it, the
// live timeline of its rollout (server-sent events, with a progress bar and a picture of
// weights, ready instances, requests and errors), and its revision history, a page at a time.

import { call, followRollout, session } from './api.js';
import { h, fill, age, when, duration, digest, badge, percent, swatch, report, confirmed, action, field, every } from './dom.js';
import { rolloutChart } from './chart.js';
import { RolloutTraffic, EVERY_S, nowSeconds } from './traffic.js';

/** Revisions per page of history: a 10,000-revision history is read a page at a time. */
const PAGE = 20;
/** Timeline lines kept in the page; the picture uses every event. */
const SHOWN_EVENTS = 400;

export function appPage(main, signal, name) {
  const app = encodeURIComponent(name);
  const view = {
    name,
    app,
    signal,
    status: null,
    rollout: null, // the rollout shown: {id, controller}
    following: false,
    before: null, // the history page shown: revisions below this number (null: the newest)
    pages: [], // the `before` of the pages newer than this one, to go back
  };

  const messages = h('div', { id: 'app-messages', class: 'notice', role: 'alert', hidden: true });
  view.messages = messages;
  view.summary = h('p', { id: 'app-summary', class: 'summary' });
  view.instances = h('tbody');
  view.traffic = h('tbody');
  view.actions = h('div', { class: 'actions-grid' });
  view.rolloutBox = h('div', { id: 'rollout' });
  view.historyBody = h('tbody');
  view.historyNav = h('div', { class: 'pager' });
  view.events = h('ul', { class: 'app-events' });

  main.append(
    h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumbs' }, h('a', { href: '#/' }, 'Apps'), ' / ', name),
    h('div', { class: 'title' }, h('h1', {}, name), h('a', { href: `#/apps/${app}/logs`, class: 'button quiet' }, 'Logs')),
    view.summary,
    messages,
    h(
      'section',
      { 'aria-labelledby': 'now-title' },
      h('h2', { id: 'now-title' }, 'Instances and traffic'),
      h(
        'div',
        { class: 'scroll' },
        h(
          'table',
          { id: 'instances', class: 'cards' },
          h('thead', {}, h('tr', {}, ['Revision', 'Ready / desired', 'Running', 'Weight', 'Requests (60 s)', '5xx', 'No answer', 'p50 / p99'].map((t) => h('th', { scope: 'col' }, t)))),
          view.instances,
        ),
      ),
    ),
    h('section', { 'aria-labelledby': 'actions-title' }, h('h2', { id: 'actions-title' }, 'Actions'), view.actions),
    h('section', { 'aria-labelledby': 'rollout-title' }, h('h2', { id: 'rollout-title' }, 'Rollout'), view.rolloutBox),
    h(
      'section',
      { 'aria-labelledby': 'history-title' },
      h('h2', { id: 'history-title' }, 'History'),
      view.events,
      h(
        'div',
        { class: 'scroll' },
        h(
          'table',
          { id: 'history', class: 'cards' },
          h('thead', {}, h('tr', {}, ['Revision', 'State', 'Strategy', 'Outcome', 'Created'].map((t) => h('th', { scope: 'col' }, t)))),
          view.historyBody,
        ),
      ),
      view.historyNav,
    ),
  );

  let traffic = 0;
  every(2000, signal, async () => {
    const status = await call('GET', `/v1/apps/${app}`, { signal });
    const changed = JSON.stringify(status.instances) !== JSON.stringify(view.status?.instances) || status.running_rollout !== view.status?.running_rollout;
    const first = view.status === null;
    view.status = status;
    showSummary(view);
    showInstances(view);
    if (first || status.running_rollout !== view.lastRunning || status.rollout_paused !== view.lastPaused) showActions(view);
    view.lastPaused = status.rollout_paused;
    // A rollout that started since the last look takes the rollout panel (one the user
    // chose from the history stays until then).
    const started = status.running_rollout && status.running_rollout !== view.lastRunning;
    if (started && status.running_rollout !== view.rollout?.id) showRollout(view, status.running_rollout);
    if (first || status.running_rollout !== view.lastRunning) {
      view.lastRunning = status.running_rollout;
      await showHistory(view);
      if (first && !status.running_rollout && view.latestRollout) showRollout(view, view.latestRollout);
    }
    if (changed || traffic++ % 3 === 0) await showTraffic(view);
  });
}

function showSummary(view) {
  const s = view.status;
  fill(
    view.summary,
    'Active revision ',
    h('strong', { id: 'active-revision' }, s.active_revision ?? 'none'),
    s.instances?.listen ? [' · answers on ', h('code', {}, s.instances.listen)] : null,
    ' · maintenance ',
    h('strong', { id: 'maintenance' }, s.maintenance ? 'on' : 'off'),
    s.notice ? h('span', { class: 'warning' }, ` · ${s.notice}`) : null,
  );
}

/** The revisions with instances or weight now, oldest first. */
function revisionsNow(view) {
  return Object.entries(view.status?.instances?.revisions ?? {})
    .filter(([, r]) => r.desired || r.current || r.ready || r.weight)
    .sort(([a], [b]) => a - b);
}

function showInstances(view) {
  const revisions = revisionsNow(view);
  const total = revisions.reduce((n, [, r]) => n + r.weight, 0);
  const rows = revisions.map(([n, r]) =>
    h(
      'tr',
      { dataset: { revision: n } },
      h('th', { scope: 'row', 'data-label': 'Revision' }, swatch(n), ` ${n}`),
      h('td', { 'data-label': 'Ready / desired', class: r.ready < r.desired ? 'short' : null }, `${r.ready} / ${r.desired}`),
      h('td', { 'data-label': 'Running' }, r.current),
      h('td', { 'data-label': 'Weight' }, `${r.weight} (${percent(r.weight, total)})`),
      h('td', { 'data-label': 'Requests (60 s)', class: 'traffic-requests' }, '…'),
      h('td', { 'data-label': '5xx', class: 'traffic-5xx' }, '…'),
      h('td', { 'data-label': 'No answer', class: 'traffic-errors' }, '…'),
      h('td', { 'data-label': 'p50 / p99', class: 'traffic-latency' }, '…'),
    ),
  );
  if (rows.length === 0) {
    rows.push(h('tr', {}, h('td', { colspan: 8, class: 'muted' }, view.status?.instances ? 'No instances.' : 'Its cluster runs its instances.')));
  }
  const previous = new Map([...view.instances.querySelectorAll('tr[data-revision]')].map((row) => [row.dataset.revision, row]));
  view.instances.replaceChildren(...rows);
  // Keep the last traffic figures until the next reading.
  for (const row of rows) {
    const old = previous.get(row.dataset?.revision);
    if (!old) continue;
    for (const cell of ['traffic-requests', 'traffic-5xx', 'traffic-errors', 'traffic-latency']) {
      row.querySelector(`.${cell}`).textContent = old.querySelector(`.${cell}`).textContent;
    }
  }
}

async function showTraffic(view) {
  for (const [n] of revisionsNow(view)) {
    let cells;
    try {
      const { stats } = await call('GET', `/v1/apps/${view.app}/traffic?revision=${n}&window=60s`, { signal: view.signal });
      const ms = (us) => (us === null || us === undefined ? '—' : `${(us / 1000).toFixed(1)} ms`);
      cells = [String(stats.requests), String(stats.by_class[4]), String(stats.connection_errors), `${ms(stats.p50_us)} / ${ms(stats.p99_us)}`];
    } catch (error) {
      if (error.name === 'AbortError') throw error;
      cells = ['—', '—', '—', error.status === 409 ? 'not measured here' : '—'];
    }
    const row = view.instances.querySelector(`tr[data-revision="${n}"]`);
    if (!row) continue;
    ['traffic-requests', 'traffic-5xx', 'traffic-errors', 'traffic-latency'].forEach((cell, i) => {
      row.querySelector(`.${cell}`).textContent = cells[i];
    });
  }
}

/** Runs an operation the user confirmed, and says what it started. */
async function operate(view, title, text, run) {
  if (text && !(await confirmed(title, text))) return;
  const answer = await run();
  const said =
    answer?.result === 'started'
      ? `${title}: rollout ${answer.rollout} of revision ${answer.revision} started.${answer.note ? ` ${answer.note}` : ''}`
      : answer?.result === 'unchanged'
        ? `${title}: nothing to do; revision ${answer.revision} is already the latest.`
        : `${title}: done.`;
  view.messages.classList.remove('error');
  view.messages.replaceChildren(said);
  view.messages.hidden = false;
  if (answer?.result === 'started') showRollout(view, answer.rollout);
}

function showActions(view) {
  const { app, name, status } = view;
  const post = (path, body) => call('POST', `/v1/apps/${app}/${path}`, { body });
  const put = (path, body) => call('PUT', `/v1/apps/${app}/${path}`, { body });
  const opts = { messages: view.messages };
  const running = status.running_rollout;
  const numberInput = (id, value, min, max) => h('input', { type: 'number', id, min, max, value, inputmode: 'numeric', required: true });

  const rollbackTo = numberInput('rollback-to', '', 1);
  rollbackTo.placeholder = 'previous';
  const redeployRevision = numberInput('redeploy-revision', status.active_revision ?? 1, 1);
  const replicas = numberInput('scale-replicas', Math.max(0, ...revisionsNow(view).map(([, r]) => r.desired)), 0);
  const weightInputs = revisionsNow(view)
    .filter(([, r]) => r.current > 0 || r.weight > 0)
    .map(([n, r]) => [n, numberInput(`weight-${n}`, r.weight, 0, 256)]);

  const groups = [
    h(
      'div',
      { class: 'group' },
      h('h3', {}, 'Roll back'),
      field('To revision (empty: the one before)', rollbackTo),
      action('Roll back', 'deploy', () =>
        operate(view, 'Roll back', `Roll ${name} back to ${rollbackTo.value ? `revision ${rollbackTo.value}` : 'the revision before'}? Traffic moves to it as its strategy goes.`, () =>
          post('rollback', rollbackTo.value ? { to: Number(rollbackTo.value) } : {}),
        ), opts),
    ),
    h(
      'div',
      { class: 'group' },
      h('h3', {}, 'Redeploy'),
      field('Revision', redeployRevision),
      action('Redeploy', 'deploy', () =>
        operate(view, 'Redeploy', `Deploy revision ${redeployRevision.value} of ${name} again, as a new rollout?`, () => post('redeploy', { revision: Number(redeployRevision.value) })),
        opts),
    ),
    h(
      'div',
      { class: 'group' },
      h('h3', {}, 'Retry'),
      h('p', { class: 'muted' }, 'Runs the latest revision\u2019s rollout again after it failed.'),
      action('Retry', 'deploy', () => operate(view, 'Retry', `Retry the latest rollout of ${name}?`, () => post('retry')), opts),
    ),
    h(
      'div',
      { class: 'group' },
      h('h3', {}, 'Scale'),
      field('Replicas', replicas),
      action('Scale', 'deploy', () =>
        operate(view, 'Scale', `Scale ${name}'s running revision to ${replicas.value} replicas?`, () => put('scale', { replicas: Number(replicas.value) })),
        opts),
    ),
    h(
      'div',
      { class: 'group' },
      h('h3', {}, 'Route weights'),
      weightInputs.length ? weightInputs.map(([n, input]) => field(`Revision ${n} (0–256)`, input)) : h('p', { class: 'muted' }, 'No revision has instances.'),
      action('Set weights', 'deploy', () => {
        const weights = Object.fromEntries(weightInputs.map(([n, input]) => [n, Number(input.value)]));
        const said = Object.entries(weights).map(([n, w]) => `revision ${n}: ${w}`).join(', ');
        return operate(view, 'Set weights', `Route ${name}'s traffic as ${said}?`, () => put('route', { weights }));
      }, opts),
    ),
    h(
      'div',
      { class: 'group' },
      h('h3', {}, 'Maintenance'),
      h('p', { class: 'muted' }, status.maintenance ? 'Its route answers with the maintenance page.' : 'Its route serves the app.'),
      action(status.maintenance ? 'Turn maintenance off' : 'Turn maintenance on', 'deploy', () => {
        const on = !view.status.maintenance;
        return operate(view, on ? 'Maintenance on' : 'Maintenance off', on ? `Answer every request to ${name} with the maintenance page?` : `Serve ${name} again?`, () => put('maintenance', { on }));
      }, opts),
    ),
  ];
  const note = session.allows('deploy')
    ? null
    : h('p', { class: 'read-only', id: 'read-only' }, `This is a ${session.scope} token: it shows everything and changes nothing. The actions need a deploy token.`);
  view.actions.replaceChildren(...[note, running ? h('p', { class: 'muted' }, `Rollout ${running} is running: most actions wait for it to finish (or pause or abort it below).`) : null, ...groups].filter(Boolean));
  if (view.rollout) showSteering(view);
}

/** Pause, Resume and Abort, for the rollout shown while it runs. */
function showSteering(view) {
  const box = view.rolloutBox.querySelector('.steer');
  if (!box) return;
  const id = view.rollout.id;
  const runningNow = view.status?.running_rollout === id && !view.rollout.ended;
  if (!runningNow) {
    box.replaceChildren();
    return;
  }
  const steer = (what) => call('POST', `/v1/rollouts/${encodeURIComponent(id)}/${what}`);
  const said = (text) => {
    view.messages.classList.remove('error');
    view.messages.replaceChildren(text);
    view.messages.hidden = false;
  };
  const opts = { messages: view.messages };
  box.replaceChildren(
    view.status.rollout_paused
      ? action('Resume', 'deploy', async () => {
          await steer('resume');
          said(`Rollout ${id} resumed.`);
          view.status.rollout_paused = false;
          showSteering(view);
        }, opts)
      : action('Pause', 'deploy', async () => {
          await steer('pause');
          said(`Rollout ${id} paused: it stops at its next step until resumed.`);
          view.status.rollout_paused = true;
          showSteering(view);
        }, opts),
    action('Abort', 'deploy', async () => {
      if (!(await confirmed('Abort', `Abort rollout ${id}? The app goes back to the revision it ran before.`))) return;
      await steer('abort');
      said(`Rollout ${id} is being aborted.`);
    }, { ...opts, kind: 'danger' }),
  );
}

/** Shows rollout `id`: its record, progress, picture and timeline, live while it runs. */
function showRollout(view, id) {
  view.rollout?.controller.abort();
  const controller = new AbortController();
  view.signal.addEventListener('abort', () => controller.abort());
  const shown = { id, controller, ended: false };
  view.rollout = shown;

  const state = h('span', { id: 'rollout-state' }, badge('running'));
  const kind = h('span', { id: 'rollout-kind', class: 'muted' });
  const heading = h('p', { class: 'rollout-head' }, h('code', { id: 'rollout-id' }, id), ' ', state, ' ', kind);
  const bar = h('progress', { id: 'rollout-progress', max: 100, value: 0, 'aria-label': 'Rollout progress' });
  const progressText = h('span', { id: 'rollout-progress-text', class: 'muted' }, 'starting');
  const picture = h('div', { class: 'picture' });
  const lines = h('ol', { id: 'timeline', class: 'timeline', 'aria-live': 'polite' });
  const dropped = h('p', { class: 'muted', hidden: true });
  const summary = h('p', { id: 'rollout-summary' });
  view.rolloutBox.replaceChildren(heading, h('div', { class: 'steer' }), h('div', { class: 'progress' }, bar, ' ', progressText), summary, picture, h('h3', {}, 'Timeline'), dropped, lines);
  showSteering(view);

  const points = [];
  // When the rollout began, on the runner's clock (from its record). A running rollout's time
  // axis and its traffic readings take the browser's clock to agree with the runner's.
  let started = Date.now();
  let lastAt = 0;
  let drawn = 0;
  let traffic = null; // RolloutTraffic, once the rollout's record says its revisions
  const draw = () => {
    drawn = Date.now();
    const end = shown.ended ? lastAt : Math.max(lastAt, Date.now() - started);
    const rates = new Map(
      [...(traffic?.byRevision ?? [])].map(([revision, intervals]) => [
        revision,
        intervals.map((i) => ({ from_ms: i.from_s * 1000 - started, to_ms: i.to_s * 1000 - started, requests: i.requests, errors: i.errors })),
      ]),
    );
    const note = traffic?.note ? h('p', { class: 'muted', id: 'traffic-note' }, traffic.note) : null;
    fill(picture, points.length || traffic?.any ? rolloutChart(thin(points), end, rates) : h('p', { class: 'muted' }, 'No instance changes yet.'), note);
  };
  const finish = (record) => {
    shown.ended = true;
    state.replaceChildren(badge(record.state));
    if (record.summary) summary.replaceChildren(record.summary);
    if (record.failure) summary.append(h('span', { class: 'failure' }, ` ${record.failure.module}: ${record.failure.kind}: ${record.failure.message}`));
    if (record.state === 'succeeded') bar.value = 100;
    if (progressText.textContent === 'starting') progressText.textContent = 'no progress reported';
    draw();
    showSteering(view);
  };
  const onEvent = (event) => {
    lastAt = event.at_ms;
    if (event.state) points.push({ at_ms: event.at_ms, state: event.state });
    if (event.event === 'progress') {
      bar.value = event.percent;
      progressText.textContent = `${event.percent}% · ${event.message}`;
    }
    if (event.event === 'rollout-finished') {
      state.replaceChildren(badge(event.outcome));
      summary.replaceChildren(event.summary ?? '');
    }
    const atEnd = lines.scrollTop + lines.clientHeight >= lines.scrollHeight - 4;
    lines.append(h('li', { dataset: { event: event.event } }, h('span', { class: 'at' }, duration(event.at_ms)), ' ', describe(event)));
    // Following the newest line, unless the reader scrolled up to an older one.
    if (atEnd) lines.scrollTop = lines.scrollHeight;
    if (lines.childElementCount > SHOWN_EVENTS) {
      lines.firstElementChild.remove();
      dropped.hidden = false;
      dropped.textContent = 'Earlier events are left out here; the picture shows them all.';
    }
    if (Date.now() - drawn > 250) draw();
  };

  (async () => {
    try {
      const record = await call('GET', `/v1/rollouts/${encodeURIComponent(id)}`, { signal: controller.signal });
      started = record.started_at;
      // Another rollout may have taken the panel while this one's record was on its way.
      if (controller.signal.aborted) return;
      kind.textContent = `${record.kind}${record.from ? ` of revision ${record.target} from ${record.from}` : ` of revision ${record.target}`} · started ${age(record.started_at)}`;
      // Only a router of this runner's that routes revisions of the app measures its traffic
      // (an app in Kubernetes, or one with nothing deployed, has none).
      const measured = Object.keys(view.status?.instances?.revisions ?? {}).length > 0;
      traffic = measured ? new RolloutTraffic(view.name, [record.from, record.target].filter(Boolean), record.started_at, controller.signal) : null;
      if (record.state !== 'running') {
        const { events } = await call('GET', `/v1/rollouts/${encodeURIComponent(id)}/events`, { signal: controller.signal });
        events.forEach(onEvent);
        finish(record);
        await traffic?.ended(record.finished_at ?? record.started_at + lastAt);
        draw();
        return;
      }
      const ticker = setInterval(() => !shown.ended && draw(), 1000);
      // What the router kept since the rollout began, then a reading every few seconds.
      const reading = (async () => {
        if (!traffic) return;
        await traffic.upTo(nowSeconds());
        while (!shown.ended && !controller.signal.aborted) {
          await traffic.pause(EVERY_S * 1000);
          if (!shown.ended) await traffic.upTo(nowSeconds());
        }
      })().catch((error) => {
        if (error.name !== 'AbortError') report(error, view.messages);
      });
      controller.signal.addEventListener('abort', () => {
        clearInterval(ticker);
        traffic?.wake?.();
      });
      const end = await followRollout(id, onEvent, { signal: controller.signal });
      clearInterval(ticker);
      const ended = end ?? (await call('GET', `/v1/rollouts/${encodeURIComponent(id)}`, { signal: controller.signal }));
      finish(ended);
      traffic?.wake?.();
      await reading;
      await traffic?.ended(ended.finished_at ?? Date.now());
      draw();
      await showHistory(view);
    } catch (error) {
      if (error.name !== 'AbortError') report(error, view.messages);
    }
  })();
}

/** At most about a thousand points for the picture: every k-th, and always the last. */
function thin(points) {
  if (points.length <= 1000) return points;
  const k = Math.ceil(points.length / 1000);
  return points.filter((_, i) => i % k === 0 || i === points.length - 1);
}

/** One timeline event in words. */
function describe(e) {
  const rev = (n) => `revision ${n}`;
  switch (e.event) {
    case 'rollout-started':
      return `${e.resumed ? 'Resumed' : 'Started'}: ${e.from ? `${rev(e.from)} → ` : ''}${rev(e.to)} with ${e.strategy} (${e.replicas} replicas)`;
    case 'scaled':
      return `${rev(e.revision)} scaled ${e.from} → ${e.to}`;
    case 'instance-started':
      return `${e.instance} started`;
    case 'instance-ready':
      return `${e.instance} ready`;
    case 'instance-crashed':
      return `${e.instance} crashed; restarting in ${duration(e.restart_in_ms)}`;
    case 'instance-stopped':
      return `${e.instance} stopped`;
    case 'weights-changed':
      return `weights: ${Object.entries(e.weights).map(([n, w]) => `${rev(n)} ${percent(w)}`).join(', ') || 'none'}`;
    case 'waited':
      return `waited for ${e.wanted} ready on ${rev(e.revision)}: ${e.ready}${e.timed_out ? ' (timed out)' : ''}`;
    case 'waited-stopped':
      return `waited for ${rev(e.revision)} to be down to ${e.at_most}: ${e.current}${e.timed_out ? ' (timed out)' : ''}`;
    case 'probed':
      return `probed ${rev(e.revision)}: ${e.ready} of ${e.probed} ready`;
    case 'http-checked':
      return `checked ${e.path} on ${rev(e.revision)}: ${e.passed} of ${e.checked} passed`;
    case 'hook':
      return `hook ${e.point}: ${e.outcome}${e.message ? ` · ${e.message}` : ''}`;
    case 'maintenance':
      return `maintenance page ${e.on ? 'on' : 'off'}`;
    case 'progress':
      return `${e.percent}% · ${e.message}`;
    case 'log':
      return h('span', { class: `log-${e.level}` }, `${e.level}: ${e.message}`);
    case 'strategy-failed':
      return h('span', { class: 'failure' }, `strategy failed (${e.failure.kind}): ${e.failure.message}`);
    case 'rollback-started':
      return `rolling back to ${rev(e.to)}`;
    case 'rollback-finished':
      return `rollback to ${rev(e.to)} ${e.ok ? 'done' : 'failed'}${e.message ? `: ${e.message}` : ''}`;
    case 'rollout-finished':
      return h('strong', {}, `${e.outcome}${e.summary ? `: ${e.summary}` : ''}`);
    default:
      return e.event;
  }
}

/** The history page `view.before` points at: revisions newest first, with their rollouts. */
async function showHistory(view) {
  const query = new URLSearchParams({ limit: String(PAGE) });
  if (view.before !== null) query.set('before', String(view.before));
  const history = await call('GET', `/v1/apps/${view.app}/revisions?${query}`, { signal: view.signal });
  const byTarget = new Map();
  for (const rollout of history.rollouts) {
    if (!byTarget.has(rollout.target)) byTarget.set(rollout.target, []);
    byTarget.get(rollout.target).push(rollout);
  }
  // The app's latest rollout: the last started (rollouts started in the same millisecond
  // go by revision).
  const later = (a, r) => (!a || r.started_at - a.started_at || r.target - a.target) > 0;
  if (view.before === null) view.latestRollout = history.rollouts.reduce((a, r) => (later(a, r) ? r : a), null)?.id;
  // Retention prunes old revisions; their rollouts stay, so a page lists every number that
  // has either.
  const revisions = new Map(history.revisions.map((r) => [r.number, r]));
  const numbers = [...new Set([...revisions.keys(), ...byTarget.keys()])].sort((a, b) => b - a);
  const rows = numbers.map((number) => {
    const revision = revisions.get(number);
    const rollouts = (byTarget.get(number) ?? []).sort((a, b) => b.started_at - a.started_at);
    const latest = rollouts[0];
    return h(
      'tr',
      { dataset: { revision: number } },
      h('th', { scope: 'row', 'data-label': 'Revision' }, swatch(number), ` ${number}`, revision?.reason ? h('span', { class: 'muted' }, ` · ${revision.reason}`) : null),
      h('td', { 'data-label': 'State', class: 'revision-state' }, revision ? badge(revision.state) : h('span', { class: 'muted', title: 'Past its app\u2019s retention: its record is gone, its rollouts stay' }, 'not kept')),
      h('td', { 'data-label': 'Strategy' }, revision ? [revision.strategy, ' ', digest(revision.strategy_digest)] : '—'),
      h(
        'td',
        { 'data-label': 'Outcome' },
        latest
          ? [
              badge(latest.state),
              ' ',
              h('button', { type: 'button', class: 'link', onclick: () => showRollout(view, latest.id) }, `${latest.kind} ${latest.id}`),
              latest.summary ? h('span', { class: 'muted' }, ` · ${latest.summary}`) : null,
              rollouts.length > 1 ? h('span', { class: 'muted' }, ` (+${rollouts.length - 1} earlier)`) : null,
            ]
          : '—',
      ),
      h('td', { 'data-label': 'Created' }, when(revision?.created_at ?? latest.started_at)),
    );
  });
  view.historyBody.replaceChildren(...(rows.length ? rows : [h('tr', {}, h('td', { colspan: 5, class: 'muted' }, 'No revisions.'))]));
  view.events.replaceChildren(...(history.events ?? []).map((e) => h('li', { class: `log-${e.level}` }, when(e.at), ` ${e.message}`)));

  const newer = h('button', { type: 'button', disabled: view.pages.length === 0 }, 'Newer');
  newer.addEventListener('click', () => {
    view.before = view.pages.pop() ?? null;
    showHistory(view).catch((error) => report(error, view.messages));
  });
  const older = h('button', { type: 'button', disabled: history.next_before === null || history.next_before === undefined }, 'Older');
  older.addEventListener('click', () => {
    view.pages.push(view.before);
    view.before = history.next_before;
    showHistory(view).catch((error) => report(error, view.messages));
  });
  const [newest, oldest] = [numbers.at(0), numbers.at(-1)];
  view.historyNav.replaceChildren(newer, h('span', { class: 'muted', id: 'history-range' }, newest === undefined ? '' : ` revisions ${oldest} to ${newest} `), older);
}
