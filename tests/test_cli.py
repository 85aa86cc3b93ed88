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
