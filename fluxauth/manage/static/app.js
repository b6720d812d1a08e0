// The "API Clients" page of fluxauth: plain JavaScript over the management API, no build step.
//
// The credentials live in the closure below and nowhere else: no cookie, no
// storage, never the browser's Basic-auth cache (requests say credentials:
// "omit" and carry the Authorization header themselves). Every request sends
// X-Requested-With, so the API's 401s come without a challenge and the
// browser never opens its login dialog. Text from the API is only ever set as
// textContent, never parsed as HTML.
"use strict";

(() => {
  const API = "../api/v1/";
  let session = null; // {org, authorization}
  let auditBefore = null;

  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.detail) || `HTTP ${status}`);
      this.status = status;
      this.body = body || {};
    }
  }

  function basic(org, key) {
    const bytes = new TextEncoder().encode(`${org}:${key}`);
    let text = "";
    for (const byte of bytes) text += String.fromCharCode(byte);
    return `Basic ${btoa(text)}`;
  }

  async function api(method, path, body, auth = session) {
    const headers = { Accept: "application/json", "X-Requested-With": "fluxauth-ui", Authorization: auth.authorization };
    const init = { method, headers, credentials: "omit", cache: "no-store", redirect: "error", referrerPolicy: "no-referrer" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(API + path, init);
    const text = await response.text();
    const data = text ? JSON.parse(text) : null;
    if (!response.ok) {
      const error = new ApiError(response.status, data);
      error.retryAfter = response.headers.get("Retry-After");
      if (response.status === 401 && session !== null && auth === session) signOut("Signed out: the API key is no longer valid.");
      throw error;
    }
    return { data, link: response.headers.get("Link") };
  }

  const orgPath = (rest) => `orgs/${encodeURIComponent(session.org)}/${rest}`;

  // -- messages ------------------------------------------------------------------

  function say(text) {
    $("status").textContent = text;
  }

  function problem(error) {
    if (error instanceof ApiError) {
      if (error.status === 429) return `Too many failed attempts: retry in ${error.retryAfter || "a few"} seconds.`;
      if (error.status === 503) return "fluxauth cannot reach its key store right now: retry shortly.";
      return error.message;
    }
    return "fluxauth could not be reached.";
  }

  const when = (text) => (text ? new Date(text).toLocaleString() : "");

  function cell(row, text, className) {
    const td = document.createElement("td");
    if (text instanceof Node) td.append(text);
    else td.textContent = text;
    if (className) td.className = className;
    row.append(td);
    return td;
  }

  function button(text, label, onClick, className) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.setAttribute("aria-label", label);
    if (className) b.className = className;
    b.addEventListener("click", onClick);
    return b;
  }

  // -- dialogs: modal, focus kept inside, Escape cancels, focus given back --------

  let opener = null;

  function focusables(dialog) {
    return [...dialog.querySelectorAll("button, input, select, textarea, [href], [tabindex]")].filter(
      (element) => !element.disabled && element.tabIndex >= 0 && element.offsetParent !== null,
    );
  }

  function openDialog(dialog, first) {
    opener = document.activeElement;
    dialog.querySelectorAll(".error").forEach((p) => (p.textContent = ""));
    dialog.showModal();
    (first || focusables(dialog)[0]).focus();
  }

  function closeDialog(dialog) {
    if (dialog.open) dialog.close();
  }

  for (const dialog of document.querySelectorAll("dialog")) {
    dialog.addEventListener("keydown", (event) => {
      if (event.key !== "Tab") return;
      const items = focusables(dialog);
      if (!items.length) return;
      const first = items[0];
      const last = items[items.length - 1];
      if (event.shiftKey && document.activeElement === first) {
        event.preventDefault();
        last.focus();
      } else if (!event.shiftKey && document.activeElement === last) {
        event.preventDefault();
        first.focus();
      }
    });
    // Escape fires "cancel" on a modal dialog; the Cancel buttons do the same.
    dialog.querySelectorAll(".cancel").forEach((b) => b.addEventListener("click", () => closeDialog(dialog)));
    dialog.addEventListener("close", () => {
      if (opener && document.contains(opener)) opener.focus();
      opener = null;
    });
  }

  async function submitting(form, errorId, work) {
    const buttons = form.querySelectorAll("button");
    buttons.forEach((b) => (b.disabled = true));
    $(errorId).textContent = "";
    try {
      await work();
    } catch (error) {
      $(errorId).textContent = problem(error);
      const field = error instanceof ApiError ? error.body.field : null;
      const input = field && form.elements[field];
      if (input && input.focus) input.focus();
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  }

  // -- signing in and out ----------------------------------------------------------

  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const org = $("signin-org").value.trim();
    const key = $("signin-key").value.trim();
    const error = $("signin-error");
    if (!org || !key) {
      error.textContent = "Enter the organization and an API key.";
      (org ? $("signin-key") : $("signin-org")).focus();
      return;
    }
    const candidate = { org, authorization: basic(org, key) };
    error.textContent = "";
    try {
      const { data } = await api("GET", `orgs/${encodeURIComponent(org)}/keys`, undefined, candidate);
      session = candidate;
      $("signin-key").value = "";
      showConsole(data);
    } catch (failure) {
      const messages = {
        401: "The organization or the API key is not valid.",
        403: "This key may not manage API clients: it lacks the manage_org_users permission.",
        404: "This key is not a key of that organization.",
      };
      error.textContent = (failure instanceof ApiError && messages[failure.status]) || problem(failure);
      $("signin-key").focus();
    }
  });

  function signOut(message) {
    session = null;
    auditBefore = null;
    for (const id of ["keys", "services", "repos", "events"]) $(id).querySelector("tbody").replaceChildren();
    document.querySelectorAll("dialog").forEach(closeDialog);
    $("console").hidden = true;
    $("who").hidden = true;
    $("sign-out").hidden = true;
    $("signin").hidden = false;
    $("signin-error").textContent = message || "";
    say(message ? "" : "Signed out.");
    $("signin-org").focus();
  }

  $("sign-out").addEventListener("click", () => signOut());

  function showConsole(keys) {
    $("signin").hidden = true;
    $("console").hidden = false;
    $("who").textContent = `Organization ${session.org}`;
    $("who").hidden = false;
    $("sign-out").hidden = false;
    renderKeys(keys);
    show("clients");
    $("clients-title").setAttribute("tabindex", "-1");
    $("clients-title").focus();
    say(`Signed in to ${session.org}.`);
  }

  // -- sections ----------------------------------------------------------------------

  function show(section) {
    for (const tab of document.querySelectorAll(".tab")) {
      const mine = tab.dataset.section === section;
      if (mine) tab.setAttribute("aria-current", "page");
      else tab.removeAttribute("aria-current");
      $(tab.dataset.section).hidden = !mine;
    }
    if (section === "settings") loadSettings();
    if (section === "audit") loadAudit(true);
  }

  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => show(tab.dataset.section));

  // -- API clients -------------------------------------------------------------------

  async function loadKeys() {
    try {
      renderKeys((await api("GET", orgPath("keys"))).data);
    } catch (error) {
      say(problem(error));
    }
  }

  function access(key) {
    const parts = [...key.permissions];
    for (const [repo, grant] of Object.entries(key.repos)) parts.push(`${repo}: ${grant}`);
    return parts.length ? parts.join(", ") : "none";
  }

  function tokensCell(key) {
    const list = document.createElement("ul");
    list.className = "tokens";
    const now = Date.now();
    for (const token of key.tokens) {
      const item = document.createElement("li");
      const id = document.createElement("code");
      id.textContent = token.token_id;
      item.append(id, " ");
      if (token.not_after === null) {
        item.append("current");
      } else if (new Date(token.not_after).getTime() <= now) {
        item.append("ended");
      } else {
        item.append(`in grace until ${when(token.not_after)} `);
        item.append(
          button("Revoke now", `Revoke token ${token.token_id} of ${key.name} now`, () => confirmRevoke(key, token), "small danger"),
        );
      }
      list.append(item);
    }
    return list;
  }

  function renderKeys(keys) {
    const body = $("keys").querySelector("tbody");
    body.replaceChildren();
    for (const key of keys) {
      const row = document.createElement("tr");
      row.dataset.key = key.name;
      const name = document.createElement("div");
      const strong = document.createElement("strong");
      strong.textContent = key.name;
      const full = document.createElement("div");
      full.className = "muted";
      full.textContent = key.key;
      name.append(strong, full);
      cell(row, name);
      cell(row, access(key));
      cell(row, when(key.created_at));
      cell(row, when(key.expires_at));
      cell(row, key.last_used_at ? when(key.last_used_at) : "never", "last-used");
      cell(row, tokensCell(key));
      const actions = document.createElement("div");
      actions.className = "actions";
      actions.append(
        button("⟳ Rotate", `Rotate ${key.name}`, () => openRotate(key)),
        button("✕ Delete", `Delete ${key.name}`, () => confirmDelete(key), "danger"),
      );
      cell(row, actions);
      body.append(row);
    }
    $("keys-empty").hidden = keys.length > 0;
  }

  // The token: shown once, in a dialog; gone from the page once dismissed.
  function showToken(issued) {
    $("token-label").textContent = `Token of ${issued.key}`;
    $("token-value").value = issued.token;
    $("token-copied").textContent = "";
    openDialog($("token-dialog"), $("token-copy"));
  }

  $("token-copy").addEventListener("click", async () => {
    const input = $("token-value");
    try {
      await navigator.clipboard.writeText(input.value);
    } catch {
      input.select(); // no clipboard API (a page served over plain HTTP): the older way
      document.execCommand("copy");
    }
    $("token-copied").textContent = "Copied to the clipboard.";
  });

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    closeDialog($("token-dialog"));
  });
  $("token-dialog").addEventListener("close", () => {
    $("token-value").value = "";
    loadKeys();
  });

  $("new-client").addEventListener("click", () => {
    $("new-form").reset();
    openDialog($("new-dialog"), $("new-name"));
  });

  function grants(text) {
    const repos = {};
    for (const line of text.split("\n").map((l) => l.trim()).filter(Boolean)) {
      const [repo, grant = "read"] = line.split("=").map((part) => part.trim());
      repos[repo] = grant;
    }
    return repos;
  }

  $("new-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    submitting(form, "new-error", async () => {
      const chosen = form.elements.access.value;
      const permissions = chosen === "repos" ? [] : [chosen];
      if (form.elements.manage.checked) permissions.push("manage_org_users");
      const body = {
        name: form.elements.name.value.trim(),
        permissions,
        repos: grants(form.elements.repos.value),
        expires_in: form.elements.lifetime.value,
      };
      const { data } = await api("POST", orgPath("keys"), body);
      closeDialog($("new-dialog"));
      say(`Created ${data.key}.`);
      showToken(data);
    });
  });

  let rotating = null;
  const extend = $("rotate-extend");
  for (let months = 1; months <= 12; months += 1) {
    const option = document.createElement("option");
    option.value = String(months);
    option.textContent = months === 1 ? "by 1 month" : `by ${months} months`;
    extend.append(option);
  }

  function openRotate(key) {
    rotating = key;
    $("rotate-form").reset();
    $("rotate-title").textContent = `Rotate ${key.name}`;
    openDialog($("rotate-dialog"), $("rotate-grace"));
  }

  $("rotate-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    submitting(form, "rotate-error", async () => {
      const body = { grace: form.elements.grace.value };
      if (form.elements.extend.value) body.extend_months = Number(form.elements.extend.value);
      const { data } = await api("POST", orgPath(`keys/${encodeURIComponent(rotating.name)}/rotate`), body);
      closeDialog($("rotate-dialog"));
      say(`Rotated ${data.key}.`);
      showToken(data);
    });
  });

  let confirmed = null;

  function confirm(title, text, action, work) {
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = action;
    confirmed = work;
    openDialog($("confirm-dialog"), $("confirm-dialog").querySelector(".cancel"));
  }

  $("confirm-form").addEventListener("submit", (event) => {
    event.preventDefault();
    submitting(event.currentTarget, "confirm-error", async () => {
      await confirmed();
      closeDialog($("confirm-dialog"));
      await loadKeys();
    });
  });

  function confirmDelete(key) {
    confirm(`Delete ${key.name}?`, `${key.key} and all its tokens stop working at once. This cannot be undone.`, "Delete", async () => {
      await api("DELETE", orgPath(`keys/${encodeURIComponent(key.name)}`));
      say(`Deleted ${key.key}.`);
    });
  }

  function confirmRevoke(key, token) {
    confirm(
      `Revoke token ${token.token_id}?`,
      `The rotated-out token ${token.token_id} of ${key.key} stops working now instead of at the end of its grace period.`,
      "Revoke now",
      async () => {
        await api("POST", orgPath(`keys/${encodeURIComponent(key.name)}/tokens/${token.token_id}/revoke`));
        say(`Token ${token.token_id} of ${key.key} revoked.`);
      },
    );
  }

  // -- services and repositories ---------------------------------------------------

  async function loadSettings() {
    try {
      const [services, repos] = await Promise.all([api("GET", orgPath("services")), api("GET", orgPath("repos"))]);
      renderServices(services.data);
      renderRepos(repos.data);
    } catch (error) {
      say(problem(error));
    }
  }

  function checkbox(label, checked, onChange) {
    const input = document.createElement("input");
    input.type = "checkbox";
    input.checked = checked;
    input.setAttribute("aria-label", label);
    input.addEventListener("change", () => onChange(input));
    return input;
  }

  function renderServices(services) {
    const body = $("services").querySelector("tbody");
    body.replaceChildren();
    for (const service of services) {
      const row = document.createElement("tr");
      cell(row, service.protocol);
      const put = async (enabled, isPublic) => {
        try {
          const { data } = await api("PUT", orgPath(`services/${service.protocol}`), { enabled, is_public: isPublic });
          say(`${data.protocol}: ${data.enabled ? "enabled" : "disabled"}${data.is_public ? ", public" : ""}.`);
        } catch (error) {
          say(problem(error));
        }
        await loadSettings();
      };
      const enabled = checkbox(`${service.protocol} enabled`, service.enabled, (box) => put(box.checked, service.is_public && box.checked));
      const isPublic = checkbox(`${service.protocol} public`, service.is_public, (box) => put(service.enabled || box.checked, box.checked));
      cell(row, enabled);
      cell(row, isPublic);
      body.append(row);
    }
  }

  function renderRepos(repos) {
    const body = $("repos").querySelector("tbody");
    body.replaceChildren();
    for (const repo of repos) {
      const row = document.createElement("tr");
      cell(row, repo.repo);
      cell(row, repo.visibility);
      body.append(row);
    }
  }

  $("repo-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    submitting(form, "repo-error", async () => {
      const repo = form.elements.repo.value.trim();
      const { data } = await api("PUT", orgPath(`repos/${encodeURIComponent(repo)}`), { visibility: form.elements.visibility.value });
      say(`${data.repo} is ${data.visibility}.`);
      form.reset();
      await loadSettings();
    });
  });

  // -- the audit log -----------------------------------------------------------------

  function auditQuery() {
    const form = $("audit-form");
    const query = new URLSearchParams({ limit: "50" });
    const actor = form.elements.actor.value.trim();
    if (actor) query.set("actor", actor);
    for (const name of ["since", "until"]) {
      const value = form.elements[name].value;
      if (value) query.set(name, new Date(value).toISOString());
    }
    if (auditBefore !== null) query.set("before", String(auditBefore));
    return query;
  }

  async function loadAudit(fresh) {
    if (fresh) {
      auditBefore = null;
      $("events").querySelector("tbody").replaceChildren();
    }
    $("audit-error").textContent = "";
    try {
      const { data, link } = await api("GET", orgPath(`audit?${auditQuery()}`));
      const body = $("events").querySelector("tbody");
      for (const event of data) {
        const row = document.createElement("tr");
        cell(row, when(event.at));
        cell(row, event.actor);
        cell(row, event.client || "");
        cell(row, event.action);
        cell(row, event.target);
        cell(row, event.outcome, `outcome-${event.outcome}`);
        cell(row, event.detail);
        body.append(row);
      }
      auditBefore = data.length ? data[data.length - 1].seq : auditBefore;
      $("audit-more").hidden = !link;
    } catch (error) {
      $("audit-error").textContent = problem(error);
    }
  }

  $("audit-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadAudit(true);
  });
  $("audit-more").addEventListener("click", () => loadAudit(false));

  $("signin-org").focus();
})();
