import { EVENTSOURCE_CLOSED, type EventSourceConstructor, type EventSourceLike } from "./types.js";

/**
 * The SSE transport (SPEC §12): `GET /sse` through an `EventSource`, for
 * networks that block WebSockets.
 *
 * What EventSource decides for us:
 * - It reconnects by itself after a dropped stream, sending
 *   `Last-Event-ID` (the `id:` of the last event it got), which the
 *   gateway takes over `?since=`. Its wait is its own (about 3 s, or the
 *   gateway's `retry:`), not this client's backoff.
 * - It gives up for good (readyState CLOSED) on any answer that is not a
 *   200 event stream. The gateway answers 401 for a token, 403 for a room,
 *   429 for the per-user cap; a browser's EventSource shows none of these
 *   statuses to scripts, so the gateway class treats every CLOSED alike.
 * - It dispatches an event only to listeners of its name. The gateway
 *   names every event by its message type, so this link listens to the
 *   names it is told (see `listen`), plus `message` for unnamed events.
 *
 * A new token cannot be sent over an open stream, so a token refresh
 * opens a second stream with it ("make before break") and closes the first
 * when the second says CONNECTED; what both streams deliver meanwhile is
 * dropped by id in the gateway class.
 */
export interface SseCallbacks {
  /** An event's data: the published message, or CONNECTED/TOKEN_EXPIRING/ERROR. */
  text(data: string): void;
  /** The stream's head arrived (the CONNECTED event is next). */
  opened(): void;
  /** The stream broke and EventSource is reconnecting by itself. */
  retrying(): void;
  /** EventSource gave up (a non-200 answer): nothing is open any more. */
  closed(): void;
}

export class SseLink {
  private current: EventSourceLike | null = null;
  /** The stream opened with a new token, until it says CONNECTED. */
  private next: EventSourceLike | null = null;
  private readonly names = new Set<string>(["message"]);

  constructor(
    private readonly EventSource: EventSourceConstructor,
    private readonly on: SseCallbacks,
  ) {}

  /** Listens to events named `type` too, on the open streams and later ones. */
  listen(type: string): void {
    if (this.names.has(type)) return;
    this.names.add(type);
    for (const es of [this.current, this.next]) if (es) this.listenOn(es, type);
  }

  /** Opens a stream in place of any other. */
  open(url: string): void {
    this.close();
    this.current = this.create(url);
  }

  /** Opens a second stream (a new token) that replaces this one once CONNECTED. */
  swap(url: string): void {
    if (!this.current) return this.open(url);
    this.next?.close();
    this.next = this.create(url);
  }

  /** Whether a swap is under way. */
  get swapping(): boolean {
    return this.next !== null;
  }

  close(): void {
    this.current?.close();
    this.next?.close();
    this.current = null;
    this.next = null;
  }

  private create(url: string): EventSourceLike {
    const es = new this.EventSource(url);
    for (const name of this.names) this.listenOn(es, name);
    es.onopen = () => {
      if (es === this.current) this.on.opened();
    };
    es.onerror = () => this.failed(es);
    return es;
  }

  private listenOn(es: EventSourceLike, name: string): void {
    es.addEventListener(name, (ev) => {
      if (es === this.next && name === "CONNECTED") {
        // The new stream is live: the old one goes.
        this.current?.close();
        this.current = es;
        this.next = null;
      }
      if (es === this.current) this.on.text(ev.data);
    });
  }

  private failed(es: EventSourceLike): void {
    if (es === this.next) {
      // The new stream did not make it: keep the old one, which ends at
      // its token's expiry and is then handled like any closed stream.
      es.close();
      this.next = null;
      if (!this.current) this.on.closed();
      return;
    }
    if (es !== this.current) return;
    if (es.readyState === EVENTSOURCE_CLOSED) {
      this.current = null;
      if (!this.next) this.on.closed();
    } else if (!this.next) {
      this.on.retrying();
    }
  }
}
