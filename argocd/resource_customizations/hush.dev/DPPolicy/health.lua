-- Argo CD health check for hush.dev/DPPolicy (resource.customizations.health.hush.dev_DPPolicy).
-- Ready=False or RolloutStalled=True -> Degraded; no status yet, a status older than the
-- spec, or RolloutComplete=False -> Progressing (pods still run the previous policy hash and
-- refuse to release); otherwise Healthy.
local hs = { status = "Progressing", message = "Waiting for the Hush operator to reconcile the policy" }

local function condition(conditions, kind)
  if conditions == nil then return nil end
  for _, c in ipairs(conditions) do
    if c.type == kind then return c end
  end
  return nil
end

if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = (obj.metadata and obj.metadata.generation) or 0
local observed = obj.status.observedGeneration or 0
if observed < generation then
  hs.message = "The operator has not yet observed generation " .. generation
  return hs
end

local ready = condition(obj.status.conditions, "Ready")
local stalled = condition(obj.status.conditions, "RolloutStalled")
local complete = condition(obj.status.conditions, "RolloutComplete")

if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = (ready.reason or "NotReady") .. ": " .. (ready.message or "")
  return hs
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = "Rollout stalled: " .. (stalled.message or "")
  return hs
end
if complete ~= nil and complete.status == "False" then
  hs.status = "Progressing"
  hs.message = "Rolling out: " .. (complete.message or "")
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  return hs
end
return hs
