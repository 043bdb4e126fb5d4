// Test harness: real presence-service processes, a real redis-server, real socket.io-client
// connections, and assertions minted with Ed25519 exactly as the gateway mints them.
import { spawn } from 'node:child_process';
import { generateKeyPairSync, sign, randomUUID } from 'node:crypto';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import { freePort } from '../../lib/free-port.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.PRESENCE_BIN || path.resolve(here, '../../../target/debug/presence-service');
export const ISS = 'edge-gateway';
export const AUD = 'presence-service';

/** An Ed25519 key as the gateway holds it. */
export function makeKey(kid) {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return {
    kid,
    privateKey,
    publicPem: publicKey.export({ type: 'spki', format: 'pem' }),
    jwk: { ...publicKey.export({ format: 'jwk' }), kid, alg: 'EdDSA', use: 'sig' },
  };
}

const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');

/** A compact JWS like the gateway's; `over` changes claims, `header` the JOSE header. */
export function mint(key, { sub, name, sid = 'sess-' + sub, ...over } = {}, header = {}) {
  const now = Math.floor(Date.now() / 1000);
  const claims = { iss: ISS, aud: AUD, sub, name, sid, iat: now, exp: now + 60, jti: randomUUID(), ...over };
  const input = b64({ alg: 'EdDSA', typ: 'JWT', kid: key.kid, ...header }) + '.' + b64(claims);
  return input + '.' + sign(null, Buffer.from(input), key.privateKey).toString('base64url');
}

export { freePort };

/** Resolves when `pred(line)` matches a line of the stream, or rejects after `ms`. */
function waitLine(stream, pred, ms, what) {
  return new Promise((ok, bad) => {
    let buf = '';
    const timer = setTimeout(() => bad(new Error(`timeout waiting for ${what}`)), ms);
    const on = (chunk) => {
      buf += chunk;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i); buf = buf.slice(i + 1);
        const m = pred(line);
        if (m) { clearTimeout(timer); stream.off('data', on); ok(m); return; }
      }
    };
    stream.setEncoding('utf8');
    stream.on('data', on);
  });
}

const started = new Set();
process.on('exit', () => { for (const p of started) try { p.kill('SIGKILL'); } catch {} });

export class Redis {
  /** `persist`: an append-only file fsynced on every write, so a restart finds the data again. */
  static async start({ persist = false } = {}) {
    const r = new Redis();
    r.dir = mkdtempSync(path.join(os.tmpdir(), 'presence-redis-'));
    r.port = await freePort();
    r.persist = persist;
    await r.spawn();
    r.url = `redis://127.0.0.1:${r.port}`;
    return r;
  }
  async spawn() {
    const durability = this.persist ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no'];
    this.proc = spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', ...durability, '--dir', this.dir], { stdio: ['ignore', 'pipe', 'inherit'] });
    started.add(this.proc);
    await waitLine(this.proc.stdout, (l) => l.includes('Ready to accept connections'), 10000, 'redis-server');
    this.proc.stdout.resume();
  }
  /** Kills the process (every connection drops) and resolves once it is gone. */
  async kill() {
    const gone = new Promise((ok) => this.proc.once('exit', ok));
    this.proc.kill('SIGKILL');
    await gone;
    started.delete(this.proc);
  }
  /** A new redis-server process on the same port; with `persist`, on the same data. */
  async restart() {
    await this.spawn();
  }
  pause() { this.proc.kill('SIGSTOP'); }
  resume() { this.proc.kill('SIGCONT'); }
  async stop() { this.proc.kill('SIGKILL'); started.delete(this.proc); rmSync(this.dir, { recursive: true, force: true }); }
}

/**
 * Starts presence-service with a temp config (PEM key written by the test unless `jwksUrl`).
 * `toml` is appended to the generated config: put whole tables there.
 */
export class Presence {
  static async start({ keys = [], jwksUrl, presence = {}, backend, limits = {}, extra = '' } = {}) {
    const p = new Presence();
    p.dir = mkdtempSync(path.join(os.tmpdir(), 'presence-node-'));
    let trust = `[trust]\nleeway_secs = 2\n`;
    if (jwksUrl) trust += `jwks_url = "${jwksUrl}"\njwks_refetch_min_interval_ms = 200\n`;
    for (const k of keys) {
      writeFileSync(path.join(p.dir, `${k.kid}.pem`), k.publicPem);
      trust += `[[trust.public_keys]]\nkid = "${k.kid}"\npem = "${k.kid}.pem"\n`;
    }
    const table = (name, obj) => `[${name}]\n` + Object.entries(obj).map(([k, v]) => `${k} = ${JSON.stringify(v)}`).join('\n') + '\n';
    // A short paced drain on SIGTERM: these tests time what happens after a node's sockets
    // close (the drain itself is tested through the gateway, gateway-tests/zero-drop).
    const config = `[server]\nlisten = "127.0.0.1:0"\ndrain_ms = 100\n` + trust
      + table('presence', { grace_ms: 800, diff_window_ms: 30, ...presence })
      + table('limits', limits)
      + (backend ? table('backend', { heartbeat_interval_ms: 300, node_ttl_ms: 1000, op_timeout_ms: 500, ...backend }) : '')
      + extra;
    p.configPath = path.join(p.dir, 'presence.toml');
    writeFileSync(p.configPath, config);
    p.stderr = '';
    p.proc = spawn(BIN, ['--config', p.configPath], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: 'presence_service=debug' } });
    started.add(p.proc);
    p.proc.stderr.setEncoding('utf8');
    p.proc.stderr.on('data', (d) => { p.stderr += d; });
    const addr = await waitLine(p.proc.stdout, (l) => l.match(/listening on (\S+)/)?.[1], 15000, 'presence-service to listen');
    p.url = `http://${addr}`;
    return p;
  }
  kill(signal = 'SIGKILL') { this.proc.kill(signal); }
  async stop() {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      const gone = new Promise((ok) => this.proc.once('exit', ok));
      this.proc.kill('SIGTERM');
      await gone;
    }
    started.delete(this.proc);
    rmSync(this.dir, { recursive: true, force: true });
  }
  async get(route, token) {
    const headers = token ? { 'x-identity-assertion': token } : {};
    return fetch(this.url + route, { headers });
  }
}

/** Waits until `pred()` is truthy, polling; for states with no event to await (e.g. a metric). */
export async function eventually(pred, ms = 5000, what = 'condition') {
  const end = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timeout waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * A client's side of the versioned wire contract (docs/design.md): the list one connection's
 * presence events describe, and every break of the numbering seen. `online_users` (and the
 * `get_online_users` ack) replaces the list and sets epoch/seq. A numbered `presence_diff`
 * applies iff same epoch and seq === last + 1; seq <= last is stale (ignored); anything else
 * is a gap: `on` returns true (ask for the list) and numbered diffs are ignored until the ack.
 * A `presence_diff` without seq is a snapshot page: applied, `last` untouched. compat
 * `user_connected` / `user_disconnected` replace the list and follow the same numbering; an
 * older list is refused and recorded as a regression. Frames without numbers (a seed-style
 * server) are applied as they are.
 */
export class Follower {
  constructor() {
    this.users = new Map();
    this.epoch = null;
    this.seq = null;
    this.resyncing = false;
    this.gaps = []; // { event, expected, got }
    this.regressions = []; // { event, epoch, last, seq }
    this.stale = 0;
  }
  set(users = []) { this.users = new Map(users.map((u) => [u.id, u])); }
  replace(event, data) {
    const { epoch, seq } = data ?? {};
    if (seq != null && epoch === this.epoch && this.seq !== null && seq < this.seq) {
      this.regressions.push({ event, epoch, last: this.seq, seq });
      return;
    }
    this.set(data?.onlineUsers);
    if (seq != null) { this.epoch = epoch; this.seq = seq; }
  }
  ack(data) { this.resyncing = false; this.replace('get_online_users ack', data); }
  gap(event, data) {
    this.gaps.push({ event, expected: `epoch ${this.epoch} seq ${this.seq === null ? null : this.seq + 1}`, got: `epoch ${data.epoch} seq ${data.seq}` });
  }
  apply({ joins = [], leaves = [] }) {
    for (const u of joins) this.users.set(u.id, u);
    for (const id of leaves) this.users.delete(id);
  }
  /** Any presence event; true when the client must ask for `get_online_users` now. */
  on(event, data) {
    if (event === 'online_users') this.replace(event, data);
    else if (event === 'presence_diff') {
      if (data.seq == null) { this.apply(data); return false; }
      if (this.resyncing) return false;
      if (this.seq !== null && data.epoch === this.epoch) {
        if (data.seq <= this.seq) { this.stale += 1; return false; }
        if (data.seq === this.seq + 1) { this.seq = data.seq; this.apply(data); return false; }
      }
      this.gap(event, data);
      this.resyncing = true;
      return true;
    } else if (event === 'user_connected' || event === 'user_disconnected') {
      if (data.seq != null && this.seq !== null) {
        if (data.epoch !== this.epoch) this.gap(event, data);
        else if (data.seq <= this.seq) { this.regressions.push({ event, epoch: data.epoch, last: this.seq, seq: data.seq }); return false; }
        else if (data.seq !== this.seq + 1) this.gap(event, data);
      }
      this.set(data.onlineUsers); // whole: the truth as of its seq, even after a gap
      if (data.seq != null) { this.epoch = data.epoch; this.seq = data.seq; }
    }
    return false;
  }
  ids() { return [...this.users.keys()].sort(); }
}

/** The `sub` of an assertion, to name a tab in a failure (a token that does not parse: '?'). */
function subOf(token) {
  try { return JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString()).sub; } catch { return '?'; }
}

/** Every tab made since the last `assertNumbering()`. */
const made = [];

/**
 * Asserts that no tab made since the last call saw a break of the wire numbering (a seq gap, or
 * a list older than the one it held): every socket these tests open has one connection, and the
 * contract promises it a gap-free sequence for as long as it lasts. Meant for `afterEach`.
 */
export function assertNumbering() {
  const breaks = made.splice(0).flatMap((t) => [
    ...t.seqGaps().map((g) => `${t.who}: seq_gap on ${g.event}: expected ${g.expected}, got ${g.got}`),
    ...t.regressions().map((r) => `${t.who}: list_regressed on ${r.event}: epoch ${r.epoch} seq ${r.seq} after seq ${r.last}`),
  ]);
  assert.deepEqual(breaks, [], 'the wire numbering broke');
}

const PRESENCE_EVENTS = new Set(['online_users', 'user_connected', 'user_disconnected', 'presence_diff']);

/** A browser tab: one socket.io-client connection that records every presence event. */
export class Tab {
  constructor(url, token, { transports = ['polling', 'websocket'], ...opts } = {}) {
    const extraHeaders = token ? { 'x-identity-assertion': token } : {};
    this.events = [];
    this.waiters = [];
    this.follower = new Follower();
    this.who = `${subOf(token)}@${url}`;
    made.push(this);
    this.socket = io(url, { extraHeaders, transports, reconnection: false, forceNew: true, timeout: 5000, ...opts });
    this.socket.onAny((event, data) => {
      // Follow before recording, so a test that awaited an event sees the list it produced.
      if (PRESENCE_EVENTS.has(event) && this.follower.on(event, data)) this.resync();
      this.events.push({ event, data, at: Date.now() });
      this.check();
    });
    this.socket.on('connect_error', (err) => {
      // A transport error says little by itself: keep what the transport knew (HTTP status,
      // socket error) so a failure can be told apart from a refusal.
      const detail = err.description !== undefined
        ? ` (${err.description?.message ?? err.description}${err.context?.status ? `, HTTP ${err.context.status}` : ''}${err.context?.responseText ? `: ${String(err.context.responseText).slice(0, 200)}` : ''})`
        : '';
      this.events.push({ event: 'connect_error', data: err.message + detail, at: Date.now() });
      this.check();
    });
    this.socket.on('disconnect', (reason) => { this.events.push({ event: 'disconnect', data: reason, at: Date.now() }); this.check(); });
  }
  check() {
    this.waiters = this.waiters.filter((w) => {
      const hit = this.events.find((e, i) => i >= w.from && e.event === w.event && w.pred(e.data));
      if (hit) { clearTimeout(w.timer); w.ok(hit.data); }
      return !hit;
    });
  }
  /** Resolves with the data of the first `event` (since index `from`) matching `pred`. */
  waitFor(event, pred = () => true, ms = 5000, from = 0) {
    return new Promise((ok, bad) => {
      const w = { event, pred, ok, from };
      w.timer = setTimeout(() => bad(new Error(`timeout waiting for ${event}; saw ${JSON.stringify(this.events.map((e) => e.event))}`)), ms);
      this.waiters.push(w);
      this.check();
    });
  }
  mark() { return this.events.length; }
  named(event) { return this.events.filter((e) => e.event === event).map((e) => e.data); }
  async connected() {
    const attempt = (from) => Promise.race([
      this.waitFor('online_users', () => true, 5000, from).then(() => null),
      this.waitFor('connect_error', () => true, 5000, from),
    ]);
    let error = await attempt(0);
    // A transport error (the HTTP request or the socket failed, not a refusal by the service) is
    // what a real tab retries: once, here, and said out loud so it can be looked into. A refusal
    // fails at once.
    if (error !== null && /^(xhr poll error|xhr post error|websocket error)/.test(error)) {
      console.log(`# transport error while connecting, retried once: ${error}`);
      const from = this.mark();
      this.socket.connect();
      error = await attempt(from);
    }
    if (error !== null) throw new Error('connect_error: ' + error);
    return this;
  }
  /** The `connect_error` message; fails if the socket connects instead. */
  async refused() {
    return Promise.race([
      this.waitFor('connect_error'),
      new Promise((_, bad) => this.socket.once('connect', () => bad(new Error('connected but should be refused')))),
    ]);
  }
  /**
   * `get_online_users` with an ack. The ack comes in order with the frames and is applied to
   * the follower in its callback (not a later microtask), so the numbering continues from it.
   */
  ask() {
    return new Promise((ok, bad) => {
      this.socket.timeout(3000).emit('get_online_users', (err, data) => {
        if (err) return bad(err);
        this.follower.ack(data);
        ok(data);
      });
    });
  }
  /** After a gap: what a real client does (diff mode ignores numbered diffs until the ack). */
  resync() { this.ask().catch(() => { this.follower.resyncing = false; }); }
  /** Breaks of the numbering seen on this connection: none while the socket stays connected. */
  seqGaps() { return this.follower.gaps; }
  /** Lists older than the one held (compat lists, or a snapshot going back). */
  regressions() { return this.follower.regressions; }
  /** The list as the contract says to keep it. */
  list() { return this.follower.ids(); }
  close() { this.socket.close(); }
}

export const ids = (users) => users.map((u) => u.id).sort();
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
