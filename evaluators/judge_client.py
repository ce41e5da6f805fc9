"""The judge's client: prompt templates, verdict parsing, the verdict cache and an OpenAI chat-completions caller.

A template holds {prompt}, {a} and {b} placeholders and ends with the verdict format
("Preferred: <"A" or "B">"); `parse_verdict` reads the letter back strictly. `ChatJudge` sends
rendered prompts to any server behind the OpenAI chat-completions API (OpenAI, vLLM, a llama.cpp
server ...), concurrently, retrying timeouts, lost connections, 429 and 5xx with exponential
backoff and unparseable answers up to a limit, and stops at the call and token caps. Answers are
cached in SQLite (`VerdictCache`), keyed by (model, sampling settings, full prompt), so a rerun
costs no calls. The API key is read from the environment and never written anywhere.

A library for evaluators/judge.py, not a plugin: it decides nothing about what is compared.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bench.errors import UserError

BUILTIN_TEMPLATES = (
    "summarization",
    "summarization-concise",
    "summarization-news",
    "dialogue",
    "continuation-positive",
)
"""The prompts in bench/judge_prompts/, by name."""
OPENAI_URL = "https://api.openai.com/v1"
_PLACEHOLDER = re.compile(r"\{(prompt|a|b)\}")
_sleep = time.sleep  # module attribute so tests can record backoff delays instead of waiting


# ---------------------------------------------------------------- prompt templates and verdicts


@dataclass(frozen=True)
class Template:
    """A judge prompt with {prompt}, {a} and {b} placeholders; its last line gives the verdict format."""

    name: str
    """The built-in template's name or the template file's path, as the record names it."""
    text: str
    """The prompt with its placeholders, as read."""

    @property
    def verdict_key(self) -> str:
        """`Preferred` for "Preferred: <"A" or "B">": the text before the colon of the last line."""
        return [line for line in self.text.splitlines() if line.strip()][-1].split(":", 1)[0].strip()

    def render(self, prompt: str, a: str, b: str) -> str:
        values = {"prompt": prompt.strip(), "a": a.strip(), "b": b.strip()}
        # One pass, so a completion that happens to contain "{b}" is never substituted again.
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.text)


def load_template(spec: str) -> Template:
    """A built-in template by name, or a template file; malformed files are the user's error."""
    if spec in BUILTIN_TEMPLATES:
        return Template(spec, (resources.files("bench") / "judge_prompts" / f"{spec}.txt").read_text(encoding="utf-8"))
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(
            f"judge.template={spec}: no such file and not a built-in template ({', '.join(BUILTIN_TEMPLATES)})"
        )
    text = path.read_text(encoding="utf-8")
    missing = [p for p in ("{prompt}", "{a}", "{b}") if p not in text]
    if missing:
        raise UserError(
            f"judge.template={spec}: the template lacks {', '.join(missing)}; "
            "use {prompt}, {a} and {b} (see bench/judge_prompts/README.md)"
        )
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or ":" not in lines[-1] or not lines[-1].split(":", 1)[0].strip():
        raise UserError(
            f'judge.template={spec}: the last line must show the verdict format, e.g. Preferred: <"A" or "B">'
        )
    return Template(str(path), text)


def _bare(text: str) -> str:
    """The text without quotes, brackets, Markdown emphasis and a final period, upper-cased."""
    return text.replace("*", "").strip().strip("\"'`<>()[]").rstrip(".").strip().strip("\"'`").upper()


def parse_verdict(answer: str, key: str) -> str | None:
    """ "A" or "B" from the answer's `KEY: X` line, or from an answer that is the letter alone; else None.

    Strict on purpose: a verdict line must hold nothing but the letter (quotes, a final period
    and Markdown emphasis aside), so "Preferred: Summary A" or "Preferred: A or B" is invalid. An
    answer that is exactly one letter and nothing else ("A", "**B**", "A.") counts: small models
    answer that way. Anything else without a verdict line is invalid.
    """
    if _bare(answer) in ("A", "B"):
        return _bare(answer)
    line_re = re.compile(rf"^\s*#*\s*{re.escape(key)}\s*:(.*)$", re.IGNORECASE)
    letters = set()
    for line in answer.splitlines():
        m = line_re.match(line.replace("*", ""))
        if not m:
            continue
        value = _bare(m.group(1))
        if value not in ("A", "B"):
            return None
        letters.add(value)
    return letters.pop() if len(letters) == 1 else None


# ---------------------------------------------------------------- the verdict cache


class VerdictCache:
    """Judge answers on disk. SQLite rather than a JSONL file: several runs may share one cache at once."""

    def __init__(self, path: Path | None):
        self.db = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path), timeout=60)
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT, answer TEXT, "
                "prompt_tokens INTEGER, completion_tokens INTEGER, created REAL)"
            )
            # The verdict letter's probability, for answers asked with log-probs (a table of its own, so
            # caches written before it keep working).
            self.db.execute("CREATE TABLE IF NOT EXISTS preferences (key TEXT PRIMARY KEY, prob_a REAL)")
            self.db.commit()

    @staticmethod
    def key(model: str, temperature: float, max_tokens: int, prompt: str, logprobs: bool = False) -> str:
        fields = [model, temperature, max_tokens, prompt] + (["logprobs"] if logprobs else [])
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()

    def get(self, key: str) -> tuple[str, float | None] | None:
        """(answer, P(A) or None), or None when the prompt was never answered."""
        if self.db is None:
            return None
        row = self.db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        prob = self.db.execute("SELECT prob_a FROM preferences WHERE key = ?", (key,)).fetchone()
        return row[0], None if prob is None else prob[0]

    def put(self, key: str, model: str, answer: str, prompt_tokens: int, completion_tokens: int, prob_a=None) -> None:
        if self.db is not None:
            self.db.execute(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?)",
                (key, model, answer, prompt_tokens, completion_tokens, time.time()),
            )
            if prob_a is not None:
                self.db.execute("INSERT OR REPLACE INTO preferences VALUES (?, ?)", (key, prob_a))
            self.db.commit()

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


# ---------------------------------------------------------------- the API client


@dataclass
class Outcome:
    """One judged prompt. status: ok, invalid (unparseable after retries), failed (API error), not_judged (cap)."""

    status: str
    """ok, invalid, failed or not_judged."""
    verdict: str | None = None
    """ "A" or "B" when the status is ok."""
    answer: str = ""
    """The judge's last answer, as it came."""
    prompt_tokens: int = 0
    """Prompt tokens the server counted, over every request for this prompt."""
    completion_tokens: int = 0
    """Completion tokens the server counted, over every request for this prompt."""
    cached: bool = False
    """Whether the answer came from the verdict cache (no call)."""
    prob_a: float | None = None
    """With judge.logprobs: P(A) / (P(A) + P(B)) at the verdict letter, where the server returned log-probs."""


def verdict_probability(logprobs, verdict: str) -> float | None:
    """P(A) / (P(A) + P(B)) at the answer's last token that reads as the verdict letter, from its top log-probs.

    `logprobs` is a chat completion choice's `logprobs.content` (tokens with `top_logprobs`). Token variants
    that read as the same letter (" A", "A", "**A") are summed. None when there is no such token, or
    neither letter is among its alternatives.
    """
    for token in reversed(logprobs or []):
        if _bare(token.token) != verdict:
            continue
        mass = {"A": 0.0, "B": 0.0}
        for alt in token.top_logprobs or []:
            letter = _bare(alt.token)
            if letter in mass:
                mass[letter] += math.exp(alt.logprob)
        total = mass["A"] + mass["B"]
        return mass["A"] / total if total > 0 else None
    return None


def public_url(url: str) -> str:
    """The URL without user:password or query string, safe to record."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


class ChatJudge:
    """Sends judge prompts concurrently; retries transient failures and unparseable answers; keeps to the caps.

    `config` is the judge evaluator's Config; the client reads model, base_url, api_key_env,
    temperature, max_tokens, parse_retries, concurrency, timeout_s, max_retries, backoff_s,
    max_backoff_s, max_calls and max_total_tokens from it.
    """

    def __init__(self, config, cache: VerdictCache):
        import openai

        self.config = config
        self.cache = cache
        self.base_url = (config.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL).rstrip("/")
        env = config.api_key_env
        key = os.environ.get(env, "") if env else ""
        if not key and self.base_url == OPENAI_URL:
            raise UserError(
                f"judge.model={config.model} needs an API key: export {env or 'OPENAI_API_KEY'}=<key> "
                "(or set judge.base_url to a local OpenAI-compatible server)"
            )
        # Local servers (llama.cpp, vLLM) usually need no key, but the client insists on one.
        # The client's own retries are off: ours count against the call cap and use our backoff.
        self._key = key
        self.client = openai.OpenAI(
            api_key=key or "no-key", base_url=self.base_url, timeout=config.timeout_s, max_retries=0
        )
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.reached = False  # any HTTP answer at all: the server exists, later failures are not "unreachable"
        self.stats = {"calls": 0, "retries": 0, "cache_hits": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self.first_error = ""

    def ping(self) -> None:
        """Fail now, not after training, if the server cannot be reached or refuses the key."""
        import openai

        try:
            self.client.models.list()
        except openai.APIConnectionError as exc:
            raise UserError(self._unreachable(exc)) from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise UserError(self._refused(exc)) from None
        except openai.APIStatusError:
            pass  # some servers have no /models; the chat endpoint may still work

    def _cache_key(self, prompt: str) -> str:
        cfg = self.config
        return VerdictCache.key(cfg.model, cfg.temperature, cfg.max_tokens, prompt, bool(getattr(cfg, "logprobs", 0)))

    def plan(self, prompts: list[str]) -> dict:
        """What judging `prompts` would cost, before any call: distinct prompts to send (the rest are cached or
        repeated), their prompt tokens estimated at 4 characters a token, and at most max_tokens answer tokens
        each (retries aside); the price estimate where prices are set."""
        cfg = self.config
        keys = {self._cache_key(p): p for p in prompts}
        to_send = [p for k, p in keys.items() if self.cache.get(k) is None]
        prompt_tokens = sum(math.ceil(len(p) / 4) for p in to_send)
        completion_tokens = len(to_send) * cfg.max_tokens
        cost = (prompt_tokens * cfg.price_prompt_per_1k + completion_tokens * cfg.price_completion_per_1k) / 1000
        return {
            "calls": len(to_send),
            "cached": len(keys) - len(to_send),
            "prompt_tokens_estimate": prompt_tokens,
            "completion_tokens_max": completion_tokens,
            "cost_usd_estimate": cost,
        }

    def judge(self, prompts: list[str], verdict_key: str) -> list[Outcome]:
        """One outcome per prompt, in order. Identical prompts are sent once; cached answers not at all."""
        from tqdm.auto import tqdm

        cfg = self.config
        outcomes: list[Outcome | None] = [None] * len(prompts)
        todo: dict[str, list[int]] = {}
        for i, prompt in enumerate(prompts):
            key = self._cache_key(prompt)
            hit = self.cache.get(key)
            if hit is None:
                todo.setdefault(key, []).append(i)
                continue
            answer, prob_a = hit
            verdict = parse_verdict(answer, verdict_key)
            outcomes[i] = Outcome("ok" if verdict else "invalid", verdict, answer, cached=True, prob_a=prob_a)
            self.stats["cache_hits"] += 1
        bar = tqdm(total=len(todo), desc="judge", unit="prompt", dynamic_ncols=True, leave=False)
        pool = ThreadPoolExecutor(max_workers=cfg.concurrency)
        futures = {pool.submit(self._ask, prompts[idx[0]], verdict_key): key for key, idx in todo.items()}
        try:
            for future in as_completed(futures):
                key, outcome = futures[future], future.result()
                if outcome.status in ("ok", "invalid"):
                    # Cache writes stay on this thread: an SQLite connection belongs to one thread.
                    self.cache.put(
                        key, cfg.model, outcome.answer, outcome.prompt_tokens, outcome.completion_tokens, outcome.prob_a
                    )
                for i in todo[key]:
                    outcomes[i] = outcome
                bar.update(1)
        finally:
            self.stop.set()  # on an error, queued comparisons return at once instead of calling
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
        return outcomes  # type: ignore[return-value]

    def _ask(self, prompt: str, verdict_key: str) -> Outcome:
        """Up to 1 + parse_retries answers, until one follows the verdict format."""
        answer, tokens = "", [0, 0]
        for _ in range(1 + self.config.parse_retries):
            reply = self._complete(prompt)
            if isinstance(reply, str) and reply in ("failed", "not_judged"):
                return Outcome(reply, None, answer, *tokens)
            answer, usage, logprobs = reply
            tokens = [tokens[0] + usage[0], tokens[1] + usage[1]]
            verdict = parse_verdict(answer, verdict_key)
            if verdict:
                prob_a = verdict_probability(logprobs, verdict) if logprobs else None
                return Outcome("ok", verdict, answer, *tokens, prob_a=prob_a)
        return Outcome("invalid", None, answer, *tokens)

    def _take_call(self) -> bool:
        cfg, s = self.config, self.stats
        with self.lock:
            if self.stop.is_set():
                return False
            if (cfg.max_calls and s["calls"] >= cfg.max_calls) or (
                cfg.max_total_tokens and s["prompt_tokens"] + s["completion_tokens"] >= cfg.max_total_tokens
            ):
                return False
            s["calls"] += 1
            return True

    def _complete(self, prompt: str):
        """(answer, (prompt_tokens, completion_tokens), token log-probs or None), or "failed" / "not_judged"."""
        import openai

        cfg, last = self.config, None
        # With judge.logprobs, the top alternatives of each answer token (OpenAI allows up to 20).
        extra = {"logprobs": True, "top_logprobs": 5} if getattr(cfg, "logprobs", False) else {}
        for attempt in range(cfg.max_retries + 1):
            if not self._take_call():
                return "not_judged"
            try:
                response = self.client.chat.completions.create(
                    model=cfg.model,
                    messages=[{"role": "user", "content": prompt}],
                    temperature=cfg.temperature,
                    max_tokens=cfg.max_tokens,
                    **extra,
                )
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                raise UserError(self._refused(exc)) from None
            except openai.NotFoundError as exc:
                raise UserError(
                    f"judge: {public_url(self.base_url)} has no model {cfg.model!r} ({self._message(exc)}); "
                    "set judge.model to a model the server serves"
                ) from None
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as exc:
                last = exc
                if not isinstance(exc, openai.APIConnectionError) or isinstance(exc, openai.APITimeoutError):
                    self.reached = True
                if attempt < cfg.max_retries and not self.stop.is_set():
                    with self.lock:
                        self.stats["retries"] += 1
                    _sleep(self._backoff(attempt, exc))
                continue
            except openai.APIStatusError as exc:
                # 400, 422 ...: this prompt (too long, say) fails however often it is sent.
                self.reached = True
                self._note_error(exc)
                return "failed"
            self.reached = True
            usage = response.usage
            tokens = (getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0)
            with self.lock:
                self.stats["prompt_tokens"] += tokens[0]
                self.stats["completion_tokens"] += tokens[1]
            content = response.choices[0].message.content if response.choices else None
            logprobs = getattr(response.choices[0], "logprobs", None) if response.choices else None
            return (content or "", tokens, getattr(logprobs, "content", None))
        if last is None:
            return "not_judged"
        if (
            isinstance(last, openai.APIConnectionError)
            and not isinstance(last, openai.APITimeoutError)
            and not self.reached
        ):
            raise UserError(self._unreachable(last))
        self._note_error(last)
        return "failed"

    def _backoff(self, attempt: int, exc) -> float:
        delay = self.config.backoff_s * 2**attempt
        response = getattr(exc, "response", None)
        try:
            retry_after = float(response.headers.get("retry-after")) if response is not None else None
        except (TypeError, ValueError):
            retry_after = None
        if retry_after is not None and retry_after > 0:
            delay = max(delay, retry_after)
        return min(delay, self.config.max_backoff_s)

    def _note_error(self, exc) -> None:
        with self.lock:
            if not self.first_error:
                self.first_error = f"{type(exc).__name__}: {self._message(exc)}"[:300]

    def _unreachable(self, exc) -> str:
        return (
            f"judge: cannot reach the judge API at {public_url(self.base_url)} ({self._message(exc)}); "
            "start the server or set judge.base_url=URL (or OPENAI_BASE_URL)"
        )

    def _refused(self, exc) -> str:
        env = self.config.api_key_env or "OPENAI_API_KEY"
        return (
            f"judge: {public_url(self.base_url)} refused the API key from ${env} ({self._message(exc)}); "
            f"export {env}=<a valid key> or set judge.api_key_env to the variable that holds it"
        )

    def _message(self, exc) -> str:
        """The error in one short line, with the key blanked should a server echo it back."""
        text = str(getattr(exc, "message", None) or exc or type(exc).__name__)
        cause = exc.__cause__ or exc.__context__
        if cause is not None and str(cause) and str(cause) not in text:
            text = f"{text}: {cause}"
        if self._key:
            text = text.replace(self._key, "***")
        return " ".join(text.split())[:200]
