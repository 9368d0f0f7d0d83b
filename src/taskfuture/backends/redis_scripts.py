"""Lua scripts of the Redis backend; each runs atomically on the server.

Every script takes the key prefix (``{table}``) as ``ARGV[1]`` and builds the
task and stream keys it reaches from it. Keys that the client knows in advance
are passed in ``KEYS``. The stream and task keys found while a script runs
cannot be, but they share the prefix's hash tag, so on Redis Cluster they live
in the same slot as the declared keys.

Values are stored and passed as text. Python writes times with ``repr(float)``
and the scripts only compare them with ``tonumber``, never write numbers back,
so no precision is lost to Lua's number formatting.
"""

from __future__ import annotations

from taskfuture.models import COUNTER_LIMIT

#: Consumer group that every worker reads each queue stream through.
GROUP = "taskfuture"

_PRELUDE = """
local prefix = ARGV[1]
local group = '__GROUP__'

local function task_key(id)
  return prefix .. ':task:' .. id
end

local function queue_key(queue)
  return prefix .. ':queue:' .. queue
end

-- Create the queue's stream and consumer group on first use. The group starts
-- at id 0, so entries added before it existed are still delivered.
local function ensure_queue(queue)
  local stream = queue_key(queue)
  if redis.call('EXISTS', stream) == 0 then
    redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
    redis.call('SADD', prefix .. ':queues', queue)
  end
  return stream
end

-- Counters up to this many digits stay exact and print without an exponent
-- in Lua's numbers, and they cover the INTEGER range of the SQL engines.
local COUNTER_DIGITS = 10

-- The attempts after a stored count. A value that is not an integer (a hand
-- edit) restarts at 1; a negative one goes on, and the worker fails the task.
local function next_attempts(value)
  if value and #value <= COUNTER_DIGITS + 1 and string.match(value, '^-?%d+$') then
    return tonumber(value) + 1
  end
  return 1
end

-- The version after a stored one, with the SQL engines' rule: past the INTEGER
-- limit, or for a value that is not an integer, it wraps to -limit, which no
-- worker or caller holds.
local function next_version(value)
  if value and #value <= COUNTER_DIGITS + 1 and string.match(value, '^-?%d+$') then
    local number = tonumber(value)
    if number < __COUNTER_LIMIT__ then
      return number + 1
    end
  end
  return -__COUNTER_LIMIT__
end

-- Append a stream entry for task `id` and return the entry id.
local function push(id, queue)
  return redis.call('XADD', ensure_queue(queue), '*', 'id', id)
end

-- Acknowledge and delete an entry, so the stream keeps only live entries.
local function drop_entry(queue, entry)
  local stream = queue_key(queue)
  redis.call('XACK', stream, group, entry)
  redis.call('XDEL', stream, entry)
end

""".replace("__GROUP__", GROUP).replace("__COUNTER_LIMIT__", str(COUNTER_LIMIT))

#: Helpers of the scripts that wait for work: group cursors and the next delayed time.
_CURSOR_HELPERS = """
local function last_delivered(stream)
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local fields = {}
    for i = 1, #info, 2 do
      fields[info[i]] = info[i + 1]
    end
    if fields['name'] == group then
      return fields['last-delivered-id']
    end
  end
  return '0-0'
end

local function next_due(delayed)
  local first = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  return first[2] or false
end
"""

#: Store new records and queue them: a stream entry when due, else the delayed index.
#: KEYS: delayed index, then one task key per record.
#: ARGV: prefix, now, then per record: id, queue, available_at, created_at,
#: name, payload, max_attempts, status, version, attempts, the number of
#: other fields, and those fields as name/value pairs.
#: A record whose id exists with the same created_at is skipped, because an
#: earlier try of the same call stored it and its reply was lost with the
#: connection. Any other existing id fails the whole call before anything is
#: written.
ENQUEUE = (
    _PRELUDE
    + """
local now = tonumber(ARGV[2])
local records = {}
local index = 3
for position = 2, #KEYS do
  local count = tonumber(ARGV[index + 10])
  records[#records + 1] = {key = KEYS[position], index = index, count = count}
  index = index + 11 + 2 * count
end
for _, record in ipairs(records) do
  local created = redis.call('HGET', record.key, 'created_at')
  if created then
    if created ~= ARGV[record.index + 3] then
      return redis.error_reply('TASKFUTURE_DUPLICATE ' .. ARGV[record.index])
    end
    record.stored = true
  end
end
local streams = {}
for _, record in ipairs(records) do
  if not record.stored then
    local i = record.index
    local id, queue, available = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    local fields = {'id', id, 'queue', queue, 'available_at', available,
      'created_at', ARGV[i + 3], 'name', ARGV[i + 4], 'payload', ARGV[i + 5],
      'max_attempts', ARGV[i + 6], 'status', ARGV[i + 7], 'version', ARGV[i + 8],
      'attempts', ARGV[i + 9]}
    for j = i + 11, i + 10 + 2 * record.count do
      fields[#fields + 1] = ARGV[j]
    end
    if tonumber(available) > now then
      redis.call('ZADD', KEYS[1], available, id)
    else
      local stream = streams[queue]
      if not stream then
        stream = ensure_queue(queue)
        streams[queue] = stream
      end
      fields[#fields + 1] = 'entry'
      fields[#fields + 1] = redis.call('XADD', stream, '*', 'id', id)
    end
    redis.call('HSET', record.key, unpack(fields))
  end
end
return #records
"""
)

#: Apply transitions, each a compare-and-set on the version, and keep the
#: indexes and streams in step. Leaving RUNNING drops the lease. Becoming
#: PENDING queues the task again, in a new stream entry or, when it is not
#: due, in the delayed index. A terminal state acknowledges and deletes the
#: stream entry, indexes the expiry, sets the TTL and publishes the task id.
#: KEYS: lease index, delayed index, expiry index, then one task key per item.
#: ARGV: prefix, now, channel, whether to return records ('1' or '0'), then
#: per item: id, expected version, new status, TTL in ms, the number of fields
#: to set, those fields as name/value pairs, the number of fields to delete,
#: those field names.
#: Returns per item 'missing', 'conflict', or 'ok' (the new record's HGETALL
#: instead when records are asked for).
TRANSITION = (
    _PRELUDE
    + """
local now = tonumber(ARGV[2])
local channel = ARGV[3]
local want_records = ARGV[4] == '1'

local function apply(key, id, expected, status, ttl, sets, deletes)
  local current = redis.call('HMGET', key, 'version', 'status', 'queue', 'entry',
    'available_at', 'expires_at', 'lease_until')
  if not current[1] then
    return 'missing'
  end
  if current[1] ~= expected then
    return 'conflict'
  end
  local old_status, queue, entry = current[2], current[3], current[4]
  local available, expires, lease = current[5], current[6], current[7]
  for i = 1, #sets, 2 do
    if sets[i] == 'available_at' then
      available = sets[i + 1]
    elseif sets[i] == 'expires_at' then
      expires = sets[i + 1]
    elseif sets[i] == 'lease_until' then
      lease = sets[i + 1]
    end
  end
  sets[#sets + 1] = 'status'
  sets[#sets + 1] = status
  sets[#sets + 1] = 'version'
  sets[#sets + 1] = tostring(tonumber(current[1]) + 1)

  if status ~= 'RUNNING' and entry then
    drop_entry(queue, entry)
    deletes[#deletes + 1] = 'entry'
  end
  if old_status == 'RUNNING' and status ~= 'RUNNING' then
    redis.call('ZREM', KEYS[1], id)
  end
  if old_status == 'PENDING' and not entry then
    redis.call('ZREM', KEYS[2], id)
  end

  if status == 'PENDING' then
    if (tonumber(available) or 0) > now then
      redis.call('ZADD', KEYS[2], available, id)
    else
      sets[#sets + 1] = 'entry'
      sets[#sets + 1] = push(id, queue)
    end
  elseif status == 'RUNNING' then
    if lease then
      redis.call('ZADD', KEYS[1], lease, id)
    end
  else
    if expires then
      redis.call('ZADD', KEYS[3], expires, id)
    end
    redis.call('PUBLISH', channel, id)
  end

  -- Delete first: 'entry' may be both deleted (old entry) and set (new entry).
  if #deletes > 0 then
    redis.call('HDEL', key, unpack(deletes))
  end
  redis.call('HSET', key, unpack(sets))
  if status ~= 'PENDING' and status ~= 'RUNNING' then
    redis.call('PEXPIRE', key, ttl)
  end
  if want_records then
    return redis.call('HGETALL', key)
  end
  return 'ok'
end

local outcomes = {}
local index = 5
for position = 4, #KEYS do
  local id, expected, status, ttl = ARGV[index], ARGV[index + 1], ARGV[index + 2], ARGV[index + 3]
  local set_count = tonumber(ARGV[index + 4])
  local sets = {unpack(ARGV, index + 5, index + 4 + 2 * set_count)}
  index = index + 5 + 2 * set_count
  local delete_count = tonumber(ARGV[index])
  local deletes = {unpack(ARGV, index + 1, index + delete_count)}
  index = index + 1 + delete_count
  outcomes[#outcomes + 1] = apply(KEYS[position], id, expected, status, ttl, sets, deletes)
end
return outcomes
"""
)

#: Move due delayed tasks to their streams, then read and claim up to `limit`
#: entries from the queues in order. An entry whose task is gone, finished,
#: cancelled or queued again under a newer entry is acknowledged and deleted.
#: KEYS: delayed index, lease index.
#: ARGV: prefix, worker id, now, lease_until, limit, queue names...
#: Returns {claimed HGETALLs, each queue's last-delivered id or {} when the
#: limit was reached, earliest delayed time or false}.
CLAIM = (
    _PRELUDE
    + _CURSOR_HELPERS
    + """
local consumer = ARGV[2]
local now = ARGV[3]
local lease_until = ARGV[4]
local remaining = tonumber(ARGV[5])

local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if first[2] and tonumber(first[2]) <= tonumber(now) then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1000)) do
    redis.call('ZREM', KEYS[1], id)
    local key = task_key(id)
    local state = redis.call('HMGET', key, 'status', 'queue')
    if state[1] == 'PENDING' then
      redis.call('HSET', key, 'entry', push(id, state[2]))
    end
  end
  first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
end

-- Read from a queue's stream, creating the stream and group on first use.
local function read(queue, count)
  local stream = queue_key(queue)
  local reply = redis.pcall(
    'XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS', stream, '>')
  if type(reply) == 'table' and reply.err then
    -- No stream or no group yet: create both (BUSYGROUP just means the group exists).
    redis.pcall('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
    redis.call('SADD', prefix .. ':queues', queue)
    reply = redis.call(
      'XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS', stream, '>')
  end
  if not reply then
    return stream, {}
  end
  return stream, reply[1][2]
end

local claimed = {}
local cursors = {}
for position = 6, #ARGV do
  local cursor = false
  while remaining > 0 do
    local requested = remaining
    local stream, messages = read(ARGV[position], requested)
    for _, message in ipairs(messages) do
      local entry, fields = message[1], message[2]
      cursor = entry
      -- An entry taskfuture did not write (no id field) is dropped like a stale one.
      local id = fields[1] == 'id' and fields[2] or nil
      local state = {}
      if id then
        state = redis.call('HMGET', task_key(id), 'status', 'entry', 'version', 'attempts')
      end
      if state[1] == 'PENDING' and state[2] == entry then
        local key = task_key(id)
        redis.call('HSET', key, 'status', 'RUNNING', 'started_at', now,
          'lease_until', lease_until, 'worker_id', consumer, 'id', id,
          'version', tostring(next_version(state[3])),
          'attempts', tostring(next_attempts(state[4])))
        redis.call('ZADD', KEYS[2], lease_until, id)
        claimed[#claimed + 1] = redis.call('HGETALL', key)
        remaining = remaining - 1
      else
        redis.call('XACK', stream, group, entry)
        redis.call('XDEL', stream, entry)
      end
    end
    if #messages < requested then
      break
    end
  end
  if remaining > 0 then
    cursors[#cursors + 1] = cursor or last_delivered(queue_key(ARGV[position]))
  else
    break
  end
end
if remaining == 0 then
  cursors = {}
end
return {claimed, cursors, first[2] or false}
"""
)

#: Return the group's last-delivered id of each queue and the earliest delayed time.
#: KEYS: delayed index. ARGV: prefix, queue names...
CURSORS = (
    _PRELUDE
    + _CURSOR_HELPERS
    + """
local cursors = {}
for position = 2, #ARGV do
  cursors[#cursors + 1] = last_delivered(ensure_queue(ARGV[position]))
end
return {cursors, next_due(KEYS[1])}
"""
)

#: Extend the leases a worker holds; return the ids it still holds.
#: KEYS: lease index. ARGV: prefix, worker id, lease_until, task ids...
EXTEND_LEASES = (
    _PRELUDE
    + """
local extended = {}
for position = 4, #ARGV do
  local id = ARGV[position]
  local key = task_key(id)
  local state = redis.call('HMGET', key, 'status', 'worker_id')
  if state[1] == 'RUNNING' and state[2] == ARGV[2] then
    redis.call('HSET', key, 'lease_until', ARGV[3])
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    extended[#extended + 1] = id
  end
end
return extended
"""
)

#: Store progress of a task the worker still runs and publish its id.
#: KEYS: task. ARGV: prefix, worker id, progress JSON, channel, task id.
SET_PROGRESS = """
local state = redis.call('HMGET', KEYS[1], 'status', 'worker_id')
if state[1] ~= 'RUNNING' or state[2] ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'progress', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""

#: Return up to `limit` RUNNING records whose lease ran out. Index entries of
#: tasks that are gone or no longer RUNNING are removed on the way.
#: KEYS: lease index. ARGV: prefix, now, limit.
EXPIRED_LEASES = (
    _PRELUDE
    + """
local now = tonumber(ARGV[2])
local expired = {}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do
  local key = task_key(id)
  local state = redis.call('HMGET', key, 'status', 'lease_until')
  if state[1] ~= 'RUNNING' or not state[2] then
    redis.call('ZREM', KEYS[1], id)
  elseif (tonumber(state[2]) or 0) < now then
    expired[#expired + 1] = redis.call('HGETALL', key)
  else
    redis.call('ZADD', KEYS[1], state[2], id)
  end
end
return expired
"""
)

#: Delete up to `limit` records whose expires_at has passed; return how many.
#: Each deleted record leaves a tombstone: its id stays in the tombstone index
#: until `tombstone_until`. A record that the TTL already removed gets one
#: too, but only the records deleted here are counted. At most 10 * limit
#: index entries are examined per call, and tombstones past their time are
#: dropped.
#: KEYS: expiry index, tombstone index. ARGV: prefix, now, limit, tombstone_until.
DELETE_EXPIRED = (
    _PRELUDE
    + """
local now = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local deleted = 0
local examined = 0
while deleted < limit and examined < 10 * limit do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, limit - deleted)
  if #ids == 0 then
    break
  end
  for _, id in ipairs(ids) do
    examined = examined + 1
    local key = task_key(id)
    local expires = redis.call('HGET', key, 'expires_at')
    if expires and (tonumber(expires) or 0) > now then
      redis.call('ZADD', KEYS[1], expires, id)
    else
      redis.call('ZREM', KEYS[1], id)
      redis.call('ZADD', KEYS[2], ARGV[4], id)
      if expires then
        redis.call('DEL', key)
        deleted = deleted + 1
      end
    end
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
return deleted
"""
)

#: Return the ids that expired: those with a live tombstone, and those the TTL
#: removed while their expiry index entry still waits for the next sweep.
#: KEYS: expiry index, tombstone index. ARGV: prefix, now, task ids...
EXPIRED_IDS = (
    _PRELUDE
    + """
local now = tonumber(ARGV[2])
local expired = {}
for position = 3, #ARGV do
  local id = ARGV[position]
  local until_time = redis.call('ZSCORE', KEYS[2], id)
  if until_time and tonumber(until_time) > now then
    expired[#expired + 1] = id
  elseif redis.call('ZSCORE', KEYS[1], id) and redis.call('EXISTS', task_key(id)) == 0 then
    expired[#expired + 1] = id
  end
end
return expired
"""
)

#: Remove what no other step removes: pending entries whose task is gone or
#: was queued again under a newer entry, queues whose stream was deleted, and
#: consumers of former workers that hold no entries and were idle for `idle_ms`.
#: KEYS: queue set. ARGV: prefix, entries to check per queue, idle_ms.
#: Returns the number of entries and consumers removed.
SWEEP_ORPHANS = (
    _PRELUDE
    + """
local removed = 0
for _, queue in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local stream = queue_key(queue)
  if redis.call('EXISTS', stream) == 0 then
    redis.call('SREM', KEYS[1], queue)
  else
    for _, pending in ipairs(redis.call('XPENDING', stream, group, '-', '+', ARGV[2])) do
      local entry = pending[1]
      local found = redis.call('XRANGE', stream, entry, entry)
      local owner = false
      if #found > 0 then
        owner = redis.call('HGET', task_key(found[1][2][2]), 'entry')
      end
      if owner ~= entry then
        redis.call('XACK', stream, group, entry)
        redis.call('XDEL', stream, entry)
        removed = removed + 1
      end
    end
    for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', stream, group)) do
      local fields = {}
      for i = 1, #info, 2 do
        fields[info[i]] = info[i + 1]
      end
      if fields['pending'] == 0 and fields['idle'] > tonumber(ARGV[3]) then
        redis.call('XGROUP', 'DELCONSUMER', stream, group, fields['name'])
        removed = removed + 1
      end
    end
  end
end
return removed
"""
)
