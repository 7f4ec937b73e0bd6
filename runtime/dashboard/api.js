// The runner's HTTP API, as the dashboard uses it. The token lives in sessionStorage (gone
// when the browser session ends) and goes out as a bearer header on every request; the
// dashboard never uses cookies, so no other page can make the browser act for the user.

const TOKEN = 'slipway.token';
const SCOPE = 'slipway.scope';

/** What the API refused, in its own words (`{code, message}`). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN);
  },
  get scope() {
    return sessionStorage.getItem(SCOPE);
  },
  /** Whether the signed-in token's scope includes `needed` (read < deploy < admin). */
  allows(needed) {
    const order = ['read', 'deploy', 'admin'];
    return order.indexOf(this.scope) >= order.indexOf(needed);
  },
  keep(token, scope) {
    sessionStorage.setItem(TOKEN, token);
    sessionStorage.setItem(SCOPE, scope);
  },
  forget() {
    sessionStorage.removeItem(TOKEN);
    sessionStorage.removeItem(SCOPE);
  },
};

/** Asks the runner what `token` may do; refuses a token it does not know. */
export async function signIn(token) {
  const info = await call('GET', '/v1/token', { token });
  session.keep(token, info.scope);
  return info.scope;
}

/**
 * One API call. `body` is sent as JSON, or as it is when it is a Blob (a module upload).
 * Answers the parsed JSON (or text); throws an ApiError with the API's message when refused.
 */
export async function call(method, path, { body, token = session.token, accept = 'application/json', signal } = {}) {
  const response = await send(method, path, { body, token, accept, signal });
  const type = response.headers.get('content-type') ?? '';
  return type.includes('json') ? response.json() : response.text();
}

async function send(method, path, { body, token, accept, signal, headers: extra = {} }) {
  const headers = { Accept: accept, ...extra };
  if (token) headers.Authorization = `Bearer ${token}`;
  let payload;
  if (body instanceof Blob) {
    payload = body;
    headers['Content-Type'] = 'application/wasm';
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers['Content-Type'] = 'application/json';
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload, signal, credentials: 'omit', cache: 'no-store' });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(0, 'unreachable', `The runner did not answer (${error.message}). Is slipway serve running?`);
  }
  if (!response.ok) throw await refusal(response, token);
  return response;
}

async function refusal(response, token) {
  let code = `http-${response.status}`;
  let message = `The runner answered ${response.status} ${response.statusText}.`;
  try {
    const body = await response.json();
    if (body && typeof body.message === 'string') ({ code, message } = body);
  } catch {
    // Not the API's JSON (a proxy in between, say): keep the status line.
  }
  if (response.status === 401 && token && token === session.token) {
    // The signed-in token stopped working (the runner was given new tokens): sign in again.
    session.forget();
    window.dispatchEvent(new CustomEvent('slipway:signed-out', { detail: message }));
  }
  return new ApiError(response.status, code, message);
}

const pause = (ms, signal) =>
  new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(timer);
      reject(signal.reason);
    });
  });

/**
 * Follows a rollout's server-sent events. EventSource cannot send a bearer header, so the
 * stream is read through fetch. `onEvent(event, seq)` gets each timeline event once, in
 * order, across reconnects (the stream resumes after the last id seen). Resolves with the
 * rollout's final record when the stream says `end`.
 */
export async function followRollout(id, onEvent, { signal } = {}) {
  let last;
  for (;;) {
    const headers = last === undefined ? {} : { 'Last-Event-ID': String(last) };
    const response = await send('GET', `/v1/rollouts/${encodeURIComponent(id)}/events`, {
      token: session.token,
      accept: 'text/event-stream',
      signal,
      headers,
    });
    try {
      for await (const frame of frames(response.body, signal)) {
        if (frame.event === 'end') return frame.data ? JSON.parse(frame.data) : null;
        if (frame.event !== 'rollout' || !frame.data) continue;
        const seq = Number(frame.id);
        if (last !== undefined && seq <= last) continue;
        last = seq;
        onEvent(JSON.parse(frame.data), seq);
      }
    } catch (error) {
      if (signal?.aborted) throw error;
      // The connection dropped (the runner restarted, say): resume where it stopped.
    }
    await pause(1000, signal);
  }
}

/** Server-sent event frames (`{id, event, data}`) from a byte stream. */
async function* frames(body, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  signal?.addEventListener('abort', () => reader.cancel().catch(() => {}));
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const frame = { event: 'message', data: '' };
        for (const line of block.split('\n')) {
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'data') frame.data += (frame.data ? '\n' : '') + value;
          else if (field === 'event' || field === 'id') frame[field] = value;
        }
        if (frame.data || frame.event === 'end') yield frame;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/**
 * Follows an app's output (`GET /v1/apps/{app}/logs?follow=true`): `onText(chunk)` gets
 * the text as it arrives, until `signal` aborts or the runner ends the stream.
 */
export async function followLogs(app, query, onText, { signal } = {}) {
  const params = new URLSearchParams({ ...query, follow: 'true' });
  const response = await send('GET', `/v1/apps/${encodeURIComponent(app)}/logs?${params}`, {
    token: session.token,
    accept: 'text/plain',
    signal,
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  signal?.addEventListener('abort', () => reader.cancel().catch(() => {}));
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      onText(value);
    }
  } catch (error) {
    if (!signal?.aborted) throw error;
  }
}
