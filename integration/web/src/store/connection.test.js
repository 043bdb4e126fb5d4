import { describe, expect, it } from 'vitest';
import {
  backoffMs,
  connectErrorPlan,
  connectionBanner,
  initials,
  isServerRefusal,
  parseRetryAfter,
  signedOutNotice,
  spreadDelay,
  throttleOf,
} from './connection.js';

const INTERNAL = /unknown_kid|unauthorized|xhr|poll error|websocket error|transport|io server/i;
const STATES = ['connecting', 'online', 'reconnecting', 'retrying', 'offline'];

describe('connectErrorPlan: what to do after a connect_error', () => {
  it('retries a refusal from the presence service (unknown_kid) itself, with a backoff, without a session check', () => {
    // socket.io-client does not reconnect after a CONNECT_ERROR packet: socket.active is false.
    expect(connectErrorPlan({ message: 'unauthorized: unknown_kid', active: false, attempt: 0 })).toEqual({
      kind: 'refused',
      retryInMs: 1000,
      checkSession: false,
    });
    expect(connectErrorPlan({ message: 'unauthorized: expired', active: false, attempt: 2 }).retryInMs).toBe(4000);
    expect(connectErrorPlan({ message: 'too many connections for this user (limit 64)', active: false, attempt: 9 })).toEqual({
      kind: 'refused',
      retryInMs: 10_000,
      checkSession: false,
    });
  });

  it('leaves transport errors to socket.io-client, which keeps trying, and checks whether the session is gone', () => {
    for (const message of ['xhr poll error', 'websocket error', 'timeout', 'xhr post error']) {
      expect(connectErrorPlan({ message, active: true, attempt: 3 })).toEqual({ kind: 'transport', retryInMs: null, checkSession: true });
    }
  });

  it('schedules the retry itself when a transport error left the socket inactive', () => {
    expect(connectErrorPlan({ message: 'xhr poll error', active: false, attempt: 1 })).toEqual({
      kind: 'transport',
      retryInMs: 2000,
      checkSession: true,
    });
  });

  it('tells server refusals from transport errors', () => {
    expect(isServerRefusal('unauthorized: unknown_kid')).toBe(true);
    expect(isServerRefusal('Unauthorized: missing assertion')).toBe(true);
    expect(isServerRefusal('xhr poll error')).toBe(false);
    expect(isServerRefusal(undefined)).toBe(false);
  });
});

describe('a handshake the gateway throttled (429, or 503 with Retry-After)', () => {
  // What socket.io-client's polling transport hands to connect_error: the status and the XHR.
  const xhrError = (status, retryAfter) => ({
    message: 'xhr poll error',
    description: status,
    context: { getResponseHeader: (name) => (name.toLowerCase() === 'retry-after' ? retryAfter : null) },
  });

  it('reads the status and Retry-After, in seconds or as a date', () => {
    expect(throttleOf(xhrError(429, '3'))).toEqual({ status: 429, retryAfterMs: 3000 });
    expect(throttleOf(xhrError(429, null))).toEqual({ status: 429, retryAfterMs: null });
    expect(throttleOf(xhrError(503, '1'))).toEqual({ status: 503, retryAfterMs: 1000 });
    const now = Date.parse('2026-01-01T00:00:00Z');
    expect(parseRetryAfter('Thu, 01 Jan 2026 00:00:05 GMT', now)).toBe(5000);
    expect(parseRetryAfter('soon', now)).toBe(null);
    expect(parseRetryAfter(' 7 ')).toBe(7000);
  });

  it('is not a throttle: other statuses, a 503 outage without Retry-After, a websocket error, a refusal', () => {
    expect(throttleOf(xhrError(401, '3'))).toBe(null);
    expect(throttleOf(xhrError(503, null))).toBe(null);
    expect(throttleOf({ message: 'websocket error', description: { type: 'error' } })).toBe(null);
    expect(throttleOf(new Error('unauthorized: unknown_kid'))).toBe(null);
    const aborted = { description: 429, context: { getResponseHeader: () => { throw new Error('aborted'); } } };
    expect(throttleOf(aborted)).toEqual({ status: 429, retryAfterMs: null });
  });

  it('waits at least Retry-After, or the backoff if that is longer, and checks no session', () => {
    expect(connectErrorPlan({ message: 'xhr poll error', active: true, attempt: 0, throttle: { status: 429, retryAfterMs: 3000 } })).toEqual({
      kind: 'throttled',
      retryInMs: 3000,
      notBeforeMs: 3000,
      checkSession: false,
    });
    expect(connectErrorPlan({ active: true, attempt: 3, throttle: { status: 429, retryAfterMs: 1000 } }).retryInMs).toBe(8000);
    expect(connectErrorPlan({ active: true, attempt: 0, throttle: { status: 429, retryAfterMs: null } })).toMatchObject({ retryInMs: 1000, notBeforeMs: 0 });
  });
});

describe('spreadDelay: clients dropped together come back apart', () => {
  it('spreads a backoff over [0.5, 1.5) of it', () => {
    expect(spreadDelay(1000, { random: () => 0 })).toBe(500);
    expect(spreadDelay(1000, { random: () => 0.999 })).toBe(1499);
    expect(spreadDelay(1000, { random: () => 0.99999 })).toBeLessThan(1500); // the bound is open
    const delays = Array.from({ length: 200 }, () => spreadDelay(1000));
    expect(Math.min(...delays)).toBeGreaterThanOrEqual(500);
    expect(Math.max(...delays)).toBeLessThan(1500);
    expect(new Set(delays).size).toBeGreaterThan(50); // not all in step
  });

  it('never comes back before the time the server named', () => {
    expect(spreadDelay(1000, { notBeforeMs: 1000, random: () => 0 })).toBe(1000);
    expect(spreadDelay(1000, { notBeforeMs: 1000, random: () => 0.999 })).toBe(1499);
    expect(spreadDelay(1000, { notBeforeMs: 1000, random: () => 0.99999 })).toBeLessThan(1500);
    expect(spreadDelay(200, { notBeforeMs: 1000, random: () => 0 })).toBe(1000);
  });
});

describe('backoffMs', () => {
  it('doubles from 1 s and stays at 10 s', () => {
    expect([0, 1, 2, 3, 4, 5, 50].map((n) => backoffMs(n))).toEqual([1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]);
  });
  it('takes other bounds (the tests use short ones)', () => {
    expect([0, 1, 2, 3].map((n) => backoffMs(n, { baseMs: 10, maxMs: 30 }))).toEqual([10, 20, 30, 30]);
    expect(backoffMs(-3)).toBe(1000);
  });
});

describe('connectionBanner: the plain words on screen', () => {
  const banner = (connection, status = 'authenticated') => connectionBanner({ status, connection });

  it('is live only when connected; only then is the list trusted', () => {
    expect(banner('online')).toMatchObject({ live: true, tone: 'ok', label: 'Live', retry: false, listStale: false });
    for (const state of STATES.filter((s) => s !== 'online')) {
      expect(banner(state)).toMatchObject({ live: false, listStale: true });
    }
  });

  it('says what is going on in plain words', () => {
    expect(banner('connecting').title).toBe('Connecting…');
    expect(banner('reconnecting').title).toBe('Reconnecting…');
    expect(banner('retrying').title).toBe('Can’t reach the presence service — retrying');
    expect(banner('offline').title).toBe('Disconnected');
    expect(banner('online', 'anonymous').title).toBe('Signed out');
  });

  it('offers Retry wherever waiting is not the only option', () => {
    expect(STATES.filter((s) => banner(s).retry)).toEqual(['reconnecting', 'retrying', 'offline']);
    expect(banner('retrying', 'anonymous').retry).toBe(false);
  });

  it('never shows an internal code', () => {
    for (const status of ['authenticated', 'anonymous', 'unknown']) {
      for (const state of [...STATES, undefined]) {
        const { title, detail, label } = banner(state, status);
        expect(`${label} ${title} ${detail}`).not.toMatch(INTERNAL);
      }
    }
  });
});

describe('small helpers', () => {
  it('signedOutNotice', () => {
    expect(signedOutNotice('logout')).toBe('You have been signed out.');
    expect(signedOutNotice('session-ended')).toBe('You have been signed out.');
    expect(signedOutNotice(null)).toBe(null);
  });
  it('initials', () => {
    expect(initials('Alice Archer')).toBe('AA');
    expect(initials('  Carol  van Cooper ')).toBe('CC');
    expect(initials('dave')).toBe('DA');
    expect(initials('')).toBe('?');
  });
});
