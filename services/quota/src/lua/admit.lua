-- One call of a partner's RPC class: the daily cap, then the GCRA rate,
-- checked and counted atomically for every replica at once.
--
-- KEYS[1]  rate state, a hash {tat, t}: theoretical arrival time and the
--          emission interval it was computed under, both in microseconds
--          of this server's clock
-- KEYS[2]  the class's counter for the local day
-- ARGV[1]  t: microseconds per call at the configured rate
-- ARGV[2]  tau: a full burst's worth of t
-- ARGV[3]  daily cap, 0 for none
-- ARGV[4]  1 in shadow mode (count and report, never refuse)
-- ARGV[5]  expiry of the day counter, in ms
--
-- Returns {0, count, shadowed} when admitted (count: the day's calls with
-- this one; shadowed: 1 over the cap, 2 over the rate, 3 both), {1, used}
-- over the daily cap, {2, microseconds until it would conform} over the
-- rate. Nothing is written unless the call is admitted.

-- TIME makes the script non-deterministic: Redis 5 and 6 then need effects
-- replication asked for before any write (from 7 it is the only mode and
-- this is a no-op).
if redis.replicate_commands then
  redis.replicate_commands()
end

local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local shadow = ARGV[4] == '1'
local shadowed = 0

-- Daily first: a call refused for the day must not use rate credit.
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
if cap > 0 and used >= cap then
  if not shadow then
    return {1, used}
  end
  shadowed = 1
end

-- The server's clock, not the replica's: replicas with skewed clocks agree.
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])

local state = redis.call('HMGET', KEYS[1], 'tat', 't')
local tat = tonumber(state[1]) or 0
local old_t = tonumber(state[2]) or 0
local debt = tat - now
if debt < 0 then
  debt = 0
end
-- A reload changed the rate: the debt stands for the same number of
-- outstanding calls under the new interval (a raised limit applies at once,
-- a lowered one hands out no fresh credit).
if old_t > 0 and old_t ~= t then
  debt = math.floor(debt * t / old_t)
end
local new_tat = now + debt + t
local ahead = new_tat - now
if ahead > tau then
  if not shadow then
    return {2, ahead - tau}
  end
  shadowed = shadowed + 2
  -- Let it through, but keep no more debt than a full burst: a limit
  -- switched from shadow to enforced starts fair.
  if new_tat > now + tau then
    new_tat = now + tau
  end
end

-- '%.0f': Lua would print a 16-digit number in exponent form.
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', new_tat), 't', string.format('%.0f', t))
-- Once the TAT has passed, the state is the same as no state.
redis.call('PEXPIRE', KEYS[1], math.floor((new_tat - now) / 1000) + 1000)
local count = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return {0, count, shadowed}
