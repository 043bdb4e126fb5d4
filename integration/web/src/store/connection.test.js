import { describe, expect, it } from 'vitest';
import { backoffMs, connectErrorPlan, connectionBanner, initials, isServerRefusal, signedOutNotice } from './connection.js';

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
