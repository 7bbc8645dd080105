"""MLflow tracking, one module per kind of run (they share :mod:`e4t.tracking.client`):

- :mod:`~e4t.tracking.datasets`: curation runs, found by manifest hash;
- :mod:`~e4t.tracking.registry`: pretraining runs, registered domain-model versions, loading;
- :mod:`~e4t.tracking.personalization`: the personalize-bulk parent and concept runs;
- :mod:`~e4t.tracking.evaluation`: evaluation runs;
- :mod:`~e4t.tracking.promotion`: the ``@champion`` policy.
"""

from e4t.tracking.client import (
    default_tracking_uri,
    get_or_create_experiment,
    mlflow_module,
    tracking_uri,
    ui_command,
)
from e4t.tracking.datasets import (
    DATASET_EXPERIMENT,
    find_dataset_run,
    find_dataset_run_by_manifest,
    log_dataset_run,
)
from e4t.tracking.evaluation import EVALUATE_EXPERIMENT, log_evaluation
from e4t.tracking.personalization import (
    PERSONALIZE_EXPERIMENT,
    find_personalization_runs,
    log_personalization,
)
from e4t.tracking.promotion import alias_version, decide_promotion, promote_if_better
from e4t.tracking.registry import (
    PRETRAIN_ALIAS,
    cached_domain_model,
    download_domain_model,
    load_domain_model,
    model_lock,
    pin_model_uri,
    register_domain_model,
    resolve_model_version,
    resume_run,
    start_pretrain_run,
)

__all__ = [
    "DATASET_EXPERIMENT",
    "EVALUATE_EXPERIMENT",
    "PERSONALIZE_EXPERIMENT",
    "PRETRAIN_ALIAS",
    "alias_version",
    "cached_domain_model",
    "decide_promotion",
    "default_tracking_uri",
    "download_domain_model",
    "find_dataset_run",
    "find_dataset_run_by_manifest",
    "find_personalization_runs",
    "get_or_create_experiment",
    "load_domain_model",
    "log_dataset_run",
    "log_evaluation",
    "log_personalization",
    "mlflow_module",
    "model_lock",
    "pin_model_uri",
    "promote_if_better",
    "register_domain_model",
    "resolve_model_version",
    "resume_run",
    "start_pretrain_run",
    "tracking_uri",
    "ui_command",
]
