"""Integrations with the training frameworks people already use.

- ``auditor.integrations.lightning.AuditorLogger``: a PyTorch Lightning ``Logger``.
- ``auditor.integrations.transformers.AuditorCallback``: a Hugging Face ``TrainerCallback``.

Both add to the run ``audit record`` (or a rerun) opened, through the standard-library-only
attached API, or open a standalone run of the script when there is none (one run per
process, whichever way, however many trainers the script builds). Importing this package
imports neither framework: each module imports its own, and checks its version.

In the import rule the integrations rank with the public API: they use ``record`` and
``core`` only, and nothing inside auditor imports them.
"""
