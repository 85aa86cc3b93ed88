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
