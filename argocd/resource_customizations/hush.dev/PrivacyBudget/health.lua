-- Argo CD health check for hush.dev/PrivacyBudget (resource.customizations.health.hush.dev_PrivacyBudget).
-- Maps the operator's conditions: Ready=False or Exhausted=True -> Degraded; no status yet,
-- or a status older than the spec -> Progressing; otherwise Healthy (NearExhaustion is
-- named in the message, it is a warning, not a failure).
local hs = { status = "Progressing", message = "Waiting for the Hush operator to reconcile the budget" }

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
local exhausted = condition(obj.status.conditions, "Exhausted")
local near = condition(obj.status.conditions, "NearExhaustion")

if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = (ready.reason or "NotReady") .. ": " .. (ready.message or "")
  return hs
end
if exhausted ~= nil and exhausted.status == "True" then
  hs.status = "Degraded"
  hs.message = "Exhausted: " .. (exhausted.message or "the budget is spent")
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  if near ~= nil and near.status == "True" then
    hs.message = "Near exhaustion: " .. (near.message or "")
  end
  return hs
end
return hs
