"""eva: open-ended self-play RLHF.

The pure core: config schemas, records, informativeness metrics, sampling, evolve templates and
parsing, preference pairs, the prompt buffer and the run directory. No ray, vllm or trl imports here.
"""

__version__ = "0.1.0"
