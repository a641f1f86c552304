// Drives the demo page in headless Chromium (playwright-core) the way a person would: waits for
// the bundle to load, sets the exit controls, types each text, clicks "Classify" and reads the
// prediction the page shows. tests/test_web_demo.py runs it and compares with Python.
//
//   node web_demo/tools/e2e.mjs --url http://127.0.0.1:PORT/ --cases cases.json --out results.json \
//        [--screenshot shot.png] [--chromium /usr/bin/chromium] [--timeout-ms 60000]
//
// cases.json: {"runs": [{"name": "...", "mode": "fixed" | "patience" | "entropy", "exit_layer": k,
//   "patience": p, "entropy": t, "texts": ["...", ...], "screenshot": false}, ...]}
// (exit_layer is the fixed exit, or the max layer of a dynamic run). results.json: {"controls",
// "info", "runs": [{"name", "results": [{"json": <the page's data-json>, "shown": {...}}]}],
// "console_errors", "page_errors", "failed_requests"}.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    cases: { type: "string" },
    out: { type: "string" },
    screenshot: { type: "string" },
    chromium: { type: "string", default: process.env.EDGEKIT_CHROMIUM || "/usr/bin/chromium" },
    "timeout-ms": { type: "string", default: "60000" },
  },
});
if (!args.url || !args.cases || !args.out) {
  console.error("usage: node e2e.mjs --url URL --cases cases.json --out results.json [--screenshot PNG]");
  process.exit(2);
}
const timeout = Number(args["timeout-ms"]);
const cases = JSON.parse(readFileSync(args.cases, "utf8"));
const profile = mkdtempSync(join(tmpdir(), "edgekit-chromium-"));
const report = { controls: null, info: null, runs: [], console_errors: [], page_errors: [], failed_requests: [] };

const context = await chromium.launchPersistentContext(profile, {
  executablePath: args.chromium,
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  viewport: { width: 960, height: 900 },
  deviceScaleFactor: 1,
});
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(timeout);
  page.on("console", (m) => {
    if (m.type() === "error") report.console_errors.push(m.text());
  });
  page.on("pageerror", (e) => report.page_errors.push(String(e)));
  page.on("requestfailed", (r) => report.failed_requests.push(`${r.url()} ${r.failure()?.errorText}`));
  page.on("response", (r) => {
    if (r.status() >= 400) report.failed_requests.push(`${r.url()} ${r.status()}`);
  });

  await page.goto(args.url);
  await page.waitForFunction(() => document.body.dataset.ready, null, { timeout });
  const ready = await page.evaluate(() => document.body.dataset.ready);
  report.info = {
    ready,
    status: await page.textContent("#status"),
    bundle: await page.evaluate(() =>
      Object.fromEntries(Array.from(document.querySelectorAll("#bundle-info dt"), (dt) => [dt.textContent, dt.nextElementSibling.textContent])),
    ),
  };
  if (ready !== "true") throw new Error(`the page did not load the bundle: ${report.info.status}`);
  report.controls = await page.evaluate(() => ({
    modes: Array.from(document.querySelectorAll("#mode option"), (o) => ({ value: o.value, disabled: o.disabled })),
    exit_layers: Array.from(document.querySelectorAll("#exit-layer option"), (o) => Number(o.value)),
  }));

  for (const run of cases.runs) {
    const out = { name: run.name, results: [] };
    await page.selectOption("#mode", run.mode);
    if (run.exit_layer !== undefined) await page.selectOption("#exit-layer", String(run.exit_layer));
    if (run.patience !== undefined) await page.fill("#patience", String(run.patience));
    if (run.entropy !== undefined) await page.fill("#entropy", String(run.entropy));
    for (const text of run.texts) {
      const seq = Number(await page.getAttribute("#result", "data-seq"));
      await page.fill("#text", "");
      await page.locator("#text").pressSequentially(text); // typed, character by character
      await page.click("#run");
      await page.waitForFunction(
        (before) => {
          const r = document.getElementById("result");
          return Number(r.dataset.seq) > before && (r.dataset.state === "done" || r.dataset.state === "error");
        },
        seq,
        { timeout },
      );
      const state = await page.getAttribute("#result", "data-state");
      const json = state === "done" ? JSON.parse(await page.getAttribute("#result", "data-json")) : null;
      const shown = {
        state,
        label: await page.textContent("#label"),
        exit: await page.textContent("#exit-out"),
        latency: await page.textContent("#latency"),
        error: state === "error" ? await page.textContent("#error") : null,
        text: await page.inputValue("#text"),
        scores: await page.evaluate(() =>
          Array.from(document.querySelectorAll("#scores tbody tr"), (tr) => [tr.cells[0].textContent, Number(tr.cells[1].textContent)]),
        ),
      };
      out.results.push({ json, shown });
    }
    if (run.screenshot && args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
    report.runs.push(out);
  }
} catch (e) {
  report.error = String(e?.stack || e);
} finally {
  writeFileSync(args.out, JSON.stringify(report, null, 1));
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(report.error ? 1 : 0);
