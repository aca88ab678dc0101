"""The store's smaller Lua scripts: a tenant's slots, a rate's compare-and-set and a lease each run as
one script, so each is atomic whatever other replicas do. The job state machine has a file of its
own (transition.lua, loaded by transition.py)."""

from __future__ import annotations

# A request's admission in one step: its GCRA times (the rate, the image bytes) compare-and-set, the tenant's
# quota of units in flight and its fair share of a saturated fleet, all or nothing.
# KEYS: 1 the tenant's slots (zset job -> when the slot lapses), 2 their units (hash job -> units),
#       3 every tenant's units in flight (hash tenant -> units: running totals, never summed per request),
#       4 when each tenant's last slot lapses (zset), then one key per GCRA time.
# ARGV: 1 now, 2 tenant, 3 its max_active units, 4 the fleet's capacity in units (0: no fair share), 5 its
#       weight, 6 the prefix of tenants' limits hashes (their `weight`), 7 the number k of GCRA times, then k
#       (expected value or "", new value, TTL in ms) triples, then (job id, lapses at, units) triples.
# Returns "" when admitted, else why not: "cas" (a GCRA time moved since it was read: read again), "quota"
# or "fair". The fair share binds only while another tenant holds work, and only on the tenant that would
# then hold the most for its weight (max-min: one below its share, or below another's holding, gets in).
# A tenant that holds nothing always gets one job in (a share smaller than one image would shut it out),
# not a request of many; alone, a tenant is bounded by its quota only. Lapsed slots are dropped first (a
# lost job holds its units until then); a job that holds a slot already keeps it (a retried request). The
# slot keys live until the latest slot lapses: a slot with an earlier lapse never shortens them (a past
# deadline cannot expire the others).
_ADMIT = """
local now, tenant = tonumber(ARGV[1]), ARGV[2]
local gcras = tonumber(ARGV[7])
for g = 1, gcras do
  if (redis.call('GET', KEYS[4 + g]) or '') ~= ARGV[5 + 3 * g] then return 'cas' end
end
local mine = tonumber(redis.call('HGET', KEYS[3], tenant) or '0')
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #lapsed > 0 then
  for _, units in ipairs(redis.call('HMGET', KEYS[2], unpack(lapsed))) do mine = mine - (tonumber(units) or 0) end
  redis.call('ZREM', KEYS[1], unpack(lapsed))
  redis.call('HDEL', KEYS[2], unpack(lapsed))
end
if mine < 1e-9 then mine = 0 end
local cost, new, first = 0, {}, 8 + 3 * gcras
for i = first, #ARGV, 3 do
  if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then cost = cost + tonumber(ARGV[i + 2]); new[#new + 1] = i end
end
if cost == 0 then return '' end
if mine + cost > tonumber(ARGV[3]) + 1e-9 then return 'quota' end
local gone = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
if #gone > 0 then redis.call('ZREM', KEYS[4], unpack(gone)); redis.call('HDEL', KEYS[3], unpack(gone)) end
local capacity, weight = tonumber(ARGV[4]), tonumber(ARGV[5])
if capacity > 0 and not (mine == 0 and #new == 1) then
  local total, weights, top, held = mine, weight, 0, redis.call('HGETALL', KEYS[3])
  for i = 1, #held, 2 do
    local units = tonumber(held[i + 1])
    if held[i] ~= tenant and units > 0 then
      local other = tonumber(redis.call('HGET', ARGV[6] .. held[i], 'weight') or '1')
      total, weights, top = total + units, weights + other, math.max(top, units / other)
    end
  end
  if weights > weight and total + cost > capacity and mine + cost > capacity * weight / weights + 1e-9
     and (mine + cost) / weight > top + 1e-9 then
    return 'fair'
  end
end
for g = 1, gcras do redis.call('SET', KEYS[4 + g], ARGV[6 + 3 * g], 'PX', ARGV[7 + 3 * g]) end
for _, i in ipairs(new) do
  redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
end
local last = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
local ttl_ms = math.max(math.ceil((last - now) * 1000), 1) + 1000
redis.call('PEXPIRE', KEYS[1], ttl_ms)
redis.call('PEXPIRE', KEYS[2], ttl_ms)
redis.call('HSET', KEYS[3], tenant, mine + cost)
redis.call('ZADD', KEYS[4], last, tenant)
return ''
"""

# The first four keys of _ADMIT; ARGV: the tenant, then the job ids whose slots are given back.
_RELEASE_SLOTS = """
local held = {}
for _, job in ipairs({unpack(ARGV, 2)}) do
  if redis.call('ZSCORE', KEYS[1], job) then held[#held + 1] = job end
end
if #held == 0 then return 0 end
local mine = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
for _, units in ipairs(redis.call('HMGET', KEYS[2], unpack(held))) do mine = mine - (tonumber(units) or 0) end
redis.call('ZREM', KEYS[1], unpack(held))
redis.call('HDEL', KEYS[2], unpack(held))
if mine > 1e-9 then redis.call('HSET', KEYS[3], ARGV[1], mine) else redis.call('HDEL', KEYS[3], ARGV[1]) end
return #held
"""

_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
