-- wrk script of the soak (bench/soak/soak.py): rotates through a request mix prepared by the
-- soak as raw HTTP/1.1 requests, and counts the answers by status and error-envelope `code`.
--
--   SOAK_MIX           file of raw requests separated by NUL bytes (written by soak.py)
--   SOAK_WRK_OUT       where done() writes the counts (one "status code count" line each)
--   SOAK_MAX_REQUESTS  per-thread bound on requests (a safeguard next to wrk's -d)

local threads = {}

function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end

function init(args)
   local file = assert(io.open(os.getenv("SOAK_MIX"), "rb"))
   local data = file:read("*a")
   file:close()
   requests = {}
   for raw in data:gmatch("([^%z]+)") do
      requests[#requests + 1] = raw
   end
   assert(#requests > 0, "empty request mix")
   max_requests = tonumber(os.getenv("SOAK_MAX_REQUESTS") or "0") or 0
   -- Threads start at different points of the rotation.
   next_index = (id * 7919) % #requests
   sent = 0
   counts = {}
end

function request()
   sent = sent + 1
   if max_requests > 0 and sent > max_requests then
      wrk.thread:stop()
   end
   next_index = next_index % #requests + 1
   return requests[next_index]
end

function response(status, headers, body)
   local code = status >= 400 and body and body:match('"code":"([%w_]+)"') or "-"
   local key = status .. " " .. code
   counts[key] = (counts[key] or 0) + 1
end

function done(summary, latency, requests)
   local out = assert(io.open(os.getenv("SOAK_WRK_OUT"), "w"))
   local total = {}
   for _, thread in ipairs(threads) do
      local c = thread:get("counts")
      for key, n in pairs(c or {}) do
         total[key] = (total[key] or 0) + n
      end
   end
   for key, n in pairs(total) do
      out:write(string.format("count %s %d\n", key, n))
   end
   local e = summary.errors
   out:write(string.format("requests %d\n", summary.requests))
   out:write(string.format("duration_us %d\n", summary.duration))
   out:write(string.format("errors %d %d %d %d %d\n", e.connect, e.read, e.write, e.status, e.timeout))
   for _, p in ipairs({ 50, 90, 99, 99.9 }) do
      out:write(string.format("latency_us %s %d\n", tostring(p), latency:percentile(p)))
   end
   out:write(string.format("latency_max_us %d\n", latency.max))
   out:close()
end
