// The tests' reading of the wire contract (harness.mjs Follower), without a server: what the
// suites count as a gap or an older list must be right itself.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Follower } from './harness.mjs';

const A = { id: 'a', name: 'A' }, B = { id: 'b', name: 'B' }, C = { id: 'c', name: 'C' };
const snap = (onlineUsers, seq, epoch = 'e1') => ({ onlineUsers, epoch, seq });
const diff = (seq, { joins = [], leaves = [] } = {}, epoch = 'e1') => ({ joins, leaves, epoch, seq });

test('diffs in order apply; a repeat is stale and ignored', () => {
  const f = new Follower();
  f.on('online_users', snap([A], 4));
  assert.equal(f.on('presence_diff', diff(5, { joins: [B] })), false);
  assert.equal(f.on('presence_diff', diff(5, { leaves: ['a'] })), false);
  f.on('presence_diff', diff(6, { leaves: ['a'] }));
  assert.deepEqual([f.ids(), f.seq, f.stale, f.gaps], [['b'], 6, 1, []]);
});

test('a jump is a gap: ask, ignore numbered diffs until the ack, continue from it', () => {
  const f = new Follower();
  f.on('online_users', snap([A], 1));
  assert.equal(f.on('presence_diff', diff(3, { joins: [C] })), true);
  assert.equal(f.on('presence_diff', diff(4, { leaves: ['a'] })), false);
  f.ack(snap([A, B, C], 4));
  f.on('presence_diff', diff(5, { leaves: ['b'] }));
  assert.deepEqual(f.ids(), ['a', 'c']);
  assert.equal(f.gaps.length, 1);
});

test('another epoch without a snapshot is a gap; a new snapshot starts over', () => {
  const f = new Follower();
  f.on('online_users', snap([A], 9));
  assert.equal(f.on('presence_diff', diff(10, { joins: [B] }, 'e2')), true);
  f.ack(snap([B], 1, 'e2'));
  f.on('online_users', snap([C], 0, 'e3'));
  f.on('presence_diff', diff(1, { joins: [A] }, 'e3'));
  assert.deepEqual([f.ids(), f.gaps.length], [['a', 'c'], 1]);
});

test('snapshot pages (no seq) apply without touching seq', () => {
  const f = new Follower();
  f.on('online_users', snap([A], 7));
  f.on('presence_diff', { joins: [B, C], leaves: [] });
  f.on('presence_diff', diff(8, { leaves: ['b'] }));
  assert.deepEqual([f.ids(), f.seq, f.gaps], [['a', 'c'], 8, []]);
});

test('compat: an older list is refused and recorded; a jump is a gap but the list is taken', () => {
  const f = new Follower();
  f.on('online_users', snap([A], 2));
  f.on('user_connected', { ...snap([A, B], 3), user: B });
  f.on('user_connected', { ...snap([A], 2), user: A });
  assert.deepEqual(f.ids(), ['a', 'b']);
  f.on('user_disconnected', { ...snap([B], 5), userId: 'a' });
  assert.deepEqual([f.ids(), f.gaps.length, f.regressions.length], [['b'], 1, 1]);
});

test('seed-style frames without numbers are applied as they are', () => {
  const f = new Follower();
  f.on('online_users', { onlineUsers: [A] });
  f.on('user_connected', { onlineUsers: [A, B], user: B });
  const g = new Follower();
  g.on('online_users', { onlineUsers: [A] });
  g.on('presence_diff', { joins: [B], leaves: ['a'] });
  assert.deepEqual([f.ids(), g.ids(), f.gaps, g.gaps, f.regressions], [['a', 'b'], ['b'], [], [], []]);
});
