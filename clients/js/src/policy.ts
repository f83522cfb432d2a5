/**
 * What a close code means for the client (SPEC §6, README "Close codes").
 *
 * One table, so that the rules are read in one place and tested as a
 * table: a bug of ours (a binary frame, bad UTF-8, a frame too big) is not
 * a network event, and retrying it would only repeat it; abuse and the
 * per-user cap ask for the longest wait; a token refusal asks for a new
 * token; anything else, including codes this client does not know yet,
 * is a broken connection to resume with backoff.
 */
export type CloseAction =
  /** Reconnect after the usual jittered backoff, with `since`. */
  | "backoff"
  /** Reconnect after a backoff that starts at the cap (1008, 4029). */
  | "backoff-cap"
  /** Get a new token, then reconnect at once (4001). */
  | "token"
  /** Do not reconnect: the client has a bug (1003, 1007, 1009). */
  | "stop";

export function closeAction(code: number): CloseAction {
  switch (code) {
    case 1003: // binary frame: the gateway speaks text only
    case 1007: // text that is not UTF-8
    case 1009: // a frame larger than the gateway's max_message_bytes
      return "stop";
    case 1008: // sustained bad or rate-limited messages
    case 4029: // too many connections for this user
      return "backoff-cap";
    case 4001: // missing, invalid or expired token, or refresh refused
      return "token";
    default:
      // 1000 (the server closed), 1001 (drain), 1002, 1006 (lost),
      // 1011, 1013 (history unavailable: same `since` later), 4008
      // (slow consumer), our own heartbeat timeout, unknown codes.
      return "backoff";
  }
}
