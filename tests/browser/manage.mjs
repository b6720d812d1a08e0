// Drives Debian's Chromium through playwright-core over fluxauth's "API Clients" page for
// tests/clients/test_manage_page.py: signs in with the keyboard, creates a client, copies
// its token and uses it on a data URL, rotates with a grace (both tokens work), revokes the
// old token now, deletes the client (its token refused), and tries the dialogs' keyboard
// behaviour. Reports, as JSON on stdout, what each step saw and every HTTP authentication
// challenge Chromium would have shown its login dialog for (CDP Fetch.authRequired).
//
// Input, JSON on stdin:
//   {"base": URL of fluxauth, "org": ORG, "key": admin API key, "tile": path of a tile,
//    "screenshot": PATH, "timeoutMs": N}
import { chromium } from "playwright-core";
import { CHROMIUM_ARGS, readInput } from "./chromium.mjs";

const input = await readInput();
const timeoutMs = input.timeoutMs ?? 20000;
const page_url = `${input.base}/_fluxauth/ui/`;

const report = {
  headers: null,
  signedIn: false,
  steps: {},
  authRequired: [],
  pageErrors: [],
  console: [],
  dialogs: [],
  requests: [],
  storage: null,
};

async function dataStatus(token) {
  const auth = Buffer.from(`${input.org}:${token}`).toString("base64");
  const response = await fetch(input.base + input.tile, { headers: { Authorization: `Basic ${auth}` } });
  await response.arrayBuffer();
  return response.status;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: CHROMIUM_ARGS,
  timeout: timeoutMs,
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 720 }, deviceScaleFactor: 1 });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: input.base });
  const page = await context.newPage();
  page.setDefaultTimeout(timeoutMs);

  const cdp = await context.newCDPSession(page);
  cdp.on("Fetch.requestPaused", (event) => {
    cdp.send("Fetch.continueRequest", { requestId: event.requestId }).catch(() => {});
  });
  cdp.on("Fetch.authRequired", (event) => {
    report.authRequired.push({ url: event.request.url, scheme: event.authChallenge.scheme });
    cdp.send("Fetch.continueWithAuth", {
      requestId: event.requestId,
      authChallengeResponse: { response: "CancelAuth" },
    }).catch(() => {});
  });
  await cdp.send("Fetch.enable", { handleAuthRequests: true, patterns: [{ urlPattern: "*" }] });

  page.on("pageerror", (error) => report.pageErrors.push(String(error)));
  page.on("console", (message) => report.console.push(`${message.type()}: ${message.text()}`));
  page.on("dialog", (dialog) => {
    report.dialogs.push({ type: dialog.type(), message: dialog.message() });
    dialog.dismiss().catch(() => {});
  });
  page.on("request", (request) => {
    const headers = request.headers();
    report.requests.push({
      method: request.method(),
      url: request.url(),
      authorization: "authorization" in headers,
      requestedWith: headers["x-requested-with"] ?? null,
      cookie: "cookie" in headers,
    });
  });

  const response = await page.goto(page_url, { waitUntil: "load" });
  report.headers = response.headers();

  // Sign in with the keyboard alone: the page puts focus on the organization field.
  report.steps.initialFocus = await page.evaluate(() => document.activeElement?.id ?? null);
  await page.keyboard.type(input.org);
  await page.keyboard.press("Tab");
  await page.keyboard.type(input.key);
  await page.keyboard.press("Enter");
  await page.locator("#console").waitFor({ state: "visible" });
  report.signedIn = true;
  report.storage = await page.evaluate(() => ({
    cookie: document.cookie,
    local: Object.keys(localStorage).length,
    session: Object.keys(sessionStorage).length,
  }));

  // The dialogs: Escape cancels and gives focus back; Tab stays inside.
  await page.locator("#new-client").focus();
  await page.keyboard.press("Enter");
  await page.locator("#new-dialog").waitFor({ state: "visible" });
  const inside = [];
  for (let i = 0; i < 14; i += 1) {
    await page.keyboard.press("Tab");
    inside.push(await page.evaluate(() => document.getElementById("new-dialog").contains(document.activeElement)));
  }
  for (let i = 0; i < 3; i += 1) {
    await page.keyboard.press("Shift+Tab");
    inside.push(await page.evaluate(() => document.getElementById("new-dialog").contains(document.activeElement)));
  }
  await page.keyboard.press("Escape");
  await page.locator("#new-dialog").waitFor({ state: "hidden" });
  report.steps.dialogKeyboard = {
    focusStayedInside: inside.every(Boolean),
    focusAfterEscape: await page.evaluate(() => document.activeElement?.id ?? null),
    dialogOpenAfterEscape: await page.evaluate(() => document.getElementById("new-dialog").open),
  };

  // New API Client, with the keyboard: name, then Enter submits.
  await page.locator("#new-client").click();
  await page.locator("#new-name").fill("maps-ci");
  await page.keyboard.press("Enter");
  await page.locator("#token-dialog").waitFor({ state: "visible" });
  const first = await page.locator("#token-value").inputValue();
  await page.locator("#token-copy").click();
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  report.steps.create = {
    tokenShape: /^ema_[0-9a-f]{16}_[A-Za-z0-9_-]{40}$/.test(first),
    copiedIsToken: copied === first,
    warning: await page.locator("#token-warning").innerText(),
    dataWithToken: await dataStatus(copied),
  };
  await page.getByRole("button", { name: "Done" }).click();
  await page.locator("#token-dialog").waitFor({ state: "hidden" });
  await page.locator('tr[data-key="maps-ci"]').waitFor();
  report.steps.afterDismiss = {
    tokenInPage: (await page.content()).includes(first.split("_")[2]),
    lastUsed: await page.locator('tr[data-key="maps-ci"] .last-used').innerText(),
    neverUsed: await page.locator('tr[data-key="maps"] .last-used').innerText(),
  };

  // Rotate with a grace of one hour: both tokens work.
  await page.getByRole("button", { name: "Rotate maps-ci" }).click();
  await page.locator("#rotate-grace").selectOption("1h");
  await page.locator("#rotate-extend").selectOption("3");
  await page.locator("#rotate-dialog").getByRole("button", { name: "Rotate" }).click();
  await page.locator("#token-dialog").waitFor({ state: "visible" });
  const second = await page.locator("#token-value").inputValue();
  await page.locator("#token-copy").click();
  report.steps.rotate = {
    newToken: second !== first && /^ema_/.test(second),
    copiedIsToken: (await page.evaluate(() => navigator.clipboard.readText())) === second,
  };
  await page.getByRole("button", { name: "Done" }).click();
  await page.locator("#token-dialog").waitFor({ state: "hidden" });
  const firstId = first.split("_")[1];
  const revoke = page.getByRole("button", { name: `Revoke token ${firstId} of maps-ci now` });
  await revoke.waitFor();
  report.steps.rotate.bothWork = [await dataStatus(first), await dataStatus(second)];
  report.steps.rotate.row = await page.locator('tr[data-key="maps-ci"]').innerText();
  await page.screenshot({ path: input.screenshot, fullPage: true });

  // Revoke the old token now.
  await revoke.click();
  await page.locator("#confirm-dialog").waitFor({ state: "visible" });
  await page.locator("#confirm-ok").click();
  await page.locator("#confirm-dialog").waitFor({ state: "hidden" });
  await revoke.waitFor({ state: "detached" });
  report.steps.revoke = { statuses: [await dataStatus(first), await dataStatus(second)] };

  // Delete, confirmed: the token is refused within a second.
  await page.getByRole("button", { name: "Delete maps-ci" }).click();
  await page.locator("#confirm-dialog").waitFor({ state: "visible" });
  report.steps.deleteText = await page.locator("#confirm-text").innerText();
  const started = Date.now();
  await page.locator("#confirm-ok").click();
  let status = await dataStatus(second);
  while (status === 200 && Date.now() - started < 3000) {
    await new Promise((resolve) => setTimeout(resolve, 25));
    status = await dataStatus(second);
  }
  report.steps.delete = { status, refusedAfterMs: Date.now() - started };
  await page.locator('tr[data-key="maps-ci"]').waitFor({ state: "detached" });

  // The audit log shows what was done, by whom.
  await page.getByRole("button", { name: "Audit log" }).click();
  await page.locator("#events tbody tr").first().waitFor();
  report.steps.audit = await page.locator("#events tbody").innerText();

  // A reload forgets the credentials: the sign-in form again.
  await page.reload({ waitUntil: "load" });
  report.steps.afterReload = {
    signInShown: await page.locator("#signin").isVisible(),
    consoleShown: await page.locator("#console").isVisible(),
  };
  await context.close();
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(report));
