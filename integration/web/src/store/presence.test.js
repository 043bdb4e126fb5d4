import { describe, expect, it } from 'vitest';
import { applyDiff, applyUserConnected, applyUserDisconnected, follow, freshWire, snapshot } from './presence.js';

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

describe('the wire numbering (epoch / seq)', () => {
  const start = (users, seq, epoch = 'e1') => follow({ onlineUsers: [], wire: freshWire() }, 'online_users', { onlineUsers: users, epoch, seq });
  const diff = (seq, { joins = [], leaves = [] } = {}, epoch = 'e1') => ({ joins, leaves, epoch, seq });

  it('applies the next diff and remembers its seq', () => {
    const next = follow(start([alice], 4), 'presence_diff', diff(5, { joins: [bob] }));
    expect(next).toMatchObject({ onlineUsers: [alice, bob], wire: { epoch: 'e1', seq: 5, waiting: false }, resync: false });
  });
  it('ignores a stale diff (seq not above the last one)', () => {
    const s = follow(start([alice], 4), 'presence_diff', diff(5, { joins: [bob] }));
    const again = follow(s, 'presence_diff', diff(5, { leaves: ['alice'] }));
    expect(again.onlineUsers).toEqual([alice, bob]);
    expect(follow(s, 'presence_diff', diff(3, { leaves: ['bob'] })).onlineUsers).toEqual([alice, bob]);
  });
  it('a gap asks for the list, ignores numbered diffs until the answer, then continues from it', () => {
    const gap = follow(start([alice], 1), 'presence_diff', diff(3, { joins: [carol] }));
    expect(gap).toMatchObject({ onlineUsers: [alice], resync: true, wire: { waiting: true } });
    const waiting = follow(gap, 'presence_diff', diff(4, { leaves: ['alice'] }));
    expect(waiting).toMatchObject({ onlineUsers: [alice], resync: false });
    const answered = follow(waiting, 'ack', { onlineUsers: [bob, carol], epoch: 'e1', seq: 4 });
    expect(answered).toMatchObject({ onlineUsers: [bob, carol], wire: { seq: 4, waiting: false } });
    expect(follow(answered, 'presence_diff', diff(5, { leaves: ['bob'] })).onlineUsers).toEqual([carol]);
  });
  it('another epoch without a new snapshot (the node restarted) is a gap too', () => {
    const next = follow(start([alice], 9), 'presence_diff', diff(1, { joins: [bob] }, 'e2'));
    expect(next).toMatchObject({ onlineUsers: [alice], resync: true });
    const answered = follow(next, 'ack', { onlineUsers: [bob], epoch: 'e2', seq: 1 });
    expect(answered.wire).toEqual({ epoch: 'e2', seq: 1, waiting: false });
  });
  it('a new snapshot starts over in its own epoch, and ends a wait', () => {
    const waiting = follow(start([alice], 1), 'presence_diff', diff(7));
    const fresh = follow(waiting, 'online_users', { onlineUsers: [carol], epoch: 'e3', seq: 0 });
    expect(fresh).toMatchObject({ onlineUsers: [carol], wire: { epoch: 'e3', seq: 0, waiting: false } });
    expect(follow(fresh, 'presence_diff', diff(1, { joins: [bob] }, 'e3')).onlineUsers).toEqual([bob, carol]);
  });
  it('snapshot pages (no seq) are added to the list without touching the numbers', () => {
    const s = follow(start([alice], 7), 'presence_diff', { joins: [bob, carol], leaves: [] });
    expect(s).toMatchObject({ onlineUsers: [alice, bob, carol], wire: { seq: 7 }, resync: false });
    expect(follow(s, 'presence_diff', diff(8, { leaves: ['bob'] })).onlineUsers).toEqual([alice, carol]);
  });
  it('a snapshot or an answer older than the list shown is not taken', () => {
    const s = follow(start([alice], 5), 'presence_diff', diff(6, { joins: [bob] }));
    expect(follow(s, 'online_users', { onlineUsers: [alice], epoch: 'e1', seq: 5 }).onlineUsers).toEqual([alice, bob]);
  });
  it('compat: each list replaces ours, a jump is taken as it is, an older list is never shown', () => {
    let s = start([alice], 2);
    s = follow(s, 'user_connected', { onlineUsers: [alice, bob], user: bob, epoch: 'e1', seq: 3 });
    expect(follow(s, 'user_disconnected', { onlineUsers: [alice], userId: 'bob', epoch: 'e1', seq: 3 }).onlineUsers).toEqual([alice, bob]);
    expect(follow(s, 'user_connected', { onlineUsers: [alice], user: alice, epoch: 'e1', seq: 2 }).onlineUsers).toEqual([alice, bob]);
    const jump = follow(s, 'user_connected', { onlineUsers: [alice, bob, carol], user: carol, epoch: 'e1', seq: 6 });
    expect(jump).toMatchObject({ onlineUsers: [alice, bob, carol], wire: { seq: 6 }, resync: false });
  });
  it('keeps the seed behaviour for frames without numbers', () => {
    let s = follow({ onlineUsers: [], wire: freshWire() }, 'online_users', { onlineUsers: [alice] });
    s = follow(s, 'user_connected', { onlineUsers: [alice, bob], user: bob });
    s = follow(s, 'user_disconnected', { userId: 'alice' });
    expect(s).toMatchObject({ onlineUsers: [bob], wire: freshWire(), resync: false });
    s = follow(s, 'presence_diff', { joins: [carol], leaves: ['bob'] });
    expect(s.onlineUsers).toEqual([carol]);
  });
});
