-- One referral hop from -> to under an agreement: the flow's
-- referrals_per_day and the agreement's max_daily_imbalance, both checked
-- before either is counted, atomically for every replica at once.
--
-- KEYS[1]  hops from -> to in the local day
-- KEYS[2]  hops to -> from in the local day
-- ARGV[1]  referrals_per_day, 0 for none
-- ARGV[2]  max_daily_imbalance, -1 for none
-- ARGV[3]  1 in shadow mode (count and report, never refuse)
-- ARGV[4]  expiry of the day counters, in ms
--
-- Returns {admitted, over, out, in}: admitted 1 or 0; over 1 for
-- referrals_per_day, 2 for the imbalance, 3 both (in shadow mode the hop is
-- admitted anyway); out and in the counts before this hop.

local cap = tonumber(ARGV[1])
local max_imbalance = tonumber(ARGV[2])
local shadow = ARGV[3] == '1'

local out = tonumber(redis.call('GET', KEYS[1]) or '0')
local inn = tonumber(redis.call('GET', KEYS[2]) or '0')
local over = 0
if cap > 0 and out >= cap then
  over = over + 1
end
if max_imbalance >= 0 and out + 1 > inn + max_imbalance then
  over = over + 2
end
if over > 0 and not shadow then
  return {0, over, out, inn}
end
redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1, over, out, inn}
