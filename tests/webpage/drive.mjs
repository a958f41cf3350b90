// Drives dicomsvc's page (GET /) in headless Chromium for tests/test_webpage.py: playwright-core
// from tests/ohif/node_modules (tests/ohif/setup.sh installs it), Debian's chromium-headless-shell.
//
//   node tests/webpage/drive.mjs '{"chromium": "...", "base": "http://127.0.0.1:P", "files": ["a.zip", ...],
//                                  "patientId": "...", "out": "<folder for screenshots>", "timeoutMs": 60000,
//                                  "token": "<bearer token, when the service has auth on>"}'
//
// The storyline, at 1280x720: open /, choose the files (anonymize unticked), reach the Upload
// button with Tab only and press Enter (the first tus PATCH after the first one is broken off
// once, as a network failure would: the page must ask HEAD and go on), wait for the progress to reach done, search by patient ID,
// Tab to the study's link and press Enter, then on the focused stack: ArrowDown, the mouse wheel
// (three slices), a CT window preset; the tags table of each. Every request is recorded with its
// status; other origins are aborted ("blocked"); console errors, page errors and CSP violations
// (securitypolicyviolation events) are collected. Prints one JSON object on stdout (exit code 0
// even when a step fails: "error" says which).
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(new URL('../ohif/package.json', import.meta.url));
const { chromium } = require('playwright-core');
const AXE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8'); // axe-core, pinned in tests/ohif/package.json

const opts = JSON.parse(process.argv[2]);
const timeout = opts.timeoutMs ?? 60000;
const origin = new URL(opts.base).origin;
const result = {
  requests: [], blocked: [], console: [], pageErrors: [], csp: [], steps: [], error: null,
  slices: [], shots: {}, overflow: [], tabsToUpload: null, tabsToStudy: null, broken: null,
  held: [], axe: {}, overlapsAt: {},
};
// A request held at the route until the page gives up on it (the Cancel steps): {match, route, seen}
let hold = null;
const t0 = Date.now();
const step = (name, extra = {}) => result.steps.push({ name, ms: Date.now() - t0, ...extra });
const byRequest = new Map();
const originOf = (url) => {
  try {
    return new URL(url).origin;
  } catch {
    return null;
  }
};

const browser = await chromium.launch({
  executablePath: opts.chromium,
  headless: true,
  timeout,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
         '--disable-sync', '--no-first-run', '--disable-domain-reliability', '--metrics-recording-only'],
});
let page;
const shot = async (name) => {
  const file = path.join(opts.out, `${name}.png`);
  await page.screenshot({ path: file });
  result.shots[name] = file;
};
// The page fits the window: no horizontal scroll, no element wider than the viewport.
const checkFit = async (where) => {
  const fit = await page.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth,
    clientWidth: document.documentElement.clientWidth,
  }));
  if (fit.scrollWidth > fit.clientWidth) result.overflow.push({ where, ...fit });
};
// The study view's parts, none over another: pairs of overlapping boxes.
const overlaps = () => page.evaluate(() => {
  const names = ['.study-head', '.series-list', '#stack', '.controls', '.tags'];
  const boxes = names.map((n) => [n, document.querySelector(n).getBoundingClientRect()]);
  const out = [];
  for (let i = 0; i < boxes.length; i++) {
    for (let j = i + 1; j < boxes.length; j++) {
      const [a, ra] = boxes[i], [b, rb] = boxes[j];
      if (ra.left < rb.right - 1 && rb.left < ra.right - 1 && ra.top < rb.bottom - 1 && rb.top < ra.bottom - 1) out.push(`${a} / ${b}`);
    }
  }
  return out;
});
// axe-core (not ours) on the page as it is: its violations of serious or critical impact. Evaluated
// through the DevTools protocol, so the page's CSP (no inline script) is left as it is.
const axe = async (where) => {
  if (!(await page.evaluate(() => Boolean(window.axe)))) await page.evaluate(AXE + '\n;0');
  const found = await page.evaluate(async () => (await window.axe.run(document, { resultTypes: ['violations'] })).violations
    .filter((v) => ['serious', 'critical'].includes(v.impact))
    .map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 5).map((n) => n.target.join(' ')) })));
  result.axe[where] = found;
};
// Press Upload, wait until ``hold`` has the request it waits for, press Cancel: what the page says.
const cancelled = async (files, match) => {
  let seen;
  const held = new Promise((resolve) => (seen = resolve));
  hold = { match, route: null, seen };
  await page.setInputFiles('#files', files);
  await page.waitForFunction(() => !document.querySelector('#start').disabled, null, { timeout });
  await page.click('#start');
  await Promise.race([held, new Promise((_, reject) => setTimeout(() => reject(new Error('nothing held')), timeout))]);
  await page.click('#cancel');
  await page.waitForFunction(() => document.querySelector('#upload-status').textContent.startsWith('Cancelled'), null, { timeout });
  const status = await page.textContent('#upload-status');
  await hold.route.abort('aborted').catch(() => {}); // the page gave up on it already
  hold = null;
  return { status, cancelDisabled: await page.isDisabled('#cancel'), startDisabled: await page.isDisabled('#start') };
};

// Tab (only the keyboard) until the focused element matches ``selector``; how many presses.
const tabTo = async (selector, most = 80) => {
  for (let n = 1; n <= most; n++) {
    await page.keyboard.press('Tab');
    if (await page.evaluate((s) => document.activeElement && document.activeElement.matches(s), selector)) return n;
  }
  throw new Error(`Tab never reached ${selector}`);
};
// What the stack shows: the instance id, window, blob URL and a digest of its decoded pixels.
const slice = () => page.evaluate(() => {
  const img = document.querySelector('#slice');
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let sum = 0, hash = 0;
  for (let i = 0; i < data.length; i += 4) {
    sum += data[i];
    hash = (hash * 31 + data[i]) >>> 0;
  }
  return { id: img.dataset.id, window: img.dataset.window, frame: img.dataset.frame, src: img.src, width: img.naturalWidth,
           height: img.naturalHeight, mean: sum / (data.length / 4), hash,
           caption: document.querySelector('#slice-caption').textContent, focused: document.activeElement.id };
});
// Wait until the stack shows another instance (or window) than ``before``, and its tags table too.
const nextSlice = async (before) => {
  await page.waitForFunction((b) => {
    const img = document.querySelector('#slice');
    return img.complete && img.naturalWidth > 0 && img.dataset.id &&
      (img.dataset.id !== b.id || img.dataset.window !== b.window || img.dataset.frame !== b.frame);
  }, before, { timeout });
  const now = await slice();
  await page.waitForFunction((id) => document.querySelector('#tags').dataset.id === id, now.id, { timeout });
  now.tags = await page.evaluate(() => Array.from(document.querySelectorAll('#tags tbody tr'),
    (tr) => Array.from(tr.cells, (td) => td.textContent.trim())));
  return now;
};

try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 720 }, serviceWorkers: 'block' });
  await context.route('**/*', (route) => {
    const req = route.request(), url = req.url();
    if (hold && !hold.route && hold.match(req)) {
      hold.route = route; // answered never: the page's Cancel must abort it
      result.held.push({ method: req.method(), url });
      hold.seen();
      return undefined;
    }
    if (req.method() === 'PATCH' && !result.broken && req.headers()['upload-offset'] !== '0') {
      result.broken = url; // one chunk lost on the way: the page must resume from HEAD's offset
      return route.abort('connectionreset');
    }
    if (originOf(url) === origin || /^(blob|data):/.test(url)) return route.continue();
    result.blocked.push(url);
    return route.abort('blockedbyclient');
  });
  page = await context.newPage();
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  page.on('request', (req) => {
    const rec = { url: req.url(), method: req.method(), status: null, failure: null, ms: Date.now() - t0 };
    byRequest.set(req, rec);
    result.requests.push(rec);
  });
  page.on('response', (res) => {
    const rec = byRequest.get(res.request());
    if (rec) rec.status = res.status();
  });
  page.on('requestfailed', (req) => {
    const rec = byRequest.get(req);
    if (rec) rec.failure = req.failure()?.errorText ?? 'failed';
  });
  page.on('console', (msg) => {
    if (msg.type() === 'error' || msg.type() === 'warning') result.console.push(`${msg.type()}: ${msg.text()}`.slice(0, 500));
  });
  page.on('pageerror', (err) => result.pageErrors.push(String(err).slice(0, 500)));

  let current = 'open the page';
  try {
    await page.goto(opts.base + '/', { timeout });
    await page.waitForSelector('body[data-ready="true"]', { timeout });
    step('page ready');
    await checkFit('home');
    await shot('home');
    if (opts.token) {
      current = 'token';
      await page.waitForSelector('#token-form:not([hidden])', { timeout });
      await page.fill('#token', opts.token);
      await page.press('#token', 'Enter');
      await page.waitForFunction(() => document.querySelector('#token-state').textContent === 'token set', null, { timeout });
      step('token set');
    } else if (await page.isVisible('#token-form')) {
      throw new Error('the token form shows with DICOMSVC_AUTH=none');
    }

    current = 'upload';
    if (await page.isChecked('#anonymize')) throw new Error('anonymize is ticked by default');
    if (opts.folder) { // the folder picker (webkitdirectory): every file below the folder
      await page.setInputFiles('#folder', opts.folder);
      await page.waitForFunction(() => !document.querySelector('#start').disabled, null, { timeout });
      result.folderChosen = await page.textContent('#chosen');
    }
    // a file dropped on the drop zone is chosen (then the picker's choice replaces it)
    const dropped = await page.evaluateHandle(() => {
      const dt = new DataTransfer();
      dt.items.add(new File([new Uint8Array(200)], 'dropped.dcm'));
      return dt;
    });
    await page.dispatchEvent('#drop', 'dragover', { dataTransfer: dropped });
    await page.dispatchEvent('#drop', 'drop', { dataTransfer: dropped });
    await page.waitForFunction(() => document.querySelector('#chosen').textContent.startsWith('1 file(s)'), null, { timeout });
    result.droppedChosen = await page.textContent('#chosen');
    // A dropped folder: Chromium gives its entries through DataTransferItem.webkitGetAsEntry, which
    // Playwright cannot make for a real folder. Here a drop event whose dataTransfer is a fake: one
    // item whose entry is a directory (File and Directory Entries API shape: isFile/isDirectory,
    // createReader().readEntries in batches until an empty one, file(callback)) holding a file, a
    // subfolder with a file, and a file in a second batch. The page's walk is exercised, not
    // Chromium's own entries.
    result.droppedFolder = await page.evaluate(() => {
      const file = (name, size) => ({ isFile: true, isDirectory: false, name,
        file: (ok) => setTimeout(() => ok(new File([new Uint8Array(size)], name))) });
      const dir = (name, ...batches) => ({ isFile: false, isDirectory: true, name, createReader: () => {
        const left = [...batches, []];
        return { readEntries: (ok) => setTimeout(() => ok(left.shift() || [])) };
      } });
      const tree = dir('scan', [file('a.dcm', 10), dir('sub', [file('c.dcm', 30)])], [file('b.dcm', 20)]);
      const event = new Event('drop', { bubbles: true, cancelable: true });
      Object.defineProperty(event, 'dataTransfer', { value: { items: [{ kind: 'file', webkitGetAsEntry: () => tree }], files: [] } });
      document.querySelector('#drop').dispatchEvent(event);
      return true;
    });
    await page.waitForFunction(() => document.querySelector('#chosen').textContent.startsWith('3 file(s)'), null, { timeout });
    result.droppedFolder = { chosen: await page.textContent('#chosen'),
      names: await page.evaluate(() => document.querySelector('#chosen').dataset.names) };
    await page.setInputFiles('#files', opts.files);
    if (opts.csv) {
      await page.setInputFiles('#csv', opts.csv);
      await page.selectOption('#csv-key', 'PatientID');
    }
    await page.waitForFunction(() => !document.querySelector('#start').disabled, null, { timeout });
    result.chosen = await page.textContent('#chosen');
    await page.evaluate(() => document.activeElement && document.activeElement.blur());
    await tabTo('#files'); // the hidden file input: its label shows the focus
    result.focusOutlines = { picker: await page.evaluate(() => getComputedStyle(document.querySelector('label[for=files]')).outlineStyle) };
    await page.evaluate(() => document.activeElement && document.activeElement.blur());
    result.tabsToUpload = await tabTo('#start');
    result.focusOutlines.upload = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
    await page.keyboard.press('Enter');
    step('upload started with the keyboard');
    await page.waitForFunction(() => document.querySelector('#upload-status').textContent.startsWith('Done'), null, { timeout });
    result.upload = await page.evaluate(() => ({
      status: document.querySelector('#upload-status').textContent,
      transfer: document.querySelector('#transfer').value,
      transferText: document.querySelector('#transfer-text').textContent,
      processing: document.querySelector('#processing').value,
      processingText: document.querySelector('#processing-text').textContent,
      failures: Array.from(document.querySelectorAll('#failures li'), (li) => li.textContent),
    }));
    step('upload done');
    await shot('uploaded');
    await axe('uploaded');

    current = 'more studies';
    // DICOMSVC_QIDO_MAX_RESULTS=1: one study a page; the list says so and pages with "More studies"
    await page.waitForFunction(() => document.querySelectorAll('#study-table tbody tr').length === 1
      && !document.querySelector('#more-studies').hidden, null, { timeout });
    result.paging = [await page.evaluate(() => ({ rows: document.querySelectorAll('#study-table tbody tr').length,
      count: document.querySelector('#study-count').textContent }))];
    for (let n = 0; n < 2; n++) {
      await page.click('#more-studies');
      await page.waitForFunction((n) => !document.querySelector('#more-studies').disabled
        && !document.querySelector('#study-count').textContent.startsWith('Loading'), n, { timeout });
      result.paging.push(await page.evaluate(() => ({
        rows: document.querySelectorAll('#study-table tbody tr').length,
        ids: Array.from(document.querySelectorAll('#study-table tbody tr'), (tr) => tr.cells[1].textContent),
        count: document.querySelector('#study-count').textContent,
        more: !document.querySelector('#more-studies').hidden })));
    }
    step('more studies');

    current = 'cancel';
    const posts = { n: 0 };
    // multipart: the first file's POST goes (a job on the server), the second's is held, then Cancel
    result.cancelPost = await cancelled(opts.cancelFiles, (req) => req.method() === 'POST'
      && new URL(req.url()).pathname === '/dicom' && ++posts.n === 2);
    // tus: the second PATCH is held, then Cancel: the page stops and DELETEs the upload
    result.cancelTus = await cancelled([opts.cancelBig], (req) => req.method() === 'PATCH'
      && req.headers()['upload-offset'] !== '0');
    step('cancelled');

    current = 'search';
    await page.fill('#q-id', opts.patientId);
    await page.press('#q-id', 'Enter');
    await page.waitForFunction((pid) => {
      const query = new URLSearchParams(document.querySelector('#study-table').dataset.query || '');
      const rows = document.querySelectorAll('#study-table tbody tr');
      return query.get('PatientID') === pid && rows.length === 1 && rows[0].cells[1].textContent === pid;
    }, opts.patientId, { timeout });
    await page.waitForFunction(() => {
      const imgs = document.querySelectorAll('#study-table tbody img');
      return document.querySelector('#study-table tbody .thumbs[data-done]') && imgs.length > 0
        && Array.from(imgs).every((i) => i.complete && i.naturalWidth > 0);
    }, null, { timeout });
    result.listRow = await page.evaluate(() => Array.from(document.querySelector('#study-table tbody tr').cells, (c) => c.textContent));
    result.thumbnails = await page.evaluate(() => document.querySelectorAll('#study-table tbody img').length);
    step('study found');
    await checkFit('list');
    await shot('list');
    await axe('list');

    current = 'other searches';
    // the same study by a name wildcard, a date range and its modality; none with another modality
    const search = async (fields) => {
      await page.click('#search button[type=reset]');
      await page.waitForFunction(() => document.querySelector('#q-id').value === '', null, { timeout });
      for (const [sel, value] of Object.entries(fields)) {
        if (sel === '#q-modality') await page.selectOption(sel, value);
        else await page.fill(sel, value);
      }
      const before = await page.evaluate(() => Number(document.querySelector('#study-table').dataset.answered || 0));
      await page.click('#search button[type=submit]');
      await page.waitForFunction((b) => Number(document.querySelector('#study-table').dataset.answered || 0) > b
        && !document.querySelector('#study-count').textContent.startsWith('Searching'), before, { timeout });
      return page.evaluate(() => ({ query: document.querySelector('#study-table').dataset.query,
        ids: Array.from(document.querySelectorAll('#study-table tbody tr'), (tr) => tr.cells[1].textContent) }));
    };
    result.searches = [
      await search({ '#q-name': opts.nameWildcard, '#q-from': '2024-01-01', '#q-to': '2024-01-31', '#q-modality': 'CT' }),
      await search({ '#q-name': opts.nameWildcard, '#q-modality': 'US' }),
    ];
    await search({ '#q-id': opts.patientId, '#q-modality': 'CT' });
    step('searches');

    current = 'open the study';
    result.tabsToStudy = await tabTo('a.study-link');
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => {
      const img = document.querySelector('#slice');
      return !document.querySelector('#study-view').hidden && img.complete && img.naturalWidth > 0 && img.dataset.id;
    }, null, { timeout });
    let now = await nextSlice({ id: '', window: '' });
    result.slices.push(now);
    step('study open', { focused: now.focused });
    result.ohifLink = await page.evaluate(() => {
      const a = document.querySelector('#ohif-link');
      return a.hidden ? null : a.href;
    });

    current = 'step with the keyboard';
    await page.keyboard.press('ArrowDown'); // the stack has the focus
    now = await nextSlice(now);
    result.slices.push(now);
    current = 'step with the wheel';
    const box = await page.locator('#stack').boundingBox();
    await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
    await page.mouse.wheel(0, 120);
    now = await nextSlice(now);
    result.slices.push(now);
    step('three slices');

    current = 'window preset';
    await page.selectOption('#preset', '-600,1500');
    now = await nextSlice(now);
    result.windowed = now;
    step('lung window');
    await page.focus('#back');
    result.tabsToStack = await tabTo('#stack');
    result.focusOutlines.stack = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
    result.overlaps = await overlaps();
    await checkFit('study');
    await shot('study');
    await axe('study');

    current = 'multi-frame series';
    await page.selectOption('#preset', ''); // back to the stored window
    now = await nextSlice(now);
    await page.click('#series-list li:nth-child(2) button');
    now = await nextSlice(now);
    result.frames = [now];
    await page.focus('#stack');
    await page.keyboard.press('ArrowDown');
    now = await nextSlice(now);
    result.frames.push(now);
    step('frames');

    current = 'other window sizes';
    // 1024x768, and 1280x720 at 200% zoom: a CSS viewport of 640x360 (what browser zoom makes)
    for (const [width, height] of [[1024, 768], [640, 360]]) {
      await page.setViewportSize({ width, height });
      const size = `${width}x${height}`;
      await checkFit(`study ${size}`);
      result.overlapsAt[size] = await overlaps();
      await shot(`study-${size}`);
      await page.evaluate(() => (location.hash = '#studies'));
      await page.waitForFunction(() => !document.querySelector('#home-view').hidden
        && document.querySelectorAll('#study-table tbody tr').length > 0, null, { timeout });
      await checkFit(`home ${size}`);
      await shot(`home-${size}`);
      await page.goBack();
      await page.waitForFunction(() => !document.querySelector('#study-view').hidden
        && document.querySelector('#slice').naturalWidth > 0, null, { timeout });
    }
    step('window sizes');
  } catch (err) {
    result.error = `${current}: ${String(err).split('\n')[0]}`;
    await shot('error').catch(() => {});
  }
  result.csp = await page.evaluate(() => window.__csp).catch(() => ['(could not read)']);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(result) + '\n');
