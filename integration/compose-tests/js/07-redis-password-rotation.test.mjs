// Services' Redis passwords rotated the way docs/deploy-compose.md ("Rotating a service's Redis
// password") says, step by step with the same commands: a new password in the file, Redis
// accepts it live, the clients switch (make-secrets.sh rewrites a URL file; the containers are
// recreated one at a time), Redis forgets the old one. Then every connection of that user is
// killed: the service must log in again by itself, which works only with the new password, and
// the old one is refused.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import {
  aclLog, compose, eventually, loginExpress, redisCli, serviceHealthy, statusInside, users,
} from './lib/stack.mjs';

const makeSecrets = new URL('../../docker/make-secrets.sh', import.meta.url).pathname;

/** The docs' `docker compose exec redis sh -c '... redis-cli --user admin ...'`. */
function asAdminInRedis(command) {
  return compose('exec', '-T', 'redis', 'sh', '-c',
    `REDISCLI_AUTH="$(cat /run/secrets/redis_admin_password)" redis-cli --no-auth-warning --user admin ${command}`);
}

/** Connections Redis has for `user` now. */
async function connectionsOf(user) {
  return (await redisCli('CLIENT', 'LIST')).split('\n').filter((line) => line.includes(` user=${user} `)).length;
}

after(async () => {
  // Leave every service running whatever happened.
  await compose('up', '-d', '--no-deps', 'presence-a', 'presence-b', 'express-service');
});

/**
 * The documented rotation of `user`'s password; `switchClients` is step 3. Then the user's
 * connections are killed and `working` must come true again with no failed login.
 */
async function rotate(user, switchClients, working) {
  const file = process.env[`REDIS_${user.toUpperCase()}_PASSWORD_FILE`];
  assert.ok(file, `REDIS_${user.toUpperCase()}_PASSWORD_FILE from run-suite.sh`);
  const old = readFileSync(file, 'utf8').trim();
  const fresh = randomBytes(32).toString('hex');

  // 1. The new password, written in place (the bind mount sees it).
  writeFileSync(file, fresh);
  // 2. Redis accepts it too.
  assert.equal((await asAdminInRedis(`ACL SETUSER ${user} ">$(cat /run/secrets/redis_${user}_password)"`)).trim(), 'OK');
  // 3. The clients switch.
  await promisify(execFile)(makeSecrets, [dirname(file)]);
  await switchClients(fresh);
  // 4. Redis forgets the old one.
  assert.equal((await asAdminInRedis(`ACL SETUSER ${user} resetpass ">$(cat /run/secrets/redis_${user}_password)"`)).trim(), 'OK');

  // Every connection of the user is dropped: it comes back only by logging in with the new one.
  const failedLogins = async () => (await aclLog()).filter((e) => e.reason === 'auth' && e.username === user).length;
  const failedBefore = await failedLogins();
  const before = await connectionsOf(user);
  assert.ok(before >= 1, `${user} connections before: ${before}`);
  const killed = Number((await redisCli('CLIENT', 'KILL', 'USER', user)).trim());
  assert.ok(killed >= before, `every ${user} connection killed (${killed} of ${before})`);
  await eventually(async () => (await connectionsOf(user)) >= before || `${await connectionsOf(user)} of ${before}`,
    30_000, `${user} connected again`, 500);
  await working();
  assert.equal(await failedLogins(), failedBefore, `${user} failed to log in to Redis`);

  const withOld = await compose('exec', '-T', 'redis', 'redis-cli', 'AUTH', user, old);
  assert.match(withOld, /WRONGPASS/, `the old password: ${withOld}`);
  assert.equal((await compose('exec', '-T', 'redis', 'redis-cli', 'AUTH', user, fresh)).trim(), 'OK');
}

async function presenceReady(what) {
  for (const instance of ['presence-a', 'presence-b']) {
    await eventually(async () => (await statusInside(`http://${instance}:3001/readyz`)) === 200,
      30_000, `${instance} /readyz 200 ${what}`, 500);
  }
}

test('rotating the presence user\'s Redis password as documented: both instances use the new one', async () => {
  await rotate('presence', async (fresh) => {
    assert.equal(readFileSync(process.env.REDIS_PRESENCE_URL_FILE, 'utf8').trim(), `redis://presence:${fresh}@redis:6379`);
    for (const instance of ['presence-a', 'presence-b']) {
      await compose('up', '-d', '--no-deps', '--force-recreate', instance);
      await serviceHealthy(instance);
    }
    await presenceReady('after the recreate');
  }, () => presenceReady('after their connections were killed'));
});

test('rotating the express user\'s Redis password as documented: logins work with the new one', async () => {
  const [name] = users('rotated', 1);
  await rotate('express', async () => {
    await compose('up', '-d', '--no-deps', '--force-recreate', 'express-service');
    await serviceHealthy('express-service');
  }, () => eventually(async () => Boolean(await loginExpress(name)), 30_000, 'an Express login', 500));
});
