// The presence instances are reachable only inside the compose network, and even there they
// refuse anything without a valid assertion from the gateway. Only the gateway publishes a port.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  compose, docker, presenceMetric, socketioConnectInside, statusInside,
} from './lib/stack.mjs';

const FORGED = 'eyJhbGciOiJFZERTQSIsImtpZCI6ImNvbXBvc2UtMSJ9.eyJzdWIiOiJtYWxsb3J5In0.AAAA';

for (const instance of ['presence-a', 'presence-b']) {
  test(`${instance}: a direct Socket.IO connect without a valid assertion is refused`, async () => {
    const rejectedBefore = await presenceMetric(instance, 'presence_rejected_handshakes_total');
    // The namespace refuses the CONNECT with a CONNECT_ERROR packet ("44"), never "40{sid}".
    for (const headers of [{}, { 'x-identity-assertion': FORGED }]) {
      // A polling payload may carry several Engine.IO packets (a ping "2" too), split by \x1e.
      const packets = (await socketioConnectInside(instance, headers)).split('\x1e');
      const socketio = packets.filter((p) => p.startsWith('4'));
      assert.ok(socketio.length === 1 && socketio[0].startsWith('44') && socketio[0].includes('unauthorized'),
        `CONNECT refused (${JSON.stringify(headers)}): ${JSON.stringify(packets)}`);
    }
    assert.equal(await statusInside(`http://${instance}:3001/presence`), 401, '/presence without assertion');
    assert.equal(await statusInside(`http://${instance}:3001/presence`, { 'x-identity-assertion': FORGED }), 401,
      '/presence with a forged assertion');
    const rejectedAfter = await presenceMetric(instance, 'presence_rejected_handshakes_total');
    assert.ok(rejectedAfter >= rejectedBefore + 4, `refusals counted (${rejectedBefore} -> ${rejectedAfter})`);
  });
}

test('only the gateway publishes ports on the host', async () => {
  const ids = (await compose('ps', '-q')).split('\n').filter(Boolean);
  assert.equal(ids.length, 6, 'six containers in the stack');
  const inspect = await docker('inspect', '--format',
    '{{index .Config.Labels "com.docker.compose.service"}} {{json .HostConfig.PortBindings}}', ...ids);
  const withPorts = inspect.trim().split('\n')
    .map((line) => [line.slice(0, line.indexOf(' ')), JSON.parse(line.slice(line.indexOf(' ') + 1)) ?? {}])
    .filter(([, bindings]) => Object.values(bindings).some((b) => Array.isArray(b) && b.length > 0))
    .map(([service]) => service)
    .sort();
  assert.deepEqual(withPorts, ['gateway']);
});
