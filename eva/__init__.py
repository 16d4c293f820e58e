"""eva: open-ended self-play RLHF.

The pure core: config schemas, records, informativeness metrics, sampling, evolve templates and
parsing, near-duplicate detection, preference pairs, the prompt buffer, Parquet tables, the run
directory, and what the reward scorers and the evaluation compute without a model (scorer kinds,
judge templates, well-formedness rules, win rate), and the online form's maths and prioritized
buffer (`eva.online`; its losses take and return torch tensors). No ray, vllm or trl imports here.
"""

__version__ = "0.1.0"
