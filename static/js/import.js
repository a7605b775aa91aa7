/* prefloop import page: upload progress (XHR progress events), then the server's row
 * progress polled while the request runs (#import-server-progress), and the result swapped
 * into #import-result (with the project's comparison count refreshed out of band). Without
 * JavaScript the form posts and the page re-renders. No eval and no inline styles: the
 * page runs under a strict Content-Security-Policy (prefloop/csp.py). */
(function () {
  "use strict";
  var form = document.getElementById("import-form");
  if (!form) return;
  var phase = document.getElementById("import-phase");
  var bar = document.getElementById("import-upload-bar");
  var serverProgress = document.getElementById("import-server-progress");
  var poller = null;

  function poll() {
    if (!window.htmx) return;
    htmx.ajax("GET", serverProgress.getAttribute("data-progress-url"), {
      target: serverProgress,
      swap: "innerHTML",
      values: { token: document.getElementById("import-token").value },
    });
  }

  function stopPolling() {
    if (poller !== null) { clearInterval(poller); poller = null; }
  }

  form.addEventListener("htmx:beforeRequest", function (e) {
    if (e.detail.elt !== form) return;
    document.body.classList.add("is-importing");
    phase.textContent = "Uploading…";
    bar.setAttribute("width", "0");
    document.getElementById("import-result").innerHTML = "";
    serverProgress.innerHTML = "";
    stopPolling();
    poller = setInterval(poll, 400);
  });
  form.addEventListener("htmx:xhr:progress", function (e) {
    if (!e.detail.lengthComputable || !e.detail.total) return;
    var pct = Math.round((e.detail.loaded / e.detail.total) * 100);
    bar.setAttribute("width", String(pct));
    if (pct >= 100) phase.textContent = "Checking every line, then importing…";
  });
  form.addEventListener("htmx:afterRequest", function (e) {
    if (e.detail.elt !== form) return;
    stopPolling();
    document.body.classList.remove("is-importing");
    var fresh = document.getElementById("import-result").querySelector("[data-next-token]");
    if (fresh) document.getElementById("import-token").value = fresh.getAttribute("data-next-token");
    if (!e.detail.successful) {
      var note = document.createElement("div");
      note.className = "notice notice-error";
      note.setAttribute("role", "alert");
      note.textContent = "The server could not process the upload (HTTP " + e.detail.xhr.status + "). Nothing was imported.";
      document.getElementById("import-result").replaceChildren(note);
    }
  });
})();
