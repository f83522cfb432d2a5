// The JavaScript client under a line protocol, for the Rust integration
// tests: they run `node clients/js/test/driver.mjs` (after `npm ci` and
// `npm run build` in clients/js), write commands to its stdin and read
// events from its stdout, one JSON object per line each way.
//
// stdin, one command a line:
//   {"cmd":"start","url":"ws://127.0.0.1:PORT/ws","transport":"ws"|"sse",
//    "tokens":["t1","t2",…],"types":["BUDGET_ALERT",…]}
//       new Gateway({url, transport, token, WebSocket: the `ws` package's,
//       EventSource: the `eventsource` package's}); token() returns the
//       next of `tokens` on each call, the last one again once they run
//       out, and reports {"ev":"token","n":<calls so far>} first;
//       registers on() for each of `types` and for "*", "state", "gap",
//       "error", then calls connect(). For "sse", the URL is the /sse one
//       (a ws:// or wss:// URL whose path is /ws is taken as its http(s)
//       /sse sibling, so either may be passed).
//       Optional "rooms":["r",…]: subscribed before connect() (over SSE
//       the only way: they go in ?rooms=), each reported as below with
//       "tag":null once CONNECTED accepted it.
//   {"cmd":"subscribe","room":"r","tag":"x"}
//   {"cmd":"unsubscribe","room":"r","tag":"x"}
//       → {"ev":"subscribed"|"unsubscribed","room":"r","tag":"x"}
//         or {"ev":"rejected","room":"r","code":"<error code>","tag":"x"}
//   {"cmd":"state","tag":"x"}
//       → {"ev":"state_now","state":…,"lastId":…|null,"tag":"x"}
//   {"cmd":"close"}   gw.close()
//   {"cmd":"exit"}    exit 0 (stdin's end: close, then exit 0)
//   "tag" is echoed as given, null when absent.
//
// stdout, one event a line:
//   {"ev":"ready"}                              once, before any command is read
//   {"ev":"message","type":…,"id":…|null,"data":…}
//       each message delivered, exactly once: from the "*" handler, which
//       gets every message but the control frames (CONNECTED, PONG,
//       SUBSCRIBED, UNSUBSCRIBED, AUTH_REFRESHED, TOKEN_EXPIRING, ERROR);
//       a control type listed in `types` is reported from its own handler
//       ("*" never sees it, so nothing is reported twice)
//   {"ev":"state","state":"connecting"|"connected"|"disconnected"|"stopped"}
//   {"ev":"gap"}                                CONNECTED said recovered:false
//   {"ev":"error","message":…,"code":…}        the client's "error" event
//   {"ev":"token","n":N}                        token() called, N-th time
//   {"ev":"bad_command","line":…,"message":…}   a line it could not carry out
//
// It exits by itself after 600 s, whatever the test does.
import { createInterface } from "node:readline";
import WebSocket from "ws";
import { EventSource } from "eventsource";
import { Gateway, CONTROL_TYPES } from "../dist/index.js";

const LIFETIME_MS = 600_000;

/** One event line; stdout to a pipe is synchronous on Linux, so none is lost at exit. */
function report(event) {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

let gw = null;

function start(cmd) {
  if (gw) throw new Error("already started");
  if (typeof cmd.url !== "string") throw new Error("start needs a url");
  const tokens = Array.isArray(cmd.tokens) && cmd.tokens.length > 0 ? cmd.tokens.map(String) : [""];
  let calls = 0;
  gw = new Gateway({
    url: cmd.transport === "sse" ? sseUrl(cmd.url) : cmd.url,
    transport: cmd.transport ?? "ws",
    token: () => {
      calls += 1;
      report({ ev: "token", n: calls });
      return tokens[Math.min(calls, tokens.length) - 1];
    },
    WebSocket,
    EventSource,
  });
  const message = (data, msg) => report({ ev: "message", type: msg.type, id: msg.id ?? null, data: data ?? null });
  for (const type of cmd.types ?? []) {
    // Any other type is reported by "*"; this on() is what makes SSE listen to it.
    gw.on(type, CONTROL_TYPES.has(type) ? message : () => {});
  }
  gw.on("*", message);
  gw.on("state", (state) => report({ ev: "state", state }));
  gw.on("gap", () => report({ ev: "gap" }));
  gw.on("error", (e) => report({ ev: "error", message: e.message, code: e.code ?? null }));
  for (const name of cmd.rooms ?? []) room({ room: name }, "subscribe");
  gw.connect();
}

/** ws://host/ws → http://host/sse (and wss → https); any other URL as given. */
function sseUrl(url) {
  const u = new URL(url);
  if (u.protocol !== "ws:" && u.protocol !== "wss:") return url;
  u.protocol = u.protocol === "ws:" ? "http:" : "https:";
  if (u.pathname === "/ws") u.pathname = "/sse";
  return u.toString();
}

function room(cmd, verb) {
  if (!gw) throw new Error(`${verb} before start`);
  const tag = cmd.tag ?? null;
  const done = verb === "subscribe" ? gw.subscribe(cmd.room) : gw.unsubscribe(cmd.room);
  done.then(
    () => report({ ev: `${verb}d`, room: cmd.room, tag }),
    (e) => report({ ev: "rejected", room: cmd.room, code: e.code ?? "error", tag }),
  );
}

function handle(line) {
  if (line.trim() === "") return;
  try {
    const cmd = JSON.parse(line);
    switch (cmd.cmd) {
      case "start":
        return start(cmd);
      case "subscribe":
      case "unsubscribe":
        return room(cmd, cmd.cmd);
      case "state":
        return report({ ev: "state_now", state: gw?.state ?? "disconnected", lastId: gw?.lastId ?? null, tag: cmd.tag ?? null });
      case "close":
        return gw?.close();
      case "exit":
        return exit();
      default:
        throw new Error(`unknown command ${JSON.stringify(cmd.cmd)}`);
    }
  } catch (e) {
    report({ ev: "bad_command", line, message: e instanceof Error ? e.message : String(e) });
  }
}

function exit() {
  gw?.close();
  process.exit(0);
}

setTimeout(exit, LIFETIME_MS).unref();
report({ ev: "ready" });
const input = createInterface({ input: process.stdin, terminal: false });
input.on("line", handle);
input.on("close", exit);
