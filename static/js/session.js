// The tab's session in sessionStorage (one per tab; it survives a reload, not a closed tab):
// {name, session, lastSeq, active}. `session` is the token that takes the session back, so it
// stays in this tab only (never localStorage, which every tab of the origin shares and which
// outlives the browser).

import { isValidName } from "./protocol.js";

const STORAGE_KEY = "chatroom.session";

function storage() {
  try {
    return window.sessionStorage;
  } catch {
    return null; // storage disabled: sessions last as long as the page
  }
}

function isStoredActive(active) {
  return active !== null && typeof active === "object"
    && typeof active.key === "string" && typeof active.title === "string";
}

/** The stored session, or null when there is none (or it is not what we stored). */
export function loadSession() {
  const store = storage();
  if (store === null) return null;
  let stored;
  try {
    stored = JSON.parse(store.getItem(STORAGE_KEY) ?? "null");
  } catch {
    return null;
  }
  if (stored === null || typeof stored !== "object" || !isValidName(stored.name)
      || typeof stored.session !== "string" || stored.session === ""
      || !Number.isInteger(stored.lastSeq) || stored.lastSeq < 0) {
    return null;
  }
  const active = isStoredActive(stored.active) ? stored.active : null;
  return { name: stored.name, session: stored.session, lastSeq: stored.lastSeq, active };
}

/** Store `changes` into the session (nothing while none is stored, unless they hold a
 *  token); null forgets it. */
export function saveSession(changes) {
  const store = storage();
  if (store === null) return;
  try {
    if (changes === null) {
      store.removeItem(STORAGE_KEY);
      return;
    }
    const current = loadSession();
    if (current === null && typeof changes.session !== "string") return;
    store.setItem(STORAGE_KEY, JSON.stringify({ ...current, ...changes }));
  } catch (error) {
    console.warn("cannot keep the session for a reload:", error.message); // e.g. quota
  }
}
