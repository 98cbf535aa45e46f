// A request to a service, sent as the GraphQL `call` of the control listener: the same
// translation, policies, routing and retries as a REST request to the public front, without
// the console ever reaching the public listener (docs/decisions/0022). The answer, what the
// service received (the sample services echo it at /echo), and a history in this browser.
import { useState } from "preact/hooks";
import { explain, graphql, type GraphqlError } from "../api";
import { Alert } from "./common";

const HISTORY_KEY = "switchyard.console.history";
/** Requests remembered; older ones drop off. */
export const HISTORY_MAX = 20;
/** Longest body kept in the history (longer ones are cut). */
export const HISTORY_BODY_CHARS_MAX = 4_096;
/** Header values never written to storage. */
const SECRET_HEADERS = new Set(["authorization", "cookie", "proxy-authorization"]);

const METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

interface Form {
  service: string;
  method: string;
  path: string;
  query: string;
  headers: string;
  body: string;
}

interface Header {
  name: string;
  value: string;
}

interface CallResult {
  status: number;
  headers: Header[];
  body: string;
  json: unknown;
  requestId: string;
}

interface Answer {
  result?: CallResult;
  error?: string;
  ms: number;
}

interface Past {
  at: number;
  form: Form;
  status: number | string;
  ms: number;
}

const CALL = `query Try($service: String!, $method: String!, $path: String!, $query: String!, $headers: [HeaderInput!]!, $body: String!) {
  call(service: $service, method: $method, path: $path, query: $query, headers: $headers, body: $body) {
    status headers { name value } body json requestId
  }
}`;

export function parseHeaders(text: string): Header[] {
  return text
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line !== "")
    .map((line) => {
      const colon = line.indexOf(":");
      if (colon <= 0) throw new Error(`a header line needs "name: value": ${line.slice(0, 80)}`);
      return { name: line.slice(0, colon).trim(), value: line.slice(colon + 1).trim() };
    });
}

function loadHistory(): Past[] {
  try {
    const list = JSON.parse(localStorage.getItem(HISTORY_KEY) ?? "[]");
    return Array.isArray(list) ? list.slice(0, HISTORY_MAX) : [];
  } catch {
    return [];
  }
}

function keep(past: Past, history: Past[]): Past[] {
  const headers = past.form.headers
    .split("\n")
    .map((line) => {
      const name = line.split(":")[0]?.trim().toLowerCase() ?? "";
      return SECRET_HEADERS.has(name) ? `${line.split(":")[0]}: (not kept)` : line;
    })
    .join("\n");
  const form = { ...past.form, headers, body: past.form.body.slice(0, HISTORY_BODY_CHARS_MAX) };
  const next = [{ ...past, form }, ...history].slice(0, HISTORY_MAX);
  try {
    localStorage.setItem(HISTORY_KEY, JSON.stringify(next));
  } catch {
    // Storage full or refused: the history lives for this page only.
  }
  return next;
}

function graphqlDocument(form: Form, headers: Header[]): string {
  const args = [`service: ${JSON.stringify(form.service)}`, `method: ${JSON.stringify(form.method)}`, `path: ${JSON.stringify(form.path)}`];
  if (form.query) args.push(`query: ${JSON.stringify(form.query)}`);
  if (headers.length) args.push(`headers: [${headers.map((h) => `{name: ${JSON.stringify(h.name)}, value: ${JSON.stringify(h.value)}}`).join(", ")}]`);
  if (form.body) args.push(`body: ${JSON.stringify(form.body)}`);
  return `{\n  call(${args.join(", ")}) {\n    status\n    headers { name value }\n    body\n    requestId\n  }\n}`;
}

/** A refused call in words. A call runs the public front's policies whatever the control
 * token, so its `unauthenticated` is the JWT check on the service's route. */
function callRefusal(error: GraphqlError): string {
  const code = error.extensions?.code ?? "error";
  const status = error.extensions?.status;
  const id = error.extensions?.requestId ? ` (request id ${error.extensions.requestId})` : "";
  const head = `${status ? status + " " : ""}${code}: ${error.message}${id}`;
  return code === "unauthenticated"
    ? `${head}. The service's route needs a public token: add an "authorization: Bearer …" header.`
    : head;
}

/** The trace id of a W3C traceparent (`00-<trace id>-<span id>-<flags>`). */
function traceId(traceparent: unknown): string | undefined {
  return typeof traceparent === "string" ? traceparent.split("-")[1] : undefined;
}

export function TryIt() {
  const [form, setForm] = useState<Form>({ service: "sample", method: "GET", path: "/echo", query: "", headers: "", body: "" });
  const [answer, setAnswer] = useState<Answer | null>(null);
  const [busy, setBusy] = useState(false);
  const [history, setHistory] = useState<Past[]>(loadHistory);
  const [mode, setMode] = useState<"form" | "graphql">("form");
  const [operation, setOperation] = useState("");
  const [raw, setRaw] = useState("");

  const field = (name: keyof Form) => ({
    id: `try-${name}`,
    value: form[name],
    onInput: (e: Event) => setForm({ ...form, [name]: (e.target as HTMLInputElement).value }),
  });

  const send = async (e: Event) => {
    e.preventDefault();
    let headers: Header[];
    try {
      headers = parseHeaders(form.headers);
    } catch (error) {
      setAnswer({ error: explain(error), ms: 0 });
      return;
    }
    setBusy(true);
    const started = performance.now();
    try {
      const got = await graphql<{ call: CallResult | null }>(CALL, { ...form, headers });
      const ms = performance.now() - started;
      const failure = got.errors?.[0];
      const next: Answer = got.data?.call ? { result: got.data.call, ms } : { error: failure ? callRefusal(failure) : "no answer", ms };
      setAnswer(next);
      setHistory(keep({ at: Date.now(), form, status: next.result?.status ?? (failure?.extensions?.code ?? "error"), ms }, history));
    } catch (error) {
      setAnswer({ error: explain(error), ms: performance.now() - started });
    } finally {
      setBusy(false);
    }
  };

  const runGraphql = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    try {
      const got = await graphql<unknown>(operation);
      setRaw(JSON.stringify(got, null, 2));
    } catch (error) {
      setRaw(explain(error));
    } finally {
      setBusy(false);
    }
  };

  const result = answer?.result;
  const echo = result?.json && typeof result.json === "object" ? (result.json as Record<string, unknown>) : undefined;
  const servedBy = result?.headers.find((h) => h.name === "x-served-by")?.value ?? (typeof echo?.instance === "string" ? echo.instance : undefined);
  const received = echo && "traceparent" in echo && "request_id" in echo ? echo : undefined;

  return (
    <section>
      <div role="tablist" aria-label="How to send" class="tabs">
        <button role="tab" type="button" aria-selected={mode === "form"} onClick={() => setMode("form")}>
          Request
        </button>
        <button
          role="tab"
          type="button"
          aria-selected={mode === "graphql"}
          onClick={() => {
            setMode("graphql");
            try {
              setOperation(graphqlDocument(form, parseHeaders(form.headers)));
            } catch {
              setOperation(graphqlDocument(form, []));
            }
          }}
        >
          GraphQL
        </button>
      </div>
      {mode === "form" ? (
        <form class="try" onSubmit={send}>
          <div class="row">
            <div class="field">
              <label for="try-method">Method</label>
              <select id="try-method" value={form.method} onChange={(e) => setForm({ ...form, method: (e.target as HTMLSelectElement).value })}>
                {METHODS.map((m) => (
                  <option key={m}>{m}</option>
                ))}
              </select>
            </div>
            <div class="field">
              <label for="try-service">Service</label>
              <input {...field("service")} required spellcheck={false} />
            </div>
            <div class="field grow">
              <label for="try-path">Path</label>
              <input {...field("path")} spellcheck={false} />
            </div>
            <div class="field grow">
              <label for="try-query">Query</label>
              <input {...field("query")} spellcheck={false} placeholder="a=1&b=2" />
            </div>
          </div>
          <label for="try-headers">Headers, one "name: value" a line</label>
          <textarea {...field("headers")} rows={3} spellcheck={false} />
          <label for="try-body">Body</label>
          <textarea {...field("body")} rows={4} spellcheck={false} />
          <p class="hint">
            Sent as <code>{form.method} /{form.service}{form.path}{form.query ? `?${form.query}` : ""}</code> would be on the public front, through
            this gateway's GraphQL <code>call</code>.
          </p>
          <button type="submit" disabled={busy}>
            {busy ? "Sending…" : "Send"}
          </button>
        </form>
      ) : (
        <form class="try" onSubmit={runGraphql}>
          <label for="try-graphql">GraphQL operation (sent to this gateway's /graphql)</label>
          <textarea id="try-graphql" rows={10} spellcheck={false} value={operation} onInput={(e) => setOperation((e.target as HTMLTextAreaElement).value)} />
          <button type="submit" disabled={busy}>
            {busy ? "Running…" : "Run"}
          </button>
          {raw ? (
            <>
              <h3>Answer</h3>
              <pre data-field="graphql-answer" tabIndex={0}>
                {raw}
              </pre>
            </>
          ) : null}
        </form>
      )}
      {mode === "form" && answer ? (
        <div class="answer" aria-live="polite">
          <Alert message={answer.error ?? ""} />
          {result ? (
            <>
              <h3>Response</h3>
              <dl class="facts">
                <dt>Status</dt>
                <dd data-field="status">{result.status}</dd>
                <dt>Time</dt>
                <dd>{answer.ms.toFixed(1)} ms (in the browser, the call's round trip)</dd>
                <dt>Instance</dt>
                <dd data-field="instance">{servedBy ?? "not said by the service"}</dd>
                <dt>Request id</dt>
                <dd data-field="request-id">{result.requestId}</dd>
                <dt>Trace id</dt>
                <dd data-field="trace-id">{traceId(received?.traceparent) ?? "not said by the service"}</dd>
              </dl>
              <h4>Headers</h4>
              <ul class="headers">
                {result.headers.map((h, i) => (
                  <li key={i}>
                    <code>
                      {h.name}: {h.value}
                    </code>
                  </li>
                ))}
              </ul>
              <h4>Body</h4>
              <pre data-field="body" tabIndex={0}>
                {echo ? JSON.stringify(echo, null, 2) : result.body}
              </pre>
              {received ? (
                <>
                  <h4>What the service received (its ForwardingReq, as it echoes it)</h4>
                  <dl class="facts" data-field="received">
                    {Object.entries(received).map(([k, v]) => (
                      <>
                        <dt>{k}</dt>
                        <dd>
                          <code>{typeof v === "string" ? v : JSON.stringify(v)}</code>
                        </dd>
                      </>
                    ))}
                  </dl>
                </>
              ) : null}
            </>
          ) : null}
        </div>
      ) : null}
      <h3>History</h3>
      {history.length === 0 ? (
        <p>Nothing sent yet. The last {HISTORY_MAX} requests are kept in this browser (credentials in headers are not).</p>
      ) : (
        <ol class="history">
          {history.map((past) => (
            <li key={past.at}>
              <button type="button" onClick={() => (setForm(past.form), setMode("form"))}>
                {past.form.method} /{past.form.service}
                {past.form.path} → {past.status} ({Math.round(past.ms)} ms)
              </button>
            </li>
          ))}
        </ol>
      )}
      {history.length ? (
        <button type="button" onClick={() => (localStorage.removeItem(HISTORY_KEY), setHistory([]))}>
          Clear history
        </button>
      ) : null}
    </section>
  );
}
