-- Argo CD health of a TwilioTrunk, a DIDSegment or a TwilioAccount (trunks.asterisk-operator.dev).
-- Argo CD has no health for custom resources; this follows kstatus and Argo CD's own
-- pulumi.com/Stack script: a status the operator has not written for this generation yet is
-- Progressing; Stalled=True (needs a change) is Degraded; Reconciling=True (a delivery in
-- flight) is Progressing; Degraded=True (served, but e.g. Twilio unreachable or a context
-- missing) is Degraded; Ready=True is Healthy; not Ready for a reason that may resolve
-- itself (a Secret or an Asterisk pod still to come) is Progressing, with the reason.
local hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report a status"
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to deliver generation " .. obj.metadata.generation
  return hs
end
local conditions = {}
for _, condition in ipairs(obj.status.conditions) do
  conditions[condition.type] = condition
end
local function says(condition)
  local text = condition.reason or ""
  if condition.message ~= nil and condition.message ~= "" then
    text = text .. ": " .. condition.message
  end
  return text
end
if conditions.Stalled ~= nil and conditions.Stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = says(conditions.Stalled)
  return hs
end
if conditions.Reconciling ~= nil and conditions.Reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = says(conditions.Reconciling)
  return hs
end
if conditions.Degraded ~= nil and conditions.Degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = says(conditions.Degraded)
  return hs
end
local ready = conditions.Ready
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = says(ready)
  return hs
end
hs.status = "Progressing"
hs.message = ready ~= nil and says(ready) or "Waiting for the Ready condition"
return hs
