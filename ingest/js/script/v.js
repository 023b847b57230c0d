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
 * Views go out with fetch and keepalive, as a text/plain body: a browser sends
 * that to another origin without a CORS preflight, and keepalive lets it finish
 * while the page unloads, as a beacon would. Unlike a beacon, its answer can be
 * read: a view the ingest refuses (an unknown data-type, a missing key, a rate
 * limit) is reported in the console with the API's error code and message.
 * Reading needs the page's origin in the ingest's CORS_ORIGINS; where it is not,
 * the browser logs a CORS error once, the view still counts, and the script sends
 * the page's later views without reading their answers (mode no-cors), saying so
 * once. Where fetch is missing, navigator.sendBeacon sends the view
 * (its answer is never known).
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

  // "cors" until an answer proves unreadable from this origin, then "no-cors".
  var mode = "cors";

  // Says in the console why the ingest refused a view: its error code and message.
  function report(view, response) {
    if (response.ok || response.type === "opaque") return;
    response.json().then(function (body) {
      var error = (body && body.error) || {};
      console.warn("viewpipe: the view of " + view.contentType + ":" + view.contentId +
        " was not counted (" + response.status + " " + error.code + "): " + error.message);
    }, function () {
      console.warn("viewpipe: the view of " + view.contentType + ":" + view.contentId +
        " was not counted (" + response.status + ")");
    });
  }

  function unreadable() {
    // No answer could be read: the ingest does not list this origin in
    // CORS_ORIGINS (the request went out all the same: a text/plain POST needs no
    // preflight, only its answer is hidden), or the network failed (then this view
    // is lost, as a beacon's would be). Later views go out in "no-cors" mode, which
    // sends them the same way without asking for the answer.
    if (mode === "no-cors") return;
    mode = "no-cors";
    console.warn("viewpipe: no answer from the ingest could be read on this page: it " +
      "does not list " + location.origin + " in CORS_ORIGINS, or the network failed. " +
      "Views are still sent; refused ones cannot be reported here");
  }

  function send(view) {
    var body = JSON.stringify(view);
    if (window.fetch) {
      try {
        var sent = fetch(endpoint, {
          method: "POST", body: body, keepalive: true, mode: mode, credentials: "omit"
        });
        sent.then(function (response) { report(view, response); }, unreadable);
        return true;
      } catch (e) {
        // fetch threw instead of rejecting (an old browser without keepalive):
        // the beacon below.
      }
    }
    try {
      return !!(navigator.sendBeacon && navigator.sendBeacon(endpoint, body));
    } catch (e) {
      return false;
    }
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
