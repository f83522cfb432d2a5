import { test } from "node:test";
import assert from "node:assert/strict";
import { Gateway } from "../dist/index.js";
import { setup, started, flush, fakeWebSocketClass } from "./helpers.mjs";

test("the token goes in the subprotocols, never in the URL", async () => {
  const t = setup({ tokens: ["secret.jwt.value"] });
  const ws = await started(t);
  assert.equal(t.log.tokenCalls, 1, "token() at start");
  assert.deepEqual(ws.protocols, ["ws-gateway", "bearer.secret.jwt.value"]);
  assert.equal(ws.url, "wss://gw.test/ws");
  assert.ok(!ws.url.includes("secret"));
  assert.deepEqual(t.log.states, ["connecting"]);
  ws.connected();
  assert.deepEqual(t.log.states, ["connecting", "connected"]);
  t.gw.close();
});

test("a plain string token works too", async () => {
  const WebSocket = fakeWebSocketClass();
  const gw = new Gateway({ url: "wss://gw.test/ws", token: "fixed", WebSocket });
  gw.connect();
  await flush();
  assert.deepEqual(WebSocket.last.protocols, ["ws-gateway", "bearer.fixed"]);
  gw.close();
});

test("TOKEN_EXPIRING: a new token, sent as AUTH_REFRESH, and used for the next connection", async () => {
  const t = setup({ tokens: ["t1", "t2"], random: () => 0 });
  const ws = await started(t);
  ws.connected();
  ws.receive({ type: "TOKEN_EXPIRING", data: { exp: 1763812345 } });
  ws.receive({ type: "TOKEN_EXPIRING", data: { exp: 1763812345 } }); // a second one while the first is under way
  await flush();
  assert.equal(t.log.tokenCalls, 2);
  assert.deepEqual(ws.frames, [{ type: "AUTH_REFRESH", token: "t2" }]);
  ws.receive({ type: "AUTH_REFRESHED", data: { exp: 1763815945 } });
  assert.equal(t.gw.state, "connected");
  assert.equal(t.log.errors.length, 0);

  ws.serverClose(1006);
  t.clock.advance(500);
  await flush();
  assert.deepEqual(t.WebSocket.last.protocols, ["ws-gateway", "bearer.t2"]);
  assert.equal(t.log.tokenCalls, 2);
  t.gw.close();
});

test("4001: one new token and a reconnect at once; 4001 again before CONNECTED stops", async () => {
  const t = setup({ tokens: ["old", "new", "newer"] });
  const ws1 = await started(t);
  ws1.open();
  ws1.receive({ type: "ERROR", data: { code: "token_expired", message: "the token has expired" } });
  ws1.serverClose(4001);
  await flush();
  assert.equal(t.log.tokenCalls, 2, "one new token");
  assert.equal(t.WebSocket.instances.length, 2, "reconnected without waiting");
  const ws2 = t.WebSocket.last;
  assert.deepEqual(ws2.protocols, ["ws-gateway", "bearer.new"]);

  ws2.open();
  ws2.receive({ type: "ERROR", data: { code: "invalid_token", message: "bad signature" } });
  ws2.serverClose(4001);
  await flush();
  assert.equal(t.gw.state, "stopped");
  assert.equal(t.log.tokenCalls, 2, "no third token");
  assert.equal(t.log.errors.length, 1);
  assert.equal(t.log.errors[0].code, "invalid_token");
  assert.equal(t.log.errors[0].closeCode, 4001);
  assert.equal(t.clock.pending, 0);
  assert.deepEqual(t.log.states.slice(-1), ["stopped"]);
});

test("4001 after a CONNECTED (expiry without refresh) gets a new token again", async () => {
  const t = setup({ tokens: ["a", "b", "c"] });
  const ws1 = await started(t);
  ws1.connected();
  ws1.serverClose(4001);
  await flush();
  const ws2 = t.WebSocket.last;
  assert.deepEqual(ws2.protocols, ["ws-gateway", "bearer.b"]);
  ws2.connected();
  ws2.serverClose(4001);
  await flush();
  assert.equal(t.WebSocket.instances.length, 3);
  assert.deepEqual(t.WebSocket.last.protocols, ["ws-gateway", "bearer.c"]);
  assert.equal(t.gw.state, "connecting");
  t.gw.close();
});

test("a refused AUTH_REFRESH closes with 4001: one new token, as after any 4001", async () => {
  const t = setup({ tokens: ["a", "b", "c"] });
  const ws = await started(t);
  ws.connected();
  ws.receive({ type: "TOKEN_EXPIRING", data: { exp: 1 } });
  await flush();
  ws.receive({ type: "ERROR", data: { code: "invalid_token", message: "another user" } });
  ws.serverClose(4001);
  await flush();
  assert.equal(t.log.tokenCalls, 3);
  assert.deepEqual(t.WebSocket.last.protocols, ["ws-gateway", "bearer.c"]);
  t.gw.close();
});

test("token() failing: an error event, then a retry with backoff", async () => {
  const WebSocket = fakeWebSocketClass();
  const timers = [];
  let calls = 0;
  const errors = [];
  const gw = new Gateway({
    url: "wss://gw.test/ws",
    WebSocket,
    token: async () => {
      if (++calls === 1) throw new Error("backend down");
      return "ok";
    },
    random: () => 0,
    setTimeout: (fn, ms) => timers.push({ fn, ms }),
    clearTimeout: () => {},
  });
  gw.on("error", (e) => errors.push(e));
  gw.connect();
  await flush();
  assert.equal(errors[0].code, "token_unavailable");
  assert.equal(gw.state, "disconnected");
  assert.equal(WebSocket.instances.length, 0);
  assert.equal(timers.length, 1);
  assert.equal(timers[0].ms, 500);
  timers[0].fn();
  await flush();
  assert.deepEqual(WebSocket.last.protocols, ["ws-gateway", "bearer.ok"]);
  gw.close();
});

test("a new token that does not expire later is not asked for again and again", async () => {
  const t = setup({ tokens: ["same"] });
  const ws = await started(t);
  ws.connected();
  ws.receive({ type: "TOKEN_EXPIRING", data: { exp: 100 } });
  await flush();
  ws.receive({ type: "AUTH_REFRESHED", data: { exp: 100 } });
  // Less than 60 s left: the gateway says it again at once.
  ws.receive({ type: "TOKEN_EXPIRING", data: { exp: 100 } });
  await flush();
  assert.equal(t.log.tokenCalls, 2);
  assert.deepEqual(ws.frames, [{ type: "AUTH_REFRESH", token: "same" }]);
  // A later token's own TOKEN_EXPIRING is answered.
  ws.receive({ type: "TOKEN_EXPIRING", data: { exp: 3700 } });
  await flush();
  assert.equal(t.log.tokenCalls, 3);
  assert.equal(ws.frames.length, 2);
  t.gw.close();
});
