// Every call the console makes goes to the listener that served it (same origin): the REST
// views, /metrics and /graphql of the control listener. Each carries the control token from
// session storage, and each is bounded in time.

const TOKEN_KEY = "switchyard.console.token";

/** How long one HTTP call may take before the console gives up on it. */
export const FETCH_TIMEOUT_MS = 10_000;

/** Largest response body the console reads (a /metrics page of a busy gateway fits). */
export const RESPONSE_BYTES_MAX = 8 * 1024 * 1024;

export function getToken(): string {
  try {
    return sessionStorage.getItem(TOKEN_KEY) ?? "";
  } catch {
    return "";
  }
}

export function setToken(token: string): void {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage refused (private mode with a quota of 0): the token lives for this page only.
  }
  tokenListeners.forEach((f) => f());
}

const tokenListeners = new Set<() => void>();
export function onTokenChange(f: () => void): () => void {
  tokenListeners.add(f);
  return () => tokenListeners.delete(f);
}

/** A URL on the gateway, from the console's own address (`/console/` → `/`). */
export function gatewayUrl(path: string, base = ""): string {
  const root = new URL("..", document.baseURI);
  return new URL(base + path.replace(/^\//, ""), root).toString();
}

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string,
  ) {
    super(message);
  }
}

/** The sentence a person reads for a refusal. */
export function explain(error: unknown): string {
  if (error instanceof ApiError) {
    if (error.code === "unauthenticated") {
      return `The gateway refused the control token (401 unauthenticated): ${error.message}. Paste a valid token above.`;
    }
    if (error.code === "forbidden") {
      return `The control token is valid but may not do this (403 forbidden): ${error.message}. Reads need a token issued with --read.`;
    }
    return `${error.status ? error.status + " " : ""}${error.code}: ${error.message}`;
  }
  if (error instanceof DOMException && error.name === "TimeoutError") {
    return `No answer within ${FETCH_TIMEOUT_MS / 1000} s.`;
  }
  return error instanceof Error ? error.message : String(error);
}

function headers(extra: Record<string, string> = {}): Record<string, string> {
  const token = getToken();
  return token ? { ...extra, authorization: `Bearer ${token}` } : extra;
}

async function readText(response: Response): Promise<string> {
  const length = Number(response.headers.get("content-length") ?? "0");
  if (length > RESPONSE_BYTES_MAX) {
    throw new ApiError(`answer of ${length} bytes is over the console's bound`, response.status, "too_large");
  }
  const text = await response.text();
  if (text.length > RESPONSE_BYTES_MAX) {
    throw new ApiError("answer over the console's bound", response.status, "too_large");
  }
  return text;
}

async function refusal(response: Response): Promise<ApiError> {
  const text = await readText(response).catch(() => "");
  try {
    const body = JSON.parse(text);
    const error = body.error ?? body;
    return new ApiError(String(error.message ?? text), response.status, String(error.code ?? "error"));
  } catch {
    return new ApiError(text.slice(0, 300) || response.statusText, response.status, "error");
  }
}

/** GET a JSON document from the control listener. */
export async function getJson<T>(path: string, base = ""): Promise<T> {
  const response = await fetch(gatewayUrl(path, base), {
    headers: headers({ accept: "application/json" }),
    signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
    cache: "no-store",
  });
  if (!response.ok) throw await refusal(response);
  return JSON.parse(await readText(response)) as T;
}

/** GET a text document (the Prometheus exposition). */
export async function getText(path: string): Promise<string> {
  const response = await fetch(gatewayUrl(path), {
    headers: headers(),
    signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
    cache: "no-store",
  });
  if (!response.ok) throw await refusal(response);
  return readText(response);
}

export interface GraphqlError {
  message: string;
  extensions?: { code?: string; status?: number; requestId?: string };
}

export interface GraphqlAnswer<T> {
  data?: T | null;
  errors?: GraphqlError[];
}

/** One GraphQL operation by POST on the control listener; the whole answer, errors included. */
export async function graphql<T>(query: string, variables: Record<string, unknown> = {}): Promise<GraphqlAnswer<T>> {
  const response = await fetch(gatewayUrl("/graphql"), {
    method: "POST",
    headers: headers({ "content-type": "application/json", accept: "application/json" }),
    body: JSON.stringify({ query, variables }),
    signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
    cache: "no-store",
  });
  const text = await readText(response);
  try {
    return JSON.parse(text) as GraphqlAnswer<T>;
  } catch {
    throw new ApiError(text.slice(0, 300) || response.statusText, response.status, "error");
  }
}

/** A GraphQL error as an ApiError, so refusals read the same everywhere. */
export function graphqlError(error: GraphqlError): ApiError {
  return new ApiError(error.message, error.extensions?.status ?? 0, error.extensions?.code ?? "error");
}
