// The pure parts of tab sharing (pkg-template/tabs.js), as the package ships them. Sharing itself
// runs in Chromium: tests/e2e/demo.test.mjs opens tabs on one connection and closes the leader.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compareOffsets, toPlain, fromPlain, canShare } from '../../dist/redistribute-client/tabs.js';

test('offsets compare as the stream orders them, not as strings', () => {
  const ordered = ['0-1', '9-0', '10-0', '10-2', '10-10', '1700000000000-0', '1700000000000-1', '11700000000000-0'];
  for (let i = 0; i < ordered.length; i += 1) {
    for (let j = 0; j < ordered.length; j += 1) {
      assert.equal(Math.sign(compareOffsets(ordered[i], ordered[j])), Math.sign(i - j), `${ordered[i]} vs ${ordered[j]}`);
    }
  }
});

test('errors cross between tabs with their code, channel, offset and id', () => {
  const err = Object.assign(new TypeError('bad'), { code: 'invalid_argument', channel: 'c', offset: '1-0', id: 'k-1' });
  const back = fromPlain(structuredClone(toPlain(err)));
  assert.ok(back instanceof TypeError);
  assert.deepEqual({ ...back, message: back.message }, { code: 'invalid_argument', channel: 'c', offset: '1-0', id: 'k-1', message: 'bad' });
  assert.equal(fromPlain(toPlain('a string')).message, 'a string');
});

test('Node.js has no tab sharing: every client has its own connection', () => {
  assert.equal(canShare(), false);
});
