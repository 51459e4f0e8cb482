"""Every Redis key and channel routeq uses, with its type and lifetime, in one place.

arq's own keys (`arq:job:<id>`, `arq:in-progress:<id>`, `arq:retry:<id>`, `arq:result:<id>`) sit
beside these; the queue itself is the sorted set named by `Settings.queue_name`.

| key                          | type    | lifetime                      | written by            |
|------------------------------|---------|-------------------------------|-----------------------|
| routeq:events:<batch_id>     | stream  | event_retention_s after last  | workers, producer     |
| routeq:progress:<batch_id>   | hash    | event_retention_s after last  | submit, events script |
| routeq:published:<job_id>    | string  | event_retention_s             | events script         |
| routeq:job-done:<job_id>     | pub/sub | -                             | events script         |
| routeq:chunks:<job_id>       | stream  | 1 h after last piece          | workers (stream=true) |
| routeq:chunks-added:<job_id> | pub/sub | -                             | workers (stream=true) |
| routeq:queue-wake:<queue>    | pub/sub | -                             | enqueue, requeues     |
| routeq:running:<queue>       | zset    | from a claim to its job's end | claims, job ends      |
| routeq:workers               | hash    | removed on shutdown or stale  | workers, metrics      |
| routeq:sweeper               | string  | sweep_interval_s (a lock)     | the sweeping worker   |
| routeq:dep:<id>              | hash    | permanent (small)             | fleet scripts         |
| routeq:dep:<id>:inflight     | zset    | members expire by score       | fleet scripts         |
| routeq:dep:<id>:requests     | zset    | pruned past the rate window   | fleet scripts         |
| routeq:dep:<id>:tokens       | hash    | pruned with :requests         | fleet scripts         |
| routeq:rotation              | hash    | permanent                     | fleet (round robin)   |
| routeq:budget:caps           | hash    | permanent, set by operators   | `routeq budget set`   |
| routeq:budget:caps:<period>  | hash    | permanent, set by operators   | `budget set --period` |
| routeq:budget:<scope>        | hash    | permanent; rebuilt from SQL   | budget scripts        |
| routeq:budget:<scope>:<period>:<start> | hash | until 2 days past the period's end | budget scripts |
| routeq:holds:<job_id>        | hash    | until settled after commit    | budget scripts        |
| routeq:open-holds            | zset    | until the job's last hold goes | budget scripts       |
| routeq:answer:<job_id>       | hash    | until committed; ANSWER_TTL_S | workers (answers)     |
| routeq:flight:<t>:<hash>     | string  | lease; then done mark, 30 s   | workers (cache)       |
| routeq:flight:<t>:<hash>:waiting | string | with the flight             | workers (cache)       |
| routeq:flight-done:<t>:<hash> | pub/sub | -                            | workers (cache)       |
| routeq:ratelimit:<scope>:<kind> | hash | until its bucket is full again | the API (rate limits) |
| routeq:quality:version       | string  | permanent (a counter)         | evidence writers      |
| routeq:quality:tallies:<v>   | string  | QUALITY_TALLIES_TTL_S         | quality readers       |
| routeq:evals:beat            | string  | eval_interval_s (a lock)      | the judging worker    |
| routeq:evals:cursor          | string  | permanent (small)             | the judging worker    |
| routeq:evals:judged:<job_id> | string  | EVAL_JUDGED_TTL_S             | the judging worker    |
| routeq:ui:session:<hash>     | string  | UI_SESSION_TTL_S              | the API (dashboard)   |
| routeq:ui:batch:<batch_id>   | string  | UI_BATCH_SUMMARY_TTL_S        | the API (dashboard)   |
| routeq:catalog:version       | string  | permanent (a counter)         | catalog changes       |
| routeq:catalog:changed       | pub/sub | -                             | catalog changes       |
| routeq:api-keys:version      | string  | permanent (a random token)    | `routeq keys` changes |

Fleet state (`storage.fleet.state`): `routeq:dep:<id>` holds the breaker (state, opened_at, forced), the
live stats (success rate, latency EWMA, calls) and the breaker's failure window; the sorted sets
hold in-flight tickets (score = lease expiry, so a killed worker's slots come back) and admitted
requests (score = release time; admission + lease while in flight) for the rpm/tpm sliding window.

Budgets (`storage.fleet.budgets`): a scope is `user:<tenant>/<user>`, `end_user:<tenant>/<end user>`,
`tenant:<tenant>` or `batch:<id>`, each name passed through `key_part`; its hash keeps `spent` and
`reserved` in micro-dollars, over the scope's life. `routeq:budget:<scope>:<period>:<start>` (period
daily, weekly or monthly, start the local date it began: `...:monthly:2026-01-01`) holds the same
two counters for one period only: a new period is a new key, starting from nothing, and the old one
expires by itself. Caps are `routeq:budget:caps` (lifetime) and `routeq:budget:caps:<period>`.
`routeq:holds:<job>` maps `<run>:<attempt_no>` to the hold of a call
about to be made: the write-ahead record that lets a re-run charge the calls of a worker that died
before its ledger commit.

Answers (`storage.fleet.answers`): `routeq:answer:<job>` maps `<run>` to the outcome a run got from
the providers, written before its SQL commit and deleted after it: a run retried after a failed
commit persists that answer instead of paying for another call.

Single-flight (`storage.fleet.flights`): `routeq:flight:<tenant>:<hash>` holds the id of the job
making the one provider call for identical requests of a tenant; the others count themselves in
`:waiting` and are woken through `routeq:flight-done:<tenant>:<hash>` when it lets go. These are the
response cache's only keys: answers live in SQL, so the cache cannot evict anything in Redis.

Names from outside routeq (tenants, users, catalog deployment ids) go into a key through
`key_part`, which percent-encodes `%`, `/` and `:`: otherwise tenant `x/y` with user `z` and tenant
`x` with user `y/z` would share `user:x/y/z`, and a deployment `a:inflight` would be the in-flight
set of deployment `a`. A name without those characters is its own key part, so the keys of
ordinary names never changed. Ids routeq makes (`new_id`: `job_<hex>`, `batch_<hex>`) need no
encoding and get none.
"""

from __future__ import annotations

from urllib.parse import unquote

__all__ = [
    "ANSWER_TTL_S",
    "API_KEYS_VERSION",
    "ARQ_IN_PROGRESS_PREFIX",
    "ARQ_JOB_PREFIX",
    "ARQ_RETRY_PREFIX",
    "BUDGET_CAPS",
    "BUDGET_PERIOD_GRACE_S",
    "CATALOG_CHANGED",
    "CATALOG_VERSION",
    "EVAL_BEAT",
    "EVAL_CURSOR",
    "EVAL_JUDGED_TTL_S",
    "OPEN_HOLDS",
    "QUALITY_TALLIES_TTL_S",
    "QUALITY_VERSION",
    "ROTATION",
    "SWEEPER",
    "UI_BATCH_SUMMARY_TTL_S",
    "UI_SESSION_TTL_S",
    "WORKERS",
    "batch_events",
    "batch_progress",
    "budget",
    "budget_caps",
    "deployment",
    "deployment_claims",
    "deployment_inflight",
    "deployment_requests",
    "deployment_tokens",
    "deployment_waiting",
    "eval_judged",
    "flight",
    "flight_done_channel",
    "flight_waiting",
    "job_answer",
    "job_chunks",
    "job_chunks_added",
    "job_done_channel",
    "job_holds",
    "job_published",
    "key_part",
    "name_of_key_part",
    "quality_tallies",
    "queue_running",
    "queue_wake_channel",
    "rate_bucket",
    "ui_batch_summary",
    "ui_session",
]

PREFIX = "routeq:"
ARQ_JOB_PREFIX = "arq:job:"  # arq.constants.job_key_prefix, written by our bulk enqueue too
ARQ_IN_PROGRESS_PREFIX = "arq:in-progress:"  # arq.constants.in_progress_key_prefix: a live worker's lease
ARQ_RETRY_PREFIX = "arq:retry:"  # arq.constants.retry_key_prefix: a job's try counter
WORKERS = PREFIX + "workers"
# Held by the one worker of the fleet sweeping for orphaned jobs (workers/sweeper.py): its id, with
# a TTL of one sweep interval, so the fleet sweeps about once per interval whatever its size.
SWEEPER = PREFIX + "sweeper"
ROTATION = PREFIX + "rotation"
BUDGET_CAPS = PREFIX + "budget:caps"
# Jobs holding budget, scored by their oldest hold (epoch seconds): the sweeper settles what a run
# cut off between its commit and its settle left. Not under `holds:`, which SCANs read as hashes.
OPEN_HOLDS = PREFIX + "open-holds"
# Learned quality (`storage.fleet.quality`): whoever adds evidence bumps the version after its commit; the
# fleet's planners share the tallies (`quality_tallies` in SQL) as JSON under the current version, set
# by the first reader to miss. A reader racing a writer sets an old version's key, never read again.
QUALITY_VERSION = PREFIX + "quality:version"
QUALITY_TALLIES_TTL_S = 300
# Evaluations (`workers/evals.py`): the lock one worker holds to sample and judge per beat, the
# (finished_at, job id) after which it looks next, and a mark per job sent to the judge (SET NX:
# a job is judged once even if the cursor is lost; the evidence's unique ref backs it in SQL).
EVAL_BEAT = PREFIX + "evals:beat"
EVAL_CURSOR = PREFIX + "evals:cursor"
EVAL_JUDGED_TTL_S = 30 * 24 * 3600
# A dashboard sign-in (producer/ui/sessions.py) lasts this long; signing out or revoking its key
# ends it sooner.
UI_SESSION_TTL_S = 12 * 3600
# An ended batch's figures on its dashboard page (counts, per deployment, failures, cost) never change:
# computed from SQL once, then kept this long, so a 100,000-job batch's page aggregates nothing.
UI_BATCH_SUMMARY_TTL_S = 3600
# The live catalog (`storage.fleet.catalog`): the newest version in SQL's `catalog_versions`, raised
# (never lowered) after each commit, and the channel that tells every process to read it at once.
CATALOG_VERSION = PREFIX + "catalog:version"
CATALOG_CHANGED = PREFIX + "catalog:changed"
# API keys (`storage.fleet.key_cache`): a token replaced after every change of a key, so that API
# servers read their kept keys from SQL again.
API_KEYS_VERSION = PREFIX + "api-keys:version"


def key_part(name: str) -> str:
    """`name` as one unambiguous part of a key: `%`, `/` and `:` percent-encoded (`%` first)."""
    return name.replace("%", "%25").replace("/", "%2F").replace(":", "%3A")


def name_of_key_part(part: str) -> str:
    """The name `key_part` encoded (its inverse)."""
    # Left to right, one escape at a time: a part holds no `%` that is not an escape.
    return unquote(part)


def batch_events(batch_id: str) -> str:
    """The batch's event stream: job.succeeded/failed, batch.progress, batch.completed..."""
    return f"{PREFIX}events:{batch_id}"


def batch_progress(batch_id: str) -> str:
    """Counters of the batch (total, done, succeeded, failed, cancelled), changed only by Lua."""
    return f"{PREFIX}progress:{batch_id}"


def job_published(job_id: str) -> str:
    """Set once the job's terminal event is on the stream: a redelivered job never publishes twice."""
    return f"{PREFIX}published:{job_id}"


def job_done_channel(job_id: str) -> str:
    """Pub/sub channel told the moment the job's terminal event is published (for `wait`)."""
    return f"{PREFIX}job-done:{job_id}"


def job_chunks(job_id: str) -> str:
    """Text pieces of a streamed job as the worker receives them, then an `end` entry (storage.bus.relay)."""
    return f"{PREFIX}chunks:{job_id}"


def job_chunks_added(job_id: str) -> str:
    """Pub/sub channel told after each append to `job_chunks` (readers wait on it, not on XREAD BLOCK)."""
    return f"{PREFIX}chunks-added:{job_id}"


def queue_wake_channel(queue_name: str) -> str:
    """Pub/sub channel pinged with every enqueue and re-queue: idle workers poll at once (workers.worker).

    A ping lost (no subscriber yet, a dropped subscription) costs only latency: workers still poll
    the queue every `poll_delay_s`.
    """
    return f"{PREFIX}queue-wake:{queue_name}"


def queue_running(queue_name: str) -> str:
    """The jobs workers have claimed from the queue and run, scored by their lease's expiry (ms).

    A claimed job leaves the queue for this set until its delivery ends (storage.bus.queue), so a
    claim reads only jobs waiting to run, however many run fleet-wide; one whose lease ran out (its
    worker died) goes back to the queue at the next claim.
    """
    return f"{PREFIX}running:{queue_name}"


def deployment(deployment_id: str) -> str:
    """Breaker, forced state and live stats of one deployment, shared by the fleet."""
    return f"{PREFIX}dep:{key_part(deployment_id)}"


def deployment_inflight(deployment_id: str) -> str:
    """Tickets of calls in flight, scored by lease expiry (max_concurrency, half-open probes)."""
    return f"{PREFIX}dep:{key_part(deployment_id)}:inflight"


def deployment_requests(deployment_id: str) -> str:
    """Tickets admitted within the rate window, scored by admission time (rpm)."""
    return f"{PREFIX}dep:{key_part(deployment_id)}:requests"


def deployment_tokens(deployment_id: str) -> str:
    """Ticket -> tokens counted for tpm (the estimate, corrected to real usage on release)."""
    return f"{PREFIX}dep:{key_part(deployment_id)}:tokens"


def deployment_waiting(deployment_id: str) -> str:
    """Jobs refused admission, scored by their turn (epoch s): when a slot frees for each, in order."""
    return f"{PREFIX}dep:{key_part(deployment_id)}:waiting"


def deployment_claims(deployment_id: str) -> str:
    """Jobs that found room and are on their way to admission, scored by when they found it."""
    return f"{PREFIX}dep:{key_part(deployment_id)}:claims"


def budget(scope: str) -> str:
    """`spent` and `reserved` (micro-dollars) of one budget scope, as `storage.fleet.budgets` builds it,
    or of one scope in one period (`<scope>:<period>:<start>`: a scope's names never hold a raw `:`)."""
    return f"{PREFIX}budget:{scope}"


def budget_caps(period: str) -> str:
    """Caps (scope -> micro-dollars) of one period: `BUDGET_CAPS` for lifetime caps."""
    return BUDGET_CAPS if period == "lifetime" else f"{BUDGET_CAPS}:{period}"


# A period's counters outlive its end this long: holds taken before the boundary settle into it.
BUDGET_PERIOD_GRACE_S = 2 * 24 * 3600


def job_holds(job_id: str) -> str:
    """Budget holds of the job's calls not yet settled after their ledger commit."""
    return f"{PREFIX}holds:{job_id}"


# An answer waits this long for the retry that commits it (arq retries within a minute or so).
ANSWER_TTL_S = 24 * 3600


def job_answer(job_id: str) -> str:
    """Outcomes runs got from the providers, by run, kept until committed to SQL (storage.fleet.answers)."""
    return f"{PREFIX}answer:{job_id}"


def flight(tenant: str, request_hash: str) -> str:
    """The job making the one call for a tenant's identical requests (storage.fleet.flights)."""
    return f"{PREFIX}flight:{key_part(tenant)}:{request_hash}"


def flight_waiting(tenant: str, request_hash: str) -> str:
    """How many jobs wait for that call's answer."""
    return f"{flight(tenant, request_hash)}:waiting"


def flight_done_channel(tenant: str, request_hash: str) -> str:
    """Published when the flight's job lets go (its answer is committed, or it failed)."""
    return f"{PREFIX}flight-done:{key_part(tenant)}:{request_hash}"


def quality_tallies(version: int) -> str:
    """The quality tallies as of evidence version `version` (JSON)."""
    return f"{PREFIX}quality:tallies:{version}"


def rate_bucket(scope: str, kind: str) -> str:
    """A rate limit's token bucket (`level`, `at`): scope `key:<id>` or `tenant:<name>`, kind
    `requests` or `tokens` (storage.fleet.ratelimits)."""
    kind_of, _, name = scope.partition(":")
    return f"{PREFIX}ratelimit:{kind_of}:{key_part(name)}:{kind}"


def eval_judged(job_id: str) -> str:
    """Set (NX) when `job_id` is sent to the judge, so it is sent once."""
    return f"{PREFIX}evals:judged:{job_id}"


def ui_session(token_hash: str) -> str:
    """A dashboard session (JSON: the API key's id, the CSRF token), under the SHA-256 of its cookie."""
    return f"{PREFIX}ui:session:{token_hash}"


def ui_batch_summary(batch_id: str) -> str:
    """An ended batch's figures as its dashboard page shows them (JSON), computed once from SQL."""
    return f"{PREFIX}ui:batch:{batch_id}"
