// A JavaScript strategy that goes wrong on purpose, as its params say: `huge` asks for
// 4,000,000,000 replicas (a u32 the toolchain would corrupt to 0), `typo` reads a field that
// does not exist (a TypeError). tests/all/examples.rs copies it as strategy.js beside a
// copy of sdk/js/slipway.js and builds it.
import { scale, strategy } from './slipway.js';

export const strategyHandler = strategy((ctx) => {
  const { mode } = JSON.parse(ctx.params || '{}');
  console.error(`about to go wrong on purpose: ${mode}`);
  if (mode === 'huge') scale(ctx.target.number, 4000000000);
  if (mode === 'typo') return { summary: `${ctx.taget.number}` };
  return { summary: 'nothing went wrong' };
});
