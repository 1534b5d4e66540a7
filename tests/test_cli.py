"""The CLI, called in-process: exit codes, messages, files."""

from __future__ import annotations

import json

import pytest

import expunge
from expunge.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_strategies_lists_every_registered_name(capsys):
    code, out, _ = run(capsys, "strategies")
    assert code == 0
    for name in expunge.available_strategies():
        assert name in out


def test_fit_forget_ledger_round_trip(capsys, tmp_path):
    store = str(tmp_path / "s")
    code, out, err = run(capsys, "fit", "--strategy", "sisa", "--store", store, "--model",
                         "logreg", "--n-shards", "3", "--n-slices", "2", "--epochs", "2",
                         "--quiet")
    assert code == 0, err
    strategy = expunge.open(store)
    assert (strategy.n_shards, strategy.n_slices, strategy.epochs) == (3, 2, 2)
    strategy.close()
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("5\n6, 7\n")
    code, out, err = run(capsys, "forget", "--store", store, "--ids", "1,2", "--tag", "GDPR-1")
    assert code == 0, err
    assert "request #2" in out
    code, out, err = run(capsys, "forget", "--store", store, "--ids-file", str(ids_file))
    assert code == 0, err
    code, out, err = run(capsys, "ledger", "--store", store, "--verify")
    assert code == 0 and "ledger verified" in out and "3 entries" in out
    code, out, _ = run(capsys, "ledger", "--store", store, "--json")
    rows = [json.loads(line) for line in out.strip().splitlines() if line.startswith("{")]
    assert [r["ids"] for r in rows] == [[], [1, 2], [5, 6, 7]]
    assert rows[1]["details"]["tag"] == "GDPR-1"


def test_config_file_and_flag_override(capsys, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('model = "logreg"\nn_shards = 4\nepochs = 2\nn_slices = 1\n')
    code, _, err = run(capsys, "fit", "--strategy", "sisa", "--store", str(tmp_path / "s"),
                       "--config", str(config), "--n-shards", "2", "--quiet")
    assert code == 0, err
    strategy = expunge.open(tmp_path / "s")
    assert strategy.n_shards == 2 and strategy.model == "logreg"
    strategy.close()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["forget", "--store", "{tmp}/nope", "--ids", "1"], "not an expunge store"),
        (["forget", "--store", "{store}", "--ids", "1,x"], "'x' is not an integer id"),
        (["forget", "--store", "{store}", "--ids", "99999"], "99999"),
        (["forget", "--store", "{store}", "--ids", "3,3"], "more than once"),
        (["forget", "--store", "{store}"], "exactly one of --ids or --ids-file"),
        (["fit", "--strategy", "nope", "--store", "{tmp}/x"], "Unknown strategy 'nope'"),
        (["fit", "--strategy", "retrain", "--store", "{tmp}/x", "--n-shards", "3"],
         "--n-shards does not apply to 'retrain'"),
        (["fit", "--strategy", "sisa", "--store", "{tmp}/x", "--n-shards", "0"],
         "'n_shards' parameter of SISA"),
        (["fit", "--strategy", "sisa", "--store", "{tmp}/x", "--model-params", "[bad"],
         "--model-params must be JSON"),
        (["fit", "--strategy", "sisa", "--store", "{tmp}/x", "--dataset", "mnist"],
         "root"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(capsys, tmp_path, argv, message):
    store = tmp_path / "s"
    main(["fit", "--strategy", "retrain", "--store", str(store), "--model", "logreg",
          "--epochs", "1", "--quiet"])
    capsys.readouterr()
    argv = [a.format(tmp=tmp_path, store=store) for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("expunge: error:") and err.count("\n") == 1
    assert message in err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(expunge.exceptions.StoreError):
        main(["--debug", "forget", "--store", str(tmp_path), "--ids", "1"])


def test_demo_runs_and_proves_history_independence(capsys, tmp_path):
    code, out, err = run(capsys, "demo", "--epochs", "2", "--requests", "2",
                         "--store-dir", str(tmp_path), "--quiet")
    assert code == 0, err
    assert (tmp_path / "sisa" / "manifest.json").is_file()
    s = expunge.open(tmp_path / "sisa")
    assert len(s.ledger) == 4 and s.verify() == 4  # fit, 2 requests, the evaluated batch
    s.close()
