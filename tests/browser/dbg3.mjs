import { chromium } from 'playwright-core';
const args = ['--headless=new','--no-sandbox','--no-first-run','--disable-background-networking','--disable-component-update','--disable-sync','--disable-quic','--enable-unsafe-webgpu'];
const ctx = await chromium.launchPersistentContext('/tmp/prof-' + Date.now(), { executablePath: '/usr/bin/chromium', headless: false, args });
const page = await ctx.newPage();
await page.goto(process.env.SHARD_URL + '/?view=scout');
await page.waitForSelector('[data-testid=app-ready]');
const cdp = await ctx.newCDPSession(page);
await cdp.send('Profiler.enable');
await cdp.send('Profiler.setSamplingInterval', { interval: 1000 });
await page.click('[data-testid=scout-measure]');
await new Promise(r => setTimeout(r, 30000));
await cdp.send('Profiler.start');
await new Promise(r => setTimeout(r, 15000));
const { profile } = await cdp.send('Profiler.stop');
const byId = new Map(profile.nodes.map(n => [n.id, n]));
const self = new Map();
const counts = new Map();
for (const s of profile.samples) counts.set(s, (counts.get(s) ?? 0) + 1);
// self time by function, and inclusive time by function (walk parents)
const parent = new Map();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const incl = new Map();
for (const [id, c] of counts) {
  const n = byId.get(id); const name = n.callFrame.functionName || '(anon)';
  self.set(name, (self.get(name) ?? 0) + c);
  const seen = new Set(); let cur = id;
  while (cur !== undefined) { const nm = byId.get(cur).callFrame.functionName || '(anon)'; if (!seen.has(nm)) { incl.set(nm, (incl.get(nm) ?? 0) + c); seen.add(nm); } cur = parent.get(cur); }
}
const total = profile.samples.length;
console.log('SELF'); for (const [k, v] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 25)) console.log((v / total * 100).toFixed(1), k.slice(0, 150));
console.log('INCL'); for (const [k, v] of [...incl].sort((a, b) => b[1] - a[1]).slice(0, 45)) console.log((v / total * 100).toFixed(1), k.slice(0, 150));
await ctx.close();
