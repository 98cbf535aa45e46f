// Per service: requests per second, error rate (5xx) and p99 over the last minutes, from this
// gateway's /metrics read every few seconds, as small charts.
import { useEffect, useState } from "preact/hooks";
import { explain, getText } from "../api";
import { parse, rates, type Point, type ServiceSample } from "../metrics";
import { Alert } from "./common";

/** How often /metrics is read. */
export const SCRAPE_MS = 2_000;
/** Points kept per service: five minutes at SCRAPE_MS. */
export const POINTS_MAX = 150;

function Chart({ label, points, value, format }: { label: string; points: Point[]; value: (p: Point) => number | null; format: (v: number) => string }) {
  const values = points.map(value);
  const max = Math.max(...values.map((v) => v ?? 0), 1e-9);
  const width = 240;
  const height = 48;
  const step = width / Math.max(POINTS_MAX - 1, 1);
  const offset = width - (points.length - 1) * step;
  const path = values
    .map((v, i) => `${i === 0 ? "M" : "L"}${(offset + i * step).toFixed(1)},${(height - ((v ?? 0) / max) * (height - 4) - 2).toFixed(1)}`)
    .join(" ");
  const last = values[values.length - 1];
  const text = last === null || last === undefined ? "—" : format(last);
  return (
    <figure class="chart">
      <figcaption>
        {label}: <strong data-field={label}>{text}</strong>
      </figcaption>
      <svg viewBox={`0 0 ${width} ${height}`} role="img" aria-label={`${label}, last ${text}, highest ${format(max)} over the last ${Math.round((points.length * SCRAPE_MS) / 1000)} s`}>
        <path d={path} />
      </svg>
    </figure>
  );
}

export function Traffic() {
  const [series, setSeries] = useState<Map<string, Point[]>>(new Map());
  const [error, setError] = useState("");
  const [reads, setReads] = useState(0);

  useEffect(() => {
    let last: { at: number; samples: Map<string, ServiceSample> } | undefined;
    let stopped = false;
    let timer: number | undefined;
    const scrape = async () => {
      try {
        const samples = parse(await getText("/metrics"));
        const at = Date.now();
        if (stopped) return;
        setError("");
        if (last) {
          const seconds = (at - last.at) / 1000;
          const previous = last.samples;
          setSeries((old) => {
            const next = new Map(old);
            for (const [service, sample] of samples) {
              const points = [...(next.get(service) ?? []), { at, ...rates(previous.get(service), sample, seconds) }];
              next.set(service, points.slice(-POINTS_MAX));
            }
            return next;
          });
        }
        last = { at, samples };
        setReads((n) => n + 1);
      } catch (e) {
        if (!stopped) setError(explain(e));
      }
      if (!stopped) timer = window.setTimeout(scrape, SCRAPE_MS);
    };
    void scrape();
    return () => {
      stopped = true;
      window.clearTimeout(timer);
    };
  }, []);

  return (
    <section>
      <Alert message={error} />
      <p class="hint">
        Requests forwarded to services (REST and GraphQL calls) through this gateway, read from its /metrics every {SCRAPE_MS / 1000} s
        {reads < 2 ? " — the first rates come with the second reading." : "."}
      </p>
      {series.size === 0 && reads >= 2 ? <p>No request has been forwarded yet.</p> : null}
      <div class="charts">
        {[...series].map(([service, points]) => (
          <article class="service" key={service} data-service={service}>
            <h3>{service}</h3>
            <Chart label="requests/s" points={points} value={(p) => p.rps} format={(v) => v.toFixed(1)} />
            <Chart label="errors" points={points} value={(p) => p.errorRate} format={(v) => `${(v * 100).toFixed(1)} %`} />
            <Chart label="p99" points={points} value={(p) => p.p99} format={(v) => (v < 1 ? `${(v * 1000).toFixed(1)} ms` : `${v.toFixed(2)} s`)} />
          </article>
        ))}
      </div>
    </section>
  );
}
