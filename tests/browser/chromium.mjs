// What the browser drivers (drive.mjs, manage.mjs) share: their JSON input and Chromium's flags.

// The request, JSON on stdin.
export async function readInput() {
  return JSON.parse(await new Promise((resolve) => {
    let text = "";
    process.stdin.setEncoding("utf8");
    process.stdin.on("data", (chunk) => { text += chunk; });
    process.stdin.on("end", () => resolve(text));
  }));
}

// The machine's network is closed: without these flags Chromium stalls on its own
// background traffic. playwright-core gives every launch a fresh --user-data-dir.
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
