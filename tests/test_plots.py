"""Labels of the runs drawn on one figure."""

from pathlib import Path

from srpo_cli.plots import run_labels


def test_runs_of_one_seed_in_different_folders_get_different_labels():
    runs = [Path("runs/bench-hopper-medium-v0/seed5"), Path("runs300/bench-hopper-medium-v0/seed5"), Path("x/seed1")]
    assert run_labels(runs) == ["runs/bench-hopper-medium-v0/seed5", "runs300/bench-hopper-medium-v0/seed5", "seed1"]


def test_distinct_seeds_keep_their_folder_name():
    assert run_labels([Path("r/seed0"), Path("r/seed1"), Path("r/seed1/beta-0")]) == ["seed0", "seed1", "beta-0"]


def test_the_same_run_twice_is_labelled_by_its_whole_path():
    assert run_labels([Path("a/seed0"), Path("a/seed0")]) == ["a/seed0", "a/seed0"]
