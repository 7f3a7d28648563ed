// Conveyor dashboard: refresh the live part of the page without a reload, and ask before
// a destructive action. No build step, no dependency.
(function () {
  "use strict";
  document.addEventListener("submit", function (ev) {
    var message = ev.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) ev.preventDefault();
  });
  var live = document.getElementById("live");
  if (!live) return;
  var every = parseInt(document.body.getAttribute("data-refresh") || "3000", 10);
  var busy = false;
  function interacting() {
    // Never swap the part of the page someone is typing into or has opened.
    var active = document.activeElement;
    return (active && live.contains(active) && active.tagName !== "BODY" && active.tagName !== "A") ||
      live.querySelector("details[open]") !== null;
  }
  function refresh() {
    if (busy || document.hidden || interacting()) return;
    busy = true;
    fetch(window.location.href, { headers: { "X-Conveyor-Partial": "1" }, credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html !== null) {
          live.innerHTML = html;
          document.body.setAttribute("data-refreshed", String(Date.now()));
        }
      })
      .catch(function () { /* the next tick tries again */ })
      .then(function () { busy = false; });
  }
  window.setInterval(refresh, every);
})();
