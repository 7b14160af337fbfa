-- wrk script for bench/run.py: POST one chat completion per request, print the results as JSON.
--
--   wrk -t1 -c64 -d10s -s bench/wrk.lua http://127.0.0.1:PORT/v1/chat/completions -- MODE KEY MODEL
--
-- MODE is `plain` or `stream` (the body's "stream" field, as an OpenAI SDK would send it: no
-- stream_options). KEY goes in `Authorization: Bearer`. done() prints one line starting with
-- BENCH_JSON; latencies are in microseconds, measured by wrk to the end of each response.

function init(args)
  local mode = args[1] or "plain"
  local key = args[2] or "bench"
  local model = args[3] or "meta-llama/Llama-3.1-8B-Instruct"
  local stream = "false"
  if mode == "stream" then
    stream = "true"
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. key
  wrk.body = '{"model":"' .. model .. '","messages":[{"role":"system","content":'
    .. '"You are a helpful assistant."},{"role":"user","content":"Say hello to the benchmark."}],'
    .. '"max_tokens":64,"temperature":0.2,"stream":' .. stream .. '}'
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,"non2xx":%d,'
      .. '"mean_us":%.1f,"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,"p999_us":%.1f,"max_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max
  ))
end
