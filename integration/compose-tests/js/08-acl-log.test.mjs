// Last, after the failure tests: Redis refused none of the services' commands, keys or channels
// since it restarted in 06-redis-outage, through the password rotation of 07 (reconnects,
// re-subscribes, script reloads after a Redis restart and the recovery traffic are where a
// missing rule would show). 00-deployment and 06 check the traffic before that.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { aclDenials } from './lib/stack.mjs';

test('no service was refused anything by Redis\'s ACL', async () => {
  assert.deepEqual(await aclDenials(), [], 'ACL denials caused by the services');
});
