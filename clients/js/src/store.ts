import type { Gateway } from "./gateway.js";
import type { GatewayState, Message } from "./types.js";

/**
 * The realtime store behind `useGatewayState` (the seed app's: the
 * connection state and the last message of each type), kept apart from
 * React so that it is tested without it and usable by any framework.
 *
 * `getSnapshot` returns the same object until something changes, and a
 * new one after each change: `useSyncExternalStore` compares snapshots by
 * identity and would render forever on a fresh object per call.
 */
export interface GatewaySnapshot {
  readonly state: GatewayState;
  /** The last message of each type `on("*")` delivered (control frames excluded). */
  readonly last: Readonly<Record<string, Message>>;
}

export interface GatewayStore {
  /** Calls `listener` after each change; returns the unsubscribe function. */
  subscribe(listener: () => void): () => void;
  getSnapshot(): GatewaySnapshot;
}

/** Message types kept at most; the oldest type is forgotten past it. */
const MAX_TYPES = 256;

const stores = new WeakMap<Gateway, GatewayStore>();

/**
 * The store of `gw`: one per gateway, made on first use and listening to
 * it from then on, so that the last messages are there for a component
 * that mounts later. It records nothing from before its first use: call
 * `gatewayStore(gw)` once next to `new Gateway()` when the first
 * component may mount after the first messages. Opt-in, so that apps
 * without it pay nothing per message. Its functions are stable, as
 * `useSyncExternalStore` needs.
 */
export function gatewayStore(gw: Gateway): GatewayStore {
  let store = stores.get(gw);
  if (!store) {
    store = createStore(gw);
    stores.set(gw, store);
  }
  return store;
}

function createStore(gw: Gateway): GatewayStore {
  let snapshot: GatewaySnapshot = Object.freeze({ state: gw.state, last: Object.freeze({}) });
  const listeners = new Set<() => void>();
  const changed = (next: GatewaySnapshot) => {
    snapshot = next;
    for (const listener of [...listeners]) listener();
  };
  gw.on("state", (state) => {
    if (state !== snapshot.state) changed(Object.freeze({ state, last: snapshot.last }));
  });
  gw.on("*", (_data, message) => {
    const last: Record<string, Message> = { ...snapshot.last };
    delete last[message.type]; // re-inserted last: the key order is the age order
    last[message.type] = message;
    const types = Object.keys(last);
    if (types.length > MAX_TYPES) delete last[types[0]!];
    changed(Object.freeze({ state: snapshot.state, last: Object.freeze(last) }));
  });
  return {
    subscribe(listener) {
      listeners.add(listener);
      return () => {
        listeners.delete(listener);
      };
    },
    getSnapshot: () => snapshot,
  };
}
