// Drives the real socket.io-client (tests/socketio/package.json pins it) for
// the Rust tests: tests/common/socketio.rs spawns `node driver.mjs` with
// NODE_PATH=<install dir>/node_modules (tests/socketio/install.sh).
//
// Protocol: one JSON object per line both ways.
//   stdin, commands:
//     {"cmd":"connect","url":"http://127.0.0.1:PORT", ...io() options...}
//         every key but cmd, url and raw goes to io(url, opts) as is (path,
//         auth, transports, query, reconnection, reconnectionDelay,
//         reconnectionDelayMax, reconnectionAttempts, timeout,
//         tryAllTransports, ackTimeout, ...). Defaults added here:
//         transports ["websocket"], forceNew true (a Manager of its own, never
//         the cache's), reconnectionAttempts 20 and timeout 10000 (bounded).
//         "raw":true also reports every Engine.IO packet both ways.
//         A second connect first disconnects the previous socket.
//     {"cmd":"emit","event":"subscribe","args":[...],"ack":true,"tag":"x","timeout":5000}
//     {"cmd":"disconnect"}       socket.disconnect() (no reconnection)
//     {"cmd":"connect_again"}    socket.connect() (same Socket: pid and offset kept)
//     {"cmd":"close_transport"}  drop the WebSocket without a close frame
//     {"cmd":"state"}            reports {"ev":"state",...,"tag":...}
//     {"cmd":"exit"}             exit 0
//   stdout, events:
//     {"ev":"ready","version":"4.8.x","node":"v20..."}   once, at start
//     {"ev":"connect","id":...,"recovered":bool,"pid":...}
//     {"ev":"connect_error","message":...,"data":...,"description":...}
//     {"ev":"disconnect","reason":...,"description":...,"code":...,"close_reason":...}
//     {"ev":"event","name":...,"args":[...]}             every server event
//     {"ev":"ack","tag":...,"args":[...]} / {"ev":"ack_timeout","tag":...,"message":...}
//     {"ev":"emitted","tag":...}                         an emit without ack was sent
//     {"ev":"reconnect_attempt","n":...} {"ev":"reconnect","n":...}
//     {"ev":"reconnect_error","message":...} {"ev":"reconnect_failed"}
//     {"ev":"packet","dir":"in"|"out","type":...,"data":...}   with "raw":true
//     {"ev":"error","message":...,"line":...,"tag":...}   a bad command (its tag if any)
//
// How socket.io-client 4.8 recovers (read in node_modules/socket.io-client/
// build/cjs/socket.js, which this driver loads; build/esm/socket.js has the
// same code):
//   - onconnect(id, pid) [cjs 609-618, esm 584-592]:
//       this.recovered = pid && this._pid === pid; this._pid = pid;
//     pid is the CONNECT reply's `pid` (40{"sid":..,"pid":..}); so recovered
//     is true exactly when the server echoes the pid this socket sent, and
//     (undefined, reported here as false) when the reply has no pid.
//   - emitEvent(args) [cjs 550-561, esm 528-539]: after the listeners ran, if
//     this._pid is set and the event's last argument is a string, it becomes
//     this._lastOffset. Without a pid no offset is ever kept.
//   - _sendConnectPacket(data) [cjs 440-447, esm 421-428]: the CONNECT packet's
//     data is Object.assign({ pid: this._pid, offset: this._lastOffset }, auth)
//     when this._pid is set, else auth alone. So a reconnect sends
//     40{"pid":"<pid>","offset":"<last offset>","token":"..."}; JSON drops an
//     undefined offset (no event received yet), and an auth key named pid or
//     offset would override them. Nothing is sent at the Engine.IO level.
//   - _pid and _lastOffset live on the Socket and survive disconnect(): a
//     Manager reconnection and a manual socket.connect() both send them; only
//     a new io() (a new connect command here) starts without.
//
// close_transport: calls terminate() on the `ws` WebSocket under the engine
// (socket.io.engine.transport.ws), which destroys the TCP socket without a
// close frame, as a network drop would. ws then fires close (code 1006), the
// engine closes with "transport close", the Manager's onclose reconnects (its
// skipReconnect is false) and the Socket sends pid and offset. The other
// candidate, socket.io.engine.close(), also reconnects, but closes cleanly
// (a close frame, reason "forced close"): the server would see an orderly
// close, not a drop.
import { createRequire } from "node:module";
import { createInterface } from "node:readline";

// An ES module's `import` ignores NODE_PATH; require() honours it.
const require = createRequire(import.meta.url);

function out(obj) {
  // stdout to a pipe is synchronous on Linux: each line is written whole.
  process.stdout.write(JSON.stringify(obj) + "\n");
}

let io, version;
try {
  ({ io } = require("socket.io-client"));
  version = require("socket.io-client/package.json").version;
} catch (e) {
  process.stderr.write(`driver.mjs: cannot load socket.io-client (NODE_PATH=${process.env.NODE_PATH}): ${e.message}\n`);
  process.exit(2);
}

// Bounded lifetime, whatever the parent does (it also closes stdin on exit).
const maxSecs = Number(process.env.SIO_DRIVER_MAX_SECS || 600);
setTimeout(() => {
  process.stderr.write(`driver.mjs: exiting after ${maxSecs} s\n`);
  process.exit(3);
}, maxSecs * 1000).unref();

let socket = null;

// A value JSON can carry: functions (an ack the server asked for) dropped,
// errors as their message.
function plain(v) {
  if (v === undefined || typeof v === "function") return null;
  if (v instanceof Error) return { message: v.message };
  return v;
}

// The close code and reason when the description is a WebSocket close event
// ({description: "websocket connection closed", context: CloseEvent}; ws's
// CloseEvent keeps code and reason in getters that JSON.stringify skips).
function describe(description) {
  if (description === undefined || description === null) return {};
  const ctx = description.context;
  const r = {
    description:
      typeof description === "string"
        ? description
        : description.description !== undefined
          ? String(description.description)
          : description.message !== undefined
            ? String(description.message)
            : String(description),
  };
  if (ctx && typeof ctx.code === "number") {
    r.code = ctx.code;
    r.close_reason = ctx.reason === undefined ? null : String(ctx.reason);
  }
  return r;
}

function hookEngine(engine) {
  engine.on("packet", (p) => out({ ev: "packet", dir: "in", type: p.type, data: plain(p.data) }));
  engine.on("packetCreate", (p) => out({ ev: "packet", dir: "out", type: p.type, data: plain(p.data) }));
}

function connect(cmd) {
  if (typeof cmd.url !== "string") throw new Error("connect needs a string url");
  if (socket) {
    socket.disconnect();
    socket.offAny();
    socket.removeAllListeners();
    socket.io.removeAllListeners();
  }
  const { cmd: _c, url, raw, ...given } = cmd;
  const opts = {
    transports: ["websocket"],
    reconnectionAttempts: 20,
    timeout: 10000,
    ...given,
    forceNew: true,
    autoConnect: false,
  };
  const s = io(url, opts);
  socket = s;
  const manager = s.io;
  if (raw) {
    // Manager.open() makes a new engine for every (re)connection; hook each.
    const open = manager.open.bind(manager);
    manager.open = (fn) => {
      const r = open(fn);
      if (manager.engine) hookEngine(manager.engine);
      return r;
    };
  }
  s.on("connect", () =>
    out({ ev: "connect", id: s.id, recovered: Boolean(s.recovered), pid: s._pid ?? null }),
  );
  s.on("connect_error", (err) =>
    out({
      ev: "connect_error",
      message: err.message,
      data: plain(err.data),
      description: describe(err.description).description ?? null,
    }),
  );
  s.on("disconnect", (reason, description) =>
    out({ ev: "disconnect", reason, description: null, code: null, close_reason: null, ...describe(description) }),
  );
  s.onAny((name, ...args) => out({ ev: "event", name, args: args.map(plain) }));
  manager.on("reconnect_attempt", (n) => out({ ev: "reconnect_attempt", n }));
  manager.on("reconnect", (n) => out({ ev: "reconnect", n }));
  manager.on("reconnect_error", (err) => out({ ev: "reconnect_error", message: err.message }));
  manager.on("reconnect_failed", () => out({ ev: "reconnect_failed" }));
  s.connect();
}

function needSocket(what) {
  if (!socket) throw new Error(`${what} before connect`);
  return socket;
}

function emit(cmd) {
  const s = needSocket("emit");
  if (typeof cmd.event !== "string") throw new Error("emit needs a string event");
  const args = cmd.args === undefined ? [] : cmd.args;
  if (!Array.isArray(args)) throw new Error("emit args must be an array");
  const tag = cmd.tag ?? null;
  if (cmd.ack) {
    const ms = Number(cmd.timeout ?? 5000);
    s.timeout(ms).emit(cmd.event, ...args, (err, ...resp) => {
      if (err) out({ ev: "ack_timeout", tag, message: err.message });
      else out({ ev: "ack", tag, args: resp.map(plain) });
    });
  } else {
    s.emit(cmd.event, ...args);
    out({ ev: "emitted", tag });
  }
}

function closeTransport() {
  const s = needSocket("close_transport");
  const ws = s.io.engine && s.io.engine.transport && s.io.engine.transport.ws;
  if (!ws || typeof ws.terminate !== "function") throw new Error("close_transport: no open WebSocket transport");
  ws.terminate();
}

function state(cmd) {
  const s = socket;
  out({
    ev: "state",
    tag: cmd.tag ?? null,
    connected: s ? s.connected : false,
    active: s ? s.active : false,
    id: s?.id ?? null,
    recovered: s ? Boolean(s.recovered) : false,
    pid: s?._pid ?? null,
    offset: s?._lastOffset ?? null,
  });
}

function shutdown(code) {
  try {
    if (socket) socket.disconnect();
  } catch {
    // exiting anyway
  }
  process.exit(code);
}

function handle(line) {
  if (line.trim() === "") return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    out({ ev: "error", message: `not JSON: ${e.message}`, line });
    return;
  }
  try {
    if (cmd === null || typeof cmd !== "object" || Array.isArray(cmd)) throw new Error("a command is a JSON object");
    switch (cmd.cmd) {
      case "connect":
        return connect(cmd);
      case "emit":
        return emit(cmd);
      case "disconnect":
        needSocket("disconnect").disconnect();
        return;
      case "connect_again":
        needSocket("connect_again").connect();
        return;
      case "close_transport":
        return closeTransport();
      case "state":
        return state(cmd);
      case "exit":
        return shutdown(0);
      default:
        throw new Error(`unknown cmd ${JSON.stringify(cmd.cmd)}`);
    }
  } catch (e) {
    const tag = cmd !== null && typeof cmd === "object" && cmd.tag !== undefined ? cmd.tag : null;
    out({ ev: "error", message: e.message, line, tag });
  }
}

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on("line", handle);
rl.on("close", () => shutdown(0));
out({ ev: "ready", version, node: process.version });
