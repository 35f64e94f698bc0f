"""What `cosigner run` does to start fast (docs/performance.md, "Ready ≤ 1 s"): it imports
only its own command's module, no PostgreSQL driver for a SQLite journal, and builds its
long-lived objects without the cycle collector.  The time itself is measured by
``python -m tests.bench.measure startup``, never asserted here."""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cosigner import cli
from cosigner.daemon.build import _is_postgres
from cosigner.store import SqliteJournal


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    raise AssertionError("no subcommands")


class TestCommandTable:
    @pytest.mark.parametrize("module", list(cli._COMMAND_MODULES))
    def test_table_is_what_each_module_registers(self, module: str) -> None:
        """The table that routes `cosigner COMMAND` names exactly what the module adds."""
        parser = argparse.ArgumentParser()
        importlib.import_module(module).register(
            parser.add_subparsers(dest="command", metavar="COMMAND"))
        assert tuple(_commands(parser)) == cli._COMMAND_MODULES[module]

    @pytest.mark.parametrize("argv", [None, [], ["--help"], ["-h", "run"], ["--version"],
                                      ["nonsense"], ["--", "run"]])
    def test_without_a_known_command_first_every_command_is_there(
            self, argv: list[str] | None) -> None:
        """Help, usage errors and options before the command see every command."""
        every = [c for commands in cli._COMMAND_MODULES.values() for c in commands]
        assert _commands(cli.build_parser(argv)) == every

    @pytest.mark.parametrize("command", ["run", "status", "journal", "policy", "sandbox"])
    def test_a_known_command_registers_its_module(self, command: str) -> None:
        (module,) = (m for m, cs in cli._COMMAND_MODULES.items() if command in cs)
        assert _commands(cli.build_parser([command, "--help"])) == list(
            cli._COMMAND_MODULES[module])


def test_run_imports_neither_the_other_commands_nor_psycopg() -> None:
    """A fresh interpreter building `cosigner run`'s parser (all `run` imports) leaves out
    the sandbox, the other commands' modules, the callback listener and psycopg."""
    code = ("import sys, json; from cosigner.cli import build_parser; build_parser(['run']); "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2]).stdout
    loaded = set(json.loads(out))
    assert "cosigner.daemon.build" in loaded  # the daemon itself is there
    unwanted = {"psycopg", "cosigner.store.postgres", "cosigner.sandbox", "cosigner.cli.sandbox",
                "cosigner.cli.policy", "cosigner.cli.shard", "cosigner.cli.audit",
                "cosigner.cli.otc", "cosigner.cli.orders", "cosigner.callbacks.listener",
                "cosigner.callbacks.forwarder", "Crypto"}
    assert loaded.isdisjoint(unwanted), sorted(loaded & unwanted)


class TestIsPostgres:
    def test_sqlite_journal(self, tmp_path: Path) -> None:
        assert not _is_postgres(SqliteJournal(str(tmp_path / "j.db")))

    def test_postgres_journal(self) -> None:
        """Once a PostgreSQL journal exists its module is loaded, and it is recognised."""
        from cosigner.store.postgres import PostgresJournal  # constructing does not connect
        assert _is_postgres(PostgresJournal("postgresql://u:p@127.0.0.1:1/db"))


class TestLongLived:
    @pytest.fixture(autouse=True)
    def _restore(self) -> Iterator[None]:
        enabled = gc.isenabled()
        yield
        gc.unfreeze()  # give this test process's objects back to the collector
        (gc.enable if enabled else gc.disable)()

    def test_collector_paused_then_frozen(self) -> None:
        gc.enable()
        with cli.long_lived(freeze=True):
            assert not gc.isenabled()
            built = [[i] for i in range(1000)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= len(built)

    def test_without_freeze_only_paused(self) -> None:
        """What main(argv) does for a caller such as a test: nothing is frozen."""
        gc.enable()
        before = gc.get_freeze_count()
        with cli.long_lived(freeze=False):
            assert not gc.isenabled()
        assert gc.isenabled()
        assert gc.get_freeze_count() == before

    def test_restored_after_an_error(self) -> None:
        gc.enable()
        with pytest.raises(RuntimeError), cli.long_lived(freeze=True):
            raise RuntimeError("start-up failed")
        assert gc.isenabled()

    def test_a_disabled_collector_stays_disabled(self) -> None:
        gc.disable()
        with cli.long_lived(freeze=True):
            pass
        assert not gc.isenabled()

    def test_main_with_argv_does_not_freeze(self, capsys: pytest.CaptureFixture[str]) -> None:
        gc.enable()
        before = gc.get_freeze_count()
        with pytest.raises(SystemExit):
            cli.main(["--version"])
        assert "cosigner" in capsys.readouterr().out
        assert gc.isenabled()
        assert gc.get_freeze_count() == before


class TestCollectorThresholds:
    def test_the_daemon_process_collects_less_often(self) -> None:
        """`cosigner run` and `bench` (as processes) raise the collector's thresholds; a
        caller of main(argv) keeps its own."""
        before = gc.get_threshold()
        try:
            cli.tune_collector(argparse.Namespace(program=False))
            assert gc.get_threshold() == before
            cli.tune_collector(argparse.Namespace(program=True))
            assert gc.get_threshold() == cli.DAEMON_GC_THRESHOLDS
        finally:
            gc.set_threshold(*before)

    def test_a_run_process_applies_them(self, tmp_path: Path) -> None:
        """The real command: `cosigner run` reaches tune_collector before it builds."""
        code = ("import gc, sys\n"
                "from cosigner import cli\n"
                "from cosigner.cli import daemon\n"
                "seen = []\n"
                "daemon.load_settings = lambda: None\n"
                "daemon.daemon_spec = lambda settings: None\n"
                "daemon.build_daemon = lambda *a, **k: (seen.append(gc.get_threshold()),"
                " sys.exit(0))\n"
                "sys.argv = ['cosigner', 'run', '--once']\n"
                "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
                "print(seen)\n")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path, check=False,
                              env={"PATH": "/usr/bin:/bin", "COSIGNER_LOG_LEVEL": "error"})
        assert done.stdout.strip() == str([cli.DAEMON_GC_THRESHOLDS]), done.stderr[-800:]
