"""The cost arithmetic (GA and beta usage, cached tokens, unknown models), the price table (the
shipped one, a user's own, broken ones) and the docs' worked example, checked against the code."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from openai.types.beta.realtime.realtime_response_usage import RealtimeResponseUsage as BetaUsage
from openai.types.realtime.realtime_response_usage import RealtimeResponseUsage as GaUsage

from voicerelay.cost import (
    PRICES_ENV,
    Cost,
    Prices,
    default_prices,
    format_usd,
    load_prices,
    parse_prices,
    session_cost,
    upstream_estimates,
    usage_cost,
)
from voicerelay.errors import UsageError
from voicerelay.protocol.config import RealtimeConfig
from voicerelay.protocol.events import Dialect
from voicerelay.protocol.session import RealtimeSession
from voicerelay.upstream import embedded_spec, remote_spec

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cost.md"

#: Round numbers, so that every figure below can be checked by hand.
PRICES = Prices("m", text_input=4.0, text_cached_input=0.4, text_output=16.0, audio_input=32.0,
                audio_cached_input=0.4, audio_output=64.0)

GA_USAGE = {"total_tokens": 1630, "input_tokens": 1250, "output_tokens": 380,
            "input_token_details": {"text_tokens": 850, "audio_tokens": 400, "image_tokens": 0, "cached_tokens": 768,
                                    "cached_tokens_details": {"text_tokens": 640, "audio_tokens": 128,
                                                              "image_tokens": 0}},
            "output_token_details": {"text_tokens": 80, "audio_tokens": 300}}


def usd(value: float | None) -> float:
    assert value is not None
    return round(value, 9)


# ----------------------------------------------------------------------------------- arithmetic


def test_each_kind_of_token_is_billed_at_its_own_price() -> None:
    def one(inp: dict[str, Any], out: dict[str, int]) -> float:
        return usd(usage_cost({"input_token_details": inp, "output_token_details": out}, PRICES).usd)

    assert one({"text_tokens": 1_000_000}, {}) == 4.0
    assert one({"audio_tokens": 1_000_000}, {}) == 32.0
    assert one({}, {"text_tokens": 1_000_000}) == 16.0
    assert one({}, {"audio_tokens": 1_000_000}) == 64.0
    cached_text = {"text_tokens": 1_000_000, "cached_tokens": 1_000_000,
                   "cached_tokens_details": {"text_tokens": 1_000_000, "audio_tokens": 0}}
    assert one(cached_text, {}) == 0.4  # cached tokens are part of the input, at the cached price
    cached_audio = {"audio_tokens": 500_000, "cached_tokens": 250_000,
                    "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 250_000}}
    assert one(cached_audio, {}) == 250_000 * 32 / 1e6 + 250_000 * 0.4 / 1e6


def test_a_ga_usage_validated_by_the_sdk() -> None:
    GaUsage.model_validate(GA_USAGE)  # the shape OpenAI's GA SDK reads
    assert set(GA_USAGE["input_token_details"]) <= set(GaUsage.model_fields["input_token_details"].annotation
                                                        .__args__[0].model_fields)  # type: ignore[union-attr]
    cost = usage_cost(GA_USAGE, PRICES)
    assert usd(cost.usd) == 0.0303312 and not cost.estimate and cost.note == ""


def test_a_beta_usage_with_the_cached_split_costs_the_same_as_ga() -> None:
    beta = {k: v for k, v in GA_USAGE.items()}
    beta["input_token_details"] = {k: v for k, v in GA_USAGE["input_token_details"].items() if k != "image_tokens"}
    BetaUsage.model_validate(beta)
    assert usd(usage_cost(beta, PRICES).usd) == 0.0303312


def test_a_beta_usage_without_the_cached_split() -> None:
    beta = {"input_tokens": 300, "output_tokens": 0, "total_tokens": 300,
            "input_token_details": {"text_tokens": 100, "audio_tokens": 200, "cached_tokens": 150},
            "output_token_details": {"text_tokens": 0, "audio_tokens": 0}}
    BetaUsage.model_validate(beta)  # exactly the beta SDK's fields
    cost = usage_cost(beta, PRICES)
    # 150 cached, split 1:2 like the input: 50 text, 100 audio; marked as an estimate
    assert usd(cost.usd) == usd((50 * 4 + 50 * 0.4 + 100 * 32 + 100 * 0.4) / 1e6)
    assert cost.estimate and "split" in cost.note
    only_text = {"input_token_details": {"text_tokens": 100, "audio_tokens": 0, "cached_tokens": 100},
                 "output_token_details": {}}
    exact = usage_cost(only_text, PRICES)  # one kind of input: the split is certain
    assert usd(exact.usd) == usd(100 * 0.4 / 1e6) and not exact.estimate


def test_an_unknown_model_is_said_never_guessed() -> None:
    table = load_prices()
    cost = usage_cost(GA_USAGE, table.find("gpt-realtime-9"), model="gpt-realtime-9")
    assert cost.usd is None and cost.text() == "cost unknown"
    assert cost.note == "model gpt-realtime-9 is not in the price table"
    assert cost.report() == {"usd": None, "estimate": False, "note": cost.note}
    # a snapshot is found through its alias only: an unlisted date is not assumed to be its alias
    assert table.find("gpt-realtime-2025-08-28") is table.find("gpt-realtime")
    assert table.find("gpt-realtime-2099-01-01") is None
    assert table.find("gpt-4o-realtime-preview-2024-10-01") != table.find("gpt-4o-realtime-preview")


def test_what_cannot_be_priced_is_unknown() -> None:
    assert usage_cost({"input_tokens": 10, "output_tokens": 3}, PRICES).usd is None  # no details
    images = {"input_token_details": {"image_tokens": 10}, "output_token_details": {}}
    assert usage_cost(images, PRICES).usd is None and "image" in usage_cost(images, PRICES).note
    with_image_price = Prices("m", 4.0, 0.4, 16.0, 32.0, 0.4, 64.0, image_input=5.0, image_cached_input=0.5)
    assert usd(usage_cost(images, with_image_price).usd) == usd(10 * 5 / 1e6)
    assert usage_cost(None, PRICES) == Cost(0.0)  # no usage (yet): nothing billed


def test_dollars_as_shown() -> None:
    assert format_usd(0.0303312) == "$0.0303"
    assert format_usd(0.0303312, estimate=True) == "~$0.0303"
    assert format_usd(1234.5) == "$1,234.50"
    assert format_usd(None) == "cost unknown"


# ----------------------------------------------------------------------------------- the session


def answered(session: RealtimeSession, usage: dict[str, Any], response_id: str, now: float) -> None:
    session.server_event({"type": "input_audio_buffer.committed", "item_id": f"item_{response_id}"}, now)
    session.server_event({"type": "response.created", "response": {"id": response_id}}, now)
    session.server_event({"type": "response.done", "response": {"id": response_id, "status": "completed",
                                                                "usage": usage}}, now + 0.5)


def a_session(model: str | None) -> RealtimeSession:
    session = RealtimeSession(RealtimeConfig(), Dialect.GA)
    session.connected()
    reported = {"model": model} if model else {}
    session.server_event({"type": "session.created", "session": reported}, 0.0)
    session.server_event({"type": "session.updated", "session": {"type": "realtime", **reported}}, 0.0)
    return session


def test_a_session_costs_the_sum_of_its_turns_at_the_model_the_server_reports() -> None:
    session = a_session("gpt-realtime-mini-2025-10-06")  # the server's snapshot, priced by alias
    answered(session, GA_USAGE, "resp_1", 1.0)
    answered(session, GA_USAGE, "resp_2", 3.0)
    cost = session_cost(session, estimate=False)
    assert cost.model == "gpt-realtime-mini-2025-10-06" and len(cost.turns) == 2
    mini = load_prices().find("gpt-realtime-mini")
    assert mini is not None and mini.audio_output == 20.0
    one = usd(usage_cost(GA_USAGE, mini).usd)
    assert [usd(t.usd) for t in cost.turns] == [one, one] and usd(cost.total.usd) == usd(2 * one)
    assert cost.report()["prices"]["date"] == load_prices().date


def test_a_session_without_a_reported_model_uses_the_configured_one() -> None:
    session = a_session(None)
    answered(session, GA_USAGE, "resp_1", 1.0)
    assert session_cost(session, estimate=False).model == "gpt-realtime"
    unknown = a_session("my-finetune")
    answered(unknown, GA_USAGE, "resp_1", 1.0)
    cost = session_cost(unknown, estimate=False)
    assert cost.total.usd is None and cost.turns[0].usd is None and "my-finetune" in cost.total.note


def test_the_embedded_backend_is_labelled_an_estimate() -> None:
    assert upstream_estimates(embedded_spec("ws://127.0.0.1:1/v1/realtime", "gpt-realtime", Dialect.GA))
    assert not upstream_estimates(remote_spec("openai", "gpt-realtime", Dialect.GA, {"OPENAI_API_KEY": "sk-x"}))
    assert not upstream_estimates(None)
    session = a_session("gpt-realtime")
    answered(session, GA_USAGE, "resp_1", 1.0)
    cost = session_cost(session, estimate=True)
    assert cost.total.estimate and cost.turns[0].estimate and "estimate" in cost.total.note
    assert cost.total.text() == "~$0.0303"


# ----------------------------------------------------------------------------------- the table


def test_the_shipped_table_is_dated_sourced_and_has_every_price() -> None:
    table = load_prices(env={})
    assert table.origin == default_prices() and re.fullmatch(r"\d{4}-\d{2}-\d{2}", table.date)
    assert "openai.com" in table.source
    for model in ("gpt-realtime", "gpt-realtime-mini", "gpt-4o-realtime-preview", "gpt-4o-mini-realtime-preview"):
        prices = table.find(model)
        assert prices is not None and prices.audio_output > prices.audio_input > prices.audio_cached_input


CUSTOM = """
date = "2030-01-01"
source = "my negotiated prices"
[models.house-model]
aliases = ["house-model-v2"]
text_input = 1
text_cached_input = 0.5
text_output = 2
audio_input = 10
audio_cached_input = 1
audio_output = 20
"""


def test_a_users_own_table_through_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(CUSTOM)
    table = load_prices(env={PRICES_ENV: str(path)})
    assert table.origin == str(path) and table.date == "2030-01-01" and table.find("gpt-realtime") is None
    prices = table.find("house-model-v2")
    assert prices is not None and prices.model == "house-model"
    out = {"input_token_details": {}, "output_token_details": {"audio_tokens": 1_000_000}}
    assert usd(usage_cost(out, prices).usd) == 20.0
    assert parse_prices(CUSTOM, "mine.toml").find("house-model") == prices  # the same table, without a file


@pytest.mark.parametrize(("text", "problem"), [
    ("date = ", "not valid TOML"),
    ('source = "x"\n[models.a]\ntext_input = 1', "'date' is missing"),
    ('date = "d"\nsource = "s"', "no [models.NAME] tables"),
    (CUSTOM.replace("audio_output = 20", ""), "models.house-model: 'audio_output' is missing"),
    (CUSTOM.replace("audio_output = 20", 'audio_output = "20"'), "models.house-model.audio_output must be a number"),
    (CUSTOM.replace("audio_output = 20", "audio_output = -1"), "must be a number of dollars"),
    (CUSTOM.replace("audio_output = 20", "audio_output = 20\naudio_ouput = 3"), "unknown key 'audio_ouput'"),
    (CUSTOM + CUSTOM.split("\n", 3)[3].replace("house-model]", "other]"), "model 'house-model-v2' is priced twice"),
    (CUSTOM.replace('date = "2030-01-01"', 'date = "2030-01-01"\ncurrency = "EUR"'), "only USD"),
])
def test_a_broken_table_is_a_usage_error_naming_the_file_and_the_problem(tmp_path: Path, text: str,
                                                                         problem: str) -> None:
    path = tmp_path / f"broken{abs(hash(text))}.toml"
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        load_prices(path)
    message = str(info.value)
    assert message.startswith(f"price table {path}: ") and problem in message and "\n" not in message
    assert info.value.exit_code == 2


def test_a_missing_table_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"price table .*nope\.toml \(VOICERELAY_PRICES\): no such file"):
        load_prices(env={PRICES_ENV: str(tmp_path / "nope.toml")})
    with pytest.raises(UsageError, match="is a folder"):
        load_prices(tmp_path)


def test_the_table_is_package_data() -> None:
    """It is in the installed package, found without the source tree (a wheel built from it has it)."""
    text = subprocess.run([sys.executable, "-c", "from importlib import resources; "
                           "print((resources.files('voicerelay') / 'data' / 'prices.toml').read_text())"],
                          capture_output=True, text=True, check=True).stdout
    assert "[models.\"gpt-realtime\"]" in text
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert re.search(r'\[tool\.setuptools\.package-data\]\nvoicerelay = \[[^\]]*"data/\*\.toml"', pyproject)


# ----------------------------------------------------------------------------------- the docs


def test_the_worked_example_in_the_docs() -> None:
    """docs/cost.md's usage, prices and result are the code's: change one and this fails."""
    page = DOCS.read_text()
    [usage_json] = re.findall(r"```json\n(.*?)```", page, re.DOTALL)
    usage = json.loads(usage_json)
    row = re.search(r"^\| (gpt-realtime) \|(.*)\|$", page, re.MULTILINE)
    assert row is not None
    documented = [float(cell) for cell in row[2].split("|")]
    prices = load_prices(env={}).find(row[1])
    assert prices is not None
    assert documented == [prices.text_input, prices.text_cached_input, prices.text_output, prices.audio_input,
                          prices.audio_cached_input, prices.audio_output]
    result = re.search(r"Result: \*\*\$([0-9.]+)\*\* \(([0-9,.]+) / 1,000,000\), shown as `(\$[0-9.]+)`", page)
    assert result is not None
    cost = usage_cost(usage, prices)
    assert usd(cost.usd) == float(result[1]) == float(result[2].replace(",", "")) / 1e6
    assert cost.text() == result[3]
