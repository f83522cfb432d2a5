// The hooks in React itself: a server render (react-dom/server), which
// calls useSyncExternalStore's server snapshot and the hooks' bodies.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createElement } from "react";
import { renderToString } from "react-dom/server";
import { gatewayStore, useGatewayEvent, useGatewayState } from "../dist/react.js";
import { setup, started } from "./helpers.mjs";

test("useGatewayState renders the state and the last messages; useGatewayEvent renders", async () => {
  const t = setup();
  gatewayStore(t.gw); // recording from the start, for components that mount later
  const ws = await started(t);
  ws.connected();
  ws.receive({ type: "BALANCE_UPDATE", id: "1", data: { balance: 1234 } });
  function Balance({ gw }) {
    const { state, last } = useGatewayState(gw);
    useGatewayEvent(gw, "BALANCE_UPDATE", () => {});
    return createElement("p", null, `${state}: ${last.BALANCE_UPDATE?.data.balance}`);
  }
  const html = renderToString(createElement(Balance, { gw: t.gw }));
  assert.equal(html, "<p>connected: 1234</p>");
  t.gw.close();
});

test("the main entry does not import react", async () => {
  const { readFile } = await import("node:fs/promises");
  for (const file of ["index", "gateway", "store"]) {
    const js = await readFile(new URL(`../dist/${file}.js`, import.meta.url), "utf8");
    assert.ok(!/from "react"/.test(js), `${file}.js imports react`);
  }
});
