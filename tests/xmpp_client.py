#!/usr/bin/env python3
"""A real XMPP client (slixmpp) for the integration tests, driven over JSON lines.

Usage: xmpp_client.py JID PASSWORD HOST PORT

stdin:  {"op": "send", "xml": "<message to='...'>...</message>"}   send a raw stanza
        {"op": "quit"}
stdout: {"event": "online"} once logged in and presence sent
        {"event": "stanza", "xml": "..."} for every message, presence and iq received
        {"event": "failed", "why": "..."} when login fails
Plaintext on 127.0.0.1 only, as the test Prosody is configured.
"""
import asyncio
import json
import logging
import sys

from slixmpp import ClientXMPP
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Client(ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        self.enable_direct_tls = False
        self.enable_starttls = False
        self.enable_plaintext = True
        self.register_plugin("feature_mechanisms")
        self.plugin["feature_mechanisms"].unencrypted_scram = True
        self.plugin["feature_mechanisms"].unencrypted_plain = True
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("failed_auth", lambda _: emit({"event": "failed", "why": "auth"}))
        for kind in ("message", "presence", "iq"):
            self.register_handler(Callback(
                "test-" + kind,
                MatchXPath("{%s}%s" % (self.default_ns, kind)),
                lambda stanza: emit({"event": "stanza", "xml": str(stanza)}),
            ))

    async def start(self, _):
        self.send_presence()
        emit({"event": "online"})


async def commands(client):
    loop = asyncio.get_running_loop()
    # Lines carry whole stanzas, some larger than the default 64 KiB line limit.
    reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        if cmd["op"] == "send":
            client.send_raw(cmd["xml"])
        elif cmd["op"] == "quit":
            break
    client.disconnect()
    await asyncio.sleep(0.2)


def main():
    logging.basicConfig(level=logging.ERROR)
    jid, password, host, port = sys.argv[1:5]
    client = Client(jid, password)
    client.connect(host, int(port))
    asyncio.get_event_loop().run_until_complete(commands(client))


main()
