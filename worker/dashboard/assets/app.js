// Omnibus dashboard: the only script. The pages work without it; it only refreshes the
// numbers in place. No inline script, no eval, no dialogs: the Content-Security-Policy forbids
// the first two, and confirmation is a server-side dry-run page, never a browser dialog.
'use strict';

(function () {
  const main = document.getElementById('main');
  if (!main) return;
  const every = Number(main.dataset.refresh || 0);
  if (!(every > 0)) return;

  let busy = false;
  async function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const res = await fetch(window.location.href, { credentials: 'same-origin', cache: 'no-store' });
      if (!res.ok) return;
      // The server escaped everything in the page; it is parsed, never evaluated.
      const doc = new DOMParser().parseFromString(await res.text(), 'text/html');
      const fresh = doc.getElementById('main');
      if (!fresh) return;
      const active = document.activeElement;
      if (active && main.contains(active) && active.tagName === 'INPUT') return;  // do not steal a field being edited
      main.replaceChildren(...Array.from(fresh.childNodes).map((n) => document.importNode(n, true)));
      if (!fresh.dataset.refresh) {
        delete main.dataset.refresh;
        window.clearInterval(timer);
      }
    } catch (e) {
      // The worker restarts or the network blinks: the next tick tries again.
    } finally {
      busy = false;
    }
  }
  const timer = window.setInterval(refresh, every);
})();
