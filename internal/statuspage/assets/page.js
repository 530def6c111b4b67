// hybrid status page: refresh the page's main part in place every few
// seconds (the server renders it; nothing here knows its structure), and
// say when the last refresh was or that it failed. Paused while the page
// is hidden.
(function () {
  "use strict";
  var every = (parseInt(document.body.dataset.refresh, 10) || 5) * 1000;
  var refreshes = 0;
  function setText(sel, text, stale) {
    var el = document.querySelector(sel);
    if (el) {
      el.textContent = text;
      el.parentElement.classList.toggle("stale", !!stale);
    }
  }
  function refresh() {
    if (document.hidden) {
      return;
    }
    fetch(location.href, { cache: "no-store", credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) {
          throw new Error(r.status + " " + r.statusText);
        }
        return r.text();
      })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        ["#main", "#state", "title"].forEach(function (sel) {
          var fresh = doc.querySelector(sel), old = document.querySelector(sel);
          if (fresh && old) {
            old.replaceWith(fresh);
          }
        });
        refreshes++;
        document.body.dataset.refreshed = String(refreshes);
        measure();
        setText("#updated", "updated " + new Date().toLocaleTimeString(), false);
      })
      .catch(function (e) {
        setText("#updated", "refresh failed at " + new Date().toLocaleTimeString() + ": " + e.message, true);
      });
  }
  // Whether the page is wider than its window (on a phone it must not be:
  // wide tables scroll inside their own box). Said on the body for tests
  // and anyone curious; nothing depends on it.
  function measure() {
    var w = window.innerWidth, sw = document.documentElement.scrollWidth;
    document.body.dataset.overflow = sw > w ? "x" : "none";
    document.body.dataset.width = w + "/" + sw;
  }
  window.addEventListener("load", measure);
  window.addEventListener("resize", measure);
  setInterval(refresh, every);
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) {
      refresh();
    }
  });
})();
