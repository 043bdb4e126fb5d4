// A service's Redis password rotated the way docs/deploy-compose.md ("Rotating a service's Redis
// password") says, step by step with the same commands: the presence user gets a second
// password live, make-secrets.sh rewrites its URL, the instances are recreated one at a time,
// the old password is removed. Then every presence connection is killed: the instances must log
// in again by themselves, which works only with the new password, and the old one is refused.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import {
  aclLog, compose, eventually, redisCli, serviceHealthy, statusInside,
} from './lib/stack.mjs';

const passwordFile = process.env.REDIS_PRESENCE_PASSWORD_FILE;
const urlFile = process.env.REDIS_PRESENCE_URL_FILE;
const makeSecrets = new URL('../../docker/make-secrets.sh', import.meta.url).pathname;

/** The docs' `docker compose exec redis sh -c '... redis-cli --user admin ...'`. */
function asAdminInRedis(command) {
  return compose('exec', '-T', 'redis', 'sh', '-c',
    `REDISCLI_AUTH="$(head -n1 /run/secrets/redis_admin_password)" redis-cli --no-auth-warning --user admin ${command}`);
}

async function bothReady(what) {
  for (const instance of ['presence-a', 'presence-b']) {
    await eventually(async () => (await statusInside(`http://${instance}:3001/readyz`)) === 200,
      30_000, `${instance} /readyz 200 ${what}`, 500);
  }
}

after(async () => {
  // Leave both instances running whatever happened.
  await compose('up', '-d', '--no-deps', 'presence-a', 'presence-b');
});

test('rotating the presence user\'s Redis password as documented: the instances use the new one', async () => {
  assert.ok(passwordFile && urlFile, 'REDIS_PRESENCE_PASSWORD_FILE and REDIS_PRESENCE_URL_FILE from run-suite.sh');
  const old = readFileSync(passwordFile, 'utf8').split('\n')[0];
  const fresh = randomBytes(32).toString('hex');

  // 1. The new password first, the old one second, written in place (the bind mount sees it).
  writeFileSync(passwordFile, `${fresh}\n${readFileSync(passwordFile, 'utf8')}`);
  // 2. Redis takes it live.
  assert.equal((await asAdminInRedis('ACL SETUSER presence ">$(head -n1 /run/secrets/redis_presence_password)"')).trim(), 'OK');
  // 3. The URL file follows; the instances are recreated one at a time.
  await promisify(execFile)(makeSecrets, [dirname(passwordFile)]);
  assert.equal(readFileSync(urlFile, 'utf8').trim(), `redis://presence:${fresh}@redis:6379`);
  for (const instance of ['presence-a', 'presence-b']) {
    await compose('up', '-d', '--no-deps', '--force-recreate', instance);
    await serviceHealthy(instance);
  }
  await bothReady('after the recreate');
  // 4. The old password goes: from Redis, then from the file.
  assert.equal((await asAdminInRedis('ACL SETUSER presence "<$(sed -n 2p /run/secrets/redis_presence_password)"')).trim(), 'OK');
  writeFileSync(passwordFile, `${readFileSync(passwordFile, 'utf8').split('\n').filter((l, i) => l && i !== 1).join('\n')}\n`);
  assert.equal(readFileSync(passwordFile, 'utf8'), `${fresh}\n`);

  // Every presence connection is dropped: they come back only if they log in with the new one.
  const authFailuresBefore = (await aclLog()).filter((e) => e.reason === 'auth' && e.username === 'presence').length;
  const presenceClients = async () => (await redisCli('CLIENT', 'LIST')).split('\n')
    .filter((line) => line.includes(' user=presence ')).length;
  const before = await presenceClients();
  assert.ok(before >= 2, `presence connections before: ${before}`);
  const killed = Number((await redisCli('CLIENT', 'KILL', 'USER', 'presence')).trim());
  assert.equal(killed, before, 'every presence connection killed');
  await eventually(async () => (await presenceClients()) >= before || `${await presenceClients()} of ${before}`,
    30_000, 'the presence instances connected again', 500);
  await bothReady('after their connections were killed');
  const authFailures = (await aclLog()).filter((e) => e.reason === 'auth' && e.username === 'presence').length;
  assert.equal(authFailures, authFailuresBefore, 'the presence instances failed to log in');

  const withOld = await compose('exec', '-T', 'redis', 'redis-cli', 'AUTH', 'presence', old);
  assert.match(withOld, /WRONGPASS/, `the old password: ${withOld}`);
  assert.equal((await compose('exec', '-T', 'redis', 'redis-cli', 'AUTH', 'presence', fresh)).trim(), 'OK');
});
