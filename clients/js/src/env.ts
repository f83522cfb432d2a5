/**
 * The browser's hints that now is a good time to reconnect: the network
 * came back (`online`), or the tab became visible again
 * (`visibilitychange`), when timers may have been throttled for minutes.
 * Every access is guarded: in Node, Deno or a worker without a document,
 * the missing ones are skipped.
 *
 * Returns the function that removes the listeners.
 */
export function watchEnvironment(wake: () => void): () => void {
  const g = globalThis as {
    addEventListener?: (type: string, fn: () => void) => void;
    removeEventListener?: (type: string, fn: () => void) => void;
    document?: {
      visibilityState?: string;
      addEventListener?: (type: string, fn: () => void) => void;
      removeEventListener?: (type: string, fn: () => void) => void;
    };
  };
  const undo: Array<() => void> = [];
  if (typeof g.addEventListener === "function") {
    const online = () => wake();
    g.addEventListener("online", online);
    undo.push(() => g.removeEventListener?.("online", online));
  }
  const doc = g.document;
  if (doc && typeof doc.addEventListener === "function") {
    const visible = () => {
      if (doc.visibilityState === "visible") wake();
    };
    doc.addEventListener("visibilitychange", visible);
    undo.push(() => doc.removeEventListener?.("visibilitychange", visible));
  }
  return () => {
    for (const fn of undo) fn();
  };
}
