import { chromium } from 'playwright-core';
const args = ['--headless=new','--no-sandbox','--no-first-run','--disable-background-networking','--disable-component-update','--disable-sync','--disable-quic','--enable-unsafe-webgpu'];
const ctx = await chromium.launchPersistentContext('/tmp/prof-' + Date.now(), { executablePath: '/usr/bin/chromium', headless: false, args });
const page = await ctx.newPage();
page.on('console', (m) => console.log('[console]', m.type(), m.text().slice(0, 300)));
await page.goto(process.env.SHARD_URL + '/?view=scout');
await page.waitForSelector('[data-testid=app-ready]');
await page.click('[data-testid=scout-start]');
const p2 = await ctx.newPage();
await p2.goto(process.env.SHARD_URL + '/');
await p2.waitForSelector('[data-testid=app-ready]');
await new Promise(r => setTimeout(r, 8000));
await p2.fill('[data-testid=chat-input]', 'In the beginning');
await p2.click('[data-testid=chat-send]');
for (let i = 0; i < 6; i++) {
  await new Promise(r => setTimeout(r, 10000));
  console.log(await page.locator('.scout .stats').innerText().then(t => t.replace(/\n/g, ' | ')));
}
await page.screenshot({ path: '/tmp/dbg4.png', fullPage: true });
await ctx.close();
