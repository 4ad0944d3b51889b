"""The TSP script the VISA bench driver uploads at open (contract: visa_bench.md).

It runs on a Keithley 2600B (TSP, a Lua 5.0 dialect: no ``#`` or ``%`` operators) and
drives the switch matrix on TSP-Link node 2. One call of a ``hil`` function does a whole
batch (a slice read, a pulse batch, an MVM) and answers with one line, so one batch is one
VISA transaction. The emulator (emulators/keithley2600.py) checks that the script it is sent is this
text and then carries out the same functions natively over the software crossbar.
"""

SCRIPT_NAME = "hillib"

HIL_SCRIPT = r"""-- hil: batched crossbar operations for drivers/visa_bench.py (contract: drivers/visa_bench.md)
-- The switch matrix is TSP-Link node 2. Word and bit lines sit on matrix columns, listed in the bench
-- profile hilbench (wl, bl: {slot, column} per line); matrix rows carry the instruments:
-- hilbench.force_row = SMU A HI (drives word lines), sense_row = SMU B HI (holds a bit line at 0 V and
-- measures its current; during a pulse it biases the unselected lines at half the amplitude),
-- ground_row = ground.
-- A reply is one line: id TAB status TAB payload TAB adler32(id TAB status TAB payload).
-- Indices are 0-based. Relays move only with both sources at 0 V.
hil = {memory = {}, order = {}}
local MEMORY = 64
local mtx = node[2].channel
local P, R, C
local F, S, GW, GB, GWx, GBx, SWx, Sx = {}, {}, {}, {}, {}, {}, {}, {}

local function mod(a, b) return a - math.floor(a / b) * b end

local function adler32(s)
  local a, b = 1, 0
  for k = 1, string.len(s) do
    a = mod(a + string.byte(s, k), 65521)
    b = mod(b + a, 65521)
  end
  return b * 65536 + a
end

-- every reply is remembered by id: a resent call is answered again, never executed again
local function reply(id, status, payload)
  local body = string.format("%d\t%s\t%s", id, status, payload)
  local line = body .. "\t" .. string.format("%.0f", adler32(body))
  hil.memory[id] = line
  table.insert(hil.order, id)
  if table.getn(hil.order) > MEMORY then hil.memory[table.remove(hil.order, 1)] = nil end
  print(line)
end

local function replay(id)
  local line = hil.memory[id]
  if line then print(line) end
  return line ~= nil
end

local function err(id, code, text) reply(id, "ERR", code .. " " .. text) end

local function num(x)
  if x == nil then return "-" end
  if type(x) == "number" then return string.format("%.17g", x) end
  return tostring(x)
end

-- bulk numbers travel as base64 of little-endian IEEE 754 singles: a third of the ASCII size
local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local B64_VALUE = {}
for k = 1, 64 do B64_VALUE[string.byte(B64, k)] = k - 1 end

local function f32(x)
  local sign, expo, mant = 0, 0, 0
  if x < 0 or (x == 0 and 1 / x < 0) then sign = 128; x = -x end
  if x ~= x then
    expo, mant = 255, 4194304
  elseif x >= 3.5e38 then
    expo = 255
  elseif x > 0 then
    local m, e = math.frexp(x)
    expo = e + 126
    if expo <= 0 then
      expo, mant = 0, math.floor(math.ldexp(x, 149) + 0.5)
      if mant >= 8388608 then expo, mant = 1, mant - 8388608 end
    else
      mant = math.floor(math.ldexp(2 * m - 1, 23) + 0.5)
      if mant >= 8388608 then expo, mant = expo + 1, 0 end
      if expo >= 255 then expo, mant = 255, 0 end
    end
  end
  return string.char(mod(mant, 256), mod(math.floor(mant / 256), 256),
                     math.floor(mant / 65536) + mod(expo, 2) * 128, sign + math.floor(expo / 2))
end

local function unf32(s, k)
  local b1, b2, b3, b4 = string.byte(s, k), string.byte(s, k + 1), string.byte(s, k + 2), string.byte(s, k + 3)
  local sign = 1
  if b4 >= 128 then sign, b4 = -1, b4 - 128 end
  local expo = b4 * 2 + math.floor(b3 / 128)
  local mant = mod(b3, 128) * 65536 + b2 * 256 + b1
  if expo == 0 then return sign * math.ldexp(mant, -149) end
  if expo == 255 then return 0 / 0 end
  return sign * math.ldexp(mant + 8388608, expo - 150)
end

local function b64(s)
  local out, n = {}, string.len(s)
  for k = 1, n, 3 do
    local v = string.byte(s, k) * 65536 + (string.byte(s, k + 1) or 0) * 256 + (string.byte(s, k + 2) or 0)
    local q = {math.floor(v / 262144), mod(math.floor(v / 4096), 64), mod(math.floor(v / 64), 64), mod(v, 64)}
    for j = 1, 4 do
      if j <= 2 or k + j - 2 <= n then q[j] = string.sub(B64, q[j] + 1, q[j] + 1) else q[j] = "=" end
    end
    table.insert(out, table.concat(q))
  end
  return table.concat(out)
end

-- the numbers in a base64 text of singles; nil if it is not one
local function singles(text)
  local n = string.len(text)
  if mod(n, 4) ~= 0 then return nil end
  local bytes = {}
  for k = 1, n, 4 do
    local v, pad = 0, 0
    for j = 0, 3 do
      local c = string.byte(text, k + j)
      local d = B64_VALUE[c]
      if d == nil then
        if c ~= 61 or k + 4 <= n then return nil end
        d, pad = 0, pad + 1
      end
      v = v * 64 + d
    end
    table.insert(bytes, string.sub(string.char(math.floor(v / 65536), mod(math.floor(v / 256), 256), mod(v, 256)),
                                   1, 3 - pad))
  end
  local raw = table.concat(bytes)
  if mod(string.len(raw), 4) ~= 0 then return nil end
  local out = {}
  for k = 1, string.len(raw), 4 do table.insert(out, unf32(raw, k)) end
  return out
end

local function join(parts)
  local keep = {}
  for k = 1, table.getn(parts) do
    if parts[k] ~= "" then table.insert(keep, parts[k]) end
  end
  return table.concat(keep, ",")
end

local function spec(line, row) return string.format("%d%s%02d", line[1], row, line[2]) end

local function all_but(list, skip)
  local out = {}
  for k = 1, table.getn(list) do
    if k ~= skip then table.insert(out, list[k]) end
  end
  return table.concat(out, ",")
end

-- channel lists built once from the profile: per line its force, sense and ground closures, and per
-- line the closures of all the others
local function wire()
  P = hilbench
  R, C = P.rows, P.cols
  local SW = {}
  for r = 1, R do F[r] = spec(P.wl[r], P.force_row); SW[r] = spec(P.wl[r], P.sense_row) end
  for r = 1, R do GW[r] = spec(P.wl[r], P.ground_row) end
  for c = 1, C do S[c] = spec(P.bl[c], P.sense_row); GB[c] = spec(P.bl[c], P.ground_row) end
  for r = 1, R do GWx[r] = all_but(GW, r); SWx[r] = all_but(SW, r) end
  for c = 1, C do GBx[c] = all_but(GB, c); Sx[c] = all_but(S, c) end
end

local function idle()
  smua.source.levelv = 0
  smub.source.levelv = 0
  mtx.open("allslots")
  smua.source.output = smua.OUTPUT_OFF
  smub.source.output = smub.OUTPUT_OFF
end
hil.idle = idle

-- the current limits are always in place before an output goes on (the driver set them at open)
local function limits_ok()
  return smua.source.limiti <= P.max_compliance_a and smub.source.limiti <= P.max_compliance_a
end

local function arm(sense)
  smua.source.levelv = 0
  smua.source.output = smua.OUTPUT_ON
  if sense then
    smub.source.levelv = 0
    smub.source.output = smub.OUTPUT_ON
  end
end

local function switch(list)
  smua.source.levelv = 0
  smub.source.levelv = 0
  mtx.exclusiveclose(list)
end

-- the current into SMU B: it holds the bit line at 0 V, and current into HI reads negative
local function bitline_current() return -smub.measure.i() end

local function inside(list, n)
  for k = 1, table.getn(list) do
    local i = list[k]
    if type(i) ~= "number" or i < 0 or i >= n or i ~= math.floor(i) then return false end
  end
  return true
end

local function at(x, k)
  if type(x) == "table" then return x[k] end
  return x
end

function hil.profile(id)
  if replay(id) then return end
  if hilbench == nil then return err(id, "PROFILE", "no bench profile: define hilbench (see visa_bench.md)") end
  wire()
  local parts = {P.array_id, num(R), num(C), num(P.max_read_v), num(P.max_write_v), num(P.max_compliance_a),
                 num(P.min_width_s), num(P.max_width_s), num(P.cell_time_s), num(P.dac_bits),
                 num(P.dac_range_v), num(P.adc_bits), num(P.adc_range_a)}
  if P.adc_ranges_a then
    for k = 1, table.getn(P.adc_ranges_a) do table.insert(parts, num(P.adc_ranges_a[k])) end
  end
  reply(id, "OK", table.concat(parts, " "))
end

function hil.errors(id)
  if replay(id) then return end
  local n = errorqueue.count
  local items = {tostring(n)}
  for k = 1, n do
    local code, message = errorqueue.next()
    table.insert(items, string.format("%d %s", code, (string.gsub(message, "[|\t\r\n]", " "))))
  end
  reply(id, "OK", table.concat(items, "|"))
end

function hil.time(id)
  if replay(id) then return end
  reply(id, "OK", num(timer.measure.t()))
end

function hil.wait(id, seconds)
  if replay(id) then return end
  delay(seconds)
  reply(id, "OK", "")
end

function hil.read(id, v, rows, cols)
  if replay(id) then return end
  if not (v > 0 and v <= P.max_read_v) then return err(id, "LIMIT", "read voltage " .. num(v) .. " V") end
  if not (inside(rows, R) and inside(cols, C)) then return err(id, "LIMIT", "index outside the array") end
  if not limits_ok() then return err(id, "LIMIT", "current limit too high") end
  arm(true)
  local out = {}
  for a = 1, table.getn(rows) do
    for b = 1, table.getn(cols) do
      local r, c = rows[a] + 1, cols[b] + 1
      -- word line r driven, bit line c on the ammeter, every other line grounded: no sneak current
      switch(join({F[r], S[c], GWx[r], GBx[c]}))
      smua.source.levelv = v
      table.insert(out, f32(bitline_current() / v))
    end
  end
  idle()
  reply(id, "OK", b64(table.concat(out)))
end

function hil.pulse(id, compliance, rows, cols, amps, widths)
  if replay(id) then return end
  local n = table.getn(rows)
  if table.getn(cols) ~= n then return err(id, "ARG", "rows and cols differ in length") end
  if not (compliance > 0 and compliance <= P.max_compliance_a) then
    return err(id, "LIMIT", "compliance " .. num(compliance) .. " A")
  end
  if not (inside(rows, R) and inside(cols, C)) then return err(id, "LIMIT", "index outside the array") end
  for k = 1, n do
    local a, w = at(amps, k), at(widths, k)
    if type(a) ~= "number" or type(w) ~= "number" then return err(id, "ARG", "amplitude or width missing") end
    if not (math.abs(a) <= P.max_write_v) then return err(id, "LIMIT", "amplitude " .. num(a) .. " V") end
    if not (w >= P.min_width_s and w <= P.max_width_s) then return err(id, "LIMIT", "width " .. num(w) .. " s") end
  end
  if not limits_ok() then return err(id, "LIMIT", "current limit too high") end
  -- SMU A's limit is the pulse's compliance; SMU B keeps the session's, to hold the bias of many cells
  local session_limit = smua.source.limiti
  smua.source.limiti = compliance
  smua.trigger.source.limiti = compliance
  smub.trigger.source.limiti = smub.source.limiti
  arm(true)
  -- one pulse per trigger on both channels: each steps to its level until timer 1 ends the pulse, then
  -- returns to its idle level (0 V)
  local smus = {smua, smub}
  for k = 1, 2 do
    local smu = smus[k]
    smu.trigger.source.action = smu.ENABLE
    smu.trigger.measure.action = smu.DISABLE
    smu.trigger.endpulse.action = smu.SOURCE_IDLE
    smu.trigger.endpulse.stimulus = trigger.timer[1].EVENT_ID
    smu.trigger.count = 1
    smu.trigger.arm.count = 1
  end
  trigger.timer[1].count = 1
  trigger.timer[1].passthrough = false
  trigger.timer[1].stimulus = smua.trigger.SOURCE_COMPLETE_EVENT_ID
  for k = 1, n do
    local r, c, a = rows[k] + 1, cols[k] + 1, at(amps, k)
    -- V/2 scheme: word line r at a, bit line c grounded, every other line at a / 2, so the selected cell
    -- sees a, the half-selected ones a / 2 and the rest nothing
    switch(join({F[r], GB[c], SWx[r], Sx[c]}))
    smua.trigger.source.listv({a})
    smub.trigger.source.listv({a / 2})
    trigger.timer[1].delay = at(widths, k)
    smub.trigger.initiate()
    smua.trigger.initiate()
    waitcomplete()
  end
  idle()
  smua.source.limiti = session_limit
  reply(id, "OK", num(n))
end

-- superposition: per input vector and per distinct level, the rows at that level are driven together,
-- every other line is grounded, and each bit line in turn is put on the ammeter; a column's current is
-- the sum over the levels
function hil.mvm(id, batch, range, volts)
  if replay(id) then return end
  local v = singles(volts)
  if v == nil then return err(id, "ARG", "voltages are not base64 singles") end
  if table.getn(v) ~= batch * R then return err(id, "ARG", "voltages do not fill the batch") end
  for k = 1, batch * R do
    if not (math.abs(v[k]) <= P.max_read_v) then return err(id, "LIMIT", "input " .. num(v[k]) .. " V") end
  end
  if not limits_ok() then return err(id, "LIMIT", "current limit too high") end
  if range then
    smub.measure.autorangei = smub.AUTORANGE_OFF
    smub.measure.rangei = range
  end
  arm(true)
  local out = {}
  for b = 0, batch - 1 do
    for c = 1, C do out[b * C + c] = 0 end
    local levels, members = {}, {}
    for r = 1, R do
      local x = v[b * R + r]
      if x ~= 0 then
        if members[x] == nil then members[x] = {}; table.insert(levels, x) end
        members[x][r] = true
      end
    end
    for l = 1, table.getn(levels) do
      local x = levels[l]
      local driven, grounded = {}, {}
      for r = 1, R do
        if members[x][r] then table.insert(driven, F[r]) else table.insert(grounded, GW[r]) end
      end
      local wordlines = join({table.concat(driven, ","), table.concat(grounded, ",")})
      for c = 1, C do
        switch(join({wordlines, S[c], GBx[c]}))
        smua.source.levelv = x
        out[b * C + c] = out[b * C + c] + bitline_current()
      end
    end
  end
  idle()
  smub.measure.autorangei = smub.AUTORANGE_ON
  for k = 1, batch * C do out[k] = f32(out[k]) end
  reply(id, "OK", b64(table.concat(out)))
end
"""
