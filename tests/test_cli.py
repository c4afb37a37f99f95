"""The command line (guardrail.cli), run in-process; one test runs ``python -m guardrail``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from guardrail.catalog.models import model_info
from guardrail.catalog.pricing import estimate_cost, prices_per_million
from guardrail.cli import main, usd
from guardrail.counting.messages import count_text

REPO = Path(__file__).resolve().parents[1]
TEXT_A = "The quick brown fox jumps over the lazy dog.\n"
TEXT_B = "Ünïcødé — naïve café, 日本語のテキスト, <|endoftext|> and emoji 🚀\n" * 50


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    status, out, err = run(capsys, *argv, "--json")
    assert status == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(TEXT_A, encoding="utf-8")
    b.write_text(TEXT_B, encoding="utf-8")
    return [a, b]


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("guardrail: error: ")
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- count


def test_count_one_file(capsys: pytest.CaptureFixture[str], files: list[Path]) -> None:
    status, out, err = run(capsys, "count", str(files[0]))
    assert status == 0 and err == ""
    tokens = count_text(TEXT_A, "gpt-4o")
    cost = estimate_cost("gpt-4o", tokens, 0)
    header, row = out.splitlines()
    assert header.split() == ["tokens", "window", "input", "$", "file"]
    cells = row.split()
    assert cells[0] == str(tokens)
    assert cells[1] == f"{tokens / model_info('gpt-4o').context_window:.2%}"
    assert Decimal(cells[2].removeprefix("$")) == cost
    assert cells[3] == str(files[0])


def test_count_json_shape_and_numbers(
    capsys: pytest.CaptureFixture[str], files: list[Path]
) -> None:
    doc = run_json(capsys, "count", *map(str, files))
    assert set(doc) == {"models", "files", "total"}
    assert doc["models"][0]["model"] == "gpt-4o"
    assert doc["models"][0]["context_window"] == model_info("gpt-4o").context_window
    window = model_info("gpt-4o").context_window
    expected = [count_text(TEXT_A, "gpt-4o"), count_text(TEXT_B, "gpt-4o")]
    for entry, path, tokens in zip(doc["files"], files, expected, strict=True):
        assert entry["path"] == str(path)
        assert entry["tokens"] == tokens
        assert entry["window_share"] == pytest.approx(tokens / window)
        assert isinstance(entry["input_cost_usd"], str)
        assert Decimal(entry["input_cost_usd"]) == estimate_cost("gpt-4o", tokens, 0)
    total = doc["total"]
    assert total["tokens"] == sum(expected)
    assert Decimal(total["input_cost_usd"]) == estimate_cost("gpt-4o", sum(expected), 0)
    assert total["window_share"] == pytest.approx(sum(expected) / window)


def test_count_multiple_files_prints_a_total(
    capsys: pytest.CaptureFixture[str], files: list[Path]
) -> None:
    status, out, _ = run(capsys, "count", *map(str, files))
    assert status == 0
    lines = out.splitlines()
    assert len(lines) == 4 and lines[-1].split()[-1] == "total"
    total = count_text(TEXT_A, "gpt-4o") + count_text(TEXT_B, "gpt-4o")
    assert lines[-1].split()[0] == f"{total:,}"


def test_count_reads_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _stdin(monkeypatch, TEXT_B.encode())
    doc = run_json(capsys, "count")
    assert doc["files"][0]["path"] == "-"
    assert doc["files"][0]["tokens"] == count_text(TEXT_B, "gpt-4o")


def test_count_dash_is_stdin_among_files(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, files: list[Path]
) -> None:
    _stdin(monkeypatch, TEXT_A.encode())
    doc = run_json(capsys, "count", str(files[1]), "-")
    assert [f["path"] for f in doc["files"]] == [str(files[1]), "-"]
    assert doc["files"][1]["tokens"] == count_text(TEXT_A, "gpt-4o")


def test_count_special_tokens_in_text_are_plain_text(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "special.txt"
    path.write_text("<|endoftext|><|im_start|>", encoding="utf-8")
    doc = run_json(capsys, "count", str(path))
    assert doc["files"][0]["tokens"] == count_text("<|endoftext|><|im_start|>", "gpt-4o")


def test_count_other_model(capsys: pytest.CaptureFixture[str], files: list[Path]) -> None:
    doc = run_json(capsys, "count", "--model", "gpt-4", str(files[1]))
    tokens = count_text(TEXT_B, "gpt-4")
    assert doc["files"][0]["tokens"] == tokens
    assert Decimal(doc["files"][0]["input_cost_usd"]) == estimate_cost("gpt-4", tokens, 0)
    assert doc["files"][0]["window_share"] == pytest.approx(tokens / 8192)


def test_count_several_models_side_by_side(
    capsys: pytest.CaptureFixture[str], files: list[Path]
) -> None:
    models = ["gpt-4", "gpt-4o", "claude-sonnet-4-5"]
    argv = ["count", str(files[1])] + [x for m in models for x in ("--model", m)]
    doc = run_json(capsys, *argv)
    assert [m["model"] for m in doc["models"]] == models
    assert [m["exact_tokenizer"] for m in doc["models"]] == [True, True, False]
    by_model = doc["files"][0]["by_model"]
    ref_tokens = count_text(TEXT_B, "gpt-4")
    ref_cost = estimate_cost("gpt-4", ref_tokens, 0)
    for entry, model in zip(by_model, models, strict=True):
        tokens = count_text(TEXT_B, model)
        cost = estimate_cost(model, tokens, 0)
        assert entry["model"] == model and entry["tokens"] == tokens
        assert Decimal(entry["input_cost_usd"]) == cost
        assert entry["window_share"] == pytest.approx(tokens / model_info(model).context_window)
        assert entry["delta_tokens"] == tokens - ref_tokens
        assert Decimal(entry["delta_input_cost_usd"]) == cost - ref_cost
    # The top-level figures are the first model's.
    assert doc["files"][0]["tokens"] == ref_tokens
    # The text report has the same columns, in the same order.
    status, out, _ = run(capsys, *argv)
    assert status == 0
    header = out.splitlines()[0]
    assert header.index("gpt-4 tokens") < header.index("gpt-4o tokens")
    assert header.index("gpt-4o tokens") < header.index("claude-sonnet-4-5 tokens")
    assert "Δ tokens" in header and "estimate" in out


def test_count_unknown_model_warns_once_and_counts_with_o200k(
    capsys: pytest.CaptureFixture[str], files: list[Path]
) -> None:
    status, out, err = run(
        capsys, "count", *map(str, files), "-m", "my-model", "-m", "my-model", "--json"
    )
    assert status == 0
    assert err.count("unknown model 'my-model'") == 1 and err.startswith("guardrail: warning:")
    doc = json.loads(out)
    assert doc["files"][0]["tokens"] == count_text(TEXT_A, "gpt-4o")  # o200k_base
    assert doc["files"][0]["input_cost_usd"] is None  # no price: shown, not an error
    status, out, err = run(capsys, "count", str(files[0]), "-m", "my-model")
    assert status == 0 and out.splitlines()[1].split()[2] == "-"


def test_count_unknown_model_strict_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], files: list[Path]
) -> None:
    status, out, err = run(capsys, "count", str(files[0]), "-m", "my-model", "--strict")
    assert status == 2 and out == ""
    assert "my-model" in _one_error_line(err)


def test_unpriced_known_model_shows_a_dash(
    capsys: pytest.CaptureFixture[str], files: list[Path]
) -> None:
    doc = run_json(capsys, "count", str(files[0]), "-m", "gpt-6.2-astra", "--strict")
    assert doc["files"][0]["input_cost_usd"] is None


# --------------------------------------------------------------------------- count errors


def test_missing_file(
    capsys: pytest.CaptureFixture[str], files: list[Path], tmp_path: Path
) -> None:
    missing = tmp_path / "nope.txt"
    status, out, err = run(capsys, "count", str(files[0]), str(missing))
    assert status == 1 and out == ""
    line = _one_error_line(err)
    assert str(missing) in line and "no such file" in line


def test_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, out, err = run(capsys, "count", str(tmp_path))
    assert status == 1 and out == ""
    assert "is a directory" in _one_error_line(err)


def test_non_utf8_names_the_file_and_offset(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("café".encode() + b" ok \xe9t\xe9")
    status, out, err = run(capsys, "count", str(path))
    assert status == 1 and out == ""
    line = _one_error_line(err)
    assert str(path) in line and "UTF-8" in line and "offset 9" in line and "0xe9" in line


def test_unreadable_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "secret.txt"
    path.write_text("x")
    real_open = open

    def denying_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        # chmod 0 does not stop root (CI runs as root), so the OS's refusal is played here.
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", denying_open)
    status, _, err = run(capsys, "count", str(path))
    assert status == 1
    line = _one_error_line(err)
    assert str(path) in line and "ermission denied" in line


def test_stdin_twice_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "count", "-", "-")
    assert status == 2 and "once" in _one_error_line(err)


@pytest.mark.parametrize(
    "argv",
    [["count", "--bogus"], ["--bogus"], [], ["frobnicate"], ["models", "--provider", "google"]],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    status, out, err = run(capsys, *argv)
    assert status == 2 and out == ""
    assert "usage:" in err and "error:" in err and "Traceback" not in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--version")
    assert status == 0 and out.startswith("guardrail ") and len(out.split()) >= 2


# --------------------------------------------------------------------------- progress


def test_progress_when_forced(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    paths = []
    for i in range(25):
        path = tmp_path / f"f{i}.txt"
        path.write_text(f"file {i}\n")
        paths.append(str(path))
    status, out, err = run(capsys, "count", *paths, "--progress")
    assert status == 0 and "counting: 25/25 files" in err
    assert "counting" not in out
    # capsys' stderr is not a terminal: no meter unless asked.
    status, _, err = run(capsys, "count", *paths)
    assert status == 0 and err == ""
    # ...and not for a few small files even when asked.
    status, _, err = run(capsys, "count", *paths[:3], "--progress")
    assert status == 0 and err == ""


# --------------------------------------------------------------------------- models


def _models_rows(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}


@pytest.mark.parametrize("name", ["gpt-4o", "gpt-6-sol", "claude-sonnet-4-5"])
def test_models_table(capsys: pytest.CaptureFixture[str], name: str) -> None:
    status, out, _ = run(capsys, "models")
    assert status == 0
    info = model_info(name, strict=True)
    price_in, price_out = prices_per_million(name)
    assert price_in is not None and price_out is not None
    row = _models_rows(out)[name]
    encoding = info.encoding + ("*" if info.encoding_assumed else "")
    assert row == [
        name,
        info.provider,
        encoding,
        f"{info.context_window:,}",
        f"{info.max_output_tokens:,}",
        usd(price_in),
        usd(price_out),
    ]


def test_models_table_figures_and_footnotes(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "models")
    rows = _models_rows(out)
    assert rows["gpt-4o"][3:] == ["128,000", "16,384", "2.5", "10"]
    assert rows["gpt-6-sol"][2] == "o200k_base*"
    assert rows["claude-sonnet-4-5"][3] == "200,000"
    assert "* encoding assumed" in out
    # Columns are aligned: every row is as long as the header.
    table = out.split("\n\n")[0].splitlines()
    starts = {line.index(line.split()[1]) for line in table}
    assert len(starts) == 1


def test_models_provider_filter(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "models", "--provider", "anthropic")
    names = list(_models_rows(out))
    assert "claude-sonnet-4-5" in names
    assert not [n for n in names if n.startswith(("gpt", "o1", "o3"))]


def test_models_json(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "models", "--json", "--provider", "openai")
    assert status == 0
    doc = {m["model"]: m for m in json.loads(out)}
    assert doc["gpt-4o"]["context_window"] == 128_000
    assert doc["gpt-4o"]["input_usd_per_mtok"] == "2.5"
    assert doc["gpt-6-sol"]["encoding_assumed"] is True
    assert all(m["provider"] == "openai" for m in doc.values())


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (Decimal("0.0000025"), "0.0000025"),
        (Decimal("2.5E-7"), "0.00000025"),
        (Decimal("0.0100"), "0.01"),
        (Decimal("1E+1"), "10"),
        (Decimal("0E-9"), "0"),
        (None, "-"),
    ],
)
def test_usd_never_uses_exponents(amount: Decimal | None, text: str) -> None:
    assert usd(amount) == text


# --------------------------------------------------------------------------- entry point


def test_python_dash_m_guardrail(tmp_path: Path) -> None:
    path = tmp_path / "prompt.txt"
    path.write_text(TEXT_B, encoding="utf-8")
    env = dict(os.environ)
    env.setdefault("TIKTOKEN_CACHE_DIR", str(REPO.parent / "shared" / "tiktoken-cache"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "guardrail", *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )

    ok = cli("count", str(path), "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["total"]["tokens"] == count_text(TEXT_B, "gpt-4o")
    missing = cli("count", str(tmp_path / "missing.txt"))
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.startswith("guardrail: error: ") and "Traceback" not in missing.stderr


def test_count_differences_from_an_estimate_are_marked(
    capsys: pytest.CaptureFixture[str], files: list[Path]
) -> None:
    argv = ["count", str(files[1]), "-m", "gpt-4", "-m", "gpt-4o", "-m", "claude-sonnet-4-5"]
    status, out, _ = run(capsys, *argv)
    assert status == 0
    header, row = out.splitlines()[:2]
    cells = row.split()
    gpt4o = count_text(TEXT_B, "gpt-4o") - count_text(TEXT_B, "gpt-4")
    claude = count_text(TEXT_B, "claude-sonnet-4-5") - count_text(TEXT_B, "gpt-4")
    assert f"{gpt4o:+,}" in cells  # exact against exact: a plain difference
    assert f"~{claude:+,}" in cells and f"{claude:+,}" not in cells
    assert any(c.startswith(("~+$", "~-$")) for c in cells)


def test_names_are_printed_as_they_are(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Tables are drawn with rich, whose markup must never apply to a file name."""
    (tmp_path / "d[").mkdir()
    paths = [tmp_path / "b[draft].txt", tmp_path / "d[" / "e]"]  # "[/e]" in the path
    for path in paths:
        path.write_text(TEXT_A, encoding="utf-8")
    status, out, err = run(capsys, "count", *map(str, paths))
    assert status == 0, err
    assert str(paths[0]) in out and str(paths[1]) in out


def test_an_output_file_that_cannot_be_opened(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["usage", "--ledger", f"sqlite:///{tmp_path}/l.db", "-o", str(tmp_path)]
    status, out, err = run(capsys, *argv)
    assert status != 0 and out == ""
    assert "Traceback" not in _one_error_line(err)
