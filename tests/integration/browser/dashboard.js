// dashboard.js: load tenk's /dashboard in headless Debian Chromium (playwright-core) and report what it saw.
//
//   NODE_PATH=var/test-node/node_modules node dashboard.js URL SCREENSHOT [SECONDS]
//
// Prints one JSON object on stdout: console errors, page errors, failed or
// off-origin requests, the tile values over time and the page's own sample
// counters. The Python test (test_dashboard.py) runs a load meanwhile and
// decides what passes; this script only observes.
"use strict";
const { chromium } = require("playwright-core");
const fs = require("fs");
const os = require("os");
const path = require("path");

async function main() {
  const [url, shot, secs] = process.argv.slice(2);
  const seconds = Number(secs || 6);
  const origin = new URL(url).origin;
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "tenk-chromium-"));
  const out = { consoleErrors: [], pageErrors: [], offOrigin: [], failed: [], frames: [] };
  // a fresh profile every run (playwright's persistent context is how it takes one)
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1400, height: 1000 },
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--no-first-run"],
  });
  try {
    const page = browser.pages()[0] || await browser.newPage();
    page.on("console", (m) => { if (m.type() === "error") out.consoleErrors.push(m.text()); });
    page.on("pageerror", (e) => out.pageErrors.push(String(e)));
    page.on("request", (r) => {
      const u = r.url();
      if (!u.startsWith(origin) && !u.startsWith("data:")) out.offOrigin.push(u);
    });
    page.on("requestfailed", (r) => out.failed.push(r.url() + " " + (r.failure() || {}).errorText));
    const resp = await page.goto(url, { waitUntil: "load" });
    out.status = resp.status();
    const t0 = Date.now();
    while (Date.now() - t0 < seconds * 1000) {
      await page.waitForTimeout(1000);
      out.frames.push(await page.evaluate(() => {
        const tiles = {};
        for (const el of document.querySelectorAll(".tile")) {
          tiles[el.id.slice(2)] = { text: el.querySelector(".v").textContent, grade: el.className.replace("tile", "").trim() };
        }
        const d = window.tenkDashboard || {};
        const charts = {};
        for (const c of document.querySelectorAll(".chart")) {
          charts[c.querySelector("h2").textContent] = c.querySelector(".legend").textContent;
        }
        return { tiles, charts, samples: d.samples, polls: d.polls, failures: d.failures,
                 status: document.getElementById("status").textContent,
                 series: Object.keys(d.series || {}).length };
      }));
    }
    await page.screenshot({ path: shot, fullPage: true });
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((e) => { process.stderr.write(String(e && e.stack || e) + "\n"); process.exit(1); });
