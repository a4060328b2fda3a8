"""Inference outside training: loading a registered version's packaged model, checking rows against its
signature, and batch inference over a dataset with Ray Data (``inference.batch``).

Nothing is imported here: a serving replica importing ``inference.loading`` does not load Ray Data and the
cluster room that batch inference needs."""
