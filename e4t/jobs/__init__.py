"""The stages' jobs, each one sequence of steps run by the CLI and by the Prefect flows alike
(:mod:`e4t.jobs.steps`): ``curate``, ``pretrain``, ``personalize``, ``evaluate``.

The library (``e4t.data``, ``e4t.models``, ``e4t.training``, ``e4t.evaluation``) holds the
pieces; a job composes them into a stage, the way a training program composes a library.
"""
