"""The CLI for people: per-strategy help from docstrings, dry runs, subjects."""

from __future__ import annotations

import json

import pytest

import expunge
from expunge.cli import main
from expunge.cli._common import strategy_flags
from expunge.cli._help import class_parameter_docs


def help_of(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", expunge.available_strategies())
def test_fit_strategy_help_lists_its_parameters_only_with_descriptions(capsys, name):
    text = " ".join(help_of(capsys, "fit", name).split())  # argparse wraps lines
    cls = expunge.get_strategy(name)
    docs = class_parameter_docs(cls)
    section = text.split(f"{cls.__name__} parameters:", 1)[1]
    for param, (_, owners) in strategy_flags().items():
        flag = "--" + param.replace("_", "-")
        if name in owners:
            shown = f"{flag} " if f"{flag} " in section else f"{flag}, "  # booleans: --x, --no-x
            assert shown in section, flag
            assert docs.get(param), f"{cls.__name__} does not document {param!r}"
            entry = section.split(shown, 1)[1].replace(f"--no-{flag[2:]}", "")
            assert "Default:" in entry.split(" --", 1)[0], flag
        else:
            assert f"{flag} " not in text, f"{flag} of {sorted(owners)} shown for {name}"


def test_help_says_what_the_docstring_says(capsys):
    text = " ".join(help_of(capsys, "fit", "sisa").split()).split("SISA parameters:")[1]
    assert "--n-shards INT S, the number of isolated shard models. Default: 5. Allowed: an " \
           "int in the range [1, inf)." in text
    assert "--aggregation {vote,mean}" in text
    # "as for :class:`Retrain`" resolves to Retrain's description, plus SISA's addition
    assert "the budget of an unsliced shard" in text.split("--epochs INT", 1)[1][:400]
    # a subclass without an Args section inherits its parent's descriptions
    influence = " ".join(help_of(capsys, "fit", "influence").split()).split("parameters:")[1]
    assert "the leave-one-out rule" in influence.split("--damping", 1)[1][:300]
    general = help_of(capsys, "fit")
    assert "expunge fit STRATEGY --help" in " ".join(general.split())
    assert "--n-shards" not in general


def test_strategy_as_positional_or_option(capsys, tmp_path):
    for i, argv in enumerate((["fit", "retrain"], ["fit", "--strategy", "retrain"],
                              ["fit", "--strategy=retrain"])):
        store = str(tmp_path / f"s{i}")
        assert main([*argv, "--store", store, "--model", "logreg", "--epochs", "1",
                     "--quiet"]) == 0
        assert expunge.open(store).name == "retrain"
    code = main(["fit", "sisa", "--strategy", "retrain", "--store", str(tmp_path / "x")])
    assert code == 2 and "Name one strategy" in capsys.readouterr().err


def test_dry_run_changes_nothing_and_matches_the_request(capsys, tmp_path):
    store = str(tmp_path / "s")
    assert main(["fit", "sisa", "--store", store, "--model", "logreg", "--n-shards", "3",
                 "--n-slices", "2", "--epochs", "2", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["forget", "--store", store, "--ids", "4,40", "--dry-run"]) == 0
    assert "dry run: nothing was changed" in capsys.readouterr().out
    assert main(["forget", "--store", store, "--ids", "4,40", "--dry-run", "--json"]) == 0
    preview = json.loads(capsys.readouterr().out)
    m = expunge.open(store)
    assert len(m.ledger) == 1
    m.close()
    assert main(["forget", "--store", store, "--ids", "4,40", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert preview["sample_passes"] == report["sample_passes"]
    assert preview["purged"] == report["purged"]
    assert expunge.verify_receipt(report["receipt"], expunge.open(store).public_key)


def test_forget_subject_on_the_cli(capsys, tmp_path, small_digits):
    from expunge.data import IndexedDataset

    data = IndexedDataset(small_digits.X, small_digits.y, small_digits.ids,
                          [f"user{i % 10}" for i in range(len(small_digits))])
    store = tmp_path / "s"
    expunge.Retrain(model="logreg", epochs=1, store=store).fit(data).close()
    assert main(["forget", "--store", str(store), "--subject", "user3"]) == 0
    out = capsys.readouterr().out
    assert "subject nonce" in out
    assert main(["forget", "--store", str(store), "--subject", "user3", "--ids", "1"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["forget", "--store", str(store), "--subject", "user3"]) == 2
    assert "already forgotten" in capsys.readouterr().err
