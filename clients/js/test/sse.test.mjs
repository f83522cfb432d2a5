import { test } from "node:test";
import assert from "node:assert/strict";
import { setup, flush } from "./helpers.mjs";

async function sseStarted(options = {}) {
  const t = setup({ transport: "sse", ...options });
  t.gw.connect();
  await flush();
  return [t, t.EventSource.last];
}

const params = (es) => new URL(es.url).searchParams;

test("SSE: the token and the rooms in the query, no since at first; events by name", async () => {
  const t = setup({ transport: "sse", tokens: ["tok1"] });
  const alerts = [];
  t.gw.on("BUDGET_ALERT", (data) => alerts.push(data));
  const sub = t.gw.subscribe("household-7");
  t.gw.subscribe("team-1");
  t.gw.connect();
  await flush();
  const es = t.EventSource.last;
  assert.equal(params(es).get("token"), "tok1");
  assert.equal(params(es).get("rooms"), "household-7,team-1");
  assert.equal(params(es).get("since"), null);
  for (const name of ["CONNECTED", "TOKEN_EXPIRING", "ERROR", "BUDGET_ALERT", "message"]) {
    assert.ok(es.names.includes(name), `listens to ${name}`);
  }
  es.connected({ id: "01S1" });
  assert.equal(t.gw.state, "connected");
  await sub; // the gateway accepted ?rooms=
  es.emit("BUDGET_ALERT", { type: "BUDGET_ALERT", id: "01A", data: { spent: 460 } });
  es.emit("BUDGET_ALERT", { type: "BUDGET_ALERT", id: "01A", data: { spent: 460 } });
  assert.deepEqual(alerts, [{ spent: 460 }], "deduplicated by id");
  assert.equal(t.gw.lastId, "01A");
  t.gw.close();
  assert.equal(es.readyState, 2);
});

test("SSE: subscribe and unsubscribe once connected are refused", async () => {
  const [t, es] = await sseStarted();
  es.connected();
  await assert.rejects(t.gw.subscribe("r"), { code: "unsupported_over_sse" });
  await assert.rejects(t.gw.unsubscribe("r"), { code: "unsupported_over_sse" });
  t.gw.close();
  // Closed again: a subscribe is taken for the next connect()'s ?rooms=.
  let result = "pending";
  t.gw.subscribe("r").then(() => (result = "ok"), (e) => (result = e.code));
  await flush();
  assert.equal(result, "pending", "resolves on the next CONNECTED");
  t.gw.connect();
  await flush();
  assert.equal(params(t.EventSource.last).get("rooms"), "r");
  t.EventSource.last.connected();
  await flush();
  assert.equal(result, "ok");
  t.gw.close();
});

test("SSE: '*' sees the types listened to: on(type), added later too, and the types option", async () => {
  const [t, es] = await sseStarted({ types: ["GOAL_ACHIEVED"] });
  es.connected();
  assert.ok(es.names.includes("GOAL_ACHIEVED"));
  assert.ok(!es.names.includes("NEW_TRANSACTION"));
  t.gw.on("NEW_TRANSACTION", () => {});
  assert.ok(es.names.includes("NEW_TRANSACTION"), "a listener added to the open stream");
  es.emit("GOAL_ACHIEVED", { type: "GOAL_ACHIEVED", id: "1", data: {} });
  es.emit("NEW_TRANSACTION", { type: "NEW_TRANSACTION", id: "2", data: {} });
  es.emit("UNHEARD", { type: "UNHEARD", id: "3", data: {} });
  assert.deepEqual(t.log.messages.map((m) => m.type), ["GOAL_ACHIEVED", "NEW_TRANSACTION"]);
  t.gw.close();
});

test("SSE: EventSource's own reconnect is followed, not replaced", async () => {
  const [t, es] = await sseStarted();
  es.connected({ id: "01S1" });
  es.retry();
  assert.equal(t.gw.state, "disconnected");
  assert.equal(t.clock.pending, 0, "EventSource waits by itself");
  es.open();
  assert.equal(t.gw.state, "connecting");
  es.connected({ id: "01S2", recovered: false });
  assert.equal(t.gw.state, "connected");
  assert.equal(t.log.gaps, 1);
  assert.equal(t.EventSource.instances.length, 1);
  t.gw.close();
});

test("SSE: refused (CLOSED): one new token and a new EventSource with since; refused again: stopped", async () => {
  const [t, es1] = await sseStarted({ tokens: ["a", "b", "c"] });
  es1.connected({ id: "01S1" });
  es1.emit("X", { type: "X", id: "01M" }); // not listened to: not seen
  t.gw.on("Y", () => {});
  es1.emit("Y", { type: "Y", id: "01N" });
  es1.fail(); // its own reconnect got a 401 at the token's expiry
  await flush();
  assert.equal(t.log.tokenCalls, 2);
  const es2 = t.EventSource.last;
  assert.notEqual(es2, es1);
  assert.equal(params(es2).get("token"), "b");
  assert.equal(params(es2).get("since"), "01N");

  es2.fail();
  await flush();
  assert.equal(t.gw.state, "stopped");
  assert.equal(t.log.errors.at(-1).code, "sse_refused");
  assert.equal(t.log.tokenCalls, 2);
  assert.equal(t.EventSource.instances.length, 2);
});

test("SSE: a refusal after a CONNECTED gets a new token again", async () => {
  const [t, es1] = await sseStarted({ tokens: ["a", "b", "c"] });
  es1.fail();
  await flush();
  t.EventSource.last.connected();
  t.EventSource.last.fail();
  await flush();
  assert.equal(t.EventSource.instances.length, 3);
  assert.equal(params(t.EventSource.last).get("token"), "c");
  assert.equal(t.gw.state, "connecting");
  t.gw.close();
});

test("SSE: TOKEN_EXPIRING opens a stream with the new token; the old one closes when it is CONNECTED", async () => {
  const [t, es1] = await sseStarted({ tokens: ["a", "b"] });
  t.gw.on("NEW_TRANSACTION", () => {});
  es1.connected({ id: "01S1" });
  es1.emit("TOKEN_EXPIRING", { type: "TOKEN_EXPIRING", data: { exp: 1 } });
  await flush();
  const es2 = t.EventSource.last;
  assert.equal(t.EventSource.instances.length, 2);
  assert.equal(params(es2).get("token"), "b");
  assert.equal(params(es2).get("since"), "01S1");
  es1.emit("NEW_TRANSACTION", { type: "NEW_TRANSACTION", id: "01T1" }); // still live
  es2.connected({ id: "01S2", recovered: true, replayed: 1 });
  assert.equal(es1.readyState, 2, "the old stream is closed");
  es2.emit("NEW_TRANSACTION", { type: "NEW_TRANSACTION", id: "01T1" }); // replayed: dropped
  es2.emit("NEW_TRANSACTION", { type: "NEW_TRANSACTION", id: "01T2" });
  assert.deepEqual(t.log.messages.map((m) => m.id), ["01T1", "01T2"]);
  assert.equal(t.gw.state, "connected");
  assert.deepEqual(t.log.states, ["connecting", "connected"], "no flap during the swap");
  t.gw.close();
  assert.equal(es2.readyState, 2);
});

test("SSE: a new stream that fails during a swap leaves the old one", async () => {
  const [t, es1] = await sseStarted({ tokens: ["a", "b", "c"] });
  es1.connected();
  es1.emit("TOKEN_EXPIRING", { type: "TOKEN_EXPIRING", data: { exp: 1 } });
  await flush();
  t.EventSource.last.fail();
  assert.equal(t.gw.state, "connected");
  assert.equal(es1.readyState, 1);
  t.gw.close();
});

test("SSE: subscribe before connect resolves on CONNECTED, rejects if stopped first", async () => {
  const t = setup({ transport: "sse" });
  const sub = t.gw.subscribe("r");
  let result = "pending";
  sub.then(() => (result = "ok"), (e) => (result = e.code));
  t.gw.connect();
  await flush();
  t.EventSource.last.fail();
  await flush();
  t.EventSource.last.fail();
  await flush();
  assert.equal(result, "sse_refused");
});

test("SSE: a stream broken right after a CONNECTED that announced a replay resumes from lastId, not from CONNECTED's id", async () => {
  const [t, es1] = await sseStarted();
  t.gw.on("X", () => {});
  es1.connected({ id: "01C1" });
  es1.emit("X", { type: "X", id: "01M1" });
  es1.retry();
  es1.open();
  es1.connected({ id: "01C2", recovered: true, replayed: 2 });
  es1.retry(); // EventSource would send Last-Event-ID: 01C2, past the two replayed messages
  assert.equal(es1.readyState, 2, "that EventSource is closed");
  const es2 = t.EventSource.last;
  assert.notEqual(es2, es1);
  assert.equal(params(es2).get("since"), "01M1");
  es2.retry(); // a plain break: EventSource's own reconnect is kept
  assert.equal(t.EventSource.instances.length, 2);
  assert.equal(t.gw.state, "disconnected");
  t.gw.close();
});

test("SSE: a new stream whose token expires no later is not swapped again and again", async () => {
  const [t, es1] = await sseStarted({ tokens: ["a"] });
  es1.connected();
  es1.emit("TOKEN_EXPIRING", { type: "TOKEN_EXPIRING", data: { exp: 100 } });
  await flush();
  const es2 = t.EventSource.last;
  es2.connected({ id: "01S2" });
  es2.emit("TOKEN_EXPIRING", { type: "TOKEN_EXPIRING", data: { exp: 100 } });
  await flush();
  assert.equal(t.EventSource.instances.length, 2);
  assert.equal(t.log.tokenCalls, 2);
  t.gw.close();
});
