"""A scripted OpenAI-compatible chat server on 127.0.0.1 for tests with the real `openai` client.

    with ScriptedServer() as server:
        server.push(proposal({...}), error(500), text("not json"), delay(2.0, proposal({...})))
        client = openai.OpenAI(base_url=server.base_url, api_key="test")
        ...
        server.requests  # every request body received, in order (parsed JSON)

Each POST /v1/chat/completions takes the next scripted reply. A request whose `response_format`
the server does not take is refused without taking a scripted reply: `response_formats` lists
the types it takes (None: all; `reject_response_format=True`: none), `json_object_schema` whether
it takes llama.cpp's `{"type": "json_object", "schema": {...}}`, `refusal` the status and message
it refuses with. `calls(("read_log", {"exp": 1}), ...)` answers with function calls (finish_reason
`tool_calls`), as OpenAI does; a server made with `takes_tools=False` refuses every request that
offers `tools` (like a llama.cpp server without --jinja), again without taking a reply.
`route(body) -> Reply | None`, when given, answers the requests it recognises without taking a
scripted reply (e.g. a teacher's, while the script holds the planner's).
GET /v1/models lists `models` (default: the one `model`, as llama-cpp-python's server does).
`ScriptedServer.like_llama_cpp()` behaves like llama-cpp-python's server (500 on json_schema,
json_object with a schema taken). An empty script answers 500 ("script exhausted"),
so a test that sends more requests than it scripted fails loudly.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import BaseModel

# llama-cpp-python 0.3.36 (FastAPI 0.165) on `response_format: {type: json_schema}`: its route
# handler turns the request's validation error into HTTP 500 with this message (as received)
LLAMA_CPP_REFUSAL = (
    "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
    "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', "
    "'ctx': {'expected': \"'text' or 'json_object'\"}}\n\n  File \"/venv/lib/python3.11/"
    "site-packages/llama_cpp/server/app.py\", line 376, in create_chat_completion\n"
    "    POST /v1/chat/completions")


@dataclass(frozen=True)
class Reply:
    """One scripted answer: assistant `content` (status 200), or an HTTP error `status`."""

    content: str | None = None
    status: int = 200
    message: str = ""  # error message for status != 200
    delay: float = 0.0  # seconds to wait before answering
    usage: tuple[int, int] | None = None  # (prompt, completion) tokens; else estimated
    headers: tuple[tuple[str, str], ...] = ()
    tool_calls: tuple[tuple[str, dict[str, Any] | str], ...] = ()  # (name, arguments)


def proposal(data: dict[str, Any] | BaseModel, **options: Any) -> Reply:
    """A reply whose content is the proposal as JSON."""
    body = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
    return Reply(content=json.dumps(body), **options)


def text(content: str, **options: Any) -> Reply:
    """A reply with arbitrary assistant text (prose, fenced JSON, malformed JSON...)."""
    return Reply(content=content, **options)


def error(status: int, message: str = "", **options: Any) -> Reply:
    """An HTTP error in OpenAI's error format, e.g. error(500) or error(429)."""
    return Reply(status=status, message=message or f"scripted error {status}", **options)


def calls(*tool_calls: tuple[str, dict[str, Any] | str], **options: Any) -> Reply:
    """A reply that calls tools: (name, arguments), the arguments as a dict or as raw text (to
    send arguments that are not JSON)."""
    return Reply(tool_calls=tuple(tool_calls), **options)


def delay(seconds: float, then: Reply) -> Reply:
    """`then`, answered after `seconds` (longer than the client's timeout = a timeout)."""
    return dataclasses.replace(then, delay=seconds)


def estimate_tokens(value: Any) -> int:
    """About 4 characters per token, like OpenAI's tokenizers on English."""
    return max(1, math.ceil(len(value if isinstance(value, str) else json.dumps(value)) / 4))


class ScriptedServer:
    """An OpenAI-compatible server answering from a queue of scripted replies."""

    def __init__(self, replies: list[Reply] | tuple[Reply, ...] = (), *,
                 reject_response_format: bool = False,
                 response_formats: Collection[str] | None = None, json_object_schema: bool = True,
                 refusal: tuple[int, str] = (400, "response_format is not supported here"),
                 takes_tools: bool = True, model: str = "scripted-model",
                 models: Collection[str] | None = None,
                 route: Callable[[dict[str, Any]], Reply | None] | None = None) -> None:
        self.response_formats = () if reject_response_format else response_formats
        self.json_object_schema = json_object_schema
        self.refusal = refusal
        self.takes_tools = takes_tools
        self.route = route
        self.model = model
        self.models = [model] if models is None else list(models)  # what GET /v1/models lists
        self.requests: list[dict[str, Any]] = []  # bodies received, in order
        self.replies_sent: list[Reply] = []  # replies answered (incl. rejections), in order
        self._script: collections.deque[Reply] = collections.deque(replies)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def like_llama_cpp(cls, replies: list[Reply] | tuple[Reply, ...] = ()) -> ScriptedServer:
        """llama-cpp-python's server: json_schema answered with 500, json_object (+schema) taken."""
        return cls(replies, response_formats={"text", "json_object"}, json_object_schema=True,
                   refusal=(500, LLAMA_CPP_REFUSAL))

    def takes(self, response_format: Any) -> bool:
        """Whether a request carrying this `response_format` gets an answer."""
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if self.response_formats is not None and kind not in self.response_formats:
            return False
        return self.json_object_schema or "schema" not in response_format

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> ScriptedServer:
        handler = type("Handler", (_Handler,), {"server_ref": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True  # a delayed reply must not block stop()
        # a short poll interval: shutdown() waits up to one interval
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,),
                                        daemon=True, name="scripted-openai-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes delayed replies
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "start() the server first"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- script -----------------------------------------------------------------------------

    def push(self, *replies: Reply) -> ScriptedServer:
        """Append replies to the script."""
        with self._lock:
            self._script.extend(replies)
        return self

    @property
    def pending(self) -> int:
        """Scripted replies not yet taken."""
        with self._lock:
            return len(self._script)

    def formats(self) -> list[str]:
        """Each request's response_format, in order: `json_schema`, `json_object+schema`,
        `json_object`, or `-` for none."""
        kinds = []
        for body in self.requests:
            fmt = body.get("response_format")
            kind = fmt.get("type", "?") if isinstance(fmt, dict) else "-"
            kinds.append(kind + ("+schema" if isinstance(fmt, dict) and "schema" in fmt else ""))
        return kinds

    def offered_tools(self, index: int = -1) -> list[str]:
        """The names of the tools request `index` offered by function calling."""
        return [t["function"]["name"] for t in self.requests[index].get("tools") or []]

    def user_messages(self, index: int = -1) -> list[str]:
        """The contents of the user messages of request `index`."""
        return [m["content"] for m in self.requests[index]["messages"] if m["role"] == "user"]

    def _next(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append(body)
            if "response_format" in body and not self.takes(body["response_format"]):
                reply = error(*self.refusal)
            elif "tools" in body and not self.takes_tools:
                reply = error(400, "tools are not supported by this server")
            elif self.route is not None and (routed := self.route(body)) is not None:
                reply = routed
            elif self._script:
                reply = self._script.popleft()
            else:
                reply = error(500, "script exhausted: the test sent more requests than it scripted")
            self.replies_sent.append(reply)
            return reply

    def _completion(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        prompt, completion = reply.usage or (estimate_tokens(body.get("messages", [])),
                                             estimate_tokens(reply.content or reply.tool_calls))
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": f"call_{len(self.requests)}_{i}", "type": "function",
                 "function": {"name": name, "arguments": args if isinstance(args, str)
                              else json.dumps(args)}}
                for i, (name, args) in enumerate(reply.tool_calls)]
        return {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [{"index": 0, "logprobs": None, "message": message,
                         "finish_reason": "tool_calls" if reply.tool_calls else "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
        }


class _Handler(BaseHTTPRequestHandler):
    server_ref: ScriptedServer
    protocol_version = "HTTP/1.1"  # keep-alive, like real servers

    def log_message(self, *args: Any) -> None:
        pass  # quiet test output

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, {"object": "list", "data": [
                {"id": model, "object": "model", "created": 0, "owned_by": "tests"}
                for model in self.server_ref.models]})
        else:
            self._send(404, _error_body(404, f"no route {self.path}"))

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length)
        if len(data) < length:  # the client died mid-request (a test's SIGKILL): not a request
            return
        try:
            body = json.loads(data or b"{}")
        except json.JSONDecodeError:
            self._send(400, _error_body(400, "request body is not JSON"))
            return
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, _error_body(404, f"no route {self.path}"))
            return
        server = self.server_ref
        reply = server._next(body)
        if reply.delay and server._stopping.wait(reply.delay):
            return  # stopped while waiting
        if reply.status != 200:
            self._send(reply.status, _error_body(reply.status, reply.message), reply.headers)
        else:
            self._send(200, server._completion(body, reply), reply.headers)

    def _send(self, status: int, payload: dict[str, Any],
              headers: tuple[tuple[str, str], ...] = ()) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test): nothing to answer


def _error_body(status: int, message: str) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
            429: "rate_limit_exceeded"}.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}
