// The stack as a deployable template (docs/deploy-compose.md): Redis has one ACL user per
// service, each limited to what that service uses, and no default user; the
// gateway's admin listener (JWKS, /metrics, /readyz) is on the internal network only, every
// container runs as a non-root user with a restart policy and rotated logs, and the presence
// containers' health is liveness (/healthz), not readiness.
// The runner checks the rest before and after `up`: compose refuses to start without each secret,
// and the images stay within their size budget (integration/docker/run-suite.sh).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  aclDenials, compose, docker, redisCli, redisCliAs, statusInside, statusesInside,
} from './lib/stack.mjs';

const SERVICES = ['demo-service', 'express-service', 'gateway', 'presence-a', 'presence-b', 'redis'];

async function containers() {
  const ids = (await compose('ps', '-q')).split('\n').filter(Boolean);
  const out = await docker('inspect', '--format', '{{json .}}', ...ids);
  return out.trim().split('\n').map((line) => JSON.parse(line))
    .map((c) => ({ service: c.Config.Labels['com.docker.compose.service'], ...c }))
    .sort((x, y) => x.service.localeCompare(y.service));
}

test('Redis refuses clients that do not log in as one of its users; the default user is off', async () => {
  // redis-cli prints the error and exits 0; no REDISCLI_AUTH here.
  const anonymous = await compose('exec', '-T', 'redis', 'redis-cli', 'ping');
  assert.match(anonymous, /NOAUTH/, `unauthenticated PING: ${anonymous}`);
  const wrong = await compose('exec', '-T', 'redis', 'redis-cli', '--no-auth-warning', '-a', 'not-the-password', 'ping');
  assert.match(wrong, /WRONGPASS|invalid password|NOAUTH/i, `wrong password: ${wrong}`);
  // AUTH as a command: redis-cli's own -a/--user login prints its error on stderr.
  for (const user of ['default', 'gateway', 'admin']) {
    const wrongUser = await compose('exec', '-T', 'redis', 'redis-cli', 'AUTH', user, 'not-the-password');
    assert.match(wrongUser, /WRONGPASS/, `${user} user, wrong password: ${wrongUser}`);
  }
  const defaultUser = (await redisCli('ACL', 'GETUSER', 'default')).split('\n');
  const flags = defaultUser.slice(defaultUser.indexOf('flags') + 1, defaultUser.indexOf('passwords'));
  assert.ok(flags.includes('off') && !flags.includes('nopass'), `default user flags: ${flags}`);
  assert.deepEqual(defaultUser.slice(defaultUser.indexOf('passwords') + 1, defaultUser.indexOf('commands')).filter(Boolean), [],
    'default user passwords');
  assert.deepEqual((await redisCli('ACL', 'USERS')).trim().split('\n').sort(),
    ['admin', 'default', 'express', 'gateway', 'presence']);
  for (const user of ['admin', 'gateway', 'presence', 'express']) {
    assert.equal((await redisCliAs(user, 'ping')).trim(), 'PONG', `${user} logs in with its own password`);
  }
});

test('each service\'s Redis user reaches only its own keys, channels and commands', async () => {
  // Nothing the services did so far (startup, the Python tests) was refused: their rules cover
  // what they use. Redis restarts (06-redis-outage) empty the log; 06 and 08 check again.
  assert.deepEqual(await aclDenials(), [], 'ACL denials caused by the services');
  const sid = `acl-probe-${Math.random().toString(36).slice(2, 9)}`;
  assert.equal((await redisCli('SET', `sess:${sid}`, '{"passport":{"user":"acl-probe"}}', 'EX', '60')).trim(), 'OK');
  const readScript = (await redisCliAs('presence', 'SCRIPT', 'LOAD', "return redis.call('GET', KEYS[1])")).trim();
  assert.match(readScript, /^[0-9a-f]{40}$/, `SCRIPT LOAD: ${readScript}`);
  const allowed = [
    ['gateway', ['GET', `sess:${sid}`], /acl-probe/],
    ['express', ['SET', `sess:${sid}-x`, '{}', 'EX', '60'], /^OK$/],
    ['express', ['GET', `sess:${sid}`], /acl-probe/],
    ['express', ['DEL', `sess:${sid}-x`], /^1$/],
    ['presence', ['HKEYS', 'presence:users'], /^(?![\s\S]*NOPERM)/],
    ['presence', ['PUBLISH', 'socket.io-request#/acl-probe#', 'x'], /^\d+$/],
  ];
  const refused = [
    // The gateway only reads sessions.
    ['gateway', ['SET', `sess:${sid}`, '{}']],
    ['gateway', ['DEL', `sess:${sid}`]],
    ['gateway', ['EXPIRE', `sess:${sid}`, '1']],
    ['gateway', ['HKEYS', 'presence:users']],
    ['gateway', ['PUBLISH', 'socket.io-request#/#', 'x']],
    ['gateway', ['KEYS', '*']],
    // The Express app: sessions only, no presence state, no pub/sub, nothing server-wide.
    ['express', ['HKEYS', 'presence:users']],
    ['express', ['SET', `other:${sid}`, 'x']],
    ['express', ['PUBLISH', 'socket.io-request#/#', 'x']],
    ['express', ['FLUSHALL']],
    // Presence: its own keys and channels; no session, not even through a script.
    ['presence', ['GET', `sess:${sid}`]],
    ['presence', ['SET', `sess:${sid}`, '{}']],
    ['presence', ['EVALSHA', readScript, '1', `sess:${sid}`]],
    ['presence', ['EVAL', "return redis.call('GET', KEYS[1])", '1', `sess:${sid}`]],
    ['presence', ['PUBLISH', `other:${sid}`, 'x']],
    ['presence', ['CONFIG', 'GET', '*']],
    ['presence', ['ACL', 'SETUSER', 'presence', '+@all']],
  ];
  for (const [user, args, expect] of allowed) {
    const out = (await redisCliAs(user, ...args)).trim();
    assert.match(out, expect, `${user} ${args.join(' ')}: ${out}`);
  }
  for (const [user, args] of refused) {
    const out = (await redisCliAs(user, ...args)).trim();
    assert.match(out, /NOPERM/, `${user} ${args.join(' ')} must be refused: ${out}`);
  }
  // The session is untouched, and every refusal was logged: the check above can see denials.
  assert.match(await redisCli('GET', `sess:${sid}`), /acl-probe/);
  const logged = await aclDenials();
  // Redis keeps one entry per user, reason and object (with a count), so several probes refused
  // on the same key share one: every user probed shows up.
  for (const user of new Set(refused.map(([u]) => u))) {
    assert.ok(logged.some((d) => d.startsWith(`${user} `)), `${user}'s refusals in ACL LOG: ${JSON.stringify(logged)}`);
  }
  assert.ok(logged.some((d) => d.startsWith('presence key')), `a script's key refused: ${JSON.stringify(logged)}`);
  await redisCli('ACL', 'LOG', 'RESET');
  await redisCli('DEL', `sess:${sid}`);
});

test('no container carries curl or wget; health checks need nothing but the image\'s own runtime', async () => {
  for (const c of await containers()) {
    const found = (await compose('exec', '-T', c.service, 'sh', '-c', 'command -v curl wget || true')).trim();
    assert.equal(found, '', `${c.service} has ${found}`);
    const check = c.Config.Healthcheck.Test.join(' ');
    assert.doesNotMatch(check, /curl|wget/, `${c.service} healthcheck: ${check}`);
  }
});

test('the gateway admin listener is unreachable from the app network, reachable from the internal one', async () => {
  // From the Express app's container (the `app` network): the admin listener neither by name nor
  // by its address, and the presence instances not at all.
  const fromApp = ['http://gateway:9180/healthz', 'http://10.213.80.10:9180/metrics', 'http://presence-a:3001/healthz'];
  assert.deepEqual(await statusesInside(fromApp, { from: 'express-service', timeoutMs: 3_000 }), [0, 0, 0],
    `${fromApp.join(', ')} from express-service`);
  // The presence instances (the `internal` network) fetch the JWKS there.
  assert.equal(await statusInside('http://gateway:9180/.well-known/jwks.json', {}, { from: 'presence-a' }), 200);
  // The probe itself reaches what it should from the app network (a 0 above is not a broken probe).
  assert.equal(await statusInside('http://express-service:3000/healthz', {}, { from: 'express-service' }), 200);
});

test('every container: non-root user, restart policy, rotated json-file logs', async () => {
  const all = await containers();
  assert.deepEqual(all.map((c) => c.service), SERVICES);
  for (const c of all) {
    const uid = (await compose('exec', '-T', c.service, 'id', '-u')).trim();
    assert.notEqual(uid, '0', `${c.service} runs as root`);
    assert.ok(['unless-stopped', 'always', 'on-failure'].includes(c.HostConfig.RestartPolicy.Name),
      `${c.service} restart policy: ${JSON.stringify(c.HostConfig.RestartPolicy)}`);
    const log = c.HostConfig.LogConfig;
    assert.equal(log.Type, 'json-file', `${c.service} log driver`);
    assert.match(log.Config['max-size'] ?? '', /^\d+[kmg]$/, `${c.service} max-size: ${JSON.stringify(log.Config)}`);
    assert.ok(Number(log.Config['max-file']) >= 2, `${c.service} max-file: ${JSON.stringify(log.Config)}`);
  }
});

test('presence containers are health-checked on liveness (/healthz), not readiness', async () => {
  for (const c of (await containers()).filter((x) => x.service.startsWith('presence-'))) {
    const check = c.Config.Healthcheck.Test.join(' ');
    assert.match(check, /\/healthz/, `${c.service} healthcheck: ${check}`);
    assert.doesNotMatch(check, /readyz/, `${c.service} healthcheck: ${check}`);
  }
});

test('only the gateway is on the public network; the others are on internal networks', async () => {
  const all = await containers();
  for (const c of all) {
    const nets = Object.keys(c.NetworkSettings.Networks).map((n) => n.replace(/^.*?_/, '')).sort();
    if (c.service === 'gateway') assert.deepEqual(nets, ['app', 'internal', 'public']);
    else assert.ok(!nets.includes('public'), `${c.service} on ${nets}`);
  }
  const internal = await docker('network', 'ls', '--filter', `label=com.docker.compose.project=${process.env.COMPOSE_PROJECT_NAME}`,
    '--format', '{{.Name}} {{.Internal}}');
  for (const line of internal.trim().split('\n')) {
    const [name, isInternal] = line.split(' ');
    assert.equal(isInternal, name.endsWith('_public') ? 'false' : 'true', line);
  }
});
