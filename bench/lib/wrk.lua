-- wrk.lua: scripts/bench's wrk script: optional pipelining and random ids, and a
-- machine-readable summary line (BENCHJSON {...}) that report.py parses.
--
-- Environment:
--   BENCH_PIPELINE=N   send N requests back to back per write (TechEmpower plaintext: 16)
--   BENCH_RANDOM_MAX=M replace the literal "{id}" in the path by a random id in 1..M
--   BENCH_HOT_MAX=H    ... with probability BENCH_HOT_PCT % pick it in 1..H instead (hit-rate control)

local pipeline = tonumber(os.getenv("BENCH_PIPELINE") or "1") or 1
local random_max = tonumber(os.getenv("BENCH_RANDOM_MAX") or "0") or 0
local hot_max = tonumber(os.getenv("BENCH_HOT_MAX") or "0") or 0
local hot_pct = tonumber(os.getenv("BENCH_HOT_PCT") or "0") or 0
local path = wrk.path
local req

function init(args)
    math.randomseed(os.time() + math.floor(os.clock() * 1000000))
    if pipeline > 1 then
        local r = {}
        for i = 1, pipeline do
            r[i] = wrk.format(nil, path)
        end
        req = table.concat(r)
    else
        req = wrk.format(nil, path)
    end
end

-- A global request() makes wrk call into Lua for every request (its "dynamic" mode);
-- without one wrk sends a request buffer built once. Define it only when a scenario
-- needs it, so the load generator spends as little of the shared CPU as it can.
if random_max > 0 or pipeline > 1 then
    function request()
        if random_max > 0 then
            local id
            if hot_max > 0 and math.random(100) <= hot_pct then
                id = math.random(hot_max)
            else
                id = math.random(random_max)
            end
            return wrk.format(nil, (path:gsub("{id}", tostring(id))))
        end
        return req
    end
end

function done(summary, latency, requests)
    local e = summary.errors
    local p = {}
    for _, q in ipairs({ 50, 75, 90, 99, 99.9 }) do
        p[#p + 1] = string.format('"%s":%d', tostring(q), latency:percentile(q))
    end
    io.write(string.format(
        'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
        '"write":%d,"status":%d,"timeout":%d,"lat_mean_us":%.1f,"lat_max_us":%d,' ..
        '"lat_stdev_us":%.1f,"pct_us":{%s}}\n',
        summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
        e.status, e.timeout, latency.mean, latency.max, latency.stdev, table.concat(p, ",")))
end
