import { test } from "node:test";
import assert from "node:assert/strict";
import { Backoff } from "../dist/index.js";
import { setup, started, flush } from "./helpers.mjs";

test("backoff doubles from 1 s to the 30 s cap", () => {
  const b = new Backoff(() => 1 - Number.EPSILON); // the top of the jitter: ~100 %
  const delays = Array.from({ length: 8 }, () => Math.round(b.next()));
  assert.deepEqual(delays, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
});

test("jitter keeps each delay within 50-100 % of its step", () => {
  let r = 0;
  const randoms = [0, 0.25, 0.5, 0.75, 0.999999];
  const b = new Backoff(() => randoms[r++ % randoms.length]);
  for (let failures = 0; failures < 40; failures++) {
    const ceiling = Math.min(30000, 1000 * 2 ** failures);
    const d = b.next();
    assert.ok(d >= ceiling * 0.5 && d < ceiling, `failure ${failures}: ${d} not in [${ceiling / 2}, ${ceiling})`);
  }
  assert.equal(new Backoff(() => 0).next(), 500, "random 0: half the step");
});

test("abuse and the per-user cap start at the cap; reset() starts over", () => {
  const b = new Backoff(() => 0.5);
  assert.equal(b.next(true), 30000 * 0.75);
  assert.equal(b.next(), 2000 * 0.75, "a cap wait counts as one failure, as in the README snippet");
  b.reset();
  assert.equal(b.next(), 1000 * 0.75);
});

test("a failure streak never overflows", () => {
  const b = new Backoff(() => 0.5);
  b.failures = 5000;
  assert.equal(b.next(), 30000 * 0.75);
});

test("reconnects back off, and a connection that lasted 30 s resets the backoff", async () => {
  const t = setup({ random: () => 0 }); // delays at exactly half their step
  let ws = await started(t);
  const waits = [];
  for (let i = 0; i < 4; i++) {
    ws.serverClose(1006);
    waits.push(t.clock.delays()[0]);
    t.clock.advance(waits[i]);
    await flush();
    ws = t.WebSocket.last;
  }
  assert.deepEqual(waits, [500, 1000, 2000, 4000]);

  // Connected, but lost after 29 s: not a connection that lasted.
  ws.connected();
  t.clock.advance(29_000);
  ws.serverClose(1006);
  assert.equal(t.clock.delays()[0], 8000);
  t.clock.advance(8000);
  await flush();
  ws = t.WebSocket.last;

  // 30 s after CONNECTED: the next failure starts from 1 s again.
  ws.connected();
  t.clock.advance(30_000);
  ws.serverClose(1001);
  assert.equal(t.clock.delays()[0], 500);
  assert.equal(t.log.tokenCalls, 1, "a network failure reuses the token");
  t.gw.close();
});
