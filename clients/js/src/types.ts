/**
 * The shapes shared by the client's modules: messages as the gateway sends
 * them (SPEC §3, §4), the client's states, its errors, and the minimal
 * WebSocket and EventSource interfaces it needs, so that a browser's, the
 * `ws` package's or a test's fake all fit.
 */

/** A message from the gateway: a published one or a control frame. */
export interface Message<T = unknown> {
  type: string;
  /** Present on published messages (the canonical path fills it in) and CONNECTED. */
  id?: string;
  /** Milliseconds since the epoch, when the publisher set it. */
  ts?: number;
  data?: T;
  [field: string]: unknown;
}

/**
 * - `connecting`: getting a token or opening the socket;
 * - `connected`: CONNECTED received, messages flow;
 * - `disconnected`: lost, waiting to reconnect (or not started yet);
 * - `stopped`: `close()` was called, or the client gave up (see "error").
 */
export type GatewayState = "connecting" | "connected" | "disconnected" | "stopped";

/** The error events and rejected promises of the client carry a code. */
export class GatewayError extends Error {
  /**
   * The gateway's own code when it sent an ERROR that explains this
   * (`forbidden`, `too_many_rooms`, `invalid_token`, `token_expired`, …),
   * else one of the client's: `token_unavailable`, `token_refused`,
   * `client_bug`, `sse_refused`, `unsupported_over_sse`, `closed`,
   * `unsubscribed`, `too_many_pending`.
   */
  readonly code: string;
  /** The room a subscribe or re-subscribe was for. */
  readonly room?: string;
  /** The WebSocket close code that led to it, if any. */
  readonly closeCode?: number;

  constructor(code: string, message: string, extra: { room?: string; closeCode?: number } = {}) {
    super(message);
    this.name = "GatewayError";
    this.code = code;
    if (extra.room !== undefined) this.room = extra.room;
    if (extra.closeCode !== undefined) this.closeCode = extra.closeCode;
  }
}

/** What the client uses of a WebSocket (the browser's API). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** What the client uses of an EventSource (the browser's API). */
export interface EventSourceLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  addEventListener(type: string, listener: (ev: { data: string; lastEventId?: string }) => void): void;
  close(): void;
}

export type EventSourceConstructor = new (url: string) => EventSourceLike;

/** EventSource.CLOSED: the stream ended for good (a non-200 answer, or close()). */
export const EVENTSOURCE_CLOSED = 2;

/** Timer functions, replaceable so that tests run on a fake clock. */
export interface Clock {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  now(): number;
}
