// Drives OHIF Viewer in headless Chromium (playwright-core, Debian's browser) for tests/test_ohif.py.
//
//   node tests/ohif/drive.mjs '{"chromium": "...", "viewer": "http://127.0.0.1:P1", "api": "http://127.0.0.1:P2",
//                              "study": "<StudyInstanceUID>", "patient": "<text in the study list>",
//                              "out": "<folder for screenshots>", "timeoutMs": 60000}'
//
// Opens the study list (/) and waits for the patient, then /viewer?StudyInstanceUIDs=<study> and waits
// for a drawn viewport and a quiet network. Every request the page makes is recorded with its status;
// requests to any origin other than the viewer's and the API's are aborted and listed as "blocked".
// Prints one JSON object on stdout (exit code 0 even when a step fails: "error" says which).
import { chromium } from 'playwright-core';
import path from 'node:path';

const opts = JSON.parse(process.argv[2]);
const timeout = opts.timeoutMs ?? 60000;
const allowed = new Set([new URL(opts.viewer).origin, new URL(opts.api).origin]);
const result = { requests: [], blocked: [], console: [], pageErrors: [], steps: [], error: null };
const byRequest = new Map();
const pending = new Set();
const t0 = Date.now();
const step = (name) => result.steps.push({ name, ms: Date.now() - t0 });
// Settles with the first API response that is not a success: the study list waits no longer for it.
let onApiFailure;
const apiFailure = new Promise((resolve) => (onApiFailure = resolve));
const apiOrigin = new URL(opts.api).origin;

const browser = await chromium.launch({
  executablePath: opts.chromium,
  headless: true,
  timeout,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--use-angle=swiftshader',
    '--enable-unsafe-swiftshader',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
    '--disable-domain-reliability',
    '--metrics-recording-only',
  ],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, serviceWorkers: 'block' });
  await context.route('**/*', (route) => {
    const url = route.request().url();
    let origin = null;
    try {
      origin = new URL(url).origin;
    } catch {}
    if (allowed.has(origin)) return route.continue();
    result.blocked.push(url);
    return route.abort('blockedbyclient');
  });
  const page = await context.newPage();
  page.on('request', (req) => {
    const rec = { url: req.url(), method: req.method(), type: req.resourceType(), status: null, failure: null,
                  accept: req.headers()['accept'] ?? null, ms: Date.now() - t0 };
    byRequest.set(req, rec);
    result.requests.push(rec);
    pending.add(req);
  });
  page.on('response', (res) => {
    const rec = byRequest.get(res.request());
    if (rec) {
      rec.status = res.status();
      rec.contentType = res.headers()['content-type'] ?? null;
    }
    if (res.status() >= 400 && new URL(res.url()).origin === apiOrigin) onApiFailure(res);
  });
  page.on('requestfinished', (req) => pending.delete(req));
  page.on('requestfailed', (req) => {
    pending.delete(req);
    const rec = byRequest.get(req);
    if (rec) rec.failure = req.failure()?.errorText ?? 'failed';
  });
  page.on('console', (msg) => {
    if (msg.type() === 'error' || msg.type() === 'warning') result.console.push(`${msg.type()}: ${msg.text()}`.slice(0, 500));
  });
  page.on('pageerror', (err) => result.pageErrors.push(String(err).slice(0, 500)));

  // Quiet: nothing pending for `quietMs`, and at least `minMs` since we started waiting.
  const settle = async (quietMs = 1500, minMs = 1000) => {
    const start = Date.now();
    let lastBusy = Date.now();
    while (Date.now() - start < timeout) {
      if (pending.size) lastBusy = Date.now();
      if (Date.now() - lastBusy >= quietMs && Date.now() - start >= minMs) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`network not quiet after ${timeout} ms (${pending.size} pending)`);
  };

  let current = 'study list';
  try {
    await page.goto(opts.viewer + '/', { timeout });
    const listed = page.getByText(opts.patient, { exact: false }).first().waitFor({ state: 'visible', timeout });
    const failed = apiFailure.then((res) => {
      throw new Error(`the API answered ${res.status()} to ${res.request().method()} ${res.url().slice(apiOrigin.length)}`);
    });
    await Promise.race([listed, failed]);
    step('study list shows the patient');
    await settle();
    result.listText = (await page.locator('body').innerText()).slice(0, 5000);
    result.listShot = path.join(opts.out, 'list.png');
    await page.screenshot({ path: result.listShot });

    current = 'viewer';
    await page.goto(`${opts.viewer}/viewer?StudyInstanceUIDs=${encodeURIComponent(opts.study)}`, { timeout });
    const canvas = page.locator('canvas.cornerstone-canvas').first();
    await canvas.waitFor({ state: 'visible', timeout });
    step('viewport canvas visible');
    await settle(2000, 3000);
    step('network quiet');
    await page.waitForTimeout(1000); // the last frame's draw
    result.viewportBox = await canvas.boundingBox();
    result.viewerShot = path.join(opts.out, 'viewer.png');
    await page.screenshot({ path: result.viewerShot });
    step('viewer screenshot');
  } catch (err) {
    result.error = `${current}: ${String(err).split('\n')[0]}`;
    result.errorShot = path.join(opts.out, 'error.png');
    await page.screenshot({ path: result.errorShot }).catch(() => {});
  }
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(result) + '\n');
