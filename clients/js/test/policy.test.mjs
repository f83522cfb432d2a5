import { test } from "node:test";
import assert from "node:assert/strict";
import { closeAction } from "../dist/index.js";
import { setup, started, flush } from "./helpers.mjs";

const TABLE = {
  1000: "backoff", // the server closed without saying why: resume
  1001: "backoff", // drain
  1002: "backoff",
  1003: "stop", // binary frame: a bug
  1006: "backoff", // lost
  1007: "stop", // bad UTF-8: a bug
  1008: "backoff-cap", // abuse
  1009: "stop", // too big: a bug
  1011: "backoff",
  1013: "backoff", // history unavailable: same since, later
  4001: "token",
  4008: "backoff", // slow consumer
  4029: "backoff-cap", // per-user cap
  4999: "backoff", // unknown: resume
};

test("the close-code table", () => {
  for (const [code, action] of Object.entries(TABLE)) {
    assert.equal(closeAction(Number(code)), action, `close ${code}`);
  }
});

for (const code of [1003, 1007, 1009]) {
  test(`close ${code} stops: a client bug is not retried`, async () => {
    const t = setup();
    const ws = await started(t);
    ws.connected();
    ws.serverClose(code);
    assert.equal(t.gw.state, "stopped");
    assert.equal(t.log.errors.length, 1);
    assert.equal(t.log.errors[0].code, "client_bug");
    assert.equal(t.log.errors[0].closeCode, code);
    assert.equal(t.clock.pending, 0, "no timer left");
    t.clock.advance(120_000);
    await flush();
    assert.equal(t.WebSocket.instances.length, 1, "never reconnected");
  });
}

for (const code of [1008, 4029]) {
  test(`close ${code} waits from the cap`, async () => {
    const t = setup({ random: () => 0 });
    const ws = await started(t);
    ws.serverClose(code);
    assert.deepEqual(t.clock.delays(), [15_000]);
    t.clock.advance(14_999);
    assert.equal(t.WebSocket.instances.length, 1);
    t.clock.advance(1);
    await flush();
    assert.equal(t.WebSocket.instances.length, 2);
    t.gw.close();
  });
}

for (const code of [1000, 1001, 1002, 1006, 1011, 1013, 4008, 4999]) {
  test(`close ${code} reconnects with backoff and since`, async () => {
    const t = setup({ random: () => 0 });
    const ws = await started(t);
    ws.connected({ id: "01AAAAAAAAAAAAAAAAAAAAAAAA" });
    if (code === 1013) ws.receive({ type: "ERROR", data: { code: "history_unavailable", message: "later" } });
    ws.serverClose(code);
    assert.equal(t.gw.state, "disconnected");
    assert.deepEqual(t.clock.delays(), [500]);
    t.clock.advance(500);
    await flush();
    assert.equal(t.WebSocket.instances.length, 2);
    assert.equal(new URL(t.WebSocket.last.url).searchParams.get("since"), "01AAAAAAAAAAAAAAAAAAAAAAAA");
    assert.equal(t.log.errors.length, 0);
    t.gw.close();
  });
}

test("1013 keeps the same since on every retry", async () => {
  const t = setup({ random: () => 0 });
  let ws = await started(t);
  ws.connected({ id: "01BBBBBBBBBBBBBBBBBBBBBBBB" });
  ws.serverClose(1006);
  for (let i = 0; i < 3; i++) {
    t.clock.advance(t.clock.delays()[0]);
    await flush();
    ws = t.WebSocket.last;
    assert.equal(new URL(ws.url).searchParams.get("since"), "01BBBBBBBBBBBBBBBBBBBBBBBB");
    ws.open();
    ws.receive({ type: "ERROR", data: { code: "history_unavailable", message: "Redis is unreachable" } });
    ws.serverClose(1013);
  }
  assert.equal(t.WebSocket.instances.length, 4);
  assert.deepEqual(t.clock.delays(), [4000], "backing off: 0.5, 1, 2, then 4 s");
  t.gw.close();
});
