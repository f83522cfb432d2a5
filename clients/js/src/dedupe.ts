/**
 * The ids seen lately, to drop a message delivered twice: a resume
 * replays from a point that may be older than the last message shown
 * (SPEC §4: same-millisecond ULIDs and a 2 s look-back for clock skew), and
 * a publish retried after a timeout carries the same id again (SPEC §7).
 *
 * Bounded: the oldest id is forgotten once `max` newer ones were seen, so
 * a client that runs for weeks holds at most `max` strings. Replays and
 * retries are close in time to the original, so 1,000 is plenty.
 */
export class SeenIds {
  private readonly ids = new Set<string>();

  constructor(readonly max = 1_000) {}

  /** True the first time `id` is seen (and remembers it), false for a repeat. */
  first(id: string): boolean {
    if (this.ids.has(id)) return false;
    this.ids.add(id);
    if (this.ids.size > this.max) {
      // A Set iterates in insertion order: the first value is the oldest.
      const oldest = this.ids.values().next().value as string;
      this.ids.delete(oldest);
    }
    return true;
  }

  get size(): number {
    return this.ids.size;
  }
}
