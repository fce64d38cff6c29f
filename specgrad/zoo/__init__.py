"""Reference layer implementations for the shipped specs (specs/*.yaml).

Every function is array-namespace generic: it takes `xp` from its arguments, so the same
code runs on numpy and cupy. Each computes in the dtype of its inputs.
"""
