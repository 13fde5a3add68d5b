// Real-browser CORS test of api-guard. Run by the Rust test `browser_cors_through_envoy`
// (tests/envoy_cors_errors.rs, through `make test-browser`), which starts Envoy with the filter
// and passes:
//   API_GUARD_PORT   Envoy's listener on 127.0.0.1 (reached as http://api.test:<port>)
//   PAGE_PORT        port for the page server started here on 127.0.0.1; the filter's config
//                    allows the origin http://app.test:<PAGE_PORT> and no other
//   API_GUARD_TOKEN  a bearer token the filter accepts
//   CHROMIUM         optional, default /usr/bin/chromium (Debian `chromium`)
// The same page (page.html) is loaded from http://app.test:<PAGE_PORT> (allowed) and
// http://evil.test:<PAGE_PORT> (not allowed); both names resolve to 127.0.0.1 through Chromium's
// --host-resolver-rules, and every other name resolves to nothing. Exit 0 when the browser
// behaved as the spec says, 1 with a list of what went wrong otherwise.
import { chromium } from "playwright-core";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const OVERALL_TIMEOUT_MS = 50_000;

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`browser test: ${name} is not set (run it through \`make test-browser\`)`);
    process.exit(2);
  }
  return value;
}

const envoyPort = Number(required("API_GUARD_PORT"));
const pagePort = Number(required("PAGE_PORT"));
const token = required("API_GUARD_TOKEN");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const api = `http://api.test:${envoyPort}`;
const allowedOrigin = `http://app.test:${pagePort}`;
const disallowedOrigin = `http://evil.test:${pagePort}`;

const failures = [];
function check(condition, message) {
  if (!condition) failures.push(message);
}

const watchdog = setTimeout(() => {
  console.error(`browser test: FAILED: not done after ${OVERALL_TIMEOUT_MS} ms`);
  process.exit(1);
}, OVERALL_TIMEOUT_MS);

if (!fs.existsSync(chromiumPath)) {
  console.error(`browser test: ${chromiumPath} not found: install Debian's chromium (make test-browser does)`);
  process.exit(2);
}

const pageHtml = fs.readFileSync(path.join(here, "page.html"));
const server = http.createServer((req, res) => {
  if (req.url === "/") {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
    res.end(pageHtml);
  } else if (req.url === "/ping") {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("pong");
  } else {
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found");
  }
});
await new Promise((resolve, reject) => {
  server.once("error", reject);
  server.listen(pagePort, "127.0.0.1", resolve);
});

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "api-guard-chromium-"));
let context;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: chromiumPath,
    headless: true,
    timeout: 30_000,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      // The two page origins and the API on loopback; any other name fails to resolve, so the
      // browser cannot reach out.
      "--host-resolver-rules=MAP app.test 127.0.0.1,MAP evil.test 127.0.0.1,MAP api.test 127.0.0.1,MAP * ~NOTFOUND",
    ],
  });

  async function visit(origin) {
    const page = await context.newPage();
    const consoleLines = [];
    // CORS refusals are reported by the browser itself, on the console of the page.
    page.on("console", (message) => consoleLines.push(message.text()));
    const navigation = await page.goto(`${origin}/`, { timeout: 15_000 });
    check(navigation && navigation.status() === 200, `${origin}: the page did not load`);
    const results = await page.evaluate(([base, bearer]) => window.runProbes(base, bearer), [api, token]);
    await page.close();
    return { results: Object.fromEntries(results.map((r) => [r.name, r])), consoleLines };
  }

  // --- The allowed origin reads everything a same-origin page would. ---
  const allowed = await visit(allowedOrigin);
  const a = allowed.results;
  const where = `allowed origin ${allowedOrigin}`;
  for (const name of ["authorized", "unauthorized", "post_json", "upstream_error", "simple_get"]) {
    check(!a[name].blocked, `${where}: "${name}" was blocked by the browser: ${a[name].error}`);
  }
  if (!a.authorized.blocked) {
    check(a.authorized.status === 200, `${where}: authorized GET status ${a.authorized.status}, expected 200`);
    check(a.authorized.json && a.authorized.json.path === "/api/documents",
      `${where}: authorized GET body not readable or not the upstream's: ${a.authorized.text}`);
    check(/^\d+$/.test(a.authorized.rateLimitRemaining ?? ""),
      `${where}: x-ratelimit-remaining not readable on the 200 (expose-headers): ${a.authorized.rateLimitRemaining}`);
    check(!!a.authorized.requestId, `${where}: x-request-id not readable on the 200`);
  }
  if (!a.unauthorized.blocked) {
    check(a.unauthorized.status === 401, `${where}: GET without token status ${a.unauthorized.status}, expected 401`);
    check(a.unauthorized.json && a.unauthorized.json.code === "unauthorized",
      `${where}: the 401 JSON body is not readable: ${a.unauthorized.text}`);
    check(a.unauthorized.json && a.unauthorized.requestId && a.unauthorized.json.request_id === a.unauthorized.requestId,
      `${where}: the 401's request_id and x-request-id header differ or are unreadable`);
    check(/^\d+$/.test(a.unauthorized.rateLimitRemaining ?? ""),
      `${where}: x-ratelimit-remaining not readable on the 401: ${a.unauthorized.rateLimitRemaining}`);
  }
  if (!a.post_json.blocked) {
    check(a.post_json.status === 200, `${where}: preflighted JSON POST status ${a.post_json.status}, expected 200`);
  }
  if (!a.upstream_error.blocked) {
    check(a.upstream_error.status === 500, `${where}: upstream error status ${a.upstream_error.status}, expected 500`);
    check(a.upstream_error.json && a.upstream_error.json.code === "upstream_error",
      `${where}: upstream 500 is not the envelope: ${a.upstream_error.text}`);
    check(!a.upstream_error.text.includes("Traceback"), `${where}: the upstream's stack trace reached the page`);
  }
  if (!a.simple_get.blocked) {
    check(a.simple_get.status === 200, `${where}: simple GET status ${a.simple_get.status}`);
    check(a.simple_get.rateLimitLimit === "1000",
      `${where}: x-ratelimit-limit not readable on the simple GET: ${a.simple_get.rateLimitLimit}`);
  }
  check(!a.same_origin.blocked && a.same_origin.status === 200, `${where}: same-origin control failed`);
  check(!allowed.consoleLines.some((l) => l.includes("CORS policy")),
    `${where}: the browser reported a CORS refusal: ${allowed.consoleLines.join(" | ")}`);

  // --- The disallowed origin reads nothing. ---
  const evil = await visit(disallowedOrigin);
  const e = evil.results;
  const there = `disallowed origin ${disallowedOrigin}`;
  for (const name of ["authorized", "unauthorized", "post_json", "upstream_error", "simple_get"]) {
    check(e[name].blocked && /^TypeError/.test(e[name].error ?? ""),
      `${there}: "${name}" was NOT blocked by the browser (status ${e[name].status}, body ${e[name].text})`);
  }
  // The page itself works: the refusals above are CORS, not a broken network.
  check(!e.same_origin.blocked && e.same_origin.status === 200, `${there}: same-origin control failed`);
  const corsReports = evil.consoleLines.filter((l) => l.includes("blocked by CORS policy"));
  check(corsReports.length > 0,
    `${there}: no "blocked by CORS policy" report from the browser; console: ${evil.consoleLines.join(" | ")}`);

  console.log(JSON.stringify({ allowed, disallowed: evil }, null, 2));
} catch (error) {
  failures.push(`browser test crashed: ${error && error.stack ? error.stack : error}`);
} finally {
  if (context) await context.close().catch(() => {});
  server.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
  clearTimeout(watchdog);
}

if (failures.length > 0) {
  console.error(`browser test: FAILED (${failures.length}):`);
  for (const f of failures) console.error(`  - ${f}`);
  process.exit(1);
}
console.error("browser test: OK: the allowed origin read the 200, the 401 envelope and the rate-limit headers; the disallowed origin was blocked by Chromium");
