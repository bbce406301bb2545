-- Append log lines to an app's stream in one call (logpipe.writer.AppLogWriter._send).
-- KEYS[1] the stream; ARGV[1] its cap (XADD MAXLEN ~), then src, meta, line of each entry.
local cap = ARGV[1]
for i = 2, #ARGV, 3 do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', cap, '*',
             'src', ARGV[i], 'meta', ARGV[i + 1], 'line', ARGV[i + 2])
end
return #ARGV
