-- bench/run.sh's step (9): wrk sends POST /api/v1/token with texas's JSON body, the same bytes to
-- the broker and to texas, and reports as bench/wrk-report.lua does. run.sh passes the body in
-- BENCH_TOKEN_BODY and the report script's path in BENCH_WRK_REPORT.
local body = os.getenv("BENCH_TOKEN_BODY")
local report = os.getenv("BENCH_WRK_REPORT")
if not body or body == "" or not report or report == "" then
  -- error() would only be reported: wrk would go on sending GETs.
  io.stderr:write("bench/wrk-post-token.lua needs BENCH_TOKEN_BODY and BENCH_WRK_REPORT (bench/run.sh sets both)\n")
  os.exit(2)
end
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
dofile(report)
