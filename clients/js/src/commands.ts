import { GatewayError, type Clock, type Message } from "./types.js";

/**
 * The client's side of SPEC §5 over a WebSocket: the rooms the app wants,
 * and the commands (SUBSCRIBE, UNSUBSCRIBE, PING, AUTH_REFRESH) that keep
 * the connection's rooms in line with them.
 *
 * Rooms are the app's wish, not the connection's state: a connection
 * starts with none, so after every CONNECTED each wanted room is
 * subscribed again (rooms are live only: nothing is replayed for them).
 *
 * Replies are matched in order. The gateway handles one connection's
 * commands one at a time and answers each one once (PONG, SUBSCRIBED,
 * UNSUBSCRIBED, AUTH_REFRESHED or an ERROR), so an ERROR, which names no
 * command, belongs to the oldest command still waiting. The one frame
 * that is not an answer is an UNSUBSCRIBED the gateway sends on its own
 * when a refreshed token no longer allows a room: that room is no longer
 * wanted either.
 *
 * Commands are paced (bursts of {@link BURST}, then {@link RATE} a second),
 * half the gateway's default budget (20 a second, bursts of 40), because
 * every refused message is a strike and ten strikes close the connection
 * with 1008: re-subscribing 64 rooms at once would be refused. If the
 * gateway is configured tighter and answers `rate_limited`, the command is
 * sent again a second later.
 */

/** Commands sent at once before pacing starts. */
const BURST = 16;
/** Commands a second after a burst. */
const RATE = 8;
/** Pause after a `rate_limited` answer, in ms. */
const RATE_LIMITED_PAUSE_MS = 1_000;
/** Rooms wanted, and commands queued or waiting for an answer, at most. */
const MAX_ROOMS = 256;
const MAX_PENDING = 256;

/** A room name of SPEC §5; checked here so that a bad one fails at once. */
const ROOM_NAME = /^[A-Za-z0-9._:-]{1,128}$/;

interface Deferred {
  promise: Promise<void>;
  resolve(): void;
  reject(e: GatewayError): void;
}

function deferred(): Deferred {
  let resolve!: () => void;
  let reject!: (e: GatewayError) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // A subscribe nobody awaits (fire and forget before connect()) must not
  // crash Node with an unhandled rejection when it fails; whoever awaits
  // the promise still sees the rejection.
  promise.catch(() => {});
  return { promise, resolve, reject };
}

type Command =
  | { kind: "PING"; ts: number }
  | { kind: "SUBSCRIBE"; room: string }
  | { kind: "UNSUBSCRIBE"; room: string; done: Deferred }
  | { kind: "AUTH_REFRESH"; token: string };

/** A room the app wants. */
interface Wanted {
  /** SUBSCRIBED on the current connection. */
  confirmed: boolean;
  /** The promise of a subscribe() not answered yet; none for re-subscribes. */
  pending: Deferred | null;
}

export class Commands {
  private readonly wanted = new Map<string, Wanted>();
  /** Not sent yet (waiting for the connection or for pacing). */
  private queue: Command[] = [];
  /** Sent, answer awaited, oldest first. */
  private inflight: Command[] = [];
  /** Set while connected (CONNECTED received). */
  private sendFrame: ((text: string) => void) | null = null;
  private tokens = BURST;
  private refilledAt: number;
  private pausedUntil = 0;
  private pumpTimer: unknown = undefined;

  constructor(
    private readonly clock: Clock,
    /** A re-subscribe the gateway refused: nobody awaits it, so it is reported. */
    private readonly onError: (e: GatewayError) => void,
  ) {
    this.refilledAt = clock.now();
  }

  /** The rooms the app wants, for SSE's `?rooms=`. */
  rooms(): string[] {
    return [...this.wanted.keys()];
  }

  subscribe(room: string): Promise<void> {
    if (!ROOM_NAME.test(room)) {
      const e = new GatewayError("bad_request", `${JSON.stringify(room)} is not a room name (1-128 of A-Z a-z 0-9 . _ : -)`, { room });
      return Promise.reject(e);
    }
    const known = this.wanted.get(room);
    if (known) {
      if (known.confirmed) return Promise.resolve();
      known.pending ??= deferred();
      return known.pending.promise;
    }
    if (this.wanted.size >= MAX_ROOMS) {
      return Promise.reject(new GatewayError("too_many_rooms", `at most ${MAX_ROOMS} rooms`, { room }));
    }
    if (this.busy()) return Promise.reject(this.tooMany(room));
    const entry: Wanted = { confirmed: false, pending: deferred() };
    this.wanted.set(room, entry);
    if (this.sendFrame) this.enqueue({ kind: "SUBSCRIBE", room });
    return entry.pending!.promise;
  }

  unsubscribe(room: string): Promise<void> {
    const known = this.wanted.get(room);
    this.wanted.delete(room);
    known?.pending?.reject(new GatewayError("unsubscribed", `unsubscribed from ${room} before it was subscribed`, { room }));
    // A new connection starts without rooms: nothing to undo there.
    if (!this.sendFrame) return Promise.resolve();
    if (this.busy()) return Promise.reject(this.tooMany(room));
    const done = deferred();
    this.enqueue({ kind: "UNSUBSCRIBE", room, done });
    return done.promise;
  }

  /** The heartbeat's PING; skipped when the queue is full (the next one will do). */
  ping(ts: number): void {
    if (this.sendFrame && !this.busy()) this.enqueue({ kind: "PING", ts });
  }

  /** AUTH_REFRESH with a new token (after TOKEN_EXPIRING). */
  refresh(token: string): void {
    if (this.sendFrame) this.enqueue({ kind: "AUTH_REFRESH", token });
  }

  /** CONNECTED on a WebSocket: subscribe every wanted room again. */
  connected(send: (text: string) => void): void {
    this.sendFrame = send;
    for (const [room, entry] of this.wanted) {
      entry.confirmed = false;
      this.enqueue({ kind: "SUBSCRIBE", room });
    }
  }

  /**
   * CONNECTED on SSE: the gateway accepted every room of `?rooms=` (it
   * refuses the whole stream otherwise).
   */
  confirmAll(): void {
    for (const entry of this.wanted.values()) {
      entry.confirmed = true;
      entry.pending?.resolve();
      entry.pending = null;
    }
  }

  /**
   * The connection is gone: what it had subscribed is gone with it.
   * Unsubscribes resolve (the next connection will not have the room);
   * first subscribes stay pending for the next connection.
   */
  disconnected(): void {
    this.sendFrame = null;
    if (this.pumpTimer !== undefined) this.clock.clearTimeout(this.pumpTimer);
    this.pumpTimer = undefined;
    for (const cmd of [...this.inflight, ...this.queue]) {
      if (cmd.kind === "UNSUBSCRIBE") cmd.done.resolve();
    }
    this.inflight = [];
    this.queue = [];
    for (const entry of this.wanted.values()) entry.confirmed = false;
  }

  /** close(), or the client gave up: subscribes still waiting fail with `why`. */
  stopped(why: GatewayError): void {
    this.disconnected();
    for (const [room, entry] of this.wanted) {
      entry.pending?.reject(new GatewayError(why.code, why.message, { room }));
      entry.pending = null;
    }
  }

  /** An answer from the gateway (PONG, SUBSCRIBED, UNSUBSCRIBED, AUTH_REFRESHED, ERROR). */
  reply(msg: Message): void {
    const data = (msg.data ?? {}) as { room?: unknown; code?: unknown; message?: unknown };
    const room = typeof data.room === "string" ? data.room : "";
    switch (msg.type) {
      case "PONG":
        this.take((c) => c.kind === "PING");
        return;
      case "AUTH_REFRESHED":
        this.take((c) => c.kind === "AUTH_REFRESH");
        return;
      case "SUBSCRIBED": {
        this.take((c) => c.kind === "SUBSCRIBE" && c.room === room);
        const entry = this.wanted.get(room);
        if (entry) {
          entry.confirmed = true;
          entry.pending?.resolve();
          entry.pending = null;
        }
        return;
      }
      case "UNSUBSCRIBED": {
        const cmd = this.take((c) => c.kind === "UNSUBSCRIBE" && c.room === room);
        if (cmd?.kind === "UNSUBSCRIBE") {
          cmd.done.resolve();
        } else {
          // The gateway left the room itself (a refreshed token no longer
          // allows it): do not ask for it again on the next connection.
          const entry = this.wanted.get(room);
          this.wanted.delete(room);
          entry?.pending?.reject(new GatewayError("unsubscribed", `the gateway left ${room}`, { room }));
        }
        return;
      }
      case "ERROR": {
        const cmd = this.inflight.shift();
        if (!cmd) return;
        const code = typeof data.code === "string" ? data.code : "error";
        const text = typeof data.message === "string" ? data.message : code;
        this.failed(cmd, code, text);
        this.pump();
        return;
      }
    }
  }

  private failed(cmd: Command, code: string, text: string): void {
    if (code === "rate_limited" && cmd.kind !== "PING") {
      this.queue.unshift(cmd);
      this.pausedUntil = this.clock.now() + RATE_LIMITED_PAUSE_MS;
      return;
    }
    switch (cmd.kind) {
      case "SUBSCRIBE": {
        const entry = this.wanted.get(cmd.room);
        if (!entry) return;
        this.wanted.delete(cmd.room);
        const e = new GatewayError(code, text, { room: cmd.room });
        if (entry.pending) entry.pending.reject(e);
        else this.onError(e);
        return;
      }
      case "UNSUBSCRIBE":
        cmd.done.reject(new GatewayError(code, text, { room: cmd.room }));
        return;
      default:
        // A refused AUTH_REFRESH is followed by close 4001, which the
        // gateway class handles; a refused PING changes nothing.
        return;
    }
  }

  /** Removes and returns the oldest command in flight that `match`es. */
  private take(match: (c: Command) => boolean): Command | undefined {
    const i = this.inflight.findIndex(match);
    if (i < 0) return undefined;
    const [cmd] = this.inflight.splice(i, 1);
    this.pump();
    return cmd;
  }

  private busy(): boolean {
    return this.queue.length + this.inflight.length >= MAX_PENDING;
  }

  private tooMany(room: string): GatewayError {
    return new GatewayError("too_many_pending", `more than ${MAX_PENDING} commands waiting`, { room });
  }

  private enqueue(cmd: Command): void {
    this.queue.push(cmd);
    this.pump();
  }

  /** Sends what the pacing allows now, and comes back for the rest. */
  private pump(): void {
    if (this.pumpTimer !== undefined || !this.sendFrame) return;
    while (this.queue.length > 0) {
      const wait = this.waitMs();
      if (wait > 0) {
        this.pumpTimer = this.clock.setTimeout(() => {
          this.pumpTimer = undefined;
          this.pump();
        }, wait);
        return;
      }
      this.tokens -= 1;
      const cmd = this.queue.shift()!;
      this.inflight.push(cmd);
      this.sendFrame(JSON.stringify(frame(cmd)));
      if (!this.sendFrame) return; // the send closed the connection
    }
  }

  /** How long until the next command may go: 0 when now. */
  private waitMs(): number {
    const now = this.clock.now();
    if (now < this.pausedUntil) return this.pausedUntil - now;
    this.tokens = Math.min(BURST, this.tokens + ((now - this.refilledAt) / 1000) * RATE);
    this.refilledAt = now;
    return this.tokens >= 1 ? 0 : Math.ceil(((1 - this.tokens) / RATE) * 1000);
  }
}

function frame(cmd: Command): object {
  switch (cmd.kind) {
    case "PING":
      return { type: "PING", ts: cmd.ts };
    case "SUBSCRIBE":
      return { type: "SUBSCRIBE", room: cmd.room };
    case "UNSUBSCRIBE":
      return { type: "UNSUBSCRIBE", room: cmd.room };
    case "AUTH_REFRESH":
      return { type: "AUTH_REFRESH", token: cmd.token };
  }
}
