// The orbilnot console: plain JavaScript, no framework and no build step (README, "Console").
//
// Everything it shows comes from the ordinary API through the gateway, called with the user's own
// token, so the services' ownership rules decide what it may see. The gateway's event stream
// (/console/api/events) only says *when* something changed: an order was sent or decided, a
// dead letter arrived. The page then moves the order's status and re-reads that one account.
"use strict";

const STATUS_RANK = { NEW: 0, SENT: 1, CONFIRMED: 2, CANCELLED: 2, REFUND_PENDING: 3, REFUNDED: 4 };
const SHOWN = 12; // ledger entries and notifications shown per account (the latest)
const state = {
  config: null,
  auth: null, // {accessToken, refreshToken, idToken, expiresAt, subject, name, admin}
  oidc: null, // the issuer's discovery document
  accounts: new Map(), // accountId → {balance, orders: Map(orderNumber → order), ledger, notifications}
  timings: new Map(), // orderNumber → {sent, decided} as seen live
  heard: new Map(), // orderNumber → the furthest status its events said, known order or not yet
  stream: null, // AbortController of the open event stream
};

// -- small helpers ---------------------------------------------------------------------------------

const $ = (selector, root = document) => root.querySelector(selector);
const short = (id) => (id ? `${id.slice(0, 8)}…` : "");
const money = (n) => Number(n).toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const time = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "");
const after = (from, to) => {
  if (!from || !to) return "";
  const ms = new Date(to) - new Date(from);
  return ms < 1000 ? `+${Math.max(ms, 0)} ms` : `+${(ms / 1000).toFixed(1)} s`;
};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function randomId() {
  // crypto.randomUUID needs a secure context; getRandomValues works everywhere.
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function say(text, isError = false) {
  const box = $("#message");
  box.textContent = text;
  box.className = isError ? "error" : "info";
  box.hidden = !text;
}

// -- the API, with the user's token ----------------------------------------------------------------

async function api(method, path, body, headers = {}) {
  const init = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const token = await accessToken();
  if (token) init.headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, init);
  if (response.status === 401 && state.config.authMode === "oidc") {
    signedOut("Your session has ended: sign in again.");
  }
  return response;
}

async function apiJson(method, path, body, headers) {
  const response = await api(method, path, body, headers);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const detail = data && data.detail ? (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)) : "";
    throw new Error(`${method} ${path}: ${response.status} ${detail}`);
  }
  return { data, response };
}

// Lists come a page at a time, oldest first; the latest are on the last page (Link: rel="next").
async function allPages(path) {
  let items = [];
  let next = `${path}?limit=1000`;
  for (let page = 0; next && page < 20; page++) {
    const { data, response } = await apiJson("GET", next);
    items = items.concat(data);
    const link = response.headers.get("Link");
    const match = link && link.match(/<([^>]+)>;\s*rel="next"/);
    next = match ? match[1] : null;
  }
  return items;
}

// -- signing in: authorization code + PKCE (RFC 7636), a public client ----------------------------

const b64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
const redirectUri = () => `${location.origin}/console/`;

async function discovery() {
  if (!state.oidc) {
    const response = await fetch(`${state.config.issuer}/.well-known/openid-configuration`);
    if (!response.ok) throw new Error(`the identity provider answered ${response.status}`);
    state.oidc = await response.json();
  }
  return state.oidc;
}

async function signIn() {
  const oidc = await discovery();
  const verifier = b64url(crypto.getRandomValues(new Uint8Array(32)));
  const challenge = b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  const flow = { verifier, state: b64url(crypto.getRandomValues(new Uint8Array(16))) };
  sessionStorage.setItem("orbilnot.pkce", JSON.stringify(flow));
  const query = new URLSearchParams({
    response_type: "code",
    client_id: state.config.clientId,
    redirect_uri: redirectUri(),
    scope: "openid",
    state: flow.state,
    code_challenge: challenge,
    code_challenge_method: "S256",
  });
  location.assign(`${oidc.authorization_endpoint}?${query}`);
}

// Back from the provider with ?code=…&state=…: trade the code (and our verifier) for tokens.
async function finishSignIn(params) {
  const flow = JSON.parse(sessionStorage.getItem("orbilnot.pkce") || "null");
  sessionStorage.removeItem("orbilnot.pkce");
  history.replaceState(null, "", redirectUri());
  if (params.get("error")) throw new Error(`sign-in refused: ${params.get("error_description") || params.get("error")}`);
  if (!flow || flow.state !== params.get("state")) throw new Error("sign-in answer does not match the request (state)");
  await tokenRequest({
    grant_type: "authorization_code",
    code: params.get("code"),
    redirect_uri: redirectUri(),
    code_verifier: flow.verifier,
  });
}

async function tokenRequest(fields) {
  const oidc = await discovery();
  const response = await fetch(oidc.token_endpoint, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ client_id: state.config.clientId, ...fields }),
  });
  const data = await response.json();
  if (!response.ok) throw new Error(`token request refused: ${data.error_description || data.error || response.status}`);
  const claims = JSON.parse(atob(data.access_token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
  const roles = (claims.realm_access && claims.realm_access.roles) || [];
  state.auth = {
    accessToken: data.access_token,
    refreshToken: data.refresh_token,
    idToken: data.id_token || (state.auth && state.auth.idToken),
    expiresAt: Date.now() + data.expires_in * 1000,
    subject: claims.sub,
    name: claims.preferred_username || claims.sub,
    admin: roles.includes(state.config.adminRole),
  };
  // The tab's session only: closing it signs out.
  sessionStorage.setItem("orbilnot.auth", JSON.stringify(state.auth));
}

async function accessToken() {
  if (!state.auth) return null;
  if (Date.now() > state.auth.expiresAt - 30_000 && state.auth.refreshToken) {
    try {
      await tokenRequest({ grant_type: "refresh_token", refresh_token: state.auth.refreshToken });
    } catch (error) {
      signedOut(`Your session has ended: ${error.message}`);
      return null;
    }
  }
  return state.auth.accessToken;
}

function signedOut(text) {
  state.auth = null;
  sessionStorage.removeItem("orbilnot.auth");
  renderWho();
  if (text) say(text, true);
}

async function signOut() {
  const idToken = state.auth && state.auth.idToken;
  signedOut("");
  const oidc = await discovery();
  if (oidc.end_session_endpoint) {
    const query = new URLSearchParams({ client_id: state.config.clientId, post_logout_redirect_uri: redirectUri() });
    if (idToken) query.set("id_token_hint", idToken);
    location.assign(`${oidc.end_session_endpoint}?${query}`);
  } else {
    location.reload();
  }
}

function renderWho() {
  const oidc = state.config.authMode === "oidc";
  $("#sign-in").hidden = !oidc || !!state.auth;
  $("#sign-out").hidden = !oidc || !state.auth;
  $("#who").textContent = !oidc ? "authentication off" : state.auth ? `${state.auth.name}${state.auth.admin ? " (admin)" : ""}` : "not signed in";
  $("#controls").classList.toggle("disabled", oidc && !state.auth);
}

// -- watched accounts ------------------------------------------------------------------------------

function watchKey() {
  return `orbilnot.watched.${state.auth ? state.auth.subject : "open"}`;
}

function saveWatched() {
  localStorage.setItem(watchKey(), JSON.stringify([...state.accounts.keys()]));
}

async function watch(accountId, { quiet = false } = {}) {
  accountId = accountId.trim().toLowerCase();
  if (state.accounts.has(accountId)) return;
  if (state.accounts.size >= state.config.maxAccounts) {
    say(`At most ${state.config.maxAccounts} accounts can be watched at once.`, true);
    return;
  }
  state.accounts.set(accountId, { balance: null, orders: new Map(), ledger: [], notifications: [] });
  saveWatched();
  renderAccounts();
  try {
    await reload(accountId);
  } catch (error) {
    if (!quiet) say(error.message, true);
  }
  connect();
}

function unwatch(accountId) {
  state.accounts.delete(accountId);
  saveWatched();
  renderAccounts();
  connect();
}

// Everything about one account, as the services have it now.
async function reload(accountId) {
  const account = state.accounts.get(accountId);
  if (!account) return;
  const [{ data: info }, orders, ledger, notifications] = await Promise.all([
    apiJson("GET", `/account/${accountId}`),
    allPages(`/orders/${accountId}`),
    allPages(`/account/${accountId}/transactions`),
    allPages(`/notifications/${accountId}`),
  ]);
  account.balance = info.balance;
  account.ledger = ledger;
  account.notifications = notifications;
  for (const order of orders) mergeOrder(account, order);
  renderAccount(accountId);
}

// A status only ever moves forward: a list read just before an event arrived must not undo it,
// nor may a list read after an event about an order the page did not know yet (its payment can
// be decided before the page has read back the order it just placed).
function mergeOrder(account, order) {
  const known = account.orders.get(order.orderNumber);
  for (const status of [known && known.status, state.heard.get(order.orderNumber)]) {
    if (status && STATUS_RANK[status] > STATUS_RANK[order.status]) order = { ...order, status };
  }
  account.orders.set(order.orderNumber, { ...known, ...order });
}

// -- the event stream ------------------------------------------------------------------------------

const PAYMENT_STATUS = { PAYMENT_CONFIRMED: "CONFIRMED", PAYMENT_DENIED: "CANCELLED", REFUNDED: "REFUNDED" };
const ORDER_STATUS = { CREATED: "SENT", CANCELLED: "REFUND_PENDING" };
let retryTimer = null;
let retryDelay = 1000;

function setLive(text, on) {
  const pill = $("#live");
  pill.textContent = text;
  pill.className = `pill ${on ? "on" : "off"}`;
}

// (Re)open the stream for the watched accounts. fetch, not EventSource: EventSource cannot send
// the Authorization header.
async function connect() {
  if (state.stream) state.stream.abort();
  clearTimeout(retryTimer);
  if (!state.config.live) {
    setLive("live updates off", false);
    return;
  }
  if (state.config.authMode === "oidc" && !state.auth) {
    setLive("not signed in", false);
    return;
  }
  const controller = new AbortController();
  state.stream = controller;
  const query = new URLSearchParams([...state.accounts.keys()].map((id) => ["account", id]));
  try {
    const token = await accessToken();
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const response = await fetch(`/console/api/events?${query}`, { headers, signal: controller.signal });
    if (!response.ok) throw new Error(`event stream: ${response.status}`);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        handleBlock(block);
      }
    }
  } catch (error) {
    if (controller.signal.aborted) return; // replaced by a newer stream
  }
  if (state.stream !== controller) return;
  setLive("reconnecting…", false);
  retryTimer = setTimeout(connect, retryDelay);
  retryDelay = Math.min(retryDelay * 2, 15000);
}

function handleBlock(block) {
  let name = "message";
  let data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  if (!data) return; // a heartbeat
  const event = JSON.parse(data);
  if (name === "hello") {
    retryDelay = 1000;
    setLive(event.live ? "live" : "live (waiting for Kafka)", event.live);
    // Whatever happened while we were not connected is in the services' data: read it again.
    for (const id of state.accounts.keys()) reload(id).catch(() => {});
    loadDeadLetters();
  } else if (name === "order" || name === "payment") {
    onSagaEvent(event);
  } else if (name === "deadLetter") {
    addDeadLetter(event);
  }
}

function onSagaEvent(event) {
  logEvent(event);
  const account = state.accounts.get(event.accountId);
  if (!account) return;
  const timing = state.timings.get(event.orderNumber) || {};
  let status;
  if (event.kind === "order") {
    status = ORDER_STATUS[event.type];
    if (event.type === "CREATED") timing.sent = event.publishedAt;
  } else {
    status = PAYMENT_STATUS[event.type];
    if (event.type !== "REFUNDED") timing.decided = event.occurredAt; // the payment's decision, not a later refund
  }
  state.timings.set(event.orderNumber, timing);
  const heard = state.heard.get(event.orderNumber);
  if (status && !(heard && STATUS_RANK[heard] > STATUS_RANK[status])) state.heard.set(event.orderNumber, status);
  const order = account.orders.get(event.orderNumber);
  if (order && status) mergeOrder(account, { ...order, status });
  renderAccount(event.accountId);
  if (event.kind === "payment") {
    afterPayment(event).catch(() => {});
    awaitNotification(event.accountId, event.orderNumber, event.type);
  }
}

// A payment moved the balance and added to the ledger: read those again, not the whole account.
// The order's status came with the event; its list is read only for an order this page has not
// seen (placed elsewhere), and the notification is looked for by awaitNotification.
async function afterPayment(event) {
  const account = state.accounts.get(event.accountId);
  if (!account) return;
  const known = account.orders.has(event.orderNumber);
  const [{ data: info }, ledger, orders] = await Promise.all([
    apiJson("GET", `/account/${event.accountId}`),
    allPages(`/account/${event.accountId}/transactions`),
    known ? [] : allPages(`/orders/${event.accountId}`),
  ]);
  account.balance = info.balance;
  account.ledger = ledger;
  for (const order of orders) mergeOrder(account, order);
  renderAccount(event.accountId);
}

// The notification service stores its notification when it consumes the same payment event, so
// it may land a moment after we heard of the event: look again a few times, backing off.
async function awaitNotification(accountId, orderNumber, type) {
  const kind = { PAYMENT_CONFIRMED: "confirmed", PAYMENT_DENIED: "denied", REFUNDED: "refunded" }[type];
  for (const delay of [100, 250, 500, 1000, 2000, 4000]) {
    const account = state.accounts.get(accountId);
    if (!account) return;
    if (account.notifications.some((n) => n.orderNumber === orderNumber && n.title.endsWith(kind))) return;
    await new Promise((resolve) => setTimeout(resolve, delay));
    try {
      account.notifications = await allPages(`/notifications/${accountId}`);
      renderAccount(accountId);
    } catch {
      return;
    }
  }
}

function logEvent(event) {
  const what = event.kind === "order" ? `order.event ${event.type}` : `payment.event ${event.type}`;
  const list = $("#events");
  list.prepend(
    el("li", { class: `event ${event.kind}` }, el("time", { text: time(event.publishedAt) }), ` ${what} `, el("code", { text: short(event.orderNumber.split(":")[1]) }), ` ${money(event.amount)}`),
  );
  while (list.children.length > 50) list.lastChild.remove();
}

// -- dead letters and health -----------------------------------------------------------------------

async function loadDeadLetters() {
  const note = $("#dead-letters-note");
  const response = await api("GET", "/console/api/dead-letters");
  if (response.status === 403) {
    note.textContent = "Shown to admins only.";
    return;
  }
  if (!response.ok) return;
  const body = await response.json();
  note.textContent = body.live ? (body.entries.length ? "" : "None so far.") : "Needs the live feed.";
  $("#dead-letters").replaceChildren();
  for (const entry of body.entries) addDeadLetter(entry, true);
}

function addDeadLetter(entry, loading = false) {
  if (!loading) $("#dead-letters-note").textContent = "";
  $("#dead-letters").prepend(
    el("li", { class: "dead-letter" }, el("time", { text: time(entry.at) }), " ", el("code", { text: `${entry.topic}[${entry.partition}]@${entry.offset}` }), el("div", { class: "error", text: entry.error }), el("div", { class: "value", text: entry.value })),
  );
  while ($("#dead-letters").children.length > 20) $("#dead-letters").lastChild.remove();
}

async function refreshHealth() {
  // With authentication on, service health is for signed-in users (and its details for admins).
  if (state.config.authMode === "oidc" && !state.auth) {
    $("#health").replaceChildren(el("li", { class: "off" }, "sign in to see the services' health"));
    return;
  }
  try {
    const response = await api("GET", "/console/api/health");
    if (!response.ok) throw new Error(String(response.status));
    const body = await response.json();
    const items = [el("li", { class: "up" }, "gateway ", el("span", { text: "ready" }))];
    for (const [service, instances] of Object.entries(body.services)) {
      for (const instance of instances) {
        const label = instances.length > 1 ? `${service} #${instance.instance}` : service;
        const detail = instance.ready ? `ready ${instance.ms} ms` : `not ready${instance.status ? ` (${instance.status})` : ` (${instance.detail})`}`;
        items.push(el("li", { class: instance.ready ? "up" : "down", "data-service": service }, `${label} `, el("span", { text: detail })));
      }
    }
    $("#health").replaceChildren(...items);
  } catch {
    $("#health").replaceChildren(el("li", { class: "down" }, "gateway ", el("span", { text: "unreachable" })));
  }
}

// -- rendering -------------------------------------------------------------------------------------

function renderAccounts() {
  const container = $("#accounts");
  $("#no-accounts").hidden = state.accounts.size > 0;
  for (const card of container.querySelectorAll("article.account")) {
    if (!state.accounts.has(card.dataset.account)) card.remove();
  }
  for (const id of state.accounts.keys()) {
    if (!container.querySelector(`article[data-account="${id}"]`)) {
      const card = $("#account-template").content.firstElementChild.cloneNode(true);
      card.dataset.account = id;
      $(".account-id", card).textContent = id;
      $(".unwatch", card).addEventListener("click", () => unwatch(id));
      container.append(card);
    }
    renderAccount(id);
  }
  for (const select of document.querySelectorAll(".account-select")) {
    const chosen = select.value;
    select.replaceChildren(...[...state.accounts.keys()].map((id) => el("option", { value: id, text: short(id) })));
    if (state.accounts.has(chosen)) select.value = chosen;
  }
}

function renderAccount(id) {
  const account = state.accounts.get(id);
  const card = document.querySelector(`article[data-account="${id}"]`);
  if (!account || !card) return;
  $(".balance", card).textContent = account.balance === null ? "…" : money(account.balance);
  const notified = new Map(account.notifications.map((n) => [n.orderNumber + n.notificationType, n.createdAt]));
  const rows = [...account.orders.values()].sort((a, b) => new Date(b.createdAt) - new Date(a.createdAt));
  $("[data-testid=orders]", card).replaceChildren(
    ...rows.map((order) => {
      const t = state.timings.get(order.orderNumber) || {};
      const decidedType = order.status === "CONFIRMED" || order.status === "REFUND_PENDING" || order.status === "REFUNDED" ? "PAYMENT_CONFIRMED" : "PAYMENT_DENIED";
      const notifiedAt = notified.get(order.orderNumber + decidedType);
      const withdrawable = ["NEW", "CANCELLED", "CONFIRMED"].includes(order.status);
      return el(
        "tr",
        { "data-order": order.orderNumber, "data-status": order.status },
        el("td", {}, el("code", { text: short(order.id), title: order.orderNumber })),
        el("td", { class: "num", text: money(order.amount) }),
        el("td", {}, el("span", { class: `status ${order.status}`, "data-testid": "status", text: order.status })),
        el("td", { class: "num", text: after(order.createdAt, t.sent) }),
        el("td", { class: "num", text: after(order.createdAt, t.decided) }),
        el("td", { class: "num", text: after(order.createdAt, notifiedAt) }),
        el("td", {}, withdrawable ? el("button", { class: "secondary small", "data-testid": "withdraw-order", onclick: () => withdrawOrder(id, order) }, "withdraw") : ""),
      );
    }),
  );
  $("[data-testid=notifications]", card).replaceChildren(
    ...account.notifications.slice(-SHOWN).reverse().map((n) => el("li", { class: n.notificationType }, el("time", { text: time(n.createdAt) }), el("strong", { text: ` ${n.title}` }), el("div", { text: n.body }))),
  );
  $("[data-testid=ledger]", card).replaceChildren(
    ...account.ledger.slice(-SHOWN).reverse().map((e) => el("tr", {}, el("td", { text: e.kind }), el("td", { class: "num", text: money(e.amount) }), el("td", { class: "num", text: money(e.balanceAfter) }), el("td", { text: time(e.createdAt) }))),
  );
}

// -- the forms -------------------------------------------------------------------------------------

async function act(work) {
  say("");
  try {
    await work();
  } catch (error) {
    say(error.message, true);
  }
}

async function withdrawOrder(accountId, order) {
  await act(async () => {
    const response = await api("DELETE", "/orders/", { accountId, orderNumber: order.orderNumber });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(`withdraw: ${response.status} ${body.detail || ""}`);
    }
    if (response.status === 204) state.accounts.get(accountId).orders.delete(order.orderNumber);
    await reload(accountId);
  });
}

function wireForms() {
  $("#open-account").addEventListener("submit", (e) => {
    e.preventDefault();
    const amount = Number(new FormData(e.target).get("amount"));
    act(async () => {
      const { data: id } = await apiJson("POST", "/account/", { actionType: "CREATE_NEW", amount });
      await watch(id);
      say(`Account ${short(id)} opened.`);
    });
  });
  $("#watch-account").addEventListener("submit", (e) => {
    e.preventDefault();
    act(async () => {
      await watch(new FormData(e.target).get("accountId"));
      e.target.reset();
    });
  });
  $("#money").addEventListener("submit", (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    const actionType = e.submitter ? e.submitter.value : "DEPOSIT_MONEY";
    const accountId = form.get("accountId");
    act(async () => {
      await apiJson("PUT", "/account/", { accountId, amount: Number(form.get("amount")), actionType });
      await reload(accountId);
    });
  });
  $("#place-order").addEventListener("submit", (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    const accountId = form.get("accountId");
    act(async () => {
      // A fresh Idempotency-Key per order: a retried click never places it twice.
      await apiJson("POST", "/orders/", { accountId, amount: Number(form.get("amount")) }, { "Idempotency-Key": randomId() });
      await reload(accountId);
    });
  });
  $("#sign-in").addEventListener("click", () => act(signIn));
  $("#sign-out").addEventListener("click", () => act(signOut));
}

// -- start -----------------------------------------------------------------------------------------

async function start() {
  wireForms();
  state.config = await (await fetch("/console/config.json")).json();
  if (state.config.authMode === "oidc") {
    const params = new URLSearchParams(location.search);
    try {
      if (params.has("code") || params.has("error")) await finishSignIn(params);
      else state.auth = JSON.parse(sessionStorage.getItem("orbilnot.auth") || "null");
    } catch (error) {
      say(error.message, true);
    }
  }
  renderWho();
  refreshHealth();
  setInterval(refreshHealth, 5000);
  const watched = JSON.parse(localStorage.getItem(watchKey()) || "[]");
  for (const id of watched) state.accounts.set(id, { balance: null, orders: new Map(), ledger: [], notifications: [] });
  renderAccounts();
  for (const id of watched) reload(id).catch(() => {});
  connect();
}

start();
