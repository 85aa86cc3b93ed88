"""``vlmsteer score pope|chair``: score answers or captions from any tool as POPE's and CHAIR's
references do (no model is loaded)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from vlmsteer.cli.common import _OVERWRITE, command_identity, command_run_json, out_console, registry_option, score_app
from vlmsteer.evaluate.chair import CHAIR_OBJECTS
from vlmsteer.runs.scoring import file_identity
from vlmsteer.runs.protocol import claim, publish


def _figure(value) -> str:
    return "undefined" if value is None else f"{100 * value:.2f}"


@score_app.command("pope")
def score_pope_cmd(questions: Path = typer.Option(..., help="POPE question file (question_id, image, text, label "
                                                            "per line), e.g. coco_pope_adversarial.json."),
                   answers: Path = typer.Option(..., help="Answers: JSONL of {question_id, answer} (or LLaVA's "
                                                          "{question_id, text}), or a vlmsteer run folder."),
                   out: Path = typer.Option(..., help="Output folder (metrics.json, run.json)."),
                   overwrite: bool = _OVERWRITE):
    """POPE accuracy, precision, recall, F1 and yes-ratio, exactly as POPE's evaluate.py computes them."""
    from vlmsteer.data.pope import read_pope_answers, read_pope_questions
    from vlmsteer.runs.scoring import score_pope, write_pope_scores

    with publish(out, overwrite) as pub:
        qs, ans = read_pope_questions(questions), read_pope_answers(answers)
        claim(pub, command_identity(questions=file_identity(questions), answers=file_identity(answers)))
        scores = score_pope(qs, ans)
        write_pope_scores(pub.stage, scores)
        command_run_json(pub)
    table = Table(title=f"POPE: {scores.n} questions ({questions.name})")
    for col in ("TP", "FP", "TN", "FN", "accuracy", "precision", "recall", "F1", "yes %"):
        table.add_column(col, justify="right")
    table.add_row(str(scores.tp), str(scores.fp), str(scores.tn), str(scores.fn), _figure(scores.accuracy),
                  _figure(scores.precision), _figure(scores.recall), _figure(scores.f1), _figure(scores.yes_ratio))
    out_console.print(table)
    for name, why in (("precision", "the model never answered yes"), ("recall", "no question's label is yes"),
                      ("f1", "precision or recall is undefined or both are 0")):
        if getattr(scores, name) is None:
            out_console.print(f"{name} is undefined: {why} (POPE's evaluate.py divides by zero here)",
                              highlight=False)
    out_console.print(f"wrote {out}/metrics.json")


@score_app.command("chair")
def score_chair_cmd(captions: Path = typer.Option(..., help="Captions: JSONL (or a JSON list) of {image_id, caption}, "
                                                            "or a vlmsteer run folder."),
                    annotations: Path = typer.Option(..., help="Folder of COCO's instances_{train,val}2014.json and "
                                                               "captions_{train,val}2014.json (one split's pair is "
                                                               "enough)."),
                    out: Path = typer.Option(..., help="Output folder (metrics.json, rows.jsonl, run.json)."),
                    objects: str = registry_option("coco", "--objects", registry=CHAIR_OBJECTS,
                                                   intro="Objects and their words: "),
                    overwrite: bool = _OVERWRITE):
    """CHAIR_s, CHAIR_i, Recall and mean length, exactly as the CHAIR reference computes them, with
    each caption's mentioned and hallucinated objects."""
    from vlmsteer.evaluate.chair import chair_scores
    from vlmsteer.runs.scoring import ChairAnnotations, read_captions, write_chair_scores

    with publish(out, overwrite) as pub:
        caps = read_captions(captions)
        chair = ChairAnnotations.read(annotations, CHAIR_OBJECTS.get(objects)())
        claim(pub, command_identity(captions=file_identity(captions), annotations=chair.files))
        scores = chair_scores(caps, chair.truth([i for i, _ in caps]), chair.vocab)
        write_chair_scores(pub.stage, scores)
        command_run_json(pub)
    table = Table(title=f"CHAIR: {scores.n} captions ({captions.name})")
    for col in ("CHAIR_s", "CHAIR_i", "Recall", "mean length", "objects named", "hallucinated"):
        table.add_column(col, justify="right")
    table.add_row(_figure(scores.chair_s), _figure(scores.chair_i), _figure(scores.recall),
                  f"{scores.mean_length:.1f}", str(scores.mentions), str(scores.hallucinated_mentions))
    out_console.print(table)
    if scores.chair_i is None:
        out_console.print("CHAIR_i is undefined: no caption names an object (the reference divides by zero here)",
                          highlight=False)
    if scores.recall is None:
        out_console.print("Recall is undefined: no image has a true object (the reference divides by zero here)",
                          highlight=False)
    out_console.print(f"wrote {out}/metrics.json, {out}/rows.jsonl")
