-- What GetQuotaStatus shows, read in one call: the server's time, the rate
-- state of each class and the day's counters. Writes nothing.
--
-- KEYS[1..ARGV[1]]  rate state hashes {tat, t}
-- the other KEYS    day counters
--
-- Returns {now, tat_1, t_1, ..., tat_n, t_n, count_1, ...}, microseconds of
-- this server's clock, 0 for what does not exist.

local rates = tonumber(ARGV[1])
local now_parts = redis.call('TIME')
local out = {tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])}
for i = 1, #KEYS do
  if i <= rates then
    local state = redis.call('HMGET', KEYS[i], 'tat', 't')
    out[#out + 1] = tonumber(state[1]) or 0
    out[#out + 1] = tonumber(state[2]) or 0
  else
    out[#out + 1] = tonumber(redis.call('GET', KEYS[i]) or '0')
  end
end
return out
