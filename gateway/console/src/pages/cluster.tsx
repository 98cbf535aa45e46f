// The gateway the console talks to, and every gateway listed in `peers.json` beside the
// console (nginx in the cluster testbed lists them; a gateway serving the console alone lists
// none), their registry digests side by side so that divergence shows.
import { useEffect, useState } from "preact/hooks";
import { explain, getJson, gatewayUrl, FETCH_TIMEOUT_MS } from "../api";
import { Alert } from "./common";

/** How often the page reads the gateways again. */
export const REFRESH_MS = 3_000;
/** Peers read at most (a longer list is cut). */
export const PEERS_MAX = 32;

interface NodeStatus {
  node_id: string;
  ready: boolean;
  shutting_down: boolean;
  bus_position: number;
  catch_up_target: number;
  registry_entries: number;
  registry_digest: string;
  events_applied: number;
  events_rejected: number;
  outbox_pending: number;
}

interface Peer {
  name: string;
  /** The path under which the peer's control listener is reached, same origin, e.g. `gw/1/`. */
  base: string;
}

interface Seen {
  peer: Peer;
  status?: NodeStatus;
  ready?: boolean;
  error?: string;
}

async function readPeers(): Promise<Peer[]> {
  try {
    const response = await fetch(new URL("peers.json", document.baseURI), {
      signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
      cache: "no-store",
    });
    if (!response.ok) return [];
    const list = (await response.json()) as unknown;
    if (!Array.isArray(list)) return [];
    return list
      .filter((p): p is Peer => typeof p?.name === "string" && typeof p?.base === "string" && /^[a-z0-9/_-]*$/i.test(p.base))
      .slice(0, PEERS_MAX);
  } catch {
    return [];
  }
}

async function readOne(peer: Peer): Promise<Seen> {
  const [status, ready] = await Promise.allSettled([
    getJson<NodeStatus>("/v1/cluster", peer.base),
    fetch(gatewayUrl("/readyz", peer.base), { signal: AbortSignal.timeout(FETCH_TIMEOUT_MS), cache: "no-store" }),
  ]);
  return {
    peer,
    status: status.status === "fulfilled" ? status.value : undefined,
    ready: ready.status === "fulfilled" ? ready.value.ok : undefined,
    error: status.status === "rejected" ? explain(status.reason) : undefined,
  };
}

export function Cluster() {
  const [seen, setSeen] = useState<Seen[]>([]);
  const [error, setError] = useState("");
  const [at, setAt] = useState<Date | null>(null);

  useEffect(() => {
    let stopped = false;
    let timer: number | undefined;
    const round = async () => {
      const peers = await readPeers();
      const list = [{ name: "this gateway", base: "" }, ...peers];
      const results = await Promise.all(list.map(readOne));
      if (stopped) return;
      setSeen(results);
      setError(results[0]?.error ?? "");
      setAt(new Date());
      timer = window.setTimeout(round, REFRESH_MS);
    };
    void round();
    return () => {
      stopped = true;
      window.clearTimeout(timer);
    };
  }, []);

  const digests = new Map<string, number>();
  for (const s of seen) {
    if (s.status) digests.set(s.status.registry_digest, (digests.get(s.status.registry_digest) ?? 0) + 1);
  }
  const common = [...digests].sort((a, b) => b[1] - a[1])[0]?.[0];
  const diverged = digests.size > 1;
  const self = seen[0]?.status;

  return (
    <section>
      <Alert message={error} />
      {self ? (
        <dl class="facts">
          <dt>Node id</dt>
          <dd data-field="node-id">{self.node_id}</dd>
          <dt>Ready</dt>
          <dd>{seen[0].ready ? "yes (/readyz 200)" : "no (/readyz 503)"}</dd>
          <dt>Bus position</dt>
          <dd>
            {self.bus_position} (caught up to {self.catch_up_target} at start)
          </dd>
          <dt>Registry</dt>
          <dd>
            {self.registry_entries} entries, digest <code data-field="digest">{self.registry_digest}</code>
          </dd>
          <dt>Events</dt>
          <dd>
            {self.events_applied} applied, {self.events_rejected} rejected, {self.outbox_pending} waiting for the bus
          </dd>
        </dl>
      ) : null}
      <h3>Gateways side by side</h3>
      <p>
        {seen.length <= 1
          ? "No peers are listed beside the console (peers.json): this gateway only."
          : diverged
            ? "The registry digests differ: the gateways have not converged (yet)."
            : "Every gateway holds the same registry."}
      </p>
      <div class="scroll">
        <table>
          <thead>
            <tr>
              <th scope="col">Gateway</th>
              <th scope="col">Node id</th>
              <th scope="col">Ready</th>
              <th scope="col">Bus position</th>
              <th scope="col">Entries</th>
              <th scope="col">Digest</th>
            </tr>
          </thead>
          <tbody>
            {seen.map((s) => (
              <tr key={s.peer.name} class={s.status && diverged && s.status.registry_digest !== common ? "diverged" : undefined}>
                <th scope="row">{s.peer.name}</th>
                {s.status ? (
                  <>
                    <td>{s.status.node_id}</td>
                    <td>{s.ready ? "ready" : "not ready"}</td>
                    <td>{s.status.bus_position}</td>
                    <td>{s.status.registry_entries}</td>
                    <td>
                      <code>{s.status.registry_digest}</code>
                      {diverged && s.status.registry_digest !== common ? " (differs)" : ""}
                    </td>
                  </>
                ) : (
                  <td colSpan={5}>{s.error ?? "no answer"}</td>
                )}
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <p class="hint">{at ? `Read at ${at.toLocaleTimeString()}, every ${REFRESH_MS / 1000} s.` : "Reading…"}</p>
    </section>
  );
}
