// orderflow console: list refresh, select-all, confirmations. Loaded from this origin only
// (the Content-Security-Policy allows no inline script).
(function () {
  'use strict';

  var region = document.querySelector('[data-refresh-region]');
  var status = document.getElementById('refresh-status');
  var periodSecs = Number(document.body.dataset.refreshSecs || 0);
  var refreshes = 0;
  var skips = 0;

  function selectedCount() {
    return document.querySelectorAll('input[name="ids"]:checked').length;
  }

  function say(text) {
    if (status) { status.textContent = text; }
  }

  function showSelection() {
    var n = selectedCount();
    say(n > 0 ? n + ' selected: auto-refresh paused' : '');
  }

  document.addEventListener('change', function (event) {
    var box = event.target;
    if (box.matches && box.matches('input[data-select-all]')) {
      document.querySelectorAll('input[name="ids"]').forEach(function (b) { b.checked = box.checked; });
    }
    showSelection();
  });

  document.addEventListener('click', function (event) {
    var button = event.target.closest && event.target.closest('button[data-confirm]');
    if (button && !window.confirm(button.dataset.confirm)) { event.preventDefault(); }
  });

  // Lists refresh themselves, but never while the operator has rows selected: the
  // selection would be lost, or worse, point at other rows.
  function refresh() {
    if (selectedCount() > 0) {
      skips += 1;
      region.dataset.refreshSkips = String(skips);
      showSelection();
      return;
    }
    // Marked as a refresh: the server does not count it as the operator's activity, so an
    // open tab does not keep its session alive.
    fetch(window.location.href, {
      credentials: 'same-origin',
      headers: { Accept: 'text/html', 'X-Console-Refresh': '1' }
    })
      .then(function (res) {
        if (res.redirected) { window.location.reload(); return null; }
        if (!res.ok) { say('refresh failed (HTTP ' + res.status + ')'); return null; }
        return res.text();
      })
      .then(function (html) {
        if (html === null || selectedCount() > 0) { return; }
        var fresh = new DOMParser().parseFromString(html, 'text/html').querySelector('[data-refresh-region]');
        if (!fresh) { return; }
        region.replaceChildren.apply(region, Array.from(fresh.childNodes).map(function (n) {
          return document.importNode(n, true);
        }));
        refreshes += 1;
        region.dataset.refreshes = String(refreshes);
        say('updated ' + new Date().toLocaleTimeString());
      })
      .catch(function () { say('refresh failed'); });
  }

  if (region && periodSecs > 0) {
    region.dataset.refreshes = '0';
    region.dataset.refreshSkips = '0';
    window.setInterval(refresh, periodSecs * 1000);
  }
})();
