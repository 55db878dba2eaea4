from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pytest

from eliq_pipeline.supervision.prompt_refine import (
    ChatClient,
    LLMError,
    parse_labels,
    refine_labels,
    uncertain,
)
from eliq_pipeline.supervision.prompts import UNCATEGORISED, Prompt, keyword_labels, prompt_id_for


def _prompt(text: str, category: str) -> Prompt:
    if category == UNCATEGORISED:
        labels = keyword_labels(text) or [UNCATEGORISED]
    else:
        labels = keyword_labels(text, primary=category)
    return Prompt(prompt_id=prompt_id_for(text), text=text, category=category, sub_concept="", labels=labels)


CERTAIN = _prompt("A cozy living room with a grey linen sofa.", "Indoor Scenes")
NO_LABEL = _prompt("An abstract swirl of light.", UNCATEGORISED)
MISSED_PRIMARY = _prompt("A steaming bowl of ramen.", "Events")
TOO_MANY = _prompt("A family having a birthday picnic with a cake beside a river in the city.", "Events")
PROMPTS = [CERTAIN, NO_LABEL, MISSED_PRIMARY, TOO_MANY]

Responder = Callable[[dict[str, Any]], tuple[int, bytes]]


def _completion(content: str) -> bytes:
    return json.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
        }
    ).encode()


class FakeLLM:
    """An OpenAI-compatible endpoint on 127.0.0.1 whose answers the test decides."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.respond: Responder = lambda body: (200, _completion('{"labels": ["Food"]}'))
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                status, payload = fake.respond(body)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    fake = FakeLLM()
    yield fake
    fake.close()


def _user_text(body: dict[str, Any]) -> str:
    return body["messages"][-1]["content"]


def test_uncertainty_rules() -> None:
    assert not uncertain(CERTAIN)
    assert uncertain(NO_LABEL)  # no keyword category
    assert uncertain(MISSED_PRIMARY)  # primary not found by the keywords
    assert uncertain(TOO_MANY)  # more than two categories
    assert not uncertain(_prompt("A wedding party dancing in a kitchen.", "Events"))  # two, primary among them


def test_off_without_a_client() -> None:
    # the client comes from the profile resource (its settings from the environment: test_settings.py)
    out, report = refine_labels(PROMPTS, None)
    assert out == PROMPTS and not report.enabled and report.uncertain == 3 and report.asked == 0
    with pytest.raises(ValueError, match="model name is empty"):
        ChatClient("http://127.0.0.1:1/v1", "")
    with pytest.raises(ValueError, match="http"):
        ChatClient("127.0.0.1:1/v1", "m")


def test_refines_only_uncertain_prompts(llm: FakeLLM) -> None:
    answers = {
        NO_LABEL.text: '```json\n{"labels": ["Objects & Artifacts"]}\n```',
        MISSED_PRIMARY.text: '{"labels": ["food"]}',  # case-insensitive; agrees with the keyword labels
        TOO_MANY.text: '["Events", "Food", "People & Activities"]',
    }

    def respond(body: dict[str, Any]) -> tuple[int, bytes]:
        text = next(t for t in answers if t in _user_text(body))
        return 200, _completion(answers[text])

    llm.respond = respond
    client = ChatClient(llm.url, "tiny-llm", api_key="secret")
    out, report = refine_labels(PROMPTS, client)
    assert len(llm.requests) == 3 and all(CERTAIN.text not in _user_text(r["body"]) for r in llm.requests)
    first = llm.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer secret"
    assert first["body"]["model"] == "tiny-llm" and "Food" in first["body"]["messages"][0]["content"]
    assert out[0] is CERTAIN
    assert (out[1].category, out[1].labels) == ("Objects & Artifacts", ["Objects & Artifacts"])
    assert (out[2].category, out[2].labels) == ("Events", ["Events", "Food"])  # primary kept first
    assert out[2] == MISSED_PRIMARY
    assert out[3].labels == ["Events", "People & Activities", "Food"]  # five keyword labels cut to the answer
    assert (report.asked, report.refined, report.confirmed, report.invalid_answers) == (3, 2, 1, 0)
    assert report.as_metadata()["llm_refine_refined"] == 2
    assert report.changed_prompt_ids == [NO_LABEL.prompt_id, TOO_MANY.prompt_id]


@pytest.mark.parametrize(
    "answer",
    [
        "Food and Events",  # prose
        '{"labels": ["Food", "Cooking"]}',  # unknown category
        '{"labels": []}',
        '{"categories": ["Food"]}',
        '{"labels": ["Food", "Events", "Urban Scenes", "Natural Scenes"]}',  # too many
        '{"labels": "Food"}',
    ],
)
def test_parse_labels_is_strict(answer: str) -> None:
    with pytest.raises(ValueError):
        parse_labels(answer)


def test_invalid_answers_keep_keyword_labels(llm: FakeLLM) -> None:
    llm.respond = lambda body: (200, _completion('{"labels": ["Food", "Cooking"]}'))
    out, report = refine_labels(PROMPTS, ChatClient(llm.url, "m"))
    assert out == PROMPTS
    assert (report.asked, report.invalid_answers, report.refined) == (3, 3, 0)


def test_garbage_server_is_counted_not_fatal(llm: FakeLLM) -> None:
    llm.respond = lambda body: (200, b"<html>definitely not json</html>")
    out, report = refine_labels(PROMPTS, ChatClient(llm.url, "m"))
    assert out == PROMPTS and (report.asked, report.invalid_answers) == (3, 3)
    with pytest.raises(LLMError, match="not a chat completion"):
        ChatClient(llm.url, "m").complete([{"role": "user", "content": "hi"}])


def test_http_500_is_counted_and_a_dead_endpoint_is_given_up(llm: FakeLLM) -> None:
    llm.respond = lambda body: (500, b'{"error": "boom"}')
    many = PROMPTS + [_prompt(f"An abstract swirl number {i}.", UNCATEGORISED) for i in range(4)]
    out, report = refine_labels(many, ChatClient(llm.url, "m"), max_consecutive_failures=3)
    assert out == many
    assert (report.uncertain, report.asked, report.http_errors, report.not_asked) == (7, 3, 3, 4)
    assert len(llm.requests) == 3


def test_timeouts_are_counted(llm: FakeLLM) -> None:
    def slow(body: dict[str, Any]) -> tuple[int, bytes]:
        time.sleep(0.6)
        return 200, _completion('{"labels": ["Food"]}')

    llm.respond = slow
    out, report = refine_labels(PROMPTS, ChatClient(llm.url, "m", timeout=0.2), max_consecutive_failures=2)
    assert out == PROMPTS
    assert (report.timeouts, report.not_asked, report.refined) == (2, 1, 0)


def test_unreachable_endpoint_is_an_http_error() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out, report = refine_labels([NO_LABEL], ChatClient(f"http://127.0.0.1:{port}/v1", "m", timeout=2))
    assert out == [NO_LABEL] and report.http_errors == 1
