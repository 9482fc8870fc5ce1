"""clapart: CLAP-ART automated audio captioning as a reproducible, staged pipeline.

One module per concept: ``audio`` (decoding), ``fbank`` + ``beats`` (BEATs encoder and
acoustic tokenizer), ``clap`` (global CLAP embedding), ``rvq`` (residual k-means codebooks),
``storage`` (HDF5 / Parquet artifact formats), ``datasets`` (corpora -> manifest),
``demo_corpus`` (the synthetic offline corpus), ``captioner`` (EnCLAP-style BART),
``training``, ``decoding`` and ``metrics``.
"""

__version__ = "0.1.0"
