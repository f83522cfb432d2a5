import { Backoff } from "./backoff.js";
import { Commands } from "./commands.js";
import { SeenIds } from "./dedupe.js";
import { watchEnvironment } from "./env.js";
import { Watchdog } from "./heartbeat.js";
import { closeAction } from "./policy.js";
import { SseLink } from "./sse.js";
import {
  GatewayError,
  type Clock,
  type EventSourceConstructor,
  type GatewayState,
  type Message,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./types.js";

/**
 * The frames the client answers itself. `on("*")` does not get them (it
 * is for the app's messages); `on("CONNECTED")` and the like still do.
 */
export const CONTROL_TYPES: ReadonlySet<string> = new Set([
  "CONNECTED",
  "PONG",
  "SUBSCRIBED",
  "UNSUBSCRIBED",
  "AUTH_REFRESHED",
  "TOKEN_EXPIRING",
  "ERROR",
]);

/** The client's own events; a message type cannot use these names with on(). */
const OWN_EVENTS = new Set(["state", "gap", "error", "*"]);

/** A connection that lasted this long after CONNECTED resets the backoff. */
const LASTED_MS = 30_000;
/** No CONNECTED this long after opening: give up on that attempt. */
const OPEN_TIMEOUT_MS = 20_000;
/** CONNECTED's heartbeat_secs when it has none (SPEC §2's default). */
const DEFAULT_HEARTBEAT_SECS = 25;
/** What the client offers first among its subprotocols (SPEC §4). */
const SUBPROTOCOL = "ws-gateway";

export interface GatewayOptions {
  /** `wss://host/ws`, or `https://host/sse` with `transport: "sse"`. */
  url: string;
  /**
   * A token, or a function that gets one (from your backend). Called at
   * connect(), after a 4001 close, and on TOKEN_EXPIRING; a reconnect
   * after a network failure reuses the last token.
   */
  token: string | (() => string | Promise<string>);
  /** `"ws"` (default) or `"sse"`. */
  transport?: "ws" | "sse";
  /** A WebSocket implementation (the `ws` package in Node); default `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** An EventSource implementation for `"sse"`; default `globalThis.EventSource`. */
  EventSource?: EventSourceConstructor;
  /** Overrides CONNECTED's `heartbeat_secs` for the dead-link check (ws only). */
  heartbeatSecs?: number;
  /**
   * SSE only: more message types to listen to, so that `on("*")` and
   * `useGatewayState` see them without an `on(type)` (EventSource can only
   * listen by name).
   */
  types?: string[];
  /** Test hook: `Math.random` by default (the backoff's jitter). */
  random?: () => number;
  /** Test hook: the global `setTimeout` by default. */
  setTimeout?: (fn: () => void, ms: number) => unknown;
  /** Test hook: the global `clearTimeout` by default. */
  clearTimeout?: (handle: unknown) => void;
  /** Test hook: `Date.now` by default (heartbeat, "lasted", PING's ts, pacing). */
  now?: () => number;
}

/** A message handler: `(message.data, message)`; `data` is `any` unless typed, as JSON is. */
export type MessageHandler<T = any> = (data: T, message: Message<T>) => void;

type AnyHandler = (...args: never[]) => void;

/**
 * A connection to ws-gateway that stays up: it resumes where it left off
 * (`since` = the last id seen), drops what it already delivered, backs
 * off with jitter, gets a new token when the gateway asks, and
 * re-subscribes its rooms. See README.md beside this package.
 */
export class Gateway {
  /** The current state; "state" events tell each change. */
  state: GatewayState = "disconnected";
  /**
   * The resume point: the id of the last message seen, CONNECTED's
   * included, except a CONNECTED followed by a replay (`replayed > 0`):
   * the replayed messages are older than it, so the resume point stays
   * where it was until they arrive with their own ids.
   */
  lastId: string | null = null;

  private readonly url: string;
  private readonly WebSocketImpl: WebSocketConstructor | undefined;
  private readonly sse: SseLink | null;
  private readonly tokenSource: () => string | Promise<string>;
  private readonly heartbeatOverride: number | undefined;
  private readonly clock: Clock;
  private readonly handlers = new Map<string, Set<AnyHandler>>();
  private readonly seen = new SeenIds();
  private readonly backoff: Backoff;
  private readonly commands: Commands;
  private readonly watchdog: Watchdog;

  /** connect() was called and neither close() nor a stop came since. */
  private started = false;
  /** Bumped by each attempt and by close(): late callbacks of an older one are ignored. */
  private attempt = 0;
  private token: string | null = null;
  /** The next attempt gets a token first (at start, after 4001). */
  private needToken = true;
  /** A new token was fetched after a refusal and no CONNECTED came since. */
  private tokenRetried = false;
  /** A token() for TOKEN_EXPIRING is under way. */
  private refreshing = false;
  /** The `exp` of the last TOKEN_EXPIRING a new token was fetched for. */
  private refreshedFor: number | null = null;
  /**
   * SSE: the last event was a CONNECTED announcing a replay, so the
   * stream's Last-Event-ID (CONNECTED's id) is ahead of what arrived.
   */
  private replayAhead = false;
  private socket: WebSocketLike | null = null;
  private connectedAt: number | null = null;
  /** The code of the last ERROR, which explains the close that follows it. */
  private lastError: { code: string; message: string } | null = null;
  private retryTimer: unknown = undefined;
  private openTimer: unknown = undefined;
  private unwatchEnvironment: (() => void) | null = null;

  constructor(options: GatewayOptions) {
    this.url = options.url;
    const transport = options.transport ?? "ws";
    const token = options.token;
    this.tokenSource = typeof token === "function" ? token : () => token;
    this.heartbeatOverride = options.heartbeatSecs;
    const g = globalThis as { WebSocket?: WebSocketConstructor; EventSource?: EventSourceConstructor };
    this.clock = {
      setTimeout: options.setTimeout ?? ((fn, ms) => setTimeout(fn, ms)),
      clearTimeout: options.clearTimeout ?? ((h) => clearTimeout(h as ReturnType<typeof setTimeout>)),
      now: options.now ?? (() => Date.now()),
    };
    this.backoff = new Backoff(options.random ?? Math.random);
    this.commands = new Commands(this.clock, (e) => this.emit("error", e));
    this.watchdog = new Watchdog(
      this.clock,
      () => this.commands.ping(this.clock.now()),
      () => this.linkDead(),
    );
    if (transport === "sse") {
      const EventSourceImpl = options.EventSource ?? g.EventSource;
      if (!EventSourceImpl) throw new TypeError("ws-gateway-client: no EventSource; pass options.EventSource");
      this.sse = new SseLink(EventSourceImpl, {
        text: (data) => this.receive(data),
        opened: () => this.setState("connecting"),
        retrying: () => this.sseRetrying(),
        closed: () => this.sseClosed(),
      });
      for (const type of CONTROL_TYPES) this.sse.listen(type);
      for (const type of options.types ?? []) this.sse.listen(type);
    } else if (transport === "ws") {
      this.sse = null;
      this.WebSocketImpl = options.WebSocket ?? g.WebSocket;
      if (!this.WebSocketImpl) throw new TypeError("ws-gateway-client: no WebSocket; pass options.WebSocket");
    } else {
      throw new TypeError(`ws-gateway-client: unknown transport ${JSON.stringify(transport)}`);
    }
  }

  /**
   * Registers a handler; returns the function that removes it.
   * - a message type (`"BUDGET_ALERT"`): `(data, message)` for each such message;
   * - `"*"`: every message except the control frames of {@link CONTROL_TYPES};
   * - `"state"`: `(state)` on each change;
   * - `"gap"`: CONNECTED said `recovered: false`: re-fetch state over REST;
   * - `"error"`: `(GatewayError)`: a refused re-subscribe, a token() that
   *   failed, or why the client stopped.
   */
  on(event: "state", handler: (state: GatewayState) => void): () => void;
  on(event: "gap", handler: () => void): () => void;
  on(event: "error", handler: (error: GatewayError) => void): () => void;
  on<T = any>(type: string, handler: MessageHandler<T>): () => void;
  on(event: string, handler: AnyHandler): () => void {
    let set = this.handlers.get(event);
    if (!set) this.handlers.set(event, (set = new Set()));
    set.add(handler);
    if (!OWN_EVENTS.has(event)) this.sse?.listen(event);
    return () => {
      set!.delete(handler);
      if (set!.size === 0 && this.handlers.get(event) === set) this.handlers.delete(event);
    };
  }

  /**
   * Subscribes to a room (SPEC §5): resolves on SUBSCRIBED, rejects on an
   * ERROR with its code. Remembered: sent on connect if not connected, and
   * again after every reconnect (silently; a refusal then is an "error"
   * event). Over SSE, only before connect(): rooms go in `?rooms=`.
   */
  subscribe(room: string): Promise<void> {
    if (this.sse && this.started) return Promise.reject(this.sseCommand("subscribe"));
    return this.commands.subscribe(room);
  }

  /** Leaves a room and forgets it; resolves on UNSUBSCRIBED (or at once when not connected). */
  unsubscribe(room: string): Promise<void> {
    if (this.sse && this.started) return Promise.reject(this.sseCommand("unsubscribe"));
    return this.commands.unsubscribe(room);
  }

  /**
   * Starts (or restarts, after close() or a stop): gets a token and
   * connects. Does nothing while already started.
   */
  connect(): void {
    if (this.started) return;
    this.started = true;
    this.needToken = true;
    this.tokenRetried = false;
    this.backoff.reset();
    this.unwatchEnvironment = watchEnvironment(() => this.wake());
    void this.open();
  }

  /** Stops for good: state "stopped", no reconnect, every timer cleared. Idempotent. */
  close(): void {
    this.shutDown(new GatewayError("closed", "the client was closed"));
  }

  // ---- connecting ----

  private async open(): Promise<void> {
    const attempt = ++this.attempt;
    this.clearTimer("retryTimer");
    this.setState("connecting");
    if (this.needToken || this.token === null) {
      let token: string;
      try {
        token = await this.tokenSource();
        if (typeof token !== "string" || token === "") throw new Error("token() gave no token");
      } catch (e) {
        if (attempt !== this.attempt) return;
        this.emit("error", new GatewayError("token_unavailable", `token() failed: ${describe(e)}`));
        this.lost();
        this.retryIn(this.backoff.next());
        return;
      }
      if (attempt !== this.attempt) return;
      this.token = token;
      this.needToken = false;
    }
    if (this.sse) {
      this.sse.open(this.sseUrl(this.token));
    } else {
      this.openSocket(this.token, attempt);
    }
  }

  private openSocket(token: string, attempt: number): void {
    const url = this.lastId === null ? this.url : withQuery(this.url, { since: this.lastId });
    let ws: WebSocketLike;
    try {
      ws = new this.WebSocketImpl!(url, [SUBPROTOCOL, `bearer.${token}`]);
    } catch (e) {
      // A URL or a token the WebSocket refuses: retrying would not help.
      this.stop(new GatewayError("client_bug", `new WebSocket() failed: ${describe(e)}`));
      return;
    }
    this.socket = ws;
    this.connectedAt = null;
    this.lastError = null;
    ws.onopen = null;
    ws.onerror = () => {}; // a close event follows
    ws.onmessage = (ev) => {
      if (this.socket === ws && typeof ev.data === "string") this.receive(ev.data);
    };
    ws.onclose = (ev) => {
      if (this.socket === ws) this.socketClosed(ev.code);
    };
    this.openTimer = this.clock.setTimeout(() => {
      this.openTimer = undefined;
      if (this.socket === ws && attempt === this.attempt) this.linkDead();
    }, OPEN_TIMEOUT_MS);
  }

  /** The SSE URL: the token (EventSource cannot send headers), the rooms, and where to resume. */
  private sseUrl(token: string): string {
    const rooms = this.commands.rooms();
    return withQuery(this.url, {
      token,
      rooms: rooms.length > 0 ? rooms.join(",") : null,
      since: this.lastId,
    });
  }

  // ---- receiving ----

  private receive(text: string): void {
    this.watchdog.heard();
    let msg: Message;
    try {
      msg = JSON.parse(text) as Message;
    } catch {
      return; // not JSON: not the gateway's
    }
    if (!msg || typeof msg !== "object" || typeof msg.type !== "string") return;
    const id = typeof msg.id === "string" && msg.id !== "" ? msg.id : null;
    const type = msg.type;
    // CONNECTED's id is new on every connection; the others may repeat.
    if (id !== null && type !== "CONNECTED" && !this.seen.first(id)) return;
    const data = (msg.data ?? {}) as Record<string, unknown>;
    const replayFollows = type === "CONNECTED" && Number(data.replayed) > 0;
    if (id !== null && !replayFollows) this.lastId = id;
    if (id !== null) this.replayAhead = replayFollows;
    switch (type) {
      case "CONNECTED":
        this.connected(data);
        break;
      case "TOKEN_EXPIRING":
        this.refreshToken(Number(data.exp) || 0);
        break;
      case "ERROR":
        this.lastError = {
          code: typeof data.code === "string" ? data.code : "error",
          message: typeof data.message === "string" ? data.message : "",
        };
        this.commands.reply(msg);
        break;
      case "PONG":
      case "SUBSCRIBED":
      case "UNSUBSCRIBED":
      case "AUTH_REFRESHED":
        this.commands.reply(msg);
        break;
    }
    if (!OWN_EVENTS.has(type)) this.emit(type, msg.data, msg);
    if (!CONTROL_TYPES.has(type)) this.emit("*", msg.data, msg);
  }

  private connected(data: Record<string, unknown>): void {
    this.clearTimer("openTimer");
    this.connectedAt = this.clock.now();
    this.tokenRetried = false;
    this.lastError = null;
    if (this.sse) {
      this.commands.confirmAll();
    } else {
      const ws = this.socket;
      const heartbeat = this.heartbeatOverride ?? (Number(data.heartbeat_secs) || DEFAULT_HEARTBEAT_SECS);
      this.watchdog.start(heartbeat);
      // Rooms first, so that a subscribe() in a "state" handler is not sent twice.
      this.commands.connected((text) => {
        if (this.socket === ws) ws?.send(text);
      });
    }
    this.setState("connected");
    if (data.recovered === false) this.emit("gap");
  }

  /**
   * TOKEN_EXPIRING: a new token, sent as AUTH_REFRESH (ws) or on a new
   * stream (sse). Once per `exp`: when token() gave a token that expires
   * no later (a backend that hands out the same token until it expires),
   * the gateway says TOKEN_EXPIRING again at once, after AUTH_REFRESHED
   * or on the new stream; asking again would loop as fast as the round
   * trip. Then the close (or the end of the stream) at exp + leeway gets
   * a new token as after any refusal.
   */
  private refreshToken(exp: number): void {
    if (this.refreshing || this.sse?.swapping) return;
    if (this.refreshedFor !== null && exp <= this.refreshedFor) return;
    this.refreshedFor = exp;
    this.refreshing = true;
    const attempt = this.attempt;
    Promise.resolve()
      .then(() => this.tokenSource())
      .then(
        (token) => {
          this.refreshing = false;
          if (!this.started || typeof token !== "string" || token === "") return;
          // Kept even if the connection changed meanwhile: the next one uses it.
          this.token = token;
          if (attempt !== this.attempt) return;
          if (this.sse) this.sse.swap(this.sseUrl(token));
          else this.commands.refresh(token);
        },
        (e) => {
          this.refreshing = false;
          if (attempt !== this.attempt) return;
          // The gateway closes with 4001 at exp + leeway; that asks again.
          this.emit("error", new GatewayError("token_unavailable", `token() failed: ${describe(e)}`));
        },
      );
  }

  // ---- losing the connection ----

  private socketClosed(code: number): void {
    const hadConnected = this.connectedAt !== null;
    this.dropSocket();
    if (!this.started) return;
    const action = closeAction(code);
    if (action === "stop") {
      const e = this.lastError;
      this.stop(new GatewayError(e?.code ?? "client_bug", `closed with ${code}: ${e?.message || "a client bug, not retried"}`, { closeCode: code }));
      return;
    }
    this.lost();
    if (action === "token") {
      // Stop when the token fetched after the last refusal was refused too
      // before any CONNECTED; else one new token, and at once.
      if (this.tokenRetried && !hadConnected) {
        this.stopForToken(code);
        return;
      }
      this.tokenRetried = true;
      this.needToken = true;
      void this.open();
      return;
    }
    this.retryIn(this.backoff.next(action === "backoff-cap"));
  }

  /** No CONNECTED in time, or no sign of life: drop the socket and reconnect with backoff. */
  private linkDead(): void {
    if (!this.socket) return;
    this.socketClosed(1006);
  }

  /**
   * EventSource is reconnecting by itself, with the last `id:` it got as
   * Last-Event-ID. That is right, except just after a CONNECTED that
   * announced a replay: its id is newer than the replayed messages, which
   * a resume from it would skip. Then a new stream resumes from lastId.
   */
  private sseRetrying(): void {
    this.lost();
    if (this.replayAhead && this.started && this.token !== null) {
      this.replayAhead = false;
      this.sse!.open(this.sseUrl(this.token));
    }
  }

  private sseClosed(): void {
    if (!this.started) return;
    this.lost();
    if (this.tokenRetried) {
      this.stop(new GatewayError("sse_refused", "the event stream was refused again with a new token (401, 403 or 429: EventSource does not say which)"));
      return;
    }
    this.tokenRetried = true;
    this.needToken = true;
    void this.open();
  }

  private stopForToken(closeCode: number): void {
    const e = this.lastError;
    this.stop(new GatewayError(e?.code ?? "token_refused", `a new token was refused too: ${e?.message || "sign in again"}`, { closeCode }));
  }

  /** Connected or connecting no more; forgets the connection's rooms, resets the backoff if it lasted. */
  private lost(): void {
    if (this.connectedAt !== null && this.clock.now() - this.connectedAt >= LASTED_MS) this.backoff.reset();
    this.connectedAt = null;
    this.commands.disconnected();
    this.watchdog.stop();
    this.setState("disconnected");
  }

  private dropSocket(): void {
    this.clearTimer("openTimer");
    this.watchdog.stop();
    const ws = this.socket;
    this.socket = null;
    if (!ws) return;
    // No-op handlers, not null: the `ws` package throws on an 'error' without a listener.
    ws.onmessage = () => {};
    ws.onclose = () => {};
    ws.onerror = () => {};
    try {
      ws.close(1000);
    } catch {
      // already closing
    }
  }

  private retryIn(ms: number): void {
    this.clearTimer("retryTimer");
    this.retryTimer = this.clock.setTimeout(() => {
      this.retryTimer = undefined;
      void this.open();
    }, ms);
  }

  /** `online` or the tab became visible: reconnect now rather than after the backoff. */
  private wake(): void {
    if (!this.started || this.state !== "disconnected") return;
    if (this.sse) this.sse.close();
    this.attempt++; // a token() under way for the old attempt is ignored
    void this.open();
  }

  /** Gives up: the "error" event says why, then state "stopped". */
  private stop(error: GatewayError): void {
    this.emit("error", error);
    this.shutDown(error);
  }

  private shutDown(why: GatewayError): void {
    this.attempt++;
    this.started = false;
    this.refreshing = false;
    this.clearTimer("retryTimer");
    this.dropSocket();
    this.sse?.close();
    this.connectedAt = null;
    this.commands.stopped(why);
    this.unwatchEnvironment?.();
    this.unwatchEnvironment = null;
    this.setState("stopped");
  }

  // ---- small helpers ----

  private sseCommand(what: string): GatewayError {
    return new GatewayError("unsupported_over_sse", `cannot ${what} over SSE once connected: rooms go in ?rooms= before connect()`);
  }

  private clearTimer(name: "retryTimer" | "openTimer"): void {
    const handle = this[name];
    if (handle !== undefined) this.clock.clearTimeout(handle);
    this[name] = undefined;
  }

  private setState(state: GatewayState): void {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", state);
  }

  private emit(event: string, ...args: unknown[]): void {
    const set = this.handlers.get(event);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        (handler as (...a: unknown[]) => void)(...args);
      } catch (e) {
        // One handler's bug must not stop the others, nor the client.
        report(e);
      }
    }
  }
}

/** Sets query parameters (null ones are left out) on an absolute or page-relative URL. */
function withQuery(base: string, params: Record<string, string | null>): string {
  const page = (globalThis as { location?: { href?: string } }).location?.href;
  const url = new URL(base, page);
  for (const [key, value] of Object.entries(params)) {
    if (value !== null) url.searchParams.set(key, value);
  }
  return url.toString();
}

function describe(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function report(e: unknown): void {
  const g = globalThis as { reportError?: (e: unknown) => void };
  if (typeof g.reportError === "function") g.reportError(e);
  else console.error(e);
}
