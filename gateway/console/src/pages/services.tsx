// Every service and instance, kept current by the `registryChanges` subscription: a snapshot
// first, then each change as the gateway applies it. No polling.
import { useEffect, useState } from "preact/hooks";
import { explain, graphqlError } from "../api";
import { subscribe, type Link } from "../ws";
import { Alert, useNow } from "./common";

const QUERY = `subscription Console {
  registryChanges(snapshot: true) {
    kind originNode snapshot
    instance {
      service instanceId state addr leaseMs expiresUnixMs ejectedUntilUnixMs
      metadata { key value }
      stamp { physicalMs logical nodeId }
    }
  }
}`;

/** Instances shown at most; past it the oldest changes are not shown (a hostile registry
 * cannot make the page grow without end). */
export const INSTANCES_SHOWN_MAX = 5_000;
/** How long a changed row stays highlighted. */
export const HIGHLIGHT_MS = 4_000;

interface Instance {
  service: string;
  instanceId: string;
  state: string;
  addr: string | null;
  leaseMs: number | null;
  expiresUnixMs: number | null;
  ejectedUntilUnixMs: number | null;
  metadata: { key: string; value: string }[];
  stamp: { physicalMs: number; logical: number; nodeId: string };
}

interface Change {
  kind: "REGISTER" | "RENEW" | "DEREGISTER" | "EVICT";
  originNode: string;
  snapshot: boolean;
  instance: Instance;
}

interface Row {
  instance: Instance;
  originNode: string;
  kind: Change["kind"];
  changedAt: number;
}

function newer(a: Instance["stamp"], b: Instance["stamp"]): boolean {
  if (a.physicalMs !== b.physicalMs) return a.physicalMs > b.physicalMs;
  if (a.logical !== b.logical) return a.logical > b.logical;
  return a.nodeId > b.nodeId;
}

function countdown(expires: number | null, now: number): string {
  if (expires === null) return "—";
  const s = Math.round((expires - now) / 1000);
  if (s <= 0) return "expired";
  return s >= 120 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

export function Services() {
  const [rows, setRows] = useState<Map<string, Row>>(new Map());
  const [link, setLink] = useState<Link>("connecting");
  const [error, setError] = useState("");
  const [announcement, setAnnouncement] = useState("");
  const now = useNow(1000);

  useEffect(
    () =>
      subscribe<{ registryChanges: Change }>(QUERY, {}, {
        link: setLink,
        reset: () => setRows(new Map()),
        error: (e) => setError(explain(graphqlError(e))),
        next: ({ registryChanges: change }) => {
          setError("");
          const key = `${change.instance.service}/${change.instance.instanceId}`;
          setRows((old) => {
            const current = old.get(key);
            if (current && newer(current.instance.stamp, change.instance.stamp)) return old;
            const rows = new Map(old);
            if (change.kind === "DEREGISTER") {
              rows.delete(key);
            } else {
              if (!rows.has(key) && rows.size >= INSTANCES_SHOWN_MAX) return old;
              rows.set(key, {
                instance: change.instance,
                originNode: change.originNode,
                kind: change.kind,
                changedAt: change.snapshot ? 0 : Date.now(),
              });
            }
            return rows;
          });
          if (!change.snapshot) {
            setAnnouncement(`${key}: ${change.kind.toLowerCase()} through ${change.originNode}`);
          }
        },
      }),
    [],
  );

  const services = new Map<string, Row[]>();
  for (const [, row] of [...rows].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    const list = services.get(row.instance.service) ?? [];
    list.push(row);
    services.set(row.instance.service, list);
  }

  return (
    <section aria-labelledby="services-status">
      <p id="services-status" class={`link link-${link}`}>
        Registry changes: <strong>{link}</strong>
        {link === "live" ? " (changes appear as the gateway applies them)" : ""}
      </p>
      <p class="sr-only" aria-live="polite">
        {announcement}
      </p>
      <Alert message={error} />
      {services.size === 0 && link === "live" && !error ? <p>No service is registered.</p> : null}
      {[...services].map(([service, list]) => (
        <div class="service" key={service}>
          <h3>{service}</h3>
          <div class="scroll">
            <table>
              <caption class="sr-only">Instances of {service}</caption>
              <thead>
                <tr>
                  <th scope="col">Instance</th>
                  <th scope="col">State</th>
                  <th scope="col">Lease left</th>
                  <th scope="col">Address</th>
                  <th scope="col">Metadata</th>
                  <th scope="col">Origin gateway</th>
                  <th scope="col">Last change</th>
                </tr>
              </thead>
              <tbody>
                {list.map((row) => {
                  const i = row.instance;
                  const fresh = row.changedAt > 0 && now - row.changedAt < HIGHLIGHT_MS;
                  return (
                    <tr key={i.instanceId} class={fresh ? "changed" : undefined} data-instance={`${i.service}/${i.instanceId}`}>
                      <th scope="row">{i.instanceId}</th>
                      <td>
                        <span class={`state state-${i.state.toLowerCase()}`}>{i.state.toLowerCase()}</span>
                      </td>
                      <td>{i.state === "LIVE" ? countdown(i.expiresUnixMs, now) : "—"}</td>
                      <td>
                        <code>{i.addr ?? "—"}</code>
                      </td>
                      <td>
                        {i.metadata.length === 0
                          ? "—"
                          : i.metadata.map((m) => (
                              <span class="tag" key={m.key}>
                                {m.key}={m.value}
                              </span>
                            ))}
                      </td>
                      <td>{row.originNode}</td>
                      <td>{row.changedAt ? row.kind.toLowerCase() : "snapshot"}</td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        </div>
      ))}
    </section>
  );
}
