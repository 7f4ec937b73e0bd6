// The dashboard in a real browser (Debian's Chromium, driven by playwright-core), against a
// real runner that tests/all/dashboard.rs started with hello deployed. It signs in, watches a
// deploy made through the API reach `succeeded` live, rolls back from the page, uploads a
// module, reads the logs, and sees a read token's actions disabled and refused. Any console
// error the test did not provoke fails it. Screenshots of each page go to SCREENSHOTS.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, mkdirSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name) => {
  const value = process.env[name];
  assert.ok(value, `${name} is set by tests/all/dashboard.rs`);
  return value;
};
const API = env('SLIPWAY_API');
const DEPLOY = env('SLIPWAY_DEPLOY_TOKEN');
const READ = env('SLIPWAY_READ_TOKEN');
const V2_SPEC = env('SLIPWAY_V2_SPEC');
const MODULE = env('SLIPWAY_MODULE');
const SCREENSHOTS = env('SLIPWAY_SCREENSHOTS');
const ARCHIVE_REVISIONS = Number(env('SLIPWAY_ARCHIVE_REVISIONS'));
const README_IMAGE = process.env.SLIPWAY_README_IMAGE;

/** Waits until `check()` is truthy, or fails saying what never happened and what was seen. */
async function until(what, check, { timeout = 60_000, seen = async () => '' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) assert.fail(`${what} never happened within ${timeout / 1000} s; the page shows: ${await seen()}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function api(method, path, { token = DEPLOY, body, type } = {}) {
  const response = await fetch(API + path, {
    method,
    headers: { Authorization: `Bearer ${token}`, Accept: 'application/json', ...(type ? { 'Content-Type': type } : {}) },
    body,
  });
  const json = await response.json();
  assert.ok(response.ok, `${method} ${path}: ${response.status} ${JSON.stringify(json)}`);
  return json;
}

/** Requests to `url` one after another until `stop()`, which says how many were answered and what failed. */
function steadyLoad(url) {
  let running = true;
  let answered = 0;
  const failed = [];
  const done = (async () => {
    while (running) {
      try {
        const response = await fetch(url);
        await response.arrayBuffer();
        if (response.ok) answered += 1;
        else failed.push(`${response.status}`);
      } catch (error) {
        failed.push(error.message);
      }
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  })();
  return {
    async stop() {
      running = false;
      await done;
      return { answered, failed };
    },
  };
}

test('the dashboard, signed in, runs deployments and refuses what a token may not do', async () => {
  const profile = mkdtempSync(join(tmpdir(), 'slipway-chromium-'));
  mkdirSync(SCREENSHOTS, { recursive: true });
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    // As root, headless, on a machine with no GPU and no network beyond this one.
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
    viewport: { width: 1280, height: 900 },
  });
  const page = context.pages()[0] ?? (await context.newPage());

  // Every console error fails the test, but for the refusals a step provokes on purpose:
  // Chromium logs each 4xx answer as "Failed to load resource".
  const errors = [];
  const provoked = [];
  let allowed = [];
  page.on('console', (message) => {
    if (message.type() !== 'error') return;
    const text = message.text();
    const status = /the server responded with a status of (\d+)/.exec(text)?.[1];
    if (status && allowed.includes(Number(status))) provoked.push(text);
    else errors.push(`${text} (${message.location().url})`);
  });
  page.on('pageerror', (error) => errors.push(`uncaught: ${error.message}`));
  const provoking = async (statuses, step) => {
    allowed = statuses;
    try {
      await step();
    } finally {
      allowed = [];
    }
  };
  const text = (selector) => page.locator(selector).first().textContent({ timeout: 5000 }).catch(() => '');
  const shot = (name) => page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true });

  try {
    // Sign in: an unknown token is refused with a message; a deploy token gets in.
    await page.goto(`${API}/`);
    await page.getByLabel('API token').waitFor();
    await shot('sign-in');
    await provoking([401], async () => {
      await page.getByLabel('API token').fill('not-a-token-anyone-has');
      await page.getByRole('button', { name: 'Sign in' }).click();
      await until('the unknown token refused', async () => (await text('.sign-in [role=alert]')).includes('does not know that token'));
    });
    await page.getByLabel('API token').fill(DEPLOY);
    await page.getByRole('button', { name: 'Sign in' }).click();
    assert.equal(await page.evaluate(() => document.cookie), '', 'the dashboard sets no cookie');

    // The apps page: hello, its active revision and its instances.
    const hello = page.locator('#apps tr[data-app="hello"]');
    await hello.waitFor();
    await until('hello shows 3 / 3 ready', async () => (await hello.textContent()).includes('3 / 3'), { seen: () => hello.textContent() });
    assert.match(await hello.textContent(), /r1 100%/);
    await shot('apps');

    // The app page follows a deploy made through the API, live, to `succeeded`.
    await hello.getByRole('link', { name: 'hello' }).click();
    await until('revision 1 shown active', async () => (await text('#active-revision')) === '1');
    // Requests to hello all through the rollout, for the picture's traffic.
    const load = steadyLoad(`http://${(await api('GET', '/v1/apps/hello')).instances.listen}/`);
    const started = await api('PUT', '/v1/apps/hello', { body: readFileSync(V2_SPEC), type: 'application/toml' });
    assert.equal(started.result, 'started');
    await until(`rollout ${started.rollout} shown`, async () => (await text('#rollout-id')) === started.rollout, { seen: () => text('#rollout') });
    await until('the rollout shown running', async () => ['running', 'succeeded'].includes(await text('#rollout-state')));
    await until('the timeline to reach succeeded', async () => (await text('#rollout-state')) === 'succeeded', { seen: () => text('#rollout') });
    const timeline = await page.locator('#timeline li').allTextContents();
    assert.ok(timeline.some((line) => line.includes('instance-ready') || line.includes('ready')), timeline.join('\n'));
    assert.ok(timeline.at(-1).includes('succeeded'), timeline.join('\n'));
    assert.equal(await page.locator('#rollout-progress').getAttribute('value'), '100');
    assert.equal(await page.locator('.picture svg path.series').count() >= 2, true, 'the picture draws each revision');
    // The picture's requests per second: both revisions served some of the load while the
    // rollout ran, and no more than the load sent is drawn.
    const drawn = async (revision) => Number((await page.locator(`.picture svg path.traffic[data-revision="${revision}"]`).getAttribute('data-requests', { timeout: 5000 }).catch(() => '0')) ?? 0);
    await until('the picture draws both revisions\' requests', async () => (await drawn(1)) > 0 && (await drawn(2)) > 0, { seen: () => text('.picture') });
    const sent = await load.stop();
    assert.deepEqual(sent.failed, [], 'no request to hello failed during the rollout');
    const total = (await drawn(1)) + (await drawn(2));
    assert.ok(total <= sent.answered, `the picture draws ${total} requests, the load sent ${sent.answered}`);
    assert.equal(await page.locator('.picture svg path.errors').count(), 2, 'errors are drawn for each revision');
    await until('revision 2 shown active', async () => (await text('#active-revision')) === '2');
    await until('the history shows revision 2 running', async () => (await text('#history tr[data-revision="2"] .revision-state')) === 'running');
    await shot('app');
    if (README_IMAGE) copyFileSync(join(SCREENSHOTS, 'app.png'), README_IMAGE);

    // Rollback from the page: confirmed, then revision 1 runs again.
    await page.getByRole('button', { name: 'Roll back' }).click();
    await page.locator('#confirm').getByRole('button', { name: 'Confirm' }).click();
    // Revision 1 is not kept after revision 2 succeeded (a destroy delay of 0), so its
    // config comes back as a new revision; either way the page names the one it runs.
    const announced = await until('the rollback announced', async () => /Roll back: rollout (\S+) of revision (\d+) started/.exec(await text('#app-messages')), { seen: () => text('#app-messages') });
    const [, backRollout, back] = announced;
    await until('the rollback shown', async () => (await text('#rollout-id')) === backRollout, { seen: () => text('#rollout') });
    await until('the rollback to reach succeeded', async () => (await text('#rollout-state')) === 'succeeded', { seen: () => text('#rollout') });
    await until(`revision ${back} active`, async () => (await text('#active-revision')) === back);
    await until(`the history shows revision ${back} running`, async () => (await text(`#history tr[data-revision="${back}"] .revision-state`)) === 'running');
    await until('the history shows revision 2 no longer running', async () => (await text('#history tr[data-revision="2"] .revision-state')) !== 'running');
    const { instances } = await api('GET', '/v1/apps/hello');
    assert.match(await (await fetch(`http://${instances.listen}/`)).text(), /v1/, 'hello v1 answers again');

    // The API's refusal, in its words: nothing failed, so there is nothing to retry.
    await provoking([409], async () => {
      await page.getByRole('button', { name: 'Retry' }).click();
      await page.locator('#confirm').getByRole('button', { name: 'Confirm' }).click();
      await until('the retry refused with the API message', async () => {
        const said = await text('#app-messages');
        return said.includes('409') && said.length > 20;
      }, { seen: () => text('#app-messages') });
    });

    // Modules: upload one by choosing the file; it is listed. A file that is not a
    // component is refused with the API's 422 message.
    await page.getByRole('link', { name: 'Modules' }).click();
    await page.getByLabel('Component (.wasm)').setInputFiles(MODULE);
    await page.getByLabel('Name').fill('dashboard-waves');
    await page.getByRole('button', { name: 'Upload' }).click();
    const listed = page.locator('#modules tr[data-module="dashboard-waves"]');
    await listed.waitFor();
    assert.match(await listed.textContent(), /strategy/);
    await provoking([422], async () => {
      await page.getByLabel('Component (.wasm)').setInputFiles({ name: 'broken.wasm', mimeType: 'application/wasm', buffer: Buffer.from('this is not a component') });
      await page.getByLabel('Name').fill('broken');
      await page.getByRole('button', { name: 'Upload' }).click();
      await until('the broken upload refused', async () => (await text('#module-messages')).includes('422'), { seen: () => text('#module-messages') });
    });
    // Dropping a file works as choosing it does, and names the module after the file.
    await page.getByLabel('Name').fill('');
    const dropped = await page.evaluateHandle((base64) => {
      const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
      const transfer = new DataTransfer();
      transfer.items.add(new File([bytes], 'dropped-waves.wasm', { type: 'application/wasm' }));
      return transfer;
    }, readFileSync(MODULE).toString('base64'));
    await page.locator('#module-drop').dispatchEvent('drop', { dataTransfer: dropped });
    assert.equal(await page.getByLabel('Name').inputValue(), 'dropped-waves');
    await page.getByRole('button', { name: 'Upload' }).click();
    await page.locator('#modules tr[data-module="dropped-waves"]').waitFor();
    await shot('modules');

    // Logs: the instances' output.
    await page.goto(`${API}/#/apps/hello/logs`);
    await until('hello output shown', async () => (await text('#logs')).includes('hello v1 listening'), { seen: () => text('#logs') });
    await shot('logs');

    // A read token: every action disabled, saying why; forced anyway, the API refuses it and
    // the page says so.
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('API token').fill(READ);
    await page.getByRole('button', { name: 'Sign in' }).click();
    // Signing in keeps the address: still the logs page.
    await page.locator('#logs').waitFor();
    await page.getByRole('link', { name: 'hello' }).click();
    const rollback = page.getByRole('button', { name: 'Roll back' });
    await rollback.waitFor();
    assert.equal(await rollback.isDisabled(), true, 'Roll back is disabled for a read token');
    assert.match(await rollback.getAttribute('title'), /Needs a deploy token; this one is read/);
    assert.match(await text('#read-only'), /read token/);
    await shot('app-read-only');
    await provoking([403], async () => {
      await rollback.evaluate((button) => {
        button.disabled = false;
      });
      await rollback.click();
      await page.locator('#confirm').getByRole('button', { name: 'Confirm' }).click();
      await until('the forced rollback refused', async () => (await text('#app-messages')).includes('403'), { seen: () => text('#app-messages') });
    });
    const status = await api('GET', '/v1/apps/hello', { token: READ });
    assert.equal(String(status.active_revision), back, 'the refused rollback changed nothing');

    // An app with a 10,000-revision history opens on its newest page, and pages back.
    const opened = Date.now();
    await page.goto(`${API}/#/apps/archive`);
    const newest = `revisions ${ARCHIVE_REVISIONS - 19} to ${ARCHIVE_REVISIONS}`;
    await until('the newest page of the long history', async () => (await text('#history-range')).trim() === newest, { seen: () => text('#history-range') });
    console.log(`archive: ${ARCHIVE_REVISIONS} revisions, the app page showed its newest 20 in ${Date.now() - opened} ms`);
    assert.equal(await page.locator('#history tbody tr').count(), 20);
    await until('its latest rollout shown', async () => (await text('#rollout-id')) === `archive-${ARCHIVE_REVISIONS}-0`, { seen: () => text('#rollout') });
    assert.match(await text(`#history tr[data-revision="${ARCHIVE_REVISIONS}"]`), /not kept.*failed/s);
    await page.getByRole('button', { name: 'Older' }).click();
    await until('the next page', async () => (await text('#history-range')).trim() === `revisions ${ARCHIVE_REVISIONS - 39} to ${ARCHIVE_REVISIONS - 20}`, { seen: () => text('#history-range') });
    await page.getByRole('button', { name: 'Newer' }).click();
    await until('back to the newest page', async () => (await text('#history-range')).trim() === newest, { seen: () => text('#history-range') });
    await shot('archive');

    // Phone width: nothing wider than the screen.
    await page.setViewportSize({ width: 390, height: 844 });
    for (const [name, address] of [['phone-apps', '#/'], ['phone-app', '#/apps/hello'], ['phone-modules', '#/modules']]) {
      await page.goto(`${API}/${address}`);
      await page.locator('main h1').first().waitFor();
      await page.waitForTimeout(500);
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 0, `${address} is ${overflow}px wider than a phone`);
      await shot(name);
    }
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
  assert.deepEqual(errors, [], 'no console errors');
});
