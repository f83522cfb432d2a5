/**
 * ws-gateway-client: a client for ws-gateway's `/ws` (and `/sse`) that
 * stays connected and loses nothing it can recover. React hooks are in
 * `ws-gateway-client/react`.
 */
export { Gateway, CONTROL_TYPES, type GatewayOptions, type MessageHandler } from "./gateway.js";
export { Backoff } from "./backoff.js";
export { closeAction, type CloseAction } from "./policy.js";
export { SeenIds } from "./dedupe.js";
export { gatewayStore, type GatewaySnapshot, type GatewayStore } from "./store.js";
export {
  GatewayError,
  type GatewayState,
  type Message,
  type WebSocketLike,
  type WebSocketConstructor,
  type EventSourceLike,
  type EventSourceConstructor,
} from "./types.js";
