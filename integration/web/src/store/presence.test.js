import { describe, expect, it } from 'vitest';
import { applyDiff, applyUserConnected, applyUserDisconnected, snapshot } from './presence.js';

const alice = { id: 'alice', name: 'Alice Archer' };
const bob = { id: 'bob', name: 'Bob Baker' };
const carol = { id: 'carol', name: 'Carol Cooper' };

describe('compat mode (whole list on every change)', () => {
  it('takes the server list as it is, sorted by name, one entry per id', () => {
    expect(snapshot([carol, alice, bob, alice])).toEqual([alice, bob, carol]);
  });
  it('user_connected and user_disconnected replace the list with the one they carry', () => {
    const joined = applyUserConnected([alice], { onlineUsers: [bob, alice], user: bob });
    expect(joined).toEqual([alice, bob]);
    expect(applyUserDisconnected(joined, { onlineUsers: [alice], userId: 'bob' })).toEqual([alice]);
  });
  it('falls back to user / userId when an event carries no list', () => {
    expect(applyUserConnected([alice], { user: bob })).toEqual([alice, bob]);
    expect(applyUserDisconnected([alice, bob], { userId: 'alice' })).toEqual([bob]);
  });
});

describe('diff mode (snapshot, then joins and leaves)', () => {
  it('applies joins and leaves to the snapshot', () => {
    const start = snapshot([alice]);
    const afterJoin = applyDiff(start, { joins: [bob, carol], leaves: [] });
    expect(afterJoin).toEqual([alice, bob, carol]);
    expect(applyDiff(afterJoin, { joins: [], leaves: ['bob'] })).toEqual([alice, carol]);
  });
  it('ignores a leave of someone unknown and a repeated join', () => {
    expect(applyDiff([alice], { joins: [alice], leaves: ['zed'] })).toEqual([alice]);
  });
  it('a user who joins and leaves in one batch is not shown', () => {
    expect(applyDiff([alice], { joins: [bob], leaves: ['bob'] })).toEqual([alice]);
  });
});
