// Slipway's helper for strategies written in JavaScript (componentize-js). Import it beside
// the host API:
//
//   import { strategy, scale, waitReady, setWeights } from './slipway.js';
//   export const strategyHandler = strategy((ctx) => { ...; return { summary: '...' }; });
//
// It does two things the toolchain does not:
// - A thrown `Error` (a bug, a TypeError) would end the guest with an opaque trap. `strategy`
//   turns it into the host API's error variant ({ tag: 'invalid', val: 'TypeError: … at …' }),
//   so the rollout's report says what went wrong and where. Errors the host returned
//   (thrown as { tag, val }) pass through as they are.
// - componentize-js 0.23 corrupts u32 arguments of 2^31 and more (4000000000 arrives as 0).
//   The wrappers below check every integer before calling the host, and take plain numbers
//   for the u64 timeouts (converted to BigInt).

import * as scaling from 'slipway:deploy/scaling@0.2.0';
import * as routing from 'slipway:deploy/routing@0.2.0';
import * as clock from 'slipway:deploy/clock@0.2.0';

/** The largest integer passed to the host intact: 2^31 - 1 (see above). */
export const MAX_U32 = 0x7fffffff;

/** An error in the host API's shape: `invalid(message)`. */
export function invalid(message) {
  return { tag: 'invalid', val: String(message) };
}

/** `value` checked as a u32 the toolchain passes intact, or an `invalid` error naming `what`. */
export function u32(value, what) {
  if (!Number.isInteger(value) || value < 0 || value > MAX_U32) {
    throw invalid(`${what} must be an integer from 0 to ${MAX_U32}, got ${value}`);
  }
  return value;
}

/** A millisecond count as the host's u64, checked. */
export function ms(value, what) {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw invalid(`${what} must be a whole number of milliseconds, got ${value}`);
  }
  return BigInt(value);
}

/** The host API error `error` is, or `invalid` with a thrown JavaScript error's name, message and place. */
export function asHostError(error) {
  if (error && typeof error === 'object' && typeof error.tag === 'string' && 'val' in error) {
    return error;
  }
  // A host error as componentize-js may wrap it (a ComponentError with a payload).
  if (error && typeof error === 'object' && error.payload && typeof error.payload.tag === 'string') {
    return error.payload;
  }
  if (error instanceof Error) {
    const where = (error.stack || '').split('\n').find((line) => line.includes(':')) || '';
    return invalid(`${error.name}: ${error.message}${where ? ` (at ${where.trim()})` : ''}`);
  }
  return invalid(`the strategy threw ${String(error)}`);
}

/** The `strategy-handler` export for `run(ctx) -> { summary }`, its errors made host errors. */
export function strategy(run) {
  return {
    run(ctx) {
      try {
        return run(ctx);
      } catch (error) {
        throw asHostError(error);
      }
    },
  };
}

export function scale(revision, replicas) {
  scaling.scale(u32(revision, 'revision'), u32(replicas, 'replicas'));
}

export function counts(revision) {
  return scaling.counts(u32(revision, 'revision'));
}

export function waitReady(revision, ready, timeoutMs) {
  return scaling.waitReady(u32(revision, 'revision'), u32(ready, 'ready'), ms(timeoutMs, 'timeoutMs'));
}

export function waitStopped(revision, current, timeoutMs) {
  return scaling.waitStopped(u32(revision, 'revision'), u32(current, 'current'), ms(timeoutMs, 'timeoutMs'));
}

export function setWeights(weights) {
  routing.setWeights(
    weights.map(({ revision, weight }) => ({ revision: u32(revision, 'revision'), weight: u32(weight, 'weight') })),
  );
}

export function sleep(ms_) {
  clock.sleep(ms(ms_, 'sleep'));
}
