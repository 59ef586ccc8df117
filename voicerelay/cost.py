"""What a Realtime session costs in dollars, from the ``usage`` of each ``response.done``.

Theory of operation
-------------------
Every ``response.done`` carries the response's ``usage`` (the same shape in GA and beta; beta
may lack ``cached_tokens_details``)::

    input_tokens, output_tokens, total_tokens
    input_token_details  {text_tokens, audio_tokens, image_tokens, cached_tokens,
                          cached_tokens_details {text_tokens, audio_tokens, image_tokens}}
    output_token_details {text_tokens, audio_tokens}

Cached tokens are a *part* of the input tokens, billed at the cached price instead. So, with the
prices of the model (US dollars per 1M tokens, from the price table)::

    dollars = ( (text_in  - cached_text)  * text_input  + cached_text  * text_cached_input
              + (audio_in - cached_audio) * audio_input + cached_audio * audio_cached_input
              + (image_in - cached_image) * image_input + cached_image * image_cached_input
              + text_out * text_output + audio_out * audio_output ) / 1_000_000

A turn costs the sum of its responses (a tool call makes two; ``Turn.usage`` is already that
sum); a session costs the sum of its turns and of its out-of-band ``say()`` responses.

What is not known is said, never guessed: a model the table does not list, a usage without its
token details, image tokens without an image price -> the cost is unknown (``usd`` is None, and
``note`` says why). Figures that are estimates are marked ``estimate``: the embedded backend
invents its usage (no model ran), and a beta usage with cached tokens but no text/audio split
is split in proportion to the text and audio input.

Everything here is arithmetic on plain values except :func:`load_prices`, the one function
that reads the table (the file shipped in ``voicerelay/data/prices.toml``, or the one named by
the ``VOICERELAY_PRICES`` environment variable); a table it cannot use is a
:class:`~voicerelay.errors.UsageError` naming the file and the problem.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import tomllib
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError
from .protocol.session import add_usage

if TYPE_CHECKING:
    from .protocol.session import RealtimeSession, Turn
    from .upstream import UpstreamSpec

__all__ = ["PRICES_ENV", "Cost", "PriceTable", "Prices", "SessionCost", "cost_state", "default_prices",
           "format_usd", "load_prices", "parse_prices", "session_cost", "turn_cost", "upstream_estimates", "usage_cost",
           "usage_state"]

#: The environment variable that points voicerelay at a price table of the user's own.
PRICES_ENV = "VOICERELAY_PRICES"
#: Prices every model must have (USD per 1M tokens); image prices are optional.
REQUIRED = ("text_input", "text_cached_input", "text_output", "audio_input", "audio_cached_input", "audio_output")
OPTIONAL = ("image_input", "image_cached_input")
PER = 1_000_000

#: What the embedded backend's spec is called (:func:`voicerelay.upstream.embedded_spec`).
EMBEDDED_LABEL = "embedded backend"
ESTIMATED_USAGE = "the embedded backend's usage figures are estimates (no model ran)"


@dataclasses.dataclass(frozen=True, slots=True)
class Prices:
    """One model's prices, US dollars per 1M tokens."""

    model: str
    text_input: float
    text_cached_input: float
    text_output: float
    audio_input: float
    audio_cached_input: float
    audio_output: float
    image_input: float | None = None
    image_cached_input: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class PriceTable:
    """The price table: its models (by name and alias), the date of its prices and their source."""

    models: Mapping[str, Prices]
    date: str
    source: str
    origin: str  # the file it was read from

    def find(self, model: str | None) -> Prices | None:
        """The prices of ``model`` (a name or an alias, exactly), or None when the table lacks it."""
        return None if not model else self.models.get(model)

    def describe(self) -> dict[str, str]:
        return {"date": self.date, "source": self.source, "file": self.origin}


def parse_prices(text: str, origin: str, label: str | None = None) -> PriceTable:
    """A price table from the TOML ``text`` of the file ``origin``; raises :class:`UsageError`
    (``price table FILE: problem``, FILE said as ``label`` if given) when it cannot be used."""

    def bad(problem: str) -> UsageError:
        return UsageError(f"price table {label or origin}: {problem}")

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise bad(f"not valid TOML: {exc}") from None
    for key in ("date", "source"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise bad(f"'{key}' is missing (say when the prices were taken, and from where)")
    if data.get("currency", "USD") != "USD":
        raise bad(f"currency {data['currency']!r}: only USD prices are supported")
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise bad("no [models.NAME] tables")
    found: dict[str, Prices] = {}
    for name, entry in models.items():
        if not isinstance(entry, dict):
            raise bad(f"models.{name} is not a table")
        unknown = sorted(set(entry) - set(REQUIRED) - set(OPTIONAL) - {"aliases"})
        if unknown:
            raise bad(f"models.{name}: unknown key {unknown[0]!r} (expected {', '.join(REQUIRED + OPTIONAL)})")
        values: dict[str, float] = {}
        for key in REQUIRED + OPTIONAL:
            value = entry.get(key)
            if value is None and key in OPTIONAL:
                continue
            if value is None:
                raise bad(f"models.{name}: '{key}' is missing")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise bad(f"models.{name}.{key} must be a number of dollars per 1M tokens, not {value!r}")
            values[key] = float(value)
        aliases = entry.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
            raise bad(f"models.{name}.aliases must be a list of model names")
        prices = Prices(name, **values)
        for key in (name, *aliases):
            if key in found:
                raise bad(f"model {key!r} is priced twice")
            found[key] = prices
    return PriceTable(found, data["date"].strip(), data["source"].strip(), origin)


def default_prices() -> str:
    """Where the shipped table is (copy it to make your own)."""
    return str(resources.files("voicerelay") / "data" / "prices.toml")


def load_prices(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> PriceTable:
    """The price table: ``path``, else the file named by ``VOICERELAY_PRICES``, else the shipped
    one. Read once per file and process."""
    env = os.environ if env is None else env
    if path is not None:
        return _load(str(Path(path).expanduser()), False)
    chosen = env.get(PRICES_ENV) or None
    return _load(None if chosen is None else str(Path(chosen).expanduser()), True)


@functools.lru_cache(maxsize=8)
def _load(path: str | None, from_env: bool) -> PriceTable:
    if path is None:
        return parse_prices((resources.files("voicerelay") / "data" / "prices.toml").read_text("utf-8"),
                            default_prices())
    where = f"{path} ({PRICES_ENV})" if from_env else path
    try:
        text = Path(path).read_text("utf-8")
    except FileNotFoundError:
        raise UsageError(f"price table {where}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"price table {where}: is a folder, not a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"price table {where}: cannot be read: {exc}") from None
    return parse_prices(text, path, where)


# ----------------------------------------------------------------------------------- arithmetic


@dataclasses.dataclass(frozen=True, slots=True)
class Cost:
    """Dollars, or None when they cannot be known (``note`` says why); ``estimate`` when the figures
    are estimates (``note`` says why, too)."""

    usd: float | None
    estimate: bool = False
    note: str = ""

    def text(self) -> str:
        """``$0.0123``, ``~$0.0123`` (an estimate) or ``cost unknown``."""
        return format_usd(self.usd, self.estimate)

    def line(self) -> str:
        """``text()`` with what qualifies it: ``~$0.0123 (estimate)``, ``cost unknown (model x is not
        in the price table)``."""
        if self.usd is None:
            return f"{self.text()} ({self.note})" if self.note else self.text()
        return f"{self.text()} (estimate)" if self.estimate else self.text()

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"usd": None if self.usd is None else round(self.usd, 6), "estimate": self.estimate}
        if self.note:
            out["note"] = self.note
        return out


def format_usd(usd: float | None, estimate: bool = False) -> str:
    """Dollars as a person reads them: 4 decimals below a dollar, 2 above; ``~`` for an estimate."""
    if usd is None:
        return "cost unknown"
    text = f"${usd:.4f}" if usd < 1 else f"${usd:,.2f}"
    return "~" + text if estimate else text


def _count(details: Any, key: str) -> int:
    value = details.get(key) if isinstance(details, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_cost(usage: Mapping[str, Any] | None, prices: Prices | None, *, model: str | None = None,
               estimate: bool = False, note: str = "") -> Cost:
    """The dollars of one ``usage`` (one response's, or a sum of them) at ``prices`` (None: the
    model is not in the table, so the cost is unknown). ``estimate``/``note``: the figures are
    estimates, and why."""
    notes = [note] if note else []
    if prices is None:
        return Cost(None, estimate, f"model {model or '(none reported)'} is not in the price table")
    if not isinstance(usage, Mapping) or not usage:
        return Cost(0.0, estimate, "; ".join(notes))
    inp, out = usage.get("input_token_details"), usage.get("output_token_details")
    if not isinstance(inp, dict) or not isinstance(out, dict):
        return Cost(None, estimate, "the usage has no input/output token details")
    text_in, audio_in, image_in = (_count(inp, k) for k in ("text_tokens", "audio_tokens", "image_tokens"))
    cached = _count(inp, "cached_tokens")
    split = inp.get("cached_tokens_details")
    if isinstance(split, dict):
        cached_text, cached_audio, cached_image = (float(_count(split, k))
                                                   for k in ("text_tokens", "audio_tokens", "image_tokens"))
    elif cached == 0:
        cached_text = cached_audio = cached_image = 0.0
    else:  # beta without the split: in proportion to the input (exact when one kind is zero)
        whole = text_in + audio_in + image_in or 1
        cached_text, cached_audio, cached_image = (cached * n / whole for n in (text_in, audio_in, image_in))
        if sum(1 for n in (text_in, audio_in, image_in) if n) > 1:
            estimate = True
            notes.append("cached tokens without their text/audio split: split in proportion to the input")
    if image_in and (prices.image_input is None or (cached_image and prices.image_cached_input is None)):
        return Cost(None, estimate, f"the usage has image tokens and {prices.model} has no image price")
    dollars = ((text_in - cached_text) * prices.text_input + cached_text * prices.text_cached_input
               + (audio_in - cached_audio) * prices.audio_input + cached_audio * prices.audio_cached_input
               + _count(out, "text_tokens") * prices.text_output + _count(out, "audio_tokens") * prices.audio_output)
    if image_in:
        assert prices.image_input is not None
        dollars += (image_in - cached_image) * prices.image_input + cached_image * (prices.image_cached_input or 0)
    return Cost(dollars / PER, estimate, "; ".join(notes))


def sum_usage(usages: Iterable[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    total: dict[str, Any] | None = None
    for usage in usages:
        total = add_usage(total, usage)
    return total


@dataclasses.dataclass(frozen=True, slots=True)
class SessionCost:
    """A session's cost: in total and per turn (in the order of ``session.turns``)."""

    model: str | None
    total: Cost
    turns: tuple[Cost, ...]
    table: PriceTable

    def report(self) -> dict[str, Any]:
        return {"model": self.model, **self.total.report(), "prices": self.table.describe()}


def session_model(session: RealtimeSession) -> str | None:
    """The model the server says it runs (``session.created``), else the one asked for."""
    reported = session.session.get("model") if isinstance(session.session, dict) else None
    return str(reported) if reported else session.config.model or None


def turn_cost(session: RealtimeSession, turn: Turn, *, estimate: bool, table: PriceTable | None = None) -> Cost:
    """The cost of one turn of ``session`` (all its responses)."""
    table = load_prices() if table is None else table
    model = session_model(session)
    return usage_cost(turn.usage, table.find(model), model=model, estimate=estimate,
                      note=ESTIMATED_USAGE if estimate else "")


def session_cost(session: RealtimeSession, *, estimate: bool, table: PriceTable | None = None) -> SessionCost:
    """The cost of a :class:`~voicerelay.protocol.session.RealtimeSession` so far. ``estimate``:
    its usage figures are estimates (:func:`upstream_estimates`)."""
    table = load_prices() if table is None else table
    model = session_model(session)
    prices = table.find(model)
    note = ESTIMATED_USAGE if estimate else ""
    turns = tuple(turn_cost(session, t, estimate=estimate, table=table) for t in session.turns)
    total = usage_cost(sum_usage([*(t.usage for t in session.turns), session.say_usage]), prices, model=model,
                       estimate=estimate, note=note)
    return SessionCost(model, total, turns, table)


def upstream_estimates(spec: UpstreamSpec | None) -> bool:
    """Are the usage figures of this upstream estimates? True for the embedded backend that
    ``--backend embedded`` starts (it has no model to count tokens with)."""
    return spec is not None and spec.describe().startswith(EMBEDDED_LABEL)


def cost_state(session: RealtimeSession, spec: UpstreamSpec | None) -> dict[str, Any]:
    """The ``cost`` of a session's state (``inspect``, the TUI): never raises; a price table that
    cannot be used is said in ``note``."""
    estimate = upstream_estimates(spec)
    try:
        cost = session_cost(session, estimate=estimate)
    except UsageError as exc:
        return {"model": session_model(session), "usd": None, "estimate": estimate, "note": str(exc)}
    return {"model": cost.model, **cost.total.report()}


def usage_state(usage: Mapping[str, Any] | None, model: str | None, *, estimate: bool) -> dict[str, Any]:
    """:func:`cost_state` for a session known only by its summed ``usage`` and ``model`` (one a
    proxy watches): the same shape, never raises."""
    try:
        table = load_prices()
    except UsageError as exc:
        return {"model": model, "usd": None, "estimate": estimate, "note": str(exc)}
    cost = usage_cost(usage, table.find(model), model=model, estimate=estimate,
                      note=ESTIMATED_USAGE if estimate else "")
    return {"model": model, **cost.report()}
