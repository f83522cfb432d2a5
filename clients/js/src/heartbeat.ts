import type { Clock } from "./types.js";

/**
 * Notices a dead WebSocket that never closed (a laptop that slept, a NAT
 * that forgot the flow): without it a browser may wait for TCP to time
 * out, minutes or hours, showing "connected" while nothing arrives.
 *
 * The gateway pings every `heartbeat_secs` (CONNECTED says how often),
 * but with WebSocket protocol Pings, which browsers answer without ever
 * showing them to scripts (and the `ws` package's `onmessage` does not
 * show them either). So what the client hears is messages only. After
 * `2 × heartbeat_secs` of silence it sends an application PING, whose PONG
 * proves the link; if nothing at all arrives for one more
 * `heartbeat_secs`, the link is dead. A busy connection never pings.
 */
export class Watchdog {
  private timer: unknown = undefined;
  private lastHeard = 0;
  private pinged = false;
  private periodMs = 0;

  constructor(
    private readonly clock: Clock,
    private readonly ping: () => void,
    private readonly dead: () => void,
  ) {}

  /** Starts watching, with the gateway's heartbeat period. */
  start(heartbeatSecs: number): void {
    this.stop();
    if (!(heartbeatSecs > 0)) return;
    this.periodMs = heartbeatSecs * 1000;
    this.heard();
    this.arm(2 * this.periodMs);
  }

  /** Anything arrived from the server. Cheap: no timer is touched. */
  heard(): void {
    this.lastHeard = this.clock.now();
    this.pinged = false;
  }

  stop(): void {
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }

  private arm(ms: number): void {
    this.timer = this.clock.setTimeout(() => this.check(), ms);
  }

  private check(): void {
    this.timer = undefined;
    const silent = this.clock.now() - this.lastHeard;
    if (silent < 2 * this.periodMs) {
      this.arm(2 * this.periodMs - silent);
    } else if (!this.pinged) {
      this.pinged = true;
      this.ping();
      this.arm(this.periodMs);
    } else {
      this.dead();
    }
  }
}
