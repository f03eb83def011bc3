"""The toy world's own frozen models, pretrained here on a CPU: a tiny LLaVA taught with next-token loss on
text about synthetic scenes (no masks, boxes or coordinates), a tiny SAM taught with SAM's promptable
objective on the synthetic masks, and the probe that measures whether the LLaVA's attention grounds words.
"""
