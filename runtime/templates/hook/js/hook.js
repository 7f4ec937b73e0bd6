// {{name}}: a Slipway lifecycle hook. It runs `params.command` in the target revision's
// environment (its working directory and environment, like a migration before the new code
// serves) and fails with the end of the command's output if it exits with anything but 0.
// Change `run` to make it yours; `slipway test scenarios.toml` checks it.
//
// Conventions: imports name the host API with its version ('slipway:deploy/…@0.2.0');
// u64 is a BigInt; a hook fails by throwing a string (an Error's message is used).
// out/types holds TypeScript declarations of the host API for editors.

import { exec } from 'slipway:deploy/hook-env@0.2.0';

const EXAMPLE = '{"command": ["./migrate", "--up"]}';

/** The hook's `params` in the app's spec; an unknown name fails the hook, naming it. */
function parseParams(raw) {
  let params;
  try {
    params = raw.trim() ? JSON.parse(raw) : {};
  } catch (error) {
    throw `{{name}}: params: not JSON: ${error.message}`;
  }
  if (params === null || typeof params !== 'object' || Array.isArray(params)) {
    throw `{{name}}: params: expected an object such as ${EXAMPLE}`;
  }
  for (const name of Object.keys(params)) {
    if (name !== 'command' && name !== 'timeout-seconds') throw `{{name}}: params: unknown field \`${name}\``;
  }
  const command = params.command;
  if (!Array.isArray(command) || !command.length || !command.every((a) => typeof a === 'string') || !command[0]) {
    throw `{{name}}: params.command must be the program and its arguments, e.g. ${EXAMPLE}`;
  }
  const timeout = params['timeout-seconds'] ?? 300;
  if (!Number.isInteger(timeout) || timeout < 1) {
    throw '{{name}}: params.timeout-seconds must be a whole number of seconds, at least 1';
  }
  return { command, timeout };
}

function run(ctx) {
  const { command, timeout } = parseParams(ctx.params);
  const shown = command.join(' ');
  // console.log reaches the rollout's log.
  console.log(`{{name}}: running \`${shown}\` for revision ${ctx.target.number}`);
  let output;
  try {
    // exec needs grants = ["exec"] on the hook in the app's spec.
    output = exec(command, BigInt(timeout) * 1000n);
  } catch (error) {
    throw `{{name}}: could not run \`${shown}\`: ${error?.payload?.tag ?? ''} ${JSON.stringify(error?.payload?.val ?? String(error))}`;
  }
  if (output.exitCode === 0) {
    console.log(`{{name}}: \`${shown}\` succeeded`);
    return;
  }
  const ended = output.exitCode === undefined ? 'was killed' : `exited with ${output.exitCode}`;
  throw `{{name}}: \`${shown}\` ${ended}: ${output.outputTail.trim()}`;
}

export const hookHandler = {
  run(ctx) {
    try {
      run(ctx);
    } catch (error) {
      // The WIT's error is a string: an Error is reported with its message.
      throw error instanceof Error ? `${error.name}: ${error.message}` : String(error);
    }
  },
};
