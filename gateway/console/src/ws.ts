// A subscription over GraphQL on a WebSocket (`graphql-transport-ws`), to the listener that
// served the console. A browser cannot put an `authorization` header on a WebSocket, so the
// token travels in `connection_init`'s payload, which the gateway reads as that header.

import { getToken, type GraphqlError } from "./api";

/** Reconnection waits double from the first to the last, then stay there. */
export const RECONNECT_FIRST_MS = 1_000;
export const RECONNECT_MAX_MS = 30_000;
/** Failed connections in a row before the console stops trying and asks the person. */
export const RECONNECT_ATTEMPTS_MAX = 12;

export type Link = "connecting" | "live" | "retrying" | "stopped";

export interface Handlers<T> {
  next(data: T): void;
  /** A refusal or a failure; `fatal` when the console will not retry by itself. */
  error(error: GraphqlError, fatal: boolean): void;
  link(state: Link): void;
  /** A (re)connection is about to resend everything a subscription with a snapshot sends:
   * what was shown before may be stale (a removal missed while disconnected). */
  reset(): void;
}

function socketUrl(): string {
  const url = new URL("../graphql", document.baseURI);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.toString();
}

/** Starts the subscription; the function returned ends it. */
export function subscribe<T>(query: string, variables: Record<string, unknown>, on: Handlers<T>): () => void {
  let socket: WebSocket | undefined;
  let timer: number | undefined;
  let failures = 0;
  let ended = false;

  const retry = () => {
    if (ended) return;
    failures += 1;
    if (failures > RECONNECT_ATTEMPTS_MAX) {
      on.link("stopped");
      on.error({ message: `the gateway did not answer after ${RECONNECT_ATTEMPTS_MAX} attempts; reload to try again` }, true);
      return;
    }
    on.link("retrying");
    const wait = Math.min(RECONNECT_FIRST_MS * 2 ** (failures - 1), RECONNECT_MAX_MS);
    timer = window.setTimeout(open, wait);
  };

  function open() {
    if (ended) return;
    on.link("connecting");
    const ws = new WebSocket(socketUrl(), "graphql-transport-ws");
    socket = ws;
    let refused = false;
    ws.onopen = () => {
      const token = getToken();
      const payload = token ? { authorization: `Bearer ${token}` } : {};
      ws.send(JSON.stringify({ type: "connection_init", payload }));
    };
    // A refused credential will be refused again: the console waits for the person to fix it
    // rather than retry.
    const refuse = (error: GraphqlError) => {
      const code = error.extensions?.code;
      refused = refused || code === "unauthenticated" || code === "forbidden";
      on.error(error, refused);
      if (refused) on.link("stopped");
    };
    ws.onmessage = (event) => {
      let message: { type?: string; id?: string; payload?: any };
      try {
        message = JSON.parse(String(event.data));
      } catch {
        return;
      }
      switch (message.type) {
        case "connection_ack":
          failures = 0;
          on.reset();
          on.link("live");
          ws.send(JSON.stringify({ id: "1", type: "subscribe", payload: { query, variables } }));
          break;
        case "next":
          if (message.payload?.errors?.length) refuse(message.payload.errors[0]);
          if (message.payload?.data) on.next(message.payload.data as T);
          break;
        case "error": {
          const errors: GraphqlError[] = Array.isArray(message.payload) ? message.payload : [message.payload];
          refuse(errors[0] ?? { message: "the subscription was refused" });
          ws.close(1000);
          break;
        }
        case "complete":
          ws.close(1000);
          break;
        case "ping":
          ws.send(JSON.stringify({ type: "pong" }));
          break;
      }
    };
    ws.onclose = (event) => {
      if (ended || refused) return;
      // Closed for what the console sent (a refused connection_init): sending it again
      // would be refused again.
      if (event.code === 4403 || event.code === 4401 || event.code === 1002) {
        on.link("stopped");
        on.error({ message: `the gateway closed the subscription: ${event.reason || event.code}` }, true);
        return;
      }
      retry();
    };
  }

  open();
  return () => {
    ended = true;
    window.clearTimeout(timer);
    socket?.close(1000);
  };
}
