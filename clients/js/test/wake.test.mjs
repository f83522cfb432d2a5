import { test } from "node:test";
import assert from "node:assert/strict";
import { setup, started, flush } from "./helpers.mjs";

/** A window and document, as a browser has, on globalThis for one test. */
function fakeBrowser(t) {
  const listeners = { online: new Set(), visibilitychange: new Set() };
  const document = {
    visibilityState: "hidden",
    addEventListener: (type, fn) => listeners[type].add(fn),
    removeEventListener: (type, fn) => listeners[type].delete(fn),
  };
  globalThis.addEventListener = (type, fn) => listeners[type].add(fn);
  globalThis.removeEventListener = (type, fn) => listeners[type].delete(fn);
  globalThis.document = document;
  t.after(() => {
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
    delete globalThis.document;
  });
  const fire = (type) => {
    for (const fn of [...listeners[type]]) fn();
  };
  return { listeners, document, fire };
}

test("online while waiting to reconnect: reconnects at once, the timer cleared", async (tt) => {
  const browser = fakeBrowser(tt);
  const t = setup({ random: () => 0 });
  const ws = await started(t);
  ws.connected();
  ws.serverClose(1008); // a 15 s wait
  assert.deepEqual(t.clock.delays(), [15_000]);
  browser.fire("online");
  await flush();
  assert.equal(t.WebSocket.instances.length, 2);
  assert.equal(t.clock.delays().includes(15_000), false, "the backoff timer is gone");
  assert.equal(new URL(t.WebSocket.last.url).searchParams.get("since"), "01CONNECTED0000000000000000");
  t.gw.close();
});

test("the tab becoming visible while disconnected reconnects; hidden, or connected, does not", async (tt) => {
  const browser = fakeBrowser(tt);
  const t = setup({ random: () => 0 });
  const ws = await started(t);
  ws.connected();
  browser.document.visibilityState = "visible";
  browser.fire("visibilitychange");
  browser.fire("online");
  await flush();
  assert.equal(t.WebSocket.instances.length, 1, "connected: nothing to do");
  ws.serverClose(1006);
  browser.document.visibilityState = "hidden";
  browser.fire("visibilitychange");
  await flush();
  assert.equal(t.WebSocket.instances.length, 1);
  browser.document.visibilityState = "visible";
  browser.fire("visibilitychange");
  await flush();
  assert.equal(t.WebSocket.instances.length, 2);
  t.gw.close();
  assert.equal(browser.listeners.online.size, 0, "close() removes the listeners");
  assert.equal(browser.listeners.visibilitychange.size, 0);
});

test("without a window or document (Node), connect() works", async () => {
  assert.equal(typeof globalThis.document, "undefined");
  const t = setup();
  const ws = await started(t);
  ws.connected();
  assert.equal(t.gw.state, "connected");
  t.gw.close();
});
