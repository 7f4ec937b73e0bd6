// The picture of a rollout: each revision's share of traffic and its ready instances over
// the rollout's time, drawn from the `state` its timeline events carry.

import { h, duration, colour } from './dom.js';

const WIDTH = 640;
const PANEL = 90;
const GAP = 34;
const LEFT = 44;
const RIGHT = 12;
const TOP = 18;

/**
 * `points`: `[{at_ms, state: {revision: {weight, ready, desired, current}}}]`, in time order.
 * `end_ms`: where the time axis ends (now, for a running rollout).
 */
export function rolloutChart(points, end_ms) {
  const height = TOP + PANEL * 2 + GAP + 24;
  const revisions = [...new Set(points.flatMap((p) => Object.keys(p.state)))].sort((a, b) => a - b);
  const span = Math.max(end_ms, points.at(-1)?.at_ms ?? 0, 1);
  const x = (ms) => LEFT + ((WIDTH - LEFT - RIGHT) * ms) / span;
  const maxReady = Math.max(1, ...points.flatMap((p) => Object.values(p.state).map((s) => Math.max(s.ready, s.desired))));
  const top = TOP;
  const bottom = TOP + PANEL + GAP;
  const yWeight = (w) => top + PANEL - (PANEL * w) / 256;
  const yReady = (n) => bottom + PANEL - (PANEL * n) / maxReady;

  const steps = (revision, value, y) => {
    let d = '';
    let previous;
    for (const point of points) {
      const v = value(point.state[revision]);
      const px = x(point.at_ms).toFixed(1);
      if (previous === undefined) d += `M${px},${y(v).toFixed(1)}`;
      else d += `H${px}V${y(v).toFixed(1)}`;
      previous = v;
    }
    if (previous !== undefined) d += `H${x(span).toFixed(1)}`;
    return d;
  };

  const axis = (y0, label, ticks) => [
    h('line', { x1: LEFT, x2: WIDTH - RIGHT, y1: y0 + PANEL, y2: y0 + PANEL, class: 'axis' }),
    h('line', { x1: LEFT, x2: LEFT, y1: y0, y2: y0 + PANEL, class: 'axis' }),
    h('text', { x: LEFT, y: y0 - 5, class: 'label' }, label),
    ticks.map(([value, y]) => h('text', { x: LEFT - 5, y: y + 4, class: 'tick', 'text-anchor': 'end' }, value)),
  ];

  return h(
    'svg',
    {
      viewBox: `0 0 ${WIDTH} ${height}`,
      class: 'chart',
      role: 'img',
      'aria-label': `Traffic share and ready instances of revisions ${revisions.join(', ')} over ${duration(span)}`,
    },
    axis(top, 'Traffic share', [
      ['100%', yWeight(256)],
      ['50%', yWeight(128)],
      ['0', yWeight(0)],
    ]),
    axis(bottom, 'Ready instances', [
      [String(maxReady), yReady(maxReady)],
      ['0', yReady(0)],
    ]),
    revisions.map((revision) => [
      h('path', { d: steps(revision, (s) => s?.weight ?? 0, yWeight), class: 'series', stroke: colour(revision) }),
      h('path', { d: steps(revision, (s) => s?.ready ?? 0, yReady), class: 'series', stroke: colour(revision) }),
    ]),
    h('text', { x: WIDTH - RIGHT, y: height - 4, class: 'tick', 'text-anchor': 'end' }, duration(span)),
    h('text', { x: LEFT, y: height - 4, class: 'tick' }, '0 s'),
    revisions.map((revision, i) =>
      h('text', { x: LEFT + 90 + i * 90, y: height - 4, class: 'legend', fill: colour(revision) }, `■ revision ${revision}`),
    ),
  );
}
