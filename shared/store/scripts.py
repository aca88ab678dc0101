"""The store's Lua scripts: each state change of a job, a tenant's slots, a rate's compare-and-set
and a lease run as one script, so each is atomic whatever other replicas do."""

from __future__ import annotations

from shared.schemas import TERMINAL_STATES

EVENTS_MAX_LENGTH = 200_000

_TERMINAL = ",".join(sorted(s.value for s in TERMINAL_STATES))

# KEYS: record, history, final image, events, light image, arrivals counter
# ARGV: 1 states (comma-separated, the last is the new state), 2 detail json, 3 record ttl, 4 done channel,
#       5 create (0/1), 6 job_id, 7 image bytes or "", 8 image mode ("", final, light, promote), 9 image ttl,
#       10 owner ("" for none), 11 owner key prefix, 12 the fields to set, a JSON object of strings (one
#       argument, not two per field: redis-py packs every argument in Python, the services' biggest
#       Redis cost per job before, measured by make bench-pipeline --profile), 13 the states the record
#       may be in (comma-separated; "" for any): a cancel decided here, not read then written.
# Returns {code, state before}: 1 applied, 0 refused (the record exists, for a create; it is terminal, for a
# transition), -1 no record, 2 stale (the record is already at a later step), 3 busy (another live worker
# holds the claim), 4 no light image to promote, 5 guarded (the record is not in a state of ARGV 13).
# A `queued` counts as an arrival (the controller's demand) only when the job does not end in the same
# change: a job created already expired is no demand any plan can serve.
#
# States only move forward. A job's steps, in order: queued 0, routed 1, generating on light 2, judging 3,
# escalated 4, generating on heavy 5, terminal 9 (the rank of `generating` depends on the tier). A change to a
# lower rank is refused as stale, so a late redelivery cannot reset a later state; the same rank is refused
# too (a verdict or a light image is stored once), except a re-route and a `generating` claim: a claim passes
# to a new owner only when the old owner's liveness key has expired (it died before storing). The one step
# back: a claim's own owner may hand it back (`routed`, or `escalated` on heavy) before it starts the job
# (see hand_back); the event names that owner, the record forgets it.
# The transition's time is Redis's clock, so a history is in order whichever process wrote it.
_TRANSITION = f"""
local terminal = {{}}
for s in string.gmatch('{_TERMINAL}', '[^,]+') do terminal[s] = true end
local function rank(state, tier)
  if state == 'queued' then return 0 end
  if state == 'routed' then return 1 end
  if state == 'generating' then if tier == 'heavy' then return 5 end return 2 end
  if state == 'judging' then return 3 end
  if state == 'escalated' then return 4 end
  return 9
end
local handback = false
local record = redis.call('HMGET', KEYS[1], 'state', 'tier', 'owner')
local current, current_tier, current_owner = record[1], record[2], record[3]
local extra = cjson.decode(ARGV[12])
local state
for s in string.gmatch(ARGV[1], '[^,]+') do state = s end
local tier = extra['tier'] or current_tier
if ARGV[5] == '1' then
  if current then return {{0, current}} end
elseif not current then
  return {{-1, false}}
elseif terminal[current] then
  return {{0, current}}
elseif ARGV[13] ~= '' and not string.find(',' .. ARGV[13] .. ',', ',' .. current .. ',', 1, true) then
  return {{5, current}}
else
  local new_rank, old_rank = rank(state, tier), rank(current, current_tier)
  if new_rank < old_rank then
    handback = current == 'generating' and ARGV[10] ~= '' and current_owner == ARGV[10] and
               (state == 'routed' or state == 'escalated')
    if not handback then return {{2, current}} end
  end
  if new_rank == old_rank then
    if state == 'generating' then
      if current_owner and current_owner ~= ARGV[10] and
         redis.call('EXISTS', ARGV[11] .. current_owner) == 1 then
        return {{3, current}}
      end
    elseif state ~= 'routed' then
      return {{2, current}}
    end
  end
end
if ARGV[8] == 'promote' and redis.call('EXISTS', KEYS[5]) == 0 then return {{4, current}} end
local now = redis.call('TIME')
local at = now[1] .. '.' .. string.format('%06d', tonumber(now[2]))
local ttl, image_ttl = tonumber(ARGV[3]), tonumber(ARGV[9])
for s in string.gmatch(ARGV[1], '[^,]+') do
  local transition = '{{"state":"' .. s .. '","at":' .. at .. ',"detail":' .. ARGV[2] .. '}}'
  redis.call('RPUSH', KEYS[2], transition)
  local event = {{'job_id', ARGV[6], 'state', s, 'transition', transition, 'tier', tier or ''}}
  if s == state then
    if ARGV[10] ~= '' then event[#event + 1] = 'owner'; event[#event + 1] = ARGV[10] end
    if ARGV[8] ~= '' then event[#event + 1] = 'image'; event[#event + 1] = ARGV[8] end
  end
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', {EVENTS_MAX_LENGTH}, '*', unpack(event))
  if s == 'queued' and not terminal[state] then redis.call('INCR', KEYS[6]); redis.call('EXPIRE', KEYS[6], ttl) end
end
local fields = {{'state', state}}
if handback then
  redis.call('HDEL', KEYS[1], 'owner')
elseif ARGV[10] ~= '' then
  fields[#fields + 1] = 'owner'; fields[#fields + 1] = ARGV[10]
end
for name, value in pairs(extra) do fields[#fields + 1] = name; fields[#fields + 1] = value end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('EXPIRE', KEYS[4], ttl)
if ARGV[8] == 'final' then
  redis.call('SET', KEYS[3], ARGV[7], 'EX', image_ttl)
elseif ARGV[8] == 'light' then
  redis.call('SET', KEYS[5], ARGV[7], 'EX', image_ttl)
elseif ARGV[8] == 'promote' then
  redis.call('RENAME', KEYS[5], KEYS[3])
  redis.call('EXPIRE', KEYS[3], image_ttl)
end
if terminal[state] then
  redis.call('DEL', KEYS[5])
  redis.call('PUBLISH', ARGV[4], state)
end
return {{1, current}}
"""

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
