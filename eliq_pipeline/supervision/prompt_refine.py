"""LLM refinement of multi-label categories for uncertain prompts (paper 3.2.1, step 2).

Step 1 is rule-based keyword matching (`prompts.keyword_labels`). A prompt is *uncertain* when
the rules find no category, more than two, or miss the prompt's primary category; only those
prompts are sent to an OpenAI-compatible chat-completions endpoint, which picks labels from the
seven categories.

Off by default: a client exists only when a base URL is configured (the profile resource's
`llm_base_url`, filled from `ELIQ_LLM_BASE_URL`, else `OPENAI_BASE_URL`, by
`definitions.resources_from_env`), so offline and CI runs never reach the network. The refinement is advisory
and never fails a run: a timeout, an HTTP error or an answer that does not parse strictly leaves
the keyword labels in place and is counted in the report. Standard library only (urllib).
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from eliq_pipeline.supervision.prompts import CATEGORY_NAMES, UNCATEGORISED, Prompt, keyword_labels

LOG = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
MAX_LABELS = 3  # a prompt about more than three of seven categories is not a useful multi-label

SYSTEM_PROMPT = (
    "You assign content categories to text-to-image prompts. The categories are: "
    + "; ".join(CATEGORY_NAMES)
    + f". Choose the 1 to {MAX_LABELS} categories the prompt clearly depicts, most important first, "
    "spelled exactly as listed. Answer with JSON only, in the form {\"labels\": [\"...\"]}."
)


class LLMError(Exception):
    """A failed chat completion; `kind` is 'timeout', 'http' or 'invalid' (unusable response)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class ChatClient:
    """Minimal OpenAI-compatible chat-completions client (POST {base_url}/chat/completions)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        temperature: float | None = None,
    ) -> None:
        if not re.match(r"^https?://", base_url):
            raise ValueError(f"LLM base URL must start with http:// or https://, got {base_url!r}")
        if not model:
            raise ValueError("LLM model name is empty")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key or None
        self.timeout = float(timeout)
        # omitted unless set: some reasoning models reject any temperature but their default
        self.temperature = temperature

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The assistant message content of one chat completion; LLMError otherwise."""
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            f"{self.base_url}/chat/completions", data=json.dumps(body).encode("utf-8"), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise LLMError("http", f"HTTP {exc.code} from {self.base_url}: {exc.reason}") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise LLMError("timeout", f"timed out after {self.timeout:g}s connecting to {self.base_url}") from exc
            raise LLMError("http", f"cannot reach {self.base_url}: {exc.reason}") from exc
        except TimeoutError as exc:
            raise LLMError("timeout", f"no answer from {self.base_url} within {self.timeout:g}s") from exc
        except OSError as exc:  # connection reset mid-response and the like
            raise LLMError("http", f"connection to {self.base_url} failed: {exc}") from exc
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LLMError("invalid", f"not a chat completion: {raw[:200]!r}") from exc
        if not isinstance(content, str):
            raise LLMError("invalid", f"message content is {type(content).__name__}, not text")
        return content


def uncertain(prompt: Prompt) -> bool:
    """Keyword rules are unsure: no category, more than two, or not the prompt's primary one."""
    matched = keyword_labels(prompt.text)
    return not matched or len(matched) > 2 or prompt.category not in matched


def parse_labels(answer: str) -> list[str]:
    """Strictly parse an answer: JSON `{"labels": [...]}` (or a bare list) of known category names.

    A Markdown code fence around the JSON is tolerated (chat models add one unasked); anything else
    -- prose, an unknown or misspelt category, an empty or too long list -- raises ValueError.
    Names match the taxonomy case-insensitively and come back canonical, without duplicates.
    """
    text = answer.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, flags=re.DOTALL)
    if fenced:
        text = fenced.group(1)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"answer is not JSON: {answer[:120]!r}") from exc
    if isinstance(data, dict):
        if "labels" not in data:
            raise ValueError("answer has no 'labels' key")
        data = data["labels"]
    if not isinstance(data, list) or not data or not all(isinstance(item, str) for item in data):
        raise ValueError(f"labels must be a non-empty list of strings, got {data!r}")
    canonical = {name.casefold(): name for name in CATEGORY_NAMES}
    labels: list[str] = []
    for item in data:
        name = canonical.get(item.strip().casefold())
        if name is None:
            raise ValueError(f"unknown category {item!r}; known: {', '.join(CATEGORY_NAMES)}")
        if name not in labels:
            labels.append(name)
    if len(labels) > MAX_LABELS:
        raise ValueError(f"{len(labels)} labels; at most {MAX_LABELS} allowed")
    return labels


def merge_labels(prompt: Prompt, answer: list[str]) -> Prompt:
    """Apply an answer. A given primary category stays primary (first label); an uncategorised
    prompt takes the answer's first label as its category. Others follow taxonomy order."""
    if prompt.category == UNCATEGORISED:
        primary = answer[0]
    else:
        primary = prompt.category
    rest = [name for name in CATEGORY_NAMES if name in answer and name != primary]
    return replace(prompt, category=primary, labels=[primary, *rest])


@dataclass
class RefineReport:
    """Counts for materialization metadata."""

    enabled: bool
    model: str = ""
    prompts: int = 0
    uncertain: int = 0
    asked: int = 0
    refined: int = 0  # the answer changed the labels
    confirmed: int = 0  # the answer agreed with the keyword labels
    invalid_answers: int = 0
    timeouts: int = 0
    http_errors: int = 0
    not_asked: int = 0  # skipped after repeated transport failures
    changed_prompt_ids: list[str] = field(default_factory=list)

    def as_metadata(self) -> dict[str, Any]:
        meta = {f"llm_refine_{k}": v for k, v in self.__dict__.items() if k != "changed_prompt_ids"}
        meta["llm_refine_changed_prompt_ids"] = self.changed_prompt_ids[:50]
        return meta


def _messages(prompt: Prompt) -> list[dict[str, str]]:
    suggested = keyword_labels(prompt.text)
    user = (
        f"Prompt: {prompt.text}\n"
        f"Keyword rules found: {', '.join(suggested) if suggested else 'no category'}.\n"
        f"Which categories does the prompt depict?"
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def refine_labels(
    prompts: Sequence[Prompt], client: ChatClient | None, max_consecutive_failures: int = 3
) -> tuple[list[Prompt], RefineReport]:
    """Refine the labels of uncertain prompts with the LLM; others are returned unchanged.

    `client=None` (no base URL configured) turns refinement off. After
    `max_consecutive_failures` timeouts / HTTP errors in a row the endpoint is taken to be down and
    the remaining prompts keep their keyword labels (so a dead endpoint costs a few timeouts, not
    one per prompt).
    """
    report = RefineReport(enabled=client is not None, model=client.model if client else "", prompts=len(prompts))
    out: list[Prompt] = []
    failures_in_a_row = 0
    for prompt in prompts:
        if not uncertain(prompt):
            out.append(prompt)
            continue
        report.uncertain += 1
        if client is None:
            out.append(prompt)
            continue
        if failures_in_a_row >= max_consecutive_failures:
            report.not_asked += 1
            out.append(prompt)
            continue
        report.asked += 1
        try:
            labels = parse_labels(client.complete(_messages(prompt)))
        except LLMError as exc:
            if exc.kind == "invalid":
                failures_in_a_row = 0  # the endpoint answered, just not usefully
                report.invalid_answers += 1
            else:
                failures_in_a_row += 1
                report.timeouts += exc.kind == "timeout"
                report.http_errors += exc.kind == "http"
                if failures_in_a_row == max_consecutive_failures:
                    LOG.warning("LLM label refinement: %d failures in a row (last: %s); not asking further",
                                failures_in_a_row, exc)
            LOG.warning("LLM label refinement: keeping keyword labels of %s: %s", prompt.prompt_id, exc)
            out.append(prompt)
            continue
        except ValueError as exc:
            failures_in_a_row = 0  # the endpoint answered; only this answer is unusable
            report.invalid_answers += 1
            LOG.warning("LLM label refinement: invalid answer for %s, keeping keyword labels: %s",
                        prompt.prompt_id, exc)
            out.append(prompt)
            continue
        failures_in_a_row = 0
        refined = merge_labels(prompt, labels)
        if refined.labels == prompt.labels and refined.category == prompt.category:
            report.confirmed += 1
        else:
            report.refined += 1
            report.changed_prompt_ids.append(prompt.prompt_id)
        out.append(refined)
    return out, report
