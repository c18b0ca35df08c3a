#!/usr/bin/env bash
# The API as its users meet it, end to end: lint the OpenAPI spec, start the
# whole service (API and worker) on throwaway local Postgres and Redis, run
# the Postman collection with newman and the Swagger UI check in headless
# Chromium. Output (newman's JUnit report, the screenshot, the service log)
# goes to build/e2e.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/build/e2e"
mkdir -p "$out"
cd "$root/e2e"

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi

echo "== OpenAPI lint (redocly)"
npx redocly lint ../docs/openapi.json --config redocly.yaml --format=stylish

echo "== starting the service"
CGO_ENABLED=0 go build -trimpath -o "$out/segments" "$root/cmd/segments"
go build -o "$out/devstack" "$root/tools/cmd/devstack"
port=$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })')
base="http://127.0.0.1:$port"
data="${TMPDIR:-/tmp}/segments-e2e-$$"
# Authentication on, as in production: every request carries a token
# minted with the service's secret (a throwaway one per run).
export AUTH_JWT_SECRET
AUTH_JWT_SECRET=$(node -e 'console.log(require("crypto").randomBytes(32).toString("hex"))')
token=$("$out/segments" token --scope "segments:read segments:write segments:admin" --sub e2e --ttl 1h)
read_token=$("$out/segments" token --scope "segments:read" --sub e2e-reader --ttl 1h)
"$out/devstack" -dir "$data" -pg-port 0 -redis-port 0 -- \
  sh -c "'$out/segments' migrate up && HTTP_ADDR=127.0.0.1:$port SWEEP_INTERVAL=2s exec '$out/segments' all" \
  >"$out/service.log" 2>&1 &
stack=$!
cleanup() {
  kill -TERM "$stack" 2>/dev/null || true
  wait "$stack" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
BASE_URL="$base" node -e '
  const deadline = Date.now() + 90000;
  (async function wait() {
    try { if ((await fetch(process.env.BASE_URL + "/readyz")).ok) return; } catch {}
    if (Date.now() > deadline) { console.error("the service did not become ready"); process.exit(1); }
    setTimeout(wait, 250);
  })();' || { cat "$out/service.log"; exit 1; }
echo "service ready at $base"

echo "== Postman collection (newman): the contract through Prism's validating proxy"
# Prism checks every request and response of folders 2-7 and 9-14 against
# docs/openapi.json; with --errors a violation becomes an error response,
# which fails newman's assertions, and any violation in Prism's log fails
# the build too. The health checks and "8. Outside the contract" (requests
# that break the spec on purpose, to check the service's answers) go
# straight to the service.
export OUT="$out"
# Prism matches paths without the server's base path, so it validates a
# copy of the spec whose paths carry /api/v1 themselves.
node -e '
  const fs = require("fs");
  const spec = JSON.parse(fs.readFileSync("../docs/openapi.json", "utf8"));
  const base = spec.servers[0].url;
  spec.paths = Object.fromEntries(Object.entries(spec.paths).map(([p, item]) => [base + p, item]));
  spec.servers = [{ url: "/" }];
  fs.writeFileSync(process.env.OUT + "/openapi.prism.json", JSON.stringify(spec));'
pport=$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })')
# Started directly (not through npx) so that $! is Prism itself.
node_modules/.bin/prism proxy "$out/openapi.prism.json" "$base" --errors --host 127.0.0.1 --port "$pport" >"$out/prism.log" 2>&1 &
prism=$!
trap 'kill -TERM "$prism" 2>/dev/null || true; cleanup' EXIT
PRISM_URL="http://127.0.0.1:$pport" node -e '
  const deadline = Date.now() + 60000;
  (async function wait() {
    try { await fetch(process.env.PRISM_URL + "/api/v1/segments?limit=1"); return; } catch {}
    if (Date.now() > deadline) { console.error("prism did not start"); process.exit(1); }
    setTimeout(wait, 250);
  })();' || { cat "$out/prism.log"; exit 1; }
collection=(../docs/postman/segments.postman_collection.json -e ../docs/postman/local.postman_environment.json --color off
  --env-var "token=$token" --env-var "readToken=$read_token")
npx newman run "${collection[@]}" --env-var "baseUrl=$base" --folder "1. Health" \
  --reporters cli,junit --reporter-junit-export "$out/newman-health.xml"
contract=()
for f in "2. Segments" "3. A user's segments" "4. Expiry" "5. Users and percent segments" "6. History reports" "7. Deleting a segment" "9. Safe retries" "10. Changing a segment" "11. Support tools" "12. Layers" "13. Imports" "14. Audit and schedules"; do
  contract+=(--folder "$f")
done
npx newman run "${collection[@]}" --env-var "baseUrl=http://127.0.0.1:$pport" "${contract[@]}" \
  --reporters cli,junit --reporter-junit-export "$out/newman.xml"
kill -TERM "$prism" 2>/dev/null || true
violations=$(grep -cE "Violation|NO_(PATH|METHOD)_MATCHED" "$out/prism.log" || true)
echo "prism: $violations violations of docs/openapi.json in the contract run"
if [ "$violations" -ne 0 ]; then
  grep -E "Violation|NO_(PATH|METHOD)_MATCHED" "$out/prism.log" | head -40
  echo "the API and its spec disagree"
  exit 1
fi
npx newman run "${collection[@]}" --env-var "baseUrl=$base" --folder "8. Outside the contract" \
  --reporters cli,junit --reporter-junit-export "$out/newman-outside.xml"

echo "== Contract and fuzz tests generated from the spec (Portman, run by newman)"
# Portman writes a Postman collection from docs/openapi.json: for every
# operation its example request with checks of the status, Content-Type
# and schema of the documented success response, plus the variations in
# portman/portman-config.json (unknown slugs, bad ids, a tampered link and
# bodies fuzzed past the spec's limits) checked against the documented
# error response. Portman resolves the config's script files and writes
# its scratch files in the current directory, so it runs in a copy.
rm -rf "$out/portman" && cp -r portman "$out/portman"
(cd "$out/portman" && "$root/e2e/node_modules/.bin/portman" -l "$root/docs/openapi.json" -c portman-config.json \
  -b "$base/api/v1" -o collection.json >portman.log 2>&1) || { cat "$out/portman/portman.log"; exit 1; }
# Portman reports an invalid config on stdout and still exits 0.
[ -s "$out/portman/collection.json" ] || { cat "$out/portman/portman.log"; exit 1; }
npx newman run "$out/portman/collection.json" --color off --env-var "token=$token" \
  --reporters cli,junit --reporter-junit-export "$out/newman-portman.xml"

echo "== Swagger UI in headless Chromium (playwright-core)"
BASE_URL="$base" E2E_OUT="$out" TOKEN="$token" node swagger-ui.mjs
