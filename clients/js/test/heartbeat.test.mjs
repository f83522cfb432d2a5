import { test } from "node:test";
import assert from "node:assert/strict";
import { setup, started, flush } from "./helpers.mjs";

test("after 2x heartbeat_secs of silence a PING; without an answer for 1x more, a reconnect", async () => {
  const t = setup({ random: () => 0 });
  const ws = await started(t);
  ws.connected({ heartbeat_secs: 10 });
  t.clock.advance(19_999);
  assert.deepEqual(ws.frames, []);
  t.clock.advance(1);
  assert.deepEqual(ws.frames, [{ type: "PING", ts: t.clock.now() }]);
  t.clock.advance(9_999);
  assert.equal(t.gw.state, "connected");
  t.clock.advance(1);
  assert.equal(t.gw.state, "disconnected", "the link is dead");
  assert.equal(ws.closedWith, 1000, "the socket was closed");
  t.clock.advance(500);
  await flush();
  assert.equal(t.WebSocket.instances.length, 2);
  t.gw.close();
});

test("a PONG, or any message, keeps the connection", async () => {
  const t = setup();
  const ws = await started(t);
  ws.connected({ heartbeat_secs: 10 });
  t.clock.advance(20_000);
  assert.equal(ws.frames.length, 1);
  t.clock.advance(5_000);
  ws.receive({ type: "PONG", data: { ts: ws.frames[0].ts } });
  t.clock.advance(19_999);
  assert.equal(ws.frames.length, 1, "silence counts from the PONG");
  ws.receive({ type: "BALANCE_UPDATE", id: "01X", data: {} });
  // A busy connection never pings.
  for (let i = 0; i < 10; i++) {
    t.clock.advance(15_000);
    ws.receive({ type: "BALANCE_UPDATE", id: `01Y${i}`, data: {} });
  }
  assert.equal(ws.frames.length, 1);
  assert.equal(t.gw.state, "connected");
  assert.equal(t.WebSocket.instances.length, 1);
  t.gw.close();
});

test("heartbeatSecs overrides CONNECTED's", async () => {
  const t = setup({ heartbeatSecs: 2 });
  const ws = await started(t);
  ws.connected({ heartbeat_secs: 25 });
  t.clock.advance(4_000);
  assert.equal(ws.frames[0].type, "PING");
  t.gw.close();
});

test("no CONNECTED within 20 s of opening: the attempt is dropped and retried", async () => {
  const t = setup({ random: () => 0 });
  const ws = await started(t);
  ws.open();
  t.clock.advance(20_000);
  assert.equal(ws.closedWith, 1000);
  assert.equal(t.gw.state, "disconnected");
  t.clock.advance(500);
  await flush();
  assert.equal(t.WebSocket.instances.length, 2);
  t.gw.close();
});
