"""DIAGNOSTIC ONLY, not the zoo server: server.py with the three set-up shapes patched the way
the issue-10 relay patched FluxyChat's worker (claims.roles and expiresAt in the token response,
`type` defaulted and 201 on POST /rooms), to see what a runner that exits 2 at set-up would do
past it. The test never uses it. Usage: python3 setup_shim.py --port 0
"""
import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server as S  # noqa: E402
orig_tok, orig_room = S.auth_token, S.create_room
async def auth_token(req, signin=False):
    r = await orig_tok(req, signin)
    if r.status == 200:
        b = json.loads(r.body); b["claims"].setdefault("roles", [])
        b["expiresAt"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() + b["expiresIn"]))
        r.body = json.dumps(b).encode()
    return r
async def create_room(req):
    b = req.json()
    if isinstance(b, dict) and "type" not in b:
        b["type"] = "group"; req.body = json.dumps(b).encode()
    r = await orig_room(req)
    if r.status == 200: r.status = 201
    return r
S.auth_token, S.create_room = auth_token, create_room
asyncio.run(S.main())
