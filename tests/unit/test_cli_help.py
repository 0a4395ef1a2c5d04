"""The CLI's help texts agree with the daemon's facts, and tables fit their width."""

from __future__ import annotations

from queuectl import cli, render
from queuectl.protocol import JobState, plain_number
from queuectld.config import QUEUE_SETTINGS


def test_settings_help_agrees_with_the_daemon() -> None:
    assert list(cli.SETTINGS_HELP) == list(QUEUE_SETTINGS)
    for key, (default, _) in cli.SETTINGS_HELP.items():
        assert float(default) == QUEUE_SETTINGS[key].default


def test_numbers_are_never_in_scientific_notation() -> None:
    assert plain_number(2**62) == "4611686018427387904"
    assert plain_number(0.001) == "0.001" and plain_number(7 * 86400.0) == "604800"
    assert plain_number(2.5) == "2.5"


def test_table_fits_its_width_by_eliding_elastic_columns() -> None:
    rows = [("a" * 30, "x" * 100), ("b", "short")]
    out = render.table(("id", "command"), rows, width=40, elastic=((0, 16), 1))
    assert max(len(line) for line in out.splitlines()) <= 40
    assert "a" * 15 + "…" in out and "short" in out
    assert "x" * 100 in render.table(("id", "command"), rows)


def test_commands_keep_their_spaces_on_one_line() -> None:
    assert render.shorten('echo "hello   world"') == 'echo "hello   world"'
    assert render.shorten("a\nb\tc") == "a\\nb\\tc"


def test_render_knows_every_state_in_order() -> None:
    assert tuple(s.value for s in JobState) == render.STATES
