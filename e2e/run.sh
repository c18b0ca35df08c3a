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
go build -o "$out/devstack" "$root/cmd/devstack"
port=$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })')
base="http://127.0.0.1:$port"
data="${TMPDIR:-/tmp}/segments-e2e-$$"
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

echo "== Postman collection (newman)"
npx newman run ../docs/postman/segments.postman_collection.json \
  -e ../docs/postman/local.postman_environment.json --env-var "baseUrl=$base" \
  --reporters cli,junit --reporter-junit-export "$out/newman.xml" --color off

echo "== Swagger UI in headless Chromium (playwright-core)"
BASE_URL="$base" E2E_OUT="$out" node swagger-ui.mjs
