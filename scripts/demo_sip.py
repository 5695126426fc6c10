"""A small SIP user agent over UDP for the demo: it registers with digest authentication,
answers incoming MESSAGEs with 200 OK, and sends MESSAGEs (answering a 407 challenge).

Just enough SIP for a demonstration; the tests use SIPp instead.
"""
import asyncio
import hashlib
import random
import re


def _md5(s):
    return hashlib.md5(s.encode()).hexdigest()


def _token():
    return "%016x" % random.getrandbits(64)


def parse(data):
    """(start line, {lowercase header: [values]}, body) of one SIP message."""
    text = data.decode("utf-8", "replace")
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return lines[0], headers, body


def uri_of(value):
    m = re.search(r"<([^>]+)>", value)
    return (m.group(1) if m else value.split(";")[0]).strip()


class SipUser(asyncio.DatagramProtocol):
    def __init__(self, user, password, domain, proxy):
        self.user, self.password, self.domain, self.proxy = user, password, domain, proxy
        self.aor = f"sip:{user}@{domain}"
        self.pending = {}
        self.inbox = asyncio.Queue()
        self.transport = None
        self.local = None

    @classmethod
    async def start(cls, user, password, domain, proxy):
        ua = cls(user, password, domain, proxy)
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: ua, local_addr=("127.0.0.1", 0))
        return ua

    def connection_made(self, transport):
        self.transport = transport
        self.local = transport.get_extra_info("sockname")

    def datagram_received(self, data, addr):
        start, headers, body = parse(data)
        if start.startswith("SIP/2.0"):
            fut = self.pending.get(headers.get("call-id", [""])[0])
            if fut and not fut.done() and int(start.split()[1]) >= 200:
                fut.set_result((int(start.split()[1]), headers))
            return
        method = start.split()[0]
        # Answer the request: 200 for MESSAGE, 405 for anything else.
        code = "200 OK" if method == "MESSAGE" else "405 Method Not Allowed"
        to = headers["to"][0]
        if ";tag=" not in to:
            to += ";tag=" + _token()[:8]
        reply = [f"SIP/2.0 {code}"]
        reply += [f"Via: {v}" for v in headers.get("via", [])]
        reply += [f"From: {headers['from'][0]}", f"To: {to}",
                  f"Call-ID: {headers['call-id'][0]}", f"CSeq: {headers['cseq'][0]}",
                  "Content-Length: 0", "", ""]
        self.transport.sendto("\r\n".join(reply).encode(), addr)
        if method == "MESSAGE":
            ctype = headers.get("content-type", ["text/plain"])[0]
            if ctype.startswith("text/plain"):
                self.inbox.put_nowait((uri_of(headers["from"][0]), body))

    async def _request(self, method, uri, to, extra, body=""):
        call_id = _token() + "@demo"
        tag = _token()[:8]
        auth = None
        for cseq in (1, 2):
            branch = "z9hG4bK" + _token()
            lines = [f"{method} {uri} SIP/2.0",
                     f"Via: SIP/2.0/UDP {self.local[0]}:{self.local[1]};branch={branch};rport",
                     "Max-Forwards: 70", f"From: <{self.aor}>;tag={tag}", f"To: <{to}>",
                     f"Call-ID: {call_id}", f"CSeq: {cseq} {method}",
                     f"Contact: <sip:{self.user}@{self.local[0]}:{self.local[1]}>"] + extra
            if auth:
                lines.append(auth)
            payload = body.encode()
            lines += [f"Content-Length: {len(payload)}", "", ""]
            fut = asyncio.get_running_loop().create_future()
            self.pending[call_id] = fut
            self.transport.sendto("\r\n".join(lines).encode() + payload, self.proxy)
            code, headers = await asyncio.wait_for(fut, 20)
            if code in (401, 407) and auth is None:
                challenge = (headers.get("www-authenticate") or headers.get("proxy-authenticate"))[0]
                params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
                ha1 = _md5(f"{self.user}:{params['realm']}:{self.password}")
                ha2 = _md5(f"{method}:{uri}")
                fields = (f'username="{self.user}", realm="{params["realm"]}", '
                          f'nonce="{params["nonce"]}", uri="{uri}", algorithm=MD5')
                if "auth" in params.get("qop", "").split(","):
                    cnonce = _token()
                    resp = _md5(f"{ha1}:{params['nonce']}:00000001:{cnonce}:auth:{ha2}")
                    fields += f', qop=auth, nc=00000001, cnonce="{cnonce}"'
                else:
                    resp = _md5(f"{ha1}:{params['nonce']}:{ha2}")
                name = "Authorization" if code == 401 else "Proxy-Authorization"
                auth = f'{name}: Digest {fields}, response="{resp}"'
                continue
            return code
        return code

    async def register(self, expires=300):
        return await self._request("REGISTER", f"sip:{self.domain}", self.aor,
                                   [f"Expires: {expires}"])

    async def message(self, to, text):
        return await self._request("MESSAGE", to, to,
                                   ["Content-Type: text/plain;charset=UTF-8"], text)
