import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { getToken, onTokenChange, setToken } from "./api";
import { Cluster } from "./pages/cluster";
import { Services } from "./pages/services";
import { TryIt } from "./pages/tryit";
import { Traffic } from "./pages/traffic";

const PAGES = [
  { id: "cluster", title: "Cluster", view: Cluster },
  { id: "services", title: "Services", view: Services },
  { id: "try", title: "Try it", view: TryIt },
  { id: "traffic", title: "Traffic", view: Traffic },
] as const;

function currentPage(): string {
  const id = location.hash.replace(/^#\/?/, "");
  return PAGES.some((p) => p.id === id) ? id : "services";
}

function TokenField() {
  const [draft, setDraft] = useState("");
  const [held, setHeld] = useState(getToken() !== "");
  useEffect(() => onTokenChange(() => setHeld(getToken() !== "")), []);
  return (
    <form
      class="token"
      onSubmit={(e) => {
        e.preventDefault();
        setToken(draft.trim());
        setDraft("");
      }}
    >
      <label for="token">Control token</label>
      <input
        id="token"
        type="password"
        autocomplete="off"
        spellcheck={false}
        placeholder={held ? "held for this tab" : "paste a token with read"}
        value={draft}
        onInput={(e) => setDraft((e.target as HTMLInputElement).value)}
      />
      <button type="submit">Use</button>
      <button type="button" disabled={!held} onClick={() => setToken("")}>
        Forget
      </button>
      <span class="hint" aria-live="polite">
        {held ? "Token held in this tab's session storage." : "No token: reads are refused unless control.reads is open."}
      </span>
    </form>
  );
}

function App() {
  const [page, setPage] = useState(currentPage());
  // Pages that depend on the token start again when it changes.
  const [epoch, setEpoch] = useState(0);
  useEffect(() => {
    const onHash = () => setPage(currentPage());
    window.addEventListener("hashchange", onHash);
    const off = onTokenChange(() => setEpoch((n) => n + 1));
    return () => {
      window.removeEventListener("hashchange", onHash);
      off();
    };
  }, []);
  const active = PAGES.find((p) => p.id === page) ?? PAGES[1];
  const View = active.view;
  useEffect(() => {
    document.title = `${active.title} · Switchyard console`;
  }, [active]);
  return (
    <>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header>
        <h1>Switchyard</h1>
        <nav aria-label="Pages">
          <ul>
            {PAGES.map((p) => (
              <li key={p.id}>
                <a href={`#/${p.id}`} aria-current={p.id === page ? "page" : undefined}>
                  {p.title}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <TokenField />
      </header>
      <main id="main" tabIndex={-1}>
        <h2>{active.title}</h2>
        <View key={`${page}-${epoch}`} />
      </main>
    </>
  );
}

render(<App />, document.getElementById("app")!);
