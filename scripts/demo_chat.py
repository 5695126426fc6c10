#!/usr/bin/env python3
"""The demo conversations through isthmus: alice on Matrix and bob on XMPP in a direct chat,
then alice, bob and carol (an enterprise SIP user) in one room.

Usage: demo_chat.py HOMESERVER_URL XMPP_HOST:PORT SIP_PROXY_HOST:PORT
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

from demo_sip import SipUser

HS = sys.argv[1]
XMPP_HOST, XMPP_PORT = sys.argv[2].rsplit(":", 1)
SIP_HOST, SIP_PORT = sys.argv[3].rsplit(":", 1)
BOB_GHOST = "@_xmpp_bob=40localhost:localhost"
CAROL_GHOST = "@_sip_carol=40corp.localhost:localhost"
BOT = "@_isthmus_bot:localhost"
LOBBY = "lobby@conference.localhost"
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
        self.register_plugin("xep_0045")
        self.plugin["feature_mechanisms"].unencrypted_scram = True
        self.plugin["feature_mechanisms"].unencrypted_plain = True
        self.online = asyncio.Event()
        self.inbox = asyncio.Queue()
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("message", lambda m: self.inbox.put_nowait(m))
        self.room_inbox = asyncio.Queue()
        self.add_event_handler("groupchat_message", lambda m: self.room_inbox.put_nowait(m))

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
    await wait_in_room(token, room, BOB_GHOST, reply)
    say("alice (Matrix)", f"sees in the direct chat with bob (XMPP), from {BOB_GHOST}: {reply!r}")

    await three_networks(token, bob)
    bob.disconnect()
    await asyncio.sleep(0.2)


async def wait_in_room(token, room, sender, body):
    deadline = time.time() + 30
    while time.time() < deadline:
        msgs = call("GET", f"/_matrix/client/v3/rooms/{q(room)}/messages?dir=b&limit=30", token=token)
        for ev in msgs.get("chunk", []):
            if (ev.get("type") == "m.room.message" and ev.get("sender") == sender
                    and ev.get("content", {}).get("body", "").endswith(body)):
                return ev
        await asyncio.sleep(0.2)
    sys.exit(f"{body!r} from {sender} did not reach Matrix")


async def room_message(bob, text):
    while True:
        msg = await asyncio.wait_for(bob.room_inbox.get(), 30)
        if msg["body"] == text:
            return msg


async def sip_message(carol, text):
    while True:
        sender, body = await asyncio.wait_for(carol.inbox.get(), 30)
        if body.endswith(text):
            return sender, body


async def three_networks(token, bob):
    """alice (Matrix), bob (XMPP) and carol (SIP) in one room."""
    print(flush=True)
    bob.plugin["xep_0045"].join_muc(LOBBY, "bob")
    await asyncio.sleep(1)
    say("bob (XMPP)", f"opened the group chat {LOBBY}")
    carol = await SipUser.start("carol", "carolpass", "corp.localhost", (SIP_HOST, int(SIP_PORT)))
    if await carol.register() != 200:
        sys.exit("carol could not register with the SIP proxy")
    say("carol (SIP)", "registered as sip:carol@corp.localhost")

    room = call("POST", "/_matrix/client/v3/createRoom",
                {"name": "Lobby", "invite": [BOT], "preset": "private_chat"}, token)["room_id"]
    for _ in range(100):
        if BOT in call("GET", f"/_matrix/client/v3/rooms/{q(room)}/joined_members", token=token).get("joined", {}):
            break
        await asyncio.sleep(0.1)
    command = f"!isthmus bridge xmpp {LOBBY}"
    call("PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/demo{time.time_ns()}",
         {"msgtype": "m.text", "body": command}, token)
    answer = await wait_in_room(token, room, BOT, "")
    say("alice (Matrix)", f"{command!r} -> {answer['content']['body']!r}")
    call("POST", f"/_matrix/client/v3/rooms/{q(room)}/invite", {"user_id": CAROL_GHOST}, token)
    for _ in range(100):
        if CAROL_GHOST in call("GET", f"/_matrix/client/v3/rooms/{q(room)}/joined_members", token=token).get("joined", {}):
            break
        await asyncio.sleep(0.1)
    else:
        sys.exit("carol's ghost did not join the room")
    say("alice (Matrix)", f"invited carol ({CAROL_GHOST}) into the room")

    text = "Hello Bob and Carol, one room for all three of us."
    say("alice (Matrix)", text)
    call("PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/demo{time.time_ns()}",
         {"msgtype": "m.text", "body": text}, token)
    await room_message(bob, text)
    say("bob (XMPP)", f"received in {LOBBY}: {text!r}")
    room_address, body = await sip_message(carol, text)
    say("carol (SIP)", f"received from {room_address}: {body!r}")

    text = "Carol here, on the enterprise SIP system."
    say("carol (SIP)", f"to {room_address}: {text}")
    if await carol.message(room_address, text) != 200:
        sys.exit("carol's message was refused")
    await wait_in_room(token, room, CAROL_GHOST, text)
    say("alice (Matrix)", f"sees in Lobby, from {CAROL_GHOST}: {text!r}")
    msg = await room_message(bob, text)
    say("bob (XMPP)", f"received in {LOBBY} from {msg['from'].resource}: {text!r}")

    text = "And Bob from XMPP. Matrix is the hub."
    say("bob (XMPP)", text)
    bob.send_message(mto=LOBBY, mbody=text, mtype="groupchat")
    await wait_in_room(token, room, "@_xmpp_lobby=40conference.localhost=2fbob:localhost", text)
    say("alice (Matrix)", f"sees in Lobby, from bob (XMPP): {text!r}")
    _, body = await sip_message(carol, text)
    say("carol (SIP)", f"received: {body!r}")


asyncio.run(main())
