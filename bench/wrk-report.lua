-- bench/run.sh's wrk report: one JSON line with req/s, latency percentiles (seconds) and
-- non-2xx answers and socket errors, so the table reads wrk and oha runs alike.
function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    '{"requests": %d, "seconds": %.6f, "requestsPerSec": %.3f, "p50": %.9f, "p99": %.9f, "p999": %.9f, "non2xx": %d, "errors": %d}\n',
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1e6, latency:percentile(99) / 1e6, latency:percentile(99.9) / 1e6,
    summary.errors.status, errors - summary.errors.status))
end
