"""Pretrained experts: an emotion or a sentiment from one clip or one transcript, with no labels of yours.

Each expert is an entry of `registry.EXPERTS`: its modality, class names in order, training data, the
licence of its weights (that of the data they were fitted on) and how it is built or loaded. Text experts
(`text_experts.py`) are a small logistic-regression head over frozen sentence vectors of the packaged
MiniLM encoder; their weights are never shipped (MELD is GPL-3.0, CMU-MOSI is for research use), so
`affectus pretrained build NAME --data ...` fits them from the user's copy of the data into
`$AFFECTUS_HOME` (default ~/.cache/affectus/pretrained). The face expert (`fer-face`) lives in
`features/face_expression.py` and is listed as not installed when that module or its weights are absent.
`clips.py` turns a clip (or a transcript) into each expert's verdict and a combined one (docs/pretrained.md).
"""
