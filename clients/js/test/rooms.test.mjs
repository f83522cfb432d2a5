import { test } from "node:test";
import assert from "node:assert/strict";
import { setup, started, flush } from "./helpers.mjs";

const settled = async (promise) => {
  let result = "pending";
  promise.then(() => (result = "resolved"), (e) => (result = e));
  await flush();
  return result;
};

test("subscribe before connect: sent after CONNECTED, resolved by SUBSCRIBED", async () => {
  const t = setup();
  const sub = t.gw.subscribe("household-7");
  const ws = await started(t);
  ws.open();
  assert.deepEqual(ws.frames, [], "nothing before CONNECTED");
  ws.connected();
  assert.deepEqual(ws.frames, [{ type: "SUBSCRIBE", room: "household-7" }]);
  assert.equal(await settled(sub), "pending");
  ws.receive({ type: "SUBSCRIBED", data: { room: "household-7" } });
  assert.equal(await settled(sub), "resolved");
  assert.equal(await settled(t.gw.subscribe("household-7")), "resolved", "already subscribed: at once");
  assert.equal(ws.frames.length, 1);
  t.gw.close();
});

test("subscribe rejects on ERROR with its code, and the room is forgotten", async () => {
  const t = setup({ random: () => 0 });
  const ws = await started(t);
  ws.connected();
  const ok = t.gw.subscribe("team-1");
  const bad = t.gw.subscribe("secret");
  ws.receive({ type: "SUBSCRIBED", data: { room: "team-1" } });
  ws.receive({ type: "ERROR", data: { code: "forbidden", message: "the token's channels claim does not allow this room" } });
  assert.equal(await settled(ok), "resolved");
  const e = await settled(bad);
  assert.equal(e.code, "forbidden");
  assert.equal(e.room, "secret");
  ws.serverClose(1006);
  t.clock.advance(500);
  await flush();
  t.WebSocket.last.connected();
  assert.deepEqual(t.WebSocket.last.frames, [{ type: "SUBSCRIBE", room: "team-1" }], "only the accepted room again");
  t.gw.close();
});

test("a bad room name is refused before sending", async () => {
  const t = setup();
  const e = await settled(t.gw.subscribe("a b"));
  assert.equal(e.code, "bad_request");
  assert.equal((await settled(t.gw.subscribe("x".repeat(129)))).code, "bad_request");
});

test("rooms are re-subscribed after each reconnect, silently; a refusal then is an error event", async () => {
  const t = setup({ random: () => 0 });
  let ws = await started(t);
  ws.connected();
  const a = t.gw.subscribe("a");
  const b = t.gw.subscribe("b");
  ws.receive({ type: "SUBSCRIBED", data: { room: "a" } });
  ws.receive({ type: "SUBSCRIBED", data: { room: "b" } });
  await Promise.all([a, b]);
  ws.serverClose(4008);
  t.clock.advance(500);
  await flush();
  ws = t.WebSocket.last;
  ws.connected();
  assert.deepEqual(ws.frames, [{ type: "SUBSCRIBE", room: "a" }, { type: "SUBSCRIBE", room: "b" }]);
  ws.receive({ type: "SUBSCRIBED", data: { room: "a" } });
  ws.receive({ type: "ERROR", data: { code: "too_many_rooms", message: "at most 1 rooms per connection" } });
  assert.equal(t.log.errors.length, 1);
  assert.equal(t.log.errors[0].code, "too_many_rooms");
  assert.equal(t.log.errors[0].room, "b");
  assert.equal(t.gw.state, "connected");
  t.gw.close();
});

test("a subscribe sent before a drop resolves on the next connection", async () => {
  const t = setup({ random: () => 0 });
  let ws = await started(t);
  ws.connected();
  const sub = t.gw.subscribe("r");
  ws.serverClose(1006);
  assert.equal(await settled(sub), "pending");
  t.clock.advance(500);
  await flush();
  ws = t.WebSocket.last;
  ws.connected();
  ws.receive({ type: "SUBSCRIBED", data: { room: "r" } });
  assert.equal(await settled(sub), "resolved");
  t.gw.close();
});

test("unsubscribe: UNSUBSCRIBED resolves it, and the room is not subscribed again", async () => {
  const t = setup({ random: () => 0 });
  let ws = await started(t);
  ws.connected();
  t.gw.subscribe("r");
  ws.receive({ type: "SUBSCRIBED", data: { room: "r" } });
  const unsub = t.gw.unsubscribe("r");
  assert.deepEqual(ws.frames.at(-1), { type: "UNSUBSCRIBE", room: "r" });
  assert.equal(await settled(unsub), "pending");
  ws.receive({ type: "UNSUBSCRIBED", data: { room: "r" } });
  assert.equal(await settled(unsub), "resolved");
  ws.serverClose(1006);
  assert.equal(await settled(t.gw.unsubscribe("other")), "resolved", "not connected: nothing to undo");
  t.clock.advance(500);
  await flush();
  t.WebSocket.last.connected();
  assert.deepEqual(t.WebSocket.last.frames, []);
  t.gw.close();
});

test("an UNSUBSCRIBED the gateway sends itself (refreshed token) drops the room", async () => {
  const t = setup({ random: () => 0 });
  let ws = await started(t);
  ws.connected();
  t.gw.subscribe("team-1");
  ws.receive({ type: "SUBSCRIBED", data: { room: "team-1" } });
  ws.receive({ type: "TOKEN_EXPIRING", data: { exp: 1 } });
  await flush();
  ws.receive({ type: "UNSUBSCRIBED", data: { room: "team-1" } });
  ws.receive({ type: "AUTH_REFRESHED", data: { exp: 2 } });
  ws.serverClose(1006);
  t.clock.advance(500);
  await flush();
  t.WebSocket.last.connected();
  assert.deepEqual(t.WebSocket.last.frames, []);
  t.gw.close();
});

test("commands are paced under the gateway's rate limit; rate_limited ones are sent again", async () => {
  const t = setup();
  for (let i = 0; i < 40; i++) t.gw.subscribe(`room-${i}`);
  const ws = await started(t);
  ws.connected();
  assert.equal(ws.frames.length, 16, "a burst of 16");
  t.clock.advance(1000);
  assert.equal(ws.frames.length, 24, "then 8 a second");
  t.clock.advance(2000);
  assert.equal(ws.frames.length, 40);
  for (let i = 0; i < 39; i++) ws.receive({ type: "SUBSCRIBED", data: { room: `room-${i}` } });
  ws.receive({ type: "ERROR", data: { code: "rate_limited", message: "too many messages; slow down" } });
  assert.equal(ws.frames.length, 40, "paused");
  t.clock.advance(1000);
  assert.deepEqual(ws.frames.at(-1), { type: "SUBSCRIBE", room: "room-39" });
  assert.equal(t.log.errors.length, 0);
  t.gw.close();
});

test("close() rejects the subscribes still waiting, keeps the rooms for a restart", async () => {
  const t = setup();
  const sub = t.gw.subscribe("r");
  const ws = await started(t);
  ws.connected();
  t.gw.close();
  assert.equal((await settled(sub)).code, "closed");
  t.gw.connect();
  await flush();
  t.WebSocket.last.connected();
  assert.deepEqual(t.WebSocket.last.frames, [{ type: "SUBSCRIBE", room: "r" }]);
  t.gw.close();
});
