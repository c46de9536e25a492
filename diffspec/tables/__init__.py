"""Torch-free tables and rules about models, below both `spec` and `plan`.

`spec` validates against them, `plan` fingerprints with them and `generate` runs with them, so
each rule has one owner here: pipeline families and their modes (:mod:`.families`), the
scheduler name table (:mod:`.schedulers`), where a model source lives (:mod:`.sources`) and
whether classifier-free guidance applies (:func:`.families.guidance_applies`). Nothing here
imports torch, diffusers or anything above `diffspec.errors`.
"""
