-- BATCH events per request (default 1,000) as NDJSON, distinct event ids.
wrk.method = "POST"
wrk.headers["content-type"] = "application/x-ndjson"
local batch = tonumber(os.getenv("BATCH") or "1000")
local n = 0
local run = os.time()
local salt = math.random(1, 1e9)
request = function()
    local lines = {}
    for i = 1, batch do
        n = n + 1
        lines[i] = string.format('{"video_id":"wrk-batch-%d","event_id":"w%d-%d-%d"}', n % 1000, run, salt, n)
    end
    return wrk.format(nil, nil, nil, table.concat(lines, "\n"))
end
