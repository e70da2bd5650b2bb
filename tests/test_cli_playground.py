"""`python -m clip_icm playground`: a seeded table in which the OOD gap closes under ICM."""
import subprocess
import sys

import pandas as pd
import pytest

from clip_icm.cli import main

SMALL = ["playground", "--shifts", "0,0.5,1", "--n-train", "1500", "--n-test", "800"]


def test_playground_prints_table_and_gap_closes(capsys, tmp_path):
    csv = tmp_path / "table.csv"
    assert main([*SMALL, "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "OOD gap at shift 1" in out and "ICM " in out and "ICM (as released)" in out and "CLIP" in out
    table = pd.read_csv(csv)
    gap = table[table["shift"] == 1.0].set_index("method").ood_gap
    assert gap["CLIP"] > 0.2 and abs(gap["icm"]) < 0.05 and gap["icm_as_released"] > gap["icm"] + 0.2
    # The full-space OOD accuracy falls as the shift grows; ICM's stays put.
    full = table[table.method == "CLIP"].ood_accuracy.to_numpy()
    icm = table[table.method == "icm"].ood_accuracy.to_numpy()
    assert full[0] > full[1] > full[2] and icm.max() - icm.min() < 0.05


def test_playground_is_reproducible(capsys):
    main(SMALL)
    first = capsys.readouterr().out
    main(SMALL)
    assert capsys.readouterr().out == first
    main([*SMALL, "--seed", "1"])
    assert capsys.readouterr().out != first


def test_playground_flags_reach_the_model(capsys):
    assert main([*SMALL, "--n-invariant", "3", "--n-variant", "5", "--dim", "10", "--classes", "3"]) == 0
    assert "3 invariant + 5 variant factors -> D=10, 3 classes" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, fragment, code",
    [
        (["playground", "--noise", "-1"], "noise must be >= 0", 1),
        (["playground", "--shifts", "2"], "shifts", 1),
        (["playground", "--shifts", "a,b"], "comma-separated numbers", 2),
        (["playground", "--n-invariant", "x"], "--n-invariant", 2),
        (["playground", "--dim", "4"], "dim=4", 1),
        (["playground", "--n-train", "1"], "n_train must be >= 2", 1),
        (["nope"], "invalid choice", 2),
        ([], "required", 2),
    ],
)
def test_bad_input_is_one_line(argv, fragment, code, capsys):
    assert main(argv) == code
    captured = capsys.readouterr()
    assert fragment in captured.err and captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.out == ""


def test_module_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "clip_icm", "playground", "--shifts", "1", "--n-train", "400", "--n-test", "200"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "OOD gap at shift 1" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "clip_icm", "playground", "--lam", "nan?"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1
