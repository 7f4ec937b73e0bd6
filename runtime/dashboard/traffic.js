// Each revision's requests and errors over a rollout's time, read from its router. The
// router keeps traffic in one-second slots for five minutes and the API answers "the last N
// seconds", so the count in the whole seconds [a, b) is the last (now - a + 1) seconds'
// less the last (now - b + 1) seconds'. Older traffic is not kept anywhere, so a rollout
// that ended more than five minutes ago has no traffic to show.

import { call } from './api.js';

/** How far back the router keeps traffic, in seconds (`traffic::KEPT`). */
export const KEPT_S = 300;
/** Seconds between readings while a rollout runs: the picture's finest step. */
export const EVERY_S = 2;
/** Intervals per revision at most in one reading (each costs a request). */
const MOST_INTERVALS = 60;

/** The current second, Unix time, on the browser's clock. */
export const nowSeconds = () => Math.floor(Date.now() / 1000);

/**
 * `revision`'s traffic in the whole seconds [from_s, to_s) (Unix seconds), in intervals of
 * `step` seconds: `[{from_s, to_s, requests, errors}]`, errors being 5xx answers and
 * requests that got no answer. Seconds the router no longer keeps, or that have not ended,
 * are left out.
 */
export async function trafficBetween(app, revision, from_s, to_s, step, signal) {
  const now_s = nowSeconds();
  const first = Math.max(from_s, now_s - KEPT_S + 1);
  const last = Math.min(to_s, now_s);
  if (last <= first) return [];
  const bounds = [];
  for (let b = first; b < last; b += step) bounds.push(b);
  bounds.push(last);
  // The traffic from each bound up to and including the current second.
  const since = await Promise.all(
    bounds.map(async (b) => {
      const path = `/v1/apps/${encodeURIComponent(app)}/traffic?revision=${revision}&window=${now_s - b + 1}s`;
      const { stats } = await call('GET', path, { signal });
      return { requests: stats.requests, errors: stats.by_class[4] + stats.connection_errors };
    }),
  );
  // A second that ends between two readings moves both windows on by one; never below 0.
  return bounds.slice(1).map((to, i) => ({
    from_s: bounds[i],
    to_s: to,
    requests: Math.max(0, since[i].requests - since[i + 1].requests),
    errors: Math.max(0, since[i].errors - since[i + 1].errors),
  }));
}

/**
 * Reads and keeps the traffic of a rollout's revisions: `upTo(to_s)` reads every revision
 * from where the last reading ended, in steps of `EVERY_S` seconds or wider, so that one
 * reading is at most `MOST_INTERVALS` intervals. `byRevision` maps a revision to its intervals;
 * `note` says why there is none, once a reading was refused (an app whose router does not
 * measure traffic, say).
 */
export class RolloutTraffic {
  constructor(app, revisions, started_ms, signal) {
    this.app = app;
    this.revisions = revisions;
    this.signal = signal;
    this.read_s = Math.floor(started_ms / 1000);
    this.byRevision = new Map(revisions.map((r) => [r, []]));
    this.note = '';
  }

  /** Waits `ms`, or less once `wake()` is called. */
  pause(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  async upTo(to_s) {
    if (this.note || to_s <= this.read_s) return;
    const step = Math.max(EVERY_S, Math.ceil((to_s - Math.max(this.read_s, nowSeconds() - KEPT_S)) / MOST_INTERVALS));
    try {
      const read = await Promise.all(
        this.revisions.map((r) => trafficBetween(this.app, r, this.read_s, to_s, step, this.signal)),
      );
      read.forEach((intervals, i) => this.byRevision.get(this.revisions[i]).push(...intervals));
      this.read_s = Math.max(this.read_s, ...read.flat().map((i) => i.to_s));
    } catch (error) {
      if (error.name === 'AbortError') throw error;
      this.note = `No traffic to show: ${error.message}`;
    }
  }

  /** Reads what the router still keeps of a rollout that ended at `finished_ms`. */
  async ended(finished_ms) {
    const end_s = Math.floor(finished_ms / 1000) + 1;
    if (end_s <= nowSeconds() - KEPT_S) {
      this.note = 'No traffic to show: the router keeps the last five minutes, and this rollout ended before them.';
      return;
    }
    // The second it ended in counts once it is over.
    const wait = end_s * 1000 - Date.now();
    if (wait > 0) await this.pause(wait);
    await this.upTo(end_s);
  }

  /** Whether any interval was read. */
  get any() {
    return [...this.byRevision.values()].some((intervals) => intervals.length > 0);
  }
}
