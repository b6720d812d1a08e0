// Drives Debian's Chromium (never a downloaded browser) through playwright-core for
// tests/test_clients_browser.py: opens one map page, waits for the map to settle,
// takes a screenshot of it and reports, as JSON on stdout, what the page saw and
// every HTTP authentication challenge that Chromium would have shown a dialog for.
//
// Input, JSON on stdin:
//   {"page": URL, "screenshot": PATH, "navigate": URL or null, "timeoutMs": N}
// "navigate" is opened afterwards as a top-level page: the control that proves a
// challenge Chromium would prompt for is seen here (Fetch.authRequired).
import { chromium } from "playwright-core";
import { CHROMIUM_ARGS, readInput } from "./chromium.mjs";

const input = await readInput();
const timeoutMs = input.timeoutMs ?? 20000;

// MapLibre needs WebGL: headless Chromium has it through ANGLE on SwiftShader.
const args = [...CHROMIUM_ARGS, "--use-angle=swiftshader", "--enable-unsafe-swiftshader"];

const report = {
  map: null,
  authRequired: [],
  intercepted: [],
  responses: [],
  failed: [],
  console: [],
  pageErrors: [],
  dialogs: [],
  navigation: null,
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args,
  timeout: timeoutMs,
});
try {
  const context = await browser.newContext({ viewport: { width: 512, height: 512 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  page.setDefaultTimeout(timeoutMs);

  // Chromium asks its embedder for credentials (the login dialog) through the same
  // path that DevTools' Fetch.authRequired reports; with handleAuthRequests every
  // such challenge lands here instead, is recorded and cancelled.
  const cdp = await context.newCDPSession(page);
  cdp.on("Fetch.requestPaused", (event) => {
    report.intercepted.push({ method: event.request.method, url: event.request.url });
    cdp.send("Fetch.continueRequest", { requestId: event.requestId }).catch(() => {});
  });
  cdp.on("Fetch.authRequired", (event) => {
    report.authRequired.push({
      url: event.request.url,
      scheme: event.authChallenge.scheme,
      realm: event.authChallenge.realm,
      source: event.authChallenge.source,
    });
    cdp
      .send("Fetch.continueWithAuth", {
        requestId: event.requestId,
        authChallengeResponse: { response: "CancelAuth" },
      })
      .catch(() => {});
  });
  await cdp.send("Fetch.enable", { handleAuthRequests: true, patterns: [{ urlPattern: "*" }] });

  page.on("response", (response) => {
    report.responses.push({ url: response.url(), status: response.status(), method: response.request().method() });
  });
  page.on("requestfailed", (request) => {
    report.failed.push({ url: request.url(), error: request.failure()?.errorText ?? "" });
  });
  page.on("console", (message) => report.console.push(`${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => report.pageErrors.push(String(error)));
  page.on("dialog", (dialog) => {
    report.dialogs.push({ type: dialog.type(), message: dialog.message() });
    dialog.dismiss().catch(() => {});
  });

  await page.goto(input.page, { waitUntil: "load" });
  report.map = await page.evaluate(
    (ms) => Promise.race([
      window.mapResult,
      new Promise((resolve) => setTimeout(() => resolve({ timedOut: true }), ms)),
    ]),
    timeoutMs,
  );
  await page.locator("#map").screenshot({ path: input.screenshot });

  if (input.navigate) {
    const response = await page.goto(input.navigate, { waitUntil: "load" });
    report.navigation = { url: input.navigate, status: response ? response.status() : null };
  }
  await context.close();
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(report));
