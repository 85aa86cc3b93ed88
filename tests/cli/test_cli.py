import subprocess
import sys

from vlmsteer.cli import main


def test_help_lists_commands():
    proc = subprocess.run([sys.executable, "-m", "vlmsteer.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for command in ("info", "data", "eval", "demo"):
        assert command in proc.stdout


def test_info_prints_model_facts(tiny_folder, capsys):
    folder = tiny_folder("llava")
    assert main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    for field in ("LlavaForConditionalGeneration", "layers", "hidden_size", "vocab_size", "image_tokens"):
        assert field in out
    assert "│ layers       │ 3 " in out.replace("  ", "  ")


def test_unknown_model_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no config.json" in err and len(err.splitlines()) == 1


def test_eval_vqa_under_torchrun_equals_one_process(tiny_folder, tmp_path):
    """Issue 14: ``torchrun --nproc_per_node 2 -m vlmsteer eval vqa`` answers one slice per rank;
    rank 0 merges the answers and scores all questions: the same predictions and metrics as
    one process."""
    import json
    import subprocess
    import sys

    from vlmsteer.cli import main
    from vlmsteer.data import shapes

    shapes.write_dataset(tmp_path / "w", n=5, seed=9)
    args = ["eval", "vqa", "--model", str(tiny_folder("llava")), "--data", str(tmp_path / "w"),
            "--max-new-tokens", "3", "--batch-size", "4"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "0", "-m", "vlmsteer", *args, "--out", str(tmp_path / "two")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    read = lambda p: (p / "predictions.jsonl").read_text()  # noqa: E731
    assert read(tmp_path / "one") == read(tmp_path / "two")
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert one == two and len(list((tmp_path / "two" / "parts").iterdir())) == 2


def _leaf_commands(command, prefix=()):
    for name, sub in getattr(command, "commands", {}).items():
        if hasattr(sub, "commands"):
            yield from _leaf_commands(sub, (*prefix, name))
        else:
            yield (*prefix, name), sub


def test_under_torchrun_every_other_command_is_refused_before_it_starts(tmp_path, monkeypatch, capsys):
    """Issue 37, acceptance 3: under a launcher (WORLD_SIZE 2) a command that does not run
    data-parallel is refused by every rank before its options are even read: rank 0 says so in
    one line, rank 1 exits quietly; the data-parallel ones (extract, eval) go on to run."""
    import typer

    from vlmsteer.cli import app

    monkeypatch.setattr("vlmsteer.cli.RANK_0_FIRST_S", 0.0)
    leaves = list(_leaf_commands(typer.main.get_command(app)))
    parallel = {" ".join(n) for n, c in leaves if getattr(c.callback, "data_parallel", False)}
    assert parallel == {"extract", "eval vqa", "eval captions", "eval safety"}
    monkeypatch.setenv("WORLD_SIZE", "2")
    for names, _ in leaves:
        argv = ["--threads", "1", *names, "--out", str(tmp_path / "out")]
        for rank in ("0", "1"):
            monkeypatch.setenv("RANK", rank)
            code = main(argv)
            err = capsys.readouterr().err
            if " ".join(names) in parallel:  # refused later by its own parse (no --model), not by the launcher
                assert "runs in one process" not in err
                continue
            assert code == 2, names
            if rank == "0":
                assert err.count("error:") == 1 and f"'vlmsteer {' '.join(names)}' runs in one process" in err, err
            else:
                assert err == ""
    assert not (tmp_path / "out").exists()
    # the one-process engine is refused by every rank under torchrun, before it is imported or started
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        assert main(["extract", "--model", "shapes-llava", "--data", str(tmp_path), "--layer", "0",
                     "--engine", "vllm", "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert (err.count("the vllm engine runs in one process") == 1) == (rank == "0") and err.count("error:") <= 1
    assert not (tmp_path / "out").exists()


def test_a_command_refused_under_torchrun_starts_nothing_on_any_rank(tmp_path):
    """The same through torchrun itself: both ranks end with exit 2, one line, no folder."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "0", "-m", "vlmsteer", "sweep", "--model", "shapes-llava", "--out", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.count("error: 'vlmsteer sweep' runs in one process") == 1, done.stderr[-2000:]
    assert not (tmp_path / "s").exists()
