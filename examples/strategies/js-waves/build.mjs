// Builds out/strategy.wasm from strategy.js with componentize-js. Run with `npm run build`,
// which also writes TypeScript declarations of the host API to out/types for editors.
// `node build.mjs SOURCE.js OUT.wasm` builds another strategy with the same toolchain (its
// imports must sit beside it: componentize-js reads modules from the source's directory).
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { componentize } from '@bytecodealliance/componentize-js';

const here = dirname(fileURLToPath(import.meta.url));
const wit = join(here, '../../../sdk/wit');
const out = join(here, 'out');

const [source = join(here, 'strategy.js'), target = join(out, 'strategy.wasm')] = process.argv.slice(2);
await mkdir(dirname(target), { recursive: true });
const { component } = await componentize({
  sourcePath: source,
  witPath: wit,
  worldName: 'strategy',
  // Without these the component would import wasi:http, which the host does not give.
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(target, component);
console.log(`built ${target} (${(component.length / 1e6).toFixed(1)} MB)`);
