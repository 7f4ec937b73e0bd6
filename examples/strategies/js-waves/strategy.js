// Example custom strategy in JavaScript: moves the app from the active revision to the
// target in waves of a fixed number of replicas. The same strategy as ../rust-waves and
// ../python-waves.
//
// Each wave scales the target up by `wave-size`, waits for the new instances to be ready,
// splits traffic in proportion to the ready instances that stay, and scales the active
// revision down by the same amount. The last step sends all traffic to the target. The
// app's `pre` and `post` hooks run before the first wave and after the last.
//
// Parameters (the spec's strategy `params`, a JSON document):
//   wave-size        replicas per wave, at least 1 (default 1)
//   timeout-seconds  how long each wave may wait for its instances (default 120)
//
// Build with `npm run build` (see README.md).

import { log } from 'slipway:deploy/logging@0.2.0';
import { progress, runHook } from 'slipway:deploy/lifecycle@0.2.0';
import { counts, invalid, scale, setWeights, strategy, waitReady } from './slipway.js';

const DEFAULTS = { 'wave-size': 1, 'timeout-seconds': 120 };

/** The spec's parameters, refused before anything changes when unknown or out of range. */
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
    if (!(name in DEFAULTS)) {
      throw invalid(`strategy parameters: unknown field \`${name}\`, expected one of \`wave-size\`, \`timeout-seconds\``);
    }
  }
  const params = { ...DEFAULTS, ...given };
  for (const [name, value] of Object.entries(params)) {
    if (!Number.isInteger(value) || value < 0) {
      throw invalid(`strategy parameters: \`${name}\` must be a non-negative integer, found ${JSON.stringify(value)}`);
    }
  }
  if (params['wave-size'] < 1) {
    throw invalid('strategy parameters: wave-size must be at least 1');
  }
  return params;
}

/** The route's 256 weight units split in proportion to [revision, share] pairs; every
 * revision with a share gets at least 1 (the rule of the Rust SDK's `split_weights`). */
function splitWeights(shares) {
  const total = shares.reduce((sum, [, share]) => sum + share, 0);
  if (total === 0) return [];
  return shares
    .filter(([, share]) => share > 0)
    .map(([revision, share]) => ({ revision, weight: Math.max(Math.floor((share * 256) / total), 1) }));
}

function hook(point) {
  const status = runHook(point);
  if (status === 'succeeded') console.log(`${point} hook succeeded`);
  if (status === 'failure-ignored') log('warn', `${point} hook failed; its policy ignores that`);
}

const percent = (done, total) => (total === 0 ? 100 : Math.min(Math.floor((done * 100) / total), 100));

export const strategyHandler = strategy((ctx) => {
  const params = parseParams(ctx.params);
  const waveSize = params['wave-size'];
  const timeoutMs = params['timeout-seconds'] * 1000;
  const target = ctx.target;
  // On a redeploy of the serving revision there is nothing to move away from.
  const active = ctx.active && ctx.active.number !== target.number ? ctx.active : undefined;

  hook('pre');

  // Start from what the host observes, so that a resumed rollout carries on where it was.
  let targetUp = Math.min(counts(target.number).desired, target.replicas);
  let activeLeft = active ? counts(active.number).desired : 0;

  let wave = 0;
  while (targetUp < target.replicas) {
    wave += 1;
    const step = Math.min(waveSize, target.replicas - targetUp);
    targetUp += step;
    progress(percent(targetUp - step, target.replicas), `wave ${wave}: scaling revision ${target.number} to ${targetUp}`);

    scale(target.number, targetUp);
    const ready = waitReady(target.number, targetUp, timeoutMs).ready;

    // Traffic follows the ready instances that remain after this wave, so no weight points
    // at instances that are about to be drained.
    const shares = [[target.number, ready]];
    if (active) {
      activeLeft = Math.max(activeLeft - step, 0);
      shares.push([active.number, Math.min(counts(active.number).ready, activeLeft)]);
    }
    const weights = splitWeights(shares);
    setWeights(weights);
    // console.log and console.error reach the rollout's log (info and warn).
    console.log(`wave ${wave}: ${ready} ready on revision ${target.number}, weights ${weights.map((w) => `r${w.revision}=${w.weight}`).join(' ')}`);

    if (active) scale(active.number, activeLeft);
  }

  setWeights([{ revision: target.number, weight: 256 }]);
  if (active && activeLeft > 0) {
    // The active revision had more replicas than the target: retire the rest.
    scale(active.number, 0);
  }
  progress(100, `revision ${target.number} serves all traffic`);

  hook('post');

  return {
    summary: `${target.replicas} of ${target.replicas} replicas on revision ${target.number} in ${wave} wave(s) of up to ${waveSize}`,
  };
});
