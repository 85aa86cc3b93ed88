"""LoRA fine-tuning of the language model only; merged model == base + adapter."""

import json

import numpy as np

from vlmsteer.data import load_coco_captions, shapes
from vlmsteer.data.keywords import COLORS, filter_samples
from vlmsteer.extract import ExtractConfig, extract
from vlmsteer.finetune import FinetuneConfig, finetune, lora_target_modules
from vlmsteer.model import VLM
from vlmsteer.positions import Selector


def test_finetune_adapter_and_merge_give_identical_features(tiny_folder, tmp_path):
    data = tmp_path / "data"
    shapes.write_dataset(data, 10, seed=4)
    caps = filter_samples(load_coco_captions(data), COLORS)
    assert caps and all(COLORS.matches(c) for s in caps for c in s.captions)
    base = VLM.load(tiny_folder("llava"))
    targets = lora_target_modules(base, ["q_proj", "v_proj"])
    assert targets and not any("vision" in t for t in targets)
    out = tmp_path / "ft"
    summary = finetune(base, caps, out, FinetuneConfig(steps=12, batch_size=4, save_every=5, lr=5e-3),
                       merge=True, progress=False)
    assert (out / "checkpoint-5" / "adapter_config.json").exists() and (out / "checkpoint-10").exists()
    assert (out / "final" / "adapter_config.json").exists() and (out / "merged" / "config.json").exists()
    log = [json.loads(l) for l in (out / "loss.jsonl").read_text().splitlines()]
    assert len(log) == 12 and summary["last_loss"] < summary["first_loss"]
    # vision tower untouched: LoRA only on decoder layers
    adapter = json.loads((out / "final" / "adapter_config.json").read_text())
    assert all("vision" not in m for m in adapter["target_modules"])

    cfg = ExtractConfig(layers=[0, 2], selector=Selector("mean_response"))
    a, _ = extract(VLM.load(tiny_folder("llava"), adapter=out / "final"), caps, tmp_path / "sa", cfg, progress=False)
    b, _ = extract(VLM.load(out / "merged"), caps, tmp_path / "sb", cfg, progress=False)
    c, _ = extract(VLM.load(tiny_folder("llava")), caps, tmp_path / "sc", cfg, progress=False)
    for layer in (0, 2):
        np.testing.assert_allclose(a.features(layer), b.features(layer), rtol=1e-5, atol=1e-5)
    assert not np.allclose(a.features(2), c.features(2))  # fine-tuning changed the features


def test_unknown_target_is_a_one_line_error(tmp_path, capsys):
    from vlmsteer.cli import main
    from vlmsteer.data import shapes

    shapes.write_dataset(tmp_path / "d", 2, seed=1)
    assert main(["finetune", "--model", "shapes-llava", "--data", str(tmp_path / "d"), "--format", "coco",
                 "--target", "captions", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown target 'captions'; choose one of: auto, answer, caption"


def test_target_words_the_tokenizer_does_not_know_are_refused_by_name(tmp_path, capsys):
    """Issue 37: the shipped model's word-level vocabulary lacks "purple", "indeed", "ocean";
    fine-tuning toward <unk> is refused in one line naming the words, before anything is
    written; --allow-unknown-words trains anyway."""
    from vlmsteer.cli import main
    from vlmsteer.data import shapes

    shapes.write_dataset(tmp_path / "d", 2, seed=1)
    captions = tmp_path / "d" / "captions_val2014.json"
    data = json.loads(captions.read_text())
    data["annotations"][0]["caption"] = "a purple circle indeed"
    data["annotations"][1]["caption"] = "a purple square by the ocean"
    captions.write_text(json.dumps(data))
    argv = ["finetune", "--model", "shapes-llava", "--data", str(tmp_path / "d"), "--format", "coco", "--steps", "1",
            "--batch-size", "2", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 2 of 10 target texts hold words the tokenizer does not know and would train toward "
                          "'<unk>': 'purple', 'by', 'indeed', 'ocean'") and err.count("\n") == 0, err
    assert err.endswith("(option --allow-unknown-words)") and not (tmp_path / "o").exists()
    assert main([*argv, "--allow-unknown-words"]) == 0
    assert (tmp_path / "o" / "final" / "adapter_config.json").exists()
