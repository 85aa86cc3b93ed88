"""What fine-tuning changed and how concepts are laid out: concept matching and shift vectors
(:mod:`.shift`), per-layer linear separability (:mod:`.separability`)."""
