-- The job state machine: one change of one job record, atomic whatever other replicas do.
-- shared/store/records.py builds the call; shared/store/transition.py loads this file and puts
-- RANK, TERMINAL_RANK and EVENTS_MAX_LENGTH in front of it, from shared/schemas.py (STATE_RANKS),
-- so the order of the states lives in one place: they are not defined here.
--
-- KEYS: record, history, final image, events, light image, arrivals counter, webhook delivery, webhook schedule,
--       the light tier's waiting line, the heavy tier's, the batch arrivals counter, the batch backlog by
--       deadline, the light tier's batch waiting line, the heavy tier's
-- ARGV: 1 states (comma-separated, the last is the new state), 2 detail json, 3 record ttl, 4 done channel,
--       5 mode: 0 change a record, 1 create one, 2 create one or advance the one there (see below),
--       6 job_id, 7 image bytes or "", 8 image mode ("", final, light, promote), 9 image ttl,
--       10 owner ("" for none), 11 owner key prefix, 12 the fields to set, a JSON object of strings (one
--       argument, not two per field: redis-py packs every argument in Python, the services' biggest
--       Redis cost per job before, measured by make bench-pipeline --profile), 13 the states the record
--       may be in (comma-separated; "" for any): a cancel decided here, not read then written,
--       14 mode 2: the fields (comma-separated) the record must hold exactly as ARGV 12 writes them,
--       15 this call's token ("" for none): random, one per call, the same when the store sends it again.
-- Returns {code, state before}: 1 applied, 0 refused (the record exists, for a create; it is terminal, for a
-- transition), -1 no record, 2 stale (the record is already at a later step), 3 busy (another live worker
-- holds the claim), 4 no light image to promote, 5 guarded (the record is not in a state of ARGV 13).
-- A `queued` counts as an arrival (the controller's demand) only when the job does not end in the same
-- change: a job created already expired is no demand any plan can serve.
-- The service classes (shared/policies/classes.py): a job whose `priority` (ARGV 12, else the record's) is
-- `batch` is no interactive demand: its `queued` counts in the batch arrivals counter (KEYS 11), not in KEYS 6,
-- and it joins the batch backlog (KEYS 12: a sorted set of job ids by deadline, the record's `deadline`,
-- else now) until its terminal state; members whose deadline is more than the record TTL past are trimmed
-- whenever one joins (a job lost before its end leaves no member for longer than its record). Its waiting
-- lines are the batch ones (KEYS 13 light, 14 heavy): a batch job never counts in an interactive job's place.
-- An interactive job pays one more field in the HMGET it makes anyway: no extra command, no extra trip.
-- A record that becomes terminal holding a `webhook_url` gets its delivery in the same change: the delivery's
-- hash (KEYS 7: url, tenant, event type, time, state pending, 0 attempts; it expires with the record) and its
-- due time, now, in the senders' schedule (KEYS 8, a sorted set of job ids; services/webhooks.py). A terminal
-- state is reached once, so a job has one delivery, and no crash between the two can lose it.
-- The tiers' waiting lines (KEYS 9 light, 10 heavy: sorted sets of job ids by when they joined) give a job's
-- place in its queue in O(log n) (GET /v1/jobs/{id}): a job joins its tier's line when it is routed there or
-- escalated (heavy), and leaves it at its next state. Members older than the record TTL are trimmed whenever
-- one joins (a job lost while waiting leaves no member for longer than its record).
--
-- Mode 2 is the router's one round trip for a job that the api may have recorded `queued` first: no record,
-- create it (the states of ARGV 1 on the way too); a record not terminal, in a state of ARGV 13, whose
-- fields of ARGV 14 hold what this change writes (the same body: the caller's own rule, shared/policies/
-- steps.py recorded_job, is implied by that equality), advance it to the last state of ARGV 1 alone (the
-- earlier ones were recorded when it was made). Two more answers, each {code, state before, the record's
-- hash}, nothing written: 6 the record is in that state already (a redelivery: the caller repeats the
-- recorded step), 7 its fields differ (the caller judges, from the hash, whether it is the same job). An
-- advance adds only the fields the record lacks (the step's decision): the body's are the record's already.
--
-- A call sent again is answered as the first was. The store repeats a call whose reply it did not get (Redis
-- restarted, a connection cut: Store._call), and the first may have been applied: without this, its repeat
-- was refused (the router's `routed` became a duplicate, acked, never published: a job lost in the compose
-- fault run). The record keeps its last change's token and the state it moved from (field `change`); a call
-- that brings that token gets {1, that state} again, nothing written. Only the last change is kept: a repeat
-- follows its first within the store's retry, and what another change did meanwhile (a cancel) stands.
--
-- States only move forward (RANK). A change to a lower rank is refused as stale, so a late redelivery cannot
-- reset a later state; the same rank is refused too (a verdict or a light image is stored once), except a
-- re-route and a `generating` claim: a claim passes to a new owner only when the old owner's liveness key has
-- expired (it died before storing). The one step back: a claim's own owner may hand it back (`routed`, or
-- `escalated` on heavy) before it starts the job (see hand_back); the event names that owner, the record
-- forgets it. The transition's time is Redis's clock, so a history is in order whichever process wrote it.
local terminal = {}
for s, r in pairs(RANK) do if r == TERMINAL_RANK then terminal[s] = true end end
local function rank(state, tier)
  if state == 'generating' then state = 'generating:' .. (tier == 'heavy' and 'heavy' or 'light') end
  return RANK[state] or TERMINAL_RANK
end
local mode = ARGV[5]
local record = redis.call('HMGET', KEYS[1], 'state', 'tier', 'owner', 'priority', 'change')
local current, current_tier, current_owner = record[1], record[2], record[3]
if ARGV[15] ~= '' and record[5] then
  local token, before = string.match(record[5], '^(%S+) ?(.*)$')
  if token == ARGV[15] then return {1, before ~= '' and before or false} end
end
local extra = cjson.decode(ARGV[12])
local batch = (extra['priority'] or record[4]) == 'batch'
local lines = batch and {KEYS[13], KEYS[14]} or {KEYS[9], KEYS[10]}
local states = {}
for s in string.gmatch(ARGV[1], '[^,]+') do states[#states + 1] = s end
local state = states[#states]
local tier = extra['tier'] or current_tier
local handback, advancing = false, mode == '2' and current
local function differs()
  for name in string.gmatch(ARGV[14], '[^,]+') do
    if (redis.call('HGET', KEYS[1], name) or nil) ~= extra[name] then return true end
  end
  return false
end
if mode == '1' or (mode == '2' and not current) then
  if current then return {0, current} end
elseif not current then
  return {-1, false}
elseif terminal[current] then
  return {0, current}
elseif ARGV[13] ~= '' and not string.find(',' .. ARGV[13] .. ',', ',' .. current .. ',', 1, true) then
  return {5, current}
else
  if mode == '2' then
    if differs() then return {7, current, redis.call('HGETALL', KEYS[1])} end
    if current == state then return {6, current, redis.call('HGETALL', KEYS[1])} end
    states = {state}
  end
  local new_rank, old_rank = rank(state, tier), rank(current, current_tier)
  if new_rank < old_rank then
    handback = current == 'generating' and ARGV[10] ~= '' and current_owner == ARGV[10] and
               (state == 'routed' or state == 'escalated')
    if not handback then return {2, current} end
  end
  if new_rank == old_rank then
    if state == 'generating' then
      if current_owner and current_owner ~= ARGV[10] and
         redis.call('EXISTS', ARGV[11] .. current_owner) == 1 then
        return {3, current}
      end
    elseif state ~= 'routed' then
      return {2, current}
    end
  end
end
if ARGV[8] == 'promote' and redis.call('EXISTS', KEYS[5]) == 0 then return {4, current} end
local now = redis.call('TIME')
local at = now[1] .. '.' .. string.format('%06d', tonumber(now[2]))
local ttl, image_ttl = tonumber(ARGV[3]), tonumber(ARGV[9])
for _, s in ipairs(states) do
  local transition = '{"state":"' .. s .. '","at":' .. at .. ',"detail":' .. ARGV[2] .. '}'
  redis.call('RPUSH', KEYS[2], transition)
  local event = {'job_id', ARGV[6], 'state', s, 'transition', transition, 'tier', tier or ''}
  if s == state then
    if ARGV[10] ~= '' then event[#event + 1] = 'owner'; event[#event + 1] = ARGV[10] end
    if ARGV[8] ~= '' then event[#event + 1] = 'image'; event[#event + 1] = ARGV[8] end
  end
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', EVENTS_MAX_LENGTH, '*', unpack(event))
  if s == 'queued' and not terminal[state] then
    local counter = batch and KEYS[11] or KEYS[6]
    redis.call('INCR', counter); redis.call('EXPIRE', counter, ttl)
    if batch then
      local due = tonumber(extra['deadline'] or redis.call('HGET', KEYS[1], 'deadline')) or tonumber(at)
      redis.call('ZREMRANGEBYSCORE', KEYS[12], '-inf', '(' .. (tonumber(at) - ttl))
      redis.call('ZADD', KEYS[12], due, ARGV[6])
      redis.call('EXPIRE', KEYS[12], ttl)
    end
  end
end
local fields = {'state', state, 'change', ARGV[15] .. ' ' .. (current or '')}
if handback then
  redis.call('HDEL', KEYS[1], 'owner')
elseif ARGV[10] ~= '' then
  fields[#fields + 1] = 'owner'; fields[#fields + 1] = ARGV[10]
end
for name, value in pairs(extra) do
  if advancing then redis.call('HSETNX', KEYS[1], name, value)
  else fields[#fields + 1] = name; fields[#fields + 1] = value end
end
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
if current == 'routed' or current == 'escalated' then
  redis.call('ZREM', lines[1], ARGV[6])
  redis.call('ZREM', lines[2], ARGV[6])
end
if state == 'routed' or state == 'escalated' then
  local line = (state == 'escalated' or tier == 'heavy') and lines[2] or lines[1]
  redis.call('ZREMRANGEBYSCORE', line, '-inf', '(' .. (tonumber(at) - ttl))
  redis.call('ZADD', line, at, ARGV[6])
  redis.call('EXPIRE', line, ttl)
end
if terminal[state] then
  redis.call('DEL', KEYS[5])
  if batch then redis.call('ZREM', KEYS[12], ARGV[6]) end
  redis.call('PUBLISH', ARGV[4], state)
  local hook = redis.call('HMGET', KEYS[1], 'webhook_url', 'tenant')
  if hook[1] then
    redis.call('HSET', KEYS[7], 'url', hook[1], 'tenant', hook[2] or '', 'type', 'job.' .. state, 'at', at,
               'state', 'pending', 'attempts', 0, 'next_at', at)
    redis.call('EXPIRE', KEYS[7], ttl)
    redis.call('ZADD', KEYS[8], at, ARGV[6])
  end
end
return {1, current}
