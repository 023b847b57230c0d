/*
 * viewpipe's view counter for web pages, served by the ingest at /v.js.
 * Embed it with:
 *
 *   <script defer src="https://views.example.com/v.js"
 *           data-type="page"></script>
 *
 * It counts one view when the page loads, and one each time a single-page app
 * moves to another path (history.pushState or replaceState, back and forward).
 * Attributes of its <script> tag:
 *
 *   data-type  the contentType (required: one of the ingest's NAMESPACES)
 *   data-id    the contentId; by default derived from the path:
 *              "/docs/intro/" counts as "docs:intro", "/" as "index"
 *   data-key   the write key, where the ingest requires one (WRITE_KEYS)
 *   data-dnt   "respect": count nothing when the browser sends Do Not Track
 *
 * window.viewpipe.view(fields) counts one more view of the current page, the
 * given fields replacing the defaults, e.g.
 *
 *   viewpipe.view({ contentType: "video", contentId: "intro" })
 *
 * Views go out with navigator.sendBeacon as a text/plain body: a browser sends
 * that to another origin without a CORS preflight, even while the page unloads.
 * Where sendBeacon is missing or refuses, fetch with keepalive does the same.
 * Nothing is stored in the browser: no cookie, no local storage.
 */
(function () {
  "use strict";

  var script = document.currentScript;
  // Only a classic <script src> has a tag to read; a second copy does nothing.
  if (!script || !script.src || window.viewpipe) return;

  var data = script.dataset;
  // The API is where the script came from (also under a path prefix a proxy adds:
  // .../views/v.js posts to .../views/api/views).
  var url = new URL("api/views", script.src);
  if (data.key) url.searchParams.set("key", data.key);
  var endpoint = url.href;

  var optedOut = data.dnt === "respect" &&
    (navigator.doNotTrack === "1" || window.doNotTrack === "1");

  if (!data.type) {
    console.warn("viewpipe: the script tag needs data-type (the contentType)");
  }

  // A contentId is 1 to 128 of A-Z a-z 0-9 . _ ~ : - so the path's segments are
  // joined with ":" and any other character becomes "_".
  function idFromPath(path) {
    var id = path.split("/").filter(Boolean).join(":")
      .replace(/[^A-Za-z0-9._~:-]/g, "_")
      .slice(0, 128);
    return id || "index";
  }

  function send(view) {
    var body = JSON.stringify(view);
    try {
      if (navigator.sendBeacon && navigator.sendBeacon(endpoint, body)) return true;
    } catch (e) {
      // A content security policy may forbid it: fetch below is tried.
    }
    if (!window.fetch) return false;
    // A string body is sent as text/plain, and no-cors needs no preflight; the
    // answer cannot be read, and none is needed.
    fetch(endpoint, { method: "POST", body: body, keepalive: true, mode: "no-cors" })
      .catch(function () {});
    return true;
  }

  // Counts one view of the current page; false when nothing was sent.
  function view(fields) {
    if (optedOut) return false;
    var path = location.pathname;
    var v = {
      contentType: data.type,
      contentId: data.id || idFromPath(path),
      path: path.slice(0, 2048)
    };
    for (var name in fields) {
      if (Object.prototype.hasOwnProperty.call(fields, name)) v[name] = fields[name];
    }
    return send(v);
  }

  // One view per path: a replaceState that only changes the query or the hash,
  // or a pushState to the same path, counts nothing.
  var counted = null;
  function navigated() {
    if (location.pathname === counted) return;
    counted = location.pathname;
    view();
  }

  ["pushState", "replaceState"].forEach(function (name) {
    var original = history[name];
    history[name] = function () {
      var result = original.apply(this, arguments);
      navigated();
      return result;
    };
  });
  window.addEventListener("popstate", navigated);

  window.viewpipe = { view: view };
  navigated();
})();
