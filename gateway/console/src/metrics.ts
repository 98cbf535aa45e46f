// The few series of the Prometheus text exposition the Traffic page charts, read without a
// general parser: `switchyard_http_requests_total` and the request-duration histogram, for
// requests forwarded to services (fronts `rest` and `graphql_call`).

/** Lines read from one exposition at most; a longer page is read that far. */
export const LINES_MAX = 200_000;
/** Services followed at most (the gateway keeps its own series bounded too). */
export const SERVICES_MAX = 100;

export interface ServiceSample {
  requests: number;
  errors: number;
  /** Cumulative bucket counts by upper bound, in seconds. */
  buckets: Map<number, number>;
}

const FORWARDED = new Set(["rest", "graphql_call"]);

function labels(text: string): Map<string, string> {
  const out = new Map<string, string>();
  const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(text)) !== null) out.set(m[1], m[2].replace(/\\(.)/g, "$1"));
  return out;
}

export function parse(text: string): Map<string, ServiceSample> {
  const services = new Map<string, ServiceSample>();
  const sample = (name: string): ServiceSample | undefined => {
    let s = services.get(name);
    if (!s) {
      if (services.size >= SERVICES_MAX) return undefined;
      s = { requests: 0, errors: 0, buckets: new Map() };
      services.set(name, s);
    }
    return s;
  };
  const lines = text.split("\n", LINES_MAX);
  for (const line of lines) {
    const counter = line.startsWith("switchyard_http_requests_total{");
    const bucket = line.startsWith("switchyard_http_request_duration_seconds_bucket{");
    if (!counter && !bucket) continue;
    const close = line.lastIndexOf("}");
    if (close < 0) continue;
    const l = labels(line.slice(line.indexOf("{") + 1, close));
    const value = Number(line.slice(close + 1).trim().split(" ")[0]);
    const service = l.get("service") ?? "";
    if (!FORWARDED.has(l.get("front") ?? "") || service === "" || !Number.isFinite(value)) continue;
    const s = sample(service);
    if (!s) continue;
    if (counter) {
      s.requests += value;
      if (Number(l.get("status") ?? "0") >= 500) s.errors += value;
    } else {
      const le = l.get("le") === "+Inf" ? Infinity : Number(l.get("le"));
      if (Number.isFinite(le) || le === Infinity) s.buckets.set(le, (s.buckets.get(le) ?? 0) + value);
    }
  }
  return services;
}

export interface Point {
  at: number;
  rps: number;
  errorRate: number;
  /** Seconds; null with no request in the interval. */
  p99: number | null;
}

/** The rates between two readings of one service. */
export function rates(before: ServiceSample | undefined, after: ServiceSample, seconds: number): Omit<Point, "at"> {
  const requests = Math.max(0, after.requests - (before?.requests ?? 0));
  const errors = Math.max(0, after.errors - (before?.errors ?? 0));
  const bounds = [...after.buckets.keys()].sort((a, b) => a - b);
  const delta = bounds.map((le) => Math.max(0, (after.buckets.get(le) ?? 0) - (before?.buckets.get(le) ?? 0)));
  const total = delta[delta.length - 1] ?? 0;
  let p99: number | null = null;
  if (total > 0) {
    const want = total * 0.99;
    const i = delta.findIndex((count) => count >= want);
    p99 = i < 0 ? null : bounds[i] === Infinity ? (bounds[bounds.length - 2] ?? null) : bounds[i];
  }
  return { rps: seconds > 0 ? requests / seconds : 0, errorRate: requests > 0 ? errors / requests : 0, p99 };
}
