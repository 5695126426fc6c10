#!/usr/bin/env python3
"""The demo conversation: alice on Matrix and bob on XMPP talk through isthmus.

Usage: demo_chat.py HOMESERVER_URL XMPP_HOST:PORT
Prints a transcript; exits non-zero if a message does not cross.
"""
import asyncio
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from slixmpp import ClientXMPP

HS = sys.argv[1]
XMPP_HOST, XMPP_PORT = sys.argv[2].rsplit(":", 1)
BOB_GHOST = "@_xmpp_bob=40localhost:localhost"
ALICE_ADDRESS = "alice@matrix.localhost"


def call(method, path, body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(HS + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)


def q(s):
    return urllib.parse.quote(s, safe="")


def say(who, text):
    print(f"{time.strftime('%H:%M:%S')}  {who:<16} {text}", flush=True)


class Bob(ClientXMPP):
    def __init__(self):
        super().__init__("bob@localhost/demo", "bobpass")
        self.enable_direct_tls = False
        self.enable_starttls = False
        self.enable_plaintext = True
        self.register_plugin("feature_mechanisms")
        self.plugin["feature_mechanisms"].unencrypted_scram = True
        self.plugin["feature_mechanisms"].unencrypted_plain = True
        self.online = asyncio.Event()
        self.inbox = asyncio.Queue()
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("message", lambda m: self.inbox.put_nowait(m))

    async def start(self, _):
        self.send_presence(pshow="chat", pstatus="writing from XMPP")
        self.online.set()


async def main():
    r = call("POST", "/_matrix/client/v3/register",
             {"username": "alice", "password": "alicepass", "auth": {"type": "m.login.dummy"}})
    if "access_token" not in r:
        r = call("POST", "/_matrix/client/v3/login",
                 {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
                  "password": "alicepass"})
    token = r["access_token"]
    call("PUT", "/_matrix/client/v3/profile/@alice:localhost/displayname", {"displayname": "Alice"}, token)

    bob = Bob()
    bob.connect(XMPP_HOST, int(XMPP_PORT))
    await asyncio.wait_for(bob.online.wait(), 20)
    say("bob (XMPP)", "is online as bob@localhost")

    room = call("POST", "/_matrix/client/v3/createRoom",
                {"invite": [BOB_GHOST], "is_direct": True, "preset": "trusted_private_chat"}, token)["room_id"]
    for _ in range(100):
        members = call("GET", f"/_matrix/client/v3/rooms/{q(room)}/joined_members", token=token)
        if BOB_GHOST in members.get("joined", {}):
            break
        await asyncio.sleep(0.1)
    else:
        sys.exit("bob's ghost did not join the direct chat")
    say("alice (Matrix)", f"opened a direct chat with {BOB_GHOST}")

    text = "Hello Bob! Alice here, writing from Matrix."
    say("alice (Matrix)", text)
    call("PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/demo{time.time_ns()}",
         {"msgtype": "m.text", "body": text}, token)
    while True:
        msg = await asyncio.wait_for(bob.inbox.get(), 30)
        if msg["body"] == text:
            say("bob (XMPP)", f"received from {msg['from'].bare}: {text!r}")
            break

    reply = "Hi Alice, Bob on XMPP. It crossed!"
    say("bob (XMPP)", f"to {ALICE_ADDRESS}: {reply}")
    bob.send_message(mto=ALICE_ADDRESS, mbody=reply, mtype="chat")
    deadline = time.time() + 30
    while time.time() < deadline:
        msgs = call("GET", f"/_matrix/client/v3/rooms/{q(room)}/messages?dir=b&limit=20", token=token)
        for ev in msgs.get("chunk", []):
            if ev.get("sender") == BOB_GHOST and ev.get("content", {}).get("body") == reply:
                say("alice (Matrix)", f"sees in {room}, from {BOB_GHOST}: {reply!r}")
                bob.disconnect()
                await asyncio.sleep(0.2)
                return
        await asyncio.sleep(0.2)
    sys.exit("bob's reply did not reach Matrix")


asyncio.run(main())
