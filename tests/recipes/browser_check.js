// Checks the reconnect policy of the README's browser snippet (the block
// marked `<!-- recipe: browser -->`, path in argv[2]) with a fake WebSocket,
// fake timers and a fake clock: no browser, no network, no dependency.
// The snippet's own names are its interface here: it defines connect(token)
// and calls getNewToken(), tellUser(), refetchStateOverRest() and
// showBudgetAlert(), which the page provides. Run by tests/readme.rs; exits 1
// with the failed check on stderr.
"use strict";
const fs = require("node:fs");
const vm = require("node:vm");
const assert = require("node:assert/strict");

const sockets = []; // every WebSocket the snippet opened, oldest first
const timers = []; // pending setTimeout callbacks
let now = 1_000_000; // the fake clock, ms
let tokens = 1; // tokens handed out so far
const calls = { getNewToken: 0, tellUser: 0, refetch: 0, shown: [] };

class FakeWebSocket {
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    sockets.push(this);
  }
}

const ctx = vm.createContext({
  WebSocket: FakeWebSocket,
  setTimeout: (fn, ms) => timers.push({ fn, ms }),
  Date: { now: () => now },
  Math,
  JSON,
  Set,
  Promise,
  encodeURIComponent,
  console: { log() {}, error() {} },
  getNewToken: () => {
    calls.getNewToken++;
    return Promise.resolve(`token${++tokens}`);
  },
  tellUser: () => calls.tellUser++,
  refetchStateOverRest: () => calls.refetch++,
  showBudgetAlert: (data) => calls.shown.push(data),
});
vm.runInContext(fs.readFileSync(process.argv[2], "utf8"), ctx, { filename: "README browser snippet" });

const last = () => sockets[sockets.length - 1];
const send = (msg) => last().onmessage({ data: JSON.stringify(msg) });
const close = (code) => last().onclose({ code, reason: "", wasClean: code !== 1006 });
const connected = (id, recovered = null) =>
  send({ type: "CONNECTED", id, data: { connection_id: "c", user_id: "42", instance: "i", heartbeat_secs: 25, recovered, replayed: 0 } });
const flush = () => new Promise((resolve) => setImmediate(resolve));

// Fires the one pending reconnect timer (advancing the clock) and returns its delay.
function reconnect(what) {
  assert.equal(timers.length, 1, `${what}: exactly one reconnect timer should be pending, found ${timers.length}`);
  const { fn, ms } = timers.pop();
  now += ms;
  const before = sockets.length;
  fn();
  assert.equal(sockets.length, before + 1, `${what}: the timer should open a new WebSocket`);
  return ms;
}

function assertStopped(what, socketsBefore) {
  assert.equal(timers.length, 0, `${what}: no reconnect should be scheduled`);
  assert.equal(sockets.length, socketsBefore, `${what}: no new WebSocket should be opened`);
}

function assertDelay(what, ms, base) {
  assert.ok(ms >= base / 2 && ms <= base, `${what}: delay ${ms} ms should be jittered within [${base / 2}, ${base}] ms`);
}

(async () => {
  vm.runInContext("connect('token1')", ctx);
  assert.equal(sockets.length, 1, "connect() opens one WebSocket");
  assert.deepEqual([...last().protocols], ["ws-gateway", "bearer.token1"], "token as subprotocol");
  assert.ok(!last().url.includes("since="), `no since on the first connect: ${last().url}`);

  // CONNECTED's top-level id is a resume point by itself.
  connected("01CONNECTED0000000000000000");
  close(1006);
  assertDelay("first reconnect after 1006", reconnect("1006"), 1000);
  assert.ok(last().url.endsWith("?since=01CONNECTED0000000000000000"), `resume from CONNECTED's id: ${last().url}`);

  // Repeated ids are dropped; the resume point is the last id seen.
  connected("01CONNECTED0000000000000001");
  send({ type: "BUDGET_ALERT", id: "01MSG00000000000000000000A", data: { n: 1 } });
  send({ type: "BUDGET_ALERT", id: "01MSG00000000000000000000A", data: { n: 1 } });
  assert.equal(calls.shown.length, 1, "a repeated id must be dropped");

  // A gateway that keeps refusing: jittered exponential backoff, capped at 30 s.
  const bases = [2000, 4000, 8000, 16000, 30000, 30000, 30000];
  for (const [i, base] of bases.entries()) {
    close(1006);
    assertDelay(`refused reconnect #${i + 2}`, reconnect("1006"), base);
    assert.ok(last().url.endsWith("?since=01MSG00000000000000000000A"), `since on every reconnect: ${last().url}`);
  }

  // A connection that lasted resets the backoff.
  connected("01CONNECTED0000000000000002");
  now += 120_000;
  close(1001);
  assertDelay("reconnect after a connection that lasted", reconnect("1001"), 1000);

  // 1008 and 4029 start at the cap.
  for (const code of [1008, 4029]) {
    now += 120_000; // even right after a connection that lasted
    close(code);
    assertDelay(`reconnect after ${code}`, reconnect(String(code)), 30000);
  }

  // 4001: one new token, then stop and tell the user if it is refused too.
  let n = sockets.length;
  close(4001);
  await flush();
  assert.equal(calls.getNewToken, 1, "4001 asks for a new token");
  assert.equal(sockets.length, n + 1, "and reconnects with it");
  assert.deepEqual([...last().protocols], ["ws-gateway", "bearer.token2"], "with the new token");
  assert.equal(timers.length, 0, "at once, not through a timer");
  n = sockets.length;
  close(4001);
  await flush();
  assert.equal(calls.getNewToken, 1, "a refused new token is not followed by another");
  assert.equal(calls.tellUser, 1, "the user is told");
  assertStopped("4001 twice", n);

  // A token accepted since (CONNECTED) gets one new token again at its expiry.
  vm.runInContext("connect('token9')", ctx);
  connected("01CONNECTED0000000000000003");
  now += 120_000;
  close(4001);
  await flush();
  assert.equal(calls.getNewToken, 2, "4001 after an accepted token asks for a new token again");

  // Client bugs stop.
  for (const code of [1003, 1007, 1009]) {
    vm.runInContext("connect('token9')", ctx);
    connected(`01CONNECTED00000000000${code}0`);
    n = sockets.length;
    close(code);
    await flush();
    assertStopped(`close ${code}`, n);
  }

  // recovered:false asks the page to re-fetch its state.
  vm.runInContext("connect('token9')", ctx);
  connected("01CONNECTED0000000000000004", false);
  assert.equal(calls.refetch, 1, "recovered:false calls refetchStateOverRest()");

  console.log("browser snippet: reconnect policy as documented");
})().catch((err) => {
  console.error(err && err.message ? err.message : err);
  process.exit(1);
});
