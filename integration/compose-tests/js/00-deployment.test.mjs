// The stack as a deployable template (docs/deploy-compose.md): Redis needs its password, the
// gateway's admin listener (JWKS, /metrics, /readyz) is on the internal network only, every
// container runs as a non-root user with a restart policy and rotated logs, and the presence
// containers' health is liveness (/healthz), not readiness.
// The runner checks the rest before and after `up`: compose refuses to start without each secret,
// and the images stay within their size budget (integration/docker/run-suite.sh).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { compose, curlInside, docker, redisCli } from './lib/stack.mjs';

const SERVICES = ['demo-service', 'express-service', 'gateway', 'presence-a', 'presence-b', 'redis'];

async function containers() {
  const ids = (await compose('ps', '-q')).split('\n').filter(Boolean);
  const out = await docker('inspect', '--format', '{{json .}}', ...ids);
  return out.trim().split('\n').map((line) => JSON.parse(line))
    .map((c) => ({ service: c.Config.Labels['com.docker.compose.service'], ...c }))
    .sort((x, y) => x.service.localeCompare(y.service));
}

test('Redis refuses clients without the password, accepts the stack\'s', async () => {
  // redis-cli prints the error and exits 0; no REDISCLI_AUTH here.
  const anonymous = await compose('exec', '-T', 'redis', 'redis-cli', 'ping');
  assert.match(anonymous, /NOAUTH/, `unauthenticated PING: ${anonymous}`);
  const wrong = await compose('exec', '-T', 'redis', 'redis-cli', '--no-auth-warning', '-a', 'not-the-password', 'ping');
  assert.match(wrong, /WRONGPASS|invalid password|NOAUTH/i, `wrong password: ${wrong}`);
  assert.equal((await redisCli('ping')).trim(), 'PONG');
});

test('the gateway admin listener is unreachable from the app network, reachable from the internal one', async () => {
  // From the Express app's container (the `app` network): neither by name nor by the admin address.
  assert.equal(await curlInside('http://gateway:9180/healthz', {}, { from: 'express-service', maxTime: 3 }), 0,
    'gateway:9180 from express-service');
  assert.equal(await curlInside('http://10.213.80.10:9180/metrics', {}, { from: 'express-service', maxTime: 3 }), 0,
    '10.213.80.10:9180 from express-service');
  // The presence instances (the `internal` network) fetch the JWKS there.
  assert.equal(await curlInside('http://gateway:9180/.well-known/jwks.json', {}, { from: 'presence-a' }), 200);
  // And the apps cannot reach the presence instances directly either.
  assert.equal(await curlInside('http://presence-a:3001/healthz', {}, { from: 'express-service', maxTime: 3 }), 0,
    'presence-a:3001 from express-service');
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
