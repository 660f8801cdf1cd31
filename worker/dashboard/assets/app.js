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
  let pressing = false;  // a click under way: replacing its button would swallow it
  document.addEventListener('pointerdown', () => { pressing = true; }, true);
  document.addEventListener('pointerup', () => { window.setTimeout(() => { pressing = false; }, 0); }, true);

  // Whether the operator is doing something in the page: focus in it (a field, a button), a
  // press, or text selected in it. The numbers wait for the next tick.
  function interacting() {
    if (pressing) return true;
    const active = document.activeElement;
    if (active && active !== document.body && main.contains(active)) return true;
    const selection = window.getSelection();
    return selection !== null && !selection.isCollapsed && main.contains(selection.anchorNode);
  }

  async function refresh() {
    if (busy || document.hidden || interacting()) return;
    busy = true;
    try {
      const res = await fetch(window.location.href, { credentials: 'same-origin', cache: 'no-store' });
      if (res.status >= 400 && res.status < 500) {  // signed out, gone: polling would not help
        window.clearInterval(timer);
        return;
      }
      if (!res.ok) return;
      // The server escaped everything in the page; it is parsed, never evaluated.
      const doc = new DOMParser().parseFromString(await res.text(), 'text/html');
      const fresh = doc.getElementById('main');
      if (!fresh) return;
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
