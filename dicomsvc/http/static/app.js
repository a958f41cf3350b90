// dicomsvc's page: upload, browse, view. Plain JavaScript (an ES module), no build step, no
// third-party code. Everything comes from this service's API; with auth on, every request carries
// the token the user pasted (kept in sessionStorage only).
//
// Routes used: GET /ui/config; POST /dicom?async=true (multipart), the tus 1.0.0 routes under
// /uploads/ for large files; GET /jobs/{id}; POST /datasets; QIDO-RS (PS3.18 §10.6) studies,
// series and instances; WADO-RS series thumbnails (§10.4.1.1.5); GET /dicom (ids by series);
// GET /image?id=&window=C,W; GET /tags?id=.
'use strict';

const $ = (sel) => document.querySelector(sel);
const TOKEN_KEY = 'dicomsvc.token';
const state = {
  config: { auth: 'none', ohif_url: null, resumable_bytes: 8 << 20, chunk_bytes: 8 << 20, batch_bytes: 64 << 20 },
  files: [], // [{file, name}]
  uploading: false,
  transfer: null, // the upload in progress: {cancelled, xhr, controller, removed}
  objectUrls: new Set(), // blob: URLs of the current view, revoked when it changes
  study: null, // {uid, series: [...], current: {series, instances, index}, window}
};

// ---------------------------------------------------------------------------------------------
// the API: every call with the token when there is one; errors as {error, detail}
// ---------------------------------------------------------------------------------------------
function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

function authHeaders(extra = {}) {
  const t = token();
  return t ? { ...extra, Authorization: `Bearer ${t}` } : extra;
}

class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

async function failure(response) {
  let code = '', detail = '';
  try {
    const body = await response.json();
    code = body.error || '';
    detail = body.detail || '';
  } catch {}
  if (response.status === 401) needToken();
  return new ApiError(response.status, code, detail || `${response.status} ${response.statusText}`);
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: authHeaders(options.headers || {}) });
  if (!response.ok) throw await failure(response);
  return response;
}

async function getJson(path) {
  return (await api(path, { headers: { Accept: 'application/json, application/dicom+json' } })).json();
}

// An image the API serves, as a blob: URL (an <img src> could not carry the token).
async function imageUrl(path) {
  const blob = await (await api(path)).blob();
  const url = URL.createObjectURL(blob);
  state.objectUrls.add(url);
  return url;
}

function releaseImages() {
  for (const url of state.objectUrls) URL.revokeObjectURL(url);
  state.objectUrls.clear();
}

function notice(text) {
  const box = $('#notice');
  box.textContent = text || '';
  box.hidden = !text;
}

function needToken() {
  if (state.config.auth === 'none') return;
  $('#token-form').hidden = false;
  notice(token() ? 'The token was refused: paste another one.' : 'This service needs an API token: paste one above.');
}

function setupToken() {
  const form = $('#token-form');
  form.hidden = state.config.auth === 'none';
  const shown = () => ($('#token-state').textContent = token() ? 'token set' : 'no token');
  shown();
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const value = $('#token').value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    $('#token').value = '';
    shown();
    notice('');
    route(true);
  });
  $('#forget-token').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    shown();
  });
}

// ---------------------------------------------------------------------------------------------
// DICOM JSON (PS3.18 Annex F) helpers
// ---------------------------------------------------------------------------------------------
const TAG = {
  StudyDate: '00080020', Modalities: '00080061', Modality: '00080060', StudyDescription: '00081030',
  SeriesDescription: '0008103E', PatientName: '00100010', PatientID: '00100020', StudyUID: '0020000D',
  SeriesUID: '0020000E', SeriesNumber: '00200011', InstanceNumber: '00200013', SOPUID: '00080018',
  Position: '00200032', Orientation: '00200037', StudySeries: '00201206', StudyInstances: '00201208',
  SeriesInstances: '00201209', Frames: '00280008',
};

function values(item, tag) {
  return (item[tag] && item[tag].Value) || [];
}

function first(item, tag) {
  const v = values(item, tag)[0];
  if (v && typeof v === 'object') return v.Alphabetic || '';
  return v === undefined || v === null ? '' : v;
}

function personName(pn) {
  return String(pn).split('^').filter(Boolean).join(', ');
}

function dicomDate(da) {
  return /^\d{8}$/.test(da) ? `${da.slice(0, 4)}-${da.slice(4, 6)}-${da.slice(6, 8)}` : da;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

// ---------------------------------------------------------------------------------------------
// upload: files, ZIPs, folders; multipart POST /dicom, or tus for large files; then the jobs
// ---------------------------------------------------------------------------------------------
function setFiles(list) {
  state.files = list.filter((f) => f.file.size > 0 || f.file.name);
  const bytes = state.files.reduce((n, f) => n + f.file.size, 0);
  $('#chosen').dataset.names = state.files.map((f) => f.name).join('\n'); // (for the browser test)
  $('#chosen').textContent = state.files.length
    ? `${state.files.length} file(s) chosen, ${formatBytes(bytes)}.`
    : 'No files chosen.';
  $('#start').disabled = state.uploading || state.files.length === 0;
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

function fromInput(input) {
  return Array.from(input.files, (file) => ({ file, name: file.webkitRelativePath || file.name }));
}

// A dropped folder: its entries read recursively (File and Directory Entries API).
async function fromEntry(entry, prefix = '') {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    return [{ file, name: prefix + file.name }];
  }
  const reader = entry.createReader();
  const out = [];
  for (;;) {
    const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
    if (!batch.length) break;
    for (const child of batch) out.push(...(await fromEntry(child, `${prefix}${entry.name}/`)));
  }
  return out;
}

async function fromDrop(dataTransfer) {
  const entries = Array.from(dataTransfer.items || [], (item) => item.webkitGetAsEntry && item.webkitGetAsEntry())
    .filter(Boolean);
  if (!entries.length) return Array.from(dataTransfer.files, (file) => ({ file, name: file.name }));
  const out = [];
  for (const entry of entries) out.push(...(await fromEntry(entry)));
  return out;
}

function setupUpload() {
  const drop = $('#drop');
  for (const type of ['dragenter', 'dragover']) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add('over');
    });
  }
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', async (event) => {
    event.preventDefault();
    drop.classList.remove('over');
    setFiles(await fromDrop(event.dataTransfer));
  });
  $('#files').addEventListener('change', (event) => setFiles(fromInput(event.target)));
  $('#folder').addEventListener('change', (event) => setFiles(fromInput(event.target)));
  $('#start').addEventListener('click', () => upload().catch((err) => finishUpload(`Upload failed: ${err.message}`)));
  $('#cancel').addEventListener('click', cancelUpload);
}

const progress = { sent: 0, total: 0, processed: 0, jobsTotal: 0 };

function showTransfer() {
  const { sent, total } = progress;
  $('#transfer').value = total ? sent / total : 0;
  $('#transfer-text').textContent = total ? `${Math.round((100 * sent) / total)}% of ${formatBytes(total)}` : '–';
}

function showProcessing(text) {
  const { processed, jobsTotal } = progress;
  $('#processing').value = jobsTotal ? processed / jobsTotal : 0;
  $('#processing-text').textContent = text || (jobsTotal ? `${processed} of ${jobsTotal} files` : '–');
}

function addFailure(name, reason) {
  $('#failures').append(el('li', { text: `${name}: ${reason}` }));
}

function batches(files) {
  const big = [], small = [];
  let current = [], bytes = 0;
  for (const f of files) {
    if (f.file.size > state.config.resumable_bytes) {
      big.push(f);
      continue;
    }
    if (current.length && bytes + f.file.size > state.config.batch_bytes) {
      small.push(current);
      current = [];
      bytes = 0;
    }
    current.push(f);
    bytes += f.file.size;
  }
  if (current.length) small.push(current);
  return { big, small };
}

// multipart POST /dicom?async=true: XMLHttpRequest for the upload's progress events.
function postBatch(batch, anonymize, onSent, transfer) {
  const form = new FormData();
  for (const f of batch) form.append('file', f.file, f.name);
  const query = `async=true${anonymize ? '&anonymize=true' : ''}`;
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    transfer.xhr = xhr; // Cancel: xhr.abort()
    xhr.open('POST', `/dicom?${query}`);
    for (const [k, v] of Object.entries(authHeaders({ Accept: 'application/json' }))) xhr.setRequestHeader(k, v);
    xhr.upload.addEventListener('progress', (event) => onSent(event.loaded));
    xhr.addEventListener('load', () => {
      let body = {};
      try {
        body = JSON.parse(xhr.responseText);
      } catch {}
      if (xhr.status === 401) needToken();
      resolve({ status: xhr.status, body });
    });
    xhr.addEventListener('error', () => reject(new Error('the connection failed')));
    xhr.addEventListener('abort', () => reject(new Cancelled()));
    xhr.send(form);
  });
}

function b64(text) {
  return btoa(String.fromCharCode(...new TextEncoder().encode(text)));
}

const TUS = { 'Tus-Resumable': '1.0.0' };

class Cancelled extends Error {
  constructor() {
    super('cancelled');
  }
}

// Cancel: the transfer in progress is aborted (XHR abort, the tus PATCH's fetch aborted); jobs the
// server already has keep running (the API has no job cancel).
function cancelUpload() {
  const transfer = state.transfer;
  if (!transfer || transfer.cancelled) return;
  transfer.cancelled = true;
  $('#cancel').disabled = true;
  $('#upload-status').textContent = 'Cancelling…';
  if (transfer.xhr) transfer.xhr.abort();
  transfer.controller.abort();
}

// tus termination (DELETE, the server announces it in Tus-Extension): a cancelled upload's bytes go.
async function terminate(location, transfer) {
  try {
    await (await api(location, { method: 'DELETE', headers: TUS })).text();
    transfer.removed += 1;
  } catch {
    // already gone or expired: nothing left to remove
  }
}
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// tus 1.0.0 (https://tus.io/protocols/resumable-upload): creation, then PATCH chunks at the
// server's Upload-Offset; after a broken request, HEAD says where to go on from.
async function tusUpload(f, anonymize, onSent, transfer) {
  const signal = transfer.controller.signal;
  const metadata = [`filename ${b64(f.name)}`, `async ${b64('true')}`];
  if (anonymize) metadata.push(`anonymize ${b64('true')}`);
  const created = await api('/uploads/', {
    method: 'POST',
    headers: { ...TUS, 'Upload-Length': String(f.file.size), 'Upload-Metadata': metadata.join(',') },
    signal,
  });
  const location = created.headers.get('Location');
  await created.text(); // read to its end: the connection is reused, not aborted
  let offset = 0, retries = 0;
  for (;;) {
    if (signal.aborted) {
      await terminate(location, transfer); // stop PATCHing; the partial upload is removed
      throw new Cancelled();
    }
    const end = Math.min(offset + state.config.chunk_bytes, f.file.size);
    let response;
    try {
      response = await fetch(location, {
        method: 'PATCH',
        headers: authHeaders({ ...TUS, 'Content-Type': 'application/offset+octet-stream', 'Upload-Offset': String(offset) }),
        body: f.file.slice(offset, end),
        signal,
      });
    } catch (err) {
      if (signal.aborted) continue; // cancelled: terminated at the loop's top
      response = null; // the network: ask where the upload stands, then go on
    }
    if (response && response.ok) await response.text().catch(() => {}); // (empty) read to its end; a Cancel may cut it
    const result = response && response.headers.get('Upload-Result');
    if (result) return JSON.parse(result);
    if (response && response.ok) {
      offset = Number(response.headers.get('Upload-Offset'));
      retries = 0;
      onSent(offset);
      continue;
    }
    if (response && ![409, 423].includes(response.status) && response.status < 500) throw await failure(response);
    if (++retries > 5) throw new Error('the upload kept failing');
    await sleep(500 * retries);
    if (signal.aborted) continue;
    const head = await api(location, { method: 'HEAD', headers: TUS });
    await head.text(); // (empty) read to its end, as every answer
    offset = Number(head.headers.get('Upload-Offset'));
    onSent(offset);
  }
}

// Progress is polled without the per-file results (?results=false: a 20,000-file job's are
// megabytes, made and sent again at every poll); each job's results are read once, when it ends.
async function pollJobs(jobs, transfer) {
  const url = (id) => `/jobs/${encodeURIComponent(id)}`;
  for (;;) {
    if (transfer.cancelled) return null; // the jobs keep running; the page stops watching them
    const answers = await Promise.all(jobs.map((id) => getJson(`${url(id)}?results=false`)));
    progress.processed = answers.reduce((n, j) => n + (j.processed || 0), 0);
    progress.jobsTotal = answers.reduce((n, j) => n + (j.total || 0), 0);
    showProcessing();
    if (answers.every((j) => j.status === 'done' || j.status === 'failed')) {
      return Promise.all(jobs.map((id) => getJson(url(id))));
    }
    await sleep(400);
  }
}

function tally(counts, body) {
  for (const key of ['created', 'duplicates', 'failed', 'skipped']) counts[key] += body[key] || 0;
  for (const r of body.results || []) {
    if (r.status === 'failed') addFailure(r.file, r.detail || r.error);
    else if (r.status === 'skipped') addFailure(r.file, `skipped: ${r.detail}`);
  }
}

async function upload() {
  if (state.uploading || !state.files.length) return;
  state.uploading = true;
  const transfer = (state.transfer = { cancelled: false, xhr: null, controller: new AbortController(), removed: 0 });
  $('#start').disabled = true;
  $('#cancel').disabled = false;
  $('#failures').replaceChildren();
  $('#upload-status').textContent = 'Uploading…';
  const anonymize = $('#anonymize').checked;
  const { big, small } = batches(state.files);
  Object.assign(progress, { sent: 0, total: state.files.reduce((n, f) => n + f.file.size, 0), processed: 0, jobsTotal: 0 });
  showTransfer();
  showProcessing('waiting for the transfer');
  const jobs = [];
  const counts = { created: 0, duplicates: 0, failed: 0, skipped: 0 };
  let done = 0;
  for (const batch of small) {
    if (transfer.cancelled) break;
    const size = batch.reduce((n, f) => n + f.file.size, 0);
    let answer;
    try {
      answer = await postBatch(batch, anonymize, (loaded) => {
        progress.sent = done + Math.min(loaded, size);
        showTransfer();
      }, transfer);
    } catch (err) {
      if (err instanceof Cancelled) break;
      throw err;
    }
    done += size;
    progress.sent = done;
    showTransfer();
    if (answer.status === 202) jobs.push(answer.body.job);
    else if (answer.status < 300) tally(counts, answer.body.results ? answer.body : { created: 1 });
    else {
      counts.failed += batch.length;
      for (const f of batch) addFailure(f.name, answer.body.detail || `HTTP ${answer.status}`);
    }
  }
  for (const f of big) {
    if (transfer.cancelled) break;
    try {
      const result = await tusUpload(f, anonymize, (offset) => {
        progress.sent = done + offset;
        showTransfer();
      }, transfer);
      if (result.status === 202) jobs.push(result.job);
      else if (result.status === 201) counts.created += 1;
      else if (result.status === 200 && result.id) counts.duplicates += 1;
      else if (result.status < 300) tally(counts, result);
      else {
        counts.failed += 1;
        addFailure(f.name, result.detail || result.error);
      }
    } catch (err) {
      if (transfer.cancelled) break;
      counts.failed += 1;
      addFailure(f.name, err.message);
    }
    done += f.file.size;
    progress.sent = done;
    showTransfer();
  }
  let polled = [];
  if (jobs.length && !transfer.cancelled) {
    $('#upload-status').textContent = 'Transfer done; the server is storing the files…';
    polled = await pollJobs(jobs, transfer);
  }
  if (transfer.cancelled) {
    const removed = transfer.removed ? ' The partial resumable upload was removed from the server.' : '';
    const running = jobs.length
      ? ` ${jobs.length} job(s) the server already had keep running (the API has no job cancel): the files sent before are stored.`
      : counts.created + counts.duplicates ? ` ${counts.created + counts.duplicates} file(s) sent before are stored.` : ' Nothing was stored.';
    finishUpload(`Cancelled.${removed}${running}`);
    loadStudies();
    return;
  }
  if (jobs.length) {
    for (const job of polled) {
      tally(counts, job);
      if (job.status === 'failed') addFailure(`job ${job.id}`, job.error || 'failed');
    }
  } else {
    progress.processed = progress.jobsTotal = 1;
  }
  showProcessing(`${counts.created + counts.duplicates} stored`);
  let summary = `Done: ${counts.created} stored, ${counts.duplicates} already there, ${counts.skipped} skipped, ${counts.failed} failed.`;
  const csv = $('#csv').files[0];
  if (csv) summary += ` ${await postCsv(csv, anonymize)}`;
  finishUpload(summary);
  loadStudies();
}

async function postCsv(csv, anonymize) {
  const form = new FormData();
  form.append('csv', csv, csv.name);
  form.append('key', $('#csv-key').value);
  if ($('#csv-column').value.trim()) form.append('column', $('#csv-column').value.trim());
  if (anonymize) form.append('anonymize', 'true');
  try {
    const body = await (await api('/datasets', { method: 'POST', body: form })).json();
    const unmatched = (body.unmatched || []).length;
    return `Clinical CSV: ${body.matched} row(s) joined to studies, ${unmatched} unmatched (dataset ${body.id}).`;
  } catch (err) {
    return `Clinical CSV not joined: ${err.message}`;
  }
}

function finishUpload(text) {
  state.uploading = false;
  $('#cancel').disabled = true;
  $('#upload-status').textContent = text;
  $('#start').disabled = state.files.length === 0;
}

// ---------------------------------------------------------------------------------------------
// the studies: QIDO-RS, newest first, a thumbnail per series
// ---------------------------------------------------------------------------------------------
const STUDY_LIMIT = 25;
let studySearch = 0; // the latest search; older answers are dropped
const studyPages = { query: '', shown: 0 }; // the search the list answers, and how many rows it has

// Studies one answer carries: the page's 25, or fewer when the server caps QIDO-RS answers
// (DICOMSVC_QIDO_MAX_RESULTS; PS3.18 §8.3.4.4: a server may return fewer results than the limit).
function studyPageSize() {
  const cap = Number(state.config.qido_max_results);
  return cap > 0 ? Math.min(STUDY_LIMIT, cap) : STUDY_LIMIT;
}

function searchQuery() {
  const q = new URLSearchParams({ includefield: 'StudyDescription' });
  const name = $('#q-name').value.trim(), id = $('#q-id').value.trim();
  if (name) q.set('PatientName', name);
  if (id) q.set('PatientID', id);
  const from = $('#q-from').value.replaceAll('-', ''), to = $('#q-to').value.replaceAll('-', '');
  if (from || to) q.set('StudyDate', from === to ? from : `${from}-${to}`); // PS3.4 C.2.2.2.5 range
  if ($('#q-modality').value) q.set('ModalitiesInStudy', $('#q-modality').value);
  return q;
}

// The list: a new search (its first page), or with ``more`` the next page of the same search
// (QIDO-RS limit/offset, PS3.18 §8.3.4.4) appended to the rows shown.
async function loadStudies(more = false) {
  const mine = more ? studySearch : ++studySearch;
  if (!more) releaseImages(); // the previous list's thumbnails
  const body = $('#study-table tbody');
  const moreButton = $('#more-studies');
  moreButton.disabled = true;
  if (!more) moreButton.hidden = true;
  $('#study-count').textContent = more ? 'Loading more studies…' : 'Searching…';
  const query = new URLSearchParams(more ? studyPages.query : searchQuery());
  const offset = more ? studyPages.shown : 0;
  query.set('limit', String(STUDY_LIMIT));
  query.set('offset', String(offset));
  let studies;
  try {
    studies = await getJson(`/dicomweb/studies?${query}`);
  } catch (err) {
    if (mine === studySearch) {
      $('#study-count').textContent = `Search failed: ${err.message}`;
      moreButton.disabled = false;
    }
    return;
  }
  if (mine !== studySearch) return;
  if (!more) body.replaceChildren();
  query.delete('limit');
  query.delete('offset');
  studyPages.query = String(query);
  studyPages.shown = offset + studies.length;
  $('#study-table').dataset.query = String(query); // what the rows answer
  $('#study-table').dataset.answered = String(mine);
  const shown = studyPages.shown, size = studyPageSize();
  const full = studies.length > 0 && studies.length >= size; // a full page: there may be more
  const capped = size < STUDY_LIMIT
    ? ` The server answers at most ${size} stud${size === 1 ? 'y' : 'ies'} a request (DICOMSVC_QIDO_MAX_RESULTS).` : '';
  $('#study-count').textContent = shown
    ? `${shown} stud${shown === 1 ? 'y' : 'ies'}, newest first${full ? '; there may be more: “More studies” shows the next ones.' : more && !studies.length ? '; no more.' : '.'}${capped}`
    : `No studies found.${capped}`;
  moreButton.hidden = !full;
  moreButton.disabled = false;
  for (const s of studies) {
    const uid = first(s, TAG.StudyUID);
    const thumbs = el('div', { class: 'thumbs' });
    const name = personName(first(s, TAG.PatientName)) || '(no name)';
    body.append(
      el('tr', {},
        el('td', {}, el('a', { href: `#study/${encodeURIComponent(uid)}`, class: 'study-link' }, name)),
        el('td', { text: first(s, TAG.PatientID) }),
        el('td', { text: dicomDate(first(s, TAG.StudyDate)) }),
        el('td', { text: first(s, TAG.StudyDescription) }),
        el('td', { text: values(s, TAG.Modalities).join(', ') }),
        el('td', { text: `${first(s, TAG.StudySeries)} / ${first(s, TAG.StudyInstances)}` }),
        el('td', {}, thumbs)),
    );
    seriesThumbs(uid, thumbs, mine);
  }
}

async function seriesThumbs(study, into, search) {
  try {
    const series = await allPages(`/dicomweb/studies/${encodeURIComponent(study)}/series`, 8);
    for (const se of series) {
      if (search !== studySearch) return;
      const url = await imageUrl(`${seriesPath(study, first(se, TAG.SeriesUID))}/thumbnail?viewport=96,96`);
      into.append(el('img', { src: url, alt: `Series ${first(se, TAG.SeriesNumber)} ${first(se, TAG.Modality)}`.trim(), width: '48', height: '48' }));
    }
  } catch {
    // a study without images has no thumbnail: the row stays as it is
  }
  into.dataset.done = 'true';
}

function seriesPath(study, series) {
  return `/dicomweb/studies/${encodeURIComponent(study)}/series/${encodeURIComponent(series)}`;
}

function setupSearch() {
  $('#search').addEventListener('submit', (event) => {
    event.preventDefault();
    loadStudies();
  });
  $('#search').addEventListener('reset', () => setTimeout(loadStudies));
  $('#more-studies').addEventListener('click', () => loadStudies(true));
}

// ---------------------------------------------------------------------------------------------
// a study: its series, each a stack of /image renderings; the tags of the current one
// ---------------------------------------------------------------------------------------------
async function openStudy(uid) {
  releaseImages();
  state.study = { uid, series: [], current: null, window: $('#preset').value };
  $('#study-h').textContent = 'Study';
  $('#study-meta').textContent = 'Loading…';
  $('#series-list').replaceChildren();
  $('#tags tbody').replaceChildren();
  delete $('#tags').dataset.id;
  $('#slice').removeAttribute('src');
  $('#slice-caption').textContent = '';
  const ohif = $('#ohif-link');
  ohif.hidden = !state.config.ohif_url;
  if (state.config.ohif_url) ohif.href = `${state.config.ohif_url}/viewer?StudyInstanceUIDs=${encodeURIComponent(uid)}`;
  const study = state.study;
  const [found, series] = await Promise.all([
    getJson(`/dicomweb/studies?StudyInstanceUID=${encodeURIComponent(uid)}&includefield=StudyDescription`),
    allPages(`/dicomweb/studies/${encodeURIComponent(uid)}/series`),
  ]);
  if (state.study !== study) return;
  const s = found[0] || {};
  $('#study-h').textContent = personName(first(s, TAG.PatientName)) || 'Study';
  $('#study-meta').textContent = [first(s, TAG.PatientID), dicomDate(first(s, TAG.StudyDate)), first(s, TAG.StudyDescription)]
    .filter(Boolean).join(' · ');
  study.series = series;
  for (const se of series) {
    const label = `Series ${first(se, TAG.SeriesNumber)} · ${first(se, TAG.Modality)} · ${first(se, TAG.SeriesInstances)} image(s)`
      + (first(se, TAG.SeriesDescription) ? ` · ${first(se, TAG.SeriesDescription)}` : '');
    const img = el('img', { alt: '', width: '56', height: '56' });
    const button = el('button', { type: 'button', 'data-series': first(se, TAG.SeriesUID), onclick: () => openSeries(se) },
      img, el('span', { text: label }));
    $('#series-list').append(el('li', {}, button));
    imageUrl(`${seriesPath(uid, first(se, TAG.SeriesUID))}/thumbnail?viewport=112,112`)
      .then((url) => (img.src = url)).catch(() => {});
  }
  if (series.length) await openSeries(series[0]);
  else $('#study-meta').textContent += ' · no series';
}

// Every page of a paged listing (GET /dicom: next_offset; QIDO-RS: limit/offset).
async function allIds(series) {
  const ids = new Map();
  let offset = 0;
  for (;;) {
    const page = await getJson(`/dicom?SeriesInstanceUID=${encodeURIComponent(series)}&limit=1000&offset=${offset}`);
    for (const item of page.items) if (!ids.has(item.SOPInstanceUID)) ids.set(item.SOPInstanceUID, item.id);
    if (page.next_offset === null || page.next_offset === undefined || !page.items.length) return ids;
    offset = page.next_offset;
  }
}

// Every result of a QIDO-RS search, page by page (PS3.18 §8.3.4.4 limit/offset): the server may
// answer fewer than asked (DICOMSVC_QIDO_MAX_RESULTS), so pages are asked for until one is empty.
async function allPages(search, most = Infinity) {
  const out = [];
  while (out.length < most) {
    const page = await getJson(`${search}${search.includes('?') ? '&' : '?'}limit=1000&offset=${out.length}`);
    if (!page.length) break;
    out.push(...page);
  }
  return out.slice(0, most);
}

function allInstances(study, series) {
  return allPages(`${seriesPath(study, series)}/instances?includefield=00200032&includefield=00200037`);
}

// Slice order: Instance Number (0020,0013); where it is missing or equal, the position along the
// slice normal (Image Position (0020,0032) · the cross product of Image Orientation (0020,0037)).
function sliceOrder(a, b) {
  const na = Number(first(a.qido, TAG.InstanceNumber)), nb = Number(first(b.qido, TAG.InstanceNumber));
  if (Number.isFinite(na) && Number.isFinite(nb) && na !== nb) return na - nb;
  return along(a.qido) - along(b.qido);
}

function along(item) {
  const p = values(item, TAG.Position).map(Number), o = values(item, TAG.Orientation).map(Number);
  if (p.length !== 3) return 0;
  if (o.length !== 6) return p[2];
  const n = [o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3]];
  return p[0] * n[0] + p[1] * n[1] + p[2] * n[2];
}

async function openSeries(se) {
  const study = state.study;
  const uid = first(se, TAG.SeriesUID);
  for (const b of document.querySelectorAll('#series-list button')) b.setAttribute('aria-current', String(b.dataset.series === uid));
  const [qido, ids] = await Promise.all([allInstances(study.uid, uid), allIds(uid)]);
  if (state.study !== study) return;
  const sorted = qido.map((q) => ({ qido: q, id: ids.get(first(q, TAG.SOPUID)) })).filter((i) => i.id).sort(sliceOrder);
  // a multi-frame instance is as many slices as it has frames, Number of Frames (0028,0008)
  const instances = sorted.flatMap((i) => {
    const frames = Math.max(1, Math.floor(Number(first(i.qido, TAG.Frames))) || 1);
    return Array.from({ length: frames }, (_, f) => ({ ...i, frame: f + 1, frames }));
  });
  study.current = { series: se, instances, index: 0, shown: 0, cache: new Map() };
  const slider = $('#slider');
  slider.max = String(Math.max(instances.length, 1));
  slider.value = '1';
  slider.disabled = instances.length < 2;
  await show(0);
}

function renderPath(item, window) {
  const frame = item.frame > 1 ? `&frame=${item.frame}` : ''; // frame 1 without a window: the PNG made at ingest
  return `/image?id=${encodeURIComponent(item.id)}${frame}${window ? `&window=${window}` : ''}`;
}

// The rendering of one slice (an instance's frame) in the chosen window, fetched once per view.
function rendering(current, item, window) {
  const key = `${item.id}|${item.frame}|${window}`;
  if (!current.cache.has(key)) {
    const pending = imageUrl(renderPath(item, window));
    pending.catch(() => current.cache.delete(key));
    current.cache.set(key, pending);
  }
  return current.cache.get(key);
}

let tagsTimer = null;

async function show(index) {
  const study = state.study;
  const current = study && study.current;
  if (!current || !current.instances.length) {
    $('#slice-caption').textContent = 'No images in this series.';
    return;
  }
  index = Math.max(0, Math.min(index, current.instances.length - 1));
  current.index = index;
  const shown = ++current.shown;
  const item = current.instances[index];
  const window = study.window;
  $('#slider').value = String(index + 1);
  const number = first(item.qido, TAG.InstanceNumber);
  const notes = [];
  if (number !== '') notes.push(`Instance Number ${number}`);
  if (item.frames > 1) notes.push(`frame ${item.frame} of ${item.frames}`);
  const caption = `Slice ${index + 1} of ${current.instances.length}${notes.length ? ` (${notes.join(', ')})` : ''}`
    + (window ? ` · window ${window.replace(',', '/')}` : '');
  let url;
  try {
    url = await rendering(current, item, window);
  } catch (err) {
    if (shown === current.shown) $('#slice-caption').textContent = `${caption}: ${err.message}`;
    return;
  }
  if (shown !== current.shown || state.study !== study) return; // a later step won
  const img = $('#slice');
  img.src = url;
  img.dataset.id = item.id;
  img.dataset.window = window;
  img.dataset.frame = String(item.frame);
  img.alt = `${first(current.series, TAG.Modality)} image, slice ${index + 1} of ${current.instances.length}`;
  $('#slice-caption').textContent = caption;
  for (const next of [index + 1, index - 1]) {
    if (next >= 0 && next < current.instances.length) rendering(current, current.instances[next], window).catch(() => {});
  }
  clearTimeout(tagsTimer);
  if ($('#tags').dataset.id !== item.id) tagsTimer = setTimeout(() => loadTags(item.id), 120); // frames share tags
}

async function loadTags(id) {
  let body;
  try {
    body = await getJson(`/tags?id=${encodeURIComponent(id)}`);
  } catch (err) {
    $('#tags tbody').replaceChildren(el('tr', {}, el('td', { colspan: '4', text: `Tags not loaded: ${err.message}` })));
    return;
  }
  const current = state.study && state.study.current;
  if (!current || current.instances[current.index].id !== id) return;
  const depth = new Map();
  const rows = body.tags.map((t) => {
    const d = t.Parent === undefined || t.Parent === null ? 0 : (depth.get(t.Parent) || 0) + 1;
    depth.set(t.ID, d);
    const value = t.Value === null || t.Value === undefined ? (t.Bytes !== undefined ? `(${t.Bytes} bytes)` : '') : t.Value;
    return el('tr', {},
      el('td', { text: `${'  '.repeat(d)}${t.Tag}` }), el('td', { text: `${d ? '› '.repeat(d) : ''}${t.Name}` }),
      el('td', { text: t.VR }), el('td', { text: String(value).slice(0, 300) }));
  });
  const table = $('#tags');
  table.dataset.id = id;
  $('#tags tbody').replaceChildren(...rows);
}

function setupStack() {
  const stack = $('#stack');
  const step = (delta) => {
    const current = state.study && state.study.current;
    if (current) show(current.index + delta);
  };
  stack.addEventListener('wheel', (event) => {
    event.preventDefault();
    if (event.deltaY) step(event.deltaY > 0 ? 1 : -1);
  }, { passive: false });
  stack.addEventListener('keydown', (event) => {
    const current = state.study && state.study.current;
    if (!current) return;
    const moves = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, PageDown: 10, PageUp: -10 };
    if (event.key in moves) step(moves[event.key]);
    else if (event.key === 'Home') show(0);
    else if (event.key === 'End') show(current.instances.length - 1);
    else return;
    event.preventDefault();
  });
  $('#slider').addEventListener('input', (event) => show(Number(event.target.value) - 1));
  $('#preset').addEventListener('change', (event) => {
    if (!state.study) return;
    state.study.window = event.target.value;
    if (state.study.current) show(state.study.current.index);
  });
}

// ---------------------------------------------------------------------------------------------
// views by the URL's fragment (never sent to the server): #study/<StudyInstanceUID>, else home
// ---------------------------------------------------------------------------------------------
function route(again = false) {
  const match = /^#study\/(.+)$/.exec(location.hash);
  if (state.config.auth !== 'none' && !token()) {
    needToken(); // nothing to show without one: no request that can only be refused
    return;
  }
  $('#home-view').hidden = Boolean(match);
  $('#study-view').hidden = !match;
  if (match) {
    openStudy(decodeURIComponent(match[1])).catch((err) => ($('#study-meta').textContent = `Not loaded: ${err.message}`));
    $('#stack').focus({ preventScroll: true });
  } else if (again || state.study || !state.listed) {
    state.study = null;
    state.listed = true;
    loadStudies();
  }
}

async function start() {
  try {
    state.config = await (await fetch('/ui/config')).json();
  } catch {
    notice('Could not read the page settings (/ui/config).');
  }
  setupToken();
  setupUpload();
  setupSearch();
  setupStack();
  window.addEventListener('hashchange', route);
  route();
  document.body.dataset.ready = 'true';
}

start();
