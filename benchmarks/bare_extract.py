"""An independent bare transformers loop, the baseline of ``extract_overhead.py``: it imports
nothing from vlmsteer. Teacher-forced forward passes (question + multiple-choice answer) over
a VQAv2-format folder with the model's own processor, keeping one layer's residual stream.

    python benchmarks/bare_extract.py DATA MODEL_DIR LAYER BATCH_SIZE OUT.npy
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor


def main() -> None:
    root, model_dir, layer, batch_size, out = (Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
                                               sys.argv[5])
    torch.set_num_threads(int(sys.argv[6]) if len(sys.argv) > 6 else 1)
    questions = json.loads((root / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())["questions"]
    answers = {a["question_id"]: a["multiple_choice_answer"]
               for a in json.loads((root / "v2_mscoco_val2014_annotations.json").read_text())["annotations"]}
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    processor.tokenizer.padding_side = "left"
    images_dir = root / "val2014"
    ext = next(images_dir.iterdir()).suffix  # .jpg in COCO, .png in the shapes world
    rows = []
    with torch.no_grad():
        for start in range(0, len(questions), batch_size):
            chunk = questions[start:start + batch_size]
            images = [[Image.open(images_dir / f"COCO_val2014_{q['image_id']:012d}{ext}").convert("RGB")]
                      for q in chunk]
            messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q["question"]}]}]
                        for q in chunk]
            prompts = [processor.apply_chat_template(m, add_generation_prompt=True) for m in messages]
            texts = [p + " " + answers[q["question_id"]] for p, q in zip(prompts, chunk)]
            inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
            hidden = model(**inputs, output_hidden_states=True).hidden_states
            rows.append(hidden[layer + 1 if layer >= 0 else len(hidden) + layer][:, -1].float().numpy())
    np.save(out, np.concatenate(rows))


if __name__ == "__main__":
    main()
