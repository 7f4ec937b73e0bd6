// {{name}}: a Slipway deployment strategy. It brings the new revision up whole beside the
// active one, moves all traffic to it once every instance is ready, then retires the active
// revision. Change `run` to make it yours; `slipway test scenarios.toml` checks it.
//
// Conventions: imports name the host API with its version ('slipway:deploy/…@0.2.0');
// u64 is a BigInt; enums are strings; errors are thrown as { tag, val }. out/types holds
// TypeScript declarations of the host API for editors. slipway.js wraps the export so a
// thrown Error is reported with its message, and checks integers before they reach the host.

import { invalid, scale, setWeights, strategy, waitReady } from './slipway.js';

const DEFAULTS = { 'timeout-seconds': 300 };

/** The spec's `[strategy] params`; an unknown name is refused before anything changes. */
function parseParams(raw) {
  let given;
  try {
    given = raw.trim() ? JSON.parse(raw) : {};
  } catch (error) {
    throw invalid(`strategy parameters: not JSON: ${error.message}`);
  }
  if (given === null || typeof given !== 'object' || Array.isArray(given)) {
    throw invalid('strategy parameters: expected a JSON object');
  }
  for (const name of Object.keys(given)) {
    if (!(name in DEFAULTS)) throw invalid(`strategy parameters: unknown field \`${name}\``);
  }
  const params = { ...DEFAULTS, ...given };
  if (!Number.isInteger(params['timeout-seconds']) || params['timeout-seconds'] < 0) {
    throw invalid('strategy parameters: `timeout-seconds` must be a non-negative integer');
  }
  return params;
}

export const strategyHandler = strategy((ctx) => {
  const params = parseParams(ctx.params);
  const target = ctx.target;
  scale(target.number, target.replicas);
  // A timeout is thrown as an error: letting it out fails the rollout, and Slipway rolls back.
  const counts = waitReady(target.number, target.replicas, params['timeout-seconds'] * 1000);
  // console.log reaches the rollout's log.
  console.log(`${counts.ready} of ${target.replicas} ready on revision ${target.number}`);
  setWeights([{ revision: target.number, weight: 256 }]);
  if (ctx.active && ctx.active.number !== target.number) scale(ctx.active.number, 0);
  return { summary: `${target.replicas} replicas on revision ${target.number}` };
});
