import { test } from "node:test";
import assert from "node:assert/strict";
import { gatewayStore } from "../dist/index.js";
import { setup, started } from "./helpers.mjs";

test("the store's snapshot is the same object until something changes", async () => {
  const t = setup();
  const store = gatewayStore(t.gw);
  assert.equal(gatewayStore(t.gw), store, "one store per gateway");
  let calls = 0;
  const unsubscribe = store.subscribe(() => calls++);
  const s0 = store.getSnapshot();
  assert.equal(store.getSnapshot(), s0);
  assert.equal(s0.state, "disconnected");
  assert.deepEqual(s0.last, {});

  const ws = await started(t);
  const s1 = store.getSnapshot();
  assert.notEqual(s1, s0);
  assert.equal(s1.state, "connecting");
  ws.connected();
  const s2 = store.getSnapshot();
  assert.equal(s2.state, "connected");
  assert.deepEqual(s2.last, {}, "CONNECTED is a control frame, not kept");
  assert.equal(store.getSnapshot(), s2);

  ws.receive({ type: "BUDGET_ALERT", id: "1", data: { n: 1 } });
  const s3 = store.getSnapshot();
  assert.equal(s3.last.BUDGET_ALERT.data.n, 1);
  assert.equal(s3.last, store.getSnapshot().last);
  ws.receive({ type: "BUDGET_ALERT", id: "1", data: { n: 1 } }); // a duplicate: no change
  ws.receive({ type: "PONG", data: {} }); // a control frame: no change
  assert.equal(store.getSnapshot(), s3);
  ws.receive({ type: "BUDGET_ALERT", id: "2", data: { n: 2 } });
  ws.receive({ type: "GOAL_ACHIEVED", id: "3", data: {} });
  const s4 = store.getSnapshot();
  assert.equal(s4.last.BUDGET_ALERT.data.n, 2, "the last of each type");
  assert.deepEqual(Object.keys(s4.last), ["BUDGET_ALERT", "GOAL_ACHIEVED"]);
  assert.equal(s3.last.BUDGET_ALERT.data.n, 1, "older snapshots are not changed");
  assert.ok(Object.isFrozen(s4) && Object.isFrozen(s4.last));
  assert.equal(calls, 5);

  unsubscribe();
  ws.receive({ type: "X", id: "4" });
  assert.equal(calls, 5);
  t.gw.close();
  assert.equal(store.getSnapshot().state, "stopped");
});

test("the store keeps at most 256 types", async () => {
  const t = setup();
  const store = gatewayStore(t.gw);
  const ws = await started(t);
  ws.connected();
  for (let i = 0; i < 300; i++) ws.receive({ type: `T${i}`, id: `${i}` });
  const keys = Object.keys(store.getSnapshot().last);
  assert.equal(keys.length, 256);
  assert.equal(keys[0], "T44");
  assert.equal(keys.at(-1), "T299");
  t.gw.close();
});
