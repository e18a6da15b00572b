// overair dashboard: live rollout progress. Fetches the page's own progress fragment
// again every few seconds while the rollout runs (same origin, the session cookie goes
// along) and swaps it in. The fragment is rendered, and escaped, by the server.
"use strict";
(function () {
  var REFRESH_MS = 3000;
  function refresh(box) {
    var url = box.getAttribute("data-refresh");
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (response.status !== 200 || response.redirected) { return null; }
        return response.text();
      })
      .then(function (html) {
        if (html === null) { return; }
        var parsed = new DOMParser().parseFromString(html, "text/html");
        box.replaceChildren.apply(box, Array.prototype.slice.call(parsed.body.childNodes));
        box.setAttribute("data-refreshed", String(Date.now()));
        var status = box.querySelector("#job-status");
        if (status && status.textContent !== "IN_PROGRESS" && status.textContent !== "SCHEDULED") { return; }
        window.setTimeout(function () { refresh(box); }, REFRESH_MS);
      })
      .catch(function () { window.setTimeout(function () { refresh(box); }, REFRESH_MS * 3); });
  }
  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("progress");
    if (box && box.getAttribute("data-refresh-while")) {
      window.setTimeout(function () { refresh(box); }, REFRESH_MS);
    }
  });
})();
