/**
 * Jittered exponential backoff between reconnects (README, "Browser").
 *
 * The delay after the n-th failure in a row is `min(cap, base · 2^n)`,
 * scaled by a random factor in [0.5, 1): a fleet of clients cut off by
 * the same outage (a deploy, a network blip) comes back spread over time
 * instead of all at once. Closes that mean "you are too much" (1008, 4029)
 * start at the cap. What counts as a new start is the caller's rule
 * (see `Gateway`): the failures are forgotten after a connection that
 * lasted.
 */
export class Backoff {
  /** Reconnects in a row since the last connection that lasted. */
  failures = 0;

  constructor(
    private readonly random: () => number,
    readonly baseMs = 1_000,
    readonly capMs = 30_000,
  ) {}

  /** The delay before the next attempt, in ms; counts one more failure. */
  next(atCap = false): number {
    // The exponent is bounded so that a client retrying for days never
    // overflows to Infinity (2^30 s is far past any cap anyway).
    const exp = Math.min(this.failures, 30);
    const ceiling = atCap ? this.capMs : Math.min(this.capMs, this.baseMs * 2 ** exp);
    this.failures++;
    return ceiling * (0.5 + this.random() / 2);
  }

  /** A connection lasted: the next failure starts from the base again. */
  reset(): void {
    this.failures = 0;
  }
}
