"""Argo CD's health assessment of our CRs, run in a real Lua 5.1 (Debian's lua5.1 and
lua-cjson), the interpreter family Argo CD embeds (gopher-lua implements Lua 5.1)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

ARGOCD = Path(__file__).resolve().parents[1] / "charts/asterisk-trunk-operator/argocd"
HEALTH_LUA = ARGOCD / "health.lua"

# `obj` as Argo CD hands it to the script: the object decoded from JSON. JSON null becomes
# cjson.null (a userdata) in cjson, nil in Argo CD: drop those keys the way Argo CD does.
_DRIVER = """
local cjson = require("cjson")
local function strip(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do if x ~= cjson.null then out[k] = strip(x) end end
  return out
end
obj = strip(cjson.decode(io.read("*a")))
local hs = dofile(arg[1])
io.write(cjson.encode({status = hs.status, message = hs.message}))
"""


def health(obj: dict[str, Any]) -> dict[str, str]:
    lua = shutil.which("lua5.1")
    if lua is None:
        raise RuntimeError("lua5.1 is missing: run `make deps` (make test does)")
    done = subprocess.run(
        [lua, "-e", _DRIVER.replace("arg[1]", json.dumps(str(HEALTH_LUA)))],
        input=json.dumps(obj),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    result: dict[str, str] = json.loads(done.stdout)
    return result
