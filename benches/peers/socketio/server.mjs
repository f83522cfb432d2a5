// The Socket.IO 4 peer of ws-gateway-bench: seed 000's real-time stack, the
// one ws-gateway replaces, so that one benchmark run can compare the two
// (BENCHMARKS.md, "Socket.IO, SSE and the Socket.IO peer").
//
// As in the seed: an HTTP server with `new Server(httpServer, { transports:
// ["websocket"] })`, the Redis adapter (`@socket.io/redis-adapter` over
// node-redis), an auth middleware that verifies the HS256 JWT in
// `socket.handshake.auth.token` with the gateway's secret, and each socket
// joined to the room `user:<sub>`.
//
// How messages reach it. In the seed the backend emits through
// `@socket.io/redis-emitter`, which publishes straight onto the adapter's
// channel. Here the load tool stays in Rust and publishes exactly what it
// publishes for the gateway, on the gateway's own channels (SPEC §3), once
// per message; this server subscribes to them with a third Redis client,
// parses each message once, and emits it with `io.emit` /
// `io.to("user:" + id).emit`, which goes through the adapter as the seed's
// backend-triggered emits do:
//
//   ws:broadcast  -> io.emit(msg.type, payload)
//   ws:user:<id>  -> io.to("user:" + id).emit(msg.type, payload)
//
// `payload` is the message's `data` when it has one, else the whole message
// (the gateway's default, `socketio.payload = "data"`). The adapter emits to
// the local sockets and publishes the packet once more for other nodes; it
// reads that copy back on its own subscription and drops it (same uid), so
// with one node nothing is delivered twice. Per message this server therefore
// does a little more Redis work than the seed's emitter path would (one extra
// publish, and decoding its own echo), a per-message cost that does not grow
// with the number of sockets; the fan-out to the sockets is the same.
//
// Usage (ws-gateway-bench starts it as `node server.mjs ...`, so that the pid
// it measures is this process):
//
//   GATEWAY_AUTH_SECRET=bench-secret node server.mjs \
//     [--listen 127.0.0.1:0] [--redis-url redis://127.0.0.1:6379]
//
// It listens on loopback only and prints one line that the tool waits for:
//   socketio-peer listening addr=127.0.0.1:PORT pid=PID
// GATEWAY_CONNECTION_PING_INTERVAL_SECS sets the Engine.IO ping interval as it
// does the gateway's (default 25 s; the ping timeout is 20 s in both).

import http from "node:http";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";
import jwt from "jsonwebtoken";

function fail(message) {
  console.error(`socketio-peer: ${message}`);
  process.exit(1);
}

function option(name, fallback) {
  const at = process.argv.indexOf(name);
  if (at === -1) return fallback;
  const value = process.argv[at + 1];
  if (value === undefined) fail(`${name} needs a value`);
  return value;
}

const listen = option("--listen", "127.0.0.1:0");
const redisUrl = option("--redis-url", "redis://127.0.0.1:6379");
const secret = process.env.GATEWAY_AUTH_SECRET ?? "";
if (secret === "") fail("set GATEWAY_AUTH_SECRET (the gateway's auth.secret)");
const pingSecs = Number(process.env.GATEWAY_CONNECTION_PING_INTERVAL_SECS ?? "25");
if (!Number.isFinite(pingSecs) || pingSecs <= 0) fail("bad GATEWAY_CONNECTION_PING_INTERVAL_SECS");

const split = listen.lastIndexOf(":");
const host = listen.slice(0, split);
const port = Number(listen.slice(split + 1));
// Benchmark traffic stays on this machine.
if (split < 0 || !host.startsWith("127.") || !Number.isInteger(port)) {
  fail(`--listen must be a 127.x.x.x:PORT address, got ${listen}`);
}

const pubClient = createClient({ url: redisUrl });
const subClient = pubClient.duplicate();
const relayClient = pubClient.duplicate();
for (const [name, client] of [["pub", pubClient], ["sub", subClient], ["relay", relayClient]]) {
  client.on("error", (e) => console.error(`socketio-peer: redis ${name}: ${e.message}`));
}
await Promise.all([pubClient.connect(), subClient.connect(), relayClient.connect()]);

const httpServer = http.createServer();
const io = new Server(httpServer, {
  transports: ["websocket"],
  pingInterval: pingSecs * 1000,
  pingTimeout: 20000,
});
io.adapter(createAdapter(pubClient, subClient));

io.use((socket, next) => {
  const token = socket.handshake.auth?.token;
  if (typeof token !== "string" || token === "") {
    next(new Error("missing_token"));
    return;
  }
  try {
    const claims = jwt.verify(token, secret, { algorithms: ["HS256"] });
    if (claims.sub === undefined || claims.sub === null) throw new Error("no sub");
    socket.data.userId = String(claims.sub);
    next();
  } catch (e) {
    next(new Error(e instanceof jwt.TokenExpiredError ? "token_expired" : "invalid_token"));
  }
});

io.on("connection", (socket) => {
  socket.join("user:" + socket.data.userId);
});

// Messages that are not a JSON object with a string `type` are dropped, as
// the gateway drops them (SPEC §3).
let dropped = 0;
function relay(target, raw) {
  let msg;
  try {
    msg = JSON.parse(raw);
  } catch {
    dropped += 1;
    return;
  }
  if (msg === null || typeof msg !== "object" || typeof msg.type !== "string") {
    dropped += 1;
    return;
  }
  target.emit(msg.type, msg.data !== undefined ? msg.data : msg);
}

const USER_PREFIX = "ws:user:";
await relayClient.subscribe("ws:broadcast", (raw) => relay(io, raw));
await relayClient.pSubscribe(USER_PREFIX + "*", (raw, channel) =>
  relay(io.to("user:" + channel.slice(USER_PREFIX.length)), raw),
);

httpServer.on("error", (e) => fail(`listen ${listen}: ${e.message}`));
httpServer.listen(port, host, () => {
  const address = httpServer.address();
  console.log(`socketio-peer listening addr=${address.address}:${address.port} pid=${process.pid}`);
});

function stop() {
  if (dropped > 0) console.error(`socketio-peer: dropped ${dropped} malformed messages`);
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
