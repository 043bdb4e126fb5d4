// What the page says about its connection, and when it tries again. Pure functions, so the tests
// cover every case without a socket; the store (session.js) feeds them socket.io-client's facts.
//
// The store's `connection` is one of:
//   'connecting'   first connection of this page (or after Retry), nothing failed yet
//   'online'       connected: the online list is live
//   'reconnecting' the connection was lost; socket.io-client is opening it again
//   'retrying'     an attempt failed (presence service unreachable, or it refused us for a
//                  reason that can pass); another attempt is scheduled
//   'offline'      no socket and nothing scheduled (the server ended it); Retry opens one
//
// After a handshake the gateway refused with 429 (or 503 and `Retry-After`), the store stays in
// 'retrying' and waits at least `Retry-After`, spread at random (docs/design.md, "Clients under
// load").
//
// Raw error texts (`unauthorized: unknown_kid`, `xhr poll error`, ...) are for the console only:
// nothing here puts them on screen.

/**
 * How to answer a socket.io `connect_error`.
 *
 * - The presence service's own refusals (`unauthorized: <reason>`, `too many connections ...`)
 *   arrive as a CONNECT_ERROR packet: the gateway let the handshake through, so the session is
 *   fine, and the reason can pass (its keys are not loaded yet, other tabs close). socket.io-client
 *   does not try again after such a refusal (`socket.active` is false): we must, after a backoff.
 * - Anything else is a transport error (`xhr poll error`, `websocket error`, `timeout`): the
 *   service is down, the network is, or the gateway refused the handshake because the session is
 *   gone (its 401 looks like any failed poll). socket.io-client keeps trying by itself
 *   (`socket.active`); we ask the login API whether the session still exists.
 *
 * - A handshake the gateway's admission control refused (`throttleOf`): 'throttled', retried by
 *   us no sooner than its `Retry-After` (`notBeforeMs`).
 *
 * @param {{ message?: string, active?: boolean, attempt?: number,
 *           throttle?: { status: number, retryAfterMs: number | null } | null,
 *           backoff?: { baseMs?: number, maxMs?: number } }} error
 * @returns {{ kind: 'refused' | 'transport' | 'throttled', retryInMs: number | null, checkSession: boolean,
 *             notBeforeMs?: number }}
 */
export function connectErrorPlan({ message = '', active = false, attempt = 0, throttle = null, backoff = {} } = {}) {
  if (throttle) {
    // The gateway's admission control said "not now": wait at least as long as it asked, and
    // take the retry over from socket.io-client (whose own loop would come back sooner).
    const notBeforeMs = throttle.retryAfterMs ?? 0;
    return { kind: 'throttled', retryInMs: Math.max(notBeforeMs, backoffMs(attempt, backoff)), notBeforeMs, checkSession: false };
  }
  const kind = isServerRefusal(message) ? 'refused' : 'transport';
  return {
    kind,
    // socket.io-client retries by itself while the socket is active; otherwise we schedule it.
    retryInMs: active ? null : backoffMs(attempt),
    checkSession: kind === 'transport',
  };
}

/**
 * Whether a failed handshake was the gateway's admission control: 429 (too many handshakes from
 * this address or on this route, or too many tunnels for this user), or 503 with `Retry-After`
 * (the session store is busy). socket.io-client's polling transport reports the HTTP status as
 * `err.description` and the XMLHttpRequest as `err.context`, whose headers are still readable
 * while the `connect_error` handlers run. A WebSocket handshake's status is hidden from pages by
 * the browser: then only the randomized backoff applies.
 *
 * @returns {{ status: number, retryAfterMs: number | null } | null}
 */
export function throttleOf(err, now = Date.now()) {
  const status = err?.description;
  if (status !== 429 && status !== 503) return null;
  let header = null;
  try {
    header = err?.context?.getResponseHeader?.('retry-after') ?? null;
  } catch {
    header = null; // an aborted request has no headers left
  }
  const retryAfterMs = parseRetryAfter(header, now);
  // A 503 without Retry-After is an outage (store down, no upstream), not a request to slow down.
  if (status === 503 && retryAfterMs === null) return null;
  return { status, retryAfterMs };
}

/** `Retry-After` as milliseconds: delay-seconds or an HTTP-date (RFC 9110); null if absent or bad. */
export function parseRetryAfter(value, now = Date.now()) {
  if (value === null || value === undefined) return null;
  const text = String(value).trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const at = Date.parse(text);
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}

/**
 * Spreads a retry delay so that clients dropped together do not come back together: `ms` scaled
 * by a random factor in [1 - f, 1 + f) (socket.io-client's `randomizationFactor`), or, when the
 * server named a time (`notBeforeMs`), only ever later: [ms, ms * (1 + f)). Whole milliseconds,
 * rounded down: rounding to nearest would reach the open upper bound.
 */
export function spreadDelay(ms, { notBeforeMs = 0, factor = RANDOMIZATION_FACTOR, random = Math.random } = {}) {
  if (notBeforeMs > 0) return Math.floor(Math.max(ms, notBeforeMs) * (1 + factor * random()));
  return Math.floor(ms * (1 - factor + 2 * factor * random()));
}

/** How much delays are spread, ours and socket.io-client's (its `randomizationFactor`). */
export const RANDOMIZATION_FACTOR = 0.5;

/**
 * socket.io-client's own reconnection loop (for lost connections and failed handshakes):
 * doubling from 1 s up to 5 s, each delay spread by the randomization factor. These are the
 * library's defaults, spelled out so that a change of defaults (or a factor of 0) cannot make
 * every tab reconnect in step.
 */
export const SOCKET_RECONNECTION = { reconnectionDelay: 1000, reconnectionDelayMax: 5000, randomizationFactor: RANDOMIZATION_FACTOR };

/** A refusal sent by the presence service's connect middleware (not a transport failure). */
export function isServerRefusal(message = '') {
  return /^unauthorized:/i.test(message) || /^too many connections/i.test(message);
}

/**
 * 1 s, 2 s, 4 s, 8 s, then every 10 s: quick after a blip, gentle during an outage. The store
 * spreads each delay (`spreadDelay`) before it waits.
 */
export function backoffMs(attempt = 0, { baseMs = 1000, maxMs = 10_000 } = {}) {
  const n = Math.max(0, Math.floor(attempt));
  return Math.min(maxMs, baseMs * 2 ** Math.min(n, 16));
}

/**
 * What the page shows for a connection state, in plain words.
 *
 * @param {{ status: string, connection: string }} state the store's `status` and `connection`
 * @returns {{ live: boolean, tone: 'ok' | 'busy' | 'warn' | 'off', label: string, title: string, detail: string,
 *             retry: boolean, listStale: boolean }}
 */
export function connectionBanner({ status, connection } = {}) {
  if (status !== 'authenticated') {
    return { live: false, tone: 'off', label: 'Signed out', title: 'Signed out', detail: 'You have been signed out.', retry: false, listStale: true };
  }
  switch (connection) {
    case 'online':
      return { live: true, tone: 'ok', label: 'Live', title: 'Live', detail: 'The list updates as people come and go.', retry: false, listStale: false };
    case 'connecting':
      return { live: false, tone: 'busy', label: 'Connecting', title: 'Connecting…', detail: 'Getting the list of who is online.', retry: false, listStale: true };
    case 'reconnecting':
      return {
        live: false,
        tone: 'busy',
        label: 'Reconnecting',
        title: 'Reconnecting…',
        detail: 'The connection dropped. The list below may be out of date.',
        retry: true,
        listStale: true,
      };
    case 'retrying':
      return {
        live: false,
        tone: 'warn',
        label: 'Retrying',
        title: 'Can’t reach the presence service — retrying',
        detail: 'We keep trying in the background. The list below may be out of date.',
        retry: true,
        listStale: true,
      };
    default:
      return {
        live: false,
        tone: 'off',
        label: 'Offline',
        title: 'Disconnected',
        detail: 'The presence service closed the connection. The list below may be out of date.',
        retry: true,
        listStale: true,
      };
  }
}

/** Shown on the sign-in page after a logout, or when the session ended elsewhere. */
export function signedOutNotice(reason) {
  if (reason === 'logout' || reason === 'session-ended') return 'You have been signed out.';
  return null;
}

/** Two letters for an avatar: "Alice Archer" -> "AA", "dave" -> "DA". */
export function initials(name = '') {
  const words = String(name).trim().split(/\s+/).filter(Boolean);
  if (words.length === 0) return '?';
  if (words.length === 1) return words[0].slice(0, 2).toUpperCase();
  return (words[0][0] + words[words.length - 1][0]).toUpperCase();
}
