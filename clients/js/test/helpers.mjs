// Fakes for the unit tests: a clock whose timers run only when a test
// advances it, a WebSocket and an EventSource the test drives by hand,
// and `setup()`, a Gateway wired to them that records what it emits.
import { Gateway } from "../dist/index.js";

/** Timers that fire only in advance(), in time order, on a clock that starts at 1,000,000 ms. */
export class FakeClock {
  t = 1_000_000;
  timers = new Map();
  seq = 0;
  setTimeout = (fn, ms) => {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn, seq: id });
    return id;
  };
  clearTimeout = (id) => {
    this.timers.delete(id);
  };
  now = () => this.t;

  /** Runs every timer due within `ms`, in order, then sets the time to the end. */
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let next = null;
      for (const [id, timer] of this.timers) {
        if (timer.at <= end && (!next || timer.at < next[1].at || (timer.at === next[1].at && timer.seq < next[1].seq))) next = [id, timer];
      }
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = next[1].at;
      next[1].fn();
    }
    this.t = end;
  }

  /** The delays of the pending timers, soonest first. */
  delays() {
    return [...this.timers.values()].map((t) => t.at - this.t).sort((a, b) => a - b);
  }

  get pending() {
    return this.timers.size;
  }
}

/** A WebSocket class whose instances record what the client did and let the test play the server. */
export function fakeWebSocketClass() {
  return class FakeWebSocket {
    static instances = [];
    static get last() {
      return FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
    }
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.sent = [];
      this.readyState = 0;
      this.closedWith = null;
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      FakeWebSocket.instances.push(this);
    }
    send(text) {
      this.sent.push(text);
    }
    close(code) {
      this.closedWith = code ?? 1005;
      this.readyState = 3;
    }
    // ---- the test's side ----
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    receive(message) {
      this.onmessage?.({ data: typeof message === "string" ? message : JSON.stringify(message) });
    }
    serverClose(code) {
      this.readyState = 3;
      this.onclose?.({ code, reason: "" });
    }
    /** The frames sent, parsed. */
    get frames() {
      return this.sent.map((s) => JSON.parse(s));
    }
    /** CONNECTED, as the gateway sends it first. */
    connected({ id = "01CONNECTED0000000000000000", recovered = null, replayed = 0, heartbeat_secs = 25 } = {}) {
      if (this.readyState === 0) this.open();
      this.receive({ type: "CONNECTED", id, data: { connection_id: "c", user_id: "42", instance: "i", heartbeat_secs, recovered, replayed } });
    }
  };
}

/** An EventSource class the test drives: emit(name, data, id), fail(), retry(). */
export function fakeEventSourceClass() {
  return class FakeEventSource {
    static instances = [];
    static get last() {
      return FakeEventSource.instances[FakeEventSource.instances.length - 1];
    }
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.listeners = new Map();
      this.onopen = this.onerror = null;
      FakeEventSource.instances.push(this);
    }
    addEventListener(name, fn) {
      if (!this.listeners.has(name)) this.listeners.set(name, []);
      this.listeners.get(name).push(fn);
    }
    close() {
      this.readyState = 2;
    }
    // ---- the test's side ----
    get names() {
      return [...this.listeners.keys()];
    }
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    /** One event named `name` whose data is `message` (an object is sent as JSON). */
    emit(name, message) {
      if (this.readyState === 2) return;
      if (this.readyState === 0) this.open();
      const data = typeof message === "string" ? message : JSON.stringify(message);
      for (const fn of this.listeners.get(name) ?? []) fn({ data, lastEventId: message?.id ?? "" });
    }
    connected({ id = "01SSECONNECTED00000000000000", recovered = null, replayed = 0 } = {}) {
      this.emit("CONNECTED", { type: "CONNECTED", id, data: { connection_id: "c", user_id: "42", instance: "i", heartbeat_secs: 25, recovered, replayed } });
    }
    /** The stream broke; EventSource reconnects by itself. */
    retry() {
      this.readyState = 0;
      this.onerror?.({});
    }
    /** A non-200 answer: EventSource gives up. */
    fail() {
      this.readyState = 2;
      this.onerror?.({});
    }
  };
}

/** Lets pending promise callbacks (token(), subscribe results) run. */
export const flush = () => new Promise((resolve) => setImmediate(resolve));

/**
 * A Gateway on fakes. `tokens`: what token() returns, in turn (the last
 * repeated). Returns the gateway, the fakes, and `log`: what it emitted.
 */
export function setup({ tokens = ["t1", "t2", "t3"], random = () => 0.5, transport = "ws", types, heartbeatSecs, url } = {}) {
  const clock = new FakeClock();
  const WebSocket = fakeWebSocketClass();
  const EventSource = fakeEventSourceClass();
  const log = { states: [], errors: [], gaps: 0, messages: [], tokenCalls: 0 };
  const gw = new Gateway({
    url: url ?? (transport === "sse" ? "https://gw.test/sse" : "wss://gw.test/ws"),
    transport,
    token: async () => tokens[Math.min(log.tokenCalls++, tokens.length - 1)],
    WebSocket,
    EventSource,
    types,
    heartbeatSecs,
    random,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: clock.now,
  });
  gw.on("state", (s) => log.states.push(s));
  gw.on("error", (e) => log.errors.push(e));
  gw.on("gap", () => log.gaps++);
  gw.on("*", (data, message) => log.messages.push(message));
  return { gw, clock, WebSocket, EventSource, log };
}

/** connect() and wait for the token, so that the first socket exists. */
export async function started(t) {
  t.gw.connect();
  await flush();
  return t.WebSocket.last;
}
