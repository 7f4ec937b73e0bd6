// The picture of a rollout: each revision's share of traffic and its ready instances over
// the rollout's time, drawn from the `state` its timeline events carry, and, where its
// router kept them, each revision's requests and errors per second.

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
 * `traffic`: a map from revision to `[{from_ms, to_ms, requests, errors}]` in time order
 * (times from the rollout's start), or nothing.
 */
export function rolloutChart(points, end_ms, traffic = new Map()) {
  const drawsTraffic = [...traffic.values()].some((intervals) => intervals.length > 0);
  const height = TOP + PANEL * 2 + GAP + 24 + (drawsTraffic ? PANEL + GAP : 0);
  const revisions = [...new Set([...points.flatMap((p) => Object.keys(p.state)), ...traffic.keys()].map(String))].sort((a, b) => a - b);
  const lastTraffic = Math.max(0, ...[...traffic.values()].flat().map((i) => i.to_ms));
  const span = Math.max(end_ms, points.at(-1)?.at_ms ?? 0, lastTraffic, 1);
  const x = (ms) => LEFT + ((WIDTH - LEFT - RIGHT) * ms) / span;
  const maxReady = Math.max(1, ...points.flatMap((p) => Object.values(p.state).map((s) => Math.max(s.ready, s.desired))));
  const top = TOP;
  const bottom = TOP + PANEL + GAP;
  const yWeight = (w) => top + PANEL - (PANEL * w) / 256;
  const yReady = (n) => bottom + PANEL - (PANEL * n) / maxReady;
  const rates = TOP + (PANEL + GAP) * 2;
  const perSecond = (interval, count) => (1000 * count) / Math.max(1, interval.to_ms - interval.from_ms);
  const maxRate = niceCeiling(Math.max(0, ...[...traffic.values()].flat().map((i) => perSecond(i, i.requests))));
  const yRate = (r) => rates + PANEL - (PANEL * r) / maxRate;

  // Steps over each interval, joined where one ends as the next begins.
  const intervalSteps = (intervals, count) => {
    let d = '';
    let end;
    for (const interval of intervals) {
      const [x0, x1] = [x(Math.max(0, interval.from_ms)).toFixed(1), x(interval.to_ms).toFixed(1)];
      const y = yRate(perSecond(interval, count(interval))).toFixed(1);
      d += end === interval.from_ms ? `V${y}H${x1}` : `M${x0},${y}H${x1}`;
      end = interval.to_ms;
    }
    return d;
  };

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
      'aria-label': `Traffic share${drawsTraffic ? ', requests and errors per second' : ''} and ready instances of revisions ${revisions.join(', ')} over ${duration(span)}`,
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
    drawsTraffic && [
      axis(rates, 'Requests per second (dashed: 5xx and no answer)', [
        [String(maxRate), yRate(maxRate)],
        ['0', yRate(0)],
      ]),
      [...traffic].map(([revision, intervals]) => {
        const total = (key) => intervals.reduce((sum, i) => sum + i[key], 0);
        const data = { revision: String(revision), requests: String(total('requests')), errors: String(total('errors')) };
        return [
          h('path', { d: intervalSteps(intervals, (i) => i.requests), class: 'series traffic', stroke: colour(revision), dataset: data }),
          h('path', { d: intervalSteps(intervals, (i) => i.errors), class: 'series errors', stroke: colour(revision), dataset: data }),
        ];
      }),
    ],
    h('text', { x: WIDTH - RIGHT, y: height - 4, class: 'tick', 'text-anchor': 'end' }, duration(span)),
    h('text', { x: LEFT, y: height - 4, class: 'tick' }, '0 s'),
    revisions.map((revision, i) =>
      h('text', { x: LEFT + 90 + i * 90, y: height - 4, class: 'legend', fill: colour(revision) }, `■ revision ${revision}`),
    ),
  );
}

/** A round number at or above `n` for an axis's top: 1, 2 or 5 times a power of ten. */
function niceCeiling(n) {
  if (n <= 1) return 1;
  const power = 10 ** Math.floor(Math.log10(n));
  return [1, 2, 5, 10].map((m) => m * power).find((top) => top >= n);
}
