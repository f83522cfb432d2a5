import { test } from "node:test";
import assert from "node:assert/strict";
import { Gateway, CONTROL_TYPES } from "../dist/index.js";
import { setup, started, flush, fakeWebSocketClass } from "./helpers.mjs";

test("handlers by type get (data, message); '*' gets every message but the control frames", async () => {
  const t = setup();
  const alerts = [];
  const connected = [];
  t.gw.on("BUDGET_ALERT", (data, message) => alerts.push([data, message.id]));
  t.gw.on("CONNECTED", (data) => connected.push(data.user_id));
  const ws = await started(t);
  ws.connected();
  ws.receive({ type: "BUDGET_ALERT", id: "01A", data: { category: "dining" } });
  ws.receive({ type: "NEW_TRANSACTION", id: "01B", data: { amount: 5 } });
  ws.receive({ type: "PONG", data: { ts: 1 } });
  ws.receive("not json");
  ws.receive({ no: "type" });
  assert.deepEqual(alerts, [[{ category: "dining" }, "01A"]]);
  assert.deepEqual(connected, ["42"]);
  assert.deepEqual(t.log.messages.map((m) => m.type), ["BUDGET_ALERT", "NEW_TRANSACTION"]);
  assert.deepEqual([...CONTROL_TYPES].sort(), ["AUTH_REFRESHED", "CONNECTED", "ERROR", "PONG", "SUBSCRIBED", "TOKEN_EXPIRING", "UNSUBSCRIBED"]);
  t.gw.close();
});

test("on() returns its unsubscribe; a throwing handler does not stop the others", async (tt) => {
  const t = setup();
  const seen = [];
  const off = t.gw.on("X", () => seen.push("removed"));
  t.gw.on("X", () => {
    throw new Error("a bug in the app");
  });
  t.gw.on("X", () => seen.push("kept"));
  off();
  const errors = tt.mock.method(console, "error", () => {});
  const ws = await started(t);
  ws.connected();
  ws.receive({ type: "X", id: "1" });
  assert.deepEqual(seen, ["kept"]);
  assert.equal(errors.mock.callCount(), 1);
  t.gw.close();
});

test("close() is idempotent, clears every timer, and ends in 'stopped' without reconnecting", async () => {
  const t = setup();
  const ws = await started(t);
  ws.connected({ heartbeat_secs: 10 });
  t.gw.subscribe("a"); // in flight
  for (let i = 0; i < 30; i++) t.gw.subscribe(`r${i}`); // some paced
  assert.ok(t.clock.pending > 0);
  t.gw.close();
  t.gw.close();
  assert.equal(t.clock.pending, 0);
  assert.equal(ws.closedWith, 1000);
  assert.deepEqual(t.log.states, ["connecting", "connected", "stopped"]);
  ws.serverClose(1000); // late events of the old socket change nothing
  t.clock.advance(60_000);
  await flush();
  assert.equal(t.WebSocket.instances.length, 1);
});

test("close() while waiting to reconnect, or while token() runs", async () => {
  const t = setup();
  const ws = await started(t);
  ws.serverClose(1006);
  assert.equal(t.clock.pending, 1);
  t.gw.close();
  assert.equal(t.clock.pending, 0);

  let release;
  const WebSocket = fakeWebSocketClass();
  const gw = new Gateway({ url: "wss://x/ws", WebSocket, token: () => new Promise((r) => (release = r)) });
  gw.connect();
  gw.close();
  release("late");
  await flush();
  assert.equal(WebSocket.instances.length, 0, "a token that comes after close() opens nothing");
  assert.equal(gw.state, "stopped");
});

test("connect() twice opens one socket; the state starts 'disconnected'", async () => {
  const t = setup();
  assert.equal(t.gw.state, "disconnected");
  t.gw.connect();
  t.gw.connect();
  await flush();
  assert.equal(t.WebSocket.instances.length, 1);
  t.gw.close();
});

test("no WebSocket implementation: a clear error at construction", () => {
  assert.equal(typeof globalThis.WebSocket, "undefined");
  assert.throws(() => new Gateway({ url: "wss://x/ws", token: "t" }), /no WebSocket/);
  assert.throws(() => new Gateway({ url: "https://x/sse", token: "t", transport: "sse" }), /no EventSource/);
});
