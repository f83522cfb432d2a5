import { test } from "node:test";
import assert from "node:assert/strict";
import { SeenIds } from "../dist/index.js";
import { setup, started, flush } from "./helpers.mjs";

const since = (ws) => new URL(ws.url).searchParams.get("since");

test("since = the last id seen, CONNECTED's included, on every reconnect", async () => {
  const t = setup({ random: () => 0 });
  let ws = await started(t);
  assert.equal(since(ws), null, "nothing to resume from at first");
  ws.connected({ id: "01C1" });
  assert.equal(t.gw.lastId, "01C1");
  ws.serverClose(1006);
  t.clock.advance(500);
  await flush();
  ws = t.WebSocket.last;
  assert.equal(since(ws), "01C1");

  ws.connected({ id: "01C2", recovered: true });
  ws.receive({ type: "BUDGET_ALERT", id: "01M1", data: { spent: 1 } });
  ws.receive({ type: "NOTIFICATION", data: { text: "no id" } });
  assert.equal(t.gw.lastId, "01M1", "a message without an id moves nothing");
  ws.serverClose(1001);
  t.clock.advance(t.clock.delays()[0]);
  await flush();
  assert.equal(since(t.WebSocket.last), "01M1");
  t.gw.close();
});

test("a CONNECTED followed by a replay does not move the resume point past it", async () => {
  const t = setup({ random: () => 0 });
  let ws = await started(t);
  ws.connected({ id: "01A" });
  ws.receive({ type: "X", id: "01B" });
  ws.serverClose(1006);
  t.clock.advance(500);
  await flush();
  ws = t.WebSocket.last;
  ws.connected({ id: "01Z", recovered: true, replayed: 2 });
  assert.equal(t.gw.lastId, "01B", "the replayed messages are older than CONNECTED's id");
  ws.receive({ type: "X", id: "01C" });
  assert.equal(t.gw.lastId, "01C");
  t.gw.close();
});

test("recovered:false emits gap; true and null do not", async () => {
  const t = setup({ random: () => 0 });
  let ws = await started(t);
  ws.connected({ recovered: null });
  ws.serverClose(1006);
  t.clock.advance(500);
  await flush();
  ws = t.WebSocket.last;
  ws.connected({ id: "01D", recovered: true });
  assert.equal(t.log.gaps, 0);
  ws.serverClose(1006);
  t.clock.advance(1000);
  await flush();
  t.WebSocket.last.connected({ id: "01E", recovered: false });
  assert.equal(t.log.gaps, 1);
  assert.equal(t.gw.state, "connected");
  t.gw.close();
});

test("a replayed duplicate is dropped by id", async () => {
  const t = setup({ random: () => 0 });
  let ws = await started(t);
  ws.connected();
  ws.receive({ type: "NEW_TRANSACTION", id: "01M1", data: { n: 1 } });
  ws.receive({ type: "NEW_TRANSACTION", id: "01M2", data: { n: 2 } });
  ws.receive({ type: "NEW_TRANSACTION", id: "01M2", data: { n: 2 } }); // a publish retried after a timeout
  ws.serverClose(1006);
  t.clock.advance(500);
  await flush();
  ws = t.WebSocket.last;
  ws.connected({ id: "01C9", recovered: true, replayed: 3 });
  // The look-back replays what was already delivered, then something new.
  ws.receive({ type: "NEW_TRANSACTION", id: "01M1", data: { n: 1 } });
  ws.receive({ type: "NEW_TRANSACTION", id: "01M2", data: { n: 2 } });
  ws.receive({ type: "NEW_TRANSACTION", id: "01M3", data: { n: 3 } });
  assert.deepEqual(t.log.messages.map((m) => m.id), ["01M1", "01M2", "01M3"]);
  t.gw.close();
});

test("dedupe is bounded: a repeat after 1,000 other ids is not remembered", async () => {
  const seen = new SeenIds();
  assert.equal(seen.first("a"), true);
  assert.equal(seen.first("a"), false);
  for (let i = 0; i < 999; i++) seen.first(`x${i}`);
  assert.equal(seen.size, 1000);
  assert.equal(seen.first("a"), false, "999 later, still remembered");
  seen.first("x999");
  assert.equal(seen.size, 1000, "never more than 1,000");
  assert.equal(seen.first("a"), true, "1,000 later, forgotten");

  const t = setup();
  const ws = await started(t);
  ws.connected();
  ws.receive({ type: "T", id: "first" });
  for (let i = 0; i < 1000; i++) ws.receive({ type: "T", id: `m${i}` });
  ws.receive({ type: "T", id: "first" });
  assert.equal(t.log.messages.length, 1002);
  t.gw.close();
});
