import { useEffect, useState } from "preact/hooks";

/** The browser's clock, read again every `interval_ms`. */
export function useNow(intervalMs: number): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = window.setInterval(() => setNow(Date.now()), intervalMs);
    return () => window.clearInterval(t);
  }, [intervalMs]);
  return now;
}

/** A refusal or failure, announced to screen readers as it appears. */
export function Alert({ message }: { message: string }) {
  return (
    <div role="alert" class={message ? "alert" : "alert empty"}>
      {message}
    </div>
  );
}
