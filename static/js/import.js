/* prefloop import page: upload progress (XHR progress events), then the server's row
 * progress polled by HTMX while the request runs (#import-server-progress), and the result
 * swapped into #import-result. Without JavaScript the form posts and the page re-renders. */
(function () {
  "use strict";
  var form = document.getElementById("import-form");
  if (!form) return;
  var phase = document.getElementById("import-phase");
  var bar = document.getElementById("import-upload-bar");
  form.addEventListener("htmx:beforeRequest", function (e) {
    if (e.detail.elt !== form) return;
    document.body.classList.add("is-importing");
    phase.textContent = "Uploading…";
    bar.style.width = "0%";
    document.getElementById("import-result").innerHTML = "";
    document.getElementById("import-server-progress").innerHTML = "";
  });
  form.addEventListener("htmx:xhr:progress", function (e) {
    if (!e.detail.lengthComputable || !e.detail.total) return;
    var pct = Math.round((e.detail.loaded / e.detail.total) * 100);
    bar.style.width = pct + "%";
    if (pct >= 100) phase.textContent = "Checking every line, then importing…";
  });
  form.addEventListener("htmx:afterRequest", function (e) {
    if (e.detail.elt !== form) return;
    document.body.classList.remove("is-importing");
    var fresh = document.getElementById("import-result").querySelector("[data-next-token]");
    if (fresh) document.getElementById("import-token").value = fresh.getAttribute("data-next-token");
    if (!e.detail.successful) {
      document.getElementById("import-result").innerHTML =
        '<div class="notice notice-error">The server could not process the upload (HTTP ' + e.detail.xhr.status + '). Nothing was imported.</div>';
    }
  });
})();
