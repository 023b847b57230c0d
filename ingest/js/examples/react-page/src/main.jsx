// A page showing "{n} views" with viewpipe's hook, inside React.StrictMode. The
// query string says where the ingest is (?api=) and which page to count (?id=);
// with ?report=1 the page posts what it showed to /report on its own origin once
// its view was answered (the e2e test, tests/tests/e2e/js.rs, reads it).
import { StrictMode, useEffect, useRef, useState, version } from "react";
import { createRoot } from "react-dom/client";
import { createClient } from "viewpipe";
import { ViewpipeProvider, useViews } from "viewpipe/react";

const params = new URLSearchParams(location.search);
const contentId = params.get("id") ?? "react-page";

// The views this page posted, and how often the effect that counts one ran: in a
// development build StrictMode runs it twice, yet one load is one view.
let posts = 0;
let effectRuns = 0;
const client = createClient({
  url: params.get("api") ?? "http://127.0.0.1:8080",
  fetch: (url, init) => {
    if (init?.method === "POST") posts += 1;
    return fetch(url, init);
  },
});

function Views() {
  const { viewCount, incrementView, isLoading, error } = useViews({ contentId, contentType: "page" });
  const [answered, setAnswered] = useState(false);
  useEffect(() => {
    effectRuns += 1;
    incrementView().then(() => setAnswered(true));
  }, [incrementView]);

  const reported = useRef(false);
  useEffect(() => {
    if (!answered || reported.current || !params.has("report")) return;
    reported.current = true;
    const report = {
      shown: document.getElementById("views").textContent,
      viewCount,
      isLoading,
      error: error ? `${error.status} ${error.code}: ${error.message}` : null,
      posts,
      effectRuns,
      react: version,
      development: import.meta.env.DEV,
      userAgent: navigator.userAgent,
    };
    fetch("/report", { method: "POST", body: JSON.stringify(report) });
  }, [answered, viewCount, isLoading, error]);

  return <p id="views">{error ? `not counted: ${error.code}` : isLoading ? "…" : `${viewCount} views`}</p>;
}

createRoot(document.getElementById("root")).render(
  <StrictMode>
    <ViewpipeProvider client={client}>
      <Views />
    </ViewpipeProvider>
  </StrictMode>,
);
