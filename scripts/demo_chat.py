#!/usr/bin/env python3
"""The demo conversation: alice on Matrix and bob on the loopback network talk through isthmus.

Usage: demo_chat.py HOMESERVER_URL CONTROL_HOST:PORT
Uses only the standard library. Prints a transcript; exits non-zero if a message does not cross.
"""
import json
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

HS = sys.argv[1]
CONTROL = sys.argv[2]
BOB = "@_loopback_bob:localhost"


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
    print(f"{time.strftime('%H:%M:%S')}  {who:<28} {text}", flush=True)


def main():
    r = call("POST", "/_matrix/client/v3/register",
             {"username": "alice", "password": "alicepass", "auth": {"type": "m.login.dummy"}})
    if "access_token" not in r:
        r = call("POST", "/_matrix/client/v3/login",
                 {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
                  "password": "alicepass"})
    token = r["access_token"]
    call("PUT", "/_matrix/client/v3/profile/@alice:localhost/displayname", {"displayname": "Alice"}, token)

    room = call("POST", "/_matrix/client/v3/createRoom",
                {"invite": [BOB], "is_direct": True, "preset": "trusted_private_chat"}, token)["room_id"]
    for _ in range(100):
        members = call("GET", f"/_matrix/client/v3/rooms/{q(room)}/joined_members", token=token)
        if BOB in members.get("joined", {}):
            break
        time.sleep(0.1)
    else:
        sys.exit("bob's ghost did not join the direct chat")

    ctl = socket.create_connection(tuple(CONTROL.rsplit(":", 1)), timeout=30)
    lines = ctl.makefile("r")

    text = "Hello Bob! Alice here, writing from Matrix."
    say("alice (Matrix)", text)
    call("PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/demo{time.time_ns()}",
         {"msgtype": "m.text", "body": text}, token)
    deadline = time.time() + 30
    while time.time() < deadline:
        msg = json.loads(lines.readline())
        op = msg.get("sent")
        if op and op.get("op") == "message" and op["message"]["content"]["body"] == text:
            sender = op["message"]["sender"]
            say("bob (loopback network)", f"received from {sender['displayname']} <{sender['user_id']}>: {text!r}")
            break
    else:
        sys.exit("alice's message did not reach the loopback network")

    reply = "Hi Alice, Bob on the other side. It crossed!"
    say("bob (loopback network)", reply)
    event = {"chat": "bob", "chat_kind": "direct", "receiver": "@alice:localhost", "sender": "bob",
             "sender_name": "Bob", "kind": {"type": "message", "id": f"demo-{time.time_ns()}",
                                            "content": {"kind": "text", "body": reply}}}
    ctl.sendall((json.dumps({"op": "inject", "event": event}) + "\n").encode())
    deadline = time.time() + 30
    while time.time() < deadline:
        msgs = call("GET", f"/_matrix/client/v3/rooms/{q(room)}/messages?dir=b&limit=20", token=token)
        for ev in msgs.get("chunk", []):
            if ev.get("sender") == BOB and ev.get("content", {}).get("body") == reply:
                say("alice (Matrix)", f"sees in room {room}, from {BOB}: {reply!r}")
                return
        time.sleep(0.2)
    sys.exit("bob's reply did not reach Matrix")


main()
