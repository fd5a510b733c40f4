// End to end in a real browser: the host serves www/, headless Chromium loads it, and
// the page talks to the echo component through the wasm client.
// Usage: node tests/browser/www.test.mjs http://127.0.0.1:PORT/
import assert from "node:assert/strict";
import { createRequire } from "node:module";

const require = createRequire(process.env.WASMSOCKET_NPM + "/node_modules/");
const { chromium } = require("playwright-core");

const base = process.argv[2];
assert.ok(base, "usage: www.test.mjs BASE_URL");

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(error.message));
  await page.goto(base);
  await page.waitForSelector("body[data-ready=true]", { timeout: 10000 });
  assert.equal(await page.inputValue("#url"), base.replace(/^http/, "ws").replace(/\/$/, "") + "/echo");

  // Chromium's own WebSocket negotiates permessage-deflate with the host, and a
  // compressible message survives the round trip both ways.
  const wsUrl = base.replace(/^http/, "ws").replace(/\/$/, "") + "/echo";
  const interop = await page.evaluate(async (url) => {
    const ws = new WebSocket(url);
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
    // 54,000 bytes: under the default max_frame_size (65536) once inflated.
    const text = "compressible text ".repeat(3000);
    const echoed = await new Promise((resolve) => {
      ws.onmessage = (event) => resolve(event.data);
      ws.onclose = (event) => resolve(`closed ${event.code} ${event.reason}`);
      ws.send(text);
    });
    ws.close(1000);
    return { extensions: ws.extensions, same: echoed === text, echoed: echoed.slice(0, 80) };
  }, wsUrl);
  assert.match(interop.extensions, /^permessage-deflate/, JSON.stringify(interop));
  assert.ok(interop.same, JSON.stringify(interop));

  await page.click("#connect");
  await page.waitForSelector("#status.open", { timeout: 10000 });

  // Text round trip.
  await page.fill("#payload", "hello from playwright");
  await page.click("#send");
  await page.waitForSelector("#log li.in:has-text('hello from playwright')", { timeout: 10000 });

  // JSON round trip.
  await page.click(".tab[data-kind=json]");
  await page.fill("#payload", '{"n": 42}');
  await page.click("#send");
  await page.waitForSelector("#log li.in:has-text('{\"n\":42}')", { timeout: 10000 });

  // Binary round trip, shown as hex.
  await page.click(".tab[data-kind=binary]");
  await page.fill("#payload", "ca fe 01");
  await page.click("#send");
  await page.waitForSelector("#log li.in:has-text('3 bytes: ca fe 01')", { timeout: 10000 });

  // Close with a code and reason: the server's answer is shown.
  await page.fill("#close-code", "4000");
  await page.fill("#close-reason", "see you");
  await page.click("#disconnect");
  await page.waitForSelector("#log li.event:has-text('server answered 4000 · see you')", { timeout: 10000 });
  assert.equal(await page.textContent("#status"), "closed 4000");

  await page.screenshot({ path: process.env.SCREENSHOT ?? "/tmp/wasmsocket-www.png" });
  assert.deepEqual(errors, []);
  console.log("www end-to-end: ok");
} finally {
  await browser.close();
}
