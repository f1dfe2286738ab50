-- One event per request; a distinct event id per request (wrk's counter), so
-- the pipeline counts every one.
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
local n = 0
local run = os.time()
request = function()
    n = n + 1
    return wrk.format(nil, nil, nil, string.format('{"video_id":"wrk-single-%d","event_id":"w%d-%d-%d"}', n % 1000, run, math.random(1, 1e9), n))
end
