// Opens Swagger UI in headless Chromium, checks that it lists every
// operation of the API contract, runs "Try it out" on
// GET /users/{user_id}/segments and checks the response it shows.
// A screenshot goes to $E2E_OUT (build/e2e by default).
//
//   BASE_URL=http://127.0.0.1:8080 [TOKEN=<bearer token>] node swagger-ui.mjs
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const base = process.env.BASE_URL ?? 'http://127.0.0.1:8080';
const out = process.env.E2E_OUT ?? new URL('../build/e2e', import.meta.url).pathname;
const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';

// The contract (design.md's API table plus the history endpoint): a UI
// that lacks one of these, or shows another, fails the test.
const contract = [
  'DELETE /layers/{slug}',
  'DELETE /segments/{slug}',
  'GET /audit',
  'GET /layers',
  'GET /imports/{id}',
  'GET /layers/{slug}',
  'GET /reports/history/{token}',
  'GET /reports/members/{token}',
  'GET /segments',
  'GET /segments/{slug}',
  'GET /segments/{slug}/audit',
  'GET /segments/{slug}/members',
  'GET /users/{user_id}/history',
  'GET /users/{user_id}/segments',
  'GET /users/{user_id}/segments/{slug}',
  'PATCH /segments/{slug}',
  'POST /layers',
  'POST /reports/history',
  'POST /reports/members',
  'POST /segments',
  'POST /segments/{slug}/imports',
  'POST /users',
  'POST /users/{user_id}/segments',
];

function fail(message) {
  console.error(`swagger-ui: FAIL: ${message}`);
  process.exitCode = 1;
}

mkdirSync(out, { recursive: true });
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1600 } });
  const consoleErrors = [];
  page.on('console', (m) => m.type() === 'error' && consoleErrors.push(m.text()));

  await page.goto(`${base}/swagger/`, { waitUntil: 'networkidle' });
  if (!page.url().endsWith('/swagger/index.html')) fail(`/swagger/ landed on ${page.url()}`);
  await page.waitForSelector('.opblock', { timeout: 15000 });

  const title = await page.textContent('.info .title');
  console.log(`swagger-ui: page title "${title.trim()}"`);
  const listed = (await page.$$eval('.opblock', (blocks) => blocks.map((b) =>
    `${b.querySelector('.opblock-summary-method').textContent.trim()} ${b.querySelector('.opblock-summary-path').getAttribute('data-path')}`)))
    .sort();
  console.log(`swagger-ui: ${listed.length} operations listed:\n  ${listed.join('\n  ')}`);
  const missing = contract.filter((op) => !listed.includes(op));
  const extra = listed.filter((op) => !contract.includes(op));
  if (missing.length) fail(`operations missing from the UI: ${missing.join(', ')}`);
  if (extra.length) fail(`operations in the UI but not in the contract: ${extra.join(', ')}`);
  // The audit log's operations under their tag (Swagger UI ids an
  // operation by its tag and operationId).
  for (const id of ['listAudit', 'listSegmentAudit']) {
    if (!(await page.locator(`#operations-audit-${id}`).count())) fail(`${id} is not listed under the tag audit`);
  }

  // Authorize: with authentication on (TOKEN set), paste the bearer token
  // into the dialog the security scheme gives, as a user would.
  const token = process.env.TOKEN ?? '';
  if (token) {
    await page.locator('.auth-wrapper .authorize').click();
    const dialog = page.locator('.dialog-ux .modal-ux');
    await dialog.locator('input[type="text"], input[type="password"]').first().fill(token);
    await dialog.locator('button.authorize').click();
    await dialog.locator('button.btn-done, button.close-modal').first().click();
    console.log('swagger-ui: authorized with a bearer token');
  }

  // Try it out: GET /users/{user_id}/segments.
  const userID = String(900000000 + Math.floor(Math.random() * 1e8));
  const op = page.locator('#operations-users-getUserSegments');
  await op.locator('.opblock-summary').click();
  await op.locator('.try-out__btn').click();
  await op.locator('input[placeholder="user_id"]').fill(userID);
  await op.locator('.execute').click();
  const status = op.locator('.live-responses-table .response .response-col_status');
  await status.waitFor({ timeout: 15000 });
  const code = (await status.textContent()).trim();
  const body = await op.locator('.live-responses-table .response .microlight').first().textContent();
  const requestURL = await op.locator('.request-url pre').textContent();
  console.log(`swagger-ui: Try it out called ${requestURL.trim()} and shows ${code}: ${body.replace(/\s+/g, ' ')}`);
  if (code !== '200') fail(`Try it out shows status ${code}`);
  let shown;
  try {
    shown = JSON.parse(body);
  } catch (e) {
    fail(`the response shown is not JSON: ${body}`);
  }
  if (shown && (shown.user_id !== Number(userID) || !Array.isArray(shown.segments))) {
    fail(`the response shown is not user ${userID}'s segments: ${body}`);
  }
  if (!requestURL.includes(`/api/v1/users/${userID}/segments`)) fail(`Try it out called ${requestURL}`);
  if (token) {
    const curl = await op.locator('.curl-command').textContent();
    if (!curl.includes(`Authorization: Bearer ${token}`)) fail(`Try it out did not send the token: ${curl}`);
  }

  // The documented errors are problem+json, each with an example of its own.
  const documented400 = op.locator('.responses-wrapper .responses-table tr.response[data-code="400"]');
  const row = (await documented400.textContent()).replace(/\s+/g, ' ');
  console.log(`swagger-ui: documented 400: ${row.slice(0, 200)}`);
  if (!row.includes('application/problem+json')) fail(`the documented 400 is not problem+json: ${row}`);
  if (!/"status": 400/.test(row)) fail(`the documented 400 has no example of its own: ${row}`);

  const shot = join(out, 'swagger-ui.png');
  await op.scrollIntoViewIfNeeded();
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`swagger-ui: screenshot ${shot}`);
  if (consoleErrors.length) fail(`the page logged errors: ${consoleErrors.join('; ')}`);
} finally {
  await browser.close();
}
if (!process.exitCode) console.log('swagger-ui: ok');
