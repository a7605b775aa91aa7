"""prefloop settings, driven by environment variables.

SECRET_KEY, DEBUG, ALLOWED_HOSTS, DATABASE_URL, CELERY_BROKER_URL, CACHE_URL, PREFLOOP_DATA_DIR.
Defaults give a laptop set-up: SQLite and a file-system Celery broker under ``var/``.
"""
import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_rate(name: str, default: str) -> str | None:
    """A DRF throttle rate ("30/min"); "off" (or "0", "none") turns that throttle off."""
    value = os.environ.get(name, default).strip()
    return None if value.lower() in {"off", "0", "none", ""} else value


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG and os.environ.get("PREFLOOP_REQUIRE_SECRET_KEY") == "1":
        raise RuntimeError("SECRET_KEY must be set in the environment")
    # Development only: a per-checkout key that is never committed (var/ is git-ignored).
    _key_file = BASE_DIR / "var" / "secret_key"
    if _key_file.exists():
        SECRET_KEY = _key_file.read_text().strip()
    else:
        from django.core.management.utils import get_random_secret_key

        SECRET_KEY = get_random_secret_key()
        try:
            _key_file.parent.mkdir(parents=True, exist_ok=True)
            _key_file.write_text(SECRET_KEY)
        except OSError:
            pass

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "axes",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served by the app itself (no CDN)
    "django_htmx",
    "annotate",
    "evaluation",
    "training",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "prefloop.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Django's, for the pages only (none for /api/: prefloop/middleware.py).
    "prefloop.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last: turns a sign-in refused for too many failures into a 429 page (prefloop/login_limits.py).
    "axes.middleware.AxesMiddleware",
]

# Sign-in: django-axes first (brute-force limit), then Django's password check.
AUTHENTICATION_BACKENDS = [
    "prefloop.login_limits.LoginLimitBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "prefloop.urls"

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
            ],
        },
    },
]

WSGI_APPLICATION = "prefloop.wsgi.application"
ASGI_APPLICATION = "prefloop.asgi.application"

DATA_DIR = Path(os.environ.get("PREFLOOP_DATA_DIR", BASE_DIR / "var"))

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{DATA_DIR / 'db.sqlite3'}",
        # Persistent connections (seconds): a new PostgreSQL connection per request costs more
        # than most of prefloop's requests.
        conn_max_age=int(os.environ.get("CONN_MAX_AGE", "60")),
        # No ``SELECT 1`` before each request's first query (a round trip on every API request).
        # A connection the database dropped (a restart) fails at its first use: Django closes it
        # at the end of that request (``errors_occurred``) and the next one connects again, so at
        # most one failed request per thread; and the API's token lookup, the first query of
        # every token request, reconnects and retries at once (prefloop/authentication.py).
        conn_health_checks=env_bool("CONN_HEALTH_CHECKS", False),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server and the Celery worker read while the other writes;
    # IMMEDIATE transactions avoid "database is locked" upgrades under contention.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test_db.sqlite3")} if env_bool(
        "PREFLOOP_FILE_TEST_DB", False
    ) else {}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)  # collectstatic fills it; whitenoise warns when it is missing
# Without collectstatic (the demo, the tests) whitenoise serves straight from the app folders.
WHITENOISE_USE_FINDERS = env_bool("WHITENOISE_USE_FINDERS", True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG and env_bool("PREFLOOP_MANIFEST_STATIC", False)
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
MEDIA_ROOT = DATA_DIR / "media"
MEDIA_URL = "media/"

# Cache: per process by default; a shared Redis cache (CACHE_URL=redis://host:6379/1) when the
# web app runs in several processes, so that import progress bars, cached queue counts and the
# quality recompute debounce are seen by every worker, and sessions are read from the cache.
CACHE_URL = os.environ.get("CACHE_URL", "")
if CACHE_URL.startswith(("redis://", "rediss://", "unix://")):
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": CACHE_URL,
            "KEY_PREFIX": os.environ.get("CACHE_KEY_PREFIX", "prefloop"),
        }
    }
    SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
elif CACHE_URL:
    raise ImproperlyConfigured(f"CACHE_URL must be a redis:// URL, got {CACHE_URL!r}")
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
# The API's throttle counters (prefloop/login_limits.py): beside the default cache, own prefix.
CACHES["throttle"] = (
    {**CACHES["default"], "KEY_PREFIX": CACHES["default"].get("KEY_PREFIX", "prefloop") + "-throttle"}
    if CACHE_URL
    else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "throttle"}
)

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# Security (``manage.py check --deploy`` is clean when DEBUG is off and HTTPS is on).
SECURE_HTTPS = env_bool("SECURE_HTTPS", False)
SESSION_COOKIE_SECURE = SECURE_HTTPS
CSRF_COOKIE_SECURE = SECURE_HTTPS
SECURE_SSL_REDIRECT = SECURE_HTTPS
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "31536000" if SECURE_HTTPS else "0"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HTTPS
SECURE_HSTS_PRELOAD = SECURE_HTTPS
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if SECURE_HTTPS else None
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy (prefloop/csp.py): the app's own scripts and styles only.
CSP_REPORT_ONLY = env_bool("CSP_REPORT_ONLY", False)

# Brute-force limits (prefloop/login_limits.py). Passwords: django-axes, per username + client
# address; the API: DRF throttling. PREFLOOP_PROXY_COUNT: reverse proxies in front of the app
# whose X-Forwarded-For names the client (0: REMOTE_ADDR is the client).
PREFLOOP_PROXY_COUNT = int(os.environ.get("PREFLOOP_PROXY_COUNT", "0"))
AXES_ENABLED = env_bool("PREFLOOP_LOGIN_LIMITS", True)
AXES_FAILURE_LIMIT = int(os.environ.get("PREFLOOP_LOGIN_FAILURE_LIMIT", "10"))
AXES_COOLOFF_TIME = timedelta(minutes=float(os.environ.get("PREFLOOP_LOGIN_COOLOFF_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_CLIENT_IP_CALLABLE = "prefloop.login_limits.client_ip"
AXES_RESET_ON_SUCCESS = True
AXES_DISABLE_ACCESS_LOG = True  # failures are kept; successful sign-ins are not logged row by row
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_HTTP_RESPONSE_CODE = 429
AXES_VERBOSE = False

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "prefloop.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # DRF's negotiation, with a shortcut for "Accept: application/json" and "*/*" (prefloop/negotiation.py).
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "prefloop.negotiation.ContentNegotiation",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_THROTTLE_CLASSES": [
        "prefloop.login_limits.AnonRateThrottle",
        "prefloop.login_limits.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "login": env_rate("PREFLOOP_LOGIN_RATE", "30/min"),
        "anon": env_rate("PREFLOOP_API_ANON_RATE", "120/min"),
        "user": env_rate("PREFLOOP_API_USER_RATE", "6000/min"),
    },
    "NUM_PROXIES": PREFLOOP_PROXY_COUNT or None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "prefloop API",
    "DESCRIPTION": "Human-preference annotation, calibration, export and fine-tuning.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # /api/docs/ works offline: Swagger UI's files come from drf-spectacular-sidecar's static files,
    # and its start-up script from a separate request (SpectacularSwaggerSplitView), so the page
    # needs no CDN and no inline script under the Content-Security-Policy.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "AssignmentStatusEnum": "annotate.models.AssignmentStatus",
        "JobStatusEnum": "evaluation.models.JobStatus",
        "RunStatusEnum": "training.models.RunStatus",
    },
}

# Celery: the file-system transport is the embedded, server-less default.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS = (
    {
        "data_folder_in": str(DATA_DIR / "celery" / "queue"),
        "data_folder_out": str(DATA_DIR / "celery" / "queue"),
        "processed_folder": str(DATA_DIR / "celery" / "processed"),
        "control_folder": str(DATA_DIR / "celery" / "control"),
        "store_processed": False,
    }
    if CELERY_BROKER_URL.startswith("filesystem")
    # Redis (and SQS) hand a message whose worker never acknowledged it to another worker after
    # this many seconds. Recovery does not wait for it (prefloop.jobs re-sends a lost job within
    # about 2.5 minutes), so it only has to exceed the longest countdown (the 30 s statistics
    # debounce) and not re-deliver long training runs too often: one hour (docs/jobs.md).
    else {"visibility_timeout": int(os.environ.get("CELERY_VISIBILITY_TIMEOUT", "3600"))}
)
if CELERY_BROKER_URL.startswith("filesystem"):
    for _sub in ("queue", "processed", "control"):
        (DATA_DIR / "celery" / _sub).mkdir(parents=True, exist_ok=True)
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
# Background jobs (docs/jobs.md): acknowledged after they ran, so a message whose worker died
# is not lost with it; a message whose pool process died goes back to the queue at once
# (every task claims its row, so it never runs twice, and a job that kills its worker is
# failed after prefloop.jobs' attempt limit instead of looping); one message at a time.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {"training.tasks.*": {"queue": "gpu"}}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True

# prefloop
# Recompute annotator quality (debounced Celery task) after new judgments.
PREFLOOP_AUTO_QUALITY = env_bool("PREFLOOP_AUTO_QUALITY", True)
# Active pair selection, margin order (training.active; docs/training.md "Active pair
# selection"): None ("strict", the default) serves the margin priorities in strict order; a number
# p draws the comparisons with probability proportional to priority^p (power acquisition,
# Kirsch et al. 2023).
_MARGIN_POWER = os.environ.get("PREFLOOP_MARGIN_SAMPLING_POWER", "strict").strip().lower()
PREFLOOP_MARGIN_SAMPLING_POWER = None if _MARGIN_POWER in ("", "strict", "none") else float(_MARGIN_POWER)
PREFLOOP_QUALITY_DEBOUNCE_S = int(os.environ.get("PREFLOOP_QUALITY_DEBOUNCE_S", "30"))
# Background jobs (prefloop.jobs): a running job whose heartbeat is older than STALE_S has lost
# its worker; every worker sweeps for such jobs every SWEEP_S (0: only when it starts); a queued
# job whose message is older than RESEND_S is sent again.
PREFLOOP_JOB_STALE_S = int(os.environ.get("PREFLOOP_JOB_STALE_S", "120"))
PREFLOOP_JOB_SWEEP_S = float(os.environ.get("PREFLOOP_JOB_SWEEP_S", "30"))
PREFLOOP_JOB_RESEND_S = int(os.environ.get("PREFLOOP_JOB_RESEND_S", "600"))
PREFLOOP_MAX_IMPORT_LINE_BYTES = int(os.environ.get("PREFLOOP_MAX_IMPORT_LINE_BYTES", str(1024 * 1024)))
PREFLOOP_MODELS_DIR = Path(os.environ.get("PREFLOOP_MODELS_DIR", DATA_DIR / "models"))
# Folders a project admin may register models from on /models/ or the API (os.pathsep-separated;
# superusers and ``manage.py register_model`` may register any folder).
PREFLOOP_MODEL_ROOTS = [
    Path(p) for p in os.environ.get("PREFLOOP_MODEL_ROOTS", "").split(os.pathsep) if p.strip()
] or [PREFLOOP_MODELS_DIR]
PREFLOOP_EXPORTS_DIR = Path(os.environ.get("PREFLOOP_EXPORTS_DIR", DATA_DIR / "exports"))
PREFLOOP_RUNS_DIR = Path(os.environ.get("PREFLOOP_RUNS_DIR", DATA_DIR / "runs"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "WARNING")},
}
