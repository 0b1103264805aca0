-- Load for `POST /v1/functions/{name}/invoke` with wrk (loopback only):
--   CELLA_TOKEN=… FUNCTION=brotli BODY_BYTES=1024 \
--     wrk -t2 -c32 -d10s --latency -s bench/wrk-invoke.lua http://127.0.0.1:7070
-- The body is BODY_BYTES of compressible text, the same for every request.
local token = os.getenv("CELLA_TOKEN") or error("set CELLA_TOKEN to a tenant's token")
local fn = os.getenv("FUNCTION") or "brotli"
local size = tonumber(os.getenv("BODY_BYTES") or "1024")
local text = string.rep("cella runs functions in a sandbox. ", math.ceil(size / 35)):sub(1, size)

wrk.method = "POST"
wrk.path = "/v1/functions/" .. fn .. "/invoke"
wrk.body = text
wrk.headers["Authorization"] = "Bearer " .. token
wrk.headers["Content-Type"] = "application/octet-stream"

function done(summary, latency, requests)
  io.write(string.format("non-200 responses: %d\n", summary.errors.status))
end
