// node-redis against a running logkv-server: logkv's own verbs through sendCommand,
// a MULTI/EXEC batch, an aborted batch, a pipeline, and error replies.
// Usage: node client.js <port>
'use strict';
const assert = require('node:assert/strict');
const { createClient } = require('redis');

// Awaits a promise that must fail with a server error whose message matches `re`.
async function refused(promise, re) {
  await assert.rejects(promise, (e) => {
    assert.match(e.message, re);
    return true;
  });
}

async function main() {
  const port = Number(process.argv[2]);
  const client = createClient({ socket: { host: '127.0.0.1', port } });
  client.on('error', (e) => { console.error('client error', e); process.exitCode = 1; });
  await client.connect();

  assert.equal(await client.ping(), 'PONG');
  const first = await client.sendCommand(['PUT', 'n.a', 'hello']);
  assert.equal(first, 1);
  assert.equal(await client.sendCommand(['GET', 'n.a']), 'hello');
  assert.equal(await client.set('plain', 'v'), 'OK');
  assert.equal(await client.get('plain'), 'v');

  // A batch: revisions are consecutive.
  const replies = await client.multi()
    .addCommand(['PUT', 'n.b', 'one'])
    .addCommand(['UPDATE', 'n.b', 'two', '3'])
    .exec();
  assert.deepEqual(replies, [3, 4]);

  // A precondition refused: the error code is the reply's first word.
  await refused(client.sendCommand(['CREATE', 'n.a', 'again']), /^EXISTS/);
  await refused(client.sendCommand(['UPDATE', 'n.a', 'x', '999']), /^WRONGREV expected 999, latest 1/);

  // An aborted batch applies nothing.
  await refused(
    client.multi().addCommand(['CREATE', 'n.a', 'again']).addCommand(['PUT', 'n.c', 'c']).exec(),
    /^ABORTED 0 EXISTS/,
  );
  assert.equal(await client.sendCommand(['GET', 'n.c']), null);
  assert.deepEqual(await client.sendCommand(['KEYS', 'n.>']), ['n.a', 'n.b']);

  // A pipeline of a thousand writes, then reads of all of them.
  const sets = [];
  for (let i = 0; i < 1000; i++) sets.push(client.set(`k${i}`, String(i)));
  assert.equal((await Promise.all(sets)).filter((r) => r === 'OK').length, 1000);
  const gets = [];
  for (let i = 0; i < 1000; i++) gets.push(client.get(`k${i}`));
  (await Promise.all(gets)).forEach((v, i) => assert.equal(v, String(i)));

  // A malformed request is an error reply, and the connection stays usable.
  await refused(client.sendCommand(['PUT', 'bad key!', 'v']), /^BADKEY/);
  assert.equal(await client.ping(), 'PONG');

  await client.quit();
  console.log('node client ok');
}

main().catch((e) => { console.error(e); process.exit(1); });
