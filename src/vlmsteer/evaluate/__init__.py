"""Metrics: VQA accuracy (official VQAv2 algorithm), caption metrics, bias and safety."""
