// End-to-end scenarios for the Shard web app in Debian's headless Chromium (playwright-core).
//
//   node e2e.mjs <scenario>     scenarios: leech, a11y, queue, scout-webgpu, scout-cpu, scout-websocket
//
// Environment: SHARD_URL (a running Oracle that serves the app), SHARD_SCREENSHOTS (where to
// save screenshots), CHROMIUM (default /usr/bin/chromium). tests/tests/browser.rs starts the
// Oracle and runs each scenario. The last line printed is a JSON object of measurements; any
// failed check throws, and the exit code is 1.
import { chromium } from 'playwright-core';
import { mkdtempSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const base = process.env.SHARD_URL ?? 'http://127.0.0.1:8080';
const shots = process.env.SHARD_SCREENSHOTS ?? join(tmpdir(), 'shard-screenshots');
mkdirSync(shots, { recursive: true });
const scenario = process.argv[2];
const results = { scenario };

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function json(path, init) {
  const r = await fetch(base + path, init);
  check(r.ok, `${path} answered ${r.status}`);
  return r.json();
}
// Polls `fn` until it returns something truthy.
async function until(what, fn, timeoutMs = 60_000, everyMs = 200) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}

// A screenshot; generous time, since a page drafting on a software GPU renders slowly.
async function shot(page, name, { fullPage = true } = {}) {
  await page.bringToFront(); // a background tab may produce no frame to capture
  await page.screenshot({ path: join(shots, name), fullPage, timeout: 120_000 });
}

async function launch({ webgpu }) {
  const args = [
    '--headless=new', '--no-sandbox', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-quic',
  ];
  if (webgpu) args.push('--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-webgpu-adapter=swiftshader');
  // A fresh profile per run: nothing cached from an earlier test.
  const profile = mkdtempSync(join(tmpdir(), 'shard-chromium-'));
  return chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: false, // --headless=new is in args
    args,
    viewport: { width: 1100, height: 850 },
  });
}

async function openApp(context, query = '') {
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.error(`[page] ${m.text()}`); });
  page.on('pageerror', (e) => console.error(`[page error] ${e.message}`));
  await page.goto(`${base}/${query}`);
  await page.waitForSelector('[data-testid=app-ready]', { timeout: 120_000 });
  return page;
}

async function sendChat(page, text) {
  await page.click('[data-testid=tab-chat]');
  await page.fill('[data-testid=chat-input]', text);
  await page.click('[data-testid=chat-send]');
}

async function waitAnswerDone(page, timeoutMs = 120_000) {
  await page.waitForSelector('[data-testid=chat-send]', { timeout: timeoutMs });
  return page.locator('[data-testid=msg-assistant] .text').last().innerText();
}

// axe-core's WCAG 2.0/2.1 A and AA rules (colour contrast included) on the page as it is now:
// the number of rules passed, and each violation with the elements it names.
async function axe(page) {
  if (!(await page.evaluate(() => 'axe' in window))) {
    await page.addScriptTag({ path: new URL('./node_modules/axe-core/axe.min.js', import.meta.url).pathname });
  }
  return page.evaluate(async () => {
    const r = await window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } });
    return { passes: r.passes.length, violations: r.violations.map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`) };
  });
}

// ---- Leech: a streamed answer, history kept across a reload, first paint measured.
async function leech() {
  const context = await launch({ webgpu: false });
  const page = await openApp(context);
  const paint = await page.evaluate(() => {
    const fcp = performance.getEntriesByName('first-contentful-paint')[0];
    const nav = performance.getEntriesByType('navigation')[0];
    return { first_contentful_paint_ms: fcp?.startTime ?? null, dom_content_loaded_ms: nav?.domContentLoadedEventEnd ?? null };
  });
  results.paint = paint;
  results.app_ready_ms = await page.evaluate(() => performance.now());
  // Before the first message the chat says that volunteers' machines may read it.
  const notice = await page.$('[data-testid=privacy-notice]');
  check(!!notice && (await notice.innerText()).includes('volunteers'), 'no notice that Scouts may read the conversation');
  // Streamed: record the answer's length at every DOM change; it must grow in several steps.
  await page.evaluate(() => {
    window.__lengths = [];
    new MutationObserver(() => {
      const all = document.querySelectorAll('[data-testid=msg-assistant] .text');
      const last = all[all.length - 1];
      if (last && window.__lengths[window.__lengths.length - 1] !== last.textContent.length) window.__lengths.push(last.textContent.length);
    }).observe(document.body, { subtree: true, childList: true, characterData: true });
  });
  await sendChat(page, 'In the beginning');
  await page.waitForSelector('[data-testid=chat-stop]');
  await waitAnswerDone(page);
  const lengths = await page.evaluate(() => window.__lengths.filter((n) => n > 0));
  results.stream_updates_seen = lengths.length;
  check(lengths.length >= 3, `the answer arrived in ${lengths.length} piece(s), not streamed`);
  const answer = await waitAnswerDone(page);
  check(answer.trim().length > 0, 'an empty answer');
  await shot(page, 'leech-chat.png');
  await page.reload();
  await page.waitForSelector('[data-testid=app-ready]');
  const after = await page.locator('[data-testid=msg-assistant] .text').last().innerText();
  const question = await page.locator('[data-testid=msg-user] .text').last().innerText();
  check(after === answer && question === 'In the beginning', 'the conversation did not survive a reload');
  results.answer = answer;
  // Phone width: the composer and the send button stay on screen.
  await page.setViewportSize({ width: 390, height: 800 });
  const box = await page.locator('[data-testid=chat-send]').boundingBox();
  check(box && box.x + box.width <= 390, 'the send button is off screen at phone width');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  check(overflow <= 0, `the page scrolls sideways by ${overflow} px at phone width`);
  // The viewport only: a full-page capture of a page taller than the screen leaves out the
  // scrollbar's width on the right.
  await shot(page, 'leech-phone.png', { fullPage: false });
  await context.close();
}

// ---- Queue: with the Oracle busy, the place in line is shown and counts down.
async function queue() {
  const context = await launch({ webgpu: false });
  const page = await openApp(context);
  // Fill the Oracle with long requests (their end-of-text token banned) so ours must wait.
  const eos = (await json('/tokenize', { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ content: '<|end|><|endoftext|>', add_special: false, parse_special: true }) })).tokens;
  const bias = Object.fromEntries(eos.map((t) => [String(t), -100]));
  const busy = [];
  for (let i = 0; i < 4; i++) {
    busy.push(fetch(base + '/v1/completions', { method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: `Busy ${i}`, max_tokens: 400, temperature: 0, logit_bias: bias }) }));
  }
  await until('the queue to fill', async () => (await json('/api/queue')).depth >= 4);
  await sendChat(page, 'And it came to pass');
  const seen = [];
  await until('the answer to start', async () => {
    const el = await page.$('[data-testid=queue-status]');
    if (el) {
      const ahead = Number(await el.getAttribute('data-ahead'));
      const wait = Number(await el.getAttribute('data-wait-ms'));
      if (!seen.length || seen[seen.length - 1].ahead !== ahead || seen[seen.length - 1].wait !== wait) seen.push({ ahead, wait });
      if (seen.length === 1) await shot(page, 'leech-queue.png');
    }
    const text = await page.locator('[data-testid=msg-assistant] .text').last().innerText().catch(() => '');
    return text.length > 0;
  }, 180_000, 100);
  results.queue_updates = seen;
  check(seen.length >= 2, `the queue status changed ${seen.length} time(s)`);
  check(seen[0].ahead >= 2, `the first position shown was ${seen[0].ahead}`);
  check(seen[seen.length - 1].ahead < seen[0].ahead, 'the position did not count down');
  check(seen.some((s, i) => i > 0 && s.wait < seen[i - 1].wait), 'the estimated wait never went down');
  await waitAnswerDone(page, 180_000);
  await Promise.all(busy);
  await context.close();
}

// ---- Scout: the model downloads with progress, drafts over libp2p are accepted while a
// second tab chats, and a reload takes the model from the cache.
async function scout({ webgpu, transport }) {
  const context = await launch({ webgpu });
  const query = transport ? `?view=scout&transport=${transport}` : '?view=scout';
  const page = await openApp(context, query);
  // Record every progress value the page shows.
  await page.evaluate(() => {
    window.__progress = [];
    new MutationObserver(() => {
      const p = document.querySelector('[data-testid=model-progress]');
      if (p) window.__progress.push(Number(p.getAttribute('value')));
    }).observe(document.body, { subtree: true, childList: true, attributes: true });
  });
  const modelRequests = [];
  page.on('request', (r) => { if (r.url().includes('/models/')) modelRequests.push(r.url()); });
  await page.click('[data-testid=scout-start]');
  const want = transport === 'websocket' ? 'connected over WebSocket' : 'connected over webrtc-direct';
  await until(`the Scout to connect (${want})`, async () =>
    (await page.locator('[data-testid=scout-connection]').innerText()).startsWith(want), 180_000);
  const backend = await page.locator('[data-testid=scout-backend]').innerText();
  results.backend = backend;
  const fallback = await page.$('[data-testid=cpu-fallback]');
  if (webgpu) {
    check(backend === 'WebGPU', `backend is ${backend}, not WebGPU`);
    check(!fallback, 'a CPU fallback notice with WebGPU present');
  } else {
    check(backend.startsWith('CPU'), `backend is ${backend}, not the CPU`);
    check(fallback && (await fallback.innerText()).includes('WebGPU is not available'), 'no CPU fallback notice');
    results.fallback_notice = await fallback.innerText();
    // The running dashboard with its notice passes the same checks as the idle views.
    const found = await axe(page);
    check(found.violations.length === 0, `axe-core on the running CPU Scout: ${found.violations.join('; ')}`);
  }
  const progress = await page.evaluate(() => window.__progress);
  const total = (await json('/api/scout')).model.bytes;
  results.progress_values = progress.length;
  check(progress.length >= 2 && progress[progress.length - 1] === total, `download progress not shown: ${JSON.stringify(progress.slice(-5))}`);
  check(modelRequests.length === 1, `model requests: ${modelRequests.length}`);
  check((await page.locator('[data-testid=model-source]').innerText()).startsWith('downloaded'), 'model source');
  const peerId = await page.locator('[data-testid=scout-peer]').getAttribute('data-peer');
  const peer = await until('the Oracle to list this Scout', async () =>
    (await json('/api/swarm')).scouts.find((s) => s.peer_id === peerId));
  results.transport = peer.transport;
  check(peer.transport === (transport === 'websocket' ? 'websocket' : 'webrtc-direct'), `transport ${peer.transport}`);
  check(peer.backend === (webgpu ? 'gpu (webgpu)' : 'cpu (wasm ndarray)'), `scout backend ${peer.backend}`);

  // Someone else (another browser, so another user) chats while the Scout drafts; the Oracle's
  // count of this Scout's accepted tokens must rise during the chat.
  const leechContext = await launch({ webgpu: false });
  const leechPage = await openApp(leechContext);
  const accepted = [];
  const start = Date.now();
  const prompts = ['In the beginning', 'And it came to pass', 'The man said', 'She looked at the'];
  let rose = false;
  for (let round = 0; round < prompts.length && !rose; round++) {
    await sendChat(leechPage, prompts[round]);
    for (;;) {
      await sleep(1000);
      const s = (await json('/api/swarm')).scouts.find((x) => x.peer_id === peer.peer_id);
      accepted.push(s?.tokens_accepted ?? 0);
      const n = accepted.length;
      rose = n >= 2 && accepted[n - 1] > accepted[n - 2] && accepted[n - 2] > 0;
      if (rose || await leechPage.$('[data-testid=chat-send]')) break;
    }
    if (rose) {
      await shot(leechPage, `leech-while-scouting-${webgpu ? 'webgpu' : 'cpu'}.png`);
      const stop = await leechPage.$('[data-testid=chat-stop]');
      if (stop) await stop.click();
      await waitAnswerDone(leechPage);
    }
  }
  results.accepted_over_time = accepted;
  results.chat_seconds = (Date.now() - start) / 1000;
  check(rose, `the Scout's accepted tokens did not rise during the chat: ${JSON.stringify(accepted)}`);

  // Golden tickets: a new Scout is on probation, and every job it answers is checked against
  // the reference draft model (run by the Oracle's CPU engine). This tab, on WebGPU or on the
  // CPU, must pass its tickets while the chats go on, and its reputation must rise.
  const standing = async () => {
    const r = await fetch(`${base}/api/trust/peers/${peer.peer_id}`);
    if (r.status === 404) return { probation: true, tickets_passed: 0, tickets_failed: 0, reputation: 0.5, banned_until: null };
    check(r.ok, `/api/trust/peers answered ${r.status}`);
    return r.json();
  };
  const before = await standing();
  results.tickets_before = before;
  const ticketsStart = Date.now();
  let round = 0;
  for (;;) {
    const st = await standing();
    if (!st.probation || st.tickets_failed > 0 || Date.now() - ticketsStart > 300_000) break;
    if (await leechPage.$('[data-testid=chat-send]')) await sendChat(leechPage, prompts[round++ % prompts.length]);
    await sleep(1000);
  }
  const stop = await leechPage.$('[data-testid=chat-stop]');
  if (stop) await stop.click();
  await waitAnswerDone(leechPage);
  await leechContext.close();
  const after = await standing();
  results.tickets_after = after;
  results.probation_seconds = (Date.now() - ticketsStart) / 1000;
  const tickets = await json(`/api/trust/tickets?peer=${peer.peer_id}`);
  const failed = tickets.tickets.filter((t) => t.verdict === 'fail');
  check(after.tickets_failed === 0,
    `the honest Scout failed golden tickets: ${JSON.stringify(after)}; the failed records: ${JSON.stringify(failed)}`);
  check(!after.probation && after.tickets_passed >= 10, `the Scout did not pass probation: ${JSON.stringify(after)}`);
  // A new identity starts at the prior, 0.5 (this tab's key is fresh).
  check(after.reputation > 0.5, `reputation did not rise above the prior 0.5: ${after.reputation}`);
  check(after.banned_until === null, `the honest Scout is banned: ${JSON.stringify(after)}`);
  results.ticket_records = tickets.tickets.length;
  check(tickets.tickets.length >= 10 && tickets.tickets.every((t) => t.verdict !== 'fail'), `ticket records: ${JSON.stringify(tickets.tickets.slice(-3))}`);
  await until('the dashboard to show probation passed', async () =>
    (await page.locator('[data-testid=scout-probation]').getAttribute('data-value')) === 'false', 30_000);

  // Accepted drafts earn credits, shown in /api/swarm and on the dashboard (from /api/me with
  // the tab's signed proof); the chat tab on the same origin uses the same IndexedDB key and is
  // then served in the Scout tier.
  const credits = await until('credits for the accepted drafts', async () => {
    const c = (await json('/api/swarm')).scouts.find((x) => x.peer_id === peer.peer_id)?.credits ?? 0;
    return c > 0 ? c : null;
  }, 60_000, 500);
  results.credits_in_swarm = credits;
  await until('the dashboard to show the credits', async () =>
    Number(await page.locator('[data-testid=scout-credits]').getAttribute('data-value')) > 0, 30_000);
  results.credits_earned = Number(await page.locator('[data-testid=scout-credits]').getAttribute('data-earned'));
  results.dashboard_credits = await page.locator('[data-testid=scout-credits]').innerText();
  results.dashboard_tier = await page.locator('[data-testid=scout-tier]').getAttribute('data-tier');
  check(results.dashboard_tier === 'scout', `the dashboard says this browser's chats are served as ${results.dashboard_tier}`);
  const chatTab = await openApp(context);
  await sendChat(chatTab, 'Tell me about the land of Egypt.');
  await until('the chat to say its tier', async () => !!(await chatTab.$('[data-testid=served-tier]')), 60_000);
  results.chat_tier = await chatTab.locator('[data-testid=served-tier]').getAttribute('data-tier');
  check(results.chat_tier === 'scout', `the chat tab was served as ${results.chat_tier}`);
  await waitAnswerDone(chatTab);
  await chatTab.close();
  results.swarm_entry = (await json('/api/swarm')).scouts.find((x) => x.peer_id === peer.peer_id);
  results.drafting_tok_s = Number(await page.locator('[data-testid=scout-tok-s]').getAttribute('data-value'));
  const jobs = Number(await page.locator('[data-testid=scout-jobs]').innerText());
  check(jobs > 0, 'the dashboard shows no jobs');
  results.jobs = jobs;
  await sleep(2500); // one swarm poll, so the dashboard shows the Oracle's figures
  const name = `scout-${transport ?? (webgpu ? 'webgpu' : 'cpu')}`;
  await shot(page, `${name}-dashboard.png`);
  await page.click('[data-testid=tab-network]');
  await page.waitForSelector('[data-testid=peer-row]');
  await shot(page, `${name}-network.png`);

  // Hidden tab: the Scout pauses and leaves; visible again, it comes back.
  await page.click('[data-testid=tab-scout]');
  await page.evaluate(() => {
    Object.defineProperty(document, 'visibilityState', { value: 'hidden', configurable: true });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  await until('the Scout to pause', async () => (await page.locator('[data-testid=scout-phase]').getAttribute('data-phase')) === 'Paused');
  await until('the Oracle to drop the paused Scout', async () => !(await json('/api/swarm')).scouts.some((x) => x.peer_id === peer.peer_id), 30_000);
  await page.evaluate(() => {
    Object.defineProperty(document, 'visibilityState', { value: 'visible', configurable: true });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  await until('the Scout to resume', async () =>
    (await page.locator('[data-testid=scout-connection]').innerText()).startsWith(want), 60_000);
  results.pause_resume = true;

  // A reload takes the model from the cache: no second download.
  if (!transport) {
    await page.reload();
    await page.waitForSelector('[data-testid=app-ready]');
    await page.click('[data-testid=scout-start]');
    await until('the cached model', async () =>
      (await page.locator('[data-testid=model-source]').innerText()).startsWith('from this browser'), 60_000);
    check(modelRequests.length === 1, `the model was downloaded ${modelRequests.length} times`);
    results.cached_reload = true;
    // The reloaded tab is the same Scout: its key came back from IndexedDB.
    await until('the reloaded Scout to connect', async () =>
      (await page.locator('[data-testid=scout-connection]').innerText()).startsWith(want), 120_000);
    const again = await page.locator('[data-testid=scout-peer]').getAttribute('data-peer');
    check(again === peerId, `the reloaded tab is another Scout: ${again} vs ${peerId}`);
    results.same_peer_after_reload = again === peerId;
    // The in-page measurement: drafting speed, and on WebGPU the distance from the CPU logits.
    await page.click('[data-testid=scout-stop]');
    await page.click('[data-testid=scout-measure]');
    await until('the measurement', async () => {
      const t = await page.locator('[data-testid=bench-result]').innerText();
      return !t.includes('measuring');
    }, 300_000, 500);
    const bench = page.locator('[data-testid=bench-result]');
    results.measured = await bench.innerText();
    check(!results.measured.includes('failed'), results.measured);
    results.measured_tok_s = Number(await bench.getAttribute('data-tok-s'));
    if (webgpu) {
      results.wgpu_vs_ndarray_max_delta = Number(await bench.getAttribute('data-delta'));
      check(results.wgpu_vs_ndarray_max_delta <= 0.05, `WebGPU logprobs differ from the CPU's by ${results.wgpu_vs_ndarray_max_delta}`);
      check(results.measured.includes('greedy tokens identical'), results.measured);
    }
    await shot(page, `scout-${webgpu ? 'webgpu' : 'cpu'}-measured.png`);
  }
  await context.close();
}

// ---- Accessibility: the page works from the keyboard alone, and axe-core (WCAG 2 A and AA
// rules, colour contrast included) finds nothing on any view, in light or dark colours.
async function a11y() {
  const context = await launch({ webgpu: false });
  const page = await openApp(context);
  // Tab from the top of the page to the chat box; Enter sends, and an answer streams.
  const focusedTestid = () => page.evaluate(() => document.activeElement?.dataset?.testid ?? document.activeElement?.tagName);
  const tabTo = async (testid) => {
    const order = [];
    for (let i = 0; i < 20; i++) {
      await page.keyboard.press('Tab');
      const now = await focusedTestid();
      order.push(now);
      if (now === testid) return order;
    }
    throw new Error(`${testid} not reached by Tab; focus went ${order.join(' → ')}`);
  };
  results.tab_order_to_input = await tabTo('chat-input');
  await page.keyboard.type('In the beginning');
  await page.keyboard.press('Enter');
  await page.waitForSelector('[data-testid=msg-user]');
  await waitAnswerDone(page);
  // From the top again, Tab to each view switcher: the focus ring shows, and Enter opens it.
  const views = {};
  for (const view of ['scout', 'network', 'chat']) {
    await page.click('header h1'); // not focusable: Tab starts from here
    await tabTo(`tab-${view}`);
    const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
    check(outline !== 'none', `no visible focus ring on the ${view} tab (outline-style ${outline})`);
    await page.keyboard.press('Enter');
    check(await page.getAttribute(`[data-testid=tab-${view}]`, 'aria-selected') === 'true', `Enter did not open the ${view} view`);
    views[view] = 'opened by keyboard';
  }
  results.keyboard_views = views;
  // axe-core on every view, in both colour schemes.
  const findings = {};
  for (const scheme of ['light', 'dark']) {
    await page.emulateMedia({ colorScheme: scheme });
    for (const view of ['chat', 'scout', 'network']) {
      await page.click(`[data-testid=tab-${view}]`);
      const out = await axe(page);
      findings[`${view}-${scheme}`] = out;
      if (scheme === 'dark') await shot(page, `${view}-dark.png`, { fullPage: false });
    }
  }
  results.axe = findings;
  const bad = Object.entries(findings).filter(([, f]) => f.violations.length > 0);
  check(bad.length === 0, `axe-core found problems: ${JSON.stringify(Object.fromEntries(bad))}`);
  await context.close();
}

const scenarios = {
  leech,
  a11y,
  queue,
  'scout-webgpu': () => scout({ webgpu: true }),
  'scout-cpu': () => scout({ webgpu: false }),
  'scout-websocket': () => scout({ webgpu: false, transport: 'websocket' }),
};
if (!scenarios[scenario]) {
  console.error(`unknown scenario ${scenario}; one of ${Object.keys(scenarios).join(', ')}`);
  process.exit(2);
}
try {
  await scenarios[scenario]();
  console.log(JSON.stringify(results));
} catch (e) {
  console.error(e);
  console.log(JSON.stringify({ ...results, error: String(e) }));
  process.exit(1);
}
