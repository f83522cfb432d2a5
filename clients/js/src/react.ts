/**
 * React hooks (`ws-gateway-client/react`). React is an optional peer
 * dependency: only this entry imports it, so the main entry works without.
 */
import { useEffect, useRef, useSyncExternalStore } from "react";
import type { Gateway, MessageHandler } from "./gateway.js";
import { gatewayStore, type GatewaySnapshot } from "./store.js";
import type { GatewayError, GatewayState } from "./types.js";

export { gatewayStore, type GatewaySnapshot, type GatewayStore } from "./store.js";

/**
 * Calls `handler` for each `type` message (or "*", "state", "gap",
 * "error", as `gw.on`) while the component is mounted. The latest
 * `handler` is called, without re-registering on each render.
 */
export function useGatewayEvent(gw: Gateway, type: "state", handler: (state: GatewayState) => void): void;
export function useGatewayEvent(gw: Gateway, type: "gap", handler: () => void): void;
export function useGatewayEvent(gw: Gateway, type: "error", handler: (error: GatewayError) => void): void;
export function useGatewayEvent<T = any>(gw: Gateway, type: string, handler: MessageHandler<T>): void;
export function useGatewayEvent(gw: Gateway, type: string, handler: (...args: any[]) => void): void {
  const latest = useRef(handler);
  useEffect(() => {
    latest.current = handler;
  });
  useEffect(() => gw.on(type, ((...args: unknown[]) => latest.current(...args)) as MessageHandler), [gw, type]);
}

/**
 * `{ state, last }`: the connection state and the last message of each
 * type; re-renders on each change. Over SSE, `last` holds only the types
 * the client listens to (`on(type)` or the `types` option).
 */
export function useGatewayState(gw: Gateway): GatewaySnapshot {
  const store = gatewayStore(gw);
  // The same snapshot on the server: it is the gateway's current one.
  return useSyncExternalStore(store.subscribe, store.getSnapshot, store.getSnapshot);
}
